package slapdtest_test

import (
	"encoding/hex"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/internal/ldapprobe"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

func ppBind(t *testing.T, s *slapdtest.Server, uid, password string, ppolicy bool) *ldapprobe.Message {
	t.Helper()
	c, err := ldapprobe.Dial(s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var ctls []ldapprobe.Control
	if ppolicy {
		ctls = append(ctls, ldapprobe.Control{OID: ldap.ControlTypeBeheraPasswordPolicy})
	}
	m, err := ldapprobe.Bind(c, 1, "uid="+uid+","+slapdtest.PeopleDN, password, ctls...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func ppValue(m *ldapprobe.Message) string {
	if c := m.Control(ldap.ControlTypeBeheraPasswordPolicy); c != nil {
		return hex.EncodeToString(c.Value)
	}
	return "none"
}

// What each ppolicy state looks like on the wire, with and without the
// request control (FINDINGS-ppolicy.md).
func TestPPolicyStatesOnTheWire(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithPPolicy())
	cases := []struct {
		uid     string
		right   bool
		code    int64
		control string // hex of the response value when requested; "none" = no control
	}{
		{"alice", true, 0, "3000"},
		{"alice", false, 49, "3000"},
		{"pplocked", true, 49, "3003810101"}, // error accountLocked (1)
		{"pplocked", false, 49, "3003810101"},
		{"ppmustchange", true, 0, "3003810102"}, // error changeAfterReset (2), bind succeeds
		{"ppmustchange", false, 49, "3000"},
		{"ppexpired", true, 49, "3003810100"}, // error passwordExpired (0)
		{"ppexpired", false, 49, "3000"},
	}
	for _, c := range cases {
		pw := c.uid + "pw"
		if !c.right {
			pw = "wrong"
		}
		plain := ppBind(t, s, c.uid, pw, false)
		with := ppBind(t, s, c.uid, pw, true)
		t.Logf("%-12s right=%-5v without: %v | with: %v", c.uid, c.right, plain, with)
		if plain.Code != c.code || len(plain.Controls) != 0 || plain.Diagnostic != "" {
			t.Errorf("%s right=%v without the control: %v, want code %d, no controls, no text", c.uid, c.right, plain, c.code)
		}
		if with.Code != c.code || ppValue(with) != c.control || len(with.Controls) != 1 {
			t.Errorf("%s right=%v with the control: %v, want code %d, value %s", c.uid, c.right, with, c.code, c.control)
		}
	}
	// Grace binds succeed and say how many are left (counting this one).
	first, second := ppBind(t, s, "ppgrace", "ppgracepw", true), ppBind(t, s, "ppgrace", "ppgracepw", true)
	third := ppBind(t, s, "ppgrace", "ppgracepw", true)
	t.Logf("grace: %v | %v | %v", first, second, third)
	if first.Code != 0 || ppValue(first) != "3005a003810101" || second.Code != 0 || ppValue(second) != "3005a003810100" ||
		third.Code != 49 || ppValue(third) != "3003810100" {
		t.Errorf("grace binds: %v, %v, %v; want 0 grace 1, 0 grace 0, 49 expired", first, second, third)
	}
	// Once bound, a must-change session may only change its password.
	c, err := dial(t, s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Bind("uid=ppmustchange,"+slapdtest.PeopleDN, "ppmustchangepw"); err != nil {
		t.Fatal(err)
	}
	_, err = c.Search(ldap.NewSearchRequest(slapdtest.PeopleDN, ldap.ScopeWholeSubtree, 0, 0, 0, false, "(uid=alice)", nil, nil))
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultInsufficientAccessRights) {
		t.Errorf("search after a must-change bind: %v, want insufficientAccessRights", err)
	}
}

func TestPPolicyLockout(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithPPolicy())
	var got []string
	for i := 0; i < 4; i++ {
		m := ppBind(t, s, "pplockable", "wrong", true)
		got = append(got, ppValue(m))
		if m.Code != 49 {
			t.Fatalf("wrong password %d: %v", i+1, m)
		}
	}
	// The third failure (pwdMaxFailure) locks; the answer says so from the fourth.
	want := []string{"3000", "3000", "3000", "3003810101"}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("controls %v, want %v", got, want)
		}
	}
	if m := ppBind(t, s, "pplockable", "pplockablepw", true); m.Code != 49 || ppValue(m) != "3003810101" {
		t.Errorf("right password once locked: %v", m)
	}
	// go-ldap decodes the same answer.
	c, err := dial(t, s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.SimpleBind(ldap.NewSimpleBindRequest("uid=pplockable,"+slapdtest.PeopleDN, "pplockablepw",
		[]ldap.Control{ldap.NewControlBeheraPasswordPolicy()}))
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) || res == nil || len(res.Controls) != 1 {
		t.Fatalf("go-ldap: %v %v", res, err)
	}
	if pp, ok := res.Controls[0].(*ldap.ControlBeheraPasswordPolicy); !ok || pp.Error != 1 {
		t.Errorf("go-ldap control %v, want ppolicy error 1 (accountLocked)", res.Controls[0])
	}
}

func TestReferralsOption(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithReferrals())
	c, err := dial(t, s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Search(ldap.NewSearchRequest(slapdtest.PeopleDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		0, 0, false, "(uid=alice)", []string{"uid"}, nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Entries) != 1 || len(res.Referrals) != 20 {
		t.Fatalf("%d entries, %d references; want 1 and 20", len(res.Entries), len(res.Referrals))
	}
	res, err = c.Search(ldap.NewSearchRequest(slapdtest.PeopleDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		0, 0, false, "(uid=alice)", []string{"uid"}, []ldap.Control{ldap.NewControlManageDsaIT(true)}))
	if err != nil || len(res.Referrals) != 0 {
		t.Fatalf("ManageDsaIT: %v, %d references", err, len(res.Referrals))
	}
}

func TestIdleTimeoutOption(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithIdleTimeout(2))
	c, err := ldapprobe.Dial(s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if m, err := ldapprobe.Bind(c, 1, "uid=alice,"+slapdtest.PeopleDN, "alicepw"); err != nil || m.Code != 0 {
		t.Fatalf("bind: %v %v", m, err)
	}
	msgs, end, after := ldapprobe.Idle(c, 15*time.Second)
	t.Logf("idle: messages %v, end %v after %v", msgs, end, after.Round(100*time.Millisecond))
	if !errors.Is(end, io.EOF) || after > 6*time.Second {
		var ne net.Error
		t.Errorf("idle connection: %v (timeout %v) after %v, want EOF after about 2s", end, errors.As(end, &ne), after)
	}
	for _, m := range msgs {
		if m.ID != 0 || m.ResponseName != ldapprobe.NoticeOfDisconnection {
			t.Errorf("unexpected message before the close: %v", m)
		}
	}
}
