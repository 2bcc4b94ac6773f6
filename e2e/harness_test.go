// Package e2e runs the real mailauthd binary against real peers: a slapd
// started per test (internal/slapdtest), Cyrus's testsaslauthd, and Postfix
// doing SMTP AUTH through libsasl2.
package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// mailauthdBin is the binary TestMain builds once for every test.
var mailauthdBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	root, err := moduleRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "mailauthd-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Peers running as other users (Postfix's smtpd runs as postfix) never
	// exec the binary, but the directory must not hide it from ourselves.
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	mailauthdBin = filepath.Join(dir, "mailauthd")
	build := exec.Command("go", "build", "-o", mailauthdBin, "./cmd/mailauthd")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build: %v\n%s", err, out)
		return 1
	}
	if err := os.Chmod(mailauthdBin, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	return m.Run()
}

// moduleRoot asks the go command where go.mod is, so the build does not
// depend on the directory the tests were started from.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside a Go module")
	}
	return filepath.Dir(mod), nil
}

// shortDir returns a fresh directory with a short path (Unix socket paths
// are limited to 108 bytes; t.TempDir paths can exceed that), traversable by
// every user so Postfix's smtpd (user postfix) can reach a socket inside.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ma")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// settings are the parts of the YAML configuration tests vary.
type settings struct {
	Socket       string
	LDAPURL      string   // "" leaves out the ldap: section (for --saslauthd-conf)
	Hostnames    []string // default mail.example.org, mail
	Filter       string   // default (uid=%u)
	Realms       []string // access.realms
	LDAPTimeout  string   // default 1s
	RequestLimit string   // server.request_timeout, default 4s
	LogLevel     string   // default info
	LogFormat    string   // default text
	ListenExtra  string   // appended verbatim inside listen: (e.g. "  http: [...]\n")
	Extra        string   // appended verbatim
}

// writeConfig writes the YAML configuration and the service account's
// password file into dir and returns the configuration's path.
func writeConfig(t *testing.T, dir string, s settings) string {
	t.Helper()
	pwFile := filepath.Join(dir, "bindpw")
	if err := os.WriteFile(pwFile, []byte(slapdtest.ServicePassword+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if s.Hostnames == nil {
		s.Hostnames = []string{"mail.example.org", "mail"}
	}
	if s.Filter == "" {
		s.Filter = "(uid=%u)"
	}
	if s.LDAPTimeout == "" {
		s.LDAPTimeout = "1s"
	}
	if s.RequestLimit == "" {
		s.RequestLimit = "4s"
	}
	if s.LogLevel == "" {
		s.LogLevel = "info"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "listen:\n  saslauthd:\n    - {path: %q, mode: \"0666\"}\n  control: {path: \"\"}\n", s.Socket)
	b.WriteString(s.ListenExtra)
	fmt.Fprintf(&b, "server:\n  request_timeout: %s\n  io_timeout: 2s\n", s.RequestLimit)
	if s.LDAPURL != "" {
		fmt.Fprintf(&b, "ldap:\n  urls: [%q]\n  bind_dn: %q\n  bind_password_file: %q\n  base: %q\n  filter: %q\n  timeout: %s\n",
			s.LDAPURL, slapdtest.ServiceDN, pwFile, slapdtest.PeopleDN, s.Filter, s.LDAPTimeout)
	}
	fmt.Fprintf(&b, "access:\n  hostnames: [%s]\n  realms: [%s]\n", strings.Join(s.Hostnames, ", "), strings.Join(s.Realms, ", "))
	if s.LogFormat == "" {
		s.LogFormat = "text"
	}
	fmt.Fprintf(&b, "log:\n  format: %s\n  level: %s\n", s.LogFormat, s.LogLevel)
	b.WriteString(s.Extra)
	path := filepath.Join(dir, "mailauthd.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// lockedBuffer collects a subprocess's stderr while tests read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// daemon is one running "mailauthd serve".
type daemon struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr *lockedBuffer
	socket string
	done   chan struct{}
	err    error // exit status, valid after done is closed

	sent atomic.Int64 // requests sent by the helpers; each must log one decision

	mu        sync.Mutex
	passwords []string // every password sent; none may appear in the log
}

// startDaemon runs "mailauthd serve" with args and waits until it logs that
// it is serving. It is killed in t.Cleanup, after the log has been checked
// for every password the test sent.
func startDaemon(t *testing.T, socket string, args ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, stderr: &lockedBuffer{}, socket: socket, done: make(chan struct{})}
	d.cmd = exec.Command(mailauthdBin, append([]string{"serve"}, args...)...)
	d.cmd.Stderr = d.stderr
	d.cmd.Stdout = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.cmd.Process.Kill()
		<-d.done
		d.checkNoPasswords()
		if t.Failed() {
			t.Logf("mailauthd log:\n%s", d.stderr.String())
		}
	})
	d.waitLog("mailauthd started", 10*time.Second) // text or JSON
	return d
}

// addPassword records a secret that must never reach the daemon's log.
func (d *daemon) addPassword(p string) {
	d.mu.Lock()
	d.passwords = append(d.passwords, p)
	d.mu.Unlock()
}

func (d *daemon) checkNoPasswords() {
	d.t.Helper()
	log := d.stderr.String()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range append(d.passwords, slapdtest.ServicePassword) {
		if strings.Contains(log, p) {
			d.t.Errorf("daemon log contains the password %q", p)
		}
	}
}

// waitLog waits until the log contains s, failing if the daemon exits first.
func (d *daemon) waitLog(s string, limit time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(limit)
	for !strings.Contains(d.stderr.String(), s) {
		select {
		case <-d.done:
			d.t.Fatalf("mailauthd exited (%v) before logging %q; log:\n%s", d.err, s, d.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("mailauthd did not log %q within %s; log:\n%s", s, limit, d.stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// countLog counts log lines containing s.
func (d *daemon) countLog(s string) int {
	n := 0
	for _, l := range strings.Split(d.stderr.String(), "\n") {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}

func (d *daemon) signal(sig syscall.Signal) {
	d.t.Helper()
	if err := d.cmd.Process.Signal(sig); err != nil {
		d.t.Fatal(err)
	}
}

// decisionLines returns the daemon's "saslauthd: decision" log lines.
func (d *daemon) decisionLines() []string {
	var out []string
	for _, l := range strings.Split(d.stderr.String(), "\n") {
		if strings.Contains(l, `msg="saslauthd: decision"`) || strings.Contains(l, `"msg":"saslauthd: decision"`) {
			out = append(out, l)
		}
	}
	return out
}

// waitDecisions waits until at least n decision lines are logged (the
// daemon logs each decision just after writing its reply) and returns them.
func (d *daemon) waitDecisions(n int) []string {
	d.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if lines := d.decisionLines(); len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("fewer than %d decisions logged; log:\n%s", n, d.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ask sends one request with testsaslauthd and returns the answer and the
// decision line it produced. Not for use while other requests run.
func (d *daemon) ask(ctx context.Context, r saslReq) (answer, decision string) {
	d.t.Helper()
	n := int(d.sent.Load())
	answer = d.testsaslauthd(ctx, r)
	return answer, d.waitDecisions(n + 1)[n]
}

// logField extracts key's value from a slog text line ("" when absent).
func logField(line, key string) string {
	re := regexp.MustCompile(`(?:^| )` + regexp.QuoteMeta(key) + `=("(?:[^"\\]|\\.)*"|\S*)`)
	m := re.FindStringSubmatch(line)
	if m == nil {
		return ""
	}
	v := m[1]
	if strings.HasPrefix(v, `"`) {
		v = strings.ReplaceAll(strings.Trim(v, `"`), `\"`, `"`)
	}
	return v
}

// saslReq is one testsaslauthd invocation.
type saslReq struct {
	user, pass, service, realm string
}

// testsaslauthd runs Cyrus's client against the daemon's socket and returns
// its output, trimmed. Its exit status is not an error: it exits non-zero on NO.
func (d *daemon) testsaslauthd(ctx context.Context, r saslReq) string {
	bin := peertest.NeedFile(d.t, "/usr/sbin/testsaslauthd", "testsaslauthd")
	d.addPassword(r.pass)
	d.sent.Add(1)
	args := []string{"-u", r.user, "-p", r.pass, "-f", d.socket}
	if r.service != "" {
		args = append(args, "-s", r.service)
	}
	if r.realm != "" {
		args = append(args, "-r", r.realm)
	}
	out, _ := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	return strings.TrimSpace(string(out))
}

const okAnswer = `0: OK "Success."`

func isNO(out string) bool { return strings.HasPrefix(out, `0: NO "`) }
