// Package daemon is the one place that builds mailauthd's decision from a
// configuration: the directory transport, the LDAP decision and its access
// rules, the optional mirror, the credential cache and the Dovecot field
// mapping. Every front door asks a Daemon; serve, the helpers that decide
// on their own when no daemon runs (checkpassword, pam) and
// "test --explain" all build it here, so they can never decide
// differently.
//
// A reload builds the new configuration completely, swaps it in, and
// retires the old one: its idle LDAP connections close at once, requests
// already running on it finish, and it is closed after their deadline
// (caddy's provision, validate, swap, clean up).
package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/authhttp"
	"github.com/mailauthd/mailauthd/cache"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/directory"
	"github.com/mailauthd/mailauthd/dovecot"
	"github.com/mailauthd/mailauthd/ldapauth"
	"github.com/mailauthd/mailauthd/mirror"
	"github.com/mailauthd/mailauthd/throttle"
)

// Options change how the decision is built.
type Options struct {
	Logger *slog.Logger // nil: discard
	// OneShot builds the decision for a short-lived process that answers
	// one request (checkpassword or pam without a daemon, --explain): no
	// mirror (it would read the whole directory for one login) and no
	// cache (nothing would hit it).
	OneShot bool
	// Check (serve --check) also reads what only the serving daemon needs,
	// such as auth_http.secret_file, so a missing file fails the check
	// instead of the next start.
	Check bool
	// Resolver resolves the backend names auth_http routing finds in LDAP;
	// nil: net.DefaultResolver. Tests pass their own.
	Resolver authhttp.Resolver
}

// Daemon is safe for concurrent use.
type Daemon struct {
	opts Options
	log  *slog.Logger
	cur  atomic.Pointer[generation]
	// throttle outlives reloads: an attacker gets no fresh budget from a
	// SIGHUP. It is rebuilt (its state lost) only when throttle: changes.
	throttle    atomic.Pointer[throttle.Throttle]
	throttleCfg throttle.Config // guarded by mu once serving
	metrics     *metrics        // nil for a one-shot decision
	health      healthCache
	// shared caps the LDAP connections of every generation together and
	// keeps what is known about each server across reloads.
	shared *directory.Shared

	mu      sync.Mutex // orders Reload and Close
	closed  bool
	retired map[*generation]*time.Timer // closed when their timer fires, or by Close
}

// generation is everything built from one configuration.
type generation struct {
	cfg    *config.File
	dir    *directory.Directory
	mirror *mirror.Mirror // nil when off
	ldap   *ldapauth.Authenticator
	cache  *cache.Cache // nil when off
	front  auth.Authenticator
	fields dovecot.Mapping
	// authHTTP is the auth_http: section compiled (secret read, routing);
	// nil in a OneShot build, which serves no HTTP.
	authHTTP *authhttp.Policy
	log      *slog.Logger
	// missing records the mapped attributes already reported as absent
	// from an entry (once per generation, at debug level).
	missing sync.Map
}

// New builds the decision from cfg. It reads the bind password file and
// checks every setting, but does not contact LDAP: the daemon starts while
// LDAP is down and answers TempFail until it is back.
func New(cfg *config.File, opts Options) (*Daemon, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Daemon{opts: opts, log: log, shared: directory.NewShared()}
	if !opts.OneShot {
		d.metrics = newMetrics(d)
	}
	g, err := d.build(cfg)
	if err != nil {
		return nil, err
	}
	d.cur.Store(g)
	return d, nil
}

// prepareThrottle returns the throttle a generation built from cfg uses:
// nil when off or one-shot (a process that answers one request has no
// history to throttle on), the running one when throttle: is unchanged,
// else a new one that install puts in place once the whole generation is
// built (drop closes it if the build fails).
func (d *Daemon) prepareThrottle(cfg *config.File) (th *throttle.Throttle, install, drop func(), err error) {
	nothing := func() {}
	if d.opts.OneShot || !cfg.Throttle.Enabled {
		return nil, nothing, nothing, nil
	}
	if cur := d.throttle.Load(); cur != nil && reflect.DeepEqual(cfg.Throttle, d.throttleCfg) {
		return cur, nothing, nothing, nil
	}
	th, err = throttle.New(cfg.Throttle, d.log)
	if err != nil {
		return nil, nil, nil, err
	}
	install = func() {
		if old := d.throttle.Swap(th); old != nil {
			d.log.Info("throttle settings changed: its state starts afresh")
			if d.metrics != nil {
				d.metrics.retireThrottle(old)
			}
			old.Close()
		}
		d.throttleCfg = cfg.Throttle
	}
	return th, install, func() { th.Close() }, nil
}

func (d *Daemon) build(cfg *config.File) (*generation, error) {
	g := &generation{cfg: cfg, fields: cfg.Dovecot, log: d.log}
	th, install, drop, err := d.prepareThrottle(cfg)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if ok {
			install()
		} else {
			drop()
		}
	}()
	dopts := []directory.Option{directory.WithShared(d.shared)}
	if d.metrics != nil {
		dopts = append(dopts, directory.WithObserver(d.metrics.observeLDAP))
	}
	dir, err := directory.New(cfg.LDAP.Directory, d.log, dopts...)
	if err != nil {
		return nil, err
	}
	g.dir = dir
	search := cfg.LDAP.Search
	// The attributes Dovecot fields are mapped from come with the user's
	// search, so a lookup costs no second query.
	search.Attributes = cfg.Dovecot.MergeAttributes(search.Attributes)
	// So do the attributes nginx's routing reads (auth_http.server_attribute,
	// user_attribute): the route of an accept needs no second query either.
	search.Attributes = cfg.AuthHTTP.MergeAttributes(search.Attributes)
	if !d.opts.OneShot || d.opts.Check {
		g.authHTTP, err = authhttp.NewPolicy(cfg.AuthHTTP, d.opts.Resolver)
		if err != nil {
			dir.Close()
			return nil, err
		}
	}
	var m ldapauth.Mirror
	if !d.opts.OneShot {
		mc, on, err := ldapauth.MirrorConfig(search, cfg.Access)
		if err != nil {
			dir.Close()
			return nil, err
		}
		if on {
			g.mirror, err = mirror.New(mc, mirror.ConnDialer(dir.DialGoLDAP), d.log)
			if err != nil {
				dir.Close()
				return nil, fmt.Errorf("ldap.mirror_refresh: %w", err)
			}
			m = g.mirror
		}
	}
	opts := ldapauth.Options{Logger: d.log, Mirror: m}
	if th != nil {
		opts.Throttle = th
	}
	g.ldap, err = ldapauth.New(dir, search, cfg.Access, opts)
	if err != nil {
		dir.Close()
		return nil, err
	}
	g.front = g.ldap
	if cfg.Cache.TTL > 0 && !d.opts.OneShot {
		g.cache = cache.New(cfg.Cache, g.ldap)
		g.front = g.cache
	}
	if g.mirror != nil {
		// The first load runs in the background: until it succeeds every
		// login searches.
		go func(m *mirror.Mirror, refresh time.Duration) {
			ctx, cancel := context.WithTimeout(context.Background(), refresh/2+cfg.LDAP.Directory.Timeout)
			defer cancel()
			if err := m.Start(ctx); err != nil {
				d.log.Warn("ldap mirror: first load failed; logins search until it succeeds", "err", err)
			}
		}(g.mirror, search.MirrorRefresh)
	}
	ok = true
	return g, nil
}

// close releases everything g holds.
func (g *generation) close() {
	if g.mirror != nil {
		g.mirror.Close()
	}
	g.dir.Close()
}

// Config is the configuration in effect.
func (d *Daemon) Config() *config.File { return d.cur.Load().cfg }

// Authenticate verifies req's password and applies the access rules: the
// cache, then the LDAP decision.
func (d *Daemon) Authenticate(ctx context.Context, req auth.Request) auth.Verdict {
	return d.cur.Load().front.Authenticate(ctx, req)
}

// Lookup finds the user and applies the access rules without a password.
func (d *Daemon) Lookup(ctx context.Context, req auth.Request) auth.Verdict {
	return d.cur.Load().ldap.Lookup(ctx, req)
}

// Explain makes the LDAP decision for req (a lookup when req.Password is
// empty), writing each step to w. The cache is not consulted: the point is
// to see what the directory says now.
func (d *Daemon) Explain(ctx context.Context, req auth.Request, w io.Writer) auth.Verdict {
	return d.cur.Load().ldap.Explain(ctx, req, w)
}

// Flush empties the credential cache (SIGUSR1, "mailauthd cache flush").
// It reports false when no cache is configured.
func (d *Daemon) Flush() bool {
	c := d.cur.Load().cache
	if c == nil {
		return false
	}
	n := c.Len()
	c.Flush()
	d.log.Info("credential cache flushed", "entries", n)
	return true
}

// Reload reads the configuration with load, builds it and, when both
// succeed, swaps it in; on error the running configuration stays. The
// previous one is retired at once and closed after grace (the longest a
// request started on it may still run). Reloads are counted in metrics.
func (d *Daemon) Reload(load func() (*config.File, error), grace time.Duration) (*config.File, error) {
	cfg, err := d.reload(load, grace)
	if d.metrics != nil {
		if err != nil {
			d.metrics.reloads.WithLabelValues("failure").Inc()
		} else {
			d.metrics.reloads.WithLabelValues("success").Inc()
			d.metrics.lastOK.SetToCurrentTime()
		}
	}
	return cfg, err
}

func (d *Daemon) reload(load func() (*config.File, error), grace time.Duration) (*config.File, error) {
	cfg, err := load()
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, directory.ErrClosed
	}
	g, err := d.build(cfg)
	if err != nil {
		return nil, err
	}
	old := d.cur.Swap(g)
	d.retire(old, grace)
	return cfg, nil
}

// currentThrottle is the throttle in effect (nil when off).
func (d *Daemon) currentThrottle() *throttle.Throttle { return d.throttle.Load() }

// retire stops old's idle connections now and closes it after grace.
// Called with d.mu held.
func (d *Daemon) retire(old *generation, grace time.Duration) {
	if d.metrics != nil {
		d.metrics.retire(old)
	}
	old.dir.Retire()
	if old.mirror != nil {
		old.mirror.Close() // its lookups now miss: old requests search instead
	}
	if d.retired == nil {
		d.retired = map[*generation]*time.Timer{}
	}
	d.retired[old] = time.AfterFunc(grace, func() {
		d.mu.Lock()
		_, pending := d.retired[old]
		delete(d.retired, old)
		d.mu.Unlock()
		if pending {
			old.close()
		}
	})
}

// Close closes the current configuration and any retired one still
// waiting; requests after Close are TempFail.
func (d *Daemon) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return
	}
	d.closed = true
	d.cur.Load().close()
	if th := d.throttle.Load(); th != nil {
		th.Close()
	}
	for g, t := range d.retired {
		t.Stop()
		g.close()
	}
	d.retired = nil
}
