package cache

import (
	"bytes"
	"context"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// directory is a tiny in-memory Authenticator standing in for LDAP: it
// knows passwords per user, can be told to fail temporarily, and counts
// how often it was asked.
type directory struct {
	mu        sync.Mutex
	passwords map[string]string // user -> password
	services  map[string]bool   // allowed services; nil = all
	tempfail  bool
	calls     atomic.Int64
	block     chan struct{} // when set, Authenticate waits on it
}

func newDirectory() *directory {
	return &directory{passwords: map[string]string{"alice": "good-a", "bob": "good-b"}}
}

func (d *directory) Authenticate(ctx context.Context, r auth.Request) auth.Verdict {
	d.calls.Add(1)
	if d.block != nil {
		select {
		case <-d.block:
		case <-ctx.Done():
			return auth.TempFailed(auth.CauseUnavailable, "timeout")
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case d.tempfail:
		return auth.TempFailed(auth.CauseUnavailable, "ldap down")
	case r.Password == "":
		return auth.Rejected(auth.CauseInvalid, "empty password")
	case d.passwords[r.User] == "" || d.passwords[r.User] != r.Password:
		return auth.Rejected(auth.CauseWrongPassword, "invalid credentials")
	case d.services != nil && !d.services[r.Service]:
		return auth.Rejected(auth.CausePolicy, "service not allowed")
	}
	return auth.Accepted("uid="+r.User+",dc=example", map[string][]string{"mail": {r.User + "@example.org"}})
}

func (d *directory) set(user, pw string) {
	d.mu.Lock()
	d.passwords[user] = pw
	d.mu.Unlock()
}

type fakeClock struct{ t time.Time }

func (f *fakeClock) now() time.Time          { return f.t }
func (f *fakeClock) advance(d time.Duration) { f.t = f.t.Add(d) }

func newTestCache(t testing.TB, size int, d *directory) (*Cache, *fakeClock) {
	t.Helper()
	c := New(Config{TTL: time.Minute, Size: size}, d)
	clk := &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
	c.now = clk.now
	return c, clk
}

func req(user, pw, service, realm string) auth.Request {
	return auth.Request{User: user, Password: pw, Service: service, Realm: realm}
}

// TestSequences runs scripted request sequences and checks each verdict and
// whether it reached the directory.
func TestSequences(t *testing.T) {
	type step struct {
		advance   time.Duration
		req       auth.Request
		change    func(*directory) // applied to the directory before the request
		want      auth.Outcome
		wantLDAP  bool // the directory was asked
		wantLen   int
		skipCheck bool
	}
	tests := []struct {
		name  string
		size  int
		steps []step
	}{
		{"hit after accept", 10, []step{
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: false, wantLen: 1},
			{advance: 59 * time.Second, req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: false, wantLen: 1},
		}},
		{"ttl expiry is absolute from the directory's accept", 10, []step{
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{advance: 30 * time.Second, req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: false, wantLen: 1},
			{advance: 30 * time.Second, req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
		}},
		{"expired entry is not served when the directory changed", 10, []step{
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{advance: time.Minute, change: func(d *directory) { d.set("alice", "rotated") },
				req: req("alice", "good-a", "smtp", ""), want: auth.Reject, wantLDAP: true, wantLen: 0},
		}},
		{"wrong password never cached, never evicts, never extends", 10, []step{
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{advance: 50 * time.Second, req: req("alice", "bad", "smtp", ""), want: auth.Reject, wantLDAP: true, wantLen: 1},
			{req: req("alice", "bad", "smtp", ""), want: auth.Reject, wantLDAP: true, wantLen: 1},
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: false, wantLen: 1},
			{advance: 10 * time.Second, req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
		}},
		{"unknown user not cached", 10, []step{
			{req: req("mallory", "x", "smtp", ""), want: auth.Reject, wantLDAP: true, wantLen: 0},
			{req: req("mallory", "x", "smtp", ""), want: auth.Reject, wantLDAP: true, wantLen: 0},
		}},
		{"tempfail not cached", 10, []step{
			{change: func(d *directory) { d.tempfail = true },
				req: req("alice", "good-a", "smtp", ""), want: auth.TempFail, wantLDAP: true, wantLen: 0},
			{change: func(d *directory) { d.tempfail = false },
				req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
		}},
		{"cached accept is served while the directory is down, until the TTL", 10, []step{
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{change: func(d *directory) { d.tempfail = true },
				req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: false, wantLen: 1},
			{advance: time.Minute, req: req("alice", "good-a", "smtp", ""), want: auth.TempFail, wantLDAP: true, wantLen: 0},
		}},
		{"service and realm are part of the key", 10, []step{
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{req: req("alice", "good-a", "imap", ""), want: auth.Accept, wantLDAP: true, wantLen: 2},
			{req: req("alice", "good-a", "smtp", "example.org"), want: auth.Accept, wantLDAP: true, wantLen: 3},
			{req: req("alice", "good-a", "imap", ""), want: auth.Accept, wantLDAP: false, wantLen: 3},
		}},
		{"access decision is cached per service", 10, []step{
			{change: func(d *directory) { d.services = map[string]bool{"imap": true} },
				req: req("alice", "good-a", "smtp", ""), want: auth.Reject, wantLDAP: true, wantLen: 0},
			{req: req("alice", "good-a", "imap", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{req: req("alice", "good-a", "smtp", ""), want: auth.Reject, wantLDAP: true, wantLen: 1},
		}},
		{"field boundaries cannot be shifted", 10, []step{
			{change: func(d *directory) { d.set("ab", "pw") },
				req: req("ab", "pw", "c", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{req: req("a", "pw", "bc", ""), want: auth.Reject, wantLDAP: true, wantLen: 1},
		}},
		{"client address is not part of the key", 10, []step{
			{req: auth.Request{User: "alice", Password: "good-a", Service: "smtp", ClientAddr: "192.0.2.1;1"}, want: auth.Accept, wantLDAP: true, wantLen: 1},
			{req: auth.Request{User: "alice", Password: "good-a", Service: "smtp", ClientAddr: "192.0.2.2;2"}, want: auth.Accept, wantLDAP: false, wantLen: 1},
		}},
		{"new password replaces the old at once", 10, []step{
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{change: func(d *directory) { d.set("alice", "new-a") },
				req: req("alice", "new-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{req: req("alice", "good-a", "smtp", ""), want: auth.Reject, wantLDAP: true, wantLen: 1},
			{req: req("alice", "new-a", "smtp", ""), want: auth.Accept, wantLDAP: false, wantLen: 1},
		}},
		{"empty password passes through and is never cached", 10, []step{
			{req: req("alice", "", "smtp", ""), want: auth.Reject, wantLDAP: true, wantLen: 0},
			{req: req("alice", "", "smtp", ""), want: auth.Reject, wantLDAP: true, wantLen: 0},
		}},
		{"lru evicts the least recently used at size", 2, []step{
			{change: func(d *directory) { d.set("carol", "good-c") },
				req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{req: req("bob", "good-b", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 2},
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: false, wantLen: 2}, // alice now most recent
			{req: req("carol", "good-c", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 2},  // evicts bob
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: false, wantLen: 2},
			{req: req("bob", "good-b", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 2}, // evicts carol
			{req: req("carol", "good-c", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 2},
		}},
		{"wrong password does not refresh lru position", 2, []step{
			{change: func(d *directory) { d.set("carol", "good-c") },
				req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 1},
			{req: req("bob", "good-b", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 2},
			{req: req("alice", "bad", "smtp", ""), want: auth.Reject, wantLDAP: true, wantLen: 2},
			{req: req("carol", "good-c", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 2}, // evicts alice, the LRU
			{req: req("bob", "good-b", "smtp", ""), want: auth.Accept, wantLDAP: false, wantLen: 2},
			{req: req("alice", "good-a", "smtp", ""), want: auth.Accept, wantLDAP: true, wantLen: 2},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDirectory()
			c, clk := newTestCache(t, tt.size, d)
			for i, s := range tt.steps {
				clk.advance(s.advance)
				if s.change != nil {
					s.change(d)
				}
				before := d.calls.Load()
				v := c.Authenticate(context.Background(), s.req)
				asked := d.calls.Load() != before
				if v.Outcome != s.want {
					t.Errorf("step %d: outcome %v, want %v (reason %q)", i, v.Outcome, s.want, v.Reason)
				}
				if asked != s.wantLDAP {
					t.Errorf("step %d: directory asked = %v, want %v", i, asked, s.wantLDAP)
				}
				if n := c.Len(); n != s.wantLen {
					t.Errorf("step %d: Len = %d, want %d", i, n, s.wantLen)
				}
			}
		})
	}
}

func TestHitReturnsTheCachedVerdict(t *testing.T) {
	d := newDirectory()
	c, _ := newTestCache(t, 10, d)
	first := c.Authenticate(context.Background(), req("alice", "good-a", "smtp", ""))
	// The caller of the first lookup owns its map; changing it must not
	// change what later hits see.
	first.Attributes["mail"][0] = "changed"
	first.Attributes["extra"] = []string{"x"}
	hit := c.Authenticate(context.Background(), req("alice", "good-a", "smtp", ""))
	if hit.DN != "uid=alice,dc=example" || !reflect.DeepEqual(hit.Attributes, map[string][]string{"mail": {"alice@example.org"}}) {
		t.Fatalf("hit verdict = %+v", hit)
	}
}

func TestFlush(t *testing.T) {
	d := newDirectory()
	c, _ := newTestCache(t, 10, d)
	ctx := context.Background()
	c.Authenticate(ctx, req("alice", "good-a", "smtp", ""))
	c.Authenticate(ctx, req("bob", "good-b", "smtp", ""))
	if c.Len() != 2 {
		t.Fatalf("Len = %d before flush", c.Len())
	}
	c.Flush()
	if c.Len() != 0 {
		t.Fatalf("Len = %d after flush", c.Len())
	}
	d.set("alice", "revoked")
	if v := c.Authenticate(ctx, req("alice", "good-a", "smtp", "")); v.Outcome != auth.Reject {
		t.Fatalf("flushed entry still accepted: %v", v.Outcome)
	}
}

// A lookup that was in flight when Flush ran must not repopulate the cache
// with an answer the admin just asked to forget.
func TestFlushDuringLookupDoesNotStore(t *testing.T) {
	d := newDirectory()
	d.block = make(chan struct{})
	c, _ := newTestCache(t, 10, d)
	done := make(chan auth.Verdict)
	go func() { done <- c.Authenticate(context.Background(), req("alice", "good-a", "smtp", "")) }()
	for d.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	c.Flush()
	close(d.block)
	if v := <-done; v.Outcome != auth.Accept {
		t.Fatalf("outcome %v", v.Outcome)
	}
	if c.Len() != 0 {
		t.Fatalf("Len = %d: in-flight result stored after Flush", c.Len())
	}
}

func TestDisabledPassesThrough(t *testing.T) {
	for _, ttl := range []time.Duration{0, -time.Second} {
		d := newDirectory()
		c := New(Config{TTL: ttl}, d)
		for range 3 {
			if v := c.Authenticate(context.Background(), req("alice", "good-a", "smtp", "")); v.Outcome != auth.Accept {
				t.Fatalf("ttl %v: outcome %v", ttl, v.Outcome)
			}
		}
		if d.calls.Load() != 3 || c.Len() != 0 || c.shards != nil {
			t.Fatalf("ttl %v: calls %d, Len %d, shards %v", ttl, d.calls.Load(), c.Len(), c.shards != nil)
		}
		c.Flush() // must not panic on a disabled cache
	}
}

func TestSizeBoundAcrossShards(t *testing.T) {
	d := newDirectory()
	const size = 10000
	c, _ := newTestCache(t, size, d)
	if len(c.shards) < 2 {
		t.Fatalf("expected a sharded cache at size %d, got %d shard(s)", size, len(c.shards))
	}
	for i := range 3 * size {
		u := fmt.Sprintf("user%d", i)
		d.set(u, "pw"+u)
		c.Authenticate(context.Background(), req(u, "pw"+u, "smtp", ""))
	}
	if n := c.Len(); n != size {
		t.Fatalf("Len = %d, want %d", n, size)
	}
	if st := c.Stats(); st.Evictions != uint64(3*size-st.Entries) {
		t.Fatalf("stats %+v do not add up", st)
	}
}

// TestCoalescing: identical concurrent misses reach the directory once;
// a different password is never answered with someone else's result.
func TestCoalescing(t *testing.T) {
	d := newDirectory()
	d.block = make(chan struct{})
	c, _ := newTestCache(t, 10, d)
	const n = 8
	var wg sync.WaitGroup
	results := make(chan auth.Verdict, 2*n)
	for range n {
		wg.Add(2)
		go func() {
			defer wg.Done()
			results <- c.Authenticate(context.Background(), req("alice", "good-a", "smtp", ""))
		}()
		go func() {
			defer wg.Done()
			results <- c.Authenticate(context.Background(), req("alice", "bad", "smtp", ""))
		}()
	}
	// Wait until every goroutine is either in the directory or waiting on a
	// leader: exactly two leaders (one per password).
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := c.Stats()
		if d.calls.Load() == 2 && st.Coalesced == 2*n-2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls %d, stats %+v", d.calls.Load(), st)
		}
		time.Sleep(time.Millisecond)
	}
	close(d.block)
	wg.Wait()
	close(results)
	var ok, no int
	for v := range results {
		switch v.Outcome {
		case auth.Accept:
			ok++
		case auth.Reject:
			no++
		}
	}
	if ok != n || no != n {
		t.Fatalf("accepts %d, rejects %d, want %d each", ok, no, n)
	}
}

func TestWaiterHonoursItsDeadline(t *testing.T) {
	d := newDirectory()
	d.block = make(chan struct{})
	defer close(d.block)
	c, _ := newTestCache(t, 10, d)
	go c.Authenticate(context.Background(), req("alice", "good-a", "smtp", ""))
	for d.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if v := c.Authenticate(ctx, req("alice", "good-a", "smtp", "")); v.Outcome != auth.TempFail {
		t.Fatalf("waiter past its deadline got %v, want tempfail", v.Outcome)
	}
}

type panicky struct{}

func (panicky) Authenticate(context.Context, auth.Request) auth.Verdict { panic("boom") }

// A panicking authenticator must not leave an in-flight slot that makes
// every later identical request hang.
func TestPanicReleasesInflight(t *testing.T) {
	c := New(Config{TTL: time.Minute, Size: 10}, panicky{})
	for range 2 {
		func() {
			defer func() { _ = recover() }()
			c.Authenticate(context.Background(), req("alice", "good-a", "smtp", ""))
		}()
	}
	for i := range c.shards {
		if len(c.shards[i].inflight) != 0 {
			t.Fatal("in-flight slot left behind after a panic")
		}
	}
}

// TestPasswordNeverHeld walks everything reachable from the cache (entries,
// shards, verdicts) and looks for the password, and for its unkeyed MD5,
// SHA-1 and SHA-256, in every string, byte slice and byte array.
func TestPasswordNeverHeld(t *testing.T) {
	const pw = "Tr0ub4dor&3-horse-battery"
	d := newDirectory()
	d.set("alice", pw)
	c, _ := newTestCache(t, 10, d)
	for range 3 {
		if v := c.Authenticate(context.Background(), req("alice", pw, "smtp", "")); v.Outcome != auth.Accept {
			t.Fatal("not accepted")
		}
	}
	m, s1, s256 := md5.Sum([]byte(pw)), sha1.Sum([]byte(pw)), sha256.Sum256([]byte(pw))
	needles := [][]byte{[]byte(pw), m[:], s1[:], s256[:]}
	var blobs [][]byte
	seen := map[uintptr]bool{}
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		switch v.Kind() {
		case reflect.Pointer:
			if v.IsNil() || seen[v.Pointer()] {
				return
			}
			seen[v.Pointer()] = true
			walk(v.Elem())
		case reflect.Interface:
			if v.Type() == reflect.TypeFor[auth.Authenticator]() {
				return // the directory stand-in knows passwords by design
			}
			if !v.IsNil() {
				walk(v.Elem())
			}
		case reflect.Struct:
			if v.Type() == reflect.TypeOf(sync.Pool{}) {
				return // checked separately below: pooled buffers are wiped
			}
			for i := range v.NumField() {
				walk(v.Field(i))
			}
		case reflect.Map:
			it := v.MapRange()
			for it.Next() {
				walk(it.Key())
				walk(it.Value())
			}
		case reflect.Slice, reflect.Array:
			if v.Type().Elem().Kind() == reflect.Uint8 {
				b := make([]byte, v.Len())
				for i := range b {
					b[i] = byte(v.Index(i).Uint())
				}
				blobs = append(blobs, b)
				return
			}
			for i := range v.Len() {
				walk(v.Index(i))
			}
		case reflect.String:
			blobs = append(blobs, []byte(v.String()))
		}
	}
	walk(reflect.ValueOf(c))
	if len(blobs) < 4 {
		t.Fatalf("walk found only %d blobs; the walker is broken", len(blobs))
	}
	for _, b := range blobs {
		for _, n := range needles {
			if bytes.Contains(b, n) {
				t.Fatalf("cache holds the password or an unkeyed hash of it")
			}
		}
	}
	// The pooled scratch buffer held the password while hashing.
	h := c.hashes.Get().(*hasher)
	if bytes.Contains(h.buf[:cap(h.buf)], []byte(pw)) {
		t.Fatal("pooled hash buffer still holds the password")
	}
}

// Two caches (two daemon runs) must not derive the same keys: nothing
// computed in one process is useful in another.
func TestKeyIsPerProcess(t *testing.T) {
	a := New(Config{TTL: time.Minute}, newDirectory())
	b := New(Config{TTL: time.Minute}, newDirectory())
	if a.key == b.key || a.key == [32]byte{} {
		t.Fatal("HMAC key is not random per cache")
	}
}

// TestConcurrent hammers one cache from many goroutines while the directory
// changes passwords and the cache is flushed; run with -race. Every answer
// must be one the directory gave for that password at some point.
func TestConcurrent(t *testing.T) {
	d := newDirectory()
	users := 50
	for i := range users {
		d.set(fmt.Sprintf("u%d", i), fmt.Sprintf("p%d", i))
	}
	c := New(Config{TTL: time.Minute, Size: 20}, d)
	var wg sync.WaitGroup
	var wrong atomic.Int64
	stop := make(chan struct{})
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				u := (i*7 + g) % users
				pw := fmt.Sprintf("p%d", u)
				if i%3 == 0 {
					pw = "wrong"
				}
				v := c.Authenticate(context.Background(), req(fmt.Sprintf("u%d", u), pw, []string{"smtp", "imap"}[i%2], ""))
				if (v.Outcome == auth.Accept) != (pw != "wrong") {
					wrong.Add(1)
				}
			}
		}()
	}
	for range 50 {
		time.Sleep(2 * time.Millisecond)
		c.Flush()
		_ = c.Len()
		_ = c.Stats()
	}
	close(stop)
	wg.Wait()
	if wrong.Load() != 0 {
		t.Fatalf("%d wrong answers", wrong.Load())
	}
	if c.Len() > 20 {
		t.Fatalf("Len %d over size", c.Len())
	}
}
