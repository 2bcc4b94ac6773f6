package saslauthd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// safeBuffer collects log output from many goroutines.
type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startServer serves srv on a fresh socket and shuts it down at cleanup.
func startServer(t *testing.T, srv *Server) (path string, logs *safeBuffer) {
	t.Helper()
	logs = &safeBuffer{}
	if srv.Logger == nil {
		srv.Logger = slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	path = filepath.Join(t.TempDir(), "mux")
	l, err := Listen(path, 0o666, "")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return path, logs
}

func ask(t *testing.T, path string, req auth.Request) (bool, string) {
	t.Helper()
	c := Client{Path: path, Timeout: 10 * time.Second}
	ok, text, err := c.Authenticate(context.Background(), req)
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	return ok, text
}

const secret = "hunter2-Secret!" // must never show up in logs

func TestServerDecisions(t *testing.T) {
	var mu sync.Mutex
	var got []auth.Request
	srv := &Server{ReplyReasons: true, Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
		mu.Lock()
		got = append(got, req)
		mu.Unlock()
		if _, ok := ctx.Deadline(); !ok {
			return auth.Rejected(auth.CausePolicy, "no deadline on context")
		}
		switch req.User {
		case "alice":
			return auth.Accepted("uid=alice", nil)
		case "down":
			return auth.TempFailed(auth.CauseUnavailable, "directory unavailable")
		case "quiet":
			return auth.Verdict{Outcome: auth.Reject}
		}
		return auth.Rejected(auth.CausePolicy, "invalid credentials")
	})}
	path, logs := startServer(t, srv)

	tests := []struct {
		name     string
		req      auth.Request
		wantOK   bool
		wantText string
		called   bool
		outcome  string
	}{
		{"accept", auth.Request{User: "alice", Password: secret, Service: "smtp", Realm: "example.org"}, true, "", true, "accept"},
		{"accept with client address", auth.Request{User: "alice", Password: secret, Service: "imap", ClientAddr: "192.0.2.7;40000"}, true, "", true, "accept"},
		{"reject", auth.Request{User: "mallory", Password: secret, Service: "smtp"}, false, "invalid credentials", true, "reject"},
		{"reject without reason", auth.Request{User: "quiet", Password: secret, Service: "smtp"}, false, "authentication failed", true, "reject"},
		{"tempfail", auth.Request{User: "down", Password: secret, Service: "smtp"}, false, "directory unavailable", true, "tempfail"},
		{"empty password never reaches the authenticator", auth.Request{User: "alice", Service: "smtp"}, false, "empty password", false, "reject"},
		{"empty login never reaches the authenticator", auth.Request{Password: secret, Service: "smtp"}, false, "empty login", false, "reject"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			got = nil
			mu.Unlock()
			ok, text := ask(t, path, tt.req)
			if ok != tt.wantOK || text != tt.wantText {
				t.Fatalf("answer = %v %q, want %v %q", ok, text, tt.wantOK, tt.wantText)
			}
			mu.Lock()
			defer mu.Unlock()
			if !tt.called {
				if len(got) != 0 {
					t.Fatal("authenticator was called")
				}
				return
			}
			if len(got) != 1 || got[0] != tt.req {
				t.Fatalf("authenticator got %d requests, first %+v", len(got), redact(got[0]))
			}
		})
	}
	// One decision line per request, with the fields operators need, and
	// never the password.
	// The line is written right after the reply: wait for the last one.
	waitFor(t, func() bool { return strings.Count(logs.String(), `"msg":"saslauthd: decision"`) >= len(tests) })
	time.Sleep(50 * time.Millisecond) // and make sure no extra line follows
	out := logs.String()
	if n := strings.Count(out, `"msg":"saslauthd: decision"`); n != len(tests) {
		t.Errorf("%d decision lines for %d requests:\n%s", n, len(tests), out)
	}
	for _, want := range []string{`"user":"mallory"`, `"outcome":"tempfail"`, `"client":"192.0.2.7;40000"`,
		`"realm":"example.org"`, `"service":"imap"`, `"reason":"invalid credentials"`, `"duration":`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if strings.Contains(out, secret) {
		t.Error("password in log")
	}
}

// rawExchange sends raw bytes and returns the reply (or the read error).
func rawExchange(t *testing.T, path string, msg []byte) (string, error) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return "", err
	}
	return ReadCounted(c, MaxReplySize)
}

func TestServerMalformed(t *testing.T) {
	var calls atomic.Int32
	srv := &Server{Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
		calls.Add(1)
		return auth.Accepted("", nil)
	})}
	path, logs := startServer(t, srv)
	tests := []struct {
		name   string
		msg    []byte
		reason string
	}{
		{"over-long field", append([]byte{0x04, 0x01}, make([]byte, 1025)...), "field too long"},
		{"over-long length with no body", []byte{0xff, 0xff}, "field too long"},
		{"NUL in login", frame("alice\x00evil", secret, "smtp", ""), "NUL byte"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reply, err := rawExchange(t, path, tt.msg)
			if err != nil {
				t.Fatal(err)
			}
			if reply != "NO malformed request" {
				t.Fatalf("reply %q", reply)
			}
		})
	}
	// A client that half-closes after three fields still gets its NO.
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	c.Write(frame("u", "p", "s"))
	c.(*net.UnixConn).CloseWrite()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if reply, err := ReadCounted(c, MaxReplySize); err != nil || reply != "NO malformed request" {
		t.Fatalf("truncated request: %q, %v", reply, err)
	}
	c.Close()

	if calls.Load() != 0 {
		t.Fatal("authenticator called for a malformed request")
	}
	// Still serving.
	if ok, _ := ask(t, path, auth.Request{User: "u", Password: "p", Service: "smtp"}); !ok {
		t.Fatal("server stopped answering after malformed requests")
	}
	waitFor(t, func() bool {
		return strings.Count(logs.String(), `"msg":"saslauthd: malformed request"`) >= len(tests)+1
	})
	time.Sleep(50 * time.Millisecond) // and make sure no extra line follows
	out := logs.String()
	if n := strings.Count(out, `"msg":"saslauthd: malformed request"`); n != len(tests)+1 {
		t.Errorf("%d malformed-request log lines, want %d:\n%s", n, len(tests)+1, out)
	}
	if !strings.Contains(out, "NUL byte") || strings.Contains(out, secret) {
		t.Errorf("malformed log lines lack a reason or contain the password:\n%s", out)
	}
}

func TestServerSlowClientCutWhileOthersServed(t *testing.T) {
	srv := &Server{
		ReadTimeout: 300 * time.Millisecond,
		MaxConns:    4,
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
			return auth.Accepted("", nil)
		}),
	}
	path, logs := startServer(t, srv)

	slow, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	slow.Write([]byte{0, 5, 'a'}) // then nothing more

	for range 3 {
		if ok, _ := ask(t, path, auth.Request{User: "u", Password: "p"}); !ok {
			t.Fatal("other client not served")
		}
	}
	slow.SetReadDeadline(time.Now().Add(10 * time.Second))
	reply, err := ReadCounted(slow, MaxReplySize)
	if err != nil || reply != "NO malformed request" {
		t.Fatalf("slow client got %q, %v; want a NO after the read deadline", reply, err)
	}
	if _, err := slow.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("slow client connection not closed: %v", err)
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), "malformed request") })
	if !strings.Contains(logs.String(), "timeout") {
		t.Errorf("timeout not logged:\n%s", logs.String())
	}
}

func TestServerMaxConns(t *testing.T) {
	release := make(chan struct{})
	var running, peak atomic.Int32
	srv := &Server{
		MaxConns: 2,
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
			n := running.Add(1)
			defer running.Add(-1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			<-release
			return auth.Accepted("", nil)
		}),
	}
	path, _ := startServer(t, srv)

	const clients = 5
	results := make(chan bool, clients)
	for range clients {
		go func() {
			c := Client{Path: path, Timeout: 20 * time.Second}
			ok, _, err := c.Authenticate(context.Background(), auth.Request{User: "u", Password: "p"})
			results <- ok && err == nil
		}()
	}
	waitFor(t, func() bool { return running.Load() == 2 })
	time.Sleep(100 * time.Millisecond) // give a wrongly admitted third call the chance to show
	if n := running.Load(); n != 2 {
		t.Fatalf("%d requests running with MaxConns 2", n)
	}
	close(release)
	for range clients {
		if !<-results {
			t.Fatal("a queued client was not served once slots freed")
		}
	}
	if p := peak.Load(); p != 2 {
		t.Fatalf("peak concurrency %d, want 2", p)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestServerRequestTimeoutHoldsSlot(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	srv := &Server{ReplyReasons: true,
		MaxConns:       1,
		RequestTimeout: 100 * time.Millisecond,
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
			if calls.Add(1) == 1 {
				<-release // ignores ctx: a misbehaving backend
			}
			return auth.Accepted("", nil)
		}),
	}
	path, _ := startServer(t, srv)

	// The stuck call's client is answered at the deadline, and fails closed.
	ok, text := ask(t, path, auth.Request{User: "u", Password: "p"})
	if ok || text != "timeout" {
		t.Fatalf("stuck authenticator: answer %v %q, want NO timeout", ok, text)
	}
	// Its slot stays taken until the call returns, so the next client waits.
	second := make(chan bool, 1)
	go func() {
		c := Client{Path: path, Timeout: 20 * time.Second}
		ok, _, _ := c.Authenticate(context.Background(), auth.Request{User: "v", Password: "p"})
		second <- ok
	}()
	select {
	case <-second:
		t.Fatal("second request served while the stuck call still holds the only slot")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	if !<-second {
		t.Fatal("second request not served after the slot freed")
	}
}

func TestServerPanicRecovered(t *testing.T) {
	srv := &Server{ReplyReasons: true, Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
		if req.User == "boom" {
			panic("cannot handle request " + req.User + "/" + req.Password)
		}
		return auth.Accepted("", nil)
	})}
	path, logs := startServer(t, srv)
	ok, text := ask(t, path, auth.Request{User: "boom", Password: secret})
	if ok || text != "internal error" {
		t.Fatalf("panicking authenticator: answer %v %q", ok, text)
	}
	if ok, _ := ask(t, path, auth.Request{User: "fine", Password: secret}); !ok {
		t.Fatal("server not serving after a panic")
	}
	waitFor(t, func() bool { return strings.Count(logs.String(), `"msg":"saslauthd: decision"`) == 2 })
	out := logs.String()
	if !strings.Contains(out, "authenticator panicked") || !strings.Contains(out, "cannot handle request boom") {
		t.Errorf("panic not logged:\n%s", out)
	}
	if strings.Contains(out, secret) {
		t.Error("password from the panic value reached the log")
	}
}

func TestServerShutdownDrainsInFlight(t *testing.T) {
	started := make(chan struct{})
	release := make(chan struct{})
	srv := &Server{
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
			close(started)
			<-release
			return auth.Accepted("", nil)
		}),
		Logger: slog.New(slog.DiscardHandler),
	}
	path := filepath.Join(t.TempDir(), "mux")
	l, err := Listen(path, 0o666, "")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	answer := make(chan bool, 1)
	go func() {
		c := Client{Path: path, Timeout: 20 * time.Second}
		ok, _, err := c.Authenticate(context.Background(), auth.Request{User: "u", Password: "p"})
		answer <- ok && err == nil
	}()
	<-started
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v", err)
	}
	// No longer accepting: the socket file is gone.
	if _, err := net.Dial("unix", path); err == nil {
		t.Fatal("new connection accepted during Shutdown")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if !<-answer {
		t.Fatal("in-flight request not answered OK during Shutdown")
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := srv.Serve(l); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
}

func TestServerShutdownDeadlineCancelsRequests(t *testing.T) {
	started := make(chan struct{})
	srv := &Server{
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
			close(started)
			<-ctx.Done()
			return auth.TempFailed(auth.CauseUnavailable, "cancelled: "+ctx.Err().Error())
		}),
		Logger: slog.New(slog.DiscardHandler),
	}
	path := filepath.Join(t.TempDir(), "mux")
	l, err := Listen(path, 0o666, "")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	type answer struct {
		ok   bool
		text string
		err  error
	}
	got := make(chan answer, 1)
	go func() {
		c := Client{Path: path, Timeout: 20 * time.Second}
		ok, text, err := c.Authenticate(context.Background(), auth.Request{User: "u", Password: "p"})
		got <- answer{ok, text, err}
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want deadline exceeded", err)
	}
	// The client gets a NO or a closed connection, never an OK.
	if a := <-got; a.ok {
		t.Fatalf("request cancelled by Shutdown answered OK")
	}
}

func TestServerSeveralListeners(t *testing.T) {
	srv := &Server{
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict { return auth.Accepted("", nil) }),
		Logger:        slog.New(slog.DiscardHandler),
	}
	dir := t.TempDir()
	var paths []string
	served := make(chan error, 2)
	for _, name := range []string{"a/mux", "b/mux"} {
		p := filepath.Join(dir, name)
		l, err := Listen(p, 0o666, "")
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
		go func() { served <- srv.Serve(l) }()
	}
	for _, p := range paths {
		if ok, _ := ask(t, p, auth.Request{User: "u", Password: "p"}); !ok {
			t.Fatalf("%s: not served", p)
		}
	}
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for range paths {
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Fatalf("Serve returned %v", err)
		}
	}
}

func TestServerNilAuthenticator(t *testing.T) {
	l, err := Listen(filepath.Join(t.TempDir(), "mux"), 0o666, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := (&Server{}).Serve(l); err == nil || errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve without Authenticator = %v", err)
	}
}

func TestClientTimeout(t *testing.T) {
	// A server that accepts and never answers: the Client must give up.
	path := filepath.Join(t.TempDir(), "mux")
	l, err := net.Listen("unix", path)
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
	c := Client{Path: path, Timeout: 100 * time.Millisecond}
	_, _, err = c.Authenticate(context.Background(), auth.Request{User: "u", Password: "p"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want a deadline error", err)
	}
}

// BenchmarkServerRoundTrip measures one whole exchange over a real socket
// (dial, request, authenticator, reply, drain). Five fields, so the
// optional-field wait is not part of the number.
func BenchmarkServerRoundTrip(b *testing.B) {
	srv := &Server{
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict { return auth.Accepted("", nil) }),
		Logger:        slog.New(slog.DiscardHandler),
	}
	path := filepath.Join(b.TempDir(), "mux")
	l, err := Listen(path, 0o666, "")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Shutdown(context.Background())
	c := Client{Path: path, Timeout: 10 * time.Second}
	req := auth.Request{User: "alice", Password: "pw", Service: "smtp", Realm: "example.org", ClientAddr: "192.0.2.1;25"}
	b.ReportAllocs()
	for b.Loop() {
		if ok, _, err := c.Authenticate(context.Background(), req); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

// TestServerIdleListenerReservesNoSlot: with one slot and two sockets, an
// idle socket must not hold the slot the busy one needs.
func TestServerIdleListenerReservesNoSlot(t *testing.T) {
	srv := &Server{
		MaxConns:      1,
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict { return auth.Accepted("", nil) }),
		Logger:        slog.New(slog.DiscardHandler),
	}
	dir := t.TempDir()
	var paths []string
	for _, name := range []string{"idle", "busy"} {
		p := filepath.Join(dir, name)
		l, err := Listen(p, 0o666, "")
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
		go srv.Serve(l)
	}
	defer srv.Shutdown(context.Background())
	time.Sleep(50 * time.Millisecond) // both accept loops running
	for range 3 {
		c := Client{Path: paths[1], Timeout: 5 * time.Second}
		if ok, _, err := c.Authenticate(context.Background(), auth.Request{User: "u", Password: "p"}); !ok || err != nil {
			t.Fatalf("busy socket not served: %v %v", ok, err)
		}
	}
}

// TestServerUnixReplySurvivesClose: on a Unix socket the server closes right
// after writing the reply, without waiting for the client (no drain). Every
// client must still read its whole reply after the server has closed: ones
// that read slowly, ones that sent bytes the server never read, ones that
// write more after the reply. Cyrus clients (libsasl2) read only the reply.
func TestServerUnixReplySurvivesClose(t *testing.T) {
	srv := &Server{Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
		if req.User == "u" && req.Password == "p" {
			return auth.Accepted("", nil)
		}
		return auth.Rejected(auth.CausePolicy, "invalid credentials")
	})}
	path, logs := startServer(t, srv)

	const n = 120 // below DefaultMaxConns: all held open at once
	req := frame("u", "p", "smtp", "", "192.0.2.1;25")
	conns := make([]net.Conn, n)
	for i := range conns {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := req
		if i%4 == 1 {
			// 20 KB more than the request in the same write: most stays
			// unread in the server's receive queue when it closes.
			msg = append(append([]byte(nil), req...), make([]byte, 20000)...)
		}
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	// Every connection decided and closed by the server before any client reads.
	// (Logs first: once decisions are logged Serve has initialised srv.conns.)
	waitFor(t, func() bool {
		if strings.Count(logs.String(), `"msg":"saslauthd: decision"`) != n {
			return false
		}
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.conns) == 0
	})

	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var reply []byte
			var err error
			switch i % 4 {
			case 0, 1: // as libsasl2: length, then body
				var s string
				s, err = ReadCounted(c, MaxReplySize)
				reply = []byte(s)
			case 2: // a slow reader: one byte at a time
				var b [1]byte
				for err == nil && len(reply) < 4 {
					var m int
					m, err = c.Read(b[:])
					reply = append(reply, b[:m]...)
					time.Sleep(time.Millisecond)
				}
				if len(reply) == 4 {
					reply = reply[2:]
				}
			case 3: // writes more after the server closed, then reads
				c.Write([]byte("late bytes")) // EPIPE is fine
				var s string
				s, err = ReadCounted(c, MaxReplySize)
				reply = []byte(s)
			}
			if err != nil || string(reply) != "OK" {
				t.Errorf("client %d (kind %d): reply %q, %v", i, i%4, reply, err)
			}
			// The bytes the server never read reset the connection, but
			// only after the reply (proof the case above was exercised).
			if _, err := c.Read(make([]byte, 1)); i%4 == 1 && !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("client %d: read after the reply: %v, want ECONNRESET", i, err)
			}
		}()
	}
	wg.Wait()

	// And under concurrent load with the ordinary client.
	var failed atomic.Int32
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := Client{Path: path, Timeout: 10 * time.Second}
			for range 50 {
				if ok, _, err := c.Authenticate(context.Background(), auth.Request{User: "u", Password: "p"}); !ok || err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d of 400 concurrent requests got no OK", failed.Load())
	}
}

// TestServerSlowDecisionStillWritten: the read deadline also covers the
// write, so a decision that outlasts ReadTimeout must get a fresh write
// deadline, not a write that fails at once.
func TestServerSlowDecisionStillWritten(t *testing.T) {
	srv := &Server{
		ReadTimeout: 100 * time.Millisecond,
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
			time.Sleep(250 * time.Millisecond)
			return auth.Accepted("", nil)
		}),
	}
	path, logs := startServer(t, srv)
	if ok, text := ask(t, path, auth.Request{User: "u", Password: "p"}); !ok {
		t.Fatalf("slow decision: answer %v %q, want OK", ok, text)
	}
	waitFor(t, func() bool { return strings.Contains(logs.String(), `"msg":"saslauthd: decision"`) })
	if strings.Contains(logs.String(), "not delivered") {
		t.Errorf("reply logged as not delivered:\n%s", logs.String())
	}
}

// TestServerRequestContext: the context the Authenticator gets behaves like
// context.WithTimeout's: its deadline, its error at the deadline and after
// the call, and contexts and AfterFuncs derived from it, which must end with
// it (without a goroutine each).
func TestServerRequestContext(t *testing.T) {
	type seen struct {
		deadlineOK, derivedEnded, afterFuncRan, causeOK bool
		err, derivedErr                                 error
		extraGoroutines                                 int
	}
	got := make(chan seen, 1)
	var kept context.Context
	srv := &Server{ReplyReasons: true,
		RequestTimeout: 200 * time.Millisecond,
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
			var s seen
			dl, ok := ctx.Deadline()
			s.deadlineOK = ok && time.Until(dl) > 100*time.Millisecond && time.Until(dl) <= 200*time.Millisecond
			before := runtime.NumGoroutine()
			var cancels []context.CancelFunc
			for range 100 {
				_, cancel := context.WithTimeout(ctx, time.Hour)
				cancels = append(cancels, cancel)
			}
			s.extraGoroutines = runtime.NumGoroutine() - before
			for _, cancel := range cancels[:50] {
				cancel()
			}
			derived, cancel := context.WithCancel(ctx)
			defer cancel()
			ran := make(chan struct{})
			context.AfterFunc(ctx, func() { close(ran) })
			select {
			case <-derived.Done():
				s.derivedEnded = true
			case <-time.After(5 * time.Second):
			}
			select {
			case <-ran:
				s.afterFuncRan = true
			case <-time.After(5 * time.Second):
			}
			s.err, s.derivedErr = ctx.Err(), derived.Err()
			s.causeOK = context.Cause(ctx) == context.DeadlineExceeded
			kept = ctx
			got <- s
			return auth.Accepted("", nil)
		}),
	}
	path, _ := startServer(t, srv)
	ok, text := ask(t, path, auth.Request{User: "u", Password: "p"})
	if ok || text != "timeout" {
		t.Errorf("answer %v %q, want NO timeout", ok, text)
	}
	s := <-got
	if !s.deadlineOK || !s.derivedEnded || !s.afterFuncRan || !s.causeOK ||
		s.err != context.DeadlineExceeded || !errors.Is(s.derivedErr, context.DeadlineExceeded) {
		t.Errorf("request context: %+v", s)
	}
	if s.extraGoroutines > 10 {
		t.Errorf("100 derived contexts started %d goroutines", s.extraGoroutines)
	}
	// A context kept past the call has ended; its Done is closed.
	waitFor(t, func() bool {
		select {
		case <-kept.Done():
			return kept.Err() != nil
		default:
			return false
		}
	})

	// A request that finishes in time: its context ends (Canceled) once the
	// call returns, and AfterFuncs that were stopped never run.
	var after atomic.Int32
	var ctxAfter context.Context
	srv2 := &Server{Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
		stop := context.AfterFunc(ctx, func() { after.Add(1) })
		context.AfterFunc(ctx, func() { after.Add(10) })
		if !stop() || stop() {
			t.Error("AfterFunc's stop: want true, then false")
		}
		if ctx.Err() != nil {
			t.Errorf("live context: Err = %v", ctx.Err())
		}
		ctxAfter = ctx
		return auth.Accepted("", nil)
	})}
	path2, _ := startServer(t, srv2)
	if ok, _ := ask(t, path2, auth.Request{User: "u", Password: "p"}); !ok {
		t.Fatal("not accepted")
	}
	waitFor(t, func() bool { return after.Load() == 10 })
	if ctxAfter.Err() != context.Canceled {
		t.Errorf("context after the call: %v, want Canceled", ctxAfter.Err())
	}
}

// TestServerWorkersExitOnShutdown: the goroutines kept for reuse between
// connections end with the server.
func TestServerWorkersExitOnShutdown(t *testing.T) {
	base := runtime.NumGoroutine()
	srv := &Server{
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict { return auth.Accepted("", nil) }),
		Logger:        slog.New(slog.DiscardHandler),
	}
	l, err := Listen(filepath.Join(t.TempDir(), "mux"), 0o666, "")
	if err != nil {
		t.Fatal(err)
	}
	path := l.Addr().String()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 20 {
				c := Client{Path: path, Timeout: 10 * time.Second}
				if ok, _, err := c.Authenticate(context.Background(), auth.Request{User: "u", Password: "p"}); !ok || err != nil {
					t.Errorf("not served: %v %v", ok, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := srv.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-served
	waitFor(t, func() bool { return runtime.NumGoroutine() <= base })
}

// TestServerGenericReplies: by default a refused client learns nothing
// about the account: one text for every refusal, one for every temporary
// failure; the log line has the reason.
func TestServerGenericReplies(t *testing.T) {
	verdicts := map[string]auth.Verdict{
		"unknown":   auth.Rejected(auth.CauseUnknownUser, "unknown user"),
		"wrong":     auth.Rejected(auth.CauseWrongPassword, "wrong password"),
		"host":      auth.Rejected(auth.CausePolicy, "host not allowed: denied by !mail.example.org"),
		"throttled": auth.Rejected(auth.CauseThrottled, "throttled: too many failures for this account"),
		"down":      auth.TempFailed(auth.CauseUnavailable, "ldap unavailable: timeout"),
	}
	srv := &Server{Authenticator: auth.AuthenticatorFunc(func(_ context.Context, req auth.Request) auth.Verdict {
		return verdicts[req.User]
	})}
	path, logs := startServer(t, srv)
	for user, v := range verdicts {
		ok, text := ask(t, path, auth.Request{User: user, Password: secret})
		want := "authentication failed"
		if v.Outcome == auth.TempFail {
			want = "temporary failure"
		}
		if ok || text != want {
			t.Errorf("%s: answer %v %q, want NO %q", user, ok, text, want)
		}
	}
	waitFor(t, func() bool { return strings.Count(logs.String(), `"msg":"saslauthd: decision"`) == len(verdicts) })
	for _, v := range verdicts {
		if !strings.Contains(logs.String(), v.Reason) {
			t.Errorf("log lacks the reason %q", v.Reason)
		}
	}
}
