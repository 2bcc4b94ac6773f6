package ldapauth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
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

// conn is one pooled LDAP connection (a synchronous wireConn, see
// wireconn.go) with the net.Conn requests go over, whose deadline bounds
// every operation.
type conn struct {
	wc     *wireConn
	nc     net.Conn
	srv    *server
	reused bool // came from the idle pool (may be stale)
	broken bool // must not be reused
}

func (c *conn) close() { c.wc.close() }

// closing reports that the connection is known to be unusable.
func (c *conn) closing() bool { return c.wc.dead }

// idleOK tells whether an idle connection may be handed out.
func (c *conn) idleOK() bool { return c.wc.idleOK() }

// pool lets at most MaxConns connections of one role be in use at once, and
// keeps every healthy one idle for reuse. (Keeping only PoolSize idle made
// every request above PoolSize concurrent dial a new connection, bind the
// service account and close it again: under sustained load that doubled
// slapd's work per login.)
type pool struct {
	a     *Authenticator
	role  role
	idle  chan *conn
	slots chan struct{}
}

func newPool(a *Authenticator, r role) *pool {
	return &pool{a: a, role: r, idle: make(chan *conn, a.cfg.MaxConns), slots: make(chan struct{}, a.cfg.MaxConns)}
}

var errBusy = errors.New("all LDAP connections busy")
var errClosed = errors.New("authenticator closed")

// get returns an idle connection or dials a new one. It waits for a free
// slot at most until ctx ends or the configured timeout passes.
func (p *pool) get(ctx context.Context) (*conn, error) {
	select {
	case p.slots <- struct{}{}:
	default:
		t := time.NewTimer(p.a.cfg.Timeout)
		select {
		case p.slots <- struct{}{}:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return nil, errBusy
		case <-t.C:
			return nil, errBusy
		}
	}
	if p.a.closed.Load() {
		<-p.slots
		return nil, errClosed
	}
	for {
		select {
		case c := <-p.idle:
			if !c.idleOK() { // the server went away while it idled
				c.close()
				continue
			}
			c.reused = true
			return c, nil
		default:
		}
		c, err := p.a.dial(ctx, p.role)
		if err != nil {
			<-p.slots
			return nil, err
		}
		return c, nil
	}
}

// put returns c to the idle pool, or closes it if it is broken or the pool is full.
func (p *pool) put(c *conn) {
	if c.broken || c.closing() || p.a.closed.Load() {
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
	for {
		select {
		case c := <-p.idle:
			c.close()
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
func (a *Authenticator) dial(ctx context.Context, r role) (*conn, error) {
	var c *conn
	err := a.eachServer(ctx, r.String(), func(s *server) error {
		var err error
		c, err = a.dialServer(ctx, s, r)
		return err
	})
	return c, err
}

// eachServer calls try with the servers in dial's order until one
// succeeds, marking those that fail as down.
func (a *Authenticator) eachServer(ctx context.Context, what string, try func(*server) error) error {
	now := time.Now()
	var lastErr error
	for pass := 0; pass < 2; pass++ {
		for _, s := range a.servers {
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
			a.log.Debug("ldap server failed", "url", s.url, "role", what, "err", err)
		}
	}
	return lastErr
}

// errServiceBind marks a refused service-account bind: a configuration
// problem, not a connection problem.
var errServiceBind = errors.New("service account bind refused")

// dialServer connects to s, sets up TLS as configured and, for the search
// role, binds as the service account (unless searches are anonymous).
func (a *Authenticator) dialServer(ctx context.Context, s *server, r role) (*conn, error) {
	nc, err := a.connect(ctx, s)
	if err != nil {
		return nil, err
	}
	wc := newWireConn(nc)
	if s.tls != nil && !s.ldaps {
		if err := wc.startTLS(ctx, s.tls); err != nil {
			wc.close()
			return nil, fmt.Errorf("StartTLS: %w", err)
		}
	}
	if r == roleSearch && a.cfg.BindDN != "" {
		if err := wc.bind(a.cfg.BindDN, a.cfg.BindPassword); err != nil {
			wc.close()
			if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
				return nil, fmt.Errorf("%w (%s)", errServiceBind, a.cfg.BindDN)
			}
			return nil, err
		}
	}
	if err := wc.nc.SetDeadline(time.Time{}); err != nil {
		wc.close()
		return nil, err
	}
	return &conn{wc: wc, nc: wc.nc, srv: s}, nil
}

// connect dials s over TCP, with the TLS handshake for ldaps://. The
// connection's deadline, set here, covers that, StartTLS and the service
// bind; the caller clears it.
func (a *Authenticator) connect(ctx context.Context, s *server) (net.Conn, error) {
	deadline := opDeadline(ctx, a.cfg.Timeout)
	d := net.Dialer{Deadline: deadline}
	nc, err := d.DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return nil, err
	}
	nc.SetDeadline(deadline)
	if s.ldaps {
		tc := tls.Client(nc, s.tls)
		if err := tc.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, err
		}
		nc = tc
	}
	return nc, nil
}

var longAgo = time.Unix(1, 0)

// run performs f on c with the operation deadline set on the connection;
// ctx cancellation also interrupts it. timedOut reports that the deadline
// (not the server) ended the operation.
func (a *Authenticator) run(ctx context.Context, c *conn, f func(*conn) error) (timedOut bool, err error) {
	deadline := opDeadline(ctx, a.cfg.Timeout)
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

// isConnErr tells connection failures (retry elsewhere) from LDAP results
// the server sent (final answers).
func isConnErr(err error) bool {
	// wireConn reports every connection failure as ErrorNetwork. It may
	// also retire itself after a valid answer (data followed it); that
	// answer stands.
	return ldap.IsErrorWithCode(err, ldap.ErrorNetwork)
}

// do runs f on a connection of pool p. A stale pooled connection (the
// server restarted) gets one retry on a fresh connection; timeouts and LDAP
// results (invalid credentials above all) are never retried.
func (a *Authenticator) do(ctx context.Context, p *pool, f func(*conn) error) (srv *server, err error) {
	for attempt := 0; ; attempt++ {
		c, err := p.get(ctx)
		if err != nil {
			return nil, err
		}
		timedOut, err := a.run(ctx, c, f)
		if err == nil || !isConnErr(err) {
			p.put(c)
			return c.srv, err
		}
		c.broken = true
		p.put(c)
		if timedOut || !c.reused {
			c.srv.markDown()
		}
		if timedOut || !c.reused || attempt > 0 || ctx.Err() != nil {
			if timedOut {
				err = fmt.Errorf("%s: timed out: %w", c.srv.url, err)
			} else {
				err = fmt.Errorf("%s: %w", c.srv.url, err)
			}
			return c.srv, err
		}
	}
}

// isCertError reports a refused server certificate, found through the
// wrapping go-ldap does (it formats StartTLS errors with %v).
func isCertError(err error) bool {
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "x509:") || strings.Contains(s, "failed to verify certificate")
}
