package throttle

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/logging"

	"github.com/mailauthd/mailauthd/auth"
)

// RedisConfig shares the throttle's state across mail hosts through an
// existing Redis or Valkey.
type RedisConfig struct {
	// Addr is host:port, or the path of a Unix socket; "" = local state only.
	Addr         string        `yaml:"address"`
	PasswordFile string        `yaml:"password_file"` // AUTH password, first line; "" = none
	DB           int           `yaml:"db"`
	Prefix       string        `yaml:"prefix"`  // key prefix, default "mailauthd:"
	Timeout      time.Duration `yaml:"timeout"` // each command; default 100ms, then local state decides
	// KeyFile holds the secret the hosts share for the keyed hashes of
	// guesses and known-good passwords (first line, at least 16 bytes):
	// what Redis stores is useless for guessing passwords without it.
	KeyFile string `yaml:"key_file"`
}

func (c RedisConfig) validate() error {
	if c.Addr == "" {
		return nil
	}
	if c.KeyFile == "" {
		return errors.New("throttle.redis.key_file is required with throttle.redis.address (the hosts' shared secret)")
	}
	if c.Timeout < time.Millisecond || c.Timeout > 5*time.Second {
		return errors.New("throttle.redis.timeout must be 1ms..5s")
	}
	if c.DB < 0 || c.DB > 255 {
		return errors.New("throttle.redis.db must be 0..255")
	}
	return nil
}

// redisStore keeps failures as sorted sets (member = guess mark, score =
// time in ms) so that a guess counts once however often it is repeated,
// and known-good marks and login→DN as strings, each with an expiry.
type redisStore struct {
	c      *redis.Client
	prefix string
	to     time.Duration
}

// recordScript trims failures older than the window, adds this one unless
// present, and returns the count and whether it was new.
var recordScript = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
local added = redis.call('ZADD', KEYS[1], 'NX', ARGV[1], ARGV[3])
local n = redis.call('ZCARD', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {n, added}
`)

func newRedis(cfg RedisConfig) ([32]byte, *redisStore, error) {
	var key [32]byte
	secret, err := auth.ReadPasswordFile(cfg.KeyFile)
	if err != nil {
		return key, nil, fmt.Errorf("throttle.redis.key_file: %w", err)
	}
	if len(secret) < 16 {
		return key, nil, errors.New("throttle.redis.key_file: the secret must be at least 16 bytes")
	}
	key = sha256.Sum256([]byte("mailauthd throttle\x00" + secret))
	opts := &redis.Options{
		Addr: cfg.Addr, DB: cfg.DB,
		DialTimeout: cfg.Timeout * 5, ReadTimeout: cfg.Timeout, WriteTimeout: cfg.Timeout,
		// No retries: a retry would double the wait; the local state answers instead.
		PoolSize: 16, MaxRetries: -1, DialerRetries: 1,
	}
	if strings.HasPrefix(cfg.Addr, "/") {
		opts.Network = "unix"
	}
	if cfg.PasswordFile != "" {
		pw, err := auth.ReadPasswordFile(cfg.PasswordFile)
		if err != nil {
			return key, nil, fmt.Errorf("throttle.redis.password_file: %w", err)
		}
		opts.Password = pw
	}
	prefix := cfg.Prefix
	if prefix == "" {
		prefix = DefaultConfig().Redis.Prefix
	}
	// go-redis logs connection failures on its own to stderr; the
	// fallback store logs them once a minute through the daemon's logger.
	quietRedis.Do(func() { redis.SetLogger(&logging.VoidLogger{}) })
	return key, &redisStore{c: redis.NewClient(opts), prefix: prefix, to: cfg.Timeout}, nil
}

var quietRedis sync.Once

// k is the Redis key for a throttle key: long DNs are hashed to bound it.
func (r *redisStore) k(kind, key string) string {
	if len(key) > 128 {
		s := sha256.Sum256([]byte(key))
		key = key[:2] + hex.EncodeToString(s[:])
	}
	return r.prefix + kind + key
}

func (r *redisStore) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, r.to)
}

func ms(t time.Time) int64 { return t.UnixMilli() }

func (r *redisStore) count(ctx context.Context, key string, window time.Duration) (int, error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	n, err := r.c.ZCount(ctx, r.k("f:", key), strconv.FormatInt(ms(time.Now().Add(-window)), 10), "+inf").Result()
	return int(n), err
}

func (r *redisStore) record(ctx context.Context, key string, g [16]byte, window time.Duration) (int, bool, error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	res, err := recordScript.Run(ctx, r.c, []string{r.k("f:", key)},
		ms(time.Now()), window.Milliseconds(), hex.EncodeToString(g[:])).Int64Slice()
	if err != nil || len(res) != 2 {
		return 0, false, fmt.Errorf("redis record: %w", errors.Join(err, errors.New("bad reply")))
	}
	return int(res[0]), res[1] == 0, nil
}

func (r *redisStore) seen(ctx context.Context, key string, g [16]byte, window time.Duration) (bool, error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	s, err := r.c.ZScore(ctx, r.k("f:", key), hex.EncodeToString(g[:])).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	return err == nil && int64(s) > ms(time.Now().Add(-window)), err
}

func (r *redisStore) setGood(ctx context.Context, key string, mark [16]byte, ttl time.Duration) error {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	return r.c.Set(ctx, r.k("g:", key), hex.EncodeToString(mark[:]), ttl).Err()
}

func (r *redisStore) isGood(ctx context.Context, key string, mark [16]byte) (bool, error) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	v, err := r.c.Get(ctx, r.k("g:", key)).Result()
	if errors.Is(err, redis.Nil) {
		return false, nil
	}
	return err == nil && v == hex.EncodeToString(mark[:]), err
}

// loginTTL bounds how long a login→DN mapping is kept in Redis.
const loginTTL = 7 * 24 * time.Hour

func (r *redisStore) remember(ctx context.Context, login, dn string) error {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	return r.c.Set(ctx, r.k("l:", login), dn, loginTTL).Err()
}

func (r *redisStore) resolve(ctx context.Context, login string) (string, bool) {
	ctx, cancel := r.ctx(ctx)
	defer cancel()
	dn, err := r.c.Get(ctx, r.k("l:", login)).Result()
	return dn, err == nil && dn != ""
}

func (r *redisStore) close() error { return r.c.Close() }

// fallback asks the shared store and, when it fails, the local one; every
// write goes to both, so the local state is current when it has to decide.
// A Redis outage is logged (once a minute), never a failed login.
type fallback struct {
	shared store
	local  *memory
	log    *slog.Logger

	mu       sync.Mutex
	lastWarn time.Time
	errors   uint64
}

func (f *fallback) failed(err error) bool {
	if err == nil {
		return false
	}
	f.mu.Lock()
	f.errors++
	warn := time.Since(f.lastWarn) > time.Minute
	if warn {
		f.lastWarn = time.Now()
	}
	f.mu.Unlock()
	if warn {
		f.log.Warn("throttle: the shared store (Redis) failed; deciding with this host's state", "err", err)
	}
	return true
}

func (f *fallback) count(ctx context.Context, key string, window time.Duration) (int, error) {
	if n, err := f.shared.count(ctx, key, window); !f.failed(err) {
		return n, nil
	}
	return f.local.count(ctx, key, window)
}

func (f *fallback) record(ctx context.Context, key string, g [16]byte, window time.Duration) (int, bool, error) {
	ln, lrep, _ := f.local.record(ctx, key, g, window)
	if n, rep, err := f.shared.record(ctx, key, g, window); !f.failed(err) {
		return n, rep, nil
	}
	return ln, lrep, nil
}

func (f *fallback) seen(ctx context.Context, key string, g [16]byte, window time.Duration) (bool, error) {
	if s, err := f.shared.seen(ctx, key, g, window); !f.failed(err) {
		return s, nil
	}
	return f.local.seen(ctx, key, g, window)
}

func (f *fallback) setGood(ctx context.Context, key string, mark [16]byte, ttl time.Duration) error {
	f.local.setGood(ctx, key, mark, ttl)
	f.failed(f.shared.setGood(ctx, key, mark, ttl))
	return nil
}

func (f *fallback) isGood(ctx context.Context, key string, mark [16]byte) (bool, error) {
	if g, err := f.shared.isGood(ctx, key, mark); !f.failed(err) {
		return g, nil
	}
	return f.local.isGood(ctx, key, mark)
}

func (f *fallback) remember(ctx context.Context, login, dn string) error {
	f.local.remember(ctx, login, dn)
	f.failed(f.shared.remember(ctx, login, dn))
	return nil
}

func (f *fallback) resolve(ctx context.Context, login string) (string, bool) {
	if dn, ok := f.shared.resolve(ctx, login); ok {
		return dn, true
	}
	return f.local.resolve(ctx, login)
}

func (f *fallback) close() error { return f.shared.close() }
