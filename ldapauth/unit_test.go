package ldapauth

import (
	"errors"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/auth"
)

// expandFilter and expandBase expand a template for req as the decision
// does: every value escaped for its context.
func expandFilter(tmpl string, req auth.Request, defaultRealm string) (string, error) {
	v := requestValues(req, defaultRealm)
	b, err := expand(nil, tmpl, &v, ldap.EscapeFilter)
	return string(b), err
}

func expandBase(tmpl string, req auth.Request, defaultRealm string) (string, error) {
	v := requestValues(req, defaultRealm)
	b, err := expand(nil, tmpl, &v, ldap.EscapeDN)
	return string(b), err
}

func TestExpandFilter(t *testing.T) {
	for _, tc := range []struct {
		tmpl         string
		req          auth.Request
		defaultRealm string
		want         string
		err          string // substring; "" = no error
	}{
		{"(uid=%u)", auth.Request{User: "alice"}, "", "(uid=alice)", ""},
		{"(uid=%u)", auth.Request{User: "a*b"}, "", `(uid=a\2ab)`, ""},
		{"(uid=%u)", auth.Request{User: "x)(uid=*"}, "", `(uid=x\29\28uid=\2a)`, ""},
		{"(uid=%u)", auth.Request{User: `back\slash`}, "", `(uid=back\5cslash)`, ""},
		{"(uid=%u)", auth.Request{User: "jürgen"}, "", `(uid=j\c3\bcrgen)`, ""},
		// libsasl2 split: name@domain with no realm.
		{"(uid=%u)", auth.Request{User: "alice@example.org"}, "", "(uid=alice)", ""},
		{"(mail=%u@%r)", auth.Request{User: "alice@example.org"}, "", "(mail=alice@example.org)", ""},
		{"(mail=%u%R)", auth.Request{User: "alice"}, "", "(mail=alice)", ""},
		{"(mail=%u%R)", auth.Request{User: "alice", Realm: "example.net"}, "", "(mail=alice@example.net)", ""},
		{"(mail=%u@%r)", auth.Request{User: "alice"}, "example.com", "(mail=alice@example.com)", ""},
		{"(mail=%u@%r)", auth.Request{User: "alice", Realm: "x.org"}, "example.com", "(mail=alice@x.org)", ""},
		{"(mail=%u@%r)", auth.Request{User: "alice"}, "", "", "no value"},
		// An explicit realm keeps '@' in the user: %U and %d split it (lak.c).
		{"(&(uid=%U)(dom=%d)(r=%r))", auth.Request{User: "bob@sub.example.org", Realm: "realm.net"}, "", "(&(uid=bob)(dom=sub.example.org)(r=realm.net))", ""},
		{"(uid=%u)", auth.Request{User: "bob@sub.example.org", Realm: "realm.net"}, "", "(uid=bob@sub.example.org)", ""},
		{"(dom=%d)", auth.Request{User: "bob", Realm: "example.org"}, "", "(dom=example.org)", ""},
		{"(dom=%d)", auth.Request{User: "bob"}, "", "", "no value"},
		{"(x=%1)(y=%2)(z=%3)", auth.Request{User: "bob", Realm: "mail.example.org"}, "", "(x=org)(y=example)(z=mail)", ""},
		{"(x=%4)", auth.Request{User: "bob", Realm: "mail.example.org"}, "", "", "no value"},
		{"(&(uid=%u)(svc=%s))", auth.Request{User: "bob", Service: "imap"}, "", "(&(uid=bob)(svc=imap))", ""},
		{"(&(uid=%u)(svc=%s))", auth.Request{User: "bob"}, "", "", "no value"},
		{"(&(uid=%u)(pct=100%%))", auth.Request{User: "bob"}, "", "(&(uid=bob)(pct=100%))", ""},
		{"(uid=%u)%", auth.Request{User: "bob"}, "", "", "lone %"},
		{"(uid=%x)", auth.Request{User: "bob"}, "", "", "unknown token %x"},
		{"(host=%h)", auth.Request{User: "bob"}, "", "", "only allowed in access filters"},
		{"(member=%D)", auth.Request{User: "bob"}, "", "", "only allowed in access filters"},
	} {
		got, err := expandFilter(tc.tmpl, tc.req, tc.defaultRealm)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("expandFilter(%q, %+v): err %v, want %q", tc.tmpl, tc.req, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("expandFilter(%q, %+v) = %q, %v; want %q", tc.tmpl, tc.req, got, err, tc.want)
		}
	}
}

func TestExpandBaseAndAccessTokens(t *testing.T) {
	got, err := expandBase("ou=%d,dc=example,dc=org", auth.Request{User: "bob", Realm: `a,b+c`}, "")
	if err != nil || got != `ou=a\,b\+c,dc=example,dc=org` {
		t.Errorf("ExpandBase = %q, %v", got, err)
	}
	v := tokenValues{user: "bob", host: "mail.example.org", dn: "cn=x*y,dc=example,dc=org", access: true}
	b, err := expand(nil, "(&(host=%h)(member=%D))", &v, ldap.EscapeFilter)
	if err != nil || string(b) != `(&(host=mail.example.org)(member=cn=x\2ay,dc=example,dc=org))` {
		t.Errorf("access filter = %q, %v", b, err)
	}
	if !errors.Is(func() error { _, err := expandFilter("(r=%r)", auth.Request{User: "u"}, ""); return err }(), ErrNoValue) {
		t.Error("missing realm is not ErrNoValue")
	}
}

// structure counts the filter metacharacters that give a filter its shape.
func structure(s string) (n int) {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '(', ')', '*':
			n++
		}
	}
	return n
}

func FuzzExpandFilter(f *testing.F) {
	f.Add("(uid=%u)", "alice", "", "imap")
	f.Add("(&(mail=%U@%d)(svc=%s))", "a*b@example.org", "", "smtp")
	f.Add("(x=%1.%2%R%%)", "x)(uid=*", "mail.example.org", "pop")
	f.Add("%", "\x00", "\\", "")
	f.Fuzz(func(t *testing.T, tmpl, user, realm, service string) {
		req := auth.Request{User: user, Realm: realm, Service: service}
		got, err := expandFilter(tmpl, req, "default.example")
		if err != nil {
			return
		}
		// Values can never add filter structure: every ( ) * in the result
		// comes from the template itself.
		if structure(got) != structure(tmpl) {
			t.Fatalf("expandFilter(%q, %q) = %q: values changed the filter structure", tmpl, user, got)
		}
		if strings.Count(got, "\x00") != strings.Count(tmpl, "\x00") {
			t.Fatalf("expandFilter(%q, %q) = %q: a value added a NUL", tmpl, user, got)
		}
		if tmpl == "(uid=%u)" {
			if _, err := ldap.CompileFilter(got); err != nil {
				t.Fatalf("(uid=%%u) with %q does not compile: %v", user, err)
			}
		}
	})
}

func TestMatchRule(t *testing.T) {
	names := []string{"mail.example.org", "mail"}
	for _, tc := range []struct {
		values []string
		ok     bool
		why    string
	}{
		{nil, false, "no value"},
		{[]string{}, false, "no value"},
		{[]string{"mail.example.org"}, true, "allowed by mail.example.org"},
		{[]string{"MAIL.Example.ORG"}, true, "allowed by MAIL.Example.ORG"},
		{[]string{"mail"}, true, "allowed by mail"},
		{[]string{"other.example.org"}, false, "no value matches"},
		{[]string{"*"}, true, "allowed by *"},
		{[]string{"*.example.org"}, false, "no value matches"}, // no globs
		{[]string{"mail*"}, false, "no value matches"},
		{[]string{"*", "!mail.example.org"}, false, "denied by !mail.example.org"},
		// Negation of the short name wins too (SSSD would allow here).
		{[]string{"*", "!mail"}, false, "denied by !mail"},
		{[]string{"!mail", "mail.example.org"}, false, "denied by !mail"},
		{[]string{"!MAIL.EXAMPLE.ORG", "*"}, false, "denied by !MAIL.EXAMPLE.ORG"},
		{[]string{"!other.example.org", "*"}, true, "allowed by *"},
		{[]string{"!other.example.org"}, false, "no value matches"},
		{[]string{"!*", "mail"}, false, "denied by !*"},
		{[]string{"", "!"}, false, "no value matches"},
		{[]string{" mail"}, false, "no value matches"},
	} {
		ok, why := matchRule(tc.values, names)
		if ok != tc.ok || why != tc.why {
			t.Errorf("matchRule(%q) = %v %q, want %v %q", tc.values, ok, why, tc.ok, tc.why)
		}
	}
	// Service rule: the same function against the request's service.
	if ok, _ := matchRule([]string{"smtp"}, []string{"imap"}); ok {
		t.Error("service smtp allowed imap")
	}
	if ok, _ := matchRule([]string{"IMAP"}, []string{"imap"}); !ok {
		t.Error("service IMAP refused imap")
	}
	if ok, _ := matchRule([]string{"smtp"}, []string{""}); ok {
		t.Error("empty service allowed")
	}
}

func BenchmarkMatchRule(b *testing.B) {
	values := []string{"other1.example.org", "other2.example.org", "!old.example.org", "MAIL.EXAMPLE.ORG"}
	names := []string{"mail.example.org", "mail"}
	b.ReportAllocs()
	for b.Loop() {
		if ok, _ := matchRule(values, names); !ok {
			b.Fatal("no match")
		}
	}
}

func BenchmarkExpandFilter(b *testing.B) {
	req := auth.Request{User: "alice@example.org", Service: "imap"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := expandFilter("(&(uid=%U)(mail=%u@%d))", req, ""); err != nil {
			b.Fatal(err)
		}
	}
}

func TestConfigErrors(t *testing.T) {
	good := func() (Config, AccessConfig) {
		c := DefaultConfig()
		c.Base = "ou=people,dc=example,dc=org"
		a := DefaultAccessConfig()
		a.Hostnames = []string{"mail.example.org"}
		return c, a
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config, *AccessConfig)
		err    string // "" = valid
	}{
		{"valid", func(*Config, *AccessConfig) {}, ""},
		{"valid with tokens", func(c *Config, a *AccessConfig) {
			c.Base = "ou=%d,dc=example,dc=org"
			c.Filter = "(&(uid=%U)(mail=%u@%d))"
			a.Filters = []string{"(host=%h)", "(!(member=%D))"}
		}, ""},
		{"no base", func(c *Config, _ *AccessConfig) { c.Base = "" }, "ldap.base: required"},
		{"bad base", func(c *Config, _ *AccessConfig) { c.Base = "people" }, "not a valid DN"},
		{"bad scope", func(c *Config, _ *AccessConfig) { c.Scope = "tree" }, "ldap.scope"},
		{"bad filter", func(c *Config, _ *AccessConfig) { c.Filter = "(uid=%u" }, "not a valid LDAP filter"},
		{"filter token typo", func(c *Config, _ *AccessConfig) { c.Filter = "(uid=%n)" }, "unknown token %n"},
		{"filter without user", func(c *Config, _ *AccessConfig) { c.Filter = "(objectClass=person)" }, "must contain %u or %U"},
		{"filter with %%u only", func(c *Config, _ *AccessConfig) { c.Filter = "(uid=%%u)" }, "must contain %u or %U"},
		{"%h in user filter", func(c *Config, _ *AccessConfig) { c.Filter = "(&(uid=%u)(host=%h))" }, "only allowed in access filters"},
		{"userPassword attribute", func(c *Config, _ *AccessConfig) { c.Attributes = []string{"homeDirectory", "userPassword"} }, "userPassword must never be fetched"},
		{"bad attribute", func(c *Config, _ *AccessConfig) { c.Attributes = []string{"home dir"} }, "not an attribute name"},
		{"bad host attribute", func(_ *Config, a *AccessConfig) { a.HostAttribute = "host(" }, "access.host_attribute"},
		{"bad access filter", func(_ *Config, a *AccessConfig) { a.Filters = []string{"(host=%h"} }, "access.filters[0]"},
		{"too many filters", func(_ *Config, a *AccessConfig) { a.Filters = make([]string, 9) }, "at most 8"},
		{"glob hostname", func(_ *Config, a *AccessConfig) { a.Hostnames = []string{"*.example.org"} }, "access.hostnames[0]"},
	} {
		c, a := good()
		tc.mutate(&c, &a)
		_, err := New(nil, c, a, Options{})
		if tc.err == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.err)
		}
	}
}

func TestMirrorConfig(t *testing.T) {
	c := DefaultConfig()
	c.Base = "ou=people,dc=example,dc=org"
	a := DefaultAccessConfig()
	if _, on, err := MirrorConfig(c, a); on || err != nil {
		t.Fatalf("off by default: %v %v", on, err)
	}
	c.MirrorRefresh = time.Minute
	c.Attributes = []string{"mailHost"}
	mc, on, err := MirrorConfig(c, a)
	if !on || err != nil || mc.Base != c.Base || mc.Filter != DefaultFilter || mc.Scope != ldap.ScopeWholeSubtree ||
		strings.Join(mc.Attributes, ",") != "host,uid,mailHost" {
		t.Fatalf("MirrorConfig = %+v %v %v", mc, on, err)
	}
	c.MirrorRefresh = time.Second
	if _, _, err := MirrorConfig(c, a); err == nil || !strings.Contains(err.Error(), "too short") {
		t.Errorf("1s refresh: %v", err)
	}
	c.MirrorRefresh = time.Minute
	a.Filters = []string{"(!(employeeType=disabled))"}
	if _, _, err := MirrorConfig(c, a); err == nil || !strings.Contains(err.Error(), "access.filters") {
		t.Errorf("with access filters: %v", err)
	}
}

func TestDefaultsAndHostnames(t *testing.T) {
	c := DefaultConfig()
	c.Base = "dc=example,dc=org"
	a, err := New(nil, c, DefaultAccessConfig(), Options{}) // hostnames from this machine
	if err != nil {
		t.Fatal(err)
	}
	h, _ := os.Hostname()
	if names := a.hostnames; len(names) == 0 || names[0] != strings.ToLower(h) {
		t.Errorf("hostnames = %v, want first %q", names, h)
	}
}

func TestDefaultCanonical(t *testing.T) {
	for _, tc := range []struct {
		filter, want string
		ok           bool
	}{
		{"(uid=%u)", "%{uid}%R", true},
		{"(&(objectClass=posixAccount)(uid=%u))", "%{uid}%R", true},
		{"(mail=%U@%d)", "%{mail}", true},
		{"(mail=%u@%r)", "%{mail}", true},
		{"(mail=%u%R)", "%{mail}", true},
		{"(sAMAccountName=%U)", "%{sAMAccountName}%R", true},
		{"(|(uid=%u)(mail=%u))", "", false}, // two login attributes: no single canonical one
		{"(cn=%d)", "", false},
	} {
		got, ok := defaultCanonical(tc.filter)
		if got != tc.want || ok != tc.ok {
			t.Errorf("defaultCanonical(%q) = %q %v, want %q %v", tc.filter, got, ok, tc.want, tc.ok)
		}
	}
}

func TestRealmConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*Config, *AccessConfig)
		err    string
	}{
		{"realm with @", func(_ *Config, a *AccessConfig) { a.Realms = []string{"@example.org"} }, "access.realms[0]"},
		{"empty realm", func(_ *Config, a *AccessConfig) { a.Realms = []string{""} }, "access.realms[0]"},
		{"bad realm attribute", func(_ *Config, a *AccessConfig) { a.RealmAttribute = "mail box" }, "access.realm_attribute"},
		{"canonical token", func(c *Config, _ *AccessConfig) { c.CanonicalUser = "%n" }, "unknown token %n"},
		{"canonical brace", func(c *Config, _ *AccessConfig) { c.CanonicalUser = "%{mail" }, "without }"},
		{"canonical password", func(c *Config, _ *AccessConfig) { c.CanonicalUser = "%{userPassword}" }, "not an attribute name"},
	} {
		c := DefaultConfig()
		c.Base = "dc=example,dc=org"
		a := DefaultAccessConfig()
		a.Hostnames = []string{"mail.example.org"}
		tc.mutate(&c, &a)
		if _, err := New(nil, c, a, Options{}); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.err)
		}
	}
}

// The realm warnings at startup say what to set, and only when it matters.
func TestRealmStartupWarnings(t *testing.T) {
	for _, tc := range []struct {
		name       string
		filter     string
		realms     []string
		defRealm   string
		realmAttr  string
		binds      bool
		wantInLogs string // "" = no realm warning
	}{
		{"default filter, nothing served", DefaultFilter, nil, "", "", false, "access.realms: [example.org]"},
		{"default filter, one domain", DefaultFilter, []string{"example.org"}, "", "", false, ""},
		{"default filter, default realm only", DefaultFilter, nil, "example.org", "", false, ""},
		{"default filter, two domains", DefaultFilter, []string{"a.example"}, "b.example", "", false, "one password opens both"},
		{"filter with the domain", "(mail=%u@%d)", []string{"a.example", "b.example"}, "", "", true, ""},
		{"filter with the realm", "(&(uid=%u)(associatedDomain=%r))", nil, "", "", true, ""},
		{"realm attribute", DefaultFilter, []string{"a.example", "b.example"}, "", "mail", true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			c.Base = "ou=people,dc=example,dc=org"
			c.Filter, c.DefaultRealm = tc.filter, tc.defRealm
			a := DefaultAccessConfig()
			a.Hostnames = []string{"mail.example.org"}
			a.Realms, a.RealmAttribute = tc.realms, tc.realmAttr
			if got := BindsRealms(c, a); got != tc.binds {
				t.Errorf("BindsRealms = %v, want %v", got, tc.binds)
			}
			var b strings.Builder
			if _, err := New(nil, c, a, Options{Logger: slog.New(slog.NewTextHandler(&b, nil))}); err != nil {
				t.Fatal(err)
			}
			realmWarn := strings.Contains(b.String(), "level=WARN") && strings.Contains(b.String(), "realm")
			if tc.wantInLogs == "" {
				if realmWarn {
					t.Errorf("unexpected warning: %s", b.String())
				}
				return
			}
			if !realmWarn || !strings.Contains(b.String(), tc.wantInLogs) {
				t.Errorf("want a realm warning with %q, got: %s", tc.wantInLogs, b.String())
			}
		})
	}
}
