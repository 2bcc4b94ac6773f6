package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSampleConfigLoads(t *testing.T) {
	f, err := Load("../testdata/config/mailauthd.yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Listen.Saslauthd) != 2 || f.Listen.Saslauthd[1].Path != "/var/spool/postfix/var/run/saslauthd/mux" {
		t.Errorf("listen.saslauthd = %+v", f.Listen.Saslauthd)
	}
	if m, _ := f.Listen.Saslauthd[0].FileMode(); m != 0o660 {
		t.Errorf("mode = %o", m)
	}
	if f.LDAP.Directory.Timeout != 5*time.Second || f.LDAP.Search.Scope != "sub" || len(f.LDAP.Directory.URLs) != 2 {
		t.Errorf("ldap = %+v", f.LDAP)
	}
}

func TestDefaultsSurviveAPartialFile(t *testing.T) {
	f, err := Parse([]byte("ldap:\n  urls: [ldap://127.0.0.1]\n  base: dc=x\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.LDAP.Search.Filter != "(uid=%u)" || f.LDAP.Directory.Timeout != 5*time.Second || f.Access.HostAttribute != "host" {
		t.Errorf("defaults lost: %+v %+v", f.LDAP, f.Access)
	}
	// An explicit empty host_attribute turns host checks off; it must not be
	// mistaken for "unset".
	f, err = Parse([]byte("access:\n  host_attribute: \"\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.Access.HostAttribute != "" {
		t.Errorf("host_attribute = %q, want empty", f.Access.HostAttribute)
	}
}

func TestHTTPListeners(t *testing.T) {
	f, err := Parse([]byte("listen:\n  http:\n    - {path: /run/mailauthd/http, mode: \"0660\"}\n" +
		"    - {address: \"127.0.0.1:8143\"}\n    - {address: \"[::1]:8143\"}\n" +
		"    - {address: \"192.0.2.1:8143\", dangerously_allow_non_loopback: true}\n" +
		"auth_http:\n  server_attribute: mailHost\n  backends:\n    imap: {port: 143}\n    smtp: {server: 192.0.2.25, port: 25}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(f.Listen.HTTP) != 4 || !f.AuthHTTP.Enabled() || f.AuthHTTP.Backends["smtp"].Port != 25 || f.AuthHTTP.Path != "/auth" {
		t.Errorf("parsed %+v %+v", f.Listen.HTTP, f.AuthHTTP)
	}
	if d := Default(); len(d.Listen.HTTP) != 0 || d.AuthHTTP.Enabled() {
		t.Error("HTTP is on by default")
	}
}

func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"typo names key and line", "ldap:\n  urls: [ldap://x]\n  fitler: (uid=%u)\n", `line 3: unknown key "fitler" (in ldap)`},
		{"top-level typo", "lisen: {}\n", `line 1: unknown key "lisen" (in top level)`},
		{"bad duration", "ldap:\n  timeout: fast\n", "line 2"},
		{"zero timeout", "ldap:\n  timeout: 0s\n", "ldap.timeout must be positive"},
		{"bad mode", "listen:\n  saslauthd: [{path: /run/x, mode: \"rw\"}]\n", "not an octal permission"},
		{"relative socket", "listen:\n  saslauthd: [{path: run/x}]\n", "must be absolute"},
		{"same socket twice", "listen:\n  saslauthd: [{path: /run/x}, {path: /run/x}]\n", "used twice"},
		{"log format", "log: {format: xml}\n", "log.format"},
		{"password file without dn", "ldap: {bind_password_file: /x}\n", "bind_dn is empty"},
		{"two documents", "log: {level: info}\n---\nlog: {level: debug}\n", "more than one YAML document"},
		{"field size", "server: {max_field_size: 100}\n", "max_field_size"},
		{"moved key", "checkpassword:\n  fields: {userdb_home: homeDirectory}\n", "moved to dovecot.fields"},
		{"dovecot field", "dovecot:\n  fields: {nopassword: x}\n", "nopassword"},
		{"pamcheck typo", "pamcheck:\n  servics: [imap]\n", `unknown key "servics" (in pamcheck)`},
		{"pamcheck service", "pamcheck:\n  services: [../x]\n", "invalid service"},
		{"pamcheck state dir", "pamcheck:\n  state_dir: relative\n", "must be absolute"},
		{"pamcheck empty rule", "pamcheck:\n  rules:\n    - service: imap\n", "checks nothing"},
		{"pamcheck rule type", "pamcheck:\n  rules:\n    - service: imap\n      type: login\n      require_any_module: [a]\n", "unknown type"},
		{"negative mirror", "ldap:\n  mirror_refresh: -1s\n", "mirror_refresh"},
		{"http on every interface", "listen:\n  http: [{address: \":8080\"}]\n", "must be an IP address"},
		{"http on a public address", "listen:\n  http: [{address: \"192.0.2.1:8080\"}]\n", "dangerously_allow_non_loopback"},
		{"http port 0", "listen:\n  http: [{address: \"127.0.0.1:0\"}]\n", "port must be 1..65535"},
		{"http on a name", "listen:\n  http: [{address: \"localhost:8080\"}]\n", "not a name"},
		{"http path and address", "listen:\n  http: [{path: /run/h, address: \"127.0.0.1:80\"}]\n", "exactly one"},
		{"http mode on an address", "listen:\n  http: [{address: \"127.0.0.1:80\", mode: \"0600\"}]\n", "for a socket path"},
		{"http socket twice", "listen:\n  saslauthd: [{path: /run/x}]\n  http: [{path: /run/x}]\n", "used twice"},
		{"auth_http typo", "auth_http:\n  backend: {}\n", `unknown key "backend" (in auth_http)`},
		{"auth_http name backend", "auth_http:\n  backends:\n    imap: {server: imap.example.org, port: 143}\n", "needs an IP address"},
		{"auth_http backend typo", "auth_http:\n  backends:\n    imap: {sever: 192.0.2.1, port: 143}\n", `unknown key "sever" (in auth_http.backends)`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml))
			if err == nil {
				t.Fatalf("accepted %q", c.yaml)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}

func TestSaslauthdConf(t *testing.T) {
	// As an admin keeps it: readable by root alone (git checks files out 0644).
	data, err := os.ReadFile("../testdata/config/saslauthd.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(t.TempDir(), "saslauthd.conf")
	if err := os.WriteFile(conf, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := Load("", conf)
	if err != nil {
		t.Fatal(err)
	}
	l, q := f.LDAP.Directory, f.LDAP.Search
	if strings.Join(l.URLs, " ") != "ldap://127.0.0.1:389/ ldap://ldap2.example.org/" {
		t.Errorf("urls = %v", l.URLs)
	}
	if l.BindDN != "cn=saslauthd,dc=example,dc=org" || l.BindPassword != "s3cret" {
		t.Errorf("bind = %q", l.BindDN)
	}
	if q.Filter != "(uid=%u)" || q.Scope != "one" || l.Timeout != 3*time.Second || !l.StartTLS ||
		l.CAFile != "/etc/ssl/certs/ca.pem" || q.DefaultRealm != "example.org" || q.Base != "ou=people,dc=example,dc=org" {
		t.Errorf("ldap = %+v", f.LDAP)
	}
	if len(f.Warnings) != 1 || !strings.Contains(f.Warnings[0], "ldap_time_limit") {
		t.Errorf("warnings = %q", f.Warnings)
	}
	for _, w := range f.Warnings {
		if strings.Contains(w, "s3cret") {
			t.Error("warning leaks the bind password")
		}
	}
}

func TestSaslauthdConfRefusals(t *testing.T) {
	cases := []struct{ conf, want string }{
		{"ldap_group_dn: cn=mail,dc=x\n", "group checks"},
		{"ldap_auth_method: custom\n", "bind only"},
		{"ldap_auth_method: fastbind\n", "bind only"},
		{"ldap_use_sasl: yes\n", "SASL binds"},
		{"ldap_tls_cert: /x.pem\n", "client certificates"},
		{"ldap_serverz: ldap://x\n", "unknown key"},
		{"ldap_servers:\n", "no value"},
		{"ldap_servers ldap://x\n", "not a \"key: value\" line"},
		{"ldap_bind_dn: cn=x\n", "without ldap_bind_pw"},
		{"ldap_version: 2\n", "LDAPv3"},
		{"ldap_timeout: forever\n", "whole seconds"},
	}
	for _, c := range cases {
		_, _, err := ParseSaslauthdConf([]byte(c.conf), Default().LDAP)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err = %v, want %q", c.conf, err, c.want)
		}
	}
}

func TestSaslauthdConfWithYAMLLDAPRefused(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte("ldap: {urls: [ldap://x]}\n"), 0o600)
	if _, err := Load(cfg, "../testdata/config/saslauthd.conf"); err == nil || !strings.Contains(err.Error(), "one or the other") {
		t.Errorf("err = %v", err)
	}
}

func TestSwitchOn(t *testing.T) {
	for v, want := range map[string]bool{"yes": true, "on": true, "1": true, "true": true, "no": false, "off": false, "0": false, "false": false, "": false, "maybe": false} {
		if switchOn(v) != want {
			t.Errorf("switchOn(%q) = %v", v, !want)
		}
	}
}

func FuzzParse(f *testing.F) {
	if data, err := os.ReadFile("../testdata/config/mailauthd.yaml"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("ldap: {urls: [a], timeout: 1s}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err == nil && c.Validate() != nil {
			t.Fatalf("Parse accepted a config that Validate refuses")
		}
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line error: %q", err)
		}
	})
}

func FuzzParseSaslauthdConf(f *testing.F) {
	if data, err := os.ReadFile("../testdata/config/saslauthd.conf"); err == nil {
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _, err := ParseSaslauthdConf(data, Default().LDAP)
		if err == nil && c.Directory.BindDN != "" && c.Directory.BindPassword == "" {
			t.Fatalf("accepted a bind DN without password")
		}
	})
}

// The sample shipped to /etc/mailauthd must load as it is.
func TestShippedSampleLoads(t *testing.T) {
	f, err := Load("../packaging/mailauthd.yaml", "")
	if err != nil {
		t.Fatal(err)
	}
	if f.Listen.Control.Group != "dovecot" || f.Access.HostAttribute != "host" || f.Cache.TTL != 0 {
		t.Errorf("unexpected sample values: %+v %+v", f.Listen.Control, f.Access)
	}
}

// TestPamcheckSection: the pamcheck: section is decoded and validated with
// the rest of the file, and gets its package's defaults.
func TestPamcheckSection(t *testing.T) {
	f, err := Parse([]byte("pamcheck:\n  services: [imap]\n  state_dir: /srv/pc\n  rules:\n    - service: imap\n      require_any_module: [pam_sss.so]\n"))
	if err != nil {
		t.Fatal(err)
	}
	c := f.Pamcheck
	if len(c.Services) != 1 || c.StateDir != "/srv/pc" || c.Rules[0].Type != "auth" || len(c.ModuleDirs) == 0 {
		t.Fatalf("pamcheck = %+v", c)
	}
	f, err = Parse(nil)
	if err != nil || f.Pamcheck.StateDir == "" || len(f.Pamcheck.Services) == 0 {
		t.Fatalf("defaults: %+v %v", f.Pamcheck, err)
	}
}

// TestBareZeroDuration: "0" means off/zero for every duration key, as the
// documentation says (YAML reads it as an integer).
func TestBareZeroDuration(t *testing.T) {
	f, err := Parse([]byte("ldap:\n  mirror_refresh: 0\ncache: {ttl: 0}\nserver: {client_addr_wait: 0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if f.LDAP.Search.MirrorRefresh != 0 || f.Cache.TTL != 0 || f.Server.ClientAddrWait != 0 {
		t.Fatalf("zeros: %+v %+v", f.LDAP.Search, f.Cache)
	}
	// Still refused where zero is not allowed, with the key's own message.
	if _, err := Parse([]byte("ldap: {timeout: 0}\n")); err == nil || !strings.Contains(err.Error(), "ldap.timeout must be positive") {
		t.Fatalf("timeout 0: %v", err)
	}
	// Other integers stay type errors: 5 is not 5s.
	if _, err := Parse([]byte("ldap: {timeout: 5}\n")); err == nil {
		t.Fatal("timeout: 5 accepted")
	}
}

// TestFind: without an explicit --config, a missing default file is the
// built-in defaults; an explicit missing file is an error.
func TestFind(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.yaml")
	if f, err := Find(missing, false, ""); err != nil || f.Listen.Control.Path == "" {
		t.Fatalf("implicit missing: %v", err)
	}
	if _, err := Find(missing, true, ""); err == nil {
		t.Fatal("explicit missing file accepted")
	}
}

// TestWorldReadableSecrets: a saslauthd.conf holding ldap_bind_pw that
// every user can read is named at startup, with the fix.
func TestWorldReadableSecrets(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "saslauthd.conf")
	os.WriteFile(conf, []byte("ldap_servers: ldap://127.0.0.1/\nldap_bind_dn: cn=x,dc=example,dc=org\nldap_bind_pw: s3cret\nldap_search_base: dc=example,dc=org\n"), 0o644)
	f, err := Load("", conf)
	if err != nil {
		t.Fatal(err)
	}
	if w := strings.Join(f.Warnings, "\n"); !strings.Contains(w, "mode 0644") || !strings.Contains(w, "chmod o-rwx") || strings.Contains(w, "s3cret") {
		t.Errorf("warnings %q", f.Warnings)
	}
	os.Chmod(conf, 0o600)
	if f, _ = Load("", conf); len(f.Warnings) != 0 {
		t.Errorf("a 0600 file warned: %q", f.Warnings)
	}
}
