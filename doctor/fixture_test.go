package doctor

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

// Accounts of the fixture trees' /etc/passwd and /etc/group. The numbers
// are real owners of the fixture files (the tests run as root and chown),
// so permissions are judged exactly as on a system.
const (
	uidPostfix, gidPostfix     = 2101, 2101
	uidCyrus, gidMail          = 2102, 2008
	uidDovecot, gidDovecot     = 2103, 2103
	uidMailauthd, gidMailauthd = 2104, 2104
	gidSasl                    = 2045
)

// tree is a fixture system below a short temporary root (Unix socket paths
// are limited to 108 bytes; t.TempDir can be longer than that).
type tree struct {
	t      *testing.T
	root   string
	lis    []net.Listener
	groups map[string]*fixGroup // written by writeAccounts
}

type fixGroup struct {
	gid     int
	members []string
}

func needRoot(t *testing.T) {
	t.Helper()
	peertest.NeedRoot(t, "the fixture trees (files owned by postfix, dovecot, ...)")
}

func newTree(t *testing.T) *tree {
	t.Helper()
	needRoot(t)
	root, err := os.MkdirTemp("", "dr")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	tr := &tree{t: t, root: root, groups: map[string]*fixGroup{
		"root": {0, nil}, "postfix": {gidPostfix, nil}, "mail": {gidMail, nil}, "dovecot": {gidDovecot, nil},
		"mailauthd": {gidMailauthd, nil}, "sasl": {gidSasl, []string{"postfix", "cyrus"}},
	}}
	t.Cleanup(func() {
		for _, l := range tr.lis {
			l.Close()
		}
		os.RemoveAll(root)
	})
	tr.writeAccounts()
	for _, d := range []string{"/etc", "/run", "/var", "/var/spool", "/usr", "/usr/bin", "/usr/lib", "/tmp"} {
		tr.dir(d, 0o755, 0, 0)
	}
	tr.chmod("/tmp", 0o1777)
	return tr
}

func (tr *tree) writeAccounts() {
	tr.t.Helper()
	passwd := fmt.Sprintf(`root:x:0:0:root:/root:/bin/bash
postfix:x:%d:%d::/var/spool/postfix:/usr/sbin/nologin
cyrus:x:%d:%d:Cyrus Mailsystem User:/var/spool/cyrus:/usr/sbin/nologin
dovecot:x:%d:%d:Dovecot mail server:/usr/lib/dovecot:/usr/sbin/nologin
mailauthd:x:%d:%d:mailauthd daemon:/nonexistent:/usr/sbin/nologin
`, uidPostfix, gidPostfix, uidCyrus, gidMail, uidDovecot, gidDovecot, uidMailauthd, gidMailauthd)
	var group strings.Builder
	names := make([]string, 0, len(tr.groups))
	for n := range tr.groups {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		g := tr.groups[n]
		fmt.Fprintf(&group, "%s:x:%d:%s\n", n, g.gid, strings.Join(g.members, ","))
	}
	tr.write("/etc/passwd", 0o644, 0, 0, passwd)
	tr.write("/etc/group", 0o644, 0, 0, group.String())
}

// members sets a group's members (nil members and gone: delete it).
func (tr *tree) members(group string, gone bool, members ...string) {
	if gone {
		delete(tr.groups, group)
	} else {
		tr.groups[group].members = members
	}
	tr.writeAccounts()
}

func (tr *tree) real(p string) string { return filepath.Join(tr.root, p) }

func (tr *tree) dir(p string, mode os.FileMode, uid, gid int) {
	tr.t.Helper()
	if err := os.MkdirAll(tr.real(p), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	tr.own(p, mode, uid, gid)
}

func (tr *tree) own(p string, mode os.FileMode, uid, gid int) {
	tr.t.Helper()
	if err := os.Chown(tr.real(p), uid, gid); err != nil {
		tr.t.Fatal(err)
	}
	tr.chmod(p, mode)
}

func (tr *tree) chmod(p string, mode os.FileMode) {
	tr.t.Helper()
	if err := os.Chmod(tr.real(p), mode); err != nil {
		tr.t.Fatal(err)
	}
}

func (tr *tree) write(p string, mode os.FileMode, uid, gid int, content string) {
	tr.t.Helper()
	if err := os.MkdirAll(filepath.Dir(tr.real(p)), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.WriteFile(tr.real(p), []byte(content), 0o600); err != nil {
		tr.t.Fatal(err)
	}
	tr.own(p, mode, uid, gid)
}

func (tr *tree) remove(p string) {
	tr.t.Helper()
	if err := os.RemoveAll(tr.real(p)); err != nil {
		tr.t.Fatal(err)
	}
}

// socket makes a listening Unix socket (connections wait in the backlog).
func (tr *tree) socket(p string, mode os.FileMode, uid, gid int) {
	tr.t.Helper()
	if err := os.MkdirAll(filepath.Dir(tr.real(p)), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	l, err := net.Listen("unix", tr.real(p))
	if err != nil {
		tr.t.Fatal(err)
	}
	tr.lis = append(tr.lis, l)
	tr.own(p, mode, uid, gid)
}

// staleSocket leaves a socket file nobody listens on.
func (tr *tree) staleSocket(p string) {
	tr.t.Helper()
	l, err := net.Listen("unix", tr.real(p))
	if err != nil {
		tr.t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
}

// mailauthdYAML is a configuration with the fixture's sockets; ldap is the
// ldap: section's body.
func mailauthdYAML(ldap string) string {
	return `listen:
  saslauthd:
    - {path: /run/mailauthd/mux, mode: "0660", group: sasl}
    - {path: /var/spool/postfix/var/run/saslauthd/mux, mode: "0660", group: sasl}
  control: {path: /run/mailauthd/control, mode: "0660", group: dovecot}
ldap:
` + ldap
}

const goodLDAP = `  urls: [ldaps://ldap.corp.test]
  bind_dn: cn=mailauthd,ou=services,dc=corp,dc=test
  bind_password_file: /etc/mailauthd/private/bind-password
  base: ou=people,dc=corp,dc=test
`

const dovecotMainConf = `# Debian's layout: the real settings are in conf.d.
protocols =
!include conf.d/*.conf
!include_try local.conf
`

const dovecotAuth = `auth_mechanisms = plain login
passdb {
  driver = checkpassword
  args = /usr/bin/mailauthd checkpassword --config /etc/mailauthd/mailauthd.yaml
}
userdb {
  driver = prefetch
}
`

const dovecotMaster = `service auth {
  vsz_limit = 2G
}
`

// good builds a system wired right: mailauthd serving both saslauthd
// sockets and the control socket, Postfix chrooted (Debian 12), Cyrus,
// Dovecot 2.3 with checkpassword.
func good(t *testing.T) *tree {
	tr := newTree(t)
	tr.dir("/etc/mailauthd", 0o755, 0, 0)
	tr.write("/etc/mailauthd/mailauthd.yaml", 0o644, 0, 0, mailauthdYAML(goodLDAP))
	tr.dir("/etc/mailauthd/private", 0o750, 0, gidMailauthd)
	tr.write("/etc/mailauthd/private/bind-password", 0o640, 0, gidMailauthd, "s3cret\n")
	tr.write("/usr/bin/mailauthd", 0o755, 0, 0, "#!/bin/sh\n")

	tr.dir("/run/mailauthd", 0o755, 0, 0)
	tr.socket("/run/mailauthd/mux", 0o660, 0, gidSasl)
	tr.socket("/run/mailauthd/control", 0o660, 0, gidDovecot)
	tr.dir("/var/spool/postfix/var/run/saslauthd", 0o710, 0, gidSasl)
	tr.own("/var/spool/postfix", 0o755, 0, 0)
	tr.own("/var/spool/postfix/var", 0o755, 0, 0)
	tr.own("/var/spool/postfix/var/run", 0o755, 0, 0)
	tr.socket("/var/spool/postfix/var/run/saslauthd/mux", 0o660, 0, gidSasl)

	tr.write("/etc/postfix/main.cf", 0o644, 0, 0, "smtpd_sasl_auth_enable = yes\nsmtpd_sasl_security_options = noanonymous\n")
	tr.write("/etc/postfix/master.cf", 0o644, 0, 0, "# service type  private unpriv  chroot  wakeup  maxproc command + args\nsmtp      inet  n       -       y       -       -       smtpd\npickup    unix  n       -       y       60      1       pickup\n")
	tr.write("/etc/postfix/sasl/smtpd.conf", 0o644, 0, 0, "pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\n")
	// Debian 12's smtpd carries its compiled-in SASL path.
	tr.write("/usr/lib/postfix/sbin/smtpd", 0o755, 0, 0, "\x7fELF...<config_directory>/sasl:/usr/lib/sasl...")
	tr.write(filepath.Join(saslPluginDirs()[0], "libplain.so.2"), 0o644, 0, 0, "")

	tr.write("/etc/imapd.conf", 0o644, 0, 0, "configdirectory: /var/lib/cyrus\nsasl_pwcheck_method: saslauthd\nsasl_saslauthd_path: /run/mailauthd/mux\nsasl_mech_list: PLAIN LOGIN\n")

	tr.write("/etc/dovecot/dovecot.conf", 0o644, 0, 0, dovecotMainConf)
	tr.write("/etc/dovecot/conf.d/10-auth.conf", 0o644, 0, 0, dovecotAuth)
	tr.write("/etc/dovecot/conf.d/10-master.conf", 0o644, 0, 0, dovecotMaster)
	tr.setDpkg(map[string]string{"dovecot-core": "1:2.3.19.1+dfsg1-2.1+deb12u7", "postfix": "3.7.11-0+deb12u1"})
	return tr
}

// setDpkg writes dpkg's status file with these packages installed.
func (tr *tree) setDpkg(pkgs map[string]string) {
	var b strings.Builder
	for name, ver := range pkgs {
		fmt.Fprintf(&b, "Package: %s\nStatus: install ok installed\nMaintainer: x <x@x>\nArchitecture: amd64\nVersion: %s\nDescription: x\n\n", name, ver)
	}
	tr.write("/var/lib/dpkg/status", 0o644, 0, 0, b.String())
}

// run checks the tree without LDAP connections, systemd units and PAM
// unless the options say otherwise.
func (tr *tree) run(o Options) *Report {
	tr.t.Helper()
	o.Root = tr.root
	o.Offline = true
	if o.Areas == nil {
		o.Areas = map[string]bool{AreaMailauthd: true, AreaLDAP: true, AreaPostfix: true, AreaCyrus: true, AreaDovecot: true}
	}
	return Run(context.Background(), o)
}

func (tr *tree) check(o Options) *Report {
	o.NoSystemd = true
	return tr.run(o)
}

func dump(r *Report) string {
	var b strings.Builder
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "  %-8s %-32s %s:%d\n           %s\n           fix: %s\n", f.Severity, f.Code, f.Path, f.Line, f.Message, f.Fix)
	}
	return b.String()
}

// want asserts a finding with code and severity and returns it.
func want(t *testing.T, r *Report, code string, sev Severity) *Finding {
	t.Helper()
	f := r.Find(code)
	if f == nil {
		t.Fatalf("no %s finding; got:\n%s", code, dump(r))
	}
	if f.Severity != sev {
		t.Fatalf("%s is %s, want %s:\n%s", code, f.Severity, sev, dump(r))
	}
	return f
}

func wantNo(t *testing.T, r *Report, codes ...string) {
	t.Helper()
	for _, c := range codes {
		if r.Has(c) {
			t.Fatalf("unexpected %s finding:\n%s", c, dump(r))
		}
	}
}

func contain(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s %q does not contain %q", what, s, sub)
		}
	}
}
