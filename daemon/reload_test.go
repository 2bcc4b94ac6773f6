package daemon

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

// establishedTo counts the established TCP connections whose local port is
// port (slapd's side of its connections; same network namespace).
func establishedTo(t *testing.T, port int) int {
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	suffix := fmt.Sprintf(":%04X", port)
	n := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 3 && strings.HasSuffix(fs[1], suffix) && fs[3] == "01" {
			n++
		}
	}
	return n
}

// TestReloadStorm (issue 11, item 6): 50 reloads in 5 s under load. Every
// reload builds a new directory and retires the old one (idle connections
// closed at once, those in use when their request ends, the rest closed
// after the grace); the generations share one connection budget, so open
// file descriptors and slapd's connections stay bounded, and no login
// fails.
func TestReloadStorm(t *testing.T) {
	s := slapdtest.Start(t)
	conf := func() *config.File {
		cfg := slapdConfig(s.URL())
		cfg.LDAP.Directory.PoolSize = 4 // max_conns 16 per role: a budget of 64 for all generations
		return cfg
	}
	d := newDaemon(t, conf())
	limit := d.shared.Limit()
	alice := auth.Request{User: "alice", Password: "alicepw", Service: "imap"}
	if v := d.Authenticate(context.Background(), alice); v.Outcome != auth.Accept {
		t.Fatalf("first login: %v %q", v.Outcome, v.Reason)
	}
	baseFDs, baseConns := openFDs(t), establishedTo(t, s.Port)

	var maxFDs, maxConns, maxOpen atomic.Int64
	sample := func() {
		maxFDs.Store(max(maxFDs.Load(), int64(openFDs(t))))
		maxConns.Store(max(maxConns.Load(), int64(establishedTo(t, s.Port))))
		maxOpen.Store(max(maxOpen.Load(), int64(d.shared.Open())))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var logins, failed atomic.Int64
	var firstFail atomic.Value
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				v := d.Authenticate(ctx, alice)
				cancel()
				logins.Add(1)
				if v.Outcome != auth.Accept {
					failed.Add(1)
					firstFail.CompareAndSwap(nil, v.Outcome.String()+" "+v.Reason)
				}
			}
		}()
	}
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
				sample()
			}
		}
	}()
	start := time.Now()
	for i := range 50 {
		// The grace a real reload gives (request + io timeout): the old
		// generations all wait to be closed while the storm goes on.
		if _, err := d.Reload(func() (*config.File, error) { return conf(), nil }, 15*time.Second); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Until(start.Add(time.Duration(i+1) * 100 * time.Millisecond)))
	}
	close(stop)
	wg.Wait()
	<-sampled
	sample()
	d.mu.Lock()
	waiting := len(d.retired)
	d.mu.Unlock()
	t.Logf("50 reloads in %v, %d logins at concurrency 16 (%d failed), %d generations waiting for their grace; "+
		"open fds: %d before, at most %d; slapd connections: %d before, at most %d; pooled LDAP connections at most %d (budget %d)",
		time.Since(start).Round(time.Millisecond), logins.Load(), failed.Load(), waiting,
		baseFDs, maxFDs.Load(), baseConns, maxConns.Load(), maxOpen.Load(), limit)
	if failed.Load() > 0 {
		t.Errorf("%d of %d logins failed during the reloads; first: %v", failed.Load(), logins.Load(), firstFail.Load())
	}
	if limit != 64 {
		t.Errorf("budget %d, want 4 × max_conns = 64", limit)
	}
	if logins.Load() < 100 {
		t.Errorf("only %d logins: the load did not run", logins.Load())
	}
	if maxOpen.Load() > int64(limit) {
		t.Errorf("%d pooled connections, over the budget of %d", maxOpen.Load(), limit)
	}
	// A connection being closed may still count for a moment on either
	// side; allow a little beyond the budget.
	const slack = 16
	if maxConns.Load() > int64(limit+slack) {
		t.Errorf("slapd held %d connections, the budget is %d", maxConns.Load(), limit)
	}
	if maxFDs.Load()-int64(baseFDs) > int64(limit+slack) {
		t.Errorf("open fds grew from %d to %d, the budget is %d connections", baseFDs, maxFDs.Load(), limit)
	}
}
