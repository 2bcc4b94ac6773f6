package daemon

import (
	"context"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// BenchmarkAuthenticate is a login through the daemon's decision (no
// cache) against slapd: search+bind, and with the mirror one bind; each
// with the throttle on (the default) and off, so that its cost is a ratio
// of two rows of one run (benchstat).
func BenchmarkAuthenticate(b *testing.B) {
	s := slapdtest.Start(b, slapdtest.WithUsers(100))
	for _, mode := range []string{"search+bind", "mirror"} {
		for _, throttle := range []bool{true, false} {
			name := mode + "/throttle=on"
			if !throttle {
				name = mode + "/throttle=off"
			}
			b.Run(name, func(b *testing.B) {
				cfg := slapdConfig(s.URL())
				cfg.LDAP.Directory.BindDN, cfg.LDAP.Directory.BindPassword = slapdtest.ServiceDN, slapdtest.ServicePassword
				if mode == "mirror" {
					cfg.LDAP.Search.MirrorRefresh = time.Hour
				}
				cfg.Throttle.Enabled = throttle
				d := newDaemon(b, cfg)
				if mode == "mirror" {
					waitMirror(b, d, false)
				}
				benchLogins(b, d)
			})
		}
	}
}

// benchLogins measures logins of the 100 generated users, all accepted,
// from parallel goroutines.
func benchLogins(b *testing.B, a auth.Authenticator) {
	ctx := context.Background()
	reqs := make([]auth.Request, 100)
	for i := range reqs {
		reqs[i] = auth.Request{User: "user" + strconv.Itoa(i), Password: slapdtest.GeneratedUserPassword(i), Service: "imap",
			ClientAddr: "192.0.2." + strconv.Itoa(i)}
	}
	b.ReportAllocs()
	defer reportCPU(b)()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if v := a.Authenticate(ctx, reqs[i%len(reqs)]); v.Outcome != auth.Accept {
				b.Errorf("%s: %v %q", reqs[i%len(reqs)].User, v.Outcome, v.Reason)
				return
			}
			i++
		}
	})
}

// reportCPU reports this process's CPU time (user+system, all goroutines;
// slapd is another process) per operation as cpu-us/op: the client-side
// cost of a login, which ns/op hides behind slapd's share of the cores.
// Use: defer reportCPU(b)() after the set-up.
func reportCPU(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			b.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() {
		b.StopTimer()
		b.ReportMetric(float64((cpu()-start).Microseconds())/float64(b.N), "cpu-us/op")
	}
}
