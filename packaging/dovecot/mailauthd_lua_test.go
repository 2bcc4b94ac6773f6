// Package dovecot holds no Go code: its tests run the Dovecot Lua script
// mailauthd.lua under plain lua5.4 (Debian packages lua5.4 and lua-socket)
// against a real control.Server with a fake decision, and against sockets
// that answer garbage or nothing. The same script under a real Dovecot 2.3
// and 2.4 is tested in e2e/dovecot.
package dovecot

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/control"
	"github.com/mailauthd/mailauthd/internal/peertest"
)

// Dovecot's result codes (src/auth/passdb.h, userdb.h).
const (
	passdbInternal     = -1
	passdbSchemeNA     = -2
	passdbUserUnknown  = -3
	passdbMismatch     = 0
	passdbOK           = 1
	userdbInternal     = -1
	userdbUserUnknown  = -2
	userdbOK           = 1
	hookVerify         = "auth_password_verify"
	hookPassdbLookup   = "auth_passdb_lookup"
	hookUserdbLookup   = "auth_userdb_lookup"
	utf8Password       = "Grüße aus Köln 🌧 mit Leerzeichen"
	testTimeoutSeconds = "1"
)

func lua(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs lua5.4: skipped in -short mode")
	}
	p := peertest.NeedFile(t, "lua5.4")
	if err := exec.Command(p, "-e", `require("socket.unix")`).Run(); err != nil {
		peertest.Missing(t, "luasocket for Lua 5.4 not installed (lua-socket; scripts/install-deps.sh installs it)")
	}
	return p
}

// shortDir is a temp dir with a short path (Unix socket paths are limited
// to 108 bytes).
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "lua")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// got is what the driver printed.
type got struct {
	code   int
	kind   string // "table", "string", "nil"
	fields map[string]string
	text   string
	log    string
	took   time.Duration
}

func (g got) String() string {
	keys := make([]string, 0, len(g.fields))
	for k := range g.fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	fmt.Fprintf(&b, "%d %s", g.code, g.kind)
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%s", k, g.fields[k])
	}
	if g.text != "" {
		fmt.Fprintf(&b, " %q", g.text)
	}
	return b.String()
}

// call runs one hook of the script through testdata/driver.lua.
func call(t *testing.T, env []string, hook, user, password, service, rip, mech string) got {
	t.Helper()
	args := []string{filepath.Join("testdata", "driver.lua"), "mailauthd.lua", hook, user, password, service, rip}
	if mech != "" {
		args = append(args, mech)
	}
	cmd := exec.Command(lua(t), args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("lua5.4 %s: %v\n%s%s", hook, err, stdout.String(), stderr.String())
	}
	g := got{fields: map[string]string{}, log: stderr.String(), took: time.Since(start)}
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		word, rest, _ := strings.Cut(line, " ")
		switch word {
		case "result":
			fmt.Sscan(rest, &g.code)
		case "table":
			g.kind = "table"
			k, v, _ := strings.Cut(rest, "=")
			g.fields[k] = v
		case "string":
			g.kind, g.text = "string", rest
		case "nil":
			g.kind = "nil"
		}
	}
	return g
}

// fakeBackend decides by the user's name and records every request.
type fakeBackend struct {
	mu   sync.Mutex
	reqs []auth.Request
	ops  []string
}

func (b *fakeBackend) verdict(op string, req auth.Request) auth.Verdict {
	b.mu.Lock()
	b.reqs = append(b.reqs, req)
	b.ops = append(b.ops, op)
	b.mu.Unlock()
	switch req.User {
	case "ok", "utf8":
		user := req.User
		if req.Realm != "" {
			user += "@" + req.Realm
		}
		v := auth.Accepted("uid="+req.User+",ou=people,dc=example,dc=org", nil)
		v.Fields = []auth.Field{{Key: "user", Value: user}, {Key: "host", Value: "192.0.2.1"},
			{Key: "proxy_maybe", Value: "y"}, {Key: "userdb_home", Value: "/var/vmail/" + req.User},
			{Key: "userdb_uid", Value: "5000"}, {Key: "userdb_mail", Value: "maildir:~/Maildir"},
			{Key: "value with\ttab", Value: "a\tb c"}}
		return v
	case "wrong":
		return auth.Rejected(auth.CauseWrongPassword, "wrong password")
	case "nobody":
		return auth.Rejected(auth.CauseUnknownUser, "unknown user")
	case "policy":
		return auth.Rejected(auth.CausePolicy, "host not allowed: denied by !mail.example.org")
	case "down":
		return auth.TempFailed(auth.CauseUnavailable, "ldap: connection failed")
	}
	return auth.Rejected(auth.CauseUnknownUser, "unknown user")
}

func (b *fakeBackend) Authenticate(_ context.Context, req auth.Request) auth.Verdict {
	v := b.verdict("auth", req)
	if v.Outcome == auth.Accept && req.Password != "pw" && req.Password != utf8Password {
		return auth.Rejected(auth.CauseWrongPassword, "wrong password")
	}
	return v
}

func (b *fakeBackend) Lookup(_ context.Context, req auth.Request) auth.Verdict {
	return b.verdict("lookup", req)
}

func (b *fakeBackend) Flush() bool { return false }

func (b *fakeBackend) last() (string, auth.Request) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.reqs) == 0 {
		return "", auth.Request{}
	}
	return b.ops[len(b.ops)-1], b.reqs[len(b.reqs)-1]
}

func (b *fakeBackend) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.reqs)
}

// startServer serves a control.Server with the fake backend.
func startServer(t testing.TB) (string, *fakeBackend) {
	t.Helper()
	sock := filepath.Join(shortDir(t), "control")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBackend{}
	s := &control.Server{Backend: b, IOTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)}
	go s.Serve(l)
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return sock, b
}

// TestAgainstControlServer: the script's requests and the answers Dovecot
// gets, through the daemon's real control.Server.
func TestAgainstControlServer(t *testing.T) {
	sock, backend := startServer(t)
	env := []string{"MAILAUTHD_SOCKET=" + sock, "MAILAUTHD_TIMEOUT=" + testTimeoutSeconds}
	allFields := map[string]string{"user": "ok", "host": "192.0.2.1", "proxy_maybe": "y", "userdb_home": "/var/vmail/ok",
		"userdb_uid": "5000", "userdb_mail": "maildir:~/Maildir", "value with\ttab": "a\tb c"}
	lookupFields := map[string]string{"nopassword": "y"}
	for k, v := range allFields {
		lookupFields[k] = v
	}
	for _, c := range []struct {
		name                       string
		hook, user, password, mech string
		wantCode                   int
		wantKind                   string
		wantFields                 map[string]string // exactly, when not nil
		wantLog                    string
		wantNoRequest              bool
	}{
		{"accepted: every field the daemon sent, unchanged", hookVerify, "ok", "pw", "", passdbOK, "table", allFields, "", false},
		{"wrong password", hookVerify, "ok", "nope", "", passdbMismatch, "string", nil, "", false},
		{"unknown user", hookVerify, "nobody", "pw", "", passdbUserUnknown, "string", nil, "", false},
		{"refused by policy: a mismatch, the reason in the log", hookVerify, "policy", "pw", "", passdbMismatch, "string", nil,
			"log mailauthd: refused (policy): host not allowed: denied by !mail.example.org", false},
		{"LDAP down: internal failure", hookVerify, "down", "pw", "", passdbInternal, "string", nil, "", false},
		{"empty password: the daemon refuses it", hookVerify, "ok", "", "", passdbMismatch, "string", nil, "", false},
		{"password longer than the daemon's max_field_size: refused by the server", hookVerify, "ok", strings.Repeat("p", 2000), "", passdbMismatch, "string", nil, "", true},
		{"password longer than a counted string: refused without asking", hookVerify, "ok", strings.Repeat("p", 70000), "", passdbMismatch, "string", nil, "", true},
		{"passdb lookup: the fields and nopassword", hookPassdbLookup, "ok", "", "", passdbOK, "table", lookupFields, "", false},
		{"passdb lookup, unknown user", hookPassdbLookup, "nobody", "", "", passdbUserUnknown, "string", nil, "", false},
		{"passdb lookup, refused by policy: unknown", hookPassdbLookup, "policy", "", "", passdbUserUnknown, "string", nil, "log mailauthd: refused (policy)", false},
		{"passdb lookup, LDAP down", hookPassdbLookup, "down", "", "", passdbInternal, "string", nil, "", false},
		{"credentials lookup for CRAM-MD5: no hash to give", hookPassdbLookup, "ok", "", "CRAM-MD5", passdbSchemeNA, "string", nil, "needs a password hash", true},
		{"userdb: userdb_* without the prefix, user, nothing else", hookUserdbLookup, "ok", "", "", userdbOK, "table",
			map[string]string{"user": "ok", "home": "/var/vmail/ok", "uid": "5000", "mail": "maildir:~/Maildir"}, "", false},
		{"userdb, unknown user", hookUserdbLookup, "nobody", "", "", userdbUserUnknown, "string", nil, "", false},
		{"userdb, refused by policy", hookUserdbLookup, "policy", "", "", userdbUserUnknown, "string", nil, "", false},
		{"userdb, LDAP down", hookUserdbLookup, "down", "", "", userdbInternal, "string", nil, "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := backend.count()
			g := call(t, env, c.hook, c.user, c.password, "imap", "192.0.2.7", c.mech)
			if g.code != c.wantCode || g.kind != c.wantKind {
				t.Fatalf("got %s, want %d %s\n%s", g, c.wantCode, c.wantKind, g.log)
			}
			if c.wantFields != nil && fmt.Sprint(g.fields) != fmt.Sprint(c.wantFields) {
				t.Errorf("fields %v, want %v", g.fields, c.wantFields)
			}
			if c.wantLog != "" && !strings.Contains(g.log, c.wantLog) {
				t.Errorf("log %q lacks %q", g.log, c.wantLog)
			}
			if c.password != "" && strings.Contains(g.log+g.text, c.password) {
				t.Errorf("the password is in what Dovecot gets: %q %q", g.log, g.text)
			}
			if asked := backend.count() > before; asked == c.wantNoRequest {
				t.Errorf("daemon asked: %v, want %v", asked, !c.wantNoRequest)
			}
		})
	}
}

// TestRequestOnTheWire: what the daemon receives from the script.
func TestRequestOnTheWire(t *testing.T) {
	sock, backend := startServer(t)
	env := []string{"MAILAUTHD_SOCKET=" + sock}
	for _, c := range []struct {
		name, hook, user, password, service, rip string
		wantOp                                   string
		want                                     auth.Request
	}{
		{"login", hookVerify, "utf8", utf8Password, "imap", "192.0.2.7", "auth",
			auth.Request{User: "utf8", Password: utf8Password, Service: "imap", ClientAddr: "192.0.2.7"}},
		{"user@domain split at the last @", hookVerify, "a@b@example.org", "pw", "pop3", "2001:db8::1", "auth",
			auth.Request{User: "a@b", Realm: "example.org", Password: "pw", Service: "pop3", ClientAddr: "2001:db8::1"}},
		{"no client address", hookVerify, "ok", "pw", "smtp", "", "auth",
			auth.Request{User: "ok", Password: "pw", Service: "smtp"}},
		{"trailing @ is no realm", hookVerify, "ok@", "pw", "imap", "", "auth",
			auth.Request{User: "ok@", Password: "pw", Service: "imap"}},
		{"passdb lookup: no password", hookPassdbLookup, "ok", "", "lmtp", "", "lookup", auth.Request{User: "ok", Service: "lmtp"}},
		{"userdb lookup", hookUserdbLookup, "ok@example.org", "", "doveadm", "", "lookup",
			auth.Request{User: "ok", Realm: "example.org", Service: "doveadm"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			call(t, env, c.hook, c.user, c.password, c.service, c.rip, "")
			op, req := backend.last()
			if op != c.wantOp || req != c.want {
				t.Errorf("daemon got %s %+v, want %s %+v", op, req, c.wantOp, c.want)
			}
		})
	}
}

// TestSettings: the socket path from the line in the script, the
// environment, and 2.4's lua_settings, the later winning.
func TestSettings(t *testing.T) {
	sock, _ := startServer(t)
	missing := filepath.Join(shortDir(t), "none")
	for _, c := range []struct {
		name string
		env  []string
		want int
	}{
		{"the script's default path, nothing listening there in a test", nil, passdbInternal},
		{"environment", []string{"MAILAUTHD_SOCKET=" + sock}, passdbOK},
		{"lua_settings win over the environment", []string{"MAILAUTHD_SOCKET=" + missing, "DRIVER_SETTINGS_SOCKET=" + sock}, passdbOK},
		{"lua_settings pointing nowhere", []string{"MAILAUTHD_SOCKET=" + sock, "DRIVER_SETTINGS_SOCKET=" + missing}, passdbInternal},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.env == nil {
				if _, err := os.Stat("/run/mailauthd/control"); err == nil {
					t.Skip("a mailauthd runs on this machine")
				}
			}
			g := call(t, c.env, hookVerify, "ok", "pw", "imap", "", "")
			if g.code != c.want {
				t.Errorf("got %s, want %d", g, c.want)
			}
		})
	}
	data, err := os.ReadFile("mailauthd.lua")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), "\nlocal socket_path = \"/run/mailauthd/control\"\n") {
		t.Error("mailauthd.lua lacks its one line with the default socket path")
	}
}

// rawServer accepts connections and answers each with reply (after
// reading the request), or with nothing when reply is nil: it holds the
// connection open until the test ends.
func rawServer(t *testing.T, reply []byte) string {
	t.Helper()
	sock := filepath.Join(shortDir(t), "raw")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { close(done); l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				buf := make([]byte, 4096)
				c.Read(buf)
				if reply == nil {
					<-done
					return
				}
				c.Write(reply)
			}()
		}
	}()
	return sock
}

func counted(items ...string) []byte {
	var b []byte
	for _, s := range items {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
		b = append(b, s...)
	}
	return b
}

// TestBrokenDaemon: anything but a well-formed reply in time is an
// internal (temporary) failure, never a mismatch, an unknown user or an
// accept.
func TestBrokenDaemon(t *testing.T) {
	big := make([]string, 0, 10)
	big = append(big, "MAC2", "accept", "", "", "", "4")
	for range 4 {
		big = append(big, strings.Repeat("k", 30000))
	}
	for _, c := range []struct {
		name  string
		reply []byte
	}{
		{"no answer at all (timeout)", nil},
		{"closed without a reply", []byte{}},
		{"wrong magic", counted("MAC1", "accept", "", "", "", "0")},
		{"a saslauthd answer", counted("OK")},
		{"unknown outcome", counted("MAC2", "maybe", "", "", "", "0")},
		{"count not decimal", counted("MAC2", "accept", "", "", "", "x")},
		{"count with a leading zero", counted("MAC2", "accept", "", "", "", "01")},
		{"negative count", counted("MAC2", "accept", "", "", "", "-1")},
		{"count over the limit", counted("MAC2", "accept", "", "", "", "129")},
		{"fewer fields than counted", counted("MAC2", "accept", "", "", "", "2", "user", "x")},
		{"a field cut short", append(counted("MAC2", "accept", "", "", "", "1", "user"), 0, 9, 'x')},
		{"a length cut short", append(counted("MAC2", "accept", "", "", ""), 0)},
		{"longer than 64 KiB", counted(big...)},
	} {
		t.Run(c.name, func(t *testing.T) {
			sock := rawServer(t, c.reply)
			for _, hook := range []string{hookVerify, hookPassdbLookup, hookUserdbLookup} {
				g := call(t, []string{"MAILAUTHD_SOCKET=" + sock, "MAILAUTHD_TIMEOUT=" + testTimeoutSeconds}, hook, "ok", "pw", "imap", "", "")
				if g.code != -1 || g.kind != "string" {
					t.Errorf("%s: got %s, want -1 (internal failure) with a string", hook, g)
				}
				if c.reply == nil && (g.took < 900*time.Millisecond || g.took > 5*time.Second) {
					t.Errorf("%s: gave up after %s, want about the 1 s timeout", hook, g.took)
				}
			}
		})
	}
}

// TestNoDaemon: no socket, a stale socket file, or one nobody may open:
// an internal failure at once.
func TestNoDaemon(t *testing.T) {
	dir := shortDir(t)
	stale := filepath.Join(dir, "stale")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	for _, sock := range []string{filepath.Join(dir, "missing"), stale} {
		g := call(t, []string{"MAILAUTHD_SOCKET=" + sock}, hookVerify, "ok", "pw", "imap", "", "")
		if g.code != passdbInternal || !strings.Contains(g.text, "connect "+sock) {
			t.Errorf("%s: got %s, want -1 naming the socket", sock, g)
		}
		if g.took > 3*time.Second {
			t.Errorf("%s: took %s", sock, g.took)
		}
	}
}

// BenchmarkScript: the Lua side's CPU per login (connect, send, receive,
// decode, and the full garbage collection Dovecot runs after each call)
// against a real control.Server, in one lua5.4 process.
func BenchmarkScript(b *testing.B) {
	sock, _ := startServer(b)
	cmd := exec.Command(lua(b), filepath.Join("testdata", "bench.lua"), "mailauthd.lua", strconv.Itoa(b.N))
	cmd.Env = append(os.Environ(), "MAILAUTHD_SOCKET="+sock)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("lua5.4: %v\n%s", err, out)
	}
	us, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64)
	if err != nil {
		b.Fatalf("lua5.4 printed %q", out)
	}
	b.ReportMetric(us, "lua-cpu-us/op")
}
