package dovecot

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/mailauthd/mailauthd/auth"
)

func testConfig() Mapping {
	return Mapping{
		Fields: map[string]string{
			"userdb_home": "homeDirectory",
			"userdb_uid":  "uidNumber",
			"userdb_gid":  "gidNumber",
			"host":        "mailHost",
		},
		Defaults: map[string]string{
			"userdb_home": "/var/vmail/%d/%n",
			"userdb_uid":  "vmail",
			"userdb_gid":  "vmail",
			"userdb_mail": "maildir:~/Maildir",
			"proxy_maybe": "y",
		},
	}
}

func TestReplyFieldsMappingAndDefaults(t *testing.T) {
	cfg := testConfig()
	v := auth.Accepted("uid=alice,ou=people,dc=example,dc=org", map[string][]string{
		"homedirectory": {"/srv/mail/alice"},
		"uidnumber":     {"2001"},
		"mailhost":      {"imap1.example.org", "imap2.example.org"},
	})
	got, err := cfg.Map("alice@example.org", v, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []auth.Field{
		{Key: "user", Value: "alice@example.org"},
		{Key: "host", Value: "imap1.example.org"},
		{Key: "proxy_maybe", Value: "y"},
		{Key: "userdb_gid", Value: "vmail"}, // attribute absent: default
		{Key: "userdb_home", Value: "/srv/mail/alice"},
		{Key: "userdb_mail", Value: "maildir:~/Maildir"},
		{Key: "userdb_uid", Value: "2001"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %q\nwant %q", got, want)
	}

	// No attributes at all: the templates, with %d and %n split at the last '@'.
	got, err = cfg.Map("bob@example.net", auth.Accepted("", nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	if f := fieldValue(got, "userdb_home"); f != "/var/vmail/example.net/bob" {
		t.Fatalf("userdb_home = %q", f)
	}
	if f := fieldValue(got, "host"); f != "" {
		t.Fatalf("host without attribute or default should be absent, got %q", f)
	}
}

func fieldValue(fs []auth.Field, k string) string {
	for _, f := range fs {
		if f.Key == k {
			return f.Value
		}
	}
	return ""
}

// TestMapReportsMissing: a mapped attribute the entry lacks is reported
// (the daemon logs it once), and the default stands in.
func TestMapReportsMissing(t *testing.T) {
	cfg := testConfig()
	var missing []string
	got, err := cfg.Map("bob", auth.Accepted("", map[string][]string{"uidnumber": {"7"}}), func(field, attr string) {
		missing = append(missing, field+"<-"+attr)
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"host<-mailHost", "userdb_gid<-gidNumber", "userdb_home<-homeDirectory"}; !reflect.DeepEqual(missing, want) {
		t.Fatalf("missing = %q, want %q", missing, want)
	}
	if fieldValue(got, "userdb_uid") != "7" || fieldValue(got, "userdb_gid") != "vmail" {
		t.Fatalf("fields = %q", got)
	}
}

func TestMapBadValues(t *testing.T) {
	cfg := testConfig()
	// NUL cannot be carried: the run must not guess.
	v := auth.Accepted("", map[string][]string{"mailhost": {"a\x00b"}})
	if _, err := cfg.Map("alice", v, nil); !errors.Is(err, ErrBadValue) {
		t.Fatalf("NUL value: err = %v, want ErrBadValue", err)
	}
	v = auth.Accepted("", map[string][]string{"mailhost": {strings.Repeat("h", MaxFieldValue+1)}})
	if _, err := cfg.Map("alice", v, nil); !errors.Is(err, ErrBadValue) {
		t.Fatalf("long value: err = %v, want ErrBadValue", err)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := testConfig()
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config refused: %v", err)
	}
	tests := []struct {
		name   string
		mutate func(*Mapping)
		want   string
	}{
		{"nopassword", func(c *Mapping) { c.Defaults["nopassword"] = "y" }, "nopassword"},
		{"password from LDAP", func(c *Mapping) { c.Fields["password"] = "userPassword" }, "password"},
		{"protected suffix", func(c *Mapping) { c.Fields["host:protected"] = "mailHost" }, "host:protected"},
		{"upper case field", func(c *Mapping) { c.Fields["Host"] = "mailHost" }, "Host"},
		{"tab in field name", func(c *Mapping) { c.Defaults["a\tb"] = "x" }, "a\\tb"},
		{"bad attribute", func(c *Mapping) { c.Fields["userdb_mail"] = "mail box" }, "mail box"},
		{"unknown token", func(c *Mapping) { c.Defaults["userdb_home"] = "/var/vmail/%h" }, "%h"},
		{"lone percent", func(c *Mapping) { c.Defaults["userdb_home"] = "/var/vmail/%" }, "lone"},
		{"control char", func(c *Mapping) { c.Defaults["userdb_home"] = "/x\ny" }, "control"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := testConfig()
			tt.mutate(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want mention of %q", err, tt.want)
			}
		})
	}
}

func TestLDAPAttributes(t *testing.T) {
	c := testConfig()
	want := []string{"gidnumber", "homedirectory", "mailhost", "uidnumber"}
	if got := c.LDAPAttributes(); !reflect.DeepEqual(got, want) {
		t.Fatalf("LDAPAttributes = %q, want %q", got, want)
	}
	got := c.MergeAttributes([]string{"mailHost", "cn"})
	if !reflect.DeepEqual(got, []string{"mailHost", "cn", "gidnumber", "homedirectory", "uidnumber"}) {
		t.Fatalf("MergeAttributes = %q", got)
	}
}
