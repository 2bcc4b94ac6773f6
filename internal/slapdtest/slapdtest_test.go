package slapdtest_test

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

func dial(t *testing.T, url string, tc *tls.Config) (*ldap.Conn, error) {
	t.Helper()
	c, err := ldap.DialURL(url, ldap.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}), ldap.DialWithTLSConfig(tc))
	if err != nil {
		return nil, err
	}
	c.SetTimeout(2 * time.Second)
	t.Cleanup(func() { c.Close() })
	return c, nil
}

func countUID(t *testing.T, c *ldap.Conn, uid string) int {
	t.Helper()
	res, err := c.Search(ldap.NewSearchRequest(slapdtest.PeopleDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		0, 2, false, "(uid="+ldap.EscapeFilter(uid)+")", []string{"dn"}, nil))
	if err != nil {
		t.Fatalf("search %q: %v", uid, err)
	}
	return len(res.Entries)
}

func TestFixtureUsers(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithLDAPS())
	c, err := dial(t, s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []struct {
		dn, pw string
	}{
		{"uid=alice," + slapdtest.PeopleDN, "alicepw"},
		{"cn=meta," + slapdtest.PeopleDN, "metapw"},
		{"cn=inject," + slapdtest.PeopleDN, "injectpw"},
		{slapdtest.ServiceDN, slapdtest.ServicePassword},
		{s.AdminDN(), s.AdminPassword()},
	} {
		if err := c.Bind(u.dn, u.pw); err != nil {
			t.Errorf("bind %s: %v", u.dn, err)
		}
	}
	if err := c.Bind("uid=alice,"+slapdtest.PeopleDN, "wrong"); !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
		t.Errorf("wrong password: got %v, want invalid credentials", err)
	}
	if n := countUID(t, c, "twin"); n != 2 {
		t.Errorf("uid=twin: %d entries, want 2", n)
	}
	if n := countUID(t, c, "x)(uid=*"); n != 1 {
		t.Errorf("uid=x)(uid=*: %d entries, want 1", n)
	}

	tc, err := s.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	ls, err := dial(t, s.LDAPSURL(), tc)
	if err != nil {
		t.Fatalf("ldaps with test CA: %v", err)
	}
	if err := ls.Bind("uid=star,"+slapdtest.PeopleDN, "starpw"); err != nil {
		t.Errorf("bind over ldaps: %v", err)
	}
	st, err := dial(t, s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.StartTLS(tc); err != nil {
		t.Errorf("StartTLS with test CA: %v", err)
	}
}

func TestAnonymousReadOff(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithoutAnonymousRead())
	c, err := dial(t, s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Search(ldap.NewSearchRequest(slapdtest.PeopleDN, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		0, 2, false, "(uid=alice)", nil, nil))
	if err == nil && len(res.Entries) != 0 {
		t.Errorf("anonymous search found %d entries, want none", len(res.Entries))
	}
	if err := c.Bind(slapdtest.ServiceDN, slapdtest.ServicePassword); err != nil {
		t.Fatal(err)
	}
	if n := countUID(t, c, "alice"); n != 1 {
		t.Errorf("service account search found %d entries, want 1", n)
	}
}

func TestUntrustedCert(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithLDAPS(), slapdtest.WithUntrustedCert())
	tc, err := s.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(t, s.LDAPSURL(), tc); err == nil {
		t.Fatal("ldaps with an untrusted certificate: connected, want a verification error")
	}
}

func TestGeneratedUsersStopRestartPause(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithUsers(50))
	c, err := dial(t, s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Bind("uid=user49,"+slapdtest.PeopleDN, slapdtest.GeneratedUserPassword(49)); err != nil {
		t.Fatalf("generated user: %v", err)
	}

	s.Stop()
	if _, err := dial(t, s.URL(), nil); err == nil {
		t.Fatal("dial after Stop succeeded")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	c, err = dial(t, s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Bind("uid=user3,"+slapdtest.PeopleDN, "pass3"); err != nil {
		t.Fatalf("after restart: %v", err)
	}

	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	c.SetTimeout(300 * time.Millisecond)
	if err := c.Bind("uid=user3,"+slapdtest.PeopleDN, "pass3"); err == nil {
		t.Fatal("bind against a paused slapd succeeded")
	}
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	c, err = dial(t, s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Bind("uid=user3,"+slapdtest.PeopleDN, "pass3"); err != nil {
		t.Fatalf("after resume: %v", err)
	}
}

func TestUnauthenticatedBindOption(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithUnauthenticatedBind())
	c, err := dial(t, s.URL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	// This is what an empty password does against such a server: success.
	if err := c.UnauthenticatedBind("uid=alice," + slapdtest.PeopleDN); err != nil {
		t.Fatalf("unauthenticated bind refused: %v", err)
	}
}
