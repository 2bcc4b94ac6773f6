package control

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// backend answers by user name, so each test case picks its verdict; it
// records passwords it was given to check lookups never carry one.
type backend struct {
	mu       sync.Mutex
	verdicts map[string]auth.Verdict
	seen     []auth.Request
	block    chan struct{} // if set, decisions wait on it or on ctx
	flushed  int
}

func (b *backend) decide(ctx context.Context, op string, r auth.Request) auth.Verdict {
	b.mu.Lock()
	b.seen = append(b.seen, r)
	v, ok := b.verdicts[op+":"+r.User]
	block := b.block
	b.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return auth.TempFailed(auth.CauseUnavailable, "backend: "+ctx.Err().Error())
		}
	}
	if !ok {
		return auth.Rejected(auth.CauseUnknownUser, "no such user")
	}
	return v
}

func (b *backend) Authenticate(ctx context.Context, r auth.Request) auth.Verdict {
	return b.decide(ctx, "auth", r)
}
func (b *backend) Lookup(ctx context.Context, r auth.Request) auth.Verdict {
	return b.decide(ctx, "lookup", r)
}

// Flush counts calls; a backend without a cache (no verdicts for "cache")
// reports none.
func (b *backend) Flush() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.flushed++
	_, cached := b.verdicts["cache"]
	return cached
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func startServer(t *testing.T, s *Server) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if s.Logger == nil {
		s.Logger = quietLogger()
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return path
}

func TestRoundTrip(t *testing.T) {
	accepted := auth.Accepted("uid=alice,ou=people,dc=example,dc=org", nil)
	accepted.Fields = []auth.Field{
		{Key: "user", Value: "alice"},
		{Key: "userdb_home", Value: "/srv/mail/alice"},
		{Key: "host", Value: "imap2\texample"},
		{Key: "empty", Value: ""},
	}
	b := &backend{verdicts: map[string]auth.Verdict{
		"auth:alice":    accepted,
		"lookup:alice":  accepted,
		"auth:bad":      auth.Rejected(auth.CauseWrongPassword, "invalid credentials"),
		"auth:down":     auth.TempFailed(auth.CauseUnavailable, "ldap unreachable"),
		"lookup:policy": auth.Rejected(auth.CausePolicy, "host not allowed"),
	}}
	path := startServer(t, &Server{Backend: b})
	c := &Client{Path: path, Timeout: 5 * time.Second}
	ctx := context.Background()

	tests := []struct {
		name string
		op   string
		req  auth.Request
		want auth.Verdict
	}{
		{"accept", OpAuth, auth.Request{User: "alice", Password: "pw", Service: "imap", Realm: "example.org", ClientAddr: "192.0.2.7"}, accepted},
		{"lookup", OpLookup, auth.Request{User: "alice"}, accepted},
		{"reject", OpAuth, auth.Request{User: "bad", Password: "x"}, auth.Rejected(auth.CauseWrongPassword, "invalid credentials")},
		{"tempfail", OpAuth, auth.Request{User: "down", Password: "x"}, auth.TempFailed(auth.CauseUnavailable, "ldap unreachable")},
		{"unknown", OpLookup, auth.Request{User: "nobody"}, auth.Rejected(auth.CauseUnknownUser, "no such user")},
		{"policy", OpLookup, auth.Request{User: "policy"}, auth.Rejected(auth.CausePolicy, "host not allowed")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got auth.Verdict
			var err error
			if tt.op == OpAuth {
				got, err = c.Authenticate(ctx, tt.req)
			} else {
				got, err = c.Lookup(ctx, tt.req)
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if first := b.seen[0]; first != tests[0].req {
		t.Fatalf("server saw %+v, client sent %+v", first, tests[0].req)
	}
	for _, r := range b.seen {
		if r.User == "alice" && r.Password != "" && r != tests[0].req {
			t.Fatalf("lookup carried a password: %+v", r)
		}
	}
}

func TestFlush(t *testing.T) {
	b := &backend{}
	path := startServer(t, &Server{Backend: b})
	c := &Client{Path: path}
	if err := c.Flush(context.Background()); err == nil || !strings.Contains(err.Error(), "no cache") {
		t.Fatalf("flush without a cache: err = %v", err)
	}
	fb := &backend{verdicts: map[string]auth.Verdict{"cache": {}}}
	path = startServer(t, &Server{Backend: fb})
	c = &Client{Path: path}
	if err := c.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if fb.flushed != 1 {
		t.Fatalf("Flush called %d times", fb.flushed)
	}
}

func TestNotRunning(t *testing.T) {
	dir := t.TempDir()
	// No socket at all.
	c := &Client{Path: filepath.Join(dir, "missing")}
	v, err := c.Authenticate(context.Background(), auth.Request{User: "a", Password: "b"})
	if !errors.Is(err, ErrNotRunning) || v.Outcome != auth.TempFail {
		t.Fatalf("missing socket: %v, %+v", err, v)
	}
	// A stale socket file: the daemon died without removing it.
	path := filepath.Join(dir, "stale")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	c = &Client{Path: path}
	if _, err := c.Lookup(context.Background(), auth.Request{User: "a"}); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("stale socket: err = %v, want ErrNotRunning", err)
	}
}

// A daemon that is there but does not answer, or answers garbage, must not
// count as "not running": the caller would decide again and might differ.
func TestDaemonThereButFailingIsNotFallback(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hung")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns []net.Conn
	var mu sync.Mutex
	defer func() {
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	garbage := make(chan bool, 4)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			if <-garbage {
				c.Write([]byte("\x00\x02NO"))
				c.Close()
			}
		}
	}()

	garbage <- false
	c := &Client{Path: path, Timeout: 200 * time.Millisecond}
	start := time.Now()
	v, err := c.Authenticate(context.Background(), auth.Request{User: "a", Password: "b"})
	if err == nil || errors.Is(err, ErrNotRunning) || v.Outcome != auth.TempFail {
		t.Fatalf("hung daemon: err = %v, verdict %+v; want a non-fallback error and TempFail", err, v)
	}
	if time.Since(start) > 3*time.Second {
		t.Fatalf("client waited %v past its timeout", time.Since(start))
	}

	garbage <- true
	v, err = c.Lookup(context.Background(), auth.Request{User: "a"})
	if err == nil || errors.Is(err, ErrNotRunning) || v.Outcome != auth.TempFail {
		t.Fatalf("garbage reply: err = %v, verdict %+v", err, v)
	}
}

func TestBusyAnswersTempFail(t *testing.T) {
	b := &backend{block: make(chan struct{})}
	path := startServer(t, &Server{Backend: b, MaxConnections: 1})
	c := &Client{Path: path, Timeout: 5 * time.Second}
	first := make(chan auth.Verdict, 1)
	go func() {
		v, _ := c.Authenticate(context.Background(), auth.Request{User: "x", Password: "y"})
		first <- v
	}()
	// Wait until the first request holds the only slot.
	for i := 0; ; i++ {
		b.mu.Lock()
		n := len(b.seen)
		b.mu.Unlock()
		if n == 1 {
			break
		}
		if i > 500 {
			t.Fatal("first request never reached the backend")
		}
		time.Sleep(10 * time.Millisecond)
	}
	v, err := c.Authenticate(context.Background(), auth.Request{User: "x", Password: "y"})
	if err != nil || v.Outcome != auth.TempFail || !strings.Contains(v.Reason, "busy") {
		t.Fatalf("second request: %+v, %v; want tempfail busy", v, err)
	}
	close(b.block)
	if v := <-first; v.Outcome != auth.Reject {
		t.Fatalf("first request: %+v", v)
	}
}

func TestRequestTimeoutBoundsBackend(t *testing.T) {
	b := &backend{block: make(chan struct{})}
	defer close(b.block)
	path := startServer(t, &Server{Backend: b, RequestTimeout: 100 * time.Millisecond})
	c := &Client{Path: path, Timeout: 5 * time.Second}
	v, err := c.Authenticate(context.Background(), auth.Request{User: "x", Password: "y"})
	if err != nil || v.Outcome != auth.TempFail {
		t.Fatalf("got %+v, %v; want the backend's tempfail after RequestTimeout", v, err)
	}
}

func TestBadRequestsAreDropped(t *testing.T) {
	b := &backend{}
	path := startServer(t, &Server{Backend: b, MaxFieldSize: 16, IOTimeout: 200 * time.Millisecond})
	send := func(msg []byte) []byte {
		t.Helper()
		conn, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		conn.Write(msg)
		out, _ := io.ReadAll(conn)
		return out
	}
	badOp, _ := appendRequest(nil, "delete", auth.Request{User: "u"})
	saslauthd := []byte("\x00\x05alice\x00\x02pw\x00\x04imap\x00\x00")
	for name, msg := range map[string][]byte{
		"unknown op": badOp, "saslauthd request": saslauthd,
		"truncated":          []byte("\x00\x04MAC2\x00\x04au"),
		"protocol version 1": []byte("\x00\x04MAC1\x00\x04auth\x00\x01u\x00\x01p\x00\x00\x00\x00\x00\x00"),
		"magic too long":     []byte("\xff\xffMAC2"),
	} {
		if out := send(msg); len(out) != 0 {
			t.Errorf("%s: got reply %q, want the connection closed", name, out)
		}
	}
	// Our protocol with a field over MaxFieldSize (a very long password):
	// a refusal, as the saslauthd socket gives, not a temporary failure.
	for name, req := range map[string]auth.Request{
		"user too long":     {User: strings.Repeat("u", 17), Password: "p"},
		"password too long": {User: "u", Password: strings.Repeat("p", 5000)},
	} {
		msg, _ := appendRequest(nil, OpAuth, req)
		out := send(msg)
		outcome, v, err := readVerdict(bytes.NewReader(out))
		if err != nil || outcome != "reject" || v.Cause != auth.CauseInvalid {
			t.Errorf("%s: reply %q (%v), want reject/invalid", name, out, err)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.seen) != 0 {
		t.Fatalf("backend saw %d bad requests", len(b.seen))
	}
}

func TestShutdownWaitsThenCancels(t *testing.T) {
	b := &backend{block: make(chan struct{})}
	s := &Server{Backend: b, Logger: quietLogger()}
	path := filepath.Join(t.TempDir(), "control")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	got := make(chan auth.Verdict, 1)
	go func() {
		v, _ := (&Client{Path: path}).Authenticate(context.Background(), auth.Request{User: "x", Password: "y"})
		got <- v
	}()
	for i := 0; ; i++ {
		b.mu.Lock()
		n := len(b.seen)
		b.mu.Unlock()
		if n == 1 {
			break
		}
		if i > 500 {
			t.Fatal("request never reached the backend")
		}
		time.Sleep(10 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want deadline exceeded with a request in flight", err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve = %v", err)
	}
	if v := <-got; v.Outcome != auth.TempFail {
		t.Fatalf("in-flight request got %+v, want TempFail", v)
	}
	if _, err := (&Client{Path: path}).Lookup(context.Background(), auth.Request{User: "x"}); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("after shutdown: %v, want ErrNotRunning", err)
	}
}

func FuzzReadVerdict(f *testing.F) {
	v := auth.Accepted("dn", nil)
	v.Fields = []auth.Field{{Key: "user", Value: "a"}, {Key: "proxy", Value: "y"}}
	good, _ := appendVerdict(nil, "accept", v)
	f.Add(good)
	f.Add([]byte("\x00\x04MAC2\x00\x06reject\x00\x0cunknown_user"))
	f.Fuzz(func(t *testing.T, b []byte) {
		outcome, v, err := readVerdict(io.LimitReader(bytes.NewReader(b), MaxReplySize))
		if err != nil {
			return
		}
		// Whatever decodes must encode back to the same bytes prefix.
		again, err := appendVerdict(nil, outcome, v)
		if err != nil {
			t.Fatalf("decoded verdict does not re-encode: %v", err)
		}
		if !bytes.HasPrefix(b, again) {
			t.Fatalf("re-encoding differs:\n%q\n%q", b, again)
		}
	})
}

func FuzzReadRequest(f *testing.F) {
	good, _ := appendRequest(nil, OpAuth, auth.Request{User: "alice", Password: "pw", Service: "imap"})
	f.Add(good)
	kept, _ := appendRequestMagic(nil, magicKeep, OpLookup, auth.Request{User: strings.Repeat("u", 40), Service: "imap", Realm: "example.org"})
	f.Add(kept)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := readRequest(bufio.NewReaderSize(bytes.NewReader(b), 16), 64)
		if err != nil {
			return
		}
		m := magic
		if r.Keep {
			m = magicKeep
		}
		again, err := appendRequestMagic(nil, m, r.Op, r.Req)
		if err != nil || !bytes.HasPrefix(b, again) {
			t.Fatalf("request %q re-encodes to %q (%v)", b, again, err)
		}
	})
}

// TestDecisionLog: one line per decision, with what the helper passed
// (the client address Dovecot saw) and never the password.
func TestDecisionLog(t *testing.T) {
	var logBuf bytes.Buffer
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return logBuf.Write(p) })
	b := &backend{verdicts: map[string]auth.Verdict{"auth:alice": auth.Accepted("uid=alice", nil)}}
	path := startServer(t, &Server{Backend: b, Logger: slog.New(slog.NewTextHandler(w, nil))})
	c := &Client{Path: path, Timeout: 3 * time.Second}
	ctx := context.Background()
	c.Authenticate(ctx, auth.Request{User: "alice", Password: "s3cret-pw", Service: "imap", ClientAddr: "192.0.2.7"})
	c.Lookup(ctx, auth.Request{User: "bob", Realm: "example.org", Service: "lmtp"})
	deadline := time.Now().Add(3 * time.Second)
	for {
		mu.Lock()
		got := logBuf.String()
		mu.Unlock()
		want := []string{
			"msg=\"control: decision\" user=alice realm=\"\" service=imap client=192.0.2.7 outcome=accept cause=\"\" reason=ok op=auth",
			"msg=\"control: decision\" user=bob realm=example.org service=lmtp client=\"\" outcome=reject cause=unknown_user reason=\"no such user\" op=lookup",
		}
		ok := true
		for _, s := range want {
			ok = ok && strings.Contains(got, s)
		}
		if ok {
			if strings.Contains(got, "s3cret-pw") {
				t.Fatalf("password in the log:\n%s", got)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("log lacks %q:\n%s", want, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// A decision that panics costs that request only: it is answered
// tempfail, the daemon keeps serving, and the password in the panic value
// never reaches the log.
func TestPanicIsATempFail(t *testing.T) {
	var logBuf bytes.Buffer
	var mu sync.Mutex
	w := writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return logBuf.Write(p) })
	good := &backend{verdicts: map[string]auth.Verdict{"auth:alice": auth.Accepted("uid=alice", nil)}}
	b := panicky{good}
	path := startServer(t, &Server{Backend: b, Logger: slog.New(slog.NewTextHandler(w, nil))})
	c := &Client{Path: path, Timeout: 3 * time.Second}
	ctx := context.Background()
	for _, op := range []string{"auth", "lookup"} {
		req := auth.Request{User: "panic", Password: "s3cret-pw", Service: "imap"}
		var v auth.Verdict
		var err error
		if op == "auth" {
			v, err = c.Authenticate(ctx, req)
		} else {
			v, err = c.Lookup(ctx, req)
		}
		if err != nil || v.Outcome != auth.TempFail || v.Cause != auth.CauseInternal {
			t.Errorf("%s of a panicking decision: %v %+v, want tempfail internal", op, err, v)
		}
	}
	if v, err := c.Authenticate(ctx, auth.Request{User: "alice", Password: "pw", Service: "imap"}); err != nil || v.Outcome != auth.Accept {
		t.Fatalf("after the panics: %v %+v", err, v)
	}
	mu.Lock()
	got := logBuf.String()
	mu.Unlock()
	if !strings.Contains(got, "decision panicked") || !strings.Contains(got, "boom [password]") {
		t.Errorf("panic not logged:\n%s", got)
	}
	if strings.Contains(got, "s3cret-pw") {
		t.Errorf("password in the log:\n%s", got)
	}
}

// panicky panics for user "panic", quoting the password.
type panicky struct{ *backend }

func (p panicky) Authenticate(ctx context.Context, r auth.Request) auth.Verdict {
	if r.User == "panic" {
		panic("boom " + r.Password)
	}
	return p.backend.Authenticate(ctx, r)
}

func (p panicky) Lookup(ctx context.Context, r auth.Request) auth.Verdict {
	if r.User == "panic" {
		panic("boom " + r.Password)
	}
	return p.backend.Lookup(ctx, r)
}
