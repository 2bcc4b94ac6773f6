// Package cache keeps recent successful authentications in memory for a
// short time, so that a mail client logging in again and again (IMAP IDLE
// reconnects, SMTP submission bursts) does not cost an LDAP round trip each
// time.
//
// What is kept, and why it is safe:
//   - Only Accept verdicts. A Reject or TempFail is never stored, so a wrong
//     password always reaches the directory, and an outage is never remembered.
//   - Entries are found by an HMAC-SHA256 of (user, realm, service) under a
//     random key made at startup, and the password is checked against a second
//     HMAC of (user, realm, service, password) under the same key. Neither the
//     password nor an unkeyed hash of it is ever held, and the key never leaves
//     the process, so nothing in memory can be brute-forced offline and nothing
//     survives a restart (unlike Cyrus's -c, which keeps an unsalted MD5 in a
//     file).
//   - The client address is not part of the key: the verdict must not depend
//     on it, and keying on it would only lower the hit rate.
//   - An entry lives TTL from the moment the directory accepted the password;
//     a hit does not extend it, and neither does a wrong password, which cannot
//     evict it either (an attacker cannot flush a victim into LDAP load, nor
//     keep a revoked password alive). A new password accepted by the directory
//     replaces the old one at once.
//   - The access decision (host, service) was part of the verdict, so it is
//     cached with it and expires with it.
package cache

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"hash"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// DefaultSize is the entry limit when Config.Size is 0 (the cache owns this default).
const DefaultSize = 10000

// Cache is a concurrency-safe, size-bounded, TTL-bounded cache of successful
// verdicts in front of an Authenticator. A Cache with TTL <= 0 passes every
// request through.
type Cache struct {
	next   auth.Authenticator
	ttl    time.Duration
	shards []shard
	mask   uint64
	now    func() time.Time // injectable for tests
	// gen changes on every Flush: a lookup that started before a Flush must
	// not store its (possibly stale) result after it.
	gen atomic.Uint64
	// count and size bound the entries over all shards together: a fixed
	// share per shard would evict early in whichever shard the hash happens
	// to fill first.
	count  atomic.Int64
	size   int64
	hashes sync.Pool // *hasher
	key    [32]byte
}

// Stats are cumulative counters since New.
type Stats struct {
	Hits, Misses, Coalesced, Evictions uint64
	Entries                            int
}

type shard struct {
	mu       sync.Mutex
	entries  map[[32]byte]*entry
	inflight map[[64]byte]*call
	// head is the most recently used entry, tail the least.
	head, tail                         *entry
	count                              *atomic.Int64 // the cache's total
	hits, misses, coalesced, evictions uint64
	_                                  [40]byte // keep neighbouring shards' locks off one cache line
}

type entry struct {
	id         [32]byte // HMAC(user, realm, service)
	verifier   [32]byte // HMAC(user, realm, service, password)
	expires    time.Time
	verdict    auth.Verdict
	prev, next *entry
}

// call is one miss being answered by the next Authenticator; identical
// concurrent misses wait for it instead of asking LDAP again.
type call struct {
	done    chan struct{}
	verdict auth.Verdict
}

// New returns a cache in front of next. cfg.TTL <= 0 disables caching;
// cfg.Size <= 0 means DefaultSize. The HMAC key comes from crypto/rand; New
// panics if the system cannot supply randomness, as crypto/rand itself does.
func New(cfg Config, next auth.Authenticator) *Cache {
	c := &Cache{next: next, ttl: cfg.TTL, now: time.Now}
	if cfg.TTL <= 0 {
		return c
	}
	size := cfg.Size
	if size <= 0 {
		size = DefaultSize
	}
	// Sharding cuts lock contention between cores, but makes the LRU order
	// per shard. Small caches keep one shard so eviction order is exact.
	n := 1
	for n < 64 && size/(n*2) >= 256 {
		n *= 2
	}
	c.shards = make([]shard, n)
	c.mask = uint64(n - 1)
	c.size = int64(size)
	for i := range c.shards {
		c.shards[i].entries = make(map[[32]byte]*entry)
		c.shards[i].inflight = make(map[[64]byte]*call)
		c.shards[i].count = &c.count
	}
	if _, err := rand.Read(c.key[:]); err != nil {
		panic("cache: no randomness for the HMAC key: " + err.Error())
	}
	c.hashes.New = func() any { return &hasher{mac: hmac.New(sha256.New, c.key[:])} }
	return c
}

// Authenticate answers from the cache when the same user, realm and service
// were accepted with the same password less than TTL ago, and otherwise asks
// the next Authenticator, storing an Accept.
func (c *Cache) Authenticate(ctx context.Context, req auth.Request) auth.Verdict {
	if c.shards == nil || req.Password == "" {
		return c.next.Authenticate(ctx, req)
	}
	h := c.hashes.Get().(*hasher)
	h.sum(&h.id, 'i', req, false)
	h.sum(&h.ver, 'p', req, true)
	// Copied out so the arrays stay on the stack: passing a local to the
	// MAC's Sum (an interface call) would move it to the heap.
	id, ver := h.id, h.ver
	h.release(&c.hashes)

	s := &c.shards[binary.LittleEndian.Uint64(id[:8])&c.mask]
	now := c.now()
	s.mu.Lock()
	if e := s.entries[id]; e != nil {
		switch {
		case !now.Before(e.expires):
			s.remove(e)
		case subtle.ConstantTimeCompare(e.verifier[:], ver[:]) == 1:
			s.moveToFront(e)
			s.hits++
			v := e.verdict
			s.mu.Unlock()
			return v
		}
		// A different password: it may be a new one, so the directory
		// decides. The entry stays as it is until that answer is an Accept.
	}
	s.misses++
	return c.miss(ctx, s, req, &id, &ver)
}

// miss asks the next Authenticator, or waits for an identical request
// already asking, and stores an Accept. It is a separate function so that
// the hit path keeps a small stack frame, and a front door that runs a
// request on a fresh goroutine (checkpassword's control socket) does not
// have to grow its stack.
//
//go:noinline
func (c *Cache) miss(ctx context.Context, s *shard, req auth.Request, id, ver *[32]byte) auth.Verdict {
	var ck [64]byte
	copy(ck[:32], id[:])
	copy(ck[32:], ver[:])
	if cl := s.inflight[ck]; cl != nil {
		s.coalesced++
		s.mu.Unlock()
		select {
		case <-cl.done:
			return cl.verdict
		case <-ctx.Done():
			return auth.TempFailed(auth.CauseUnavailable, "timed out waiting for a concurrent identical request")
		}
	}
	cl := &call{done: make(chan struct{})}
	s.inflight[ck] = cl
	gen := c.gen.Load()
	s.mu.Unlock()

	// Whatever happens below (including a panic in next), waiters must be
	// released and the in-flight slot freed, or identical requests would
	// hang until their deadline.
	cl.verdict = auth.TempFailed(auth.CauseInternal, "internal error")
	defer func() {
		s.mu.Lock()
		delete(s.inflight, ck)
		s.mu.Unlock()
		close(cl.done)
	}()

	v := c.next.Authenticate(ctx, req)
	cl.verdict = v
	if v.Outcome != auth.Accept {
		return v
	}
	stored := v
	stored.Attributes = cloneAttrs(v.Attributes)
	expires := c.now().Add(c.ttl)
	s.mu.Lock()
	if c.gen.Load() == gen {
		s.put(*id, *ver, expires, stored, c.size)
	}
	s.mu.Unlock()
	return v
}

// Flush empties the cache. Lookups already in flight do not store their
// result.
func (c *Cache) Flush() {
	c.gen.Add(1)
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		c.count.Add(-int64(len(s.entries)))
		clear(s.entries)
		s.head, s.tail = nil, nil
		s.mu.Unlock()
	}
}

// Len is the number of entries held, expired ones not yet dropped included.
func (c *Cache) Len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.entries)
		s.mu.Unlock()
	}
	return n
}

// Stats returns the counters (for metrics).
func (c *Cache) Stats() Stats {
	var st Stats
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		st.Hits += s.hits
		st.Misses += s.misses
		st.Coalesced += s.coalesced
		st.Evictions += s.evictions
		st.Entries += len(s.entries)
		s.mu.Unlock()
	}
	return st
}

// put stores or replaces the entry for id, evicting this shard's least
// recently used entries while the cache is full. Called with s.mu held.
func (s *shard) put(id, ver [32]byte, expires time.Time, v auth.Verdict, size int64) {
	if e := s.entries[id]; e != nil {
		e.verifier, e.expires, e.verdict = ver, expires, v
		s.moveToFront(e)
		return
	}
	for s.count.Load() >= size && s.tail != nil {
		s.remove(s.tail)
		s.evictions++
	}
	if s.count.Load() >= size {
		// Full, and this shard has nothing left to evict (the others hold
		// everything). Not storing is always safe; taking a second shard's
		// lock here would risk a lock-order deadlock.
		return
	}
	e := &entry{id: id, verifier: ver, expires: expires, verdict: v}
	s.entries[id] = e
	s.count.Add(1)
	s.pushFront(e)
}

func (s *shard) remove(e *entry) {
	delete(s.entries, e.id)
	s.count.Add(-1)
	s.unlink(e)
}

func (s *shard) unlink(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		s.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		s.tail = e.prev
	}
	e.prev, e.next = nil, nil
}

func (s *shard) pushFront(e *entry) {
	e.next = s.head
	if s.head != nil {
		s.head.prev = e
	}
	s.head = e
	if s.tail == nil {
		s.tail = e
	}
}

func (s *shard) moveToFront(e *entry) {
	if s.head == e {
		return
	}
	s.unlink(e)
	s.pushFront(e)
}

// cloneAttrs copies the attribute map so that the cached verdict does not
// alias the caller's; hits share the copy, which callers must not modify.
func cloneAttrs(m map[string][]string) map[string][]string {
	if m == nil {
		return nil
	}
	out := make(map[string][]string, len(m))
	for k, vs := range maps.All(m) {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// hasher is a reusable keyed MAC plus a scratch buffer, pooled so that the
// hit path does not allocate.
type hasher struct {
	mac     hash.Hash
	buf     []byte
	id, ver [32]byte
}

// sum writes HMAC(key, tag || len-prefixed fields) into out. Length prefixes
// keep ("ab","c") and ("a","bc") apart; the tag keeps the identity and the
// verifier MACs from ever being equal for any input.
func (h *hasher) sum(out *[32]byte, tag byte, r auth.Request, withPassword bool) {
	b := append(h.buf[:0], tag)
	for _, f := range [...]string{r.User, r.Realm, r.Service} {
		b = binary.BigEndian.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	if withPassword {
		b = binary.BigEndian.AppendUint32(b, uint32(len(r.Password)))
		b = append(b, r.Password...)
	}
	h.mac.Reset()
	h.mac.Write(b)
	h.mac.Sum(out[:0])
	// The buffer held the password: wipe it before it goes back to the pool.
	clear(b)
	h.buf = b
}

func (h *hasher) release(p *sync.Pool) {
	h.ver = [32]byte{}
	if cap(h.buf) > 4096 {
		h.buf = nil // do not keep a huge buffer alive for one odd request
	}
	p.Put(h)
}
