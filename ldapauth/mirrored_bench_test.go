package ldapauth_test

import (
	"log/slog"
	"syscall"
	"testing"
	"time"

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
	benchLogins(b, a)
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
