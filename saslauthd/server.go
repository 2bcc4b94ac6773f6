package saslauthd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("saslauthd: server closed")

// Defaults for the zero values of Server's settings.
const (
	DefaultReadTimeout    = time.Second
	DefaultWriteTimeout   = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
	DefaultDrainTimeout   = 500 * time.Millisecond
	DefaultMaxConns       = 256
	DefaultMaxPending     = 4096
	// drainWindow is how long Shutdown keeps accepting what is already
	// queued in a listener's backlog: those clients connected before it
	// began and get an answer, not a reset.
	drainWindow = 50 * time.Millisecond
)

// maxDrain bounds what a client may still send after its reply.
const maxDrain = 64 << 10

// Server answers saslauthd requests on any number of listeners. Set the
// fields before the first Serve; zero values mean the defaults.
//
// A connection is first pending: its request is read (ReadTimeout from
// accept; libsasl2 writes it in one go), holding one of MaxPending places
// (at most MaxPendingPerPeer for one peer uid on a Unix socket). Only a
// whole request takes one of MaxConns decision slots, so clients that
// connect and stall delay no one: they cost a place for ReadTimeout.
type Server struct {
	// Authenticator decides each request. It must be safe for concurrent
	// use and should honour ctx; the server answers NO when ctx ends even
	// if it does not.
	Authenticator auth.Authenticator
	Logger        *slog.Logger // nil: slog.Default()

	// ReadTimeout bounds reading the whole request from when it is accepted.
	ReadTimeout time.Duration
	// WriteTimeout bounds writing the reply.
	WriteTimeout time.Duration
	// RequestTimeout is the deadline of the context given to the
	// Authenticator. When it passes the client is answered NO at once.
	RequestTimeout time.Duration
	// DrainTimeout bounds how long, after replying, the server waits for the
	// client to close (Cyrus drains to EOF with no bound). Only TCP
	// connections and malformed requests are drained; see isUnix.
	DrainTimeout time.Duration
	// MaxConns caps the requests being decided at once (across all listeners).
	MaxConns int
	// MaxPending caps the connections whose request is being read or
	// waits for a decision slot; more wait in the kernel backlog.
	MaxPending int
	// MaxPendingPerPeer caps MaxPending for one peer uid (SO_PEERCRED) on
	// a Unix socket, so one local user cannot take every place; a
	// connection over it is closed at once. Default MaxPending/4; -1 = off.
	MaxPendingPerPeer int
	// MaxFieldSize limits each request field; see ReadOptions.
	MaxFieldSize int
	// ClientAddrWait is the wait for the optional fifth field; see ReadOptions.
	ClientAddrWait time.Duration
	// ReplyReasons sends the decision's reason to the client ("NO wrong
	// password"). Off: every refusal is "NO authentication failed" and a
	// temporary failure "NO temporary failure", so a client learns
	// nothing about the account; the log has the reason. For labs.
	ReplyReasons bool

	initOnce sync.Once
	slots    chan struct{} // decision slots
	pending  chan struct{} // places for connections being read
	waiting  chan struct{} // failure answers held back by the throttle's delay
	done     chan struct{} // closed when shutting down
	aborted  chan struct{} // closed when Shutdown gives up
	work     chan *conn    // idle workers wait here for a connection
	idlers   atomic.Int32  // workers waiting on work (or about to)
	loops    sync.WaitGroup

	mu           sync.Mutex
	closing      bool
	listeners    map[*net.Listener]struct{}
	conns        map[*conn]struct{}
	perPeer      map[uint32]int // pending connections per peer uid
	active       int            // connections still being served (until their Authenticator returns)
	idle         chan struct{}  // closed when active drops to 0 while closing
	abortOnce    sync.Once
	lastPeerWarn atomic.Int64 // unix second of the last per-peer warning
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		n := s.MaxConns
		if n <= 0 {
			n = DefaultMaxConns
		}
		p := s.MaxPending
		if p <= 0 {
			p = DefaultMaxPending
		}
		s.slots = make(chan struct{}, n)
		s.pending = make(chan struct{}, p)
		s.waiting = make(chan struct{}, p)
		s.done = make(chan struct{})
		s.aborted = make(chan struct{})
		s.work = make(chan *conn)
		s.listeners = make(map[*net.Listener]struct{})
		s.conns = make(map[*conn]struct{})
		s.perPeer = make(map[uint32]int)
	})
}

func (s *Server) maxPerPeer() int {
	switch {
	case s.MaxPendingPerPeer < 0:
		return 0
	case s.MaxPendingPerPeer > 0:
		return s.MaxPendingPerPeer
	}
	return max(1, cap(s.pending)/4)
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

// Serve accepts connections on l and answers each in its own goroutine. It
// always returns a non-nil error and closes l; after Shutdown or Close it
// returns ErrServerClosed. Call it once per listener; they share the limits.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	if s.Authenticator == nil {
		l.Close()
		return errors.New("saslauthd: Server.Authenticator is nil")
	}
	if !s.trackListener(&l, true) {
		l.Close()
		return ErrServerClosed
	}
	s.loops.Add(1)
	defer s.loops.Done()
	defer s.trackListener(&l, false)
	defer l.Close()

	addr := l.Addr().String()
	log := s.logger()
	var backoff time.Duration
	var lastFullWarn time.Time
	for {
		// When every pending place is taken, stop accepting: connections
		// wait in the kernel backlog, in order. Answering "NO busy" instead
		// would turn a burst into failed logins that mail clients show as a
		// wrong password and fail2ban counts.
		if !s.waitPending(addr, &lastFullWarn) {
			return ErrServerClosed
		}
		if s.shuttingDown() && !setDeadline(l, time.Now().Add(drainWindow)) {
			<-s.pending
			return ErrServerClosed
		}
		c, err := l.Accept()
		if err != nil {
			<-s.pending
			if s.shuttingDown() {
				return ErrServerClosed // the backlog is drained, or the listener closed
			}
			if !temporary(err) {
				return fmt.Errorf("saslauthd: accept on %s: %w", addr, err)
			}
			// Like net/http: back off 5ms doubling to 1s, so EMFILE does not spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Error("saslauthd: accept failed, retrying", "socket", addr, "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.done:
				t.Stop()
			}
			continue
		}
		backoff = 0
		r := &conn{s: s, c: c, addr: addr, pending: true}
		if uid, ok := peerUID(c); ok && s.maxPerPeer() > 0 {
			if !s.addPeer(uid) {
				<-s.pending
				s.refusePeer(addr, uid)
				c.Close()
				continue
			}
			r.peer, r.hasPeer = uid, true
		}
		if !s.trackConn(r) {
			r.releasePending()
			c.Close()
			return ErrServerClosed
		}
		s.dispatch(r)
	}
}

// setDeadline sets an accept deadline on listeners that have one; false
// means l cannot drain (it is then closed instead).
func setDeadline(l net.Listener, t time.Time) bool {
	if dl, ok := l.(interface{ SetDeadline(time.Time) error }); ok {
		return dl.SetDeadline(t) == nil
	}
	return false
}

// waitPending blocks until a pending place is free and takes it. It
// returns false when Shutdown has given up (while shutting down, queued
// connections are still taken in, to be answered).
func (s *Server) waitPending(addr string, lastWarn *time.Time) bool {
	select {
	case s.pending <- struct{}{}:
		return true
	default:
	}
	if time.Since(*lastWarn) > 10*time.Second { // once per episode, not per connection
		*lastWarn = time.Now()
		s.logger().Warn("saslauthd: pending connection limit reached, waiting for a free place",
			"socket", addr, "max_pending", cap(s.pending))
	}
	select {
	case s.pending <- struct{}{}:
		return true
	case <-s.aborted:
		return false
	}
}

func (s *Server) addPeer(uid uint32) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perPeer[uid] >= s.maxPerPeer() {
		return false
	}
	s.perPeer[uid]++
	return true
}

func (s *Server) removePeer(uid uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perPeer[uid]--; s.perPeer[uid] <= 0 {
		delete(s.perPeer, uid)
	}
}

// refusePeer logs a connection closed because its peer uid holds too many
// pending ones (at most once a second per server: an attack must not
// flood the log).
func (s *Server) refusePeer(addr string, uid uint32) {
	now := time.Now().Unix()
	if s.lastPeerWarn.Swap(now) != now {
		s.logger().Warn("saslauthd: peer holds too many pending connections; closing new ones",
			"socket", addr, "uid", uid, "max_pending_per_peer", s.maxPerPeer())
	}
}

// maxIdleWorkers bounds the goroutines kept waiting for connections.
const maxIdleWorkers = 64

// dispatch hands a connection to an idle worker, or to a new one. Reusing
// goroutines matters for CPU: a fresh goroutine starts on a 2 KB stack, and
// every request would grow (copy) it on the way down through reading,
// deciding and logging; a worker's stack has grown once already.
func (s *Server) dispatch(r *conn) {
	select {
	case s.work <- r:
	default:
		go s.worker(r)
	}
}

// worker serves r, then further connections from dispatch. It exits when
// enough others are idle, or on shutdown.
func (s *Server) worker(r *conn) {
	for {
		r.serve()
		r = nil // nothing of a finished connection stays reachable
		if s.idlers.Add(1) > maxIdleWorkers {
			s.idlers.Add(-1)
			return
		}
		select {
		case r = <-s.work:
			s.idlers.Add(-1)
		case <-s.done: // connections drained after this get a goroutine each
			s.idlers.Add(-1)
			return
		}
	}
}

// takeSlot waits for a decision slot; false when Shutdown gave up first.
func (s *Server) takeSlot() bool {
	select {
	case s.slots <- struct{}{}:
		return true
	default:
	}
	select {
	case s.slots <- struct{}{}:
		return true
	case <-s.aborted:
		return false
	}
}

// temporary reports accept errors worth retrying: resource exhaustion and
// connections aborted before we got to them.
func temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS,
		syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN, syscall.EPROTO} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func (s *Server) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

func (s *Server) trackListener(l *net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.closing {
			return false
		}
		s.listeners[l] = struct{}{}
	} else {
		delete(s.listeners, l)
	}
	return true
}

// trackConn registers a connection as active; false means Shutdown gave
// up and the connection must be dropped. (Connections accepted while
// shutting down are the backlog being drained: they are served.)
func (s *Server) trackConn(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	select {
	case <-s.aborted:
		return false
	default:
	}
	s.conns[c] = struct{}{}
	s.active++
	return true
}

// finish ends one connection's activity and wakes Shutdown when nothing is
// left.
func (s *Server) finish(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.active--
	if s.active == 0 && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
	s.mu.Unlock()
}

// Shutdown stops accepting new connections but answers those already
// queued in the listeners' backlogs, lets requests in flight finish and
// waits for them. If ctx ends first it cancels the requests still running
// (their clients get NO), closes their connections and returns ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.beginClose()
	done := make(chan struct{})
	go func() {
		s.loops.Wait() // backlogs drained
		<-s.idleChan() // and every connection answered
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.abort()
		<-done
		return ctx.Err()
	}
}

// Close stops every Serve, cancels running requests and closes their
// connections at once.
func (s *Server) Close() error {
	s.init()
	s.beginClose()
	s.abort()
	return nil
}

func (s *Server) beginClose() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return
	}
	s.closing = true
	close(s.done)
	for l := range s.listeners {
		// Wake the accept loop; it takes in what is queued, then stops.
		if !setDeadline(*l, time.Now().Add(drainWindow)) {
			(*l).Close()
		}
	}
}

// idleChan is closed once no connection is active.
func (s *Server) idleChan() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	idle := make(chan struct{})
	switch {
	case s.active == 0:
		close(idle)
	case s.idle != nil:
		idle = s.idle
	default:
		s.idle = idle
	}
	return idle
}

func (s *Server) abort() {
	s.abortOnce.Do(func() { close(s.aborted) })
	s.mu.Lock()
	defer s.mu.Unlock()
	for l := range s.listeners {
		(*l).Close()
	}
	for r := range s.conns {
		go r.abort() // may answer its client: not under s.mu
		r.c.Close()
	}
}

// decision is what gets logged about one connection.
type decision struct {
	req      auth.Request
	ok       bool
	outcome  string
	cause    auth.Cause
	reason   string
	malform  error
	panicked bool
}

func (r *conn) serve() {
	s := r.s
	r.start = time.Now()
	defer r.end()

	// One deadline, one runtime timer, for the read and (usually) the write.
	r.readDeadline = r.start.Add(orDefault(s.ReadTimeout, DefaultReadTimeout))
	r.c.SetDeadline(r.readDeadline)
	req, err := ReadRequest(r.c, ReadOptions{
		MaxFieldSize:   s.MaxFieldSize,
		ClientAddrWait: s.ClientAddrWait,
		Deadline:       r.readDeadline,
	})

	// What gets logged, and what the request's context (which a backend
	// might keep) holds: never the password.
	r.d.req = req
	r.d.req.Password = ""
	// The request is in (or will never be): the pending place goes back
	// before this connection waits for anything else.
	r.releasePending()
	switch {
	case errors.Is(err, ErrEmptyLogin), errors.Is(err, ErrEmptyPassword):
		r.d.outcome, r.d.reason = auth.Reject.String(), strings.TrimPrefix(err.Error(), "saslauthd: ")
	case err != nil:
		r.d.malform = err
	default:
		if !s.takeSlot() {
			r.d.outcome, r.d.reason = auth.TempFail.String(), "server shutting down"
			break
		}
		r.hasSlot = true
		r.decide(req)
		return
	}
	// Always try to answer, even a malformed or cut-off request: a client
	// that only half-closed can still read its NO; one that left costs a
	// failed write.
	s.reply(r, &r.d)
}

// end releases what serve held: the connection, its pending place if
// the request never came, its activity unit and its decision slot (held
// until the Authenticator returned, even if the client was answered
// before).
func (r *conn) end() {
	s := r.s
	// Last line of defence: a bug here must cost one connection, not the daemon.
	if p := recover(); p != nil {
		s.logger().Error("saslauthd: panic serving connection", "socket", r.addr,
			"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	}
	r.c.Close()
	r.releasePending()
	s.finish(r)
	if r.hasSlot {
		<-s.slots
	}
}

// releasePending gives back the connection's pending place (and its
// peer's count), once.
func (r *conn) releasePending() {
	if !r.pending {
		return
	}
	r.pending = false
	if r.hasPeer {
		r.s.removePeer(r.peer)
	}
	<-r.s.pending
}

// decide runs the Authenticator in the connection's goroutine, with a
// context whose deadline is RequestTimeout and a panic guard, and replies.
// If the Authenticator overruns its deadline, or Shutdown gives up on it,
// the context's AfterFunc answers the client at once (tempfail) while this
// goroutine waits for the call: the connection's slot stays taken until
// the call returns, so a stuck backend can never pile up more calls than
// MaxConns.
func (r *conn) decide(req auth.Request) {
	s := r.s
	timeout := orDefault(s.RequestTimeout, DefaultRequestTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r.mu.Lock()
	if r.aborted { // Shutdown gave up before the request was read
		r.answered = true
		r.mu.Unlock()
		r.d.outcome, r.d.reason = auth.TempFail.String(), "server shutting down"
		s.reply(r, &r.d)
		return
	}
	r.running = true
	r.cancelReq = cancel
	r.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { r.interrupt(ctx.Err()) })

	v, panicked := s.callAuthenticator(ctx, req)

	fired := !stop() // the deadline or Shutdown ended the call first
	r.mu.Lock()
	r.running = false
	r.cancelReq = nil
	late, wd := r.answered, r.watchdogd
	r.answered = true
	r.mu.Unlock()
	if late {
		<-wd // the interrupt answered; let it finish before the connection closes
		return
	}
	d := &r.d
	if fired {
		// The interrupt is on its way but has not answered yet: a verdict
		// that comes after the deadline is answered as the interrupt
		// would answer it, never as an accept.
		d.outcome, d.reason = auth.TempFail.String(), interruptReason(ctx.Err())
		s.reply(r, d)
		return
	}
	d.panicked = panicked
	d.ok = v.Outcome == auth.Accept
	d.outcome, d.cause, d.reason = v.Outcome.String(), v.Cause, v.Reason
	if !d.ok && d.reason == "" {
		d.reason = "authentication failed"
	}
	if !d.ok && v.Delay > 0 {
		r.wait(v.Delay)
	}
	s.reply(r, d)
}

// wait holds a failure's answer back for d (the throttle's delay) after
// giving the decision slot back, so a guesser's delays cost no one else a
// slot. At most MaxPending answers wait at once; past that, and on
// shutdown, they go out at once.
func (r *conn) wait(d time.Duration) {
	s := r.s
	<-s.slots
	r.hasSlot = false
	select {
	case s.waiting <- struct{}{}:
	default:
		return
	}
	defer func() { <-s.waiting }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-s.done:
	}
}

// callAuthenticator calls the Authenticator, turning a panic into a
// tempfail.
func (s *Server) callAuthenticator(ctx context.Context, req auth.Request) (auth.Verdict, bool) {
	v, p := auth.Recover(req, func() auth.Verdict { return s.Authenticator.Authenticate(ctx, req) })
	if p != nil {
		s.logger().Error("saslauthd: authenticator panicked", "user", req.User,
			"service", req.Service, "panic", p.Value, "stack", string(p.Stack))
	}
	return v, p != nil
}

// reply writes the answer for d, logs the decision and, where needed,
// drains the connection.
func (s *Server) reply(r *conn, d *decision) {
	c := r.c
	// The write deadline is still the read deadline. The reply is one small
	// write into an empty socket buffer, so keep it while at least half of
	// WriteTimeout is left; otherwise (a slow backend) give the write a
	// fresh WriteTimeout. Either way the write is bounded.
	if wt := orDefault(s.WriteTimeout, DefaultWriteTimeout); time.Until(r.readDeadline) < wt/2 {
		c.SetWriteDeadline(time.Now().Add(wt))
	}
	text := d.reason
	switch {
	case d.malform != nil:
		text = "malformed request"
	case d.ok, s.ReplyReasons:
	case d.outcome == auth.TempFail.String():
		text = "temporary failure"
	default:
		// The same text for a wrong password, an unknown user, a refused
		// host or a throttled guess: the client learns nothing about the
		// account; the log line says which.
		text = "authentication failed"
	}
	replied := true
	if werr := WriteReply(c, d.ok, text); werr != nil {
		replied = false
		if d.malform == nil {
			d.reason += " (reply not delivered: " + werr.Error() + ")"
		}
	}
	s.logDecision(s.logger(), r.addr, d, time.Since(r.start))
	if replied && (d.malform != nil || !isUnix(c)) {
		s.drain(c)
	}
}

// isUnix reports a Unix-domain stream connection. Its reply needs no drain:
// a write lands in the peer's receive queue at once, and closing our end
// (net/unix/af_unix.c unix_release_sock) frees only our own receive queue,
// so the client reads the whole reply after we close. Unread bytes it sent
// only turn its read after the reply into ECONNRESET instead of EOF, and
// libsasl2 never reads past the reply. TCP instead answers unread data with
// a reset that can destroy the reply in flight, so it keeps the drain. A
// malformed request keeps it too: that client may still be writing.
func isUnix(c net.Conn) bool {
	_, ok := c.(*net.UnixConn)
	return ok
}

// drain does what Cyrus does after replying: shut the write side, then read
// until the client closes, so closing never resets a connection whose reply
// is still unread. Bounded in time and bytes. Used for TCP and for
// malformed requests (see isUnix).
func (s *Server) drain(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(orDefault(s.DrainTimeout, DefaultDrainTimeout)))
	var buf [512]byte
	for n := 0; n < maxDrain; {
		m, err := c.Read(buf[:])
		n += m
		if err != nil {
			return
		}
	}
}

func (s *Server) logDecision(log *slog.Logger, addr string, d *decision, took time.Duration) {
	if d.malform != nil {
		level := slog.LevelWarn
		if errors.Is(d.malform, ErrNoRequest) {
			level = slog.LevelInfo // a probe that connects and leaves is not an attack
		}
		log.LogAttrs(context.Background(), level, "saslauthd: malformed request",
			slog.String("socket", addr), slog.String("reason", d.malform.Error()),
			slog.Duration("duration", took))
		return
	}
	level := slog.LevelInfo
	if d.outcome == auth.TempFail.String() || d.panicked {
		level = slog.LevelWarn
	}
	log.LogAttrs(context.Background(), level, "saslauthd: decision",
		slog.String("user", d.req.User),
		slog.String("realm", d.req.Realm),
		slog.String("service", d.req.Service),
		slog.String("client", d.req.ClientAddr),
		slog.String("outcome", d.outcome),
		slog.String("cause", d.cause.String()),
		slog.String("reason", d.reason),
		slog.String("socket", addr),
		slog.Duration("duration", took))
}
