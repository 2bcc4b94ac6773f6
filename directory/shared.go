package directory

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Shared is what the Directories of one process share across reloads
// (each reload builds a new Directory and retires the old one):
//
//   - a cap on the LDAP connections they hold open together, so a storm
//     of reloads cannot pile up connections to the directory: each New
//     sets it to twice what one configuration may hold (2 roles ×
//     max_conns × 2). A dial above the cap first closes an idle
//     connection of any of them, then waits for one to close, at most
//     ldap.timeout (then ErrBusy);
//   - what they know about each server (by URL): one that failed stays
//     skipped, in the next configuration too, until a probe finds it
//     answering again.
//
// A Directory made without WithShared has one of its own, without a cap.
type Shared struct {
	budget budget
	mu     sync.Mutex
	health map[string]*health
}

// NewShared returns an empty Shared; the first New that uses it sets the cap.
func NewShared() *Shared { return &Shared{health: map[string]*health{}} }

// Option changes how New builds a Directory.
type Option func(*Directory)

// WithShared makes the Directory count its connections against sh's cap
// and share server health with the other Directories of sh.
func WithShared(sh *Shared) Option { return func(d *Directory) { d.shared = sh } }

// Open is the number of pooled connections the Directories of sh hold
// open (the mirror's and the probes' are not counted).
func (sh *Shared) Open() int {
	sh.budget.mu.Lock()
	defer sh.budget.mu.Unlock()
	return sh.budget.open
}

// Limit is the current cap (0: none).
func (sh *Shared) Limit() int {
	sh.budget.mu.Lock()
	defer sh.budget.mu.Unlock()
	return sh.budget.limit
}

func (sh *Shared) healthOf(url string) *health {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	h := sh.health[url]
	if h == nil {
		h = &health{}
		sh.health[url] = h
	}
	return h
}

// health is what is known about one server.
type health struct {
	down    atomic.Bool // failed; skipped while another server answers
	probing atomic.Bool // a prober runs
}

// skip reports that s failed and has not answered since; it makes sure a
// probe is watching for its return.
func (d *Directory) skip(s *server) bool {
	if !s.h.down.Load() {
		return false
	}
	d.probe(s)
	return true
}

// markDown records that s failed (a refused or reset connection, a
// timeout, a broken answer) and starts probing it.
func (d *Directory) markDown(s *server, err error) {
	if s.h.down.CompareAndSwap(false, true) {
		d.log.Warn("ldap server failed; skipped while another answers, until it answers again", "url", s.url, "err", err)
	}
	d.probe(s)
}

// markUp records that s answered.
func (d *Directory) markUp(s *server) {
	if s.h.down.Load() && s.h.down.CompareAndSwap(true, false) {
		d.log.Info("ldap server answers again", "url", s.url)
	}
}

// probe starts, unless one runs, a goroutine that tries s with
// growing pauses until it answers or d is closed.
func (d *Directory) probe(s *server) {
	if d.closed.Load() || !s.h.probing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer s.h.probing.Store(false)
		wait := probeFirst
		t := time.NewTimer(wait)
		defer t.Stop()
		for {
			select {
			case <-d.quit:
				return
			case <-t.C:
			}
			if !s.h.down.Load() {
				return // a request found it answering
			}
			if err := d.probeOnce(s); err == nil {
				d.markUp(s)
				return
			} else {
				d.log.Debug("ldap server probe failed", "url", s.url, "err", err)
			}
			wait = min(2*wait, probeMax)
			t.Reset(wait)
		}
	}()
}

// rootDSE is the probe's search: the root DSE, no attributes. (Active
// Directory answers the root DSE whatever the filter; the probe reads it
// with go-ldap, which takes the entry's empty DN that the wire client
// refuses in a login's answer.)
var rootDSE = func() searchRequest {
	const filter = "(objectClass=*)"
	f, err := ldap.CompileFilter(filter)
	if err != nil {
		panic(err)
	}
	return searchRequest{base: "", scope: ldap.ScopeBaseObject, sizeLimit: 1, timeLimit: 1,
		filter: f.Bytes(), filterText: filter, attrs: []string{"1.1"}}
}()

// probeOnce connects to s (TLS as configured, no service bind) and
// searches the root DSE: any well-formed LDAP answer, even a refusal,
// means the server is back.
func (d *Directory) probeOnce(s *server) error {
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.Timeout)
	defer cancel()
	go func() {
		select {
		case <-d.quit:
			cancel()
		case <-ctx.Done():
		}
	}()
	deadline, _ := ctx.Deadline()
	c, err := d.dialServer(ctx, s, deadline, roleBind, ClientGoLDAP)
	if err != nil {
		return err
	}
	defer c.cl.close()
	_, err = d.run(ctx, c, deadline, func(c *conn) error {
		r := rootDSE
		_, err := c.cl.search(&r)
		return err
	})
	if err != nil && IsConnection(err) {
		return err
	}
	return nil
}

// budget caps the connections the Directories of one Shared hold open.
type budget struct {
	mu    sync.Mutex
	limit int // 0: no cap
	open  int
	wake  chan struct{}  // closed (and replaced) when a connection closes
	pools map[*pool]bool // whose idle connections may be closed to make room
}

// register adds d's pools and sets the cap for d's configuration.
func (b *budget) register(d *Directory, limit int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.pools == nil {
		b.pools = map[*pool]bool{}
	}
	b.pools[d.search], b.pools[d.bind] = true, true
	b.limit = limit
}

func (b *budget) unregister(d *Directory) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.pools, d.search)
	delete(b.pools, d.bind)
}

// acquire takes a place for a new connection of pool self, closing an
// idle connection of some pool when the cap is reached, or waiting for one
// to close until deadline.
func (b *budget) acquire(ctx context.Context, deadline time.Time, self *pool) error {
	var t *time.Timer
	for {
		b.mu.Lock()
		if b.limit == 0 || b.open < b.limit {
			b.open++
			b.mu.Unlock()
			if t != nil {
				t.Stop()
			}
			return nil
		}
		if b.wake == nil {
			b.wake = make(chan struct{})
		}
		wake := b.wake
		// Make room: an idle connection of a retired configuration first,
		// then any other pool's, then our own.
		var victims []*pool
		for p := range b.pools {
			if p.d.retired.Load() || p.d.closed.Load() {
				victims = append([]*pool{p}, victims...)
			} else if p != self {
				victims = append(victims, p)
			}
		}
		victims = append(victims, self)
		b.mu.Unlock()
		freed := false
		for _, p := range victims {
			if p.closeIdle() {
				freed = true
				break
			}
		}
		if freed {
			continue
		}
		if t == nil {
			t = time.NewTimer(time.Until(deadline))
		}
		select {
		case <-wake:
		case <-ctx.Done():
			t.Stop()
			return ErrBusy
		case <-t.C:
			return ErrBusy
		}
	}
}

func (b *budget) release() {
	b.mu.Lock()
	b.open--
	if b.wake != nil {
		close(b.wake)
		b.wake = nil
	}
	b.mu.Unlock()
}
