package cache

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// accepter accepts everything without work, so the benchmarks measure the
// cache alone.
type accepter struct{}

func (accepter) Authenticate(_ context.Context, r auth.Request) auth.Verdict {
	if r.Password == "wrong" {
		return auth.Rejected(auth.CauseWrongPassword, "invalid credentials")
	}
	return auth.Accepted("uid="+r.User+",ou=people,dc=example,dc=org", nil)
}

func benchRequests(n int) []auth.Request {
	reqs := make([]auth.Request, n)
	for i := range reqs {
		reqs[i] = auth.Request{User: fmt.Sprintf("user%d", i), Password: fmt.Sprintf("pass%d-long-enough", i), Service: "smtp"}
	}
	return reqs
}

// BenchmarkHit is the hot path: one user, already cached.
func BenchmarkHit(b *testing.B) {
	c := New(Config{TTL: time.Hour}, accepter{})
	r := benchRequests(1)[0]
	c.Authenticate(context.Background(), r)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if c.Authenticate(ctx, r).Outcome != auth.Accept {
			b.Fatal("not accepted")
		}
	}
}

// BenchmarkHitParallel spreads hits over 10,000 cached users on all cores:
// what shards are for.
func BenchmarkHitParallel(b *testing.B) {
	for _, size := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("users=%d", size), func(b *testing.B) {
			c := New(Config{TTL: time.Hour, Size: size}, accepter{})
			reqs := benchRequests(size)
			for _, r := range reqs {
				c.Authenticate(context.Background(), r)
			}
			var seed atomic.Int64
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				i := int(seed.Add(7919))
				ctx := context.Background()
				for pb.Next() {
					i++
					if c.Authenticate(ctx, reqs[i%len(reqs)]).Outcome != auth.Accept {
						b.Error("not accepted")
						return
					}
				}
			})
		})
	}
}

// BenchmarkWrongPassword is a cached user with a wrong password: hashed,
// compared, passed through, never stored.
func BenchmarkWrongPassword(b *testing.B) {
	c := New(Config{TTL: time.Hour}, accepter{})
	r := benchRequests(1)[0]
	c.Authenticate(context.Background(), r)
	r.Password = "wrong"
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if c.Authenticate(ctx, r).Outcome != auth.Reject {
			b.Fatal("not rejected")
		}
	}
}

// BenchmarkMissEvict is the cold path at capacity: every request is a new
// user, stored while the least recently used is evicted.
func BenchmarkMissEvict(b *testing.B) {
	c := New(Config{TTL: time.Hour, Size: 1000}, accepter{})
	reqs := benchRequests(4096)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		c.Authenticate(ctx, reqs[i&4095])
		i++
	}
}
