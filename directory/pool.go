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

// downFor is how long a server that failed is skipped while another one
// answers, so a dead first URL does not cost a dial on every request.
const downFor = 30 * time.Second

type server struct {
	url       string
	addr      string // host:port
	ldaps     bool
	tls       *tls.Config // nil: no TLS
	downUntil atomic.Int64
}

func (s *server) markDown() { s.downUntil.Store(time.Now().Add(downFor).UnixNano()) }
func (s *server) isDown(now time.Time) bool {
	return now.UnixNano() < s.downUntil.Load()
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
	bind(dn, password string) error
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
	reused bool // came from the idle pool (may be stale)
	broken bool // must not be reused
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

// get returns an idle connection or dials a new one. It waits for a free
// slot at most until ctx ends or the configured timeout passes.
func (p *pool) get(ctx context.Context) (*conn, error) {
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
	for {
		select {
		case c := <-p.idle:
			if !c.cl.idleOK() { // the server went away while it idled
				c.cl.close()
				continue
			}
			c.reused = true
			return c, nil
		default:
		}
		c, err := p.d.dial(ctx, p.role)
		if err != nil {
			<-p.slots
			return nil, err
		}
		return c, nil
	}
}

// put returns c to the idle pool, or closes it if it is broken or the pool is full.
func (p *pool) put(c *conn) {
	if c.broken || c.cl.dead() || p.d.closed.Load() || p.d.retired.Load() {
		c.cl.close()
	} else {
		select {
		case p.idle <- c:
		default:
			c.cl.close()
		}
	}
	<-p.slots
}

func (p *pool) drain() {
	for {
		select {
		case c := <-p.idle:
			c.cl.close()
		default:
			return
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

// dial connects to the first usable server: servers not recently failed
// first, in configured order, then the failed ones (better to try than to
// give up while one may be back).
func (d *Directory) dial(ctx context.Context, r role) (*conn, error) {
	var c *conn
	err := d.eachServer(ctx, r.String(), func(s *server) error {
		var err error
		c, err = d.dialServer(ctx, s, r, d.cfg.Client)
		return err
	})
	return c, err
}

// eachServer calls try with the servers in dial's order until one
// succeeds, marking those that fail as down.
func (d *Directory) eachServer(ctx context.Context, what string, try func(*server) error) error {
	now := time.Now()
	var lastErr error
	for pass := 0; pass < 2; pass++ {
		for _, s := range d.servers {
			if s.isDown(now) != (pass == 1) {
				continue
			}
			if err := ctx.Err(); err != nil {
				if lastErr == nil {
					lastErr = err
				}
				return lastErr
			}
			err := try(s)
			if err == nil {
				return nil
			}
			s.markDown()
			lastErr = fmt.Errorf("%s: %w", s.url, err)
			d.log.Debug("ldap server failed", "url", s.url, "role", what, "err", err)
		}
	}
	return lastErr
}

// dialServer is the one way a connection is made: TCP (and the TLS
// handshake for ldaps://), StartTLS when configured, then the chosen client
// on top and, for the search role, the service account's bind.
func (d *Directory) dialServer(ctx context.Context, s *server, r role, kind string) (*conn, error) {
	deadline := opDeadline(ctx, d.cfg.Timeout)
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
		if err := cl.bind(d.cfg.BindDN, d.cfg.BindPassword); err != nil {
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

// run performs f on c with the operation deadline set on the connection;
// ctx cancellation also interrupts it. timedOut reports that the deadline
// (not the server) ended the operation.
func (d *Directory) run(ctx context.Context, c *conn, f func(*conn) error) (timedOut bool, err error) {
	deadline := opDeadline(ctx, d.cfg.Timeout)
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

// do runs f on a connection of pool p. A stale pooled connection (the
// server restarted) gets one retry on a fresh connection; timeouts and LDAP
// results (invalid credentials above all) are never retried.
func (d *Directory) do(ctx context.Context, p *pool, f func(*conn) error) (srv string, err error) {
	for attempt := 0; ; attempt++ {
		c, err := p.get(ctx)
		if err != nil {
			return "", timeoutErr(ctx, err)
		}
		timedOut, err := d.run(ctx, c, f)
		if err == nil || !IsConnection(err) {
			p.put(c)
			return c.srv.url, err
		}
		c.broken = true
		p.put(c)
		if timedOut || !c.reused {
			c.srv.markDown()
		}
		if timedOut || !c.reused || attempt > 0 || ctx.Err() != nil {
			if timedOut {
				err = fmt.Errorf("%s: %w: %w", c.srv.url, ErrTimeout, err)
			} else {
				err = fmt.Errorf("%s: %w", c.srv.url, err)
			}
			return c.srv.url, err
		}
	}
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
