package ldapauth_test

import (
	"context"
	"log/slog"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
	"github.com/mailauthd/mailauthd/ldapauth"
)

// BenchmarkAuthenticateMirror is BenchmarkAuthenticate with
// ldap.mirror_refresh on: each login is one bind, no search.
func BenchmarkAuthenticateMirror(b *testing.B) {
	s := slapdtest.Start(b, slapdtest.WithUsers(100))
	cfg, access := baseConfig(s.URL())
	cfg.BindDN, cfg.BindPassword = slapdtest.ServiceDN, slapdtest.ServicePassword
	cfg.MirrorRefresh = time.Hour
	a, err := ldapauth.New(cfg, access, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	defer a.Close()
	for deadline := time.Now().Add(10 * time.Second); a.Mirror().Len() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("mirror never loaded")
		}
	}
	ctx := context.Background()
	reqs := make([]auth.Request, 100)
	for i := range reqs {
		reqs[i] = auth.Request{User: "user" + strconv.Itoa(i), Password: slapdtest.GeneratedUserPassword(i), Service: "imap"}
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
