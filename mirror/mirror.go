// Package mirror keeps a local copy of the non-secret part of the user
// directory (each user's DN and the attributes the access rules and field
// mappings need), so that an authentication costs one LDAP bind instead of
// a search and a bind.
//
// The mirror is an optimisation, never an authority: the password is
// always checked by the LDAP server (the bind), and whenever the mirror
// cannot be sure it would find exactly the entry the search would find, it
// says "miss" and the caller does the full search and bind. In particular:
//   - only filters of the form (attr=%u), alone or inside a conjunction of
//     token-free assertions, are mirrored; anything else disables it;
//   - a login is answered only if it consists of plain ASCII characters and
//     exactly one mirrored entry has that exact value, with no other entry
//     whose value could be equal under LDAP's case-folding and space rules
//     (RFC 4518); while any value holds non-ASCII text, the mirror stays off,
//     because Unicode normalisation could make it equal to an ASCII login;
//   - a mirror older than MaxStale (refreshes failing) answers nothing.
//
// When the server offers LDAP content synchronisation (RFC 4533, OpenLDAP's
// syncprov overlay) and the Dialer's connection is a Syncer, the mirror
// follows the directory with a refreshAndPersist search: each session
// starts without a cookie, so its refresh phase delivers the whole content
// into a fresh index that replaces the old one when the refresh is done;
// changes then reach the mirror as the server sends them (well under a
// second). It answers only while that session lasts and a probe on its
// connection comes back every second (bound: the lesser of SyncStale and
// MaxStale); when the session ends or misbehaves the mirror answers nothing
// until a new session has finished its refresh phase (reconnecting with
// backoff).
//
// Otherwise a refresh is a full paged search every Refresh interval. Access
// changes in the directory (host, service attributes) reach the mirror
// within one interval, as with a cache TTL; a deleted or moved entry fails
// its bind and the caller falls back to a search.
package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Defaults for the zero Config fields.
const (
	DefaultRefresh    = time.Minute
	DefaultPageSize   = 500
	DefaultMaxEntries = 4_000_000
)

// Searcher is the part of an LDAP connection a refresh needs; *ldap.Conn
// implements it. The mirror pages through the directory itself (RFC 2696)
// and indexes each page before asking for the next, so only one page of
// decoded entries is ever held.
type Searcher interface {
	Search(req *ldap.SearchRequest) (*ldap.SearchResult, error)
}

// Dialer gives the mirror a connection bound as the service account (the
// same one the caller searches with), and a function to release it. The
// caller owns TLS, failover and timeouts, so the mirror never weakens them;
// the connection must not outlive ctx's deadline (set it on the socket).
// The mirror's own connections (Start) get a ctx without deadline, which
// it cancels to end them: a sync session lives as long as it is healthy.
// The connect itself must still be bounded by the caller's timeout.
type Dialer func(ctx context.Context) (s Searcher, release func(), err error)

// Config says what to mirror.
type Config struct {
	Base       string   // search base, no tokens
	Scope      int      // ldap.ScopeWholeSubtree, ScopeSingleLevel or ScopeBaseObject
	Filter     string   // the authentication filter, e.g. (uid=%u)
	Attributes []string // attributes to keep with each entry (host, service, mapped fields)
	// Refresh is how often the whole mirror is reloaded (default 1 min):
	// the bound on how long a changed host/service attribute may go unseen.
	Refresh time.Duration
	// MaxStale is how old the last good refresh may be before the mirror
	// answers nothing (default 3 × Refresh).
	MaxStale time.Duration
	// Timeout bounds one whole refresh, or a sync session's connect and
	// refresh phase (default Refresh / 2).
	Timeout    time.Duration
	PageSize   uint32 // default DefaultPageSize
	MaxEntries int    // refuse to mirror a larger directory (default DefaultMaxEntries)
}

// Mirror is safe for concurrent use. Lookups never block on a refresh
// for longer than one entry's update.
type Mirror struct {
	cfg     Config
	keyAttr string // attribute the login is matched against
	filter  string // refresh filter: Filter with (attr=%u) as (attr=*)
	attrs   []string
	dial    Dialer
	log     *slog.Logger
	now     func() time.Time

	snap    atomic.Pointer[snapshot]
	storeMu sync.Mutex // orders snapshot stores: a paged one never replaces a live one
	// paged is the table periodic refreshes update in place (under
	// refreshMu; set and dropped under storeMu too): kept between passes,
	// also a failed one's, so that the next pass continues it.
	paged     *table
	refreshMu sync.Mutex

	stopOnce sync.Once
	started  atomic.Bool
	ctx      context.Context // cancelled by Close: ends a refresh in flight
	cancel   context.CancelFunc
	done     chan struct{}
}

// snapshot is what Lookup answers from: a table, and when it answers.
type snapshot struct {
	// at is when the last complete refresh pass started (paged), or when
	// a sync session's refresh phase ended.
	at  time.Time
	tab *table
	// live, when set: the table is kept current by this sync session.
	live *session
}

// session is a sync session's health, read by Lookup without a lock.
type session struct {
	dead  atomic.Bool  // the session ended: answer nothing
	alive atomic.Int64 // unix nanos of the last proof the session was current
}

// ErrUnsupported means the configuration cannot be mirrored safely; the
// caller keeps doing search+bind.
var ErrUnsupported = errors.New("mirror: unsupported")

// New checks that cfg can be mirrored and returns a Mirror that has not
// loaded anything yet: call Start.
func New(cfg Config, dial Dialer, log *slog.Logger) (*Mirror, error) {
	if log == nil {
		log = slog.Default()
	}
	keyAttr, filter, err := refreshFilter(cfg.Filter)
	if err != nil {
		return nil, err
	}
	if strings.Contains(cfg.Base, "%") {
		return nil, fmt.Errorf("%w: search base %q has tokens", ErrUnsupported, cfg.Base)
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.MaxStale <= 0 {
		cfg.MaxStale = 3 * cfg.Refresh
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = cfg.Refresh / 2
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = DefaultPageSize
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	attrs := []string{keyAttr}
	for _, a := range cfg.Attributes {
		if !strings.EqualFold(a, keyAttr) {
			attrs = append(attrs, a)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Mirror{
		cfg: cfg, keyAttr: keyAttr, filter: filter, attrs: attrs, dial: dial, log: log, now: time.Now,
		ctx: ctx, cancel: cancel, done: make(chan struct{}),
	}, nil
}

// refreshFilter accepts a filter whose only token is one %u standing as the
// whole value of an equality assertion, e.g. (uid=%u) or
// (&(objectClass=posixAccount)(uid=%u)), and returns the attribute and the
// filter with that assertion turned into a presence test.
func refreshFilter(f string) (attr, refresh string, err error) {
	unsupported := func(why string) (string, string, error) {
		return "", "", fmt.Errorf("%w: filter %q: %s", ErrUnsupported, f, why)
	}
	if strings.Count(f, "%") != 1 || strings.Count(f, "%u") != 1 {
		return unsupported("only a single %u token can be mirrored")
	}
	i := strings.Index(f, "=%u)")
	if i < 0 {
		return unsupported("%u must be the whole value of an equality assertion")
	}
	open := strings.LastIndexByte(f[:i], '(')
	if open < 0 {
		return unsupported("malformed")
	}
	attr = f[open+1 : i]
	if attr == "" || strings.ContainsAny(attr, "()&|!=<>~*:\\ ") {
		return unsupported("%u must be the whole value of an equality assertion")
	}
	// Negation anywhere would turn "has this value" into "lacks it".
	if strings.Contains(f, "!") || strings.Contains(f, "|") {
		return unsupported("negation and disjunction cannot be mirrored")
	}
	refresh = f[:i] + "=*)" + f[i+len("=%u)"):]
	if _, err := ldap.CompileFilter(refresh); err != nil {
		return unsupported(err.Error())
	}
	return attr, refresh, nil
}

// Start loads the mirror once (returning that error, if any: the caller may
// go on without it) and keeps it current until Close: by a sync session
// when the server offers one, else by a refresh every Refresh interval.
// Start returns when the first load is done or failed, or ctx ends (the
// loading then goes on in the background).
func (m *Mirror) Start(ctx context.Context) error {
	if !m.started.CompareAndSwap(false, true) {
		return m.Refresh(ctx)
	}
	first := make(chan error, 1)
	go m.loop(first)
	select {
	case err := <-first:
		return err
	case <-ctx.Done():
		return fmt.Errorf("mirror: first load: %w", ctx.Err())
	case <-m.ctx.Done(): // Close also ends the first load
		return fmt.Errorf("mirror: first load: %w", m.ctx.Err())
	}
}

func (m *Mirror) loop(first chan<- error) {
	defer close(m.done)
	report := func(err error) {
		if first != nil {
			first <- err
			first = nil
		}
	}
	syncing := false // the last cycle ran a sync session: reconnect soon
	backoff := syncBackoffMin
	for m.ctx.Err() == nil {
		synced, live, err := m.cycle(report)
		if m.ctx.Err() != nil {
			return
		}
		wait := m.cfg.Refresh
		switch {
		case synced:
			syncing = true
			if live {
				backoff = syncBackoffMin
			}
			wait = min(backoff, m.cfg.Refresh)
			backoff = min(2*backoff, syncBackoffMax)
			m.log.Warn("mirror sync session ended; lookups fall back to LDAP search until a new one has loaded",
				"err", err, "retry_in", wait)
		case err != nil && syncing:
			wait = min(backoff, m.cfg.Refresh)
			backoff = min(2*backoff, syncBackoffMax)
			m.log.Warn("mirror sync reconnect failed", "err", err, "retry_in", wait)
		case err != nil:
			m.log.Warn("mirror refresh failed; lookups fall back to LDAP search when it is too old",
				"err", err, "max_stale", m.cfg.MaxStale)
		default:
			syncing = false
		}
		t := time.NewTimer(wait)
		select {
		case <-m.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// Close stops the refreshes and ends a sync session. Lookups keep answering
// from the last periodic snapshot until it is too old; a sync session's
// index stops answering when the session ends.
func (m *Mirror) Close() {
	m.stopOnce.Do(m.cancel)
	if m.started.Load() {
		<-m.done
	}
}

// Refresh reloads the whole mirror now by a paged search; with a sync
// session live it does nothing (the mirror is current already).
func (m *Mirror) Refresh(ctx context.Context) error {
	if s := m.snap.Load(); s != nil && s.live != nil && !s.live.dead.Load() {
		return nil
	}
	s, release, err := m.dial(ctx)
	if err != nil {
		return fmt.Errorf("mirror: connect: %w", err)
	}
	defer release()
	return m.refreshOn(ctx, s)
}

// refreshOn is one paged pass over the directory. It updates the paged
// table in place, entry by entry (an unchanged entry costs a comparison,
// no allocation), and when the pass is complete removes the entries it did
// not see; so a refresh never holds a second copy of the mirror, nor more
// than one page of decoded entries. Until its first complete pass the
// table answers nothing; afterwards each entry is as current as the pass
// that last saw it, and the table as a whole no older than the last
// complete pass (at), which MaxStale bounds.
func (m *Mirror) refreshOn(ctx context.Context, s Searcher) error {
	m.refreshMu.Lock()
	defer m.refreshMu.Unlock()
	started := m.now()
	timeLimit := 0
	if dl, ok := ctx.Deadline(); ok {
		timeLimit = max(1, int(time.Until(dl).Seconds()))
	}
	m.storeMu.Lock()
	tab := m.paged
	if tab == nil {
		tab = newTable(m.keyAttr, false, 0)
		m.paged = tab
	}
	m.storeMu.Unlock()
	tab.beginPass()
	paging := ldap.NewControlPaging(m.cfg.PageSize)
	req := ldap.NewSearchRequest(m.cfg.Base, m.cfg.Scope, ldap.NeverDerefAliases,
		m.cfg.MaxEntries+1, timeLimit, false, m.filter, m.attrs, []ldap.Control{paging})
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("mirror: search: %w", err)
		}
		res, err := s.Search(req)
		if err != nil {
			return fmt.Errorf("mirror: search: %w", err)
		}
		for _, e := range res.Entries {
			if n++; n > m.cfg.MaxEntries {
				return fmt.Errorf("mirror: more than %d entries", m.cfg.MaxEntries)
			}
			_ = tab.put(e.DN, e) // no bound in paged mode: n is checked above
		}
		var cookie []byte
		if c, ok := ldap.FindControl(res.Controls, ldap.ControlTypePaging).(*ldap.ControlPaging); ok {
			cookie = c.Cookie
		}
		if len(cookie) == 0 {
			break
		}
		paging.SetCookie(cookie)
	}
	removed := tab.sweep()
	entries, logins, off := tab.counts()
	m.storeMu.Lock()
	if cur := m.snap.Load(); cur != nil && cur.live != nil && !cur.live.dead.Load() {
		m.paged = nil // a sync session went live meanwhile: it is more current
		m.storeMu.Unlock()
		return nil
	}
	m.snap.Store(&snapshot{at: started, tab: tab})
	m.storeMu.Unlock()
	if off != "" {
		m.log.Warn("mirror disabled while this holds; every login uses search+bind", "reason", off)
	}
	m.log.Debug("mirror refreshed", "entries", entries, "removed", removed, "logins", logins, "took", m.now().Sub(started))
	return nil
}

// plainLogin is the set of logins the mirror answers for: printable ASCII
// without spaces, so that the exact value is the only spelling to check.
func plainLogin(s string) bool {
	if s == "" || len(s) > 256 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	return true
}

// Lookup returns the entry the search for login would find, as the
// directory held it when the mirror last saw it; it is the caller's (a new
// one per call). ok is false when the mirror is not sure: unknown login,
// ambiguous, unusual characters, never loaded, older than MaxStale, or a
// sync session that ended or cannot prove it is current. The caller then
// does the full search.
func (m *Mirror) Lookup(login string) (e *ldap.Entry, ok bool) {
	s := m.snap.Load()
	if s == nil || !plainLogin(login) {
		return nil, false
	}
	if x := s.live; x != nil {
		if x.dead.Load() || m.now().Sub(time.Unix(0, x.alive.Load())) > m.syncStale() {
			return nil, false
		}
	} else if m.now().Sub(s.at) > m.cfg.MaxStale {
		return nil, false
	}
	return s.tab.lookup(login)
}

// Status is what the mirror holds, for health reports and metrics.
type Status struct {
	Loaded  bool          // a snapshot or a sync session's index is in place
	Syncing bool          // a sync session keeps it current (RFC 4533)
	Logins  int           // logins it answers for
	Entries int           // entries it holds
	Age     time.Duration // since the last refresh, or the last proof the sync session is current
}

// Status reports what the mirror holds now.
func (m *Mirror) Status() Status {
	s := m.snap.Load()
	if s == nil {
		return Status{}
	}
	entries, logins, _ := s.tab.counts()
	st := Status{Loaded: true, Logins: logins, Entries: entries, Age: m.now().Sub(s.at)}
	if x := s.live; x != nil {
		st.Syncing = !x.dead.Load()
		st.Age = m.now().Sub(time.Unix(0, x.alive.Load()))
	}
	return st
}

// ConnDialer adapts a function that dials go-ldap connections (package
// directory's DialGoLDAP) to a Dialer.
func ConnDialer(dial func(ctx context.Context) (*ldap.Conn, func(), error)) Dialer {
	return func(ctx context.Context) (Searcher, func(), error) {
		lc, release, err := dial(ctx)
		if err != nil {
			return nil, nil, err
		}
		return lc, release, nil
	}
}
