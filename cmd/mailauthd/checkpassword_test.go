package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/checkpassword"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/daemon"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// cpBinary is the mailauthd binary built once for the checkpassword tests,
// in a directory the dovecot user can reach (Dovecot's auth process runs
// the program as that user).
var cpBinary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func mailauthdBinary(t testing.TB) string {
	t.Helper()
	cpBinary.once.Do(func() {
		dir, err := os.MkdirTemp("", "mailauthd-bin-")
		if err != nil {
			cpBinary.err = err
			return
		}
		cpBinary.dir = dir
		if err := os.Chmod(dir, 0o755); err != nil {
			cpBinary.err = err
			return
		}
		path := filepath.Join(dir, "mailauthd")
		out, err := exec.Command("go", "build", "-o", path, ".").CombinedOutput()
		if err != nil {
			cpBinary.err = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		cpBinary.path = path
	})
	if cpBinary.err != nil {
		t.Fatal(cpBinary.err)
	}
	return cpBinary.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if cpBinary.dir != "" {
		os.RemoveAll(cpBinary.dir)
	}
	os.Exit(code)
}

// publicTempDir is a temp dir the dovecot user can traverse and read
// (t.TempDir's parent is 0700).
func publicTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "mailauthd-cp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// cpWorld is a real slapd, a mailauthd configuration pointing at it, and a
// control.Server (the daemon's fast path) that can be started and stopped.
type cpWorld struct {
	dir     string
	slapd   *slapdtest.Server
	cfgPath string
	cfg     *config.File
	sock    string
	// cfgView is the configuration as a program chrooted elsewhere sees it
	// (newCPWorldIn); cfgPath otherwise.
	cfgView string

	mu     sync.Mutex
	daemon *daemon.Running
}

const cpConfigTemplate = `listen:
  control:
    path: %s
    mode: "0666"
ldap:
  urls: [%s]
  base: ou=people,dc=example,dc=org
  bind_dn: cn=mailauthd,ou=services,dc=example,dc=org
  bind_password_file: %s
  timeout: 2s
access:
  hostnames: [mail.example.org, mail]
  realms: [example.org, example.net]
checkpassword:
  timeout: 3s
dovecot:
  fields:
    userdb_home: homeDirectory
    userdb_uid: uidNumber
    userdb_gid: gidNumber
    host: mailHost
  defaults:
    userdb_home: /var/vmail/%%d/%%n
    userdb_uid: "5000"
    userdb_gid: "5000"
    userdb_mail: maildir:~/Maildir
    proxy_maybe: "y"
`

func newCPWorld(t testing.TB) *cpWorld {
	dir := publicTempDir(t)
	return newCPWorldIn(t, dir, dir)
}

// newCPWorldIn makes the world in dir, which a program chrooted elsewhere
// (Dovecot from another Debian release's root) sees as view: when the two
// differ, that program gets its own configuration (cfgView) naming the
// same files as it sees them.
func newCPWorldIn(t testing.TB, dir, view string) *cpWorld {
	t.Helper()
	s := slapdtest.Start(t, slapdtest.WithLDIF(
		filepath.Join(slapdtest.TestdataDir(), "users.ldif"),
		filepath.Join(slapdtest.TestdataDir(), "..", "dovecot", "users.ldif")))
	w := &cpWorld{dir: dir, slapd: s}
	w.sock = filepath.Join(w.dir, "control")
	pwFile := filepath.Join(w.dir, "bindpw")
	// Readable by the dovecot user: the standalone path needs it. (The
	// daemon path never reads it.)
	if err := os.WriteFile(pwFile, []byte(slapdtest.ServicePassword+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.cfgPath = filepath.Join(w.dir, "mailauthd.yaml")
	if err := os.WriteFile(w.cfgPath, fmt.Appendf(nil, cpConfigTemplate, w.sock, s.URL(), pwFile), 0o644); err != nil {
		t.Fatal(err)
	}
	w.cfgView = w.cfgPath
	if view != dir {
		w.cfgView = filepath.Join(view, "mailauthd-view.yaml")
		body := fmt.Appendf(nil, cpConfigTemplate, filepath.Join(view, "control"), s.URL(), filepath.Join(view, "bindpw"))
		if err := os.WriteFile(filepath.Join(dir, "mailauthd-view.yaml"), body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(w.cfgPath, "")
	if err != nil {
		t.Fatal(err)
	}
	w.cfg = cfg
	t.Cleanup(w.stopDaemon)
	return w
}

// startDaemon serves the control socket the way "mailauthd serve" does,
// with the configuration read when the world was made.
func (w *cpWorld) startDaemon(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.daemon != nil {
		return
	}
	d, err := daemon.Start(w.cfg, daemon.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	w.daemon = d
}

func (w *cpWorld) stopDaemon() {
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

// cpRun is one checkpassword run's observable result.
type cpRun struct {
	exit   int
	reply  map[string]string
	stderr string
}

// runCheckpassword execs the binary as Dovecot does: fd 3 the request, fd
// 4 the reply, Dovecot's environment, the reply program appended.
func runCheckpassword(t testing.TB, bin string, args []string, env []string, input string) cpRun {
	t.Helper()
	r3, w3, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r4, w4, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append(append([]string{"checkpassword"}, args...), "/usr/lib/dovecot/checkpassword-reply")...)
	cmd.Env = env
	cmd.ExtraFiles = []*os.File{r3, w4}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	r3.Close()
	w4.Close()
	go func() { w3.Write([]byte(input)); w3.Close() }()
	reply, _ := io.ReadAll(r4)
	r4.Close()
	err = cmd.Wait()
	var ee *exec.ExitError
	exit := 0
	if errors.As(err, &ee) {
		exit = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	fields, err := checkpassword.DecodeReply(reply)
	if err != nil {
		t.Fatalf("reply %q: %v", reply, err)
	}
	m := map[string]string{}
	for _, f := range fields {
		m[f.Key] = f.Value
	}
	return cpRun{exit: exit, reply: m, stderr: stderr.String()}
}

func dovecotEnv(extra ...string) []string {
	return append([]string{"PROTO=TCP", "ORIG_UID=0", "SERVICE=imap", "TCPREMOTEIP=192.0.2.7", "REMOTE_IP=192.0.2.7",
		"AUTH_USER=x", "AUTH_SERVICE=imap", "AUTH_RIP=192.0.2.7"}, extra...)
}

var aliceFields = map[string]string{
	"user":        "alice",
	"userdb_home": "/srv/mail/example.org/alice",
	"userdb_uid":  "2001",
	"userdb_gid":  "2000",
	"userdb_mail": "maildir:~/Maildir",
	"host":        "imap1.example.org",
	"proxy_maybe": "y",
}

// cpCases are the decisions both paths must give identically.
var cpCases = []struct {
	name      string
	env       []string
	input     string
	wantExit  int
	wantReply map[string]string
}{
	{"accepted", dovecotEnv(), "alice\x00alicepw\x00\x00", checkpassword.ExitOK, aliceFields},
	{"wrong password", dovecotEnv(), "alice\x00nope\x00\x00", checkpassword.ExitReject, nil},
	{"refused by host attribute", dovecotEnv(), "otherhost\x00otherhostpw\x00\x00", checkpassword.ExitReject, nil},
	{"unknown user", dovecotEnv(), "nobody\x00Nobody-Secret-41\x00\x00", checkpassword.ExitReject, nil},
	{"empty password", dovecotEnv(), "alice\x00\x00\x00", checkpassword.ExitReject, nil},
	{"lookup", dovecotEnv("AUTHORIZED=1"), "alice\x00\x00\x00", checkpassword.ExitFound, aliceFields},
	{"lookup with domain defaults", dovecotEnv("AUTHORIZED=1"), "star@example.net\x00\x00\x00", checkpassword.ExitFound, map[string]string{
		"user": "star@example.net", "userdb_home": "/var/vmail/example.net/star", "userdb_uid": "5000",
		"userdb_gid": "5000", "userdb_mail": "maildir:~/Maildir", "proxy_maybe": "y"}},
	{"lookup unknown", dovecotEnv("AUTHORIZED=1"), "nobody\x00\x00\x00", checkpassword.ExitUnknown, nil},
	{"lookup refused by host", dovecotEnv("AUTHORIZED=1"), "otherhost\x00\x00\x00", checkpassword.ExitUnknown, nil},
	{"oversized input", dovecotEnv(), "alice\x00" + strings.Repeat("x", 600) + "\x00\x00", checkpassword.ExitReject, nil},
}

// TestCheckpasswordBothPaths runs every case through the daemon's control
// socket and standalone, and requires the same exit code and reply.
func TestCheckpasswordBothPaths(t *testing.T) {
	bin := mailauthdBinary(t)
	w := newCPWorld(t)
	args := []string{"--config", w.cfgPath}
	for _, tc := range cpCases {
		t.Run(tc.name, func(t *testing.T) {
			w.stopDaemon()
			alone := runCheckpassword(t, bin, args, tc.env, tc.input)
			w.startDaemon(t)
			daemon := runCheckpassword(t, bin, args, tc.env, tc.input)
			for _, r := range []struct {
				via string
				run cpRun
			}{{"standalone", alone}, {"daemon", daemon}} {
				if r.run.exit != tc.wantExit {
					t.Errorf("%s: exit %d, want %d\n%s", r.via, r.run.exit, tc.wantExit, r.run.stderr)
				}
				want := tc.wantReply
				if want == nil {
					want = map[string]string{}
				}
				if !reflect.DeepEqual(r.run.reply, want) {
					t.Errorf("%s: reply %v, want %v", r.via, r.run.reply, want)
				}
				if strings.Contains(tc.input, "\x00") && !strings.Contains(r.run.stderr, "via="+r.via) && tc.name != "oversized input" && tc.name != "empty password" {
					t.Errorf("%s: log does not say via=%s: %s", r.via, r.via, r.run.stderr)
				}
				if pw := strings.Split(tc.input, "\x00")[1]; pw != "" && strings.Contains(r.run.stderr, pw) {
					t.Errorf("%s: password in log: %s", r.via, r.run.stderr)
				}
			}
			if alone.exit != daemon.exit || !reflect.DeepEqual(alone.reply, daemon.reply) {
				t.Errorf("paths differ: standalone %d %v, daemon %d %v", alone.exit, alone.reply, daemon.exit, daemon.reply)
			}
		})
	}
}

// TestCheckpasswordFieldsFromDaemon: the daemon owns the field mapping.
// Edit dovecot.fields in the file without reloading the daemon, and the
// helper still returns the daemon's fields: it maps nothing itself, so the
// two cannot drift apart.
func TestCheckpasswordFieldsFromDaemon(t *testing.T) {
	bin := mailauthdBinary(t)
	w := newCPWorld(t)
	w.startDaemon(t)
	data, err := os.ReadFile(w.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(data), "host: mailHost", "host: nosuchAttribute", 1)
	if edited == string(data) {
		t.Fatal("test configuration has no host mapping to edit")
	}
	if err := os.WriteFile(w.cfgPath, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	r := runCheckpassword(t, bin, []string{"--config", w.cfgPath}, dovecotEnv(), "alice\x00alicepw\x00\x00")
	if r.exit != checkpassword.ExitOK || r.reply["host"] != "imap1.example.org" || !strings.Contains(r.stderr, "via=daemon") {
		t.Fatalf("exit %d reply %v: want the daemon's mapping (host from mailHost)\n%s", r.exit, r.reply, r.stderr)
	}
}

// TestCheckpasswordLDAPDown: with slapd gone, both paths answer 111 (a
// temporary failure), never 1 (which Dovecot reports as a wrong password).
func TestCheckpasswordLDAPDown(t *testing.T) {
	bin := mailauthdBinary(t)
	w := newCPWorld(t)
	args := []string{"--config", w.cfgPath}
	w.startDaemon(t)
	w.slapd.Stop()
	for _, daemon := range []bool{true, false} {
		if !daemon {
			w.stopDaemon()
		}
		for _, env := range [][]string{dovecotEnv(), dovecotEnv("AUTHORIZED=1")} {
			r := runCheckpassword(t, bin, args, env, "alice\x00alicepw\x00\x00")
			if r.exit != checkpassword.ExitTempFail || len(r.reply) != 0 {
				t.Errorf("daemon=%v env=%v: exit %d reply %v, want 111 and no reply\n%s", daemon, env, r.exit, r.reply, r.stderr)
			}
		}
	}
}

// TestCheckpasswordHungLDAP: a frozen slapd (accepts, never answers) must
// give 111 within checkpassword.timeout, not hang Dovecot's auth process.
func TestCheckpasswordHungLDAP(t *testing.T) {
	bin := mailauthdBinary(t)
	w := newCPWorld(t)
	if err := w.slapd.Pause(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.slapd.Resume() })
	done := make(chan cpRun, 1)
	go func() {
		done <- runCheckpassword(t, bin, []string{"--config", w.cfgPath}, dovecotEnv(), "alice\x00alicepw\x00\x00")
	}()
	select {
	case r := <-done:
		if r.exit != checkpassword.ExitTempFail {
			t.Fatalf("exit %d, want 111\n%s", r.exit, r.stderr)
		}
	case <-time.After(30 * time.Second):
		// Far beyond the 3s configured: the run ignores its deadline.
		t.Fatal("checkpassword still running 30s after a 3s timeout")
	}
}

// TestCheckpasswordDaemonThereButStuck: a control socket that accepts but
// never answers must give 111, not a standalone decision.
func TestCheckpasswordDaemonThereButStuck(t *testing.T) {
	bin := mailauthdBinary(t)
	w := newCPWorld(t)
	l, err := net.Listen("unix", w.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	r := runCheckpassword(t, bin, []string{"--config", w.cfgPath}, dovecotEnv(), "alice\x00alicepw\x00\x00")
	if r.exit != checkpassword.ExitTempFail || !strings.Contains(r.stderr, "via=daemon") {
		t.Fatalf("exit %d, want 111 via the daemon\n%s", r.exit, r.stderr)
	}
}

// BenchmarkCheckpassword is one Dovecot login's cost: exec of the binary,
// config parse, fd 3 in, decision, fd 4 out, against real slapd, through
// the daemon's control socket and standalone (own LDAP connection).
func BenchmarkCheckpassword(b *testing.B) {
	bin := mailauthdBinary(b)
	w := newCPWorld(b)
	args := []string{"--config", w.cfgPath}
	for _, via := range []string{"daemon", "standalone"} {
		b.Run(via, func(b *testing.B) {
			if via == "daemon" {
				w.startDaemon(b)
			} else {
				w.stopDaemon()
			}
			for b.Loop() {
				r := runCheckpassword(b, bin, args, dovecotEnv(), "alice\x00alicepw\x00\x00")
				if r.exit != checkpassword.ExitOK || !strings.Contains(r.stderr, "via="+via) {
					b.Fatalf("exit %d\n%s", r.exit, r.stderr)
				}
			}
		})
	}
}

// TestCheckpasswordUsageLeavesFDsAlone: fds 3 and 4 are Dovecot's only when
// a checkpassword run really starts. "checkpassword -h" or a usage error,
// run in-process as the CLI tests do, must not wrap (and, through the
// finalizer, close) whatever this process has there: once that was the Go
// runtime's epoll descriptor, and the test binary died.
func TestCheckpasswordUsageLeavesFDsAlone(t *testing.T) {
	// Make sure 3 and 4 are open, and note what they are.
	var keep []*os.File
	for len(keep) < 8 {
		f, err := os.Open(os.DevNull)
		if err != nil {
			t.Fatal(err)
		}
		keep = append(keep, f)
	}
	defer func() {
		for _, f := range keep {
			f.Close()
		}
	}()
	before := map[int]syscall.Stat_t{}
	for _, fd := range []int{3, 4} {
		var st syscall.Stat_t
		if err := syscall.Fstat(fd, &st); err != nil {
			t.Fatalf("fd %d: %v", fd, err)
		}
		before[fd] = st
	}
	for _, args := range [][]string{{"checkpassword", "-h"}, {"checkpassword", "--no-such-flag"}, {"checkpassword", "/reply", "extra"}} {
		var out, errOut bytes.Buffer
		run(args, &out, &errOut)
	}
	for i := 0; i < 3; i++ {
		runtime.GC()
		time.Sleep(20 * time.Millisecond)
	}
	for fd, st := range before {
		var now syscall.Stat_t
		if err := syscall.Fstat(fd, &now); err != nil || now.Dev != st.Dev || now.Ino != st.Ino {
			t.Errorf("fd %d changed under the test process: %v", fd, err)
		}
	}
}
