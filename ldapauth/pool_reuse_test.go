package ldapauth

import (
	"context"
	"testing"

	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// TestPoolKeepsConnectionsAbovePoolSize: connections opened during a burst
// wider than pool_size stay for reuse. Closing them made every request above
// pool_size dial, bind the service account and close again under sustained
// load.
func TestPoolKeepsConnectionsAbovePoolSize(t *testing.T) {
	s := slapdtest.Start(t)
	cfg := DefaultConfig()
	cfg.URLs = []string{s.URL()}
	cfg.Base = slapdtest.PeopleDN
	cfg.BindDN, cfg.BindPassword = slapdtest.ServiceDN, slapdtest.ServicePassword
	cfg.PoolSize, cfg.MaxConns = 2, 8
	access := DefaultAccessConfig()
	access.Hostnames = []string{"mail.example.org"}
	a, err := New(cfg, access, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, p := range []*pool{a.search, a.bind} {
		var held []*conn
		for range cfg.MaxConns {
			c, err := p.get(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		for _, c := range held {
			p.put(c)
		}
		if n := len(p.idle); n != cfg.MaxConns {
			t.Fatalf("%s pool: %d of %d healthy connections kept after the burst", p.role, n, cfg.MaxConns)
		}
		// And they are reused: taking them again dials nothing new.
		for range cfg.MaxConns {
			c, err := p.get(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if !c.reused {
				t.Fatalf("%s pool: a new connection was dialed while idle ones were kept", p.role)
			}
			defer p.put(c)
		}
	}
}
