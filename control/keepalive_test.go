package control

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// keptConn is a raw client connection that sends requests with either
// magic and reads replies one at a time.
type keptConn struct {
	t *testing.T
	net.Conn
	r *bufio.Reader
}

func dialKept(t *testing.T, path string) *keptConn {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return &keptConn{t: t, Conn: c, r: bufio.NewReader(c)}
}

// send writes one request for user (password "pw").
func (k *keptConn) send(m, user string) {
	k.t.Helper()
	msg, err := appendRequestMagic(nil, m, OpAuth, auth.Request{User: user, Password: "pw", Service: "imap"})
	if err != nil {
		k.t.Fatal(err)
	}
	if _, err := k.Write(msg); err != nil {
		k.t.Fatalf("sending %s for %s: %v", m, user, err)
	}
}

// reply reads one reply.
func (k *keptConn) reply() (auth.Verdict, error) {
	_, v, err := readVerdict(io.LimitReader(k.r, MaxReplySize))
	return v, err
}

// wantReply reads one reply and checks it is the verdict for user.
func (k *keptConn) wantReply(user string) {
	k.t.Helper()
	v, err := k.reply()
	if err != nil {
		k.t.Fatalf("reply for %s: %v", user, err)
	}
	if v.Outcome != auth.Accept || v.DN != "uid="+user {
		k.t.Fatalf("reply for %s: %+v", user, v)
	}
}

// wantClosed checks the server closed the connection: EOF, no more bytes,
// within limit.
func (k *keptConn) wantClosed(limit time.Duration) time.Duration {
	k.t.Helper()
	start := time.Now()
	k.SetReadDeadline(start.Add(limit))
	b, err := k.r.ReadByte()
	if err == nil {
		k.t.Fatalf("got byte %#x, want the connection closed", b)
	}
	if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isReset(err) {
		k.t.Fatalf("read: %v, want EOF within %s", err, limit)
	}
	return time.Since(start)
}

func isReset(err error) bool {
	return err != nil && strings.Contains(err.Error(), "connection reset")
}

// acceptAll accepts every user with the DN "uid=USER".
type acceptAll struct {
	mu    sync.Mutex
	n     int
	users []string
	block chan struct{} // if set, decisions wait on it
}

func (b *acceptAll) Authenticate(ctx context.Context, r auth.Request) auth.Verdict {
	b.mu.Lock()
	b.n++
	b.users = append(b.users, r.User)
	block := b.block
	b.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return auth.TempFailed(auth.CauseUnavailable, ctx.Err().Error())
		}
	}
	return auth.Accepted("uid="+r.User, nil)
}

func (b *acceptAll) Lookup(ctx context.Context, r auth.Request) auth.Verdict {
	return b.Authenticate(ctx, r)
}

func (b *acceptAll) Flush() bool { return false }

func (b *acceptAll) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

// waitCount waits until the backend saw n requests.
func (b *acceptAll) waitCount(t *testing.T, n int) {
	t.Helper()
	for i := 0; b.count() < n; i++ {
		if i > 500 {
			t.Fatalf("backend saw %d requests, want %d", b.count(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// countingListener counts accepted connections.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func TestKeepAliveAnswersManyRequestsOnOneConnection(t *testing.T) {
	b := &acceptAll{}
	path := filepath.Join(t.TempDir(), "control")
	nl, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	l := &countingListener{Listener: nl}
	s := &Server{Backend: b, Logger: quietLogger()}
	go s.Serve(l)
	t.Cleanup(func() { s.Shutdown(context.Background()) })

	k := dialKept(t, path)
	for i := range 50 {
		user := fmt.Sprintf("user%d", i)
		k.send(magicKeep, user)
		k.wantReply(user)
	}
	// Pipelined: three requests in one write, three replies in order.
	var msg []byte
	for _, u := range []string{"p1", "p2", "p3"} {
		msg, _ = appendRequestMagic(msg, magicKeep, OpAuth, auth.Request{User: u, Password: "pw"})
	}
	if _, err := k.Write(msg); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"p1", "p2", "p3"} {
		k.wantReply(u)
	}
	// A lookup and a flush on the same connection.
	lookup, _ := appendRequestMagic(nil, magicKeep, OpLookup, auth.Request{User: "l1"})
	flush, _ := appendRequestMagic(nil, magicKeep, OpFlush, auth.Request{})
	k.Write(append(lookup, flush...))
	k.wantReply("l1")
	if v, err := k.reply(); err != nil || v.Reason != "no cache configured" {
		t.Fatalf("flush on a kept connection: %+v, %v", v, err)
	}
	if n := l.n.Load(); n != 1 {
		t.Errorf("%d connections accepted, want 1", n)
	}
	if n := b.count(); n != 54 {
		t.Errorf("backend saw %d requests, want 54", n)
	}
}

// TestOneRequestClientsStillWork: a request with the old magic is answered
// and the connection closed, as before keep-alive, also after kept
// requests on the same connection.
func TestOneRequestClientsStillWork(t *testing.T) {
	b := &acceptAll{}
	path := startServer(t, &Server{Backend: b})
	k := dialKept(t, path)
	k.send(magic, "old")
	k.wantReply("old")
	k.wantClosed(3 * time.Second)

	k = dialKept(t, path)
	k.send(magicKeep, "new")
	k.wantReply("new")
	k.send(magic, "last")
	k.wantReply("last")
	k.wantClosed(3 * time.Second)

	// The Go client (checkpassword, pam, cache flush) sends the old magic.
	c := &Client{Path: path, Timeout: 3 * time.Second}
	if v, err := c.Authenticate(context.Background(), auth.Request{User: "client", Password: "pw"}); err != nil || v.DN != "uid=client" {
		t.Fatalf("Client: %+v, %v", v, err)
	}
}

func TestIdleKeptConnectionIsClosed(t *testing.T) {
	b := &acceptAll{}
	path := startServer(t, &Server{Backend: b, IdleTimeout: 150 * time.Millisecond})
	k := dialKept(t, path)
	k.send(magicKeep, "a")
	k.wantReply("a")
	if took := k.wantClosed(5 * time.Second); took < 100*time.Millisecond {
		t.Errorf("closed after %s, before the idle timeout", took)
	}
}

// TestStartedRequestHasTheIOTimeout: once the next request's first byte
// arrived, the rest must come within IOTimeout, not IdleTimeout.
func TestStartedRequestHasTheIOTimeout(t *testing.T) {
	b := &acceptAll{}
	path := startServer(t, &Server{Backend: b, IdleTimeout: time.Minute, IOTimeout: 150 * time.Millisecond})
	k := dialKept(t, path)
	k.send(magicKeep, "a")
	k.wantReply("a")
	time.Sleep(300 * time.Millisecond) // idle longer than IOTimeout: still open
	k.send(magicKeep, "b")
	k.wantReply("b")
	k.Write([]byte{0}) // one byte of a request, then nothing
	if took := k.wantClosed(5 * time.Second); took > 3*time.Second {
		t.Errorf("a stalled request held the connection %s", took)
	}
}

func TestMaxRequestsPerConn(t *testing.T) {
	b := &acceptAll{}
	path := startServer(t, &Server{Backend: b, MaxRequestsPerConn: 3})
	k := dialKept(t, path)
	for _, u := range []string{"a", "b", "c"} {
		k.send(magicKeep, u)
		k.wantReply(u)
	}
	k.wantClosed(3 * time.Second)
	if n := b.count(); n != 3 {
		t.Errorf("backend saw %d requests, want 3", n)
	}
}

// TestMalformedLaterRequestCloses: a broken request after good ones gets
// no reply (or the refusal of a too-long field) and ends the connection;
// the backend never sees it.
func TestMalformedLaterRequestCloses(t *testing.T) {
	b := &acceptAll{}
	path := startServer(t, &Server{Backend: b, MaxFieldSize: 16})
	for name, c := range map[string]struct {
		msg       []byte
		wantReply bool
	}{
		"old protocol version": {[]byte("\x00\x04MAC1\x00\x04auth\x00\x01u\x00\x01p\x00\x00\x00\x00\x00\x00"), false},
		"unknown op":           {must(appendRequestMagic(nil, magicKeep, "delete", auth.Request{User: "u"})), false},
		"saslauthd request":    {[]byte("\x00\x05alice\x00\x02pw\x00\x04imap\x00\x00"), false},
		"cut short":            {[]byte("\x00\x04MACK\x00\x04au"), false},
		"password too long":    {must(appendRequestMagic(nil, magicKeep, OpAuth, auth.Request{User: "u", Password: strings.Repeat("p", 17)})), true},
	} {
		t.Run(name, func(t *testing.T) {
			before := b.count()
			k := dialKept(t, path)
			k.send(magicKeep, "good")
			k.wantReply("good")
			k.Write(c.msg)
			if strings.HasSuffix(name, "cut short") {
				k.Conn.(*net.UnixConn).CloseWrite()
			}
			if c.wantReply {
				v, err := k.reply()
				if err != nil || v.Outcome != auth.Reject || v.Cause != auth.CauseInvalid {
					t.Fatalf("reply %+v, %v; want reject/invalid", v, err)
				}
			}
			k.wantClosed(3 * time.Second)
			if n := b.count() - before; n != 1 {
				t.Errorf("backend saw %d requests, want only the good one", n)
			}
		})
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// TestHalfClosedClientGetsItsReply: a client that shuts its sending side
// after a kept request still gets the reply, then EOF.
func TestHalfClosedClientGetsItsReply(t *testing.T) {
	b := &acceptAll{}
	path := startServer(t, &Server{Backend: b})
	k := dialKept(t, path)
	k.send(magicKeep, "a")
	k.send(magicKeep, "b")
	if err := k.Conn.(*net.UnixConn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	k.wantReply("a")
	k.wantReply("b")
	k.wantClosed(3 * time.Second)
}

// TestConnectionsStayBounded: kept connections count against
// MaxConnections; a newcomer takes the place of an idle one, and is
// refused busy only when every connection is in a request.
func TestConnectionsStayBounded(t *testing.T) {
	b := &acceptAll{}
	path := startServer(t, &Server{Backend: b, MaxConnections: 2, IdleTimeout: time.Minute})
	idle := []*keptConn{dialKept(t, path), dialKept(t, path)}
	for i, k := range idle {
		u := fmt.Sprintf("idle%d", i)
		k.send(magicKeep, u)
		k.wantReply(u)
	}
	third := dialKept(t, path)
	third.send(magicKeep, "third")
	third.wantReply("third")
	// One of the idle ones was closed to make room; the other still works.
	closed, open := -1, -1
	for i, k := range idle {
		k.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		_, err := k.r.ReadByte()
		switch {
		case errors.Is(err, io.EOF) || isReset(err):
			closed = i
		case isTimeout(err):
			open = i
		default:
			t.Fatalf("idle connection %d: %v", i, err)
		}
	}
	if closed < 0 || open < 0 {
		t.Fatalf("closed %d, open %d: want exactly one idle connection closed", closed, open)
	}
	idle[open].SetDeadline(time.Now().Add(5 * time.Second))
	idle[open].send(magicKeep, "again")
	idle[open].wantReply("again")

	// Both slots busy with a request: a newcomer is refused at once.
	b.mu.Lock()
	b.block = make(chan struct{})
	b.mu.Unlock()
	before := b.count()
	third.send(magicKeep, "slow1")
	idle[open].send(magicKeep, "slow2")
	b.waitCount(t, before+2)
	busy := dialKept(t, path)
	busy.send(magicKeep, "busy")
	v, err := busy.reply()
	if err != nil || v.Outcome != auth.TempFail || !strings.Contains(v.Reason, "busy") {
		t.Fatalf("newcomer with every slot in a request: %+v, %v; want tempfail busy", v, err)
	}
	close(b.block)
	third.wantReply("slow1")
	idle[open].wantReply("slow2")
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestShutdownClosesIdleKeptConnections: Shutdown does not wait for kept
// connections' idle timeout; a connection in a request gets its reply,
// then is closed.
func TestShutdownClosesIdleKeptConnections(t *testing.T) {
	b := &acceptAll{}
	s := &Server{Backend: b, Logger: quietLogger(), IdleTimeout: time.Minute}
	path := filepath.Join(t.TempDir(), "control")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	idle, active := dialKept(t, path), dialKept(t, path)
	idle.send(magicKeep, "idle")
	idle.wantReply("idle")
	b.mu.Lock()
	b.block = make(chan struct{})
	b.mu.Unlock()
	active.send(magicKeep, "active")
	b.waitCount(t, 2)

	shut := make(chan error, 1)
	start := time.Now()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	idle.wantClosed(3 * time.Second)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("idle kept connection closed %s after Shutdown", took)
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(b.block)
	active.wantReply("active")
	active.wantClosed(3 * time.Second)
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown = %v", err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve = %v", err)
	}
}

// BenchmarkServer: one request per connection (checkpassword, old
// scripts) against a kept connection (the Lua script), through a real
// Unix socket; the server's allocations per request are most of allocs/op.
func BenchmarkServer(b *testing.B) {
	be := &acceptAll{}
	path := filepath.Join(b.TempDir(), "control")
	l, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	s := &Server{Backend: be, Logger: quietLogger(), MaxRequestsPerConn: 1 << 30}
	go s.Serve(l)
	b.Cleanup(func() { s.Shutdown(context.Background()) })
	one := must(appendRequestMagic(nil, magic, OpAuth, auth.Request{User: "alice", Password: "pw", Service: "imap", ClientAddr: "192.0.2.7"}))
	kept := must(appendRequestMagic(nil, magicKeep, OpAuth, auth.Request{User: "alice", Password: "pw", Service: "imap", ClientAddr: "192.0.2.7"}))
	b.Run("one-request-per-connection", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c, err := net.Dial("unix", path)
			if err != nil {
				b.Fatal(err)
			}
			c.Write(one)
			if _, _, err := readVerdict(bufio.NewReader(c)); err != nil {
				b.Fatal(err)
			}
			c.Close()
		}
	})
	b.Run("kept-connection", func(b *testing.B) {
		b.ReportAllocs()
		c, err := net.Dial("unix", path)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for b.Loop() {
			c.Write(kept)
			if _, _, err := readVerdict(r); err != nil {
				b.Fatal(err)
			}
		}
	})
}
