package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msteinert/pam/v2"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/daemon"
	"github.com/mailauthd/mailauthd/internal/mountns"
	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
	"github.com/mailauthd/mailauthd/pamcheck"
	"github.com/mailauthd/mailauthd/saslauthd"
)

// pamWorld is a real slapd, a configuration with the host and the service
// rule on, a daemon serving the saslauthd and control sockets (started and
// stopped by the test), and a pam.d directory whose services run the built
// binary through pam_exec.so.
//
// The program may run in another file-system view than the test (Dovecot
// 2.4 chrooted into a Debian 13 root): dir is the world's directory as the
// test sees it, view as the program sees it, and the program reads its own
// copy of the configuration with view's paths (same socket, same slapd).
type pamWorld struct {
	dir, view  string
	binView    string // the binary, as the program's caller sees it
	slapd      *slapdtest.Server
	cfgPath    string // the daemon's configuration (test's paths)
	cfgView    string // the program's configuration (view's paths)
	cfg        *config.File
	saslSock   string
	confDir    string // the pam.d directory for pam_start_confdir and pamtester
	pamLog     string // pam_exec's log= file: mailauthd pam's stderr
	pamLogView string

	mu        sync.Mutex
	daemon    *daemon.Running
	daemonLog lockedBuf
	passwords []string // every password sent; none may reach a log
}

const pamConfigTemplate = `listen:
  saslauthd:
    - {path: %[1]s/mux, mode: "0666"}
  control: {path: %[1]s/control, mode: "0600"}
ldap:
  urls: [%[2]s]
  base: ou=people,dc=example,dc=org
  bind_dn: cn=mailauthd,ou=services,dc=example,dc=org
  bind_password_file: %[1]s/bindpw
  timeout: 2s
access:
  hostnames: [mail.example.org, mail]
  service_attribute: authorizedService
  realms: [example.org]
pam:
  timeout: 3s
`

// shippedPAMFile is packaging/pam.d/NAME with the test's binary in place
// of /usr/bin/mailauthd, and on each mailauthd line pam_exec's log= option
// (so the test reads the program's lines), --config, and extra.
func (w *pamWorld) shippedPAMFile(t testing.TB, name, extra string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "packaging", "pam.d", name))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(string(data), "\n")
	n := 0
	for i, l := range lines {
		if !strings.Contains(l, " /usr/bin/mailauthd pam") || strings.HasPrefix(l, "#") {
			continue
		}
		l = strings.Replace(l, "pam_exec.so ", "pam_exec.so log="+w.pamLogView+" ", 1)
		l = strings.Replace(l, "/usr/bin/mailauthd", w.binView, 1)
		lines[i] = strings.TrimSuffix(l, "\n") + " --config " + w.cfgView + extra + "\n"
		n++
	}
	if n == 0 {
		t.Fatalf("packaging/pam.d/%s has no mailauthd line", name)
	}
	return strings.Join(lines, "")
}

func newPAMWorld(t testing.TB) *pamWorld {
	t.Helper()
	dir := publicTempDir(t)
	return newPAMWorldIn(t, dir, dir, mailauthdBinary(t))
}

// newPAMWorldIn makes the world in dir, which the program sees as view;
// bin is the binary's path in that view.
func newPAMWorldIn(t testing.TB, dir, view, binView string) *pamWorld {
	t.Helper()
	needRealPAM(t)
	s := slapdtest.Start(t, slapdtest.WithLDIF(
		filepath.Join(slapdtest.TestdataDir(), "users.ldif"),
		filepath.Join(slapdtest.TestdataDir(), "..", "pam", "users.ldif")))
	w := &pamWorld{dir: dir, view: view, binView: binView, slapd: s}
	w.saslSock = filepath.Join(w.dir, "mux")
	w.cfgPath = filepath.Join(w.dir, "mailauthd.yaml")
	w.cfgView = w.cfgPath
	w.pamLog = filepath.Join(w.dir, "pam.log")
	w.pamLogView = filepath.Join(w.view, "pam.log")
	w.confDir = filepath.Join(w.dir, "pam.d")
	if err := os.WriteFile(filepath.Join(w.dir, "bindpw"), []byte(slapdtest.ServicePassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.cfgPath, fmt.Appendf(nil, pamConfigTemplate, w.dir, s.URL()), 0o644); err != nil {
		t.Fatal(err)
	}
	if view != dir {
		w.cfgView = filepath.Join(w.view, "mailauthd-view.yaml")
		if err := os.WriteFile(filepath.Join(w.dir, "mailauthd-view.yaml"), fmt.Appendf(nil, pamConfigTemplate, w.view, s.URL()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(w.cfgPath, "")
	if err != nil {
		t.Fatal(err)
	}
	w.cfg = cfg
	if err := os.Mkdir(w.confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The shipped files: imap is the generic one (auth, then account
	// through mailauthd), smtp the one for saslauthd -a pam.
	files := map[string]string{
		"imap": w.shippedPAMFile(t, "mailauthd", ""),
		"smtp": w.shippedPAMFile(t, "smtp", ""),
		// Lookup mode: auth is done elsewhere (here: by nobody).
		"imap-account": "auth required pam_permit.so\n" +
			fmt.Sprintf("account required pam_exec.so quiet log=%s %s pam --account --service imap --config %s\n", w.pamLogView, w.binView, w.cfgView),
		// A common mistake: the password never reaches the program.
		"imap-noauthtok": strings.Replace(w.shippedPAMFile(t, "dovecot", ""), " expose_authtok", "", 1),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(w.confDir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		w.stopDaemon()
		w.checkNoPasswords(t)
	})
	return w
}

// needRealPAM skips (or fails in CI) when libpam cannot run a confdir
// transaction with pam_exec.
func needRealPAM(t testing.TB) {
	t.Helper()
	sys := pamcheck.NewSystem("", pamcheck.Config{}.WithDefaults())
	if !pam.CheckPamHasStartConfdir() || sys.ResolveModule("pam_exec.so") == "" || sys.ResolveModule("pam_permit.so") == "" {
		peertest.Missing(t, "real PAM with pam_start_confdir, pam_exec and pam_permit not here (libpam0g-dev, libpam-modules)")
	}
}

func (w *pamWorld) startDaemon(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.daemon != nil {
		return
	}
	d, err := daemon.Start(w.cfg, daemon.Options{Logger: slog.New(slog.NewTextHandler(&w.daemonLog, nil))})
	if err != nil {
		t.Fatal(err)
	}
	w.daemon = d
}

func (w *pamWorld) stopDaemon() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.daemon == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w.daemon.Stop(ctx)
	w.daemon = nil
}

func (w *pamWorld) sent(pw string) {
	w.mu.Lock()
	w.passwords = append(w.passwords, pw)
	w.mu.Unlock()
}

// checkNoPasswords: neither the daemon's log nor mailauthd pam's holds a
// password the test sent.
func (w *pamWorld) checkNoPasswords(t testing.TB) {
	t.Helper()
	pamLog, _ := os.ReadFile(w.pamLog)
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, pw := range append(w.passwords, slapdtest.ServicePassword) {
		if len(pw) < 4 {
			continue
		}
		if bytes.Contains(pamLog, []byte(pw)) || strings.Contains(w.daemonLog.String(), pw) {
			t.Errorf("a log holds the password %q", pw)
		}
	}
}

// pamLogLines returns mailauthd pam's decision lines so far.
func (w *pamWorld) pamLogLines() []string {
	data, _ := os.ReadFile(w.pamLog)
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if strings.Contains(l, "msg=pam ") || strings.Contains(l, `msg="pam: `) {
			out = append(out, l)
		}
	}
	return out
}

// pamLineAfter returns the first line mailauthd pam logged after the n
// lines there were before this run (the auth line when a login also ran
// the account line).
func (w *pamWorld) pamLineAfter(t testing.TB, n int) string {
	t.Helper()
	lines := w.pamLogLines()
	if len(lines) <= n {
		t.Fatalf("mailauthd pam logged no line for this run; log:\n%s", strings.Join(lines, "\n"))
	}
	return lines[n]
}

// pamAnswer is what one PAM transaction said.
type pamAnswer struct {
	auth, acct error // nil: success
}

func (a pamAnswer) ok() bool { return a.auth == nil && a.acct == nil }

// login runs a real PAM transaction in this process against the test's
// pam.d directory: pam_authenticate, then pam_acct_mgmt as a service does.
func (w *pamWorld) login(t testing.TB, service, user, password, rhost string) pamAnswer {
	t.Helper()
	w.sent(password)
	runtime.LockOSThread() // one PAM transaction stays on one OS thread
	defer runtime.UnlockOSThread()
	conv := pam.ConversationFunc(func(s pam.Style, msg string) (string, error) {
		switch s {
		case pam.PromptEchoOff:
			return password, nil
		case pam.PromptEchoOn:
			return user, nil
		case pam.ErrorMsg, pam.TextInfo:
			// quiet: pam_exec shows nothing; anything here is a leak.
			t.Errorf("PAM told the user: %q", msg)
			return "", nil
		}
		return "", errors.New("unsupported conversation")
	})
	tx, err := pam.StartConfDir(service, user, conv, w.confDir)
	if err != nil {
		t.Fatalf("pam_start_confdir %s: %v", service, err)
	}
	defer tx.End()
	if rhost != "" {
		if err := tx.SetItem(pam.Rhost, rhost); err != nil {
			t.Fatal(err)
		}
	}
	var a pamAnswer
	a.acct = errors.New("not run")
	if a.auth = tx.Authenticate(0); a.auth == nil {
		a.acct = tx.AcctMgmt(0)
	}
	return a
}

// pamtester runs Debian's pamtester (libpam's own conversation, reading
// the password from stdin) against the test's pam.d directory: pamtester
// has no confdir option and reads /etc/pam.d, so it runs in a private
// mount namespace where the directory is bind-mounted over /etc/pam.d.
// The mount ends with the process.
func (w *pamWorld) pamtester(t testing.TB, service, user, password, rhost string) bool {
	t.Helper()
	bin := peertest.NeedFile(t, "/usr/bin/pamtester")
	unshare := peertest.NeedFile(t, "/usr/bin/unshare")
	peertest.NeedRoot(t, "pamtester's private mount namespace")
	propagation, err := mountns.Propagation()
	if err != nil {
		t.Fatal(err)
	}
	w.sent(password)
	args := []string{"--mount", "--propagation", propagation, "sh", "-c", `mount --bind "$1" /etc/pam.d && shift && exec "$@"`,
		"sh", w.confDir, bin}
	if rhost != "" {
		args = append(args, "-I", "rhost="+rhost)
	}
	args = append(args, service, user, "authenticate", "acct_mgmt")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, unshare, args...)
	cmd.Stdin = strings.NewReader(password + "\n") // misc_conv reads one line
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		if !strings.Contains(out.String(), "successfully authenticated") {
			t.Fatalf("pamtester exit 0 without success: %s", out.String())
		}
		return true
	case errors.As(err, &ee) && ee.ExitCode() == 1 && ctx.Err() == nil && strings.Contains(out.String(), "pamtester: "):
		// pamtester's own refusal ("pamtester: Authentication failure"),
		// not unshare or mount failing with the same exit code.
		return false
	}
	t.Fatalf("pamtester: %v\n%s", err, out.String())
	return false
}

// saslauthd asks the daemon's saslauthd socket, as Postfix does.
func (w *pamWorld) saslauthd(t testing.TB, service, user, password string) bool {
	t.Helper()
	w.sent(password)
	c := &saslauthd.Client{Path: w.saslSock, Timeout: 10 * time.Second}
	ok, _, err := c.Authenticate(context.Background(), auth.Request{User: user, Password: password, Service: service})
	if err != nil {
		t.Fatalf("saslauthd socket: %v", err)
	}
	return ok
}

// pamCase is one login every door must answer alike.
type pamCase struct {
	name, service, user, password string
	want                          bool
}

// pamCases: the case table the saslauthd socket, libpam and pamtester
// (and, in pam_dovecot_test.go, Dovecot's pam passdb) answer alike.
var pamCases = []pamCase{
	{"right password", "imap", "pamuser", "pamuserpw", true},
	{"wrong password", "imap", "pamuser", "wrongpw", false},
	{"host rule refuses", "imap", "otherhost", "otherhostpw", false},
	{"service rule allows smtp", "smtp", "smtponly", "smtponlypw", true},
	{"service rule refuses imap", "imap", "smtponly", "smtponlypw", false},
	{"unknown user", "imap", "nobody", "nobodypw", false},
	{"empty password", "imap", "pamuser", "", false},
	{"spaces and UTF-8", "imap", "spacey", "correct horse ✓ bätterie", true},
	{"spaces and UTF-8, cut at a space", "imap", "spacey", "correct horse", false},
	{"realm split at the last @", "smtp", "pamuser@example.org", "pamuserpw", true},
}

// TestPAMSameAnswers is the PAM front door's specification: every case,
// through the daemon and (daemon stopped) standalone, gives the same answer
// through a real PAM transaction, through pamtester, and through the
// saslauthd socket; each run logs one line saying who decided.
func TestPAMSameAnswers(t *testing.T) {
	w := newPAMWorld(t)
	w.startDaemon(t)
	sasl := map[string]bool{}
	for _, c := range pamCases {
		sasl[c.name] = w.saslauthd(t, c.service, c.user, c.password)
		if sasl[c.name] != c.want {
			t.Errorf("%s: saslauthd socket says %v, want %v", c.name, sasl[c.name], c.want)
		}
	}
	for _, via := range []string{"daemon", "standalone"} {
		if via == "daemon" {
			w.startDaemon(t)
		} else {
			w.stopDaemon()
		}
		for _, c := range pamCases {
			t.Run(via+"/"+c.name, func(t *testing.T) {
				n := len(w.pamLogLines())
				a := w.login(t, c.service, c.user, c.password, "192.0.2.7")
				if a.ok() != c.want || a.ok() != sasl[c.name] {
					t.Errorf("libpam: auth %v, acct %v; want accepted=%v like the saslauthd socket", a.auth, a.acct, c.want)
				}
				if !c.want && !errors.Is(a.auth, pam.ErrSystem) {
					// pam_exec turns every non-zero exit into PAM_SYSTEM_ERR,
					// and a failing required line returns its status.
					t.Errorf("refusal is %v, want PAM_SYSTEM_ERR", a.auth)
				}
				line := w.pamLineAfter(t, n)
				wantResult := map[bool]string{true: "result=accept exit=0", false: "exit=1"}[c.want]
				for _, s := range []string{"msg=pam type=auth user=" + logValue(c.user) + " service=" + c.service + " rhost=192.0.2.7", wantResult} {
					if !strings.Contains(line, s) {
						t.Errorf("pam log line lacks %q:\n%s", s, line)
					}
				}
				if c.password != "" && !strings.Contains(line, "via="+via) {
					t.Errorf("pam log line does not say via=%s:\n%s", via, line)
				}
				if got := w.pamtester(t, c.service, c.user, c.password, "192.0.2.7"); got != c.want {
					t.Errorf("pamtester: accepted=%v, want %v\n%s", got, c.want, strings.Join(w.pamLogLines()[n:], "\n"))
				}
			})
		}
	}
}

// logValue is how slog's text handler writes a simple value.
func logValue(s string) string {
	if strings.ContainsAny(s, " =\"") {
		return fmt.Sprintf("%q", s)
	}
	return s
}

// TestPAMAccount: the lookup mode for stacks where auth is done
// elsewhere: the host and service rules without a password.
func TestPAMAccount(t *testing.T) {
	w := newPAMWorld(t)
	for _, via := range []string{"daemon", "standalone"} {
		if via == "daemon" {
			w.startDaemon(t)
		} else {
			w.stopDaemon()
		}
		for _, c := range []struct {
			user string
			want bool
		}{
			{"pamuser", true},
			{"otherhost", false}, // host rule
			{"smtponly", false},  // service rule: --service imap
			{"nobody", false},
		} {
			t.Run(via+"/"+c.user, func(t *testing.T) {
				n := len(w.pamLogLines())
				a := w.login(t, "imap-account", c.user, "never-asked", "")
				if a.auth != nil {
					t.Fatalf("auth (pam_permit) failed: %v", a.auth)
				}
				if (a.acct == nil) != c.want {
					t.Errorf("acct_mgmt: %v, want accepted=%v", a.acct, c.want)
				}
				line := w.pamLineAfter(t, n)
				if !strings.Contains(line, "type=account user="+c.user+" service=imap") || !strings.Contains(line, "via="+via) {
					t.Errorf("log line: %s", line)
				}
			})
		}
	}
}

// TestPAMWithoutExposeAuthtok: an auth line that forgets expose_authtok
// gives the program no password; every login is refused, and the log says
// why.
func TestPAMWithoutExposeAuthtok(t *testing.T) {
	w := newPAMWorld(t)
	w.startDaemon(t)
	if a := w.login(t, "imap-noauthtok", "pamuser", "pamuserpw", ""); a.ok() {
		t.Fatal("accepted without a password")
	}
	if line := w.pamLineAfter(t, 0); !strings.Contains(line, "no expose_authtok") {
		t.Fatalf("log does not name the cause: %s", line)
	}
}

// TestPAMLDAPDown: slapd gone, the daemon running or not: every login is
// refused (PAM has no "try later"), the log says temporary failure (111),
// and the saslauthd socket refuses too.
func TestPAMLDAPDown(t *testing.T) {
	w := newPAMWorld(t)
	w.startDaemon(t)
	w.slapd.Stop()
	if w.saslauthd(t, "imap", "pamuser", "pamuserpw") {
		t.Fatal("saslauthd socket accepted with LDAP down")
	}
	for _, via := range []string{"daemon", "standalone"} {
		if via == "standalone" {
			w.stopDaemon()
		}
		n := len(w.pamLogLines())
		if a := w.login(t, "imap", "pamuser", "pamuserpw", ""); a.ok() {
			t.Fatalf("%s: accepted with LDAP down", via)
		}
		line := w.pamLineAfter(t, n)
		if !strings.Contains(line, "result=tempfail exit=111") || !strings.Contains(line, "via="+via) {
			t.Errorf("%s: log line: %s", via, line)
		}
		if w.pamtester(t, "imap", "pamuser", "pamuserpw", "") {
			t.Errorf("%s: pamtester accepted with LDAP down", via)
		}
	}
}

// TestPAMHungLDAP: a frozen slapd (accepts, never answers) ends the
// program within pam.timeout: the PAM caller (an auth-worker) is not stuck.
func TestPAMHungLDAP(t *testing.T) {
	w := newPAMWorld(t)
	if err := w.slapd.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.slapd.Resume() })
	for _, via := range []string{"standalone", "daemon"} {
		if via == "daemon" {
			w.startDaemon(t)
		}
		n := len(w.pamLogLines())
		done := make(chan pamAnswer, 1)
		go func() { done <- w.login(t, "imap", "pamuser", "pamuserpw", "") }()
		select {
		case a := <-done:
			if a.ok() {
				t.Fatalf("%s: accepted with LDAP frozen", via)
			}
		case <-time.After(30 * time.Second):
			// Far beyond the 3s configured: the run ignores its deadline.
			t.Fatalf("%s: PAM still waiting 30s after a 3s pam.timeout", via)
		}
		if line := w.pamLineAfter(t, n); !strings.Contains(line, "exit=111") || !strings.Contains(line, "via="+via) {
			t.Errorf("%s: log line: %s", via, line)
		}
	}
}

// lockedBuf collects a log written from several goroutines.
type lockedBuf struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuf) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

var _ io.Writer = (*lockedBuf)(nil)

// BenchmarkPAMLogin is one accepted login's cost through each door against
// real slapd: mailauthd's saslauthd socket (the reference), and a real PAM
// transaction whose pam_exec runs the binary, asking the daemon or (none
// running) deciding standalone with its own LDAP connections.
func BenchmarkPAMLogin(b *testing.B) {
	w := newPAMWorld(b)
	for _, door := range []string{"saslauthd-socket", "pam/daemon", "pam/standalone"} {
		b.Run(door, func(b *testing.B) {
			if door == "pam/standalone" {
				w.stopDaemon()
			} else {
				w.startDaemon(b)
			}
			for b.Loop() {
				var ok bool
				if door == "saslauthd-socket" {
					ok = w.saslauthd(b, "imap", "pamuser", "pamuserpw")
				} else {
					ok = w.login(b, "imap", "pamuser", "pamuserpw", "").ok()
				}
				if !ok {
					b.Fatal("refused")
				}
			}
		})
	}
}

// TestPAMGenericFileOtherTypes: the generic file sets every module type,
// so libpam takes nothing from "other": a session opens and closes, a
// password change is refused (it belongs in the directory).
func TestPAMGenericFileOtherTypes(t *testing.T) {
	w := newPAMWorld(t)
	w.startDaemon(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	w.sent("pamuserpw")
	tx, err := pam.StartConfDir("imap", "pamuser", pam.ConversationFunc(func(s pam.Style, msg string) (string, error) {
		if s == pam.PromptEchoOff {
			return "pamuserpw", nil
		}
		return "", nil
	}), w.confDir)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.End()
	if err := tx.Authenticate(0); err != nil {
		t.Fatalf("authenticate: %v", err)
	}
	if err := tx.AcctMgmt(0); err != nil {
		t.Fatalf("acct_mgmt: %v", err)
	}
	if err := tx.OpenSession(0); err != nil {
		t.Errorf("open_session: %v", err)
	}
	if err := tx.CloseSession(0); err != nil {
		t.Errorf("close_session: %v", err)
	}
	if err := tx.ChangeAuthTok(0); err == nil {
		t.Error("a password change was accepted")
	}
	lines := w.pamLogLines()
	if len(lines) != 2 || !strings.Contains(lines[0], "type=auth") || !strings.Contains(lines[1], "type=account user=pamuser service=imap") {
		t.Errorf("want one auth and one account line:\n%s", strings.Join(lines, "\n"))
	}
}

// TestPAMMainSetupErrors: what the program does before any decision: a bad
// --syslog value is a usage error (2), an unreadable configuration a
// temporary failure (111) with a log line.
func TestPAMMainSetupErrors(t *testing.T) {
	getenv := func(k string) string {
		return map[string]string{"PAM_TYPE": "auth", "PAM_USER": "alice", "PAM_SERVICE": "imap"}[k]
	}
	run := func(args ...string) (int, string) {
		var stderr bytes.Buffer
		code := pamMain(args, io.Discard, pamIO{stderr: &stderr, stdin: strings.NewReader("pw"), getenv: getenv,
			exit: func(int) { t.Error("watchdog fired") }, stderrIsNull: func() bool { return false }})
		return code, stderr.String()
	}
	if code, _ := run("--syslog", "maybe"); code != exitUsage {
		t.Errorf("--syslog maybe: exit %d, want %d", code, exitUsage)
	}
	code, log := run("--config", filepath.Join(t.TempDir(), "missing.yaml"))
	if code != 111 || !strings.Contains(log, `msg="pam: configuration"`) || !strings.Contains(log, "exit=111") {
		t.Errorf("missing configuration: exit %d, log %q", code, log)
	}
}
