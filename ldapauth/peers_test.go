package ldapauth_test

// The decision against 389-ds (internal/ds389test) and Samba AD
// (internal/sambatest), each started once for the package, and OpenLDAP's
// ppolicy (internal/slapdtest): every account state a bind can meet, the
// group rules admins write for each, the host rule, and a missing base.

import (
	"bytes"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/directory"
	"github.com/mailauthd/mailauthd/internal/ds389test"
	"github.com/mailauthd/mailauthd/internal/sambatest"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
	"github.com/mailauthd/mailauthd/ldapauth"
)

var (
	ds = ds389test.NewShared()
	dc = sambatest.NewShared() // Samba's default: simple binds need TLS
)

func TestMain(m *testing.M) {
	code := m.Run()
	ds.Close()
	dc.Close()
	os.Exit(code)
}

// verdict is what a case expects: the outcome, the cause and the exact reason.
type verdict struct {
	outcome auth.Outcome
	cause   auth.Cause
	reason  string
}

var (
	accepted      = verdict{auth.Accept, auth.CauseNone, "ok"}
	wrongPassword = verdict{auth.Reject, auth.CauseWrongPassword, "wrong password"}
	unknown       = verdict{auth.Reject, auth.CauseUnknownUser, "unknown user"}
)

func account(reason string) verdict { return verdict{auth.Reject, auth.CauseAccount, reason} }

func expect(t *testing.T, name string, v auth.Verdict, w verdict) {
	t.Helper()
	reason := v.Reason
	if v.Outcome == auth.Accept {
		reason = "ok"
	}
	if v.Outcome != w.outcome || v.Cause != w.cause || reason != w.reason {
		t.Errorf("%s: %v/%v %q, want %v/%v %q", name, v.Outcome, v.Cause, v.Reason, w.outcome, w.cause, w.reason)
	}
}

// stateCase is one login and the verdict it must get.
type stateCase struct {
	user, password string
	want           verdict
}

func runStates(t *testing.T, a *ldapauth.Authenticator, cases []stateCase) {
	t.Helper()
	ctx := ctxT(t)
	for _, c := range cases {
		pw := "right"
		if !strings.HasSuffix(c.password, "pw") && !strings.Contains(c.password, "-Pass-") {
			pw = "wrong"
		}
		expect(t, c.user+", "+pw+" password", a.Authenticate(ctx, auth.Request{User: c.user, Password: c.password}), c.want)
	}
}

func clientsOf(cfg testConfig) []testConfig {
	var out []testConfig
	for _, cl := range []string{directory.ClientWire, directory.ClientGoLDAP} {
		c := cfg
		c.Client = cl
		out = append(out, c)
	}
	return out
}

// ds389Config searches 389-ds as the service account over ldaps.
func ds389Config(s *ds389test.Server) (testConfig, ldapauth.AccessConfig) {
	cfg, access := baseConfig(s.LDAPSURL())
	cfg.CAFile = s.CAFile()
	cfg.BindDN, cfg.BindPassword = ds389test.ServiceDN, ds389test.ServicePassword
	cfg.Base = ds389test.PeopleDN
	return cfg, access
}

// TestAccountStates389 (issue 11, item 3): 389-ds's account states are
// refusals with a precise reason, never a temporary failure. A wrong
// password never reveals a state; the two locks answer before the
// password is checked, so they do whatever the password.
func TestAccountStates389(t *testing.T) {
	s := ds.Get(t)
	cfg, access := ds389Config(s)
	access.HostAttribute = "" // the fixture accounts but alice have no host
	for _, cfg := range clientsOf(cfg) {
		t.Run(cfg.Client, func(t *testing.T) {
			a, dir := newAuthDir(t, cfg, access)
			defer dir.Close()
			runStates(t, a, []stateCase{
				{"alice", ds389test.Alice.Password, accepted},
				{"alice", "wrong", wrongPassword},
				{"nobody", "nobodypw", unknown},
				{"inactivated", ds389test.Inactivated.Password, account(ldapauth.ReasonDisabled)},
				{"inactivated", "wrong", account(ldapauth.ReasonDisabled)},
				{"lockedout", ds389test.LockedOut.Password, account(ldapauth.ReasonLocked)},
				{"lockedout", "wrong", account(ldapauth.ReasonLocked)},
				{"mustchange", ds389test.MustChange.Password, account(ldapauth.ReasonMustChange)},
				{"mustchange", "wrong", wrongPassword},
				{"expired", ds389test.Expired.Password, account(ldapauth.ReasonPwExpired)},
				{"expired", "wrong", wrongPassword},
				{"expiring", ds389test.Expiring.Password, accepted},
				{"expiring", "wrong", wrongPassword},
			})
			if st := dir.Stats(); st.Failovers != 0 || st.StaleRetries != 0 {
				t.Errorf("account states cost connections: %+v", st)
			}
			// --explain says what the directory said.
			var b bytes.Buffer
			a.Explain(ctxT(t), auth.Request{User: "lockedout", Password: ds389test.LockedOut.Password}, &b)
			if !strings.Contains(b.String(), "account locked") || !strings.Contains(b.String(), "Exceed password retry limit") {
				t.Errorf("explain of a locked account:\n%s", b.String())
			}
			b.Reset()
			a.Explain(ctxT(t), auth.Request{User: "mustchange", Password: ds389test.MustChange.Password}, &b)
			if !strings.Contains(b.String(), "password: right, but the directory refuses the account: password must be changed") {
				t.Errorf("explain of must-change:\n%s", b.String())
			}
		})
	}
	// Locking an account by failures: wrong, wrong, wrong, then locked for
	// the right password too.
	a := newAuth(t, cfg, access)
	runStates(t, a, []stateCase{
		{"lockable", "wrong1", wrongPassword},
		{"lockable", "wrong2", wrongPassword},
		{"lockable", "wrong3", wrongPassword},
		{"lockable", ds389test.Lockable.Password, account(ldapauth.ReasonLocked)},
	})
}

// sambaConfig searches Samba from the domain root as the service account
// over ldaps, by sAMAccountName.
func sambaConfig(s *sambatest.Server) (testConfig, ldapauth.AccessConfig) {
	cfg, access := baseConfig(s.LDAPSURL())
	cfg.CAFile = s.CAFile()
	cfg.BindDN, cfg.BindPassword = sambatest.Service.DN, sambatest.Service.Password
	cfg.Base = sambatest.BaseDN
	cfg.Filter = "(sAMAccountName=%u)"
	return cfg, access
}

// TestAccountStatesSamba (issue 11, item 3): every AD sub-code of
// invalidCredentials is its own reason; 52e is a wrong password; a locked
// account (775) answers any password alike. Over ldaps and StartTLS; plain
// LDAP is refused by Samba (simple binds need TLS) and says so.
func TestAccountStatesSamba(t *testing.T) {
	s := dc.Get(t)
	cfg, access := sambaConfig(s)
	access.HostAttribute = ""
	reasons := map[string]string{
		"533": ldapauth.ReasonDisabled, "701": ldapauth.ReasonAccountExpired, "773": ldapauth.ReasonMustChange,
		"775": ldapauth.ReasonLocked, "532": ldapauth.ReasonPwExpired, "530": ldapauth.ReasonLogonHours,
		"531": ldapauth.ReasonWorkstation,
	}
	var cases []stateCase
	for _, acct := range sambatest.Accounts {
		if acct == sambatest.Lockable {
			continue // locked below, once
		}
		right, wrong := accepted, wrongPassword
		if acct.Data != "" {
			right = account(reasons[acct.Data])
		}
		if acct.Data == "775" {
			wrong = right
		}
		cases = append(cases, stateCase{acct.SAM, acct.Password, right}, stateCase{acct.SAM, "wrong", wrong})
	}
	cases = append(cases, stateCase{"nobody", "Nobody-Pass-1", unknown})
	starttls := cfg
	starttls.URLs, starttls.StartTLS = []string{s.URL()}, true
	for _, tr := range []struct {
		name string
		cfg  testConfig
	}{{"ldaps", cfg}, {"starttls", starttls}} {
		for _, c := range clientsOf(tr.cfg) {
			t.Run(tr.name+"/"+c.Client, func(t *testing.T) {
				a, dir := newAuthDir(t, c, access)
				defer dir.Close()
				runStates(t, a, cases)
				if st := dir.Stats(); st.Failovers != 0 {
					t.Errorf("account states cost failovers: %+v", st)
				}
			})
		}
	}
	a := newAuth(t, cfg, access)
	var b bytes.Buffer
	a.Explain(ctxT(t), auth.Request{User: sambatest.Disabled.SAM, Password: sambatest.Disabled.Password}, &b)
	if !strings.Contains(b.String(), "password: right, but the directory refuses the account: account disabled") ||
		!strings.Contains(b.String(), "AD data 533") {
		t.Errorf("explain of a disabled account:\n%s", b.String())
	}
	runStates(t, a, []stateCase{
		{"lockable", "Wrong-Pass-1", wrongPassword},
		{"lockable", "Wrong-Pass-2", wrongPassword},
		{"lockable", "Wrong-Pass-3", wrongPassword},
		{"lockable", sambatest.Lockable.Password, account(ldapauth.ReasonLocked)},
	})

	// Plain LDAP: Samba refuses the service account's simple bind.
	plain := cfg
	plain.URLs, plain.CAFile = []string{s.URL()}, ""
	v := newAuth(t, plain, access).Authenticate(ctxT(t), auth.Request{User: "alice", Password: sambatest.Alice.Password})
	if v.Outcome != auth.TempFail || !strings.Contains(v.Reason, "strongerAuthRequired") {
		t.Errorf("plain LDAP to Samba: %v %q, want a temporary failure naming strongerAuthRequired", v.Outcome, v.Reason)
	}
}

// TestAccountStatesPPolicy (issue 11, item 3): OpenLDAP says nothing in a
// refused bind; the password policy response control, requested on every
// user bind, does.
func TestAccountStatesPPolicy(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithPPolicy())
	cfg, access := baseConfig(s.URL())
	access.HostAttribute = ""
	for _, cfg := range clientsOf(cfg) {
		t.Run(cfg.Client, func(t *testing.T) {
			runStates(t, newAuth(t, cfg, access), []stateCase{
				{"alice", "alicepw", accepted},
				{"pplocked", "pplockedpw", account(ldapauth.ReasonLocked)},
				{"pplocked", "wrong", account(ldapauth.ReasonLocked)},
				{"ppmustchange", "ppmustchangepw", account(ldapauth.ReasonMustChange)},
				{"ppmustchange", "wrong", wrongPassword},
				{"ppexpired", "ppexpiredpw", account(ldapauth.ReasonPwExpired)},
				{"ppexpired", "wrong", wrongPassword},
			})
		})
	}
	// Two grace logins, then expired; each client uses one.
	var as []*ldapauth.Authenticator
	for _, c := range clientsOf(cfg) {
		as = append(as, newAuth(t, c, access))
	}
	ctx := ctxT(t)
	expect(t, "ppgrace, 1st grace login", as[0].Authenticate(ctx, auth.Request{User: "ppgrace", Password: "ppgracepw"}), accepted)
	var b bytes.Buffer
	v := as[1].Explain(ctx, auth.Request{User: "ppgrace", Password: "ppgracepw"}, &b)
	expect(t, "ppgrace, 2nd grace login", v, accepted)
	if !strings.Contains(b.String(), "grace login, 0 left") {
		t.Errorf("explain of the last grace login:\n%s", b.String())
	}
	expect(t, "ppgrace, no grace left", as[0].Authenticate(ctx, auth.Request{User: "ppgrace", Password: "ppgracepw"}), account(ldapauth.ReasonPwExpired))
	runStates(t, as[1], []stateCase{
		{"pplockable", "wrong1", wrongPassword},
		{"pplockable", "wrong2", wrongPassword},
		{"pplockable", "wrong3", wrongPassword},
		{"pplockable", "pplockablepw", account(ldapauth.ReasonLocked)},
	})
}

// TestGroupAndHostRules: the configurations docs/ldapauth.md shows per
// directory, tested. Active Directory's memberOf lists direct groups only:
// a nested group needs the matching rule in chain (LDAP_MATCHING_RULE_IN_CHAIN,
// 1.2.840.113556.1.4.1941); 389-ds's memberOf plugin lists nested groups
// itself. The rule goes in ldap.filter (a non-member is an unknown user)
// or in access.filters (a non-member is refused by policy).
func TestGroupAndHostRules(t *testing.T) {
	ctx := ctxT(t)
	t.Run("samba", func(t *testing.T) {
		s := dc.Get(t)
		cfg, access := sambaConfig(s)
		alice := auth.Request{User: "alice", Password: sambatest.Alice.Password}
		svc := auth.Request{User: sambatest.Service.SAM, Password: sambatest.Service.Password} // in no group, no host
		access.AllowMissingHost = true

		direct := cfg
		direct.Filter = "(&(sAMAccountName=%u)(memberOf=" + sambatest.StaffGroupDN + "))"
		expect(t, "direct memberOf of a nested group", newAuth(t, direct, access).Authenticate(ctx, alice), unknown)

		nested := cfg
		nested.Filter = "(&(objectClass=user)(sAMAccountName=%u)(memberOf:1.2.840.113556.1.4.1941:=" + sambatest.StaffGroupDN + "))"
		a := newAuth(t, nested, access)
		expect(t, "in chain, member through mail-users", a.Authenticate(ctx, alice), accepted)
		expect(t, "in chain, not a member", a.Authenticate(ctx, svc), unknown)

		inAccess := access
		inAccess.Filters = []string{"(memberOf:1.2.840.113556.1.4.1941:=" + sambatest.StaffGroupDN + ")"}
		a = newAuth(t, cfg, inAccess)
		expect(t, "access filter, member", a.Authenticate(ctx, alice), accepted)
		expect(t, "access filter, not a member", a.Authenticate(ctx, svc),
			verdict{auth.Reject, auth.CausePolicy, "access filter not matched: " + inAccess.Filters[0]})

		access.AllowMissingHost = false
		a = newAuth(t, cfg, access)
		expect(t, "host rule, alice on mail.example.org", a.Authenticate(ctx, alice), accepted)
		expect(t, "host rule, no host", a.Authenticate(ctx, svc), verdict{auth.Reject, auth.CausePolicy, "host not allowed: no value"})
	})
	t.Run("openldap", func(t *testing.T) {
		s := slapdtest.Start(t, slapdtest.WithMemberOf())
		lc, err := ldap.DialURL(s.URL())
		if err != nil {
			t.Fatal(err)
		}
		defer lc.Close()
		if err := lc.Bind(slapdtest.AdminDN, slapdtest.AdminPassword); err != nil {
			t.Fatal(err)
		}
		for _, g := range []struct{ dn, member string }{
			{"ou=groups,dc=example,dc=org", ""},
			{"cn=mail,ou=groups,dc=example,dc=org", "uid=alice,ou=people,dc=example,dc=org"},
			{"cn=staff,ou=groups,dc=example,dc=org", "cn=mail,ou=groups,dc=example,dc=org"},
		} {
			add := ldap.NewAddRequest(g.dn, nil)
			if g.member == "" {
				add.Attribute("objectClass", []string{"organizationalUnit"})
				add.Attribute("ou", []string{"groups"})
			} else {
				add.Attribute("objectClass", []string{"groupOfNames"})
				add.Attribute("member", []string{g.member})
			}
			if err := lc.Add(add); err != nil {
				t.Fatal(err)
			}
		}
		cfg, access := baseConfig(s.URL())
		alice := auth.Request{User: "alice", Password: "alicepw"}
		star := auth.Request{User: "star", Password: "starpw"} // in no group

		inAccess := access
		inAccess.Filters = []string{"(memberOf=cn=mail,ou=groups,dc=example,dc=org)"}
		a := newAuth(t, cfg, inAccess)
		expect(t, "memberOf, member", a.Authenticate(ctx, alice), accepted)
		expect(t, "memberOf, not a member", a.Authenticate(ctx, star),
			verdict{auth.Reject, auth.CausePolicy, "access filter not matched: " + inAccess.Filters[0]})
		inAccess.Filters = []string{"(memberOf=cn=staff,ou=groups,dc=example,dc=org)"}
		expect(t, "memberOf of a nested group (the overlay lists direct groups only)", newAuth(t, cfg, inAccess).Authenticate(ctx, alice),
			verdict{auth.Reject, auth.CausePolicy, "access filter not matched: " + inAccess.Filters[0]})

		inFilter := cfg
		inFilter.Filter = "(&(uid=%u)(memberOf=cn=mail,ou=groups,dc=example,dc=org))"
		a = newAuth(t, inFilter, access)
		expect(t, "group in ldap.filter, member", a.Authenticate(ctx, alice), accepted)
		expect(t, "group in ldap.filter, not a member", a.Authenticate(ctx, star), unknown)
	})
	t.Run("389-ds", func(t *testing.T) {
		s := ds.Get(t)
		cfg, access := ds389Config(s)
		alice := auth.Request{User: "alice", Password: ds389test.Alice.Password}
		other := auth.Request{User: "expiring", Password: ds389test.Expiring.Password} // in no group, no host

		withGroup := cfg
		withGroup.Filter = "(&(uid=%u)(memberOf=" + ds389test.StaffGroupDN + "))"
		access.AllowMissingHost = true
		a := newAuth(t, withGroup, access)
		expect(t, "memberOf of a nested group (memberOf plugin)", a.Authenticate(ctx, alice), accepted)
		expect(t, "memberOf, not a member", a.Authenticate(ctx, other), unknown)

		access.AllowMissingHost = false
		a = newAuth(t, cfg, access)
		expect(t, "host rule, alice on mail.example.org", a.Authenticate(ctx, alice), accepted)
		expect(t, "host rule, no host", a.Authenticate(ctx, other), verdict{auth.Reject, auth.CausePolicy, "host not allowed: no value"})
		elsewhere := access
		elsewhere.Hostnames = []string{"imap.example.org"}
		expect(t, "host rule, alice elsewhere", newAuth(t, cfg, elsewhere).Authenticate(ctx, alice),
			verdict{auth.Reject, auth.CausePolicy, "host not allowed: no value matches"})
	})
}

// TestMissingBase (issue 15): a fixed ldap.base that does not exist is a
// configuration error, a TempFail "base DN not found" logged as an error,
// not "unknown user" for everyone. With tokens, a base that does not
// exist for this login's realm is an unknown user, as long as the fixed
// part of the template exists.
func TestMissingBase(t *testing.T) {
	s := slapdtest.Start(t)
	ctx := ctxT(t)
	baseNotFound := verdict{auth.TempFail, auth.CauseUnavailable, ldapauth.ReasonBaseNotFound}
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	build := func(base, filter, scope string) *ldapauth.Authenticator {
		cfg, access := baseConfig(s.URL())
		cfg.Base, cfg.Filter, cfg.Scope = base, filter, scope
		dir, err := directory.New(cfg.dirConfig, logger)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dir.Close() })
		a, err := ldapauth.New(dir, cfg.searchConfig, access, ldapauth.Options{Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	alice := auth.Request{User: "alice", Password: "alicepw"}

	ldapauth.ResetBaseErrorLimit()
	a := build("ou=nowhere,dc=example,dc=org", "(uid=%u)", "sub")
	expect(t, "fixed base missing", a.Authenticate(ctx, alice), baseNotFound)
	expect(t, "fixed base missing, lookup", a.Lookup(ctx, auth.Request{User: "alice"}), baseNotFound)
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "ldap.base does not exist") {
		t.Errorf("no error logged:\n%s", logs.String())
	}
	var b bytes.Buffer
	a.Explain(ctx, alice, &b)
	if !strings.Contains(b.String(), "base ou=nowhere,dc=example,dc=org does not exist") {
		t.Errorf("explain:\n%s", b.String())
	}

	// One entry per login as the base: a login without an entry is unknown.
	perUser := build("uid=%U,ou=people,dc=example,dc=org", "(uid=%U)", "base")
	expect(t, "token base, exists", perUser.Authenticate(ctx, alice), accepted)
	expect(t, "token base, missing for this login", perUser.Authenticate(ctx, auth.Request{User: "nobody", Password: "x"}), unknown)

	// The fixed part of the template is missing: wrong for every login.
	broken := build("uid=%U,ou=nowhere,dc=example,dc=org", "(uid=%U)", "base")
	expect(t, "token base, fixed part missing", broken.Authenticate(ctx, alice), baseNotFound)

	// Tokens all through (dc=%2,dc=%1): any realm without a tree is unknown.
	realm := build("dc=%2,dc=%1", "(mail=%u@%r)", "sub")
	expect(t, "realm base, no such realm", realm.Authenticate(ctx, auth.Request{User: "dave", Realm: "example.net", Password: "x"}), unknown)
}
