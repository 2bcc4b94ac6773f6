// Package throttle slows and then stops password guessing, for every
// front door at once: it sits in the decision (package ldapauth asks it
// before any directory traffic, once the entry is found and before its
// password is tried, and tells it every outcome).
//
//   - Per account, keyed by the entry's DN (so "ALICE", " alice" and
//     "alice@anything" count as one), or by the normalised login while no
//     entry is known: after Account.Failures distinct wrong passwords within
//     Account.Window, further attempts are refused without asking the
//     directory until the oldest failures age out. The directory's own
//     lockout counter (AD, 389-ds, OpenLDAP ppolicy) never sees them.
//   - Per client address (IPv4 /32, IPv6 /64) where the front door knows
//     it: Client.Failures distinct failed guesses across any accounts
//     (password spraying) within Client.Window.
//   - The same wrong password again (a phone with an old password) counts
//     once and is answered from memory while it is fresh.
//   - From the second failure on, each failure is answered after a delay
//     that doubles up to MaxDelay (After returns it; the front door waits,
//     with its decision slot already free).
//   - The real user keeps working: a password the directory accepted for
//     that entry recently (KnownGood, kept as a keyed hash, never the
//     password) passes a block and goes on to the directory.
//   - A throttled refusal looks like a wrong password to the client; only
//     the log says "throttled".
//
// State is in memory, bounded (Entries, least recently used dropped), and
// lost on restart; with Redis configured it is shared by every mail host
// using that Redis, and when Redis fails the local state decides (logged,
// never a failed login because of it).
package throttle

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// Limit is a failure budget within a sliding window.
type Limit struct {
	Failures int           `yaml:"failures"` // distinct failures allowed within Window; 0 = no limit
	Window   time.Duration `yaml:"window"`
	// Exempt lists client networks (CIDR) with no address budget: many
	// users behind one address (webmail on this host, an office NAT)
	// would otherwise share one budget. Default loopback. Client only.
	Exempt []string `yaml:"exempt"`
}

// Config is the throttle: section.
type Config struct {
	Enabled   bool          `yaml:"enabled"`
	Account   Limit         `yaml:"account"`
	Client    Limit         `yaml:"client"`
	Delay     time.Duration `yaml:"delay"`      // the first failure delay; 0 = none
	MaxDelay  time.Duration `yaml:"max_delay"`  // delays double up to this
	KnownGood time.Duration `yaml:"known_good"` // how long an accepted password passes a block
	Entries   int           `yaml:"entries"`    // accounts, clients and logins remembered
	Redis     RedisConfig   `yaml:"redis"`
}

// DefaultConfig: on; 5 wrong passwords per account and 30 failed guesses
// per client address within 15 minutes; delays from 250 ms doubling to 2 s.
func DefaultConfig() Config {
	return Config{
		Enabled:   true,
		Account:   Limit{Failures: 5, Window: 15 * time.Minute},
		Client:    Limit{Failures: 30, Window: 15 * time.Minute, Exempt: []string{"127.0.0.0/8", "::1/128"}},
		Delay:     250 * time.Millisecond,
		MaxDelay:  2 * time.Second,
		KnownGood: 24 * time.Hour,
		Entries:   100_000,
		Redis:     RedisConfig{Timeout: 100 * time.Millisecond, Prefix: "mailauthd:"},
	}
}

// Validate checks the section.
func (c Config) Validate() error {
	var errs []string
	for name, l := range map[string]Limit{"account": c.Account, "client": c.Client} {
		if l.Failures < 0 || l.Failures > 10_000 {
			errs = append(errs, fmt.Sprintf("throttle.%s.failures must be 0..10000", name))
		}
		if l.Failures > 0 && (l.Window < time.Second || l.Window > 7*24*time.Hour) {
			errs = append(errs, fmt.Sprintf("throttle.%s.window must be 1s..168h", name))
		}
	}
	if len(c.Account.Exempt) > 0 {
		errs = append(errs, "throttle.account.exempt: exemptions are for client addresses (throttle.client.exempt)")
	}
	if _, err := parseExempt(c.Client.Exempt); err != nil {
		errs = append(errs, err.Error())
	}
	if c.Delay < 0 || c.MaxDelay < c.Delay || c.MaxDelay > 30*time.Second {
		errs = append(errs, "throttle.delay and max_delay must satisfy 0 <= delay <= max_delay <= 30s")
	}
	if c.KnownGood < 0 || c.KnownGood > 30*24*time.Hour {
		errs = append(errs, "throttle.known_good must be 0..720h")
	}
	if c.Entries < 0 || c.Entries > 10_000_000 {
		errs = append(errs, "throttle.entries must be 0..10000000")
	}
	if err := c.Redis.validate(); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// maxGuesses bounds the distinct failures remembered per key: enough to
// decide any budget up to it, small enough to bound memory under attack.
const maxGuesses = 64

// Throttle is safe for concurrent use. The zero value is not usable: New.
type Throttle struct {
	cfg    Config
	store  store
	log    *slog.Logger
	key    [32]byte  // HMAC key for guesses and known-good marks
	macs   sync.Pool // *macState keyed with key
	now    func() time.Time
	exempt []netip.Prefix // client networks without an address budget

	// Counters since New, for metrics.
	refusedAccount, refusedClient, repeated, delayed atomic.Uint64
}

// New builds a throttle. With cfg.Redis.Addr set it shares its state
// through Redis (the HMAC key then comes from cfg.Redis.KeyFile, the same
// on every host); otherwise the key is random per process.
func New(cfg Config, log *slog.Logger) (*Throttle, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Throttle{cfg: cfg, log: log, now: time.Now}
	t.exempt, _ = parseExempt(cfg.Client.Exempt) // validated above
	entries := cfg.Entries
	if entries == 0 {
		entries = DefaultConfig().Entries
	}
	local := newMemory(entries, t.now)
	t.store = local
	if cfg.Redis.Addr != "" {
		key, r, err := newRedis(cfg.Redis)
		if err != nil {
			return nil, err
		}
		t.key = key
		t.store = &fallback{shared: r, local: local, log: log}
	} else if _, err := rand.Read(t.key[:]); err != nil {
		return nil, fmt.Errorf("throttle: no randomness for the HMAC key: %w", err)
	}
	return t, nil
}

// Close releases the shared store's connections.
func (t *Throttle) Close() error { return t.store.close() }

// Stats are counters since New.
type Stats struct {
	RefusedAccount, RefusedClient, Repeated, Delayed uint64
}

// Stats returns the counters.
func (t *Throttle) Stats() Stats {
	return Stats{t.refusedAccount.Load(), t.refusedClient.Load(), t.repeated.Load(), t.delayed.Load()}
}

// Keys: an account by its DN once known, by its normalised login before;
// a client by its address prefix.
func accountKey(dn string) string { return "a:" + strings.ToLower(dn) }

func loginKey(req auth.Request) string {
	req = req.SplitRealm()
	k := "l:" + strings.ToLower(strings.TrimSpace(req.User))
	if req.Realm != "" {
		k += "@" + strings.ToLower(strings.TrimSpace(req.Realm))
	}
	return k
}

func parseExempt(nets []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, n := range nets {
		p, err := netip.ParsePrefix(n)
		if err != nil {
			return nil, fmt.Errorf("throttle.client.exempt[%d]: %q is not a network like 192.0.2.0/24", i, n)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// parseAddr reads a front door's client address: "a.b.c.d", "a.b.c.d;port"
// (cyrus-sasl master), "[v6]:port".
func parseAddr(addr string) (netip.Addr, bool) {
	if addr == "" {
		return netip.Addr{}, false
	}
	if i := strings.IndexByte(addr, ';'); i >= 0 {
		addr = addr[:i]
	}
	if ap, err := netip.ParseAddrPort(addr); err == nil {
		return ap.Addr().Unmap(), true
	}
	a, err := netip.ParseAddr(strings.Trim(addr, "[]"))
	return a.Unmap(), err == nil
}

// clientKey is the client's address as a throttling key: IPv4 /32, IPv6
// /64 (one host's share of a network); "" when unknown or exempt.
func (t *Throttle) clientKey(addr string) string {
	a, ok := parseAddr(addr)
	if !ok || t.cfg.Client.Failures <= 0 {
		return ""
	}
	for _, p := range t.exempt {
		if p.Contains(a) {
			return ""
		}
	}
	if a.Is4() {
		return "c:" + a.String()
	}
	p, _ := a.Prefix(64)
	return "c:" + p.String()
}

// mark is a keyed hash of (key, password): what identifies a guess (or a
// known-good password) without holding the password.
func (t *Throttle) mark(key, password string) [16]byte {
	m, _ := t.macs.Get().(*macState)
	if m == nil {
		m = &macState{h: hmac.New(sha256.New, t.key[:])}
	}
	m.buf = binary.BigEndian.AppendUint32(m.buf[:0], uint32(len(key)))
	m.buf = append(m.buf, key...)
	m.buf = append(m.buf, password...)
	m.h.Reset()
	m.h.Write(m.buf)
	clear(m.buf) // the password does not stay in the pool
	var out [16]byte
	copy(out[:], m.h.Sum(m.sum[:0]))
	if cap(m.buf) <= 4096 {
		t.macs.Put(m)
	}
	return out
}

// macState is a keyed HMAC and its buffers, reused: a mark is computed
// twice per login, and a fresh HMAC costs five allocations.
type macState struct {
	h   hash.Hash
	buf []byte
	sum [sha256.Size]byte
}

func throttled(scope string) *auth.Verdict {
	v := auth.Rejected(auth.CauseThrottled, "throttled: too many failures for this "+scope)
	return &v
}

// Before is asked before any directory traffic: a client address over its
// budget, or a login whose account is, is refused here unless the
// password is one the directory accepted for it recently.
func (t *Throttle) Before(ctx context.Context, req auth.Request) *auth.Verdict {
	if ck := t.clientKey(req.ClientAddr); ck != "" {
		n, _ := t.store.count(ctx, ck, t.cfg.Client.Window)
		if n >= t.cfg.Client.Failures && !t.knownGoodLogin(ctx, req) {
			t.refusedClient.Add(1)
			return throttled("client address")
		}
	}
	// A login already seen resolves to its entry without a search.
	if dn, ok := t.store.resolve(ctx, loginKey(req)); ok {
		return t.BeforeBind(ctx, req, dn)
	}
	return nil
}

// BeforeBind is asked once the entry is known, before its password is
// tried: an account over its budget is refused, and the same wrong
// password as before is answered from memory.
func (t *Throttle) BeforeBind(ctx context.Context, req auth.Request, dn string) *auth.Verdict {
	ak := accountKey(dn)
	n, _ := t.store.count(ctx, ak, t.cfg.Account.Window)
	if n == 0 {
		return nil // no failures: nothing to repeat, no budget spent (most logins; no hashing)
	}
	if seen, _ := t.store.seen(ctx, ak, t.mark(ak, req.Password), t.cfg.Account.Window); seen {
		t.repeated.Add(1)
		v := auth.Rejected(auth.CauseWrongPassword, "wrong password (the same one as before; not asked again)")
		v.DN = dn
		return &v
	}
	if t.cfg.Account.Failures > 0 {
		if n >= t.cfg.Account.Failures {
			if good, _ := t.store.isGood(ctx, ak, t.mark("g"+ak, req.Password)); good {
				return nil
			}
			t.refusedAccount.Add(1)
			v := throttled("account")
			v.DN = dn
			return v
		}
	}
	return nil
}

// After records an outcome: an accepted password becomes known-good for
// its entry; a wrong password or an unknown login is a failure for the
// account and the client address. It returns how long the failure's
// answer should wait.
func (t *Throttle) After(ctx context.Context, req auth.Request, v auth.Verdict) time.Duration {
	switch {
	case v.Outcome == auth.Accept && v.DN != "":
		ak := accountKey(v.DN)
		t.store.remember(ctx, loginKey(req), v.DN)
		if t.cfg.KnownGood > 0 {
			t.store.setGood(ctx, ak, t.mark("g"+ak, req.Password), t.cfg.KnownGood)
		}
	case v.Outcome == auth.Reject && (v.Cause == auth.CauseWrongPassword || v.Cause == auth.CauseUnknownUser):
		if strings.HasSuffix(v.Reason, "not asked again)") {
			// Already counted: delayed only as much as the account's
			// failures already call for (a phone retrying an old password
			// on an otherwise quiet account waits for nothing).
			n, _ := t.store.count(ctx, accountKey(v.DN), t.cfg.Account.Window)
			return t.delay(ctx, n)
		}
		key := loginKey(req)
		if v.DN != "" {
			key = accountKey(v.DN)
			t.store.remember(ctx, loginKey(req), v.DN)
		}
		n, _, _ := t.store.record(ctx, key, t.mark(key, req.Password), t.cfg.Account.Window)
		if ck := t.clientKey(req.ClientAddr); ck != "" {
			c, _, _ := t.store.record(ctx, ck, t.mark(ck+"\x00"+key, req.Password), t.cfg.Client.Window)
			n = max(n, c)
		}
		return t.delay(ctx, n)
	case v.Outcome == auth.Reject && v.Cause == auth.CauseThrottled:
		return t.delay(ctx, maxGuesses)
	}
	return 0
}

// delay is how long a failure answer waits: nothing for the first, then
// Delay doubling per failure up to MaxDelay, never past half of what is
// left of ctx (the front door must still answer in time).
func (t *Throttle) delay(ctx context.Context, failures int) time.Duration {
	if t.cfg.Delay <= 0 || failures < 2 {
		return 0
	}
	d := t.cfg.Delay
	for i := 2; i < failures && d < t.cfg.MaxDelay; i++ {
		d *= 2
	}
	d = min(d, t.cfg.MaxDelay)
	if dl, ok := ctx.Deadline(); ok {
		d = min(d, time.Until(dl)/2)
	}
	if d <= 0 {
		return 0
	}
	t.delayed.Add(1)
	return d
}

// knownGoodLogin reports a password accepted recently for the entry this
// login resolved to.
func (t *Throttle) knownGoodLogin(ctx context.Context, req auth.Request) bool {
	dn, ok := t.store.resolve(ctx, loginKey(req))
	if !ok {
		return false
	}
	ak := accountKey(dn)
	good, _ := t.store.isGood(ctx, ak, t.mark("g"+ak, req.Password))
	return good
}
