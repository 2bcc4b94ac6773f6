package sambatest

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"regexp"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/internal/ldapprobe"
)

var dc = NewShared()

func TestMain(m *testing.M) {
	code := m.Run()
	dc.Close()
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

func tlsConfig(t *testing.T, s *Server) *tls.Config {
	t.Helper()
	tc, err := s.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	return tc
}

func TestBindNamesAndTransports(t *testing.T) {
	s := dc.Get(t)
	tc := tlsConfig(t, s)
	c := dial(t, s.LDAPSURL(), tc)
	for _, name := range []string{Alice.DN, Alice.UPN, Domain + `\` + Alice.SAM} {
		if err := c.Bind(name, Alice.Password); err != nil {
			t.Errorf("ldaps bind as %q: %v", name, err)
		}
	}
	local := tc.Clone()
	local.ServerName = "localhost"
	if err := dial(t, s.LDAPSURL(), local).Bind(Alice.DN, Alice.Password); err != nil {
		t.Errorf("ldaps verifying the name localhost: %v", err)
	}
	// A simple bind without TLS is refused: ldap server require strong auth.
	err := dial(t, s.URL(), nil).Bind(Alice.DN, Alice.Password)
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultStrongAuthRequired) {
		t.Errorf("plain ldap bind: %v, want strongerAuthRequired (8)", err)
	}
	st := dial(t, s.URL(), nil)
	if err := st.StartTLS(tc); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	if err := st.Bind(Service.DN, Service.Password); err != nil {
		t.Errorf("bind after StartTLS: %v", err)
	}
	if err := st.Bind(s.AdminDN(), s.AdminPassword()); err != nil {
		t.Errorf("Administrator: %v", err)
	}
}

func TestPlainBindsOption(t *testing.T) {
	s := Start(t, WithPlainBinds())
	if err := dial(t, s.URL(), nil).Bind(Alice.DN, Alice.Password); err != nil {
		t.Errorf("plain ldap bind with WithPlainBinds: %v", err)
	}
}

func TestHostAndNestedGroups(t *testing.T) {
	s := dc.Get(t)
	c := dial(t, s.LDAPSURL(), tlsConfig(t, s))
	if err := c.Bind(Service.DN, Service.Password); err != nil {
		t.Fatal(err)
	}
	count := func(filter string) int {
		res, err := c.Search(ldap.NewSearchRequest(BaseDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
			0, 0, false, filter, []string{"sAMAccountName", "memberOf"}, nil))
		if err != nil {
			t.Fatalf("%s: %v", filter, err)
		}
		return len(res.Entries)
	}
	for filter, want := range map[string]int{
		"(&(sAMAccountName=alice)(host=mail.example.org))":                                  1,
		"(&(sAMAccountName=alice)(memberOf=" + MailUsersGroupDN + "))":                      1,
		"(&(sAMAccountName=alice)(memberOf=" + StaffGroupDN + "))":                          0, // not direct
		"(&(sAMAccountName=alice)(memberOf:1.2.840.113556.1.4.1941:=" + StaffGroupDN + "))": 1,
		"(userPrincipalName=alice@example.org)":                                             1,
	} {
		if got := count(filter); got != want {
			t.Errorf("%s: %d entries, want %d", filter, got, want)
		}
	}
}

var dataRE = regexp.MustCompile(`data ([0-9a-f]{3}),`)

// A bind as each fixture account over LDAPS, on the wire. Samba answers
// every refusal with 49 and tells the reason only in "data NNN"; it sends
// no response controls, with or without the ppolicy request control.
func TestAccountStatesOnTheWire(t *testing.T) {
	s := dc.Get(t)
	tc := tlsConfig(t, s)
	pp := ldapprobe.Control{OID: ldap.ControlTypeBeheraPasswordPolicy}
	bind := func(dn, pw string, ctls ...ldapprobe.Control) *ldapprobe.Message {
		c, err := ldapprobe.Dial(s.LDAPSURL(), tc)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		m, err := ldapprobe.Bind(c, 1, dn, pw, ctls...)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	for _, a := range Accounts {
		if a == Lockable {
			continue // TestLockout's
		}
		for _, ctls := range [][]ldapprobe.Control{nil, {pp}} {
			m := bind(a.DN, a.Password, ctls...)
			t.Logf("%-13s ppolicy=%-5v %v", a.SAM, len(ctls) > 0, m)
			data := ""
			if d := dataRE.FindStringSubmatch(m.Diagnostic); d != nil {
				data = d[1]
			}
			wantCode := int64(49)
			if a.Data == "" {
				wantCode = 0
			}
			if m.Code != wantCode || data != a.Data || len(m.Controls) != 0 {
				t.Errorf("%s: %v; want code %d, data %q, no controls", a.SAM, m, wantCode, a.Data)
			}
			// A wrong password: 52e, whatever the state, except locked out.
			w := bind(a.DN, "Wrong-Pass-9", ctls...)
			wantData := "52e"
			if a == LockedOut {
				wantData = "775"
			}
			if d := dataRE.FindStringSubmatch(w.Diagnostic); w.Code != 49 || d == nil || d[1] != wantData {
				t.Errorf("%s wrong password: %v, want 49 data %s", a.SAM, w, wantData)
			}
		}
	}
	// An unknown name: 52e too (not 525).
	if m := bind("CN=nobody,"+UsersDN, "Wrong-Pass-9"); !dataRE.MatchString(m.Diagnostic) || dataRE.FindStringSubmatch(m.Diagnostic)[1] != "52e" {
		t.Errorf("unknown DN: %v", m)
	}
	m := bind("nobody@"+DNSDomain, "Wrong-Pass-9")
	t.Logf("unknown UPN: %v", m)
}

func TestGoLDAPError(t *testing.T) {
	s := dc.Get(t)
	err := dial(t, s.LDAPSURL(), tlsConfig(t, s)).Bind(MustChange.DN, MustChange.Password)
	var le *ldap.Error
	if !errors.As(err, &le) || le.ResultCode != ldap.LDAPResultInvalidCredentials {
		t.Fatalf("must change: %v", err)
	}
	// go-ldap keeps the diagnostic message as the wrapped error's text.
	if d := dataRE.FindStringSubmatch(le.Err.Error()); d == nil || d[1] != "773" {
		t.Errorf("must change: %q, want data 773", le.Err.Error())
	}
}

func TestLockout(t *testing.T) {
	s := dc.Get(t)
	c := dial(t, s.LDAPSURL(), tlsConfig(t, s))
	var data []string
	for i := 0; i < LockoutThreshold+1; i++ {
		err := c.Bind(Lockable.DN, "Wrong-Pass-9")
		var le *ldap.Error
		if !errors.As(err, &le) {
			t.Fatal(err)
		}
		data = append(data, dataRE.FindStringSubmatch(le.Err.Error())[1])
	}
	t.Logf("data of %d wrong binds: %v", LockoutThreshold+1, data)
	want := []string{"52e", "52e", "52e", "775"}
	for i := range want {
		if data[i] != want[i] {
			t.Fatalf("data %v, want %v", data, want)
		}
	}
}

func TestIdleTimeout(t *testing.T) {
	s := dc.Get(t)
	if err := s.SetIdleTimeout(2); err != nil {
		t.Fatal(err)
	}
	defer s.SetIdleTimeout(900)
	tc := tlsConfig(t, s)
	for _, url := range []string{s.URL(), s.LDAPSURL()} {
		c, err := ldapprobe.Dial(url, tc)
		if err != nil {
			t.Fatal(err)
		}
		// One request first: before any, InitRecvTimeout (120 s) applies.
		if _, err := ldapprobe.Bind(c, 1, "", ""); err != nil {
			t.Fatal(err)
		}
		msgs, end, after := ldapprobe.Idle(c, 15*time.Second)
		c.Close()
		t.Logf("%s: messages %v, end %v after %v", url, msgs, end, after.Round(100*time.Millisecond))
		if len(msgs) != 0 || !errors.Is(end, io.EOF) || after > 5*time.Second {
			t.Errorf("%s: %v %v after %v, want EOF after about 2s", url, msgs, end, after)
		}
	}
	// No request at all: still open after 5 s.
	c, err := ldapprobe.Dial(s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	msgs, end, _ := ldapprobe.Idle(c, 5*time.Second)
	c.Close()
	var ne net.Error
	if len(msgs) != 0 || !errors.As(end, &ne) || !ne.Timeout() {
		t.Errorf("connection without a request: %v %v, want still open", msgs, end)
	}
}

func TestStopRestartPause(t *testing.T) {
	s := Start(t) // its own instance: this test kills it
	tc := tlsConfig(t, s)
	c := dial(t, s.LDAPSURL(), tc)
	s.Stop()
	if _, err := ldap.DialURL(s.URL()); err == nil {
		t.Fatal("dial after Stop succeeded")
	}
	if err := c.Bind(Alice.DN, Alice.Password); err == nil {
		t.Fatal("bind on a connection made before Stop succeeded")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	c = dial(t, s.LDAPSURL(), tc)
	if err := c.Bind(Alice.DN, Alice.Password); err != nil {
		t.Fatalf("after restart: %v", err)
	}
	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(300 * time.Millisecond)
	if err := c.Bind(Alice.DN, Alice.Password); err == nil {
		t.Fatal("bind against a paused samba succeeded")
	}
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := dial(t, s.LDAPSURL(), tc).Bind(Alice.DN, Alice.Password); err != nil {
		t.Fatalf("after resume: %v", err)
	}
}

func TestInstancesRunSideBySide(t *testing.T) {
	a, b := dc.Get(t), Start(t)
	tc := tlsConfig(t, a)
	if err := dial(t, a.LDAPSURL(), tc).Bind(Alice.DN, Alice.Password); err != nil {
		t.Error(err)
	}
	tc = tlsConfig(t, b)
	if err := dial(t, b.LDAPSURL(), tc).Bind(Alice.DN, Alice.Password); err != nil {
		t.Error(err)
	}
}
