package directory

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	pw := filepath.Join(dir, "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o600)
	emptyPw := filepath.Join(dir, "empty")
	os.WriteFile(emptyPw, []byte("\n"), 0o600)
	notPEM := filepath.Join(dir, "ca.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)

	good := func() Config {
		c := DefaultConfig()
		c.URLs = []string{"ldap://127.0.0.1:1"}
		return c
	}
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		err    string // "" = valid
	}{
		{"valid", func(*Config) {}, ""},
		{"valid with password file", func(c *Config) { c.BindDN, c.BindPasswordFile = "cn=svc,dc=example,dc=org", pw }, ""},
		{"valid go-ldap", func(c *Config) { c.Client = ClientGoLDAP }, ""},
		{"no urls", func(c *Config) { c.URLs = nil }, "ldap.urls: at least one"},
		{"bad scheme", func(c *Config) { c.URLs = []string{"ldapi:///run/slapd"} }, "scheme must be"},
		{"url with path", func(c *Config) { c.URLs = []string{"ldap://h/dc=x"} }, "want scheme://host"},
		{"ldaps and starttls", func(c *Config) { c.URLs = []string{"ldaps://h"}; c.StartTLS = true }, "one or the other"},
		{"missing ca file", func(c *Config) { c.CAFile = filepath.Join(dir, "nope") }, "ldap.ca_file"},
		{"ca file not pem", func(c *Config) { c.CAFile = notPEM }, "no PEM certificate"},
		{"bind dn without password", func(c *Config) { c.BindDN = "cn=svc,dc=example,dc=org" }, "bind password is empty"},
		{"empty password file", func(c *Config) { c.BindDN, c.BindPasswordFile = "cn=svc,dc=example,dc=org", emptyPw }, "empty password"},
		{"password and file", func(c *Config) { c.BindDN, c.BindPasswordFile, c.BindPassword = "cn=svc,dc=example,dc=org", pw, "x" }, "keep one"},
		{"password without dn", func(c *Config) { c.BindPassword = "x" }, "without ldap.bind_dn"},
		{"bad bind dn", func(c *Config) { c.BindDN, c.BindPassword = "not a dn", "x" }, "ldap.bind_dn"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "ldap.timeout"},
		{"huge pool", func(c *Config) { c.PoolSize = 5000 }, "ldap.pool_size"},
		{"max conns below pool", func(c *Config) { c.MaxConns = 2 }, "ldap.max_conns"},
		{"unknown client", func(c *Config) { c.Client = "openldap" }, "ldap.client"},
	} {
		c := good()
		tc.mutate(&c)
		d, err := New(c, nil)
		if tc.err == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			} else {
				d.Close()
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: err %v, want %q", tc.name, err, tc.err)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("%s: error shows the bind password: %v", tc.name, err)
		}
	}
}

func TestDefaults(t *testing.T) {
	c := DefaultConfig()
	c.URLs = []string{"ldap://127.0.0.1:1"}
	c.Timeout, c.PoolSize, c.Client = 0, 0, ""
	d, err := New(c, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if d.cfg.Timeout != DefaultTimeout || d.cfg.PoolSize != DefaultPoolSize || d.cfg.MaxConns != 4*DefaultPoolSize || d.cfg.Client != ClientWire {
		t.Errorf("defaults not applied: %+v", d.cfg)
	}
}

// TestWorldReadablePasswordFile: a bind password file every user can read
// is named at startup.
func TestWorldReadablePasswordFile(t *testing.T) {
	pw := filepath.Join(t.TempDir(), "pw")
	os.WriteFile(pw, []byte("secret\n"), 0o644)
	var logs strings.Builder
	c := DefaultConfig()
	c.URLs, c.BindDN, c.BindPasswordFile = []string{"ldap://127.0.0.1:1"}, "cn=svc,dc=example,dc=org", pw
	d, err := New(c, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	if !strings.Contains(logs.String(), "mode 0644") || strings.Contains(logs.String(), "secret\n") {
		t.Errorf("log: %s", logs.String())
	}
}
