package doctor

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/pamcheck"
)

// A host wired right gives nothing above info, and says what it checked.
func TestGoodTreeIsClean(t *testing.T) {
	tr := good(t)
	r := tr.check(Options{})
	if r.Worst() > Info {
		t.Fatalf("findings above info on a good tree:\n%s", dump(r))
	}
	for _, c := range []string{"config-ok", "socket-listening", "postfix-ok", "cyrus-ok", "dovecot-ok", "ldap-skipped"} {
		want(t, r, c, Info)
	}
	f := want(t, r, "postfix-ok", Info)
	contain(t, "postfix-ok", f.Message, "chrooted to /var/spool/postfix", "/var/spool/postfix/var/run/saslauthd/mux")
	f = want(t, r, "dovecot-ok", Info)
	contain(t, "dovecot-ok", f.Message, "2.3.19.1", "vsz_limit 2G", "control socket /run/mailauthd/control")
	// Debian 12's Postfix finds smtpd.conf through its compiled-in path:
	// the one thing to do before Debian 13 is said, as info.
	want(t, r, "postfix-sasl-path-upgrade", Info)
}

func TestMailauthdConfig(t *testing.T) {
	t.Run("missing", func(t *testing.T) {
		tr := good(t)
		tr.remove("/etc/mailauthd/mailauthd.yaml")
		f := want(t, tr.check(Options{}), "config-missing", Critical)
		if f.Path != "/etc/mailauthd/mailauthd.yaml" {
			t.Errorf("path %q", f.Path)
		}
	})
	t.Run("invalid", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/mailauthd/mailauthd.yaml", 0o644, 0, 0, mailauthdYAML(goodLDAP)+"  scopee: sub\n")
		f := want(t, tr.check(Options{}), "config-invalid", Critical)
		contain(t, "message", f.Message, `unknown key "scopee"`)
		contain(t, "fix", f.Fix, "mailauthd serve --check")
	})
	t.Run("placeholders", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/mailauthd/mailauthd.yaml", 0o644, 0, 0, mailauthdYAML("  urls: [ldaps://ldap.corp.test]\n  base: ou=people,dc=example,dc=org\n")+"access:\n  hostnames: [mail.example.org]\n")
		f := want(t, tr.check(Options{}), "placeholder", Warning)
		contain(t, "message", f.Message, "ldap.base ou=people,dc=example,dc=org", "access.hostnames mail.example.org")
	})
	t.Run("cleartext remote ldap", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/mailauthd/mailauthd.yaml", 0o644, 0, 0, mailauthdYAML("  urls: [ldap://ldap.corp.test, ldap://127.0.0.1, \"ldap://[::1]:3389\", ldap://localhost]\n  base: ou=people,dc=corp,dc=test\n"))
		r := tr.check(Options{})
		f := want(t, r, "cleartext-ldap", Warning)
		contain(t, "message", f.Message, "ldap://ldap.corp.test")
		contain(t, "fix", f.Fix, "ldap.start_tls: true")
		n := 0
		for _, f := range r.Findings {
			if f.Code == "cleartext-ldap" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d cleartext findings, want 1 (loopback is fine):\n%s", n, dump(r))
		}
	})
	t.Run("cleartext with StartTLS is fine", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/mailauthd/mailauthd.yaml", 0o644, 0, 0, mailauthdYAML("  urls: [ldap://ldap.corp.test]\n  start_tls: true\n  base: ou=people,dc=corp,dc=test\n"))
		wantNo(t, tr.check(Options{}), "cleartext-ldap")
	})
}

func TestBindPasswordFile(t *testing.T) {
	t.Run("unreadable by the daemon", func(t *testing.T) {
		tr := good(t)
		tr.own("/etc/mailauthd/private/bind-password", 0o600, 0, 0)
		f := want(t, tr.check(Options{}), "bindpw-unreadable", Critical)
		if f.Path != "/etc/mailauthd/private/bind-password" {
			t.Errorf("path %q", f.Path)
		}
		contain(t, "message", f.Message, "runs as mailauthd", "root:root 0600")
		contain(t, "fix", f.Fix, "chgrp mailauthd /etc/mailauthd/private/bind-password && chmod 0640")
	})
	t.Run("directory not searchable", func(t *testing.T) {
		tr := good(t)
		tr.own("/etc/mailauthd/private", 0o700, 0, 0)
		f := want(t, tr.check(Options{}), "bindpw-unreadable", Critical)
		contain(t, "message", f.Message, "directory /etc/mailauthd/private is root:root 0700")
	})
	t.Run("world-readable", func(t *testing.T) {
		tr := good(t)
		tr.chmod("/etc/mailauthd/private/bind-password", 0o644)
		tr.chmod("/etc/mailauthd/private", 0o755)
		r := tr.check(Options{})
		f := want(t, r, "bindpw-world-readable", Warning)
		contain(t, "fix", f.Fix, "chmod 0640")
		wantNo(t, r, "bindpw-unreadable")
	})
	t.Run("missing", func(t *testing.T) {
		tr := good(t)
		tr.remove("/etc/mailauthd/private/bind-password")
		want(t, tr.check(Options{}), "bindpw-missing", Critical)
	})
	t.Run("hidden by PrivateTmp", func(t *testing.T) {
		tr := good(t)
		installUnits(t, tr)
		tr.write("/tmp/bindpw", 0o640, 0, gidMailauthd, "s3cret\n")
		tr.write("/etc/mailauthd/mailauthd.yaml", 0o644, 0, 0, strings.Replace(mailauthdYAML(goodLDAP), "/etc/mailauthd/private/bind-password", "/tmp/bindpw", 1))
		f := want(t, tr.run(Options{}), "bindpw-hidden-by-sandbox", Critical)
		contain(t, "message", f.Message, "PrivateTmp=yes")
	})
}

// installUnits copies the shipped systemd units into the tree.
func installUnits(t *testing.T, tr *tree) {
	t.Helper()
	for _, g := range []string{"../packaging/systemd/*", "../packaging/pamcheck/systemd/*"} {
		units, _ := filepath.Glob(g)
		for _, u := range units {
			data, err := os.ReadFile(u)
			if err != nil {
				t.Fatal(err)
			}
			tr.write("/lib/systemd/system/"+filepath.Base(u), 0o644, 0, 0, string(data))
		}
	}
}

func TestSystemdUnits(t *testing.T) {
	t.Run("shipped units", func(t *testing.T) {
		tr := good(t)
		installUnits(t, tr)
		r := tr.run(Options{})
		wantNo(t, r, "runtime-directory-chown", "socket-group-missing", "daemon-user-missing")
		if r.Worst() > Info {
			t.Fatalf("the shipped units on a good tree:\n%s", dump(r))
		}
		// The units, not listen.*, say what is served: both paths.
		f := want(t, r, "postfix-ok", Info)
		contain(t, "postfix-ok", f.Message, "/var/spool/postfix/var/run/saslauthd/mux")
	})
	t.Run("RuntimeDirectory chowns the sockets' directory", func(t *testing.T) {
		tr := good(t)
		installUnits(t, tr)
		tr.write("/etc/systemd/system/mailauthd.service.d/old.conf", 0o644, 0, 0, "[Service]\nRuntimeDirectory=mailauthd\nRuntimeDirectoryMode=0750\n")
		f := want(t, tr.run(Options{}), "runtime-directory-chown", Critical)
		if f.Path != "/etc/systemd/system/mailauthd.service.d/old.conf" || f.Line != 2 {
			t.Errorf("at %s:%d", f.Path, f.Line)
		}
		contain(t, "message", f.Message, "chowns /run/mailauthd to mailauthd (mode 0750)", "/run/mailauthd/mux")
		contain(t, "fix", f.Fix, "delete the RuntimeDirectory= lines")
	})
	t.Run("what RuntimeDirectory did: postfix locked out", func(t *testing.T) {
		tr := good(t)
		installUnits(t, tr)
		tr.own("/run/mailauthd", 0o750, uidMailauthd, gidMailauthd)
		tr.write("/etc/postfix/master.cf", 0o644, 0, 0, "smtp inet n - n - - smtpd\n")
		tr.write("/etc/postfix/sasl/smtpd.conf", 0o644, 0, 0, "pwcheck_method: saslauthd\nsaslauthd_path: /run/mailauthd/mux\n")
		f := want(t, tr.run(Options{}), "postfix-socket-unreachable", Critical)
		if f.Path != "/run/mailauthd" {
			t.Errorf("path %q, want the directory", f.Path)
		}
		contain(t, "message", f.Message, "directory /run/mailauthd is mailauthd:mailauthd 0750", "search (x)")
		contain(t, "cyrus too", want(t, tr.run(Options{}), "cyrus-socket-unreachable", Critical).Path, "/run/mailauthd")
	})
	t.Run("socket group missing", func(t *testing.T) {
		tr := good(t)
		installUnits(t, tr)
		tr.members("sasl", true)
		f := want(t, tr.run(Options{}), "socket-group-missing", Critical)
		contain(t, "message", f.Message, "SocketGroup=sasl", "mailauthd.socket fails to start")
	})
	t.Run("daemon user missing", func(t *testing.T) {
		tr := good(t)
		installUnits(t, tr)
		tr.write("/etc/passwd", 0o644, 0, 0, "root:x:0:0::/root:/bin/sh\npostfix:x:2101:2101::/:/bin/false\ncyrus:x:2102:2008::/:/bin/false\ndovecot:x:2103:2103::/:/bin/false\n")
		want(t, tr.run(Options{}), "daemon-user-missing", Critical)
	})
	t.Run("listen path not in the socket unit", func(t *testing.T) {
		tr := good(t)
		installUnits(t, tr)
		tr.write("/etc/mailauthd/mailauthd.yaml", 0o644, 0, 0, strings.Replace(mailauthdYAML(goodLDAP), "/var/spool/postfix/var/run/saslauthd/mux", "/run/other/mux", 1))
		f := want(t, tr.run(Options{}), "listen-ignored", Warning)
		contain(t, "message", f.Message, "/run/other/mux")
	})
}

func TestPostfix(t *testing.T) {
	t.Run("chrooted, chroot path not served", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/mailauthd/mailauthd.yaml", 0o644, 0, 0, strings.Replace(mailauthdYAML(goodLDAP), "    - {path: /var/spool/postfix/var/run/saslauthd/mux, mode: \"0660\", group: sasl}\n", "", 1))
		f := want(t, tr.check(Options{}), "postfix-socket-not-served", Critical)
		if f.Path != "/etc/postfix/sasl/smtpd.conf" {
			t.Errorf("path %q", f.Path)
		}
		contain(t, "message", f.Message, "chrooted", "/var/spool/postfix/var/run/saslauthd/mux", "libsasl2's default", "serves /run/mailauthd/mux")
		contain(t, "fix", f.Fix, "/var/spool/postfix/var/run/saslauthd/mux")
	})
	t.Run("chrooted, saslauthd_path outside the chroot", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/postfix/sasl/smtpd.conf", 0o644, 0, 0, "pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\nsaslauthd_path: /run/mailauthd/mux\n")
		f := want(t, tr.check(Options{}), "postfix-socket-not-served", Critical)
		if f.Line != 3 {
			t.Errorf("line %d, want 3 (saslauthd_path)", f.Line)
		}
		contain(t, "message", f.Message, "/var/spool/postfix/run/mailauthd/mux")
		contain(t, "fix", f.Fix, "smtpd is chrooted, so /run/mailauthd/mux means /var/spool/postfix/run/mailauthd/mux")
	})
	t.Run("not chrooted", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/postfix/master.cf", 0o644, 0, 0, "smtp      inet  n       -       n       -       -       smtpd\n")
		tr.write("/etc/postfix/sasl/smtpd.conf", 0o644, 0, 0, "pwcheck_method: saslauthd\nsaslauthd_path: /run/mailauthd/mux\n")
		r := tr.check(Options{})
		f := want(t, r, "postfix-ok", Info)
		contain(t, "message", f.Message, "/run/mailauthd/mux")
		if strings.Contains(f.Message, "chroot") {
			t.Errorf("not chrooted, but: %s", f.Message)
		}
	})
	t.Run("default chroot column is n", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/postfix/master.cf", 0o644, 0, 0, "smtp inet n - - - - smtpd\n")
		tr.write("/etc/postfix/sasl/smtpd.conf", 0o644, 0, 0, "pwcheck_method: saslauthd\nsaslauthd_path: /run/mailauthd/mux\n")
		want(t, tr.check(Options{}), "postfix-ok", Info)
	})
	t.Run("socket missing", func(t *testing.T) {
		tr := good(t)
		tr.remove("/var/spool/postfix/var/run/saslauthd/mux")
		r := tr.check(Options{})
		f := want(t, r, "postfix-socket-missing", Critical)
		contain(t, "message", f.Message, "does not exist", "every login fails now")
		want(t, r, "socket-not-listening", Warning)
	})
	t.Run("stale socket", func(t *testing.T) {
		tr := good(t)
		tr.remove("/var/spool/postfix/var/run/saslauthd/mux")
		tr.staleSocket("/var/spool/postfix/var/run/saslauthd/mux")
		f := want(t, tr.check(Options{}), "postfix-socket-missing", Critical)
		contain(t, "message", f.Message, "nothing listens")
	})
	t.Run("postfix not in group sasl", func(t *testing.T) {
		tr := good(t)
		tr.members("sasl", false, "cyrus")
		f := want(t, tr.check(Options{}), "postfix-socket-unreachable", Critical)
		if f.Path != "/var/spool/postfix/var/run/saslauthd" {
			t.Errorf("path %q: the 0710 directory blocks first", f.Path)
		}
		contain(t, "fix", f.Fix, "adduser postfix sasl")
	})
	t.Run("socket mode without group write", func(t *testing.T) {
		tr := good(t)
		tr.chmod("/var/spool/postfix/var/run/saslauthd/mux", 0o640)
		f := want(t, tr.check(Options{}), "postfix-socket-unreachable", Critical)
		contain(t, "message", f.Message, "root:sasl 0640", "write (w)")
		contain(t, "fix", f.Fix, "chmod g+w /var/spool/postfix/var/run/saslauthd/mux")
	})
	t.Run("submission only, via -o", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/postfix/main.cf", 0o644, 0, 0, "smtpd_sasl_auth_enable = no\n")
		tr.write("/etc/postfix/master.cf", 0o644, 0, 0, "smtp inet n - y - - smtpd\nsubmission inet n - y - - smtpd\n  -o syslog_name=postfix/submission\n  -o smtpd_sasl_auth_enable=yes\n")
		f := want(t, tr.check(Options{}), "postfix-ok", Info)
		contain(t, "message", f.Message, "service submission")
	})
	t.Run("no SMTP AUTH", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/postfix/main.cf", 0o644, 0, 0, "myhostname = mail\n")
		want(t, tr.check(Options{}), "postfix-no-sasl", Info)
	})
	t.Run("not saslauthd", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/postfix/sasl/smtpd.conf", 0o644, 0, 0, "pwcheck_method: auxprop\n")
		f := want(t, tr.check(Options{}), "postfix-not-saslauthd", Warning)
		if f.Line != 1 {
			t.Errorf("line %d", f.Line)
		}
	})
	t.Run("no plaintext mechanism", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/postfix/sasl/smtpd.conf", 0o644, 0, 0, "pwcheck_method: saslauthd\nmech_list: CRAM-MD5 DIGEST-MD5\n")
		want(t, tr.check(Options{}), "postfix-sasl-mechs", Critical)
	})
	t.Run("mechanism plugins missing", func(t *testing.T) {
		tr := good(t)
		tr.remove(saslPluginDirs()[0])
		f := want(t, tr.check(Options{}), "sasl-plugins-missing", Critical)
		contain(t, "fix", f.Fix, "libsasl2-modules")
	})
	t.Run("Debian 13: no compiled-in path", func(t *testing.T) {
		tr := good(t)
		tr.write("/usr/lib/postfix/sbin/smtpd", 0o755, 0, 0, "\x7fELF upstream")
		f := want(t, tr.check(Options{}), "postfix-sasl-path", Critical)
		if f.Path != "/etc/postfix/main.cf" {
			t.Errorf("path %q", f.Path)
		}
		contain(t, "message", f.Message, "/etc/sasl2", "/etc/postfix/sasl/smtpd.conf is never read")
		if f.Fix != "postconf -e cyrus_sasl_config_path=/etc/postfix/sasl && postfix reload" {
			t.Errorf("fix %q", f.Fix)
		}
	})
	t.Run("Debian 13 with cyrus_sasl_config_path", func(t *testing.T) {
		tr := good(t)
		tr.write("/usr/lib/postfix/sbin/smtpd", 0o755, 0, 0, "\x7fELF upstream")
		tr.write("/etc/postfix/main.cf", 0o644, 0, 0, "smtpd_sasl_auth_enable = yes\ncyrus_sasl_config_path = $config_directory/sasl\n")
		r := tr.check(Options{})
		want(t, r, "postfix-ok", Info)
		wantNo(t, r, "postfix-sasl-path", "postfix-sasl-path-upgrade")
	})
	t.Run("Debian 13 with the file in /etc/sasl2", func(t *testing.T) {
		tr := good(t)
		tr.write("/usr/lib/postfix/sbin/smtpd", 0o755, 0, 0, "\x7fELF upstream")
		tr.remove("/etc/postfix/sasl")
		tr.write("/etc/sasl2/smtpd.conf", 0o644, 0, 0, "pwcheck_method: saslauthd\n")
		f := want(t, tr.check(Options{}), "postfix-ok", Info)
		contain(t, "message", f.Message, "/etc/sasl2/smtpd.conf")
	})
	t.Run("no SASL file anywhere", func(t *testing.T) {
		tr := good(t)
		tr.remove("/etc/postfix/sasl")
		f := want(t, tr.check(Options{}), "postfix-sasl-config-missing", Critical)
		contain(t, "fix", f.Fix, "/etc/postfix/sasl/smtpd.conf")
	})
	t.Run("Debian 12 ignores cyrus_sasl_config_path", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/postfix/main.cf", 0o644, 0, 0, "smtpd_sasl_auth_enable = yes\ncyrus_sasl_config_path = /etc/sasl2\n")
		f := want(t, tr.check(Options{}), "postfix-sasl-path-ignored", Warning)
		if f.Line != 2 {
			t.Errorf("line %d", f.Line)
		}
	})
	t.Run("smtpd_sasl_path names the file", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/postfix/main.cf", 0o644, 0, 0, "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_path = smtpd-ldap\n")
		want(t, tr.check(Options{}), "postfix-sasl-config-missing", Critical)
		tr.write("/etc/postfix/sasl/smtpd-ldap.conf", 0o644, 0, 0, "pwcheck_method: saslauthd\n")
		want(t, tr.check(Options{}), "postfix-ok", Info)
	})
	t.Run("Dovecot SASL", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/postfix/main.cf", 0o644, 0, 0, "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = dovecot\nsmtpd_sasl_path = private/auth\n")
		want(t, tr.check(Options{}), "postfix-dovecot-sasl", Info)
	})
	t.Run("not installed", func(t *testing.T) {
		tr := good(t)
		tr.remove("/etc/postfix")
		want(t, tr.check(Options{}), "postfix-absent", Info)
	})
}

func TestCyrus(t *testing.T) {
	t.Run("cyrus not in group sasl", func(t *testing.T) {
		tr := good(t)
		tr.members("sasl", false, "postfix")
		f := want(t, tr.check(Options{}), "cyrus-socket-unreachable", Critical)
		if f.Path != "/run/mailauthd/mux" {
			t.Errorf("path %q", f.Path)
		}
		contain(t, "message", f.Message, "Cyrus imapd runs as cyrus", "root:sasl 0660")
		contain(t, "fix", f.Fix, "adduser cyrus sasl")
	})
	t.Run("default path not served", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/imapd.conf", 0o644, 0, 0, "sasl_pwcheck_method: saslauthd\n")
		f := want(t, tr.check(Options{}), "cyrus-socket-not-served", Critical)
		contain(t, "message", f.Message, "/var/run/saslauthd/mux", "libsasl2's default")
		contain(t, "fix", f.Fix, "sasl_saslauthd_path: /run/mailauthd/mux")
	})
	t.Run("auxprop", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/imapd.conf", 0o644, 0, 0, "configdirectory: /var/lib/cyrus\n")
		want(t, tr.check(Options{}), "cyrus-not-saslauthd", Warning)
	})
	t.Run("socket missing", func(t *testing.T) {
		tr := good(t)
		tr.remove("/run/mailauthd/mux")
		want(t, tr.check(Options{}), "cyrus-socket-missing", Critical)
	})
	t.Run("no plaintext mechanism", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/imapd.conf", 0o644, 0, 0, "sasl_pwcheck_method: saslauthd\nsasl_saslauthd_path: /run/mailauthd/mux\nsasl_mech_list: SCRAM-SHA-256\n")
		f := want(t, tr.check(Options{}), "cyrus-sasl-mechs", Critical)
		if f.Line != 3 {
			t.Errorf("line %d", f.Line)
		}
	})
}

func TestDovecot(t *testing.T) {
	t.Run("2.3 with default vsz_limit", func(t *testing.T) {
		tr := good(t)
		tr.remove("/etc/dovecot/conf.d/10-master.conf")
		f := want(t, tr.check(Options{}), "dovecot-vsz-limit", Critical)
		contain(t, "message", f.Message, "256M (default_vsz_limit)", "1.2 GB")
		contain(t, "fix", f.Fix, "vsz_limit = 2G")
	})
	t.Run("2.3 with vsz_limit 1G", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/dovecot/conf.d/10-master.conf", 0o644, 0, 0, "service imap {\n  vsz_limit = 4G\n}\nservice auth {\n  vsz_limit = 1 G\n}\n")
		f := want(t, tr.check(Options{}), "dovecot-vsz-limit", Critical)
		if f.Path != "/etc/dovecot/conf.d/10-master.conf" || f.Line != 5 {
			t.Errorf("at %s:%d, want 10-master.conf:5", f.Path, f.Line)
		}
	})
	t.Run("2.3 with default_vsz_limit 2G", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/dovecot/conf.d/10-master.conf", 0o644, 0, 0, "default_vsz_limit = 2048M\n")
		wantNo(t, tr.check(Options{}), "dovecot-vsz-limit")
	})
	t.Run("2.4 with checkpassword (dpkg)", func(t *testing.T) {
		tr := good(t)
		tr.setDpkg(map[string]string{"dovecot-core": "1:2.4.1+dfsg1-6"})
		r := tr.check(Options{})
		if !r.Has("dovecot-checkpassword-removed") && !haveDpkgQuery() {
			t.Skip("dpkg-query not installed")
		}
		f := want(t, r, "dovecot-checkpassword-removed", Critical)
		if f.Path != "/etc/dovecot/conf.d/10-auth.conf" || f.Line != 2 {
			t.Errorf("at %s:%d, want 10-auth.conf:2", f.Path, f.Line)
		}
		contain(t, "message", f.Message, "Dovecot 2.4.1", "removed")
	})
	t.Run("2.4 with checkpassword (dovecot_config_version)", func(t *testing.T) {
		tr := good(t)
		tr.remove("/var/lib/dpkg")
		tr.write("/etc/dovecot/dovecot.conf", 0o644, 0, 0, "dovecot_config_version = 2.4.1\ndovecot_storage_version = 2.4.1\npassdb checkpassword {\n  args = /usr/bin/mailauthd checkpassword\n}\n")
		f := want(t, tr.check(Options{}), "dovecot-checkpassword-removed", Critical)
		if f.Line != 3 {
			t.Errorf("line %d", f.Line)
		}
	})
	t.Run("configuration unreadable by dovecot", func(t *testing.T) {
		tr := good(t)
		// What the old package did: root:mailauthd 0640.
		tr.own("/etc/mailauthd/mailauthd.yaml", 0o640, 0, gidMailauthd)
		f := want(t, tr.check(Options{}), "dovecot-config-unreadable", Critical)
		if f.Path != "/etc/mailauthd/mailauthd.yaml" {
			t.Errorf("path %q", f.Path)
		}
		contain(t, "message", f.Message, "runs as dovecot", "root:mailauthd 0640")
		contain(t, "fix", f.Fix, "chmod 0644 /etc/mailauthd/mailauthd.yaml")
	})
	t.Run("control socket unreachable", func(t *testing.T) {
		tr := good(t)
		tr.own("/run/mailauthd/control", 0o600, 0, 0)
		f := want(t, tr.check(Options{}), "dovecot-control-unreachable", Critical)
		contain(t, "message", f.Message, "does not fall back")
		contain(t, "fix", f.Fix, `group: dovecot`)
	})
	t.Run("control socket missing: standalone needs the password", func(t *testing.T) {
		tr := good(t)
		tr.remove("/run/mailauthd/control")
		r := tr.check(Options{})
		want(t, r, "dovecot-control-missing", Warning)
		f := want(t, r, "dovecot-bindpw-unreadable", Critical)
		contain(t, "message", f.Message, "runs as dovecot")
	})
	t.Run("standalone with a readable password", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/dovecot/conf.d/10-auth.conf", 0o644, 0, 0, strings.Replace(dovecotAuth, "checkpassword --config", "checkpassword --standalone --config", 1))
		tr.own("/etc/mailauthd/private", 0o750, 0, gidDovecot)
		tr.own("/etc/mailauthd/private/bind-password", 0o640, 0, gidDovecot)
		r := tr.check(Options{})
		f := want(t, r, "dovecot-ok", Info)
		contain(t, "message", f.Message, "standalone")
	})
	t.Run("program missing", func(t *testing.T) {
		tr := good(t)
		tr.remove("/usr/bin/mailauthd")
		want(t, tr.check(Options{}), "dovecot-checkpassword-missing", Critical)
	})
	t.Run("lua adapter", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/dovecot/conf.d/10-auth.conf", 0o644, 0, 0, "passdb {\n  driver = lua\n  args = file=/usr/share/mailauthd/dovecot/mailauthd.lua blocking=yes\n}\n")
		r := tr.check(Options{})
		want(t, r, "dovecot-lua-script-missing", Critical)
		want(t, r, "dovecot-lua-plugin-missing", Critical)
		tr.write("/usr/share/mailauthd/dovecot/mailauthd.lua", 0o644, 0, 0, "-- adapter\n")
		tr.write("/usr/lib/dovecot/modules/auth/libauthdb_lua.so", 0o644, 0, 0, "")
		r = tr.check(Options{})
		f := want(t, r, "dovecot-ok", Info)
		contain(t, "message", f.Message, "auth-worker (user root)")
	})
	t.Run("lua adapter in auth-worker as dovecot", func(t *testing.T) {
		tr := good(t)
		tr.write("/usr/share/mailauthd/dovecot/mailauthd.lua", 0o644, 0, 0, "-- adapter\n")
		tr.write("/usr/lib/dovecot/modules/auth/libauthdb_lua.so", 0o644, 0, 0, "")
		tr.write("/etc/dovecot/conf.d/10-auth.conf", 0o644, 0, 0, "passdb {\n  driver = lua\n  args = file=/usr/share/mailauthd/dovecot/mailauthd.lua\n}\n")
		tr.write("/etc/dovecot/conf.d/10-master.conf", 0o644, 0, 0, "service auth-worker {\n  user = $default_internal_user\n}\n")
		tr.own("/run/mailauthd/control", 0o660, 0, 0)
		f := want(t, tr.check(Options{}), "dovecot-lua-control-unreachable", Critical)
		contain(t, "message", f.Message, "auth-worker process as dovecot")
	})
	t.Run("not using mailauthd", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/dovecot/conf.d/10-auth.conf", 0o644, 0, 0, "passdb {\n  driver = pam\n}\n")
		want(t, tr.check(Options{}), "dovecot-not-mailauthd", Info)
	})
}

func haveDpkgQuery() bool {
	_, err := os.Stat("/usr/bin/dpkg-query")
	return err == nil
}

// pamcheck's findings come through, under area pam.
func TestPAMFindingsIncluded(t *testing.T) {
	tr := good(t)
	base := "../testdata/pamcheck/base"
	filepath.Walk(base, func(p string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(base, p)
		data, _ := os.ReadFile(p)
		tr.write("/"+rel, 0o644, 0, 0, string(data))
		return nil
	})
	file, err := config.Load(tr.real("/etc/mailauthd/mailauthd.yaml"), "")
	if err != nil {
		t.Fatal(err)
	}
	cfg := file.Pamcheck
	cfg.ModuleDirs = []string{"/lib/security"}
	sys := pamcheck.NewSystem(tr.root, cfg)
	snap, err := pamcheck.TakeSnapshot(sys, cfg, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := snap.Save(sys, sys.Real(pamcheck.DefaultStateDir)); err != nil {
		t.Fatal(err)
	}
	tr.write("/etc/mailauthd/mailauthd.yaml", 0o644, 0, 0, mailauthdYAML(goodLDAP)+"pamcheck:\n  module_dirs: [/lib/security]\n")
	r := tr.check(Options{Areas: map[string]bool{AreaPAM: true}})
	want(t, r, "pam-ok", Info)

	tr.remove("/etc/pam.d/smtp")
	r = tr.check(Options{Areas: map[string]bool{AreaPAM: true}})
	f := want(t, r, pamcheck.CodeServiceRemoved, Critical)
	if f.Area != AreaPAM || f.Path != "/etc/pam.d/smtp" {
		t.Errorf("area %s path %s", f.Area, f.Path)
	}
	contain(t, "message", f.Message, "[smtp]")
	contain(t, "fix", f.Fix, "mailauthd pamcheck restore smtp")
}

func TestAreasLimitTheChecks(t *testing.T) {
	tr := good(t)
	tr.remove("/etc/dovecot/conf.d/10-master.conf")
	r := tr.check(Options{Areas: map[string]bool{AreaPostfix: true}})
	for _, f := range r.Findings {
		if f.Area != AreaPostfix {
			t.Errorf("area %s finding with --only postfix: %s", f.Area, f.Code)
		}
	}
}

func TestRunDoesNotNeedATree(t *testing.T) {
	// An empty root: everything absent, nothing crashes, config missing.
	root := t.TempDir()
	r := Run(context.Background(), Options{Root: root, Offline: true, NoSystemd: true})
	want(t, r, "config-missing", Critical)
	want(t, r, "postfix-absent", Info)
	want(t, r, "dovecot-absent", Info)
	want(t, r, "cyrus-absent", Info)
}

// A realm-blind search on a host whose mail server keeps mailboxes per
// domain is a lockout (one domain served) or a shared identity (several).
func TestRealmBlindSearch(t *testing.T) {
	const cyrusConf = "configdirectory: /var/lib/cyrus\nsasl_pwcheck_method: saslauthd\nsasl_saslauthd_path: /run/mailauthd/mux\nvirtdomains: userid\n"
	for _, tc := range []struct {
		name     string
		ldap     string // appended to goodLDAP
		extra    string // appended to mailauthd.yaml
		imapd    string // "" = the good tree's
		mailConf string // conf.d/10-mail.conf, "" = none
		code     string // "" = no realm finding
		sev      Severity
		path     string
		line     int
		says     []string
	}{
		{name: "cyrus virtdomains, default filter", imapd: cyrusConf,
			code: "realm-blind", sev: Warning, path: "/etc/imapd.conf", line: 4,
			says: []string{"virtdomains: userid", "(uid=%u)", "no domain is served"}},
		{name: "cyrus virtdomains, one domain listed", imapd: cyrusConf, extra: "access:\n  realms: [corp.test]\n",
			code: "realm-blind", sev: Warning, says: []string{"only corp.test is served"}},
		{name: "cyrus virtdomains, two domains share the entries", imapd: cyrusConf,
			ldap: "  default_realm: corp.test\n", extra: "access:\n  realms: [other.test]\n",
			code: "realm-blind-shared", sev: Critical, says: []string{"corp.test, other.test", "one password opens"}},
		{name: "cyrus virtdomains, filter uses the domain", imapd: cyrusConf, ldap: "  filter: (mail=%u@%d)\n"},
		{name: "cyrus virtdomains, realm in the search", imapd: cyrusConf, ldap: "  filter: (&(uid=%u)(associatedDomain=%r))\n"},
		{name: "cyrus virtdomains, realm attribute", imapd: cyrusConf, extra: "access:\n  realm_attribute: mail\n"},
		{name: "cyrus virtdomains off", imapd: strings.Replace(cyrusConf, "userid", "off", 1)},
		{name: "dovecot 2.3 mail_location per domain", mailConf: "mail_location = maildir:/var/vmail/%d/%n\n",
			code: "realm-blind", sev: Warning, path: "/etc/dovecot/conf.d/10-mail.conf", line: 1,
			says: []string{"mail_location = maildir:/var/vmail/%d/%n"}},
		{name: "dovecot 2.3 lower-cased domain", mailConf: "mail_location = maildir:/var/vmail/%Ld/%Ln\n", code: "realm-blind", sev: Warning},
		{name: "dovecot 2.4 mail_path per domain", mailConf: "mail_path = /var/vmail/%{user | domain}/%{user | username}\n", code: "realm-blind", sev: Warning},
		{name: "dovecot userdb home per domain", mailConf: "userdb {\n  driver = static\n  args = uid=vmail gid=vmail home=/var/vmail/%d/%n\n}\n",
			code: "realm-blind", sev: Warning, line: 3},
		{name: "dovecot one domain", mailConf: "mail_location = maildir:/var/vmail/%n\n"},
		{name: "dovecot per domain, filter uses it", ldap: "  filter: (mail=%u@%d)\n", mailConf: "mail_location = maildir:/var/vmail/%d/%n\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := good(t)
			tr.write("/etc/mailauthd/mailauthd.yaml", 0o644, 0, 0, mailauthdYAML(goodLDAP+tc.ldap)+tc.extra)
			if tc.imapd != "" {
				tr.write("/etc/imapd.conf", 0o644, 0, 0, tc.imapd)
			}
			if tc.mailConf != "" {
				tr.write("/etc/dovecot/conf.d/10-mail.conf", 0o644, 0, 0, tc.mailConf)
			}
			r := tr.check(Options{})
			want(t, r, "config-ok", Info)
			if tc.code == "" {
				wantNo(t, r, "realm-blind", "realm-blind-shared")
				return
			}
			f := want(t, r, tc.code, tc.sev)
			if tc.path != "" && f.Path != tc.path {
				t.Errorf("path %q, want %q", f.Path, tc.path)
			}
			if tc.line != 0 && f.Line != tc.line {
				t.Errorf("line %d, want %d", f.Line, tc.line)
			}
			contain(t, "message", f.Message, tc.says...)
			contain(t, "fix", f.Fix, "%d", "access.realm_attribute")
		})
	}
}
