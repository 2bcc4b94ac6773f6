package mirror

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Syncer is a connection that can also run an RFC 4533 content
// synchronisation (*ldap.Conn implements it). When the Dialer returns one
// and the server lists the sync request control in its root DSE, the
// mirror follows the directory with a refreshAndPersist search instead of
// reloading it every Refresh.
type Syncer interface {
	Searcher
	Search(req *ldap.SearchRequest) (*ldap.SearchResult, error)
	Syncrepl(ctx context.Context, req *ldap.SearchRequest, bufferSize int,
		mode ldap.ControlSyncRequestMode, cookie []byte, reloadHint bool) ldap.Response
}

// Timing of a sync session.
const (
	// SyncStale bounds how long a live mirror answers without proof that its
	// session is current (lower if MaxStale is): a probe on the session's
	// connection every SyncProbe must come back within it, or the session
	// is ended and the mirror answers nothing until a new one has loaded.
	SyncStale = 3 * time.Second
	SyncProbe = time.Second
	// Reconnect backoff after a session ends (capped by Refresh).
	syncBackoffMin = 250 * time.Millisecond
	syncBackoffMax = 10 * time.Second
)

// errNoSync: the server does not offer content synchronisation (or refused
// it before its refresh phase ended): reload by paged search this interval.
var errNoSync = errors.New("mirror: server offers no content synchronisation")

var rootDSE = ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 0, false,
	"(objectClass=*)", []string{"supportedControl"}, nil)

func offersSync(s Syncer) (bool, error) {
	res, err := s.Search(rootDSE)
	if err != nil {
		return false, err
	}
	for _, e := range res.Entries {
		if slices.Contains(e.GetAttributeValues("supportedControl"), ldap.ControlTypeSyncRequest) {
			return true, nil
		}
	}
	return false, nil
}

// cycle dials once. On a server offering sync it runs a session on that
// connection until the session ends (synced true; live says whether it got
// past its refresh phase). Otherwise it reloads the mirror with a paged
// search, as Refresh does (synced false). loaded is called when this
// cycle's snapshot is in place, or with the error that prevented it.
func (m *Mirror) cycle(loaded func(error)) (synced, live bool, err error) {
	start := time.Now()
	ctx, cancel := context.WithCancel(m.ctx)
	defer cancel()
	// Everything before the refresh phase ends is bounded by Timeout.
	phase := time.AfterFunc(m.cfg.Timeout, cancel)
	defer phase.Stop()
	s, release, err := m.dial(ctx)
	if err != nil {
		err = fmt.Errorf("mirror: connect: %w", err)
		loaded(err)
		return false, false, err
	}
	// Cancelling ctx ends whatever runs on the connection, whatever the
	// dialer does with ctx.
	var once sync.Once
	closeConn := func() { once.Do(release) }
	defer closeConn()
	defer context.AfterFunc(ctx, closeConn)()

	sy, ok := s.(Syncer)
	if ok {
		if ok, err = offersSync(sy); err != nil {
			// As before sync existed: the paged search will tell.
			m.log.Debug("mirror: root DSE unreadable; reloading by paged search", "err", err)
		}
	}
	if ok {
		live, err = m.session(ctx, cancel, phase, sy, loaded)
		if !errors.Is(err, errNoSync) {
			return true, live, err
		}
		m.log.Warn("mirror: sync refused; reloading by paged search", "err", err)
	}
	// refreshOn derives the server-side time limit from the deadline.
	rctx, rcancel := context.WithDeadline(ctx, start.Add(m.cfg.Timeout))
	defer rcancel()
	err = m.refreshOn(rctx, s)
	loaded(err)
	return false, false, err
}

// session runs one refreshAndPersist search without a cookie: the refresh
// phase delivers the whole content into a new index, swapped in when the
// server says the refresh is done; later changes are applied to it. The
// mirror answers from it only while the session lasts and its probes come
// back in time.
func (m *Mirror) session(ctx context.Context, cancel context.CancelFunc, phase *time.Timer,
	s Syncer, loaded func(error)) (live bool, err error) {
	// A fresh table: the refresh phase delivers every entry. The previous
	// session's table was dropped when it ended, so only one is held.
	idx := newTable(m.keyAttr, true, m.cfg.MaxEntries)
	sess := &session{}
	var (
		wg      sync.WaitGroup
		failMu  sync.Mutex
		failErr error
	)
	fail := func(err error) {
		failMu.Lock()
		if failErr == nil {
			failErr = err
		}
		failMu.Unlock()
		sess.dead.Store(true)
		cancel()
	}
	defer func() {
		sess.dead.Store(true) // first thing when the session ends: stop answering
		m.storeMu.Lock()
		if cur := m.snap.Load(); cur != nil && cur.live == sess {
			m.snap.Store(nil) // it answers nothing any more: free its memory now
		}
		m.storeMu.Unlock()
		if !errors.Is(err, errNoSync) {
			cancel() // closes the connection: ends the search and the prober
		}
		wg.Wait()
		if !live && !errors.Is(err, errNoSync) {
			loaded(err)
		}
	}()

	req := ldap.NewSearchRequest(m.cfg.Base, m.cfg.Scope, ldap.NeverDerefAliases,
		0, 0, false, m.filter, m.attrs, nil)
	started := m.now()
	r := s.Syncrepl(ctx, req, 64, ldap.SyncRequestModeRefreshAndPersist, nil, false)
	for r.Next() {
		if e := r.Entry(); e != nil {
			st := syncState(r.Controls())
			if st == nil {
				return live, fmt.Errorf("mirror: sync: entry %s without sync state", e.DN)
			}
			switch st.State {
			case ldap.SyncStateAdd, ldap.SyncStateModify:
				err = idx.put(string(st.EntryUUID[:]), e)
			case ldap.SyncStateDelete:
				idx.del(string(st.EntryUUID[:]))
			default:
				err = fmt.Errorf("mirror: sync: unexpected state %d for %s", st.State, e.DN)
			}
			if err != nil {
				return live, err
			}
			continue
		}
		if r.Referral() != "" {
			continue // a paged search ignores them too
		}
		info := syncInfo(r.Controls())
		if info == nil {
			// SearchResultDone without an error: the server ended the session.
			return live, errors.New("mirror: sync: the server ended the session")
		}
		switch {
		case info.Value == ldap.SyncInfoNewcookie:
			// We never resume, so cookies are of no use.
		case !live && info.RefreshPresent != nil && info.RefreshPresent.RefreshDone,
			!live && info.RefreshDelete != nil && info.RefreshDelete.RefreshDone:
			if !phase.Stop() {
				return live, fmt.Errorf("mirror: sync: refresh phase longer than %v", m.cfg.Timeout)
			}
			live = true
			now := m.now()
			sess.alive.Store(now.UnixNano())
			m.storeMu.Lock()
			m.snap.Store(&snapshot{at: now, tab: idx, live: sess})
			m.paged = nil // the sync session is more current: free the periodic table
			m.storeMu.Unlock()
			entries, logins, off := idx.counts()
			if off != "" {
				m.log.Warn("mirror disabled while this holds; every login uses search+bind", "reason", off)
			}
			m.log.Info("mirror loaded by sync; following changes", "entries", entries,
				"logins", logins, "took", now.Sub(started))
			loaded(nil)
			wg.Add(1)
			go func() { defer wg.Done(); m.probe(ctx, s, sess, fail) }()
		default:
			return live, fmt.Errorf("mirror: sync: unexpected sync info %d (live %v)", info.Value, live)
		}
	}
	err = r.Err()
	failMu.Lock()
	if failErr != nil {
		err = failErr
	}
	failMu.Unlock()
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = errors.New("mirror: sync: search ended")
	}
	var le *ldap.Error
	if !live && errors.As(err, &le) && le.ResultCode < ldap.ErrorNetwork {
		// The server refused the sync search with a result code (size
		// limit, access...) before any content was live: use the paged
		// search this interval.
		return false, fmt.Errorf("%w: %w", errNoSync, err)
	}
	return live, err
}

// probe proves every SyncProbe that the session's connection still answers;
// a probe sent at t that comes back means the server had, by then, sent us
// the changes it made before t (within its own queueing). One not back
// within the bound ends the session.
func (m *Mirror) probe(ctx context.Context, s Syncer, sess *session, fail func(error)) {
	bound := m.syncStale()
	t := time.NewTicker(SyncProbe)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		sent := m.now()
		done := make(chan error, 1)
		go func() { _, err := s.Search(rootDSE); done <- err }()
		timer := time.NewTimer(bound)
		select {
		case err := <-done:
			timer.Stop()
			if err != nil {
				fail(fmt.Errorf("mirror: sync probe: %w", err))
				return
			}
			sess.alive.Store(sent.UnixNano())
		case <-timer.C:
			fail(fmt.Errorf("mirror: sync probe: no answer within %v", bound))
			<-done // cancelled: the connection is being closed
			return
		case <-ctx.Done():
			timer.Stop()
			<-done
			return
		}
	}
}

func (m *Mirror) syncStale() time.Duration { return min(SyncStale, m.cfg.MaxStale) }

func syncState(cs []ldap.Control) *ldap.ControlSyncState {
	for _, c := range cs {
		if st, ok := c.(*ldap.ControlSyncState); ok {
			return st
		}
	}
	return nil
}

func syncInfo(cs []ldap.Control) *ldap.ControlSyncInfo {
	for _, c := range cs {
		if si, ok := c.(*ldap.ControlSyncInfo); ok {
			return si
		}
	}
	return nil
}
