package ds389test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/internal/ldapprobe"
	"github.com/mailauthd/mailauthd/internal/peertest"
)

// One instance for the package, with every option on: the referrals sit
// under ou=people, so searches there also return continuation references.
var shared = NewShared(WithReferrals(17), WithContentSync())

func TestMain(m *testing.M) {
	code := m.Run()
	shared.Close()
	os.Exit(code)
}

func dial(t *testing.T, url string, tc *tls.Config) *ldap.Conn {
	t.Helper()
	c, err := ldap.DialURL(url, ldap.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}), ldap.DialWithTLSConfig(tc))
	if err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(5 * time.Second)
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFixturesOverEveryTransport(t *testing.T) {
	s := shared.Get(t)
	tc, err := s.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(t, s.URL(), nil).Bind(Alice.DN, Alice.Password); err != nil {
		t.Errorf("ldap: %v", err)
	}
	if err := dial(t, s.LDAPSURL(), tc).Bind(Alice.DN, Alice.Password); err != nil {
		t.Errorf("ldaps: %v", err)
	}
	local := tc.Clone()
	local.ServerName = "localhost"
	if err := dial(t, s.LDAPSURL(), local).Bind(Alice.DN, Alice.Password); err != nil {
		t.Errorf("ldaps verifying the name localhost: %v", err)
	}
	st := dial(t, s.URL(), nil)
	if err := st.StartTLS(tc); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	if err := st.Bind(ServiceDN, ServicePassword); err != nil {
		t.Fatalf("service account: %v", err)
	}
	if err := st.Bind(Alice.DN, "wrong"); !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
		t.Errorf("wrong password: %v, want invalidCredentials", err)
	}
	if err := st.Bind(s.AdminDN(), s.AdminPassword()); err != nil {
		t.Errorf("Directory Manager: %v", err)
	}
}

// majorVersion is the shared server's major version: 2 on Debian 12, 3 on
// Debian 13.
func majorVersion(t *testing.T, s *Server) int {
	t.Helper()
	major, err := s.MajorVersion()
	if err != nil {
		t.Fatal(err)
	}
	return major
}

// references is how many continuation references a subtree search of
// ou=people meets on this server. 389-ds 2.x returns one for every referral
// entry in scope whatever the filter. 3.x returns one only for those among
// the filter's candidates: an indexed filter the referral entries do not
// match (uid=..., cn=...) meets none, an unindexed one (description=...)
// meets them all.
func references(major int, indexed bool) int {
	if major >= 3 && indexed {
		return 0
	}
	return 17
}

func TestServiceSearchHostAndNestedGroups(t *testing.T) {
	s := shared.Get(t)
	major := majorVersion(t, s)
	c := dial(t, s.URL(), nil)
	if err := c.Bind(ServiceDN, ServicePassword); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{
		"(&(uid=alice)(host=mail.example.org))",
		"(&(uid=alice)(memberOf=" + MailUsersGroupDN + "))",
		"(&(uid=alice)(memberOf=" + StaffGroupDN + "))", // nested: memberOf plugin
	} {
		res, err := c.Search(ldap.NewSearchRequest(PeopleDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
			0, 0, false, f, []string{"uid", "memberOf", "userPassword"}, nil))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if len(res.Entries) != 1 {
			t.Errorf("%s: %d entries, want 1", f, len(res.Entries))
			continue
		}
		if res.Entries[0].GetAttributeValue("userPassword") != "" {
			t.Errorf("the service account reads userPassword")
		}
		// A subtree search of ou=people meets the 17 referral entries
		// (2.x), or none of them with this indexed filter (3.x).
		if want := references(major, true); len(res.Referrals) != want {
			t.Errorf("%s: %d continuation references, want %d (389-ds %d.x)", f, len(res.Referrals), want, major)
		}
	}
}

func TestReferralsAreContinuationReferences(t *testing.T) {
	s := shared.Get(t)
	major := majorVersion(t, s)
	c := dial(t, s.URL(), nil)
	var res *ldap.SearchResult
	for _, q := range []struct {
		filter  string
		indexed bool
	}{
		{"(uid=nobody)", true},
		{"(description=nobody)", false},
	} {
		var err error
		res, err = c.Search(ldap.NewSearchRequest(PeopleDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
			0, 0, false, q.filter, nil, nil))
		if err != nil {
			t.Fatal(err)
		}
		if want := references(major, q.indexed); len(res.Entries) != 0 || len(res.Referrals) != want {
			t.Fatalf("%s: got %d entries, %d references; want 0 and %d (389-ds %d.x)", q.filter, len(res.Entries), len(res.Referrals), want, major)
		}
	}
	t.Logf("first reference: %s", res.Referrals[0])
	// A one-level search meets them on both versions.
	res, err := c.Search(ldap.NewSearchRequest(PeopleDN, ldap.ScopeSingleLevel, ldap.NeverDerefAliases,
		0, 0, false, "(uid=nobody)", nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Entries) != 0 || len(res.Referrals) != 17 {
		t.Fatalf("one level: got %d entries, %d references; want 0 and 17", len(res.Entries), len(res.Referrals))
	}
	// With ManageDsaIT the referral objects are plain entries.
	res, err = c.Search(ldap.NewSearchRequest(PeopleDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		0, 0, false, "(objectClass=referral)", []string{"ref"}, []ldap.Control{ldap.NewControlManageDsaIT(true)}))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Entries) != 17 || len(res.Referrals) != 0 {
		t.Fatalf("ManageDsaIT: got %d entries, %d references; want 17 and 0", len(res.Entries), len(res.Referrals))
	}
}

// A bind as each fixture account, on the wire (raw LDAPResult and response
// controls) and as go-ldap reports it. These are the facts in FINDINGS.md.
func TestAccountStatesOnTheWire(t *testing.T) {
	s := shared.Get(t)
	tc, err := s.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	pp := ldapprobe.Control{OID: ldap.ControlTypeBeheraPasswordPolicy}
	cases := []struct {
		a        Account
		ppolicy  bool
		code     int64
		diag     string
		controls map[string]string // OID -> hex value ("" = no value)
	}{
		{Alice, false, 0, "", nil},
		{Alice, true, 0, "", nil},
		{Inactivated, false, 53, "Account inactivated. Contact system administrator.", nil},
		{Inactivated, true, 53, "Account inactivated. Contact system administrator.",
			map[string]string{ldap.ControlTypeBeheraPasswordPolicy: "308400000003810101"}},
		{LockedOut, false, 19, "Exceed password retry limit. Please try later.", nil},
		{LockedOut, true, 19, "Exceed password retry limit. Please try later.",
			map[string]string{ldap.ControlTypeBeheraPasswordPolicy: "308400000003810101"}},
		{MustChange, false, 0, "", map[string]string{ldap.ControlTypeVChuPasswordMustChange: "30"}},
		{MustChange, true, 0, "", map[string]string{
			ldap.ControlTypeBeheraPasswordPolicy: "308400000003810102", ldap.ControlTypeVChuPasswordMustChange: "30"}},
		{Expired, false, 49, "password expired!", map[string]string{ldap.ControlTypeVChuPasswordMustChange: "30"}},
		{Expired, true, 49, "password expired!", map[string]string{
			ldap.ControlTypeBeheraPasswordPolicy: "308400000003810100", ldap.ControlTypeVChuPasswordMustChange: "30"}},
		// The warning's value is a decimal count of seconds ("8640000" here);
		// only its presence is asserted.
		{Expiring, false, 0, "", map[string]string{ldap.ControlTypeVChuPasswordWarning: "*"}},
		{Expiring, true, 0, "", map[string]string{ldap.ControlTypeBeheraPasswordPolicy: "*", ldap.ControlTypeVChuPasswordWarning: "*"}},
	}
	if admin, err := s.Admin(); err == nil {
		res, err := admin.Search(ldap.NewSearchRequest(Expiring.DN, ldap.ScopeBaseObject, 0, 0, 0, false,
			"(objectClass=*)", []string{"passwordExpirationTime"}, nil))
		if err == nil && len(res.Entries) == 1 {
			t.Logf("expiring: passwordExpirationTime %s (now %s)", res.Entries[0].GetAttributeValue("passwordExpirationTime"),
				time.Now().UTC().Format("20060102150405Z"))
		}
		admin.Close()
	}
	for _, c := range cases {
		conn, err := ldapprobe.Dial(s.LDAPSURL(), tc)
		if err != nil {
			t.Fatal(err)
		}
		var req []ldapprobe.Control
		if c.ppolicy {
			req = append(req, pp)
		}
		m, err := ldapprobe.Bind(conn, 1, c.a.DN, c.a.Password, req...)
		conn.Close()
		if err != nil {
			t.Fatalf("%s: %v", c.a.UID, err)
		}
		t.Logf("%-11s ppolicy=%-5v %v", c.a.UID, c.ppolicy, m)
		if m.Code != c.code || m.Diagnostic != c.diag {
			t.Errorf("%s ppolicy=%v: code %d %q, want %d %q", c.a.UID, c.ppolicy, m.Code, m.Diagnostic, c.code, c.diag)
		}
		if len(m.Controls) != len(c.controls) {
			t.Errorf("%s ppolicy=%v: controls %v, want %v", c.a.UID, c.ppolicy, m.Controls, c.controls)
		}
		for oid, want := range c.controls {
			got := m.Control(oid)
			if got == nil || (want != "*" && want != hexOf(got.Value)) {
				t.Errorf("%s ppolicy=%v: control %s = %v, want value %s", c.a.UID, c.ppolicy, oid, got, want)
			}
		}
		// A wrong password never reveals the state, except for the locks.
		conn, _ = ldapprobe.Dial(s.LDAPSURL(), tc)
		w, err := ldapprobe.Bind(conn, 1, c.a.DN, "wrong", req...)
		conn.Close()
		if err != nil {
			t.Fatal(err)
		}
		wantWrong := int64(49)
		if c.a == Inactivated || c.a == LockedOut {
			wantWrong = c.code
		}
		if w.Code != wantWrong {
			t.Errorf("%s wrong password: %v, want code %d", c.a.UID, w, wantWrong)
		}
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	var out bytes.Buffer
	for _, c := range b {
		out.WriteByte(digits[c>>4])
		out.WriteByte(digits[c&15])
	}
	return out.String()
}

func TestGoLDAPDecodesThePolicyControls(t *testing.T) {
	s := shared.Get(t)
	c := dial(t, s.URL(), nil)
	res, err := c.SimpleBind(ldap.NewSimpleBindRequest(MustChange.DN, MustChange.Password,
		[]ldap.Control{ldap.NewControlBeheraPasswordPolicy()}))
	if err != nil {
		t.Fatalf("must-change bind: %v", err)
	}
	var pp *ldap.ControlBeheraPasswordPolicy
	var mc *ldap.ControlVChuPasswordMustChange
	for _, ctl := range res.Controls {
		switch v := ctl.(type) {
		case *ldap.ControlBeheraPasswordPolicy:
			pp = v
		case *ldap.ControlVChuPasswordMustChange:
			mc = v
		}
	}
	if pp == nil || pp.Error != 2 || mc == nil || !mc.MustChange {
		t.Fatalf("controls %v: want ppolicy error 2 (changeAfterReset) and must-change", res.Controls)
	}
	// Bound, but everything but a password change is refused.
	_, err = c.Search(ldap.NewSearchRequest(MustChange.DN, ldap.ScopeBaseObject, 0, 0, 0, false, "(objectClass=*)", nil, nil))
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultUnwillingToPerform) {
		t.Errorf("search after a must-change bind: %v, want unwillingToPerform", err)
	}

	c = dial(t, s.URL(), nil)
	_, err = c.SimpleBind(ldap.NewSimpleBindRequest(Expired.DN, Expired.Password,
		[]ldap.Control{ldap.NewControlBeheraPasswordPolicy()}))
	var le *ldap.Error
	if !errors.As(err, &le) || le.ResultCode != ldap.LDAPResultInvalidCredentials {
		t.Fatalf("expired: %v, want invalidCredentials", err)
	}
}

func TestLockoutAfterFailures(t *testing.T) {
	s := shared.Get(t)
	c := dial(t, s.URL(), nil)
	var codes []uint16
	for i := 0; i < LockoutMaxFailure+1; i++ {
		err := c.Bind(Lockable.DN, "wrong")
		var le *ldap.Error
		if !errors.As(err, &le) {
			t.Fatalf("wrong password %d: %v", i+1, err)
		}
		codes = append(codes, le.ResultCode)
	}
	t.Logf("codes of %d wrong binds: %v", LockoutMaxFailure+1, codes)
	// The failure that reaches passwordMaxFailure is still answered 49;
	// every bind after it, right password or wrong, 19.
	want := []uint16{49, 49, 49, 19}
	for i := range want {
		if codes[i] != want[i] {
			t.Fatalf("codes %v, want %v", codes, want)
		}
	}
	if err := c.Bind(Lockable.DN, Lockable.Password); !ldap.IsErrorWithCode(err, ldap.LDAPResultConstraintViolation) {
		t.Errorf("right password once locked: %v, want constraintViolation", err)
	}
}

func TestIdleTimeout(t *testing.T) {
	s := shared.Get(t)
	if err := s.SetIdleTimeout(2); err != nil {
		t.Fatal(err)
	}
	defer s.SetIdleTimeout(0)
	tc, err := s.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	open := func(url string) net.Conn {
		c, err := ldapprobe.Dial(url, tc)
		if err != nil {
			t.Fatal(err)
		}
		if m, err := ldapprobe.Bind(c, 1, Alice.DN, Alice.Password); err != nil || m.Code != 0 {
			t.Fatalf("bind: %v %v", m, err)
		}
		return c
	}
	// On a server with no other traffic, 389-ds 2.x closes nothing: it
	// checks idle times only when its listener loop wakes up. 3.x closes
	// the connection on time anyway.
	c := open(s.URL())
	msgs, end, after := ldapprobe.Idle(c, 6*time.Second)
	c.Close()
	var ne net.Error
	if major := majorVersion(t, s); major < 3 {
		if len(msgs) != 0 || !errors.As(end, &ne) || !ne.Timeout() {
			t.Errorf("quiet server, 389-ds %d.x: %v %v after %v, want the connection still open", major, msgs, end, after)
		}
	} else if len(msgs) != 0 || !errors.Is(end, io.EOF) || after > 5*time.Second {
		t.Errorf("quiet server, 389-ds %d.x: %v %v after %v, want EOF within about 2s", major, msgs, end, after)
	}
	// With traffic on other connections it is closed: a bare FIN, no
	// notice of disconnection.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
				peertest.PingLDAP(s.URL())
			}
		}
	}()
	for _, url := range []string{s.URL(), s.LDAPSURL()} {
		c := open(url)
		msgs, end, after := ldapprobe.Idle(c, 15*time.Second)
		c.Close()
		t.Logf("%s: messages %v, end %v after %v", url, msgs, end, after.Round(100*time.Millisecond))
		if len(msgs) != 0 || !errors.Is(end, io.EOF) || after > 5*time.Second {
			t.Errorf("%s: %v %v after %v, want EOF within about 2s", url, msgs, end, after)
		}
	}
}

func TestContentSync(t *testing.T) {
	s := shared.Get(t)
	c := dial(t, s.URL(), nil)
	if err := c.Bind(AdminDN, AdminPassword); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := ldap.NewSearchRequest(GroupsDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=groupOfNames)", []string{"cn"}, nil)
	r := c.Syncrepl(ctx, req, 16, ldap.SyncRequestModeRefreshOnly, nil, false)
	entries, cookie := 0, false
	for r.Next() {
		if r.Entry() != nil {
			entries++
		}
		for _, ctl := range r.Controls() {
			if d, ok := ctl.(*ldap.ControlSyncDone); ok && len(d.Cookie) > 0 {
				cookie = true
			}
		}
	}
	if err := r.Err(); err != nil {
		t.Fatal(err)
	}
	if entries != 2 || !cookie {
		t.Errorf("refreshOnly: %d entries, sync done cookie %v; want 2 and a cookie", entries, cookie)
	}
}

func TestStopRestartPause(t *testing.T) {
	s := Start(t) // its own instance: this test kills it
	s.Stop()
	if _, err := ldap.DialURL(s.URL()); err == nil {
		t.Fatal("dial after Stop succeeded")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	c := dial(t, s.URL(), nil)
	if err := c.Bind(Alice.DN, Alice.Password); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(300 * time.Millisecond)
	if err := c.Bind(Alice.DN, Alice.Password); err == nil {
		t.Fatal("bind against a paused server succeeded")
	}
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := dial(t, s.URL(), nil).Bind(Alice.DN, Alice.Password); err != nil {
		t.Fatalf("after resume: %v", err)
	}
}

func TestParseVendorVersion(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"389-Directory/2.3.1 B2023.045.0000", "2.3.1"},
		{"389-Directory/3.1.2 B2025.062.0000", "3.1.2"},
		{"389-Directory/3.1.2", "3.1.2"},
		{"", ""},
		{"389-Directory", ""},
		{"389-Directory/ B2025", ""},
	} {
		got, err := parseVendorVersion(c.in)
		if got != c.want || (err == nil) != (c.want != "") {
			t.Errorf("parseVendorVersion(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
}
