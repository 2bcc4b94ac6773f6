package e2e

// "mailauthd doctor" against the real peers of this machine, each configured
// right and wrong in a temporary directory (postconf -c, doveconf -c, a
// private Cyrus master, a scratch apt): the doctor's verdict is checked
// against what really happens when a user logs in, so its permission and
// path model cannot drift from reality. Nothing of the host's /etc is read
// or changed (--no-systemd, and every peer pointed at its own files).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/dovecottest"
	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

type doctorFinding struct {
	Severity, Area, Code, Path, Message, Fix string
	Line                                     int
}

type doctorReport struct {
	Worst    string
	Exit     int
	Findings []doctorFinding
	raw      string
}

func (r *doctorReport) find(code string) *doctorFinding {
	for i := range r.Findings {
		if r.Findings[i].Code == code {
			return &r.Findings[i]
		}
	}
	return nil
}

func (r *doctorReport) want(t *testing.T, code, severity string) *doctorFinding {
	t.Helper()
	f := r.find(code)
	if f == nil || f.Severity != severity {
		t.Fatalf("want %s %s; doctor said:\n%s", severity, code, r.raw)
	}
	return f
}

// doctor runs the built binary's doctor with --json.
func doctorJSON(t *testing.T, env []string, args ...string) *doctorReport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, mailauthdBin, append([]string{"doctor", "--json", "--no-systemd"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return doctorJSONOf(t, cmd)
}

// doctorJSONOf runs a prepared "mailauthd doctor --json" command (e.g. one
// chrooted where the Dovecot it checks runs) and parses its report.
func doctorJSONOf(t *testing.T, cmd *exec.Cmd) *doctorReport {
	t.Helper()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() <= 2) {
		t.Fatalf("mailauthd doctor: %v\n%s\n%s", err, out, stderr.String())
	}
	r := &doctorReport{raw: string(out)}
	if err := json.Unmarshal(out, r); err != nil {
		t.Fatalf("doctor --json: %v\n%s\n%s", err, out, stderr.String())
	}
	return r
}

// smtpAuth logs in with swaks and returns the SMTP reply code to AUTH.
func smtpAuth(t *testing.T, swaks, server, user, pass string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, swaks, "--server", server, "--auth", "PLAIN", "--auth-user", user,
		"--auth-password", pass, "--quit-after", "AUTH", "--timeout", "20").CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimLeft(l, "<-~* ")
		for _, c := range []string{"235 ", "535 ", "454 "} {
			if strings.HasPrefix(l, c) {
				return strings.TrimSpace(c)
			}
		}
	}
	return "no AUTH reply: " + string(out)
}

// TestDoctorPostfix: a real Postfix whose libsasl2 reaches mailauthd is
// "postfix-ok" and logs users in; once the socket's directory shuts user
// postfix out, the doctor names that directory and logins really fail.
func TestDoctorPostfix(t *testing.T) {
	t.Parallel()
	swaks := peertest.NeedFile(t, "/usr/bin/swaks", "swaks")
	slapd := slapdtest.Start(t)
	dir := shortDir(t)
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(run, "mux")
	cfg := writeConfig(t, dir, settings{Socket: sock, LDAPURL: slapd.URL()})
	d := startDaemon(t, sock, "--config", cfg)
	d.addPassword("alicepw")
	server, etc := startPostfixConf(t, sock)

	args := []string{"--config", cfg, "--postfix-config", etc, "--only", "postfix"}
	r := doctorJSON(t, nil, args...)
	f := r.want(t, "postfix-ok", "info")
	if !strings.Contains(f.Message, sock) || !strings.Contains(f.Message, filepath.Join(etc, "sasl", "smtpd.conf")) {
		t.Errorf("postfix-ok does not name the file and the socket: %s", f.Message)
	}
	if r.Worst != "info" {
		t.Fatalf("a working Postfix is not clean:\n%s", r.raw)
	}
	if code := smtpAuth(t, swaks, server, "alice", "alicepw"); code != "235" {
		t.Fatalf("the doctor says ok, but AUTH got %s", code)
	}

	if err := os.Chmod(run, 0o700); err != nil {
		t.Fatal(err)
	}
	r = doctorJSON(t, nil, args...)
	f = r.want(t, "postfix-socket-unreachable", "critical")
	if f.Path != run || !strings.Contains(f.Message, "runs as postfix") {
		t.Errorf("finding does not name %s: %+v", run, f)
	}
	if code := smtpAuth(t, swaks, server, "alice", "alicepw"); code == "235" {
		t.Fatal("the doctor says postfix cannot connect, but AUTH succeeded")
	}
	os.Chmod(run, 0o755)

	// A saslauthd_path mailauthd does not serve: doctor and reality agree.
	if err := os.WriteFile(filepath.Join(etc, "sasl", "smtpd.conf"), []byte("pwcheck_method: saslauthd\nsaslauthd_path: "+filepath.Join(dir, "nothing")+"\nmech_list: PLAIN LOGIN\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// smtpd reads the SASL configuration when it starts: restart them.
	if out, err := exec.Command("/usr/sbin/postfix", "-c", etc, "reload").CombinedOutput(); err != nil {
		t.Fatalf("postfix reload: %v\n%s", err, out)
	}
	time.Sleep(time.Second)
	r = doctorJSON(t, nil, args...)
	r.want(t, "postfix-socket-not-served", "critical")
	if code := smtpAuth(t, swaks, server, "alice", "alicepw"); code == "235" {
		t.Fatal("the doctor says the socket is not served, but AUTH succeeded")
	}
}

// startCyrus runs a private Cyrus imapd master (as Debian's cyrus-common
// builds it: services run as user cyrus; master exits at start, logging only
// to syslog, when a service's executable is missing) with imapd.conf pointing libsasl2
// at socket. It returns the IMAP address and imapd.conf's path.
func startCyrus(t *testing.T, socket string) (string, string) {
	t.Helper()
	master := peertest.NeedFile(t, "/usr/lib/cyrus/bin/master")
	// The cyrus-imapd package conflicts with dovecot-imapd, so
	// scripts/install-deps.sh unpacks its imapd instead of installing it.
	imapdBin := peertest.NeedFile(t, "/usr/lib/cyrus/bin/imapd", "/var/lib/mailauthd-test-peers/cyrus-imapd/usr/lib/cyrus/bin/imapd")
	peertest.NeedRoot(t, "the Cyrus test (Cyrus's master switches to user cyrus)")
	cu, err := user.Lookup("cyrus")
	if err != nil {
		t.Fatalf("user cyrus: %v", err)
	}
	uid, _ := strconv.Atoi(cu.Uid)
	gid, _ := strconv.Atoi(cu.Gid)
	dir := shortDir(t)
	for _, d := range []string{"lib", "spool", "socket", "sieve"} {
		p := filepath.Join(dir, d)
		if err := os.Mkdir(p, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	conf := filepath.Join(dir, "imapd.conf")
	imapd := fmt.Sprintf(`configdirectory: %[1]s/lib
defaultpartition: default
partition-default: %[1]s/spool
sievedir: %[1]s/sieve
admins: cyrus
allowplaintext: yes
sasl_pwcheck_method: saslauthd
sasl_saslauthd_path: %[2]s
sasl_mech_list: PLAIN LOGIN
idlesocket: %[1]s/socket/idle
lmtpsocket: %[1]s/socket/lmtp
notifysocket: %[1]s/socket/notify
`, dir, socket)
	cyrusConf := fmt.Sprintf(`START {
  recover cmd="/usr/lib/cyrus/bin/ctl_cyrusdb -C %[1]s -r"
}
SERVICES {
  imap cmd="%[3]s -C %[1]s" listen="127.0.0.1:%[2]d" prefork=0 maxchild=5
}
EVENTS {
}
`, conf, port, imapdBin)
	for p, body := range map[string]string{conf: imapd, filepath.Join(dir, "cyrus.conf"): cyrusConf} {
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pidFile := filepath.Join(dir, "master.pid")
	out, err := exec.Command(master, "-C", conf, "-M", filepath.Join(dir, "cyrus.conf"), "-p", pidFile, "-d").CombinedOutput()
	if err != nil {
		t.Fatalf("cyrus master: %v\n%s", err, out)
	}
	t.Cleanup(func() { stopByDir(t, pidFile, dir) })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr, conf
		}
		if time.Now().After(deadline) {
			t.Fatalf("cyrus imapd not accepting on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stopByDir stops a daemonized master (SIGTERM to the pid in pidFile) and
// then every process still running from dir's configuration, so no
// service of the test survives it.
func stopByDir(t *testing.T, pidFile, dir string) {
	if b, err := os.ReadFile(pidFile); err == nil {
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
			syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 50 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(dir+"/")) {
			continue
		}
		if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p))); err == nil && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// imapLogin sends LOGIN and returns the tagged reply.
func imapLogin(t *testing.T, addr, user, pass string) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(c)
	if _, err := br.ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "a1 LOGIN %s %s\r\n", user, pass)
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return "read: " + err.Error()
		}
		if strings.HasPrefix(l, "a1 ") {
			fmt.Fprintf(c, "a2 LOGOUT\r\n")
			return strings.TrimSpace(l)
		}
	}
}

// TestDoctorCyrus: the real Cyrus imapd, reaching mailauthd or shut out of
// the socket's directory.
func TestDoctorCyrus(t *testing.T) {
	t.Parallel()
	slapd := slapdtest.Start(t)
	dir := shortDir(t)
	run := filepath.Join(dir, "run")
	if err := os.Mkdir(run, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(run, "mux")
	cfg := writeConfig(t, dir, settings{Socket: sock, LDAPURL: slapd.URL()})
	d := startDaemon(t, sock, "--config", cfg)
	d.addPassword("alicepw")
	addr, conf := startCyrus(t, sock)

	args := []string{"--config", cfg, "--cyrus-config", conf, "--only", "cyrus"}
	r := doctorJSON(t, nil, args...)
	r.want(t, "cyrus-ok", "info")
	if r.Worst != "info" {
		t.Fatalf("a working Cyrus is not clean:\n%s", r.raw)
	}
	if got := imapLogin(t, addr, "alice", "alicepw"); !strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("the doctor says ok, but LOGIN: %s", got)
	}

	if err := os.Chmod(run, 0o700); err != nil {
		t.Fatal(err)
	}
	f := doctorJSON(t, nil, args...).want(t, "cyrus-socket-unreachable", "critical")
	if f.Path != run {
		t.Errorf("path %q, want %q", f.Path, run)
	}
	if got := imapLogin(t, addr, "alice", "alicepw"); strings.HasPrefix(got, "a1 OK") {
		t.Fatalf("the doctor says cyrus cannot connect, but LOGIN: %s", got)
	}
}

// dovecotForDoctor runs a real Dovecot 2.3 whose passdb is mailauthd
// checkpassword (bin, reading cfg; both as that Dovecot sees them);
// authBlock is the "service auth" block ("" = Dovecot's default 256M
// vsz_limit).
func dovecotForDoctor(t *testing.T, bin, cfg dovecottest.Path, authBlock string) *dovecottest.Dovecot {
	t.Helper()
	return dovecottest.Start(t, dovecottest.Version23, dovecottest.Config{
		PassdbUserdb: fmt.Sprintf(`passdb {
  driver = checkpassword
  args = %s checkpassword --config %s
}
userdb {
  driver = prefetch
}`, bin.Dovecot, cfg.Dovecot),
		Extra: authBlock,
	})
}

// doctorDovecotConfig writes the daemon's configuration into dir, with a
// control socket Dovecot's auth user may use (the checkpassword fast
// path): daemon is the file the daemon reads, view the same configuration
// with the paths as the system Dovecot runs on sees them (the same file,
// unless that Dovecot is chrooted into another release's root).
func doctorDovecotConfig(t *testing.T, dir dovecottest.Dir, ldapURL string) (daemon string, view dovecottest.Path) {
	t.Helper()
	pw, err := dir.WriteFile("bindpw", []byte(slapdtest.ServicePassword+"\n"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// The socket's group is the dovecot group of Dovecot's system: a
	// chrooted one's has another number than the host's.
	group := "dovecot"
	if dir.Root() != "" {
		_, gid, err := dir.LookupUser("dovecot")
		if err != nil {
			t.Fatal(err)
		}
		group = fmt.Sprint(gid)
	}
	yaml := func(sock, control, pw string) []byte {
		return fmt.Appendf(nil, `listen:
  saslauthd:
    - {path: %q, mode: "0660"}
  control: {path: %q, mode: "0660", group: %q}
ldap:
  urls: [%q]
  bind_dn: %q
  bind_password_file: %q
  base: %q
  timeout: 2s
access:
  hostnames: [mail.example.org, mail]
`, sock, control, group, ldapURL, slapdtest.ServiceDN, pw, slapdtest.PeopleDN)
	}
	sock, control := dir.Path("mux"), dir.Path("control")
	p, err := dir.WriteFile("mailauthd.yaml", yaml(sock.Host, control.Host, pw.Host), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if dir.Root() == "" {
		return p.Host, p
	}
	view, err = dir.WriteFile("mailauthd-view.yaml", yaml(sock.Dovecot, control.Dovecot, pw.Dovecot), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	return p.Host, view
}

// TestDoctorDovecot: the real Dovecot 2.3 with checkpassword, right (2G,
// readable configuration, reachable control socket) and wrong (Dovecot's
// default vsz_limit; the configuration mode the old package installed):
// each time the doctor's verdict and a real login agree.
//
// The doctor runs where that Dovecot runs, as an admin would run it there:
// on this host when it is the host's Dovecot, chrooted into its root when
// it is another Debian release's (internal/dovecottest).
func TestDoctorDovecot(t *testing.T) {
	t.Parallel()
	slapd := slapdtest.Start(t)
	dir := dovecottest.TempDir(t, dovecottest.Version23)
	bin, err := dir.CopyProgram(mailauthdBin, "mailauthd", "version")
	if err != nil {
		t.Fatal(err)
	}
	cfg, view := doctorDovecotConfig(t, dir, slapd.URL())
	control := dir.Path("control").Dovecot
	d := startDaemon(t, dir.Path("mux").Host, "--config", cfg)
	d.addPassword("alicepw")
	doctor := func(conf dovecottest.Path) *doctorReport {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return doctorJSONOf(t, dir.CommandContext(ctx, bin.Dovecot, "doctor", "--json", "--no-systemd",
			"--config", view.Dovecot, "--dovecot-config", conf.Dovecot, "--only", "dovecot"))
	}
	login := func(dove *dovecottest.Dovecot) (dovecottest.Result, string) {
		t.Helper()
		r, fields, err := dove.AuthTest("alice", "alicepw", nil)
		if err != nil {
			t.Fatal(err)
		}
		return r, fmt.Sprint(fields, "\n", dove.Log())
	}

	t.Run("right", func(t *testing.T) {
		dove := dovecotForDoctor(t, bin, view, "service auth {\n  vsz_limit = 2G\n}")
		r := doctor(dove.Conf)
		f := r.want(t, "dovecot-ok", "info")
		if !strings.Contains(f.Message, "via the daemon's control socket "+control) || !strings.Contains(f.Message, "vsz_limit 2") {
			t.Errorf("dovecot-ok: %s", f.Message)
		}
		if r.Worst != "info" {
			t.Fatalf("a working Dovecot is not clean:\n%s", r.raw)
		}
		if res, out := login(dove); res != dovecottest.OK {
			t.Fatalf("the doctor says ok, but doveadm auth test: %s\n%s", res, out)
		}
	})
	t.Run("default vsz_limit", func(t *testing.T) {
		dove := dovecotForDoctor(t, bin, view, "")
		f := doctor(dove.Conf).want(t, "dovecot-vsz-limit", "critical")
		if !strings.Contains(f.Message, "256M (default_vsz_limit)") {
			t.Errorf("message: %s", f.Message)
		}
		if res, out := login(dove); res == dovecottest.OK {
			t.Fatalf("the doctor says the vsz_limit kills checkpassword, but the login worked\n%s", out)
		}
	})
	t.Run("configuration unreadable by dovecot", func(t *testing.T) {
		dove := dovecotForDoctor(t, bin, view, "service auth {\n  vsz_limit = 2G\n}")
		if err := os.Chmod(view.Host, 0o600); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(view.Host, 0o644)
		f := doctor(dove.Conf).want(t, "dovecot-config-unreadable", "critical")
		if f.Path != view.Dovecot || !strings.Contains(f.Fix, "chmod 0644 "+view.Dovecot) {
			t.Errorf("finding: %+v", f)
		}
		if res, out := login(dove); res == dovecottest.OK {
			t.Fatalf("the doctor says dovecot cannot read %s, but the login worked\n%s", view.Dovecot, out)
		}
	})
}

// scratchApt makes an apt that knows only a local repository holding a
// fake dovecot-core 2.4 and a status file with dovecot-core 2.3 installed,
// and whose dpkg is /bin/true: apt plans the upgrade, runs its
// Pre-Install-Pkgs hooks exactly as on a real system, and changes nothing.
// hookConf is an apt.conf.d file. It returns apt-get's environment.
func scratchApt(t *testing.T, hookConf string) []string {
	t.Helper()
	peertest.NeedFile(t, "/usr/bin/apt-get")
	dpkgDeb := peertest.NeedFile(t, "/usr/bin/dpkg-deb")
	scan := peertest.NeedFile(t, "/usr/bin/dpkg-scanpackages")
	s := t.TempDir()
	for _, d := range []string{"repo", "state/lists/partial", "cache/archives/partial", "etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d", "log", "pkg/DEBIAN"} {
		if err := os.MkdirAll(filepath.Join(s, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	arch := "amd64"
	if out, err := exec.Command("dpkg", "--print-architecture").Output(); err == nil {
		arch = strings.TrimSpace(string(out))
	}
	files := map[string]string{
		"pkg/DEBIAN/control": "Package: dovecot-core\nVersion: 1:2.4.1+dfsg1-6\nArchitecture: " + arch +
			"\nMaintainer: mailauthd tests <tests@example.org>\nDescription: fake dovecot-core 2.4 for the doctor's apt hook test\n",
		"status": "Package: dovecot-core\nStatus: install ok installed\nPriority: optional\nSection: mail\nMaintainer: x <x@example.org>\nArchitecture: " + arch +
			"\nVersion: 1:2.3.19.1+dfsg1-2.1+deb12u7\nDescription: dovecot 2.3\n\n",
		"etc/sources.list":                  "deb [trusted=yes] file:" + s + "/repo ./\n",
		"etc/apt.conf.d/50mailauthd-doctor": hookConf,
		"apt.conf": fmt.Sprintf(`Dir "%[1]s/";
Dir::State "%[1]s/state";
Dir::State::status "%[1]s/status";
Dir::Cache "%[1]s/cache";
Dir::Etc "%[1]s/etc";
Dir::Etc::sourcelist "%[1]s/etc/sources.list";
Dir::Etc::sourceparts "%[1]s/etc/sources.list.d";
Dir::Etc::parts "%[1]s/etc/apt.conf.d";
Dir::Etc::preferencesparts "%[1]s/etc/preferences.d";
Dir::Log "%[1]s/log";
Dir::Bin::dpkg "/bin/true";
Debug::NoLocking "true";
APT::Architecture "%[2]s";
APT::Sandbox::User "root";
`, s, arch),
	}
	for p, body := range files {
		if err := os.WriteFile(filepath.Join(s, p), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command(dpkgDeb, "--root-owner-group", "-b", filepath.Join(s, "pkg"), filepath.Join(s, "repo", "dovecot-core_2.4.1_"+arch+".deb")).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v\n%s", err, out)
	}
	idx := exec.Command(scan, "-m", ".", "/dev/null")
	idx.Dir = filepath.Join(s, "repo")
	pk, err := idx.Output()
	if err != nil {
		t.Fatalf("dpkg-scanpackages: %v", err)
	}
	if err := os.WriteFile(filepath.Join(s, "repo", "Packages"), pk, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"APT_CONFIG=" + filepath.Join(s, "apt.conf"), "DEBIAN_FRONTEND=noninteractive"}
	if out, err := aptGet(env, "update"); err != nil {
		t.Fatalf("apt-get update (scratch): %v\n%s", err, out)
	}
	return env
}

func aptGet(env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "/usr/bin/apt-get", args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestDoctorAptHook: the shipped apt.conf.d file (with this test's binary
// and a fixture root) under a real apt, upgrading dovecot-core 2.3 to 2.4
// while Dovecot uses checkpassword.
func TestDoctorAptHook(t *testing.T) {
	t.Parallel()
	shipped, err := os.ReadFile("../packaging/doctor/apt/50mailauthd-doctor")
	if err != nil {
		t.Fatal(err)
	}
	hook := strings.ReplaceAll(string(shipped), "/usr/bin/mailauthd", mailauthdBin)
	for _, tc := range []struct {
		name, yaml string
		refuse     bool
	}{
		{"warn (default)", "", false},
		{"refuse", "doctor:\n  upgrades: refuse\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for p, body := range map[string]string{
				"etc/mailauthd/mailauthd.yaml": "ldap:\n  urls: [ldaps://ldap.corp.test]\n" + tc.yaml,
				"etc/dovecot/dovecot.conf":     "passdb {\n  driver = checkpassword\n  args = /usr/bin/mailauthd checkpassword\n}\n",
			} {
				os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
				if err := os.WriteFile(filepath.Join(root, p), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			env := append(scratchApt(t, hook), "MAILAUTHD_DOCTOR_ROOT="+root)
			out, err := aptGet(env, "install", "-y", "dovecot-core")
			for _, s := range []string{"THIS TRANSACTION WOULD BREAK MAIL AUTHENTICATION", "upgrade-dovecot-checkpassword",
				"dovecot-core 1:2.3.19.1+dfsg1-2.1+deb12u7 → 1:2.4.1+dfsg1-6", "/etc/dovecot/dovecot.conf:1"} {
				if !strings.Contains(out, s) {
					t.Errorf("apt output lacks %q", s)
				}
			}
			switch {
			case tc.refuse && err == nil:
				t.Errorf("apt-get went on although the hook refused")
			case tc.refuse && !strings.Contains(out, "Failure running script "+mailauthdBin+" doctor --upgrade apt"):
				t.Errorf("apt does not report the hook's refusal")
			case !tc.refuse && err != nil:
				t.Errorf("apt-get failed although the hook only warns: %v", err)
			}
			if t.Failed() || testing.Verbose() {
				t.Logf("apt-get output:\n%s", out)
			}
		})
	}
}

// TestDoctorPostfixChroot: smtpd with y in master.cf's chroot column, as
// Debian ships it. libsasl2's default socket path inside the chroot is
// served: ok, and logins work. saslauthd_path set to the path as seen from
// outside (a common mistake): the doctor says smtpd looks for it inside its
// chroot, and logins really fail.
func TestDoctorPostfixChroot(t *testing.T) {
	t.Parallel()
	swaks := peertest.NeedFile(t, "/usr/bin/swaks", "swaks")
	postconf := peertest.NeedFile(t, "/usr/sbin/postconf")
	slapd := slapdtest.Start(t)
	server, etc := startPostfixConf(t, "/nonexistent/mux")
	out, err := exec.Command(postconf, "-c", etc, "-h", "queue_directory").Output()
	if err != nil {
		t.Fatal(err)
	}
	queue := strings.TrimSpace(string(out))
	run := filepath.Join(queue, "var", "run", "saslauthd")
	if err := os.MkdirAll(run, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{filepath.Join(queue, "var"), filepath.Join(queue, "var", "run")} {
		os.Chmod(d, 0o755)
	}
	sock := filepath.Join(run, "mux")
	dir := shortDir(t)
	cfg := writeConfig(t, dir, settings{Socket: sock, LDAPURL: slapd.URL()})
	d := startDaemon(t, sock, "--config", cfg)
	d.addPassword("alicepw")

	setup := func(saslConf string) {
		t.Helper()
		master, err := os.ReadFile(filepath.Join(etc, "master.cf"))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitN(string(master), "\n", 2)
		f := strings.Fields(lines[0]) // the smtpd line: chroot column to y
		f[4] = "y"
		if err := os.WriteFile(filepath.Join(etc, "master.cf"), []byte(strings.Join(f, " ")+"\n"+lines[1]), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(etc, "sasl", "smtpd.conf"), []byte(saslConf), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("/usr/sbin/postfix", "-c", etc, "reload").CombinedOutput(); err != nil {
			t.Fatalf("postfix reload: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
	args := []string{"--config", cfg, "--postfix-config", etc, "--only", "postfix"}

	setup("pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\n")
	r := doctorJSON(t, nil, args...)
	f := r.want(t, "postfix-ok", "info")
	if !strings.Contains(f.Message, "chrooted to "+queue) || !strings.Contains(f.Message, sock) {
		t.Errorf("postfix-ok: %s", f.Message)
	}
	before := len(d.decisionLines())
	if code := smtpAuth(t, swaks, server, "alice", "alicepw"); code != "235" {
		t.Fatalf("the doctor says ok (chrooted, default path), but AUTH got %s", code)
	}
	// This daemon decided it: smtpd reached the socket inside its chroot.
	d.waitDecisions(before + 1)

	setup("pwcheck_method: saslauthd\nmech_list: PLAIN LOGIN\nsaslauthd_path: " + sock + "\n")
	f = doctorJSON(t, nil, args...).want(t, "postfix-socket-not-served", "critical")
	if !strings.Contains(f.Fix, "smtpd is chrooted, so "+sock+" means "+filepath.Join(queue, sock)) {
		t.Errorf("fix: %s", f.Fix)
	}
	if code := smtpAuth(t, swaks, server, "alice", "alicepw"); code == "235" {
		t.Fatal("the doctor says the chrooted smtpd looks elsewhere, but AUTH succeeded")
	}
}
