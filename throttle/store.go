package throttle

import (
	"container/list"
	"context"
	"sync"
	"time"
)

// store keeps the throttle's state: per key, the distinct failures (each a
// guess mark with its time), a known-good mark, and per login the entry it
// resolved to.
type store interface {
	// count is the number of distinct failures for key within window.
	count(ctx context.Context, key string, window time.Duration) (int, error)
	// record adds a failure (counted once per distinct guess) and returns
	// the count within window; repeated is true when guess was there.
	record(ctx context.Context, key string, guess [16]byte, window time.Duration) (n int, repeated bool, err error)
	// seen reports guess among key's failures within window.
	seen(ctx context.Context, key string, guess [16]byte, window time.Duration) (bool, error)
	setGood(ctx context.Context, key string, mark [16]byte, ttl time.Duration) error
	isGood(ctx context.Context, key string, mark [16]byte) (bool, error)
	// remember and resolve map a normalised login to its entry's DN.
	remember(ctx context.Context, login, dn string) error
	resolve(ctx context.Context, login string) (string, bool)
	close() error
}

// memory is the default store: one bounded LRU of records.
type memory struct {
	now func() time.Time
	max int

	mu   sync.Mutex
	recs map[string]*list.Element
	lru  *list.List // front = most recently used; values are *record
}

type guess struct {
	mark [16]byte
	at   time.Time
}

type record struct {
	key       string
	guesses   []guess // oldest first, at most maxGuesses
	good      [16]byte
	goodUntil time.Time
	dn        string // for a login key: the entry it resolved to
}

func newMemory(max int, now func() time.Time) *memory {
	return &memory{now: now, max: max, recs: map[string]*list.Element{}, lru: list.New()}
}

// get returns key's record, creating it (and evicting the least recently
// used one when full) if create is set. Called with m.mu held.
func (m *memory) get(key string, create bool) *record {
	if e := m.recs[key]; e != nil {
		m.lru.MoveToFront(e)
		return e.Value.(*record)
	}
	if !create {
		return nil
	}
	for m.lru.Len() >= m.max {
		old := m.lru.Back()
		m.lru.Remove(old)
		delete(m.recs, old.Value.(*record).key)
	}
	r := &record{key: key}
	m.recs[key] = m.lru.PushFront(r)
	return r
}

// live drops failures older than window and returns those left.
func (r *record) live(now time.Time, window time.Duration) []guess {
	cut := now.Add(-window)
	i := 0
	for i < len(r.guesses) && !r.guesses[i].at.After(cut) {
		i++
	}
	r.guesses = r.guesses[i:]
	return r.guesses
}

func (m *memory) count(_ context.Context, key string, window time.Duration) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.get(key, false)
	if r == nil {
		return 0, nil
	}
	return len(r.live(m.now(), window)), nil
}

func (m *memory) record(_ context.Context, key string, g [16]byte, window time.Duration) (int, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	r := m.get(key, true)
	gs := r.live(now, window)
	for _, x := range gs {
		if x.mark == g {
			return len(gs), true, nil
		}
	}
	if len(gs) >= maxGuesses {
		gs = gs[1:]
	}
	r.guesses = append(gs, guess{g, now})
	return len(r.guesses), false, nil
}

func (m *memory) seen(_ context.Context, key string, g [16]byte, window time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.get(key, false)
	if r == nil {
		return false, nil
	}
	for _, x := range r.live(m.now(), window) {
		if x.mark == g {
			return true, nil
		}
	}
	return false, nil
}

func (m *memory) setGood(_ context.Context, key string, mark [16]byte, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.get(key, true)
	r.good, r.goodUntil = mark, m.now().Add(ttl)
	return nil
}

func (m *memory) isGood(_ context.Context, key string, mark [16]byte) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := m.get(key, false)
	return r != nil && r.good == mark && m.now().Before(r.goodUntil), nil
}

func (m *memory) remember(_ context.Context, login, dn string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.get(login, true).dn = dn
	return nil
}

func (m *memory) resolve(_ context.Context, login string) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.get(login, false); r != nil && r.dn != "" {
		return r.dn, true
	}
	return "", false
}

func (m *memory) close() error { return nil }

// len is the number of records held.
func (m *memory) len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lru.Len()
}
