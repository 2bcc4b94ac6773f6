package directory

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// TestSharedBudget: Directories made WithShared (one per configuration of
// a daemon that reloads) hold at most 4 × max_conns connections together.
// Above that a dial first closes an idle connection of any of them (a
// retired one's first), then waits for one to close, then gives up with
// ErrBusy.
func TestSharedBudget(t *testing.T) {
	s := slapdtest.Start(t)
	sh := NewShared()
	mk := func() *Directory {
		d, err := New(Config{URLs: []string{s.URL()}, Timeout: 300 * time.Millisecond, PoolSize: 1, MaxConns: 2}, nil, WithShared(sh))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
	ctx := context.Background()
	hold := func(d *Directory) []*conn {
		var cs []*conn
		for _, p := range []*pool{d.search, d.bind} {
			for range 2 {
				c, err := p.get(ctx, false, nil)
				if err != nil {
					t.Fatal(err)
				}
				cs = append(cs, c)
			}
		}
		return cs
	}
	old := mk()
	oldConns := hold(old)
	cur := mk()
	curConns := hold(cur)
	if sh.Limit() != 8 || sh.Open() != 8 {
		t.Fatalf("limit %d, open %d; want 8 and 8", sh.Limit(), sh.Open())
	}
	// A third configuration: nothing idle to close, nothing closing.
	next := mk()
	start := time.Now()
	if _, err := next.search.get(ctx, false, nil); !errors.Is(err, ErrBusy) {
		t.Fatalf("over the budget: %v, want ErrBusy", err)
	}
	if el := time.Since(start); el < 250*time.Millisecond {
		t.Errorf("gave up after %v, before the timeout", el)
	}
	// The old configuration retires: its connections close as their
	// requests end, and the places go to the new one.
	old.Retire()
	for i, c := range oldConns {
		if i < 2 {
			old.search.put(c)
		} else {
			old.bind.put(c)
		}
	}
	if sh.Open() != 4 {
		t.Fatalf("after the old configuration's requests ended: %d open, want 4", sh.Open())
	}
	var nextConns []*conn
	for range 2 {
		c, err := next.search.get(ctx, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		nextConns = append(nextConns, c)
	}
	for range 2 {
		c, err := next.bind.get(ctx, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		nextConns = append(nextConns, c)
	}
	// At the budget again; cur's connections go idle, and a fresh dial of
	// next takes the place of one of them.
	for i, c := range curConns {
		if i < 2 {
			cur.search.put(c)
		} else {
			cur.bind.put(c)
		}
	}
	if n := len(cur.search.idle) + len(cur.bind.idle); n != 4 || sh.Open() != 8 {
		t.Fatalf("%d idle, %d open", n, sh.Open())
	}
	next.search.put(nextConns[0])
	c, err := next.search.get(ctx, true, nil) // fresh: must dial
	if err != nil {
		t.Fatalf("fresh dial at the budget with idle connections elsewhere: %v", err)
	}
	if sh.Open() != 8 || len(cur.search.idle)+len(cur.bind.idle) != 3 {
		t.Errorf("after making room: %d open, %d idle in the other configuration", sh.Open(), len(cur.search.idle)+len(cur.bind.idle))
	}
	next.search.put(c)
}
