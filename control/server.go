package control

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
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
	DefaultMaxConnections = 64
	DefaultRequestTimeout = 10 * time.Second
	DefaultIOTimeout      = 5 * time.Second
)

// Server answers control requests on Unix sockets. Set the exported fields
// before Serve; the zero values give the defaults. Access control is the
// socket's file mode: a peer that can connect can check passwords and look
// users up, so only the daemon's own helpers (Dovecot's auth process, root)
// may reach it.
type Server struct {
	Backend Backend
	Logger  *slog.Logger // nil: slog.Default()
	// MaxConnections bounds concurrent requests; one more is answered
	// "tempfail: busy" at once rather than queued.
	MaxConnections int
	// RequestTimeout bounds the backend's decision for one request.
	RequestTimeout time.Duration
	// IOTimeout bounds reading the request and writing the reply.
	IOTimeout time.Duration
	// MaxFieldSize bounds each request field (user, password, ...).
	MaxFieldSize int

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
	sem       chan struct{}
	wg        sync.WaitGroup
	baseCtx   context.Context
	cancel    context.CancelFunc
}

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
	s.conns = map[net.Conn]struct{}{}
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
		c, err := l.Accept()
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
		if !s.track(c) {
			c.Close()
			return ErrServerClosed
		}
		select {
		case s.sem <- struct{}{}:
			go func() {
				defer func() { <-s.sem }()
				s.serveConn(c)
			}()
		default:
			// Full: answer at once so the helper exits 111 now instead of
			// waiting out its timeout in a queue.
			go s.refuseBusy(c)
		}
	}
}

// retryableAccept tells accept errors worth retrying (EMFILE, ECONNABORTED
// and friends: syscall.Errno.Temporary) from a dead listener.
func retryableAccept(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
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

func (s *Server) refuseBusy(c net.Conn) {
	defer s.untrack(c)
	c.SetDeadline(time.Now().Add(s.ioTimeout()))
	s.logger().Warn("control: refused a request", "reason", "busy", "max_connections", cap(s.sem))
	if b, err := appendVerdict(nil, "tempfail", auth.TempFailed(auth.CauseUnavailable, "mailauthd busy")); err == nil {
		c.Write(b)
	}
	// Take the request before closing: closing a Unix socket with unread
	// data can make the client's write fail before it sees our answer.
	maxField := s.MaxFieldSize
	if maxField <= 0 {
		maxField = DefaultMaxFieldSize
	}
	readRequest(c, maxField)
}

func (s *Server) serveConn(c net.Conn) {
	defer s.untrack(c)
	maxField := s.MaxFieldSize
	if maxField <= 0 {
		maxField = DefaultMaxFieldSize
	}
	start := time.Now()
	c.SetReadDeadline(start.Add(s.ioTimeout()))
	r, err := readRequest(c, maxField)
	if err != nil {
		s.logger().Warn("control: bad request", "err", err)
		if r.Magic && errors.Is(err, ErrFieldTooLong) {
			// Our protocol, with a login or password longer than
			// max_field_size: a refusal, as the saslauthd socket gives,
			// not a temporary failure the client would retry.
			s.refuseTooLong(c)
		}
		// Otherwise no reply: the peer is not speaking this protocol, or
		// gave up.
		return
	}
	timeout := s.RequestTimeout
	if timeout <= 0 {
		timeout = DefaultRequestTimeout
	}
	ctx, cancel := context.WithTimeout(s.baseCtx, timeout)
	defer cancel()

	var reply []byte
	var v auth.Verdict
	switch r.Op {
	case OpFlush:
		outcome, reason := "ok", "flushed"
		if !s.Backend.Flush() {
			outcome, reason = "error", "no cache configured"
		}
		reply, err = appendVerdict(nil, outcome, auth.Verdict{Reason: reason})
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
		reply, err = appendVerdict(nil, v.Outcome.String(), v)
		if err != nil {
			s.logger().Warn("control: verdict too large; answering tempfail", "user", r.Req.User, "err", err)
			reply, err = appendVerdict(nil, "tempfail", auth.TempFailed(auth.CauseInternal, "verdict too large"))
		}
	}
	r.Req.Password = ""
	if err != nil {
		return
	}
	c.SetWriteDeadline(time.Now().Add(s.ioTimeout()))
	if _, err := c.Write(reply); err != nil {
		s.logger().Warn("control: writing reply", "user", r.Req.User, "err", err)
	}
	if r.Op != OpFlush {
		s.logDecision(r, v, time.Since(start))
	}
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

// Shutdown stops accepting, lets in-flight requests finish until ctx is
// done, then cancels their decisions and closes their connections.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.init()
	s.closed = true
	for l := range s.listeners {
		l.Close()
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
