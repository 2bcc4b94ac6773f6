package directory

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Probing a server that failed: the first probe after probeFirst, then
// twice as long each time up to probeMax, until it answers.
const (
	probeFirst = 500 * time.Millisecond
	probeMax   = 30 * time.Second
)

type server struct {
	url   string
	addr  string // host:port
	ldaps bool
	tls   *tls.Config // nil: no TLS
	h     *health     // shared by the Directories of one Shared
}

type role int

const (
	roleSearch role = iota // bound as the service account (or anonymous); searches
	roleBind               // user binds only; left bound as whoever bound last
)

func (r role) String() string {
	if r == roleSearch {
		return "search"
	}
	return "bind"
}

// client is one LDAP connection as the pool uses it: the wire client
// (wireconn.go) or go-ldap's (goldap.go). One goroutine at a time; the
// caller sets deadlines on the conn's net.Conn.
type client interface {
	// bind is a simple bind; policy adds the password policy request
	// control, and the Policy is what the response controls said.
	bind(dn, password string, policy bool) (Policy, error)
	search(r *searchRequest) (*ldap.SearchResult, error)
	// idleOK tells whether an idle connection may be handed out.
	idleOK() bool
	// dead reports that the connection is known to be unusable.
	dead() bool
	// close sends an UnbindRequest when the connection is healthy, then
	// closes it.
	close()
}

// conn is one pooled connection with the net.Conn requests go over, whose
// deadline bounds every operation.
type conn struct {
	cl     client
	nc     net.Conn
	srv    *server
	reused bool    // came from the idle pool (may be stale)
	broken bool    // must not be reused
	budget *budget // holds one of its connections; nil when not counted
}

// close closes the connection and gives its place in the budget back.
func (c *conn) close() {
	c.cl.close()
	if c.budget != nil {
		c.budget.release()
		c.budget = nil
	}
}

// pool lets at most MaxConns connections of one role be in use at once, and
// keeps every healthy one idle for reuse. (Keeping only PoolSize idle made
// every request above PoolSize concurrent dial a new connection, bind the
// service account and close it again: under sustained load that doubled
// slapd's work per login.)
type pool struct {
	d     *Directory
	role  role
	idle  chan *conn
	slots chan struct{}
	waits atomic.Uint64 // gets that found every slot taken
}

func (p *pool) stats() PoolStats {
	return PoolStats{InUse: len(p.slots), Idle: len(p.idle), Waits: p.waits.Load()}
}

func newPool(d *Directory, r role) *pool {
	return &pool{d: d, role: r, idle: make(chan *conn, d.cfg.MaxConns), slots: make(chan struct{}, d.cfg.MaxConns)}
}

// get returns an idle connection (unless fresh) or dials a new one to a
// server not in tried. It waits for a free slot at most until ctx ends or
// the configured timeout passes.
func (p *pool) get(ctx context.Context, fresh bool, tried []*server) (*conn, error) {
	select {
	case p.slots <- struct{}{}:
	default:
		p.waits.Add(1)
		t := time.NewTimer(p.d.cfg.Timeout)
		select {
		case p.slots <- struct{}{}:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return nil, ErrBusy
		case <-t.C:
			return nil, ErrBusy
		}
	}
	if p.d.closed.Load() {
		<-p.slots
		return nil, ErrClosed
	}
	for !fresh {
		var c *conn
		select {
		case c = <-p.idle:
		default:
		}
		if c == nil {
			break
		}
		switch {
		case !c.cl.idleOK(): // the server closed it while it idled (restart, idle timeout)
			p.d.stats.staleIdle.Add(1)
			c.close()
		case c.srv.h.down.Load():
			// Its server failed since: do not spend a request on it. Pass
			// it over (closed) while another server may answer.
			c.close()
		default:
			c.reused = true
			return c, nil
		}
	}
	if err := p.d.budget.acquire(ctx, opDeadline(ctx, p.d.cfg.Timeout), p); err != nil {
		<-p.slots
		return nil, err
	}
	c, err := p.d.dial(ctx, p.role, tried)
	if err != nil {
		p.d.budget.release()
		<-p.slots
		return nil, err
	}
	c.budget = p.d.budget
	return c, nil
}

// put returns c to the idle pool, or closes it if it is broken or the pool is full.
func (p *pool) put(c *conn) {
	if c.broken || c.cl.dead() || p.d.closed.Load() || p.d.retired.Load() {
		c.close()
	} else {
		select {
		case p.idle <- c:
		default:
			c.close()
		}
	}
	<-p.slots
}

func (p *pool) drain() {
	for p.closeIdle() {
	}
}

// closeIdle closes one idle connection, if there is one.
func (p *pool) closeIdle() bool {
	select {
	case c := <-p.idle:
		c.close()
		return true
	default:
		return false
	}
}

// closeIdleTo closes the idle connections to s.
func (p *pool) closeIdleTo(s *server) {
	var keep []*conn
	for {
		var c *conn
		select {
		case c = <-p.idle:
		default:
		}
		if c == nil {
			break
		}
		if c.srv == s {
			c.close()
		} else {
			keep = append(keep, c)
		}
	}
	for _, c := range keep {
		select {
		case p.idle <- c:
		default:
			c.close()
		}
	}
}

// opDeadline is the earlier of now+timeout and ctx's deadline.
func opDeadline(ctx context.Context, timeout time.Duration) time.Time {
	d := time.Now().Add(timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		return cd
	}
	return d
}

// attemptDeadline bounds one attempt (a dial, or an operation) on one
// server: ldap.timeout, or the caller's deadline when sooner; and when
// another server could still be tried after this one, at most half of
// what is left of the caller's deadline, so that a server that accepts
// connections and never answers leaves time for the next one within the
// same request.
func (d *Directory) attemptDeadline(ctx context.Context, more bool) time.Time {
	now := time.Now()
	dl := now.Add(d.cfg.Timeout)
	cd, ok := ctx.Deadline()
	if !ok {
		return dl
	}
	if more {
		if half := now.Add(cd.Sub(now) / 2); half.Before(dl) {
			dl = half
		}
	}
	if cd.Before(dl) {
		dl = cd
	}
	return dl
}

// untried reports whether a server other than those in tried (and
// except) is left.
func (d *Directory) untried(tried []*server, except *server) bool {
	for _, s := range d.servers {
		if s != except && !contains(tried, s) {
			return true
		}
	}
	return false
}

func contains(list []*server, s *server) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// dial connects to the first usable server not in tried (see eachServer).
func (d *Directory) dial(ctx context.Context, r role, tried []*server) (*conn, error) {
	var c *conn
	err := d.eachServer(ctx, r.String(), tried, func(s *server, deadline time.Time) error {
		var err error
		c, err = d.dialServer(ctx, s, deadline, r, d.cfg.Client)
		return err
	})
	return c, err
}

// eachServer calls try with the servers in dial's order until one
// succeeds, marking those that fail as down: servers that answer first, in
// configured order, then the failed ones (better to try than to give up
// while one may be back); never those in tried. Each try gets its own
// deadline (attemptDeadline).
func (d *Directory) eachServer(ctx context.Context, what string, tried []*server, try func(*server, time.Time) error) error {
	var lastErr error
	var order []*server
	for pass := 0; pass < 2; pass++ {
		for _, s := range d.servers {
			if !contains(tried, s) && d.skip(s) == (pass == 1) {
				order = append(order, s)
			}
		}
	}
	for i, s := range order {
		if err := ctx.Err(); err != nil {
			if lastErr == nil {
				lastErr = err
			}
			return lastErr
		}
		err := try(s, d.attemptDeadline(ctx, i < len(order)-1))
		if err == nil {
			// Not marked up yet: a black hole accepts TCP connections too.
			// The first LDAP answer on the connection does (do), or a probe.
			return nil
		}
		if !errors.Is(err, ErrServiceBind) { // the server answered: a configuration error
			d.markDown(s, err)
		}
		lastErr = fmt.Errorf("%s: %w", s.url, err)
		d.log.Debug("ldap server failed", "url", s.url, "role", what, "err", err)
	}
	if lastErr == nil {
		lastErr = ldap.NewError(ldap.ErrorNetwork, errors.New("ldap: no server left to try"))
	}
	return lastErr
}

// dialServer is the one way a connection is made: TCP (and the TLS
// handshake for ldaps://), StartTLS when configured, then the chosen client
// on top and, for the search role, the service account's bind, all before
// deadline.
func (d *Directory) dialServer(ctx context.Context, s *server, deadline time.Time, r role, kind string) (*conn, error) {
	dl := net.Dialer{Deadline: deadline}
	raw, err := dl.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return nil, err
	}
	// This deadline covers the handshakes and the service bind; the
	// caller's operation sets its own.
	raw.SetDeadline(deadline)
	nc := raw
	if s.ldaps {
		tc := tls.Client(raw, s.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			raw.Close()
			return nil, fmt.Errorf("TLS handshake: %w", err)
		}
		nc = tc
	}
	wc := newWireConn(nc, raw)
	if s.tls != nil && !s.ldaps {
		if err := wc.startTLS(ctx, s.tls); err != nil {
			wc.close()
			return nil, fmt.Errorf("StartTLS: %w", err)
		}
		nc = wc.nc
	}
	var cl client = wc
	if kind == ClientGoLDAP {
		cl = newGoLDAPConn(nc, s.tls != nil)
	}
	if r == roleSearch && d.cfg.BindDN != "" {
		if _, err := cl.bind(d.cfg.BindDN, d.cfg.BindPassword, false); err != nil {
			cl.close()
			if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
				return nil, fmt.Errorf("%w (%s)", ErrServiceBind, d.cfg.BindDN)
			}
			return nil, err
		}
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		cl.close()
		return nil, err
	}
	return &conn{cl: cl, nc: nc, srv: s}, nil
}

var longAgo = time.Unix(1, 0)

// run performs f on c with deadline set on the connection; ctx
// cancellation also interrupts it. timedOut reports that the deadline (not
// the server) ended the operation.
func (d *Directory) run(ctx context.Context, c *conn, deadline time.Time, f func(*conn) error) (timedOut bool, err error) {
	c.nc.SetDeadline(deadline)
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { c.nc.SetDeadline(longAgo) })
	}
	err = f(c)
	if stop != nil && !stop() {
		c.broken = true // the cancel may set its deadline at any moment now
	}
	if err != nil && !time.Now().Before(deadline) {
		timedOut = true
	}
	if !c.broken {
		c.nc.SetDeadline(time.Time{})
	}
	return timedOut, err
}

// do runs f on a connection of pool p, and on another one when the first
// fails at the connection level, as long as the caller's deadline allows:
//
//   - A pooled connection that fails (the server closed it after its idle
//     timeout or a restart, or it went silent) is retried once on a FRESH
//     connection, never on the next idle one, which is likely as stale.
//   - A server that fails on a fresh connection (refused, reset, no answer
//     within the attempt's deadline) is marked down and the next server is
//     tried in the same request; attemptDeadline splits the time left so
//     that there is time for it. Once per request, a server that closed or
//     refused a fresh connection (rather than not answering) gets a second
//     fresh one.
//
// LDAP results (invalid credentials above all) are answers: never retried.
func (d *Directory) do(ctx context.Context, p *pool, f func(*conn) error) (srv string, err error) {
	var tried []*server
	fresh := false
	// once: one more fresh attempt, on the same servers, after a server
	// closed or refused a fresh connection (not after a timeout): a server
	// reaping connections under load, or restarting, costs an instant.
	once := true
	var lastErr error
	for {
		c, err := p.get(ctx, fresh, tried)
		if err != nil {
			if once && fresh && retryable(ctx, err) {
				once = false
				lastErr = err
				continue
			}
			if lastErr != nil && (errors.Is(err, ErrBusy) || ctx.Err() != nil) {
				err = lastErr // say why the first attempt failed, not that the retry could not start
			}
			return "", timeoutErr(ctx, err)
		}
		more := c.reused || d.untried(tried, c.srv)
		timedOut, err := d.run(ctx, c, d.attemptDeadline(ctx, more), f)
		if err == nil || !IsConnection(err) {
			d.markUp(c.srv)
			p.put(c)
			return c.srv.url, err
		}
		c.broken = true
		p.put(c)
		if timedOut {
			lastErr = fmt.Errorf("%s: %w: %w", c.srv.url, ErrTimeout, err)
		} else {
			lastErr = fmt.Errorf("%s: %w", c.srv.url, err)
		}
		switch {
		case c.reused && !fresh:
			// Stale, most likely; the server may be fine. A timeout
			// still marks it down (it may be hung): the retry then
			// prefers another server, and the prober clears the mark as
			// soon as this one answers.
			if timedOut {
				// Went silent while idle (a middlebox dropped it) or the
				// server hangs: the other idle connections to it, no
				// younger, are no better. Close them rather than let
				// the next requests wait on them too.
				d.markDown(c.srv, err)
				d.search.closeIdleTo(c.srv)
				d.bind.closeIdleTo(c.srv)
			}
		case once && !timedOut:
			once = false
			d.markDown(c.srv, err)
		default:
			d.markDown(c.srv, err)
			tried = append(tried, c.srv)
		}
		stale := !fresh
		fresh = true
		if ctx.Err() != nil || !d.untried(tried, nil) {
			return c.srv.url, lastErr
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= 0 {
			return c.srv.url, lastErr
		}
		if stale && c.reused {
			d.stats.staleRetries.Add(1)
		} else {
			d.stats.failovers.Add(1)
		}
		d.log.Debug("ldap operation failed, retrying on a fresh connection", "url", c.srv.url, "role", p.role, "err", err)
	}
}

// retryable reports a failed dial worth one more try: the server closed
// or refused the connection; not a timeout (the time is spent), a busy
// pool, a refused certificate or service account (the same again).
func retryable(ctx context.Context, err error) bool {
	var ne net.Error
	return ctx.Err() == nil && !errors.Is(err, ErrBusy) && !errors.Is(err, ErrClosed) &&
		!errors.Is(err, ErrServiceBind) && !IsCertificate(err) && !errors.Is(err, ErrTimeout) &&
		!errors.Is(err, context.DeadlineExceeded) && !(errors.As(err, &ne) && ne.Timeout())
}

// timeoutErr marks a dial that ended by a deadline (the caller's or ours)
// as ErrTimeout, so that callers need not know net's error types.
func timeoutErr(ctx context.Context, err error) error {
	var ne net.Error
	if errors.Is(err, ErrTimeout) || errors.Is(err, ErrBusy) || errors.Is(err, ErrClosed) || errors.Is(err, ErrServiceBind) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		(errors.As(err, &ne) && ne.Timeout()) || ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return err
}
