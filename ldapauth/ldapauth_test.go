package ldapauth_test

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/directory"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
	"github.com/mailauthd/mailauthd/ldapauth"
)

// testHostnames are this "machine's" names in every test, so results never
// depend on where the tests run.
var testHostnames = []string{"mail.example.org", "mail"}

// testConfig is the ldap: section as the tests edit it: the transport
// settings (URLs, Timeout, ...) and the search settings (Base, Filter, ...)
// side by side.
type (
	dirConfig    = directory.Config
	searchConfig = ldapauth.Config
	testConfig   struct {
		dirConfig
		searchConfig
	}
)

func baseConfig(urls ...string) (testConfig, ldapauth.AccessConfig) {
	cfg := testConfig{directory.DefaultConfig(), ldapauth.DefaultConfig()}
	cfg.URLs = urls
	cfg.Base = slapdtest.PeopleDN
	cfg.Timeout = 2 * time.Second
	access := ldapauth.DefaultAccessConfig()
	access.Hostnames = testHostnames
	return cfg, access
}

// newAuth builds the decision on a directory of its own; the transport is
// closed when the test ends.
func newAuth(t testing.TB, cfg testConfig, access ldapauth.AccessConfig) *ldapauth.Authenticator {
	t.Helper()
	a, dir := newAuthDir(t, cfg, access)
	t.Cleanup(func() { dir.Close() })
	return a
}

func newAuthDir(t testing.TB, cfg testConfig, access ldapauth.AccessConfig) (*ldapauth.Authenticator, *directory.Directory) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	dir, err := directory.New(cfg.dirConfig, log)
	if err != nil {
		t.Fatal(err)
	}
	a, err := ldapauth.New(dir, cfg.searchConfig, access, ldapauth.Options{Logger: log})
	if err != nil {
		dir.Close()
		t.Fatal(err)
	}
	return a, dir
}

// testWriter sends log lines to t.Log (shown only on failure or -v).
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type want struct {
	outcome     auth.Outcome
	reason      string // substring of Verdict.Reason
	userUnknown bool
}

func check(t *testing.T, name string, v auth.Verdict, w want) {
	t.Helper()
	if v.Outcome != w.outcome || !strings.Contains(v.Reason, w.reason) || v.UserUnknown() != w.userUnknown {
		t.Errorf("%s: got %v %q unknown=%v, want %v %q unknown=%v", name, v.Outcome, v.Reason, v.UserUnknown(), w.outcome, w.reason, w.userUnknown)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestAuthenticate(t *testing.T) {
	s := slapdtest.Start(t)
	cfg, access := baseConfig(s.URL())
	a := newAuth(t, cfg, access)
	access.ServiceAttribute = "authorizedService"
	svc := newAuth(t, cfg, access) // service rule on
	ctx := ctxT(t)

	accept := want{outcome: auth.Accept, reason: "ok"}
	for _, tc := range []struct {
		name string
		req  auth.Request
		want want
		svc  bool // use the authenticator with the service rule
	}{
		{"right password", auth.Request{User: "alice", Password: "alicepw", Service: "imap"}, accept, false},
		{"wrong password", auth.Request{User: "alice", Password: "nope", Service: "imap"}, want{auth.Reject, "wrong password", false}, false},
		{"password prefix", auth.Request{User: "alice", Password: "alicep", Service: "imap"}, want{auth.Reject, "wrong password", false}, false},
		{"unknown user", auth.Request{User: "mallory", Password: "x", Service: "imap"}, want{auth.Reject, "unknown user", true}, false},
		{"two entries", auth.Request{User: "twin", Password: "twinpw", Service: "imap"}, want{auth.Reject, "ambiguous", false}, false},
		{"host *", auth.Request{User: "star", Password: "starpw", Service: "imap"}, accept, false},
		{"host * and !this host", auth.Request{User: "negated", Password: "negatedpw", Service: "imap"}, want{auth.Reject, "host not allowed: denied by !mail.example.org", false}, false},
		{"no host attribute", auth.Request{User: "nohost", Password: "nohostpw", Service: "imap"}, want{auth.Reject, "host not allowed: no value", false}, false},
		{"other host only", auth.Request{User: "otherhost", Password: "otherhostpw", Service: "imap"}, want{auth.Reject, "host not allowed: no value matches", false}, false},
		{"host in upper case", auth.Request{User: "upper", Password: "upperpw", Service: "imap"}, accept, false},
		{"service allowed", auth.Request{User: "smtponly", Password: "smtponlypw", Service: "smtp"}, accept, true},
		{"service refused", auth.Request{User: "smtponly", Password: "smtponlypw", Service: "imap"}, want{auth.Reject, "service not allowed", false}, true},
		// Users without authorizedService are refused once the rule is on (SSSD semantics).
		{"service attribute missing", auth.Request{User: "star", Password: "starpw", Service: "pop"}, want{auth.Reject, "service not allowed: no value", false}, true},
		{"empty password", auth.Request{User: "alice", Password: "", Service: "imap"}, want{auth.Reject, "empty password", false}, false},
		{"NUL in password", auth.Request{User: "alice", Password: "alicepw\x00x", Service: "imap"}, want{auth.Reject, "invalid password", false}, false},
		{"NUL in user", auth.Request{User: "alice\x00", Password: "alicepw", Service: "imap"}, want{auth.Reject, "invalid user", false}, false},
		{"empty user", auth.Request{User: "", Password: "alicepw", Service: "imap"}, want{auth.Reject, "empty user", false}, false},
		{"filter metachar uid", auth.Request{User: "a*b", Password: "metapw", Service: "smtp"}, want{auth.Reject, "service not allowed", false}, true},
		{"wildcard does not match", auth.Request{User: "a*", Password: "metapw", Service: "imap"}, want{auth.Reject, "unknown user", true}, false},
		{"lone star does not match", auth.Request{User: "*", Password: "alicepw", Service: "imap"}, want{auth.Reject, "unknown user", true}, false},
		{"injection uid", auth.Request{User: "x)(uid=*", Password: "alicepw", Service: "imap"}, want{auth.Reject, "wrong password", false}, false},
		{"injection into alice", auth.Request{User: "alice)(uid=*", Password: "alicepw", Service: "imap"}, want{auth.Reject, "unknown user", true}, false},
		// A realm-blind filter: a realm nobody said this host serves is refused.
		{"realm split, not served", auth.Request{User: "alice@example.org", Password: "alicepw", Service: "imap"}, want{auth.Reject, "realm not served: example.org", false}, false},
	} {
		az := a
		if tc.svc {
			az = svc
		}
		v := az.Authenticate(ctx, tc.req)
		check(t, tc.name, v, tc.want)
		if strings.Contains(v.Reason, tc.req.Password) && tc.req.Password != "" {
			t.Errorf("%s: reason %q contains the password", tc.name, v.Reason)
		}
	}

	v := a.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw", Service: "imap"})
	if v.DN != "uid=alice,"+slapdtest.PeopleDN {
		t.Errorf("DN = %q", v.DN)
	}
	if got := v.Attributes["host"]; len(got) != 1 || got[0] != "mail.example.org" {
		t.Errorf("host attribute = %v", got)
	}
}

func TestMetacharacterUserAccepted(t *testing.T) {
	s := slapdtest.Start(t)
	cfg, access := baseConfig(s.URL())
	a := newAuth(t, cfg, access)
	ctx := ctxT(t)
	check(t, "a*b", a.Authenticate(ctx, auth.Request{User: "a*b", Password: "metapw"}), want{outcome: auth.Accept, reason: "ok"})
	check(t, "x)(uid=*", a.Authenticate(ctx, auth.Request{User: "x)(uid=*", Password: "injectpw"}), want{outcome: auth.Accept, reason: "ok"})
}

func TestAllowMissingHostAndHostOff(t *testing.T) {
	s := slapdtest.Start(t)
	cfg, access := baseConfig(s.URL())
	access.AllowMissingHost = true
	a := newAuth(t, cfg, access)
	ctx := ctxT(t)
	check(t, "missing allowed", a.Authenticate(ctx, auth.Request{User: "nohost", Password: "nohostpw"}), want{outcome: auth.Accept, reason: "ok"})
	check(t, "other host still refused", a.Authenticate(ctx, auth.Request{User: "otherhost", Password: "otherhostpw"}), want{auth.Reject, "host not allowed", false})

	access.AllowMissingHost = false
	access.HostAttribute = ""
	off := newAuth(t, cfg, access)
	check(t, "host check off", off.Authenticate(ctx, auth.Request{User: "otherhost", Password: "otherhostpw"}), want{outcome: auth.Accept, reason: "ok"})
}

// An empty password must be refused without any LDAP operation, even by a
// server that would accept it as an unauthenticated bind.
func TestEmptyPasswordNeverReachesLDAP(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithUnauthenticatedBind())
	cfg, access := baseConfig(s.URL())
	a := newAuth(t, cfg, access)
	ctx := ctxT(t)
	check(t, "empty password", a.Authenticate(ctx, auth.Request{User: "alice", Password: ""}), want{auth.Reject, "empty password", false})
	// With the server gone, an LDAP operation would be TempFail; Reject
	// shows the refusal came before any LDAP traffic.
	s.Stop()
	check(t, "empty password, LDAP down", a.Authenticate(ctx, auth.Request{User: "alice", Password: ""}), want{auth.Reject, "empty password", false})
	check(t, "right password, LDAP down", a.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw"}), want{auth.TempFail, "ldap unavailable", false})
}

func TestServiceAccountSearch(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithoutAnonymousRead())
	ctx := ctxT(t)

	cfg, access := baseConfig(s.URL())
	anon := newAuth(t, cfg, access)
	// Anonymous search is refused by this server: an error, not "no user".
	if v := anon.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw"}); v.Outcome == auth.Accept {
		t.Fatalf("anonymous search against a closed directory: %v %q", v.Outcome, v.Reason)
	}

	pwFile := filepath.Join(t.TempDir(), "bindpw")
	if err := os.WriteFile(pwFile, []byte(slapdtest.ServicePassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.BindDN = slapdtest.ServiceDN
	cfg.BindPasswordFile = pwFile
	svc := newAuth(t, cfg, access)
	for i := 0; i < 3; i++ { // reuse of the bound search and user-bind connections
		check(t, "service account", svc.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw"}), want{outcome: auth.Accept, reason: "ok"})
		check(t, "service account, wrong password", svc.Authenticate(ctx, auth.Request{User: "star", Password: "bad"}), want{auth.Reject, "wrong password", false})
	}

	cfg.BindPasswordFile = ""
	cfg.BindPassword = "wrong-service-password"
	bad := newAuth(t, cfg, access)
	check(t, "service bind refused", bad.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw"}), want{auth.TempFail, "service account bind refused", false})
}

func TestExtraFilters(t *testing.T) {
	s := slapdtest.Start(t)
	cfg, access := baseConfig(s.URL())
	access.Filters = []string{"(!(employeeType=disabled))", "(|(host=%h)(host=\\2a))"}
	a := newAuth(t, cfg, access)
	ctx := ctxT(t)
	check(t, "passes filters", a.Authenticate(ctx, auth.Request{User: "star", Password: "starpw"}), want{outcome: auth.Accept, reason: "ok"})
	check(t, "exact host via %h", a.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw"}), want{outcome: auth.Accept, reason: "ok"})
	check(t, "locked", a.Authenticate(ctx, auth.Request{User: "locked", Password: "lockedpw"}), want{auth.Reject, "access filter not matched: (!(employeeType=disabled))", false})
	check(t, "locked, lookup", a.Lookup(ctx, auth.Request{User: "locked"}), want{auth.Reject, "access filter not matched", false})

	access.Filters = []string{"(entryDN=%D)"}
	dnf := newAuth(t, cfg, access)
	check(t, "%D filter", dnf.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw"}), want{outcome: auth.Accept, reason: "ok"})
}

func TestDomainFilters(t *testing.T) {
	s := slapdtest.Start(t)
	ctx := ctxT(t)
	cfg, access := baseConfig(s.URL())
	cfg.Filter = "(mail=%U@%d)"
	a := newAuth(t, cfg, access)
	check(t, "dave@example.org", a.Authenticate(ctx, auth.Request{User: "dave@example.org", Password: "davepw"}), want{outcome: auth.Accept, reason: "ok"})
	check(t, "dave@example.net", a.Authenticate(ctx, auth.Request{User: "dave", Realm: "example.net", Password: "dave2pw"}), want{outcome: auth.Accept, reason: "ok"})
	check(t, "dave@example.net with example.org's password", a.Authenticate(ctx, auth.Request{User: "dave@example.net", Password: "davepw"}), want{auth.Reject, "wrong password", false})
	check(t, "no domain, no default realm", a.Authenticate(ctx, auth.Request{User: "dave", Password: "davepw"}), want{auth.Reject, "unknown user", true})

	cfg.DefaultRealm = "example.org"
	cfg.Filter = "(mail=%u@%r)"
	cfg.Base = "dc=%2,dc=%1" // DN tokens from the realm
	dr := newAuth(t, cfg, access)
	check(t, "default realm", dr.Authenticate(ctx, auth.Request{User: "dave", Password: "davepw"}), want{outcome: auth.Accept, reason: "ok"})
	check(t, "realm into base: no such base", dr.Authenticate(ctx, auth.Request{User: "dave", Realm: "example.net", Password: "dave2pw"}), want{auth.Reject, "unknown user", true})
}

func TestLookup(t *testing.T) {
	s := slapdtest.Start(t)
	cfg, access := baseConfig(s.URL())
	cfg.Attributes = []string{"homeDirectory", "uidNumber", "gidNumber", "mailHost"}
	a := newAuth(t, cfg, access)
	ctx := ctxT(t)

	v := a.Lookup(ctx, auth.Request{User: "alice", Service: "imap"})
	check(t, "lookup alice", v, want{outcome: auth.Accept, reason: "ok"})
	for k, w := range map[string]string{"homedirectory": "/srv/mail/example.org/alice", "uidnumber": "2001", "gidnumber": "2000", "mailhost": "imap1.example.org"} {
		if got := v.Attributes[k]; len(got) != 1 || got[0] != w {
			t.Errorf("lookup attribute %s = %v, want %s", k, got, w)
		}
	}
	if _, ok := v.Attributes["userpassword"]; ok {
		t.Error("lookup returned userPassword")
	}
	check(t, "lookup unknown", a.Lookup(ctx, auth.Request{User: "nobody"}), want{auth.Reject, "unknown user", true})
	check(t, "lookup policy", a.Lookup(ctx, auth.Request{User: "otherhost"}), want{auth.Reject, "host not allowed", false})
	check(t, "lookup ambiguous", a.Lookup(ctx, auth.Request{User: "twin"}), want{auth.Reject, "ambiguous", false})
	s.Stop()
	check(t, "lookup, LDAP down", a.Lookup(ctx, auth.Request{User: "alice"}), want{auth.TempFail, "ldap unavailable", false})
}

func TestExplain(t *testing.T) {
	s := slapdtest.Start(t)
	cfg, access := baseConfig(s.URL())
	access.ServiceAttribute = "authorizedService"
	access.Filters = []string{"(!(employeeType=disabled))"}
	a := newAuth(t, cfg, access)
	ctx := ctxT(t)

	var b bytes.Buffer
	v := a.Explain(ctx, auth.Request{User: "smtponly", Password: "smtponlypw", Service: "smtp"}, &b)
	check(t, "explain", v, want{outcome: auth.Accept, reason: "ok"})
	out := b.String()
	for _, w := range []string{
		"LDAP reachable: " + s.URL(), "user found: uid=smtponly," + slapdtest.PeopleDN, "password: ok",
		"host rule:", "allowed by *", "service rule:", "allowed by smtp", "filter 1 (!(employeeType=disabled)): ok", "verdict: accept",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("explain output lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, "smtponlypw") {
		t.Errorf("explain output contains the password:\n%s", out)
	}

	b.Reset()
	v = a.Explain(ctx, auth.Request{User: "negated", Password: "bad", Service: "smtp"}, &b)
	check(t, "explain wrong password", v, want{auth.Reject, "wrong password", false})
	if !strings.Contains(b.String(), "password: wrong") {
		t.Errorf("explain output lacks the wrong password step:\n%s", b.String())
	}
}

// bound is a generous upper bound for "answers within the timeout": timing
// is asserted only to catch hangs, never tightly.
func bound(timeout time.Duration) time.Duration { return 3*timeout + time.Second }

func TestLDAPDownAndRecovery(t *testing.T) {
	s := slapdtest.Start(t)
	cfg, access := baseConfig(s.URL())
	cfg.Timeout = time.Second
	a := newAuth(t, cfg, access)
	ctx := context.Background() // no deadline: the authenticator must bound itself
	alice := auth.Request{User: "alice", Password: "alicepw"}

	check(t, "before", a.Authenticate(ctx, alice), want{outcome: auth.Accept, reason: "ok"})
	s.Stop()
	start := time.Now()
	check(t, "slapd down", a.Authenticate(ctx, alice), want{auth.TempFail, "ldap unavailable", false})
	if el := time.Since(start); el > bound(cfg.Timeout) {
		t.Errorf("slapd down: answer after %v", el)
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	check(t, "after restart", a.Authenticate(ctx, alice), want{outcome: auth.Accept, reason: "ok"})
	// Restart again without a request in between: pooled connections are
	// stale now and must be replaced transparently.
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	check(t, "stale pool after restart", a.Authenticate(ctx, alice), want{outcome: auth.Accept, reason: "ok"})
	check(t, "stale pool, wrong password", a.Authenticate(ctx, auth.Request{User: "alice", Password: "x"}), want{auth.Reject, "wrong password", false})
}

func TestStuckLDAP(t *testing.T) {
	s := slapdtest.Start(t)
	cfg, access := baseConfig(s.URL())
	cfg.Timeout = 500 * time.Millisecond
	a := newAuth(t, cfg, access)
	alice := auth.Request{User: "alice", Password: "alicepw"}
	check(t, "before", a.Authenticate(context.Background(), alice), want{outcome: auth.Accept, reason: "ok"})

	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ { // pooled and fresh connections alike
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			v := a.Authenticate(context.Background(), alice)
			if v.Outcome != auth.TempFail {
				t.Errorf("stuck slapd: %v %q, want tempfail", v.Outcome, v.Reason)
			}
			if el := time.Since(start); el > bound(cfg.Timeout) {
				t.Errorf("stuck slapd: answer after %v", el)
			}
		}()
	}
	wg.Wait()

	// A caller's shorter deadline wins over cfg.Timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	start := time.Now()
	check(t, "caller deadline", a.Authenticate(ctx, alice), want{auth.TempFail, "ldap unavailable", false})
	cancel()
	if el := time.Since(start); el > bound(100*time.Millisecond) {
		t.Errorf("caller deadline: answer after %v", el)
	}

	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	check(t, "after resume", a.Authenticate(context.Background(), alice), want{outcome: auth.Accept, reason: "ok"})
}

func TestTLS(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithLDAPS())
	ctx := ctxT(t)
	alice := auth.Request{User: "alice", Password: "alicepw"}

	cfg, access := baseConfig(s.LDAPSURL())
	cfg.CAFile = s.CAFile()
	check(t, "ldaps", newAuth(t, cfg, access).Authenticate(ctx, alice), want{outcome: auth.Accept, reason: "ok"})

	cfg, access = baseConfig(s.URL())
	cfg.CAFile = s.CAFile()
	cfg.StartTLS = true
	check(t, "starttls", newAuth(t, cfg, access).Authenticate(ctx, alice), want{outcome: auth.Accept, reason: "ok"})

	// Without the test CA the system roots do not trust slapd's certificate.
	cfg.CAFile = ""
	check(t, "starttls, CA unknown", newAuth(t, cfg, access).Authenticate(ctx, alice), want{auth.TempFail, "certificate not trusted", false})
	cfg, access = baseConfig(s.LDAPSURL())
	check(t, "ldaps, CA unknown", newAuth(t, cfg, access).Authenticate(ctx, alice), want{auth.TempFail, "certificate not trusted", false})
}

func TestUntrustedCertificate(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithLDAPS(), slapdtest.WithUntrustedCert())
	ctx := ctxT(t)
	alice := auth.Request{User: "alice", Password: "alicepw"}
	cfg, access := baseConfig(s.LDAPSURL())
	cfg.CAFile = s.CAFile()
	check(t, "ldaps untrusted", newAuth(t, cfg, access).Authenticate(ctx, alice), want{auth.TempFail, "certificate not trusted", false})
	cfg, access = baseConfig(s.URL())
	cfg.CAFile = s.CAFile()
	cfg.StartTLS = true
	check(t, "starttls untrusted", newAuth(t, cfg, access).Authenticate(ctx, alice), want{auth.TempFail, "certificate not trusted", false})
}

func TestFailover(t *testing.T) {
	live := slapdtest.Start(t)
	dead := slapdtest.Start(t)
	deadURL := dead.URL()
	dead.Stop()

	cfg, access := baseConfig(deadURL, live.URL())
	cfg.Timeout = time.Second
	a := newAuth(t, cfg, access)
	ctx := ctxT(t)
	var b bytes.Buffer
	v := a.Explain(ctx, auth.Request{User: "alice", Password: "alicepw"}, &b)
	check(t, "failover", v, want{outcome: auth.Accept, reason: "ok"})
	if !strings.Contains(b.String(), "LDAP reachable: "+live.URL()) {
		t.Errorf("explain does not name the live server:\n%s", b.String())
	}
	for i := 0; i < 20; i++ { // concurrency beyond the idle pool: fresh dials skip the dead URL
		check(t, "failover repeated", a.Authenticate(ctx, auth.Request{User: "star", Password: "starpw"}), want{outcome: auth.Accept, reason: "ok"})
	}
}

func TestConcurrent(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithUsers(20))
	cfg, access := baseConfig(s.URL())
	cfg.PoolSize = 2
	cfg.MaxConns = 4
	a := newAuth(t, cfg, access)
	ctx := ctxT(t)
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				n := (g + i) % 20
				pw := slapdtest.GeneratedUserPassword(n)
				if i%3 == 0 {
					pw += "x"
				}
				v := a.Authenticate(ctx, auth.Request{User: "user" + strconv.Itoa(n), Password: pw})
				wantOutcome := auth.Accept
				if i%3 == 0 {
					wantOutcome = auth.Reject
				}
				if v.Outcome != wantOutcome {
					t.Errorf("user%d: %v %q, want %v", n, v.Outcome, v.Reason, wantOutcome)
				}
			}
		}(g)
	}
	wg.Wait()
}

func TestCloseAndExplainLookup(t *testing.T) {
	s := slapdtest.Start(t)
	cfg, access := baseConfig(s.URL())
	a := newAuth(t, cfg, access)
	ctx := ctxT(t)

	var b bytes.Buffer
	v := a.Explain(ctx, auth.Request{User: "otherhost"}, &b)
	check(t, "explain lookup", v, want{auth.Reject, "host not allowed", false})
	for _, w := range []string{"lookup only", "user found: uid=otherhost", "no value matches", "verdict: reject"} {
		if !strings.Contains(b.String(), w) {
			t.Errorf("explain lookup lacks %q:\n%s", w, b.String())
		}
	}
	if strings.Contains(b.String(), "password: ok") {
		t.Errorf("lookup claims a password check:\n%s", b.String())
	}

	a, dir := newAuthDir(t, cfg, access)
	check(t, "before close", a.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw"}), want{outcome: auth.Accept, reason: "ok"})
	dir.Close()
	check(t, "after close", a.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw"}), want{auth.TempFail, "shutting down", false})
}

// TestRealms: a login's realm is part of its identity. With each way a realm
// can be bound to the entry, alice's own domain opens alice and another
// domain opens nothing; the verdict names the entry canonically, whatever
// case, spacing or realm the client typed.
func TestRealms(t *testing.T) {
	s := slapdtest.Start(t)
	ctx := ctxT(t)
	type tc struct {
		req      auth.Request
		outcome  auth.Outcome
		reason   string
		wantUser string // canonical name on accept
	}
	login := func(user, realm, pw string) auth.Request {
		return auth.Request{User: user, Realm: realm, Password: pw, Service: "imap"}
	}
	notServed := func(realm string) string { return "realm not served: " + realm }
	for _, setup := range []struct {
		name  string
		edit  func(*testConfig, *ldapauth.AccessConfig)
		cases []tc
	}{
		{"realm-blind filter (default)", nil, []tc{
			{login("alice", "", "alicepw"), auth.Accept, "ok", "alice"},
			{login("ALICE", "", "alicepw"), auth.Accept, "ok", "alice"},
			{login(" alice", "", "alicepw"), auth.Accept, "ok", "alice"},
			{login("alice@example.org", "", "alicepw"), auth.Reject, notServed("example.org"), ""},
			{login("alice", "evil.test", "alicepw"), auth.Reject, notServed("evil.test"), ""},
			{login("alice@evil.test", "", "alicepw"), auth.Reject, notServed("evil.test"), ""},
		}},
		{"access.realms", func(_ *testConfig, a *ldapauth.AccessConfig) { a.Realms = []string{"example.org"} }, []tc{
			{login("alice@example.org", "", "alicepw"), auth.Accept, "ok", "alice@example.org"},
			{login("ALICE", "EXAMPLE.ORG", "alicepw"), auth.Accept, "ok", "alice@example.org"},
			{login("alice", "", "alicepw"), auth.Accept, "ok", "alice"},
			{login("alice@evil.test", "", "alicepw"), auth.Reject, notServed("evil.test"), ""},
		}},
		{"ldap.default_realm is served", func(c *testConfig, _ *ldapauth.AccessConfig) { c.DefaultRealm = "example.org" }, []tc{
			{login("alice", "", "alicepw"), auth.Accept, "ok", "alice@example.org"},
			{login("alice@example.org", "", "alicepw"), auth.Accept, "ok", "alice@example.org"},
			{login("alice@evil.test", "", "alicepw"), auth.Reject, notServed("evil.test"), ""},
		}},
		{"entry attribute", func(_ *testConfig, a *ldapauth.AccessConfig) { a.RealmAttribute = "mail" }, []tc{
			{login("alice@example.org", "", "alicepw"), auth.Accept, "ok", "alice@example.org"},
			{login("alice@Example.Org", "", "alicepw"), auth.Accept, "ok", "alice@example.org"},
			{login("alice@evil.test", "", "alicepw"), auth.Reject, notServed("evil.test"), ""},
			{login("dave", "example.net", "davepw"), auth.Reject, notServed("example.net"), ""},  // dave's mail is @example.org
			{login("star@example.org", "", "starpw"), auth.Reject, notServed("example.org"), ""}, // no mail at all
		}},
		{"filter token", func(c *testConfig, _ *ldapauth.AccessConfig) { c.Filter = "(mail=%U@%d)" }, []tc{
			{login("dave@example.org", "", "davepw"), auth.Accept, "ok", "dave@example.org"},
			{login("dave@example.net", "", "dave2pw"), auth.Accept, "ok", "dave@example.net"},
			{login("DAVE@EXAMPLE.NET", "", "dave2pw"), auth.Accept, "ok", "dave@example.net"},
			{login("dave@example.net", "", "davepw"), auth.Reject, "wrong password", ""},
			{login("alice@evil.test", "", "alicepw"), auth.Reject, "unknown user", ""},
			// The search bound the login's own domain, not the realm the client sent beside it.
			{login("dave@example.org", "evil.test", "davepw"), auth.Reject, notServed("evil.test"), ""},
		}},
		{"explicit canonical_user", func(c *testConfig, a *ldapauth.AccessConfig) {
			c.CanonicalUser = "%{mail}"
			a.AllowMissingHost = true
		}, []tc{
			{login("alice", "", "alicepw"), auth.Accept, "ok", "alice@example.org"},
			{login("nohost", "", "nohostpw"), auth.Reject, "the entry has no mail", ""},
		}},
	} {
		t.Run(setup.name, func(t *testing.T) {
			cfg, access := baseConfig(s.URL())
			if setup.edit != nil {
				setup.edit(&cfg, &access)
			}
			a := newAuth(t, cfg, access)
			for _, c := range setup.cases {
				for _, lookup := range []bool{false, true} {
					req, v := c.req, auth.Verdict{}
					if lookup {
						req.Password = ""
						v = a.Lookup(ctx, req)
					} else {
						v = a.Authenticate(ctx, req)
					}
					if c.reason == "wrong password" && lookup {
						continue // a lookup checks no password
					}
					if v.Outcome != c.outcome || !strings.Contains(v.Reason, c.reason) || v.User != c.wantUser {
						t.Errorf("%+v (lookup %v): %v %q user %q, want %v %q user %q",
							c.req, lookup, v.Outcome, v.Reason, v.User, c.outcome, c.reason, c.wantUser)
					}
				}
			}
		})
	}
	// Explain shows the realm decision.
	cfg, access := baseConfig(s.URL())
	access.Realms = []string{"example.org"}
	var b bytes.Buffer
	newAuth(t, cfg, access).Explain(ctx, login("alice@evil.test", "", "alicepw"), &b)
	if !strings.Contains(b.String(), "realm: evil.test is not served") {
		t.Errorf("explain lacks the realm step:\n%s", b.String())
	}
}
