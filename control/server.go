package control

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// Backend is the decision the daemon shares with its helpers; an Accept
// carries the Dovecot fields (daemon.WithFields).
type Backend interface {
	auth.Authenticator
	auth.Looker
	// Flush empties the cache; false when there is none.
	Flush() bool
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("control: server closed")

// Defaults for the zero Server settings.
const (
	DefaultMaxConnections     = 64
	DefaultRequestTimeout     = 10 * time.Second
	DefaultIOTimeout          = 5 * time.Second
	DefaultIdleTimeout        = 60 * time.Second
	DefaultMaxRequestsPerConn = 1000
)

// Server answers control requests on Unix sockets. Set the exported fields
// before Serve; the zero values give the defaults. Access control is the
// socket's file mode: a peer that can connect can check passwords and look
// users up, so only the daemon's own helpers (Dovecot's auth process, root)
// may reach it.
type Server struct {
	Backend Backend
	Logger  *slog.Logger // nil: slog.Default()
	// MaxConnections bounds the open connections, kept ones included, and
	// so the requests decided at once. A new connection beyond it takes
	// the place of a kept connection that is waiting for its next request
	// (which is closed; its client reconnects), or, when every connection
	// is busy with a request, is answered "tempfail: busy" at once rather
	// than queued.
	MaxConnections int
	// RequestTimeout bounds the backend's decision for one request.
	RequestTimeout time.Duration
	// IOTimeout bounds reading a request (from its first byte; the first
	// request from the accept) and writing the reply.
	IOTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a kept
	// connection ("MACK" requests).
	IdleTimeout time.Duration
	// MaxRequestsPerConn: a kept connection is closed after this many
	// replies; the client reconnects.
	MaxRequestsPerConn int
	// MaxFieldSize bounds each request field (user, password, ...).
	MaxFieldSize int

	mu         sync.Mutex
	listeners  map[net.Listener]struct{}
	conns      map[*conn]struct{}
	closed     bool
	inShutdown atomic.Bool
	sem        chan struct{}
	wg         sync.WaitGroup
	baseCtx    context.Context
	cancel     context.CancelFunc
}

// conn is one accepted connection and where it is in its life: deciding
// or writing (active), waiting for the next request on a kept connection
// (idle), or closed by the server while idle (by Shutdown or to make room
// for a new connection). Only an idle connection is ever closed from
// outside its goroutine before Shutdown's deadline, and the CAS from idle
// to active or closed decides who gets it, so a request that arrived is
// either answered or never read.
type conn struct {
	net.Conn
	state atomic.Int32
}

const (
	connActive int32 = iota
	connIdle
	connClosed
)

// readers are the connections' read buffers: a request (seven fields of at
// most MaxFieldSize) usually arrives in one read.
var readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) init() {
	if s.sem != nil {
		return
	}
	n := s.MaxConnections
	if n <= 0 {
		n = DefaultMaxConnections
	}
	s.sem = make(chan struct{}, n)
	s.listeners = map[net.Listener]struct{}{}
	s.conns = map[*conn]struct{}{}
	s.baseCtx, s.cancel = context.WithCancel(context.Background())
}

// Serve accepts connections on l until Shutdown; it closes l when it
// returns. It returns ErrServerClosed after Shutdown.
func (s *Server) Serve(l net.Listener) error {
	if s.Backend == nil {
		return errors.New("control: Server.Backend is nil")
	}
	s.mu.Lock()
	s.init()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if retryableAccept(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("control: accept failed; retrying", "err", err, "in", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		c := &conn{Conn: nc}
		if !s.track(c) {
			nc.Close()
			return ErrServerClosed
		}
		select {
		case s.sem <- struct{}{}:
			go s.serveSlot(c)
		default:
			go s.admit(c)
		}
	}
}

// serveSlot serves c in a slot it holds.
func (s *Server) serveSlot(c *conn) {
	defer func() { <-s.sem }()
	s.serveConn(c)
}

// admit serves a connection that arrived while every slot was taken:
// it closes a kept connection that waits for its next request and takes
// its slot, or, when none waits, answers busy at once so that the helper
// fails now instead of waiting out its timeout in a queue.
func (s *Server) admit(c *conn) {
	if s.closeIdle() {
		// The closed connection's goroutine gives its slot back as soon
		// as its read returns; another newcomer may take it first.
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case s.sem <- struct{}{}:
			s.serveSlot(c)
			return
		case <-t.C:
		}
	}
	s.refuseBusy(c)
}

// closeIdle closes one kept connection that is waiting for its next
// request; false when there is none.
func (s *Server) closeIdle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if c.state.CompareAndSwap(connIdle, connClosed) {
			c.Close()
			return true
		}
	}
	return false
}

// retryableAccept tells accept errors worth retrying (EMFILE, ECONNABORTED
// and friends: syscall.Errno.Temporary) from a dead listener.
func retryableAccept(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
	s.wg.Done()
}

func (s *Server) ioTimeout() time.Duration {
	if s.IOTimeout > 0 {
		return s.IOTimeout
	}
	return DefaultIOTimeout
}

func (s *Server) maxField() int {
	if s.MaxFieldSize > 0 {
		return s.MaxFieldSize
	}
	return DefaultMaxFieldSize
}

func (s *Server) refuseBusy(c *conn) {
	defer s.untrack(c)
	c.SetDeadline(time.Now().Add(s.ioTimeout()))
	s.logger().Warn("control: refused a request", "reason", "busy", "max_connections", cap(s.sem))
	if b, err := appendVerdict(nil, "tempfail", auth.TempFailed(auth.CauseUnavailable, "mailauthd busy")); err == nil {
		c.Write(b)
	}
	// Take the request before closing: closing a Unix socket with unread
	// data can make the client's write fail before it sees our answer.
	br := readers.Get().(*bufio.Reader)
	br.Reset(c)
	readRequest(br, s.maxField())
	br.Reset(nil)
	readers.Put(br)
}

// serveConn answers the requests of one connection: one, or, while the
// client sends "MACK" requests, up to MaxRequestsPerConn, each within its
// deadlines.
func (s *Server) serveConn(c *conn) {
	defer s.untrack(c)
	br := readers.Get().(*bufio.Reader)
	br.Reset(c)
	defer func() {
		br.Reset(nil)
		readers.Put(br)
	}()
	maxReqs := s.MaxRequestsPerConn
	if maxReqs <= 0 {
		maxReqs = DefaultMaxRequestsPerConn
	}
	idle := s.IdleTimeout
	if idle <= 0 {
		idle = DefaultIdleTimeout
	}
	var out []byte
	start := time.Now()
	c.SetReadDeadline(start.Add(s.ioTimeout()))
	for n := 1; ; n++ {
		r, err := readRequest(br, s.maxField())
		if err != nil {
			s.logger().Warn("control: bad request", "err", err, "request", n)
			if r.Magic && errors.Is(err, ErrFieldTooLong) {
				// Our protocol, with a login or password longer than
				// max_field_size: a refusal, as the saslauthd socket
				// gives, not a temporary failure the client would retry.
				s.refuseTooLong(c)
			}
			// Otherwise no reply: the peer is not speaking this
			// protocol, or gave up.
			return
		}
		if out, err = s.answer(c, r, out[:0], start); err != nil {
			return
		}
		if !r.Keep || n >= maxReqs {
			return
		}
		// A kept connection: wait for the next request's first byte.
		c.state.Store(connIdle)
		if s.inShutdown.Load() {
			return
		}
		c.SetReadDeadline(time.Now().Add(idle))
		_, err = br.Peek(1)
		if !c.state.CompareAndSwap(connIdle, connActive) {
			return // closed by Shutdown or for a newcomer
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				s.logger().Debug("control: closing a kept connection", "err", err, "requests", n)
			}
			return
		}
		start = time.Now()
		c.SetReadDeadline(start.Add(s.ioTimeout()))
	}
}

// answer decides r and writes the reply (encoded into out, which it
// returns for reuse); an error means the connection is done.
func (s *Server) answer(c *conn, r request, out []byte, start time.Time) ([]byte, error) {
	timeout := s.RequestTimeout
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	ctx, cancel := context.WithTimeout(s.baseCtx, timeout)
	defer cancel()

	var (
		reply []byte
		err   error
		v     auth.Verdict
	)
	switch r.Op {
	case OpFlush:
		outcome, reason := "ok", "flushed"
		if !s.Backend.Flush() {
			outcome, reason = "error", "no cache configured"
		}
		reply, err = appendVerdict(out, outcome, auth.Verdict{Reason: reason})
	default:
		var p *auth.Panic
		if r.Op == OpAuth {
			v, p = auth.Recover(r.Req, func() auth.Verdict { return s.Backend.Authenticate(ctx, r.Req) })
		} else {
			r.Req.Password = ""
			v, p = auth.Recover(r.Req, func() auth.Verdict { return s.Backend.Lookup(ctx, r.Req) })
		}
		if p != nil {
			s.logger().Error("control: decision panicked", "user", r.Req.User,
				"service", r.Req.Service, "panic", p.Value, "stack", string(p.Stack))
		}
		if v.Outcome != auth.Accept && v.Delay > 0 {
			// The throttle's delay, within the request's deadline.
			t := time.NewTimer(v.Delay)
			select {
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
		reply, err = appendVerdict(out, v.Outcome.String(), v)
		if err != nil {
			s.logger().Warn("control: verdict too large; answering tempfail", "user", r.Req.User, "err", err)
			reply, err = appendVerdict(out, "tempfail", auth.TempFailed(auth.CauseInternal, "verdict too large"))
		}
	}
	r.Req.Password = ""
	if err != nil {
		return out, err
	}
	c.SetWriteDeadline(time.Now().Add(s.ioTimeout()))
	if _, err = c.Write(reply); err != nil {
		s.logger().Warn("control: writing reply", "user", r.Req.User, "err", err)
	}
	if r.Op != OpFlush {
		s.logDecision(r, v, time.Since(start))
	}
	return reply, err
}

// logDecision writes the one line per decision the saslauthd socket writes
// too, with the client address the helper passed (Dovecot's remote IP).
func (s *Server) logDecision(r request, v auth.Verdict, took time.Duration) {
	level := slog.LevelInfo
	if v.Outcome == auth.TempFail {
		level = slog.LevelWarn
	}
	// The field order is the saslauthd line's: packaging/fail2ban reads it.
	s.logger().LogAttrs(context.Background(), level, "control: decision",
		slog.String("user", r.Req.User),
		slog.String("realm", r.Req.Realm),
		slog.String("service", r.Req.Service),
		slog.String("client", r.Req.ClientAddr),
		slog.String("outcome", v.Outcome.String()),
		slog.String("cause", v.Cause.String()),
		slog.String("reason", v.Reason),
		slog.String("op", r.Op),
		slog.Duration("duration", took))
}

// refuseTooLong answers a request whose field exceeds MaxFieldSize with a
// refusal. The rest of the request stays unread: on a Unix socket the
// reply already queued for the client survives our close (the client
// reads it, then EOF), and a client waiting for our close must get it now.
func (s *Server) refuseTooLong(c net.Conn) {
	b, err := appendVerdict(nil, auth.Reject.String(), auth.Rejected(auth.CauseInvalid, "field too long"))
	if err != nil {
		return
	}
	c.SetWriteDeadline(time.Now().Add(s.ioTimeout()))
	c.Write(b)
}

// Shutdown stops accepting, closes kept connections waiting for their
// next request, lets in-flight requests finish (their connections close
// after the reply) until ctx is done, then cancels their decisions and
// closes their connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.init()
	s.closed = true
	s.inShutdown.Store(true)
	for l := range s.listeners {
		l.Close()
	}
	for c := range s.conns {
		if c.state.CompareAndSwap(connIdle, connClosed) {
			c.Close()
		}
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return nil
	case <-ctx.Done():
		s.cancel()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		<-done
		return ctx.Err()
	}
}
