package pamexec

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

func TestReadAuthtok(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr error
	}{
		{"as pam_exec writes it: bytes, then EOF", "secret", "secret", nil},
		{"spaces and UTF-8 kept exactly", " correct horse ✓ bätterie ", " correct horse ✓ bätterie ", nil},
		{"a newline is part of the password (pam_exec never adds one)", "secret\n", "secret\n", nil},
		{"empty: no expose_authtok, or an empty password", "", "", nil},
		{"510 bytes", strings.Repeat("p", MaxAuthtok-1), strings.Repeat("p", MaxAuthtok-1), nil},
		{"511 bytes may have been cut by pam_exec", strings.Repeat("p", MaxAuthtok), "", ErrAuthtokTooLong},
		{"more than pam_exec ever writes", strings.Repeat("p", 4000), "", ErrAuthtokTooLong},
		{"NUL, which strlen never lets through", "sec\x00ret", "", ErrAuthtokNUL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, r := range []io.Reader{strings.NewReader(tt.in), iotest.OneByteReader(strings.NewReader(tt.in))} {
				got, err := ReadAuthtok(r)
				if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				if got != tt.want {
					t.Fatalf("got %q, want %q", got, tt.want)
				}
			}
		})
	}
}

func TestReadAuthtokBounded(t *testing.T) {
	// An endless stdin stops after MaxAuthtok+1 bytes.
	r := &countingReader{}
	if _, err := ReadAuthtok(r); !errors.Is(err, ErrAuthtokTooLong) {
		t.Fatalf("err = %v, want ErrAuthtokTooLong", err)
	}
	if r.n > MaxAuthtok+1 {
		t.Fatalf("read %d bytes from an endless stdin", r.n)
	}
	if _, err := ReadAuthtok(iotest.ErrReader(errors.New("EBADF"))); err == nil || errors.Is(err, ErrAuthtokTooLong) {
		t.Fatalf("a read error must be reported as such, got %v", err)
	}
}

type countingReader struct{ n int }

func (c *countingReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	c.n += len(p)
	return len(p), nil
}

func env(kv ...string) func(string) string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

func TestParseEnv(t *testing.T) {
	tests := []struct {
		name    string
		getenv  func(string) string
		service string
		account bool
		want    Env
		wantErr error
	}{
		{"auth line from Dovecot", env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "dovecot", "PAM_RHOST", "192.0.2.7", "PAM_TTY", "dovecot"), "", false,
			Env{Mode: ModeAuth, User: "alice", Service: "dovecot", RHost: "192.0.2.7", TTY: "dovecot"}, nil},
		{"account line", env("PAM_TYPE", "account", "PAM_USER", "alice", "PAM_SERVICE", "ftp"), "", true,
			Env{Mode: ModeAccount, User: "alice", Service: "ftp"}, nil},
		{"account line without --account", env("PAM_TYPE", "account", "PAM_USER", "alice", "PAM_SERVICE", "ftp"), "", false,
			Env{Mode: ModeAccount, User: "alice", Service: "ftp"}, nil},
		{"--service replaces PAM_SERVICE", env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "dovecot"), "imap", false,
			Env{Mode: ModeAuth, User: "alice", Service: "imap"}, nil},
		{"host name from sshd", env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "sshd", "PAM_RHOST", "client.example.net"), "", false,
			Env{Mode: ModeAuth, User: "alice", Service: "sshd", RHost: "client.example.net"}, nil},
		{"user with realm and UTF-8", env("PAM_TYPE", "auth", "PAM_USER", "jörg@example.org", "PAM_SERVICE", "smtp"), "", false,
			Env{Mode: ModeAuth, User: "jörg@example.org", Service: "smtp"}, nil},
		{"--account on an auth line never skips the password", env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "imap"), "", true, Env{}, ErrSetup},
		{"not run by pam_exec", env("PAM_USER", "alice", "PAM_SERVICE", "imap"), "", false, Env{}, ErrSetup},
		{"password line", env("PAM_TYPE", "password", "PAM_USER", "alice", "PAM_SERVICE", "passwd"), "", false, Env{}, ErrSetup},
		{"session line", env("PAM_TYPE", "open_session", "PAM_USER", "alice", "PAM_SERVICE", "imap"), "", false, Env{}, ErrSetup},
		{"no service", env("PAM_TYPE", "auth", "PAM_USER", "alice"), "", false, Env{}, ErrSetup},
		{"bad service", env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "im ap"), "", false, Env{}, ErrSetup},
		{"empty user", env("PAM_TYPE", "auth", "PAM_SERVICE", "imap"), "", false, Env{}, ErrInvalid},
		{"user with a newline (a forged log line)", env("PAM_TYPE", "auth", "PAM_USER", "alice\nresult=accept", "PAM_SERVICE", "imap"), "", false, Env{}, ErrInvalid},
		{"user too long", env("PAM_TYPE", "auth", "PAM_USER", strings.Repeat("u", MaxUser+1), "PAM_SERVICE", "imap"), "", false, Env{}, ErrInvalid},
		{"rhost with a space", env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "imap", "PAM_RHOST", "a b"), "", false, Env{}, ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEnv(tt.getenv, tt.service, tt.account)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestEnvRequestSplitsRealm(t *testing.T) {
	e := Env{Mode: ModeAuth, User: "alice@example.org", Service: "imap", RHost: "192.0.2.7"}
	want := auth.Request{User: "alice", Password: "pw", Service: "imap", Realm: "example.org", ClientAddr: "192.0.2.7"}
	if got := e.Request("pw"); got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

// decider records what it was asked and answers with fixed verdicts, so
// the exit-code mapping is tested apart from LDAP (the LDAP side runs
// against real slapd and real PAM in cmd/mailauthd).
type decider struct {
	auth, lookup auth.Verdict
	calls        []string
	last         auth.Request
	block        chan struct{} // if set, Authenticate waits for it, ignoring ctx
}

func (d *decider) Authenticate(_ context.Context, r auth.Request) auth.Verdict {
	d.calls = append(d.calls, "auth")
	d.last = r
	if d.block != nil {
		<-d.block
	}
	return d.auth
}

func (d *decider) Lookup(_ context.Context, r auth.Request) auth.Verdict {
	d.calls = append(d.calls, "lookup")
	d.last = r
	return d.lookup
}

func TestDecideExitCodes(t *testing.T) {
	ok := auth.Accepted("uid=alice,ou=people,dc=example,dc=org", nil)
	tests := []struct {
		name      string
		mode      Mode
		password  string
		d         decider
		wantExit  int
		wantCalls []string
	}{
		{"accepted", ModeAuth, "pw", decider{auth: ok}, ExitOK, []string{"auth"}},
		{"wrong password", ModeAuth, "bad", decider{auth: auth.Rejected(auth.CauseWrongPassword, "invalid credentials")}, ExitReject, []string{"auth"}},
		{"unknown user", ModeAuth, "pw", decider{auth: auth.Rejected(auth.CauseUnknownUser, "no such user")}, ExitReject, []string{"auth"}},
		{"host rule", ModeAuth, "pw", decider{auth: auth.Rejected(auth.CausePolicy, "host not allowed")}, ExitReject, []string{"auth"}},
		{"throttled", ModeAuth, "pw", decider{auth: auth.Rejected(auth.CauseThrottled, "too many failures")}, ExitReject, []string{"auth"}},
		{"LDAP down", ModeAuth, "pw", decider{auth: auth.TempFailed(auth.CauseUnavailable, "ldap unreachable")}, ExitTempFail, []string{"auth"}},
		{"empty password never asked", ModeAuth, "", decider{auth: ok}, ExitReject, nil},
		{"account: rules allow", ModeAccount, "", decider{lookup: ok}, ExitOK, []string{"lookup"}},
		{"account: unknown user", ModeAccount, "", decider{lookup: auth.Rejected(auth.CauseUnknownUser, "no such user")}, ExitReject, []string{"lookup"}},
		{"account: service rule", ModeAccount, "", decider{lookup: auth.Rejected(auth.CausePolicy, "service not allowed")}, ExitReject, []string{"lookup"}},
		{"account: LDAP down", ModeAccount, "", decider{lookup: auth.TempFailed(auth.CauseUnavailable, "timeout")}, ExitTempFail, []string{"lookup"}},
		{"account never passes a password", ModeAccount, "stray", decider{lookup: ok}, ExitOK, []string{"lookup"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.d
			res := Decide(context.Background(), Env{Mode: tt.mode, User: "alice", Service: "imap"}, tt.password, &d)
			if res.Exit != tt.wantExit {
				t.Fatalf("exit = %d, want %d (verdict %+v)", res.Exit, tt.wantExit, res.Verdict)
			}
			if !reflect.DeepEqual(d.calls, tt.wantCalls) || res.Asked != (len(tt.wantCalls) > 0) {
				t.Fatalf("calls = %v (asked %v), want %v", d.calls, res.Asked, tt.wantCalls)
			}
			if tt.mode == ModeAccount && d.last.Password != "" {
				t.Fatal("account line passed a password to the decider")
			}
			if res.Request.Password != "" {
				t.Fatal("Result.Request keeps the password")
			}
		})
	}
}

func TestRunMain(t *testing.T) {
	ok := auth.Accepted("uid=alice,ou=people,dc=example,dc=org", nil)
	pw := "s3cret pässword"
	tests := []struct {
		name     string
		getenv   func(string) string
		stdin    string
		account  bool
		d        decider
		wantExit int
		wantLog  []string
	}{
		{"accepted", env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "imap", "PAM_RHOST", "192.0.2.7"), pw, false, decider{auth: ok}, ExitOK,
			[]string{"level=INFO msg=pam type=auth user=alice service=imap rhost=192.0.2.7 result=accept exit=0 reason=ok", "via=daemon"}},
		{"refused", env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "imap"), pw, false, decider{auth: auth.Rejected(auth.CauseWrongPassword, "invalid credentials")}, ExitReject,
			[]string{"result=reject exit=1", "cause=wrong_password"}},
		{"LDAP down", env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "imap"), pw, false, decider{auth: auth.TempFailed(auth.CauseUnavailable, "ldap down")}, ExitTempFail,
			[]string{"level=WARN", "result=tempfail exit=111"}},
		{"account", env("PAM_TYPE", "account", "PAM_USER", "alice", "PAM_SERVICE", "ftp"), "", true, decider{lookup: ok}, ExitOK,
			[]string{"type=account user=alice service=ftp", "result=accept exit=0"}},
		{"cut password refused", env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "imap"), strings.Repeat("x", 600), false, decider{auth: ok}, ExitReject,
			[]string{"result=reject exit=1", "511 bytes"}},
		{"forged user", env("PAM_TYPE", "auth", "PAM_USER", "x\nlevel=INFO result=accept", "PAM_SERVICE", "imap"), pw, false, decider{auth: ok}, ExitReject,
			[]string{"result=reject exit=1", "cause=invalid"}},
		{"--account on auth", env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "imap"), pw, true, decider{auth: ok}, ExitTempFail,
			[]string{"level=ERROR", "--account run with PAM_TYPE=auth"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var log bytes.Buffer
			d := tt.d
			r := &Run{Stdin: strings.NewReader(tt.stdin), Getenv: tt.getenv, Exit: func(int) { t.Error("watchdog fired") },
				Timeout: 5 * time.Second, Account: tt.account, Logger: slog.New(slog.NewTextHandler(&log, nil)), Decider: &d,
				Via: func() (string, string) { return "daemon", "" }}
			if got := r.Main(); got != tt.wantExit {
				t.Fatalf("exit %d, want %d; log %s", got, tt.wantExit, log.String())
			}
			if n := strings.Count(log.String(), "\n"); n != 1 {
				t.Errorf("%d log lines, want exactly 1: %s", n, log.String())
			}
			for _, s := range tt.wantLog {
				if !strings.Contains(log.String(), s) {
					t.Errorf("log lacks %q: %s", s, log.String())
				}
			}
			if strings.Contains(log.String(), pw) || strings.Contains(log.String(), "xxxxxxxx") {
				t.Errorf("password in the log: %s", log.String())
			}
		})
	}
}

// TestRunWatchdog: a decision that ignores its deadline still ends the
// run, as a temporary failure, shortly after pam.timeout.
func TestRunWatchdog(t *testing.T) {
	d := &decider{auth: auth.Accepted("", nil), block: make(chan struct{})}
	exited := make(chan int, 1)
	var log bytes.Buffer
	r := &Run{Stdin: strings.NewReader("pw"), Logger: slog.New(slog.NewTextHandler(&lockedWriter{w: &log}, nil)), Getenv: env("PAM_TYPE", "auth", "PAM_USER", "alice", "PAM_SERVICE", "imap"),
		Exit: func(c int) { exited <- c; close(d.block) }, Timeout: 50 * time.Millisecond, Decider: d}
	go r.Main()
	select {
	case c := <-exited:
		if c != ExitTempFail {
			t.Fatalf("watchdog exit %d, want %d", c, ExitTempFail)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no exit 20s after a 50ms timeout")
	}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func FuzzReadAuthtok(f *testing.F) {
	f.Add([]byte("secret"))
	f.Add([]byte(""))
	f.Add([]byte("a\x00b"))
	f.Add([]byte(" correct horse ✓ bätterie\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pw, err := ReadAuthtok(bytes.NewReader(b))
		if err != nil {
			if len(b) < MaxAuthtok && bytes.IndexByte(b, 0) < 0 {
				t.Fatalf("refused a password pam_exec could have sent: %q: %v", b, err)
			}
			return
		}
		if pw != string(b) {
			t.Fatalf("got %q from %q: not exact", pw, b)
		}
	})
}

func FuzzParseEnv(f *testing.F) {
	f.Add("auth", "alice@example.org", "imap", "192.0.2.7")
	f.Add("account", "alice", "ftp", "")
	f.Add("auth", "a\nb", "x y", "h\x00")
	f.Fuzz(func(t *testing.T, typ, user, service, rhost string) {
		e, err := ParseEnv(env("PAM_TYPE", typ, "PAM_USER", user, "PAM_SERVICE", service, "PAM_RHOST", rhost), "", false)
		if err != nil {
			return
		}
		if e.User == "" || len(e.User) > MaxUser || strings.ContainsAny(e.User+e.RHost+e.Service, "\x00\n\r\t") || strings.Contains(e.RHost, " ") {
			t.Fatalf("accepted %+v", e)
		}
		if typ != "auth" && typ != "account" {
			t.Fatalf("accepted PAM_TYPE %q", typ)
		}
	})
}

// TestIsDevNull: pam_exec without log= gives the program /dev/null as
// stderr; that is when --syslog auto logs to syslog.
func TestIsDevNull(t *testing.T) {
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	file, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, tt := range []struct {
		f    *os.File
		want bool
	}{{null, true}, {file, false}, {w, false}} {
		if got := IsDevNull(tt.f); got != tt.want {
			t.Errorf("IsDevNull(%s) = %v, want %v", tt.f.Name(), got, tt.want)
		}
	}
}
