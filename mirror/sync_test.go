package mirror

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// TestTableMatchesReference applies random adds, modifies and deletes to
// a table, keyed by entryUUID as a sync session keeps it, and checks after
// each that it answers exactly what the plain rebuild of the same entries
// (the reference) would: the same entry, the same attributes, the same
// count of logins.
func TestTableMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	values := []string{"a", "A", "a ", "b", "B", "c", "d", "\u00e4", "e"}
	logins := []string{"a", "A", "b", "B", "c", "d", "e", "x"}
	x := newTable("uid", true, 1000)
	entries := map[[16]byte]*ldap.Entry{}
	for step := 0; step < 3000; step++ {
		id := [16]byte{byte(rng.IntN(6))}
		if rng.IntN(4) == 0 {
			x.del(string(id[:]))
			delete(entries, id)
		} else {
			attrs := map[string][]string{"host": {"*", fmt.Sprint("h", rng.IntN(3))}}
			for range 1 + rng.IntN(2) {
				name := "uid"
				if rng.IntN(5) == 0 {
					name = "uid;x-legacy"
				}
				attrs[name] = append(attrs[name], values[rng.IntN(len(values))])
			}
			dn := fmt.Sprintf("uid=%d.%d,ou=o%d,dc=x", id[0], step, rng.IntN(2))
			if rng.IntN(8) == 0 {
				dn = fmt.Sprintf("cn=a\\,b %d,dc=x", step) // an escaped comma
			}
			e := ldap.NewEntry(dn, attrs)
			if err := x.put(string(id[:]), e); err != nil {
				t.Fatal(err)
			}
			entries[id] = e
		}
		var all []*ldap.Entry
		for _, e := range entries {
			all = append(all, e)
		}
		checkAgainst(t, x, all, logins, fmt.Sprint("step ", step))
	}
}

// TestPagedPassesMatchReference: a paged-mode table updated in place by
// passes over random directories (then swept) answers what a rebuild of
// the directory's current content would.
func TestPagedPassesMatchReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	values := []string{"a", "A", "a ", "b", "B", "c", "d", "\u00e4", "e"}
	logins := []string{"a", "A", "b", "B", "c", "d", "e", "x"}
	x := newTable("uid", false, 0)
	for pass := 0; pass < 500; pass++ {
		var dir []*ldap.Entry
		for i := range rng.IntN(7) {
			if rng.IntN(3) == 0 {
				continue
			}
			attrs := map[string][]string{"host": {fmt.Sprint("h", rng.IntN(3))}}
			attrs["uid"] = []string{values[rng.IntN(len(values))]}
			if rng.IntN(4) == 0 {
				attrs["uid;x-legacy"] = []string{values[rng.IntN(len(values))]}
			}
			dir = append(dir, ldap.NewEntry(fmt.Sprintf("uid=%d,ou=o%d,dc=x", i, rng.IntN(2)), attrs))
		}
		x.beginPass()
		for _, e := range dir {
			if err := x.put(e.DN, e); err != nil {
				t.Fatal(err)
			}
		}
		x.sweep()
		checkAgainst(t, x, dir, logins, fmt.Sprint("pass ", pass))
	}
}

func checkAgainst(t *testing.T, x *table, all []*ldap.Entry, logins []string, at string) {
	t.Helper()
	want := buildReference(all, "uid")
	for _, l := range logins {
		we, wok := want.byValue[l]
		if want.off != "" {
			wok = false
		}
		ge, gok := x.lookup(l)
		if wok != gok || (wok && (we.DN != ge.DN || attrString(we) != attrString(ge))) {
			t.Fatalf("%s, login %q: table %v %v, reference %v %v (off %q)", at, l, ge, gok, we, wok, want.off)
		}
	}
	entries, n, off := x.counts()
	if entries != len(all) {
		t.Fatalf("%s: %d entries, want %d", at, entries, len(all))
	}
	if (off != "") != (want.off != "") || (off == "" && n != len(want.byValue)) {
		t.Fatalf("%s: %d logins (off %q), reference %d (off %q)", at, n, off, len(want.byValue), want.off)
	}
}

func attrString(e *ldap.Entry) string {
	var b strings.Builder
	for _, a := range e.Attributes {
		fmt.Fprintf(&b, "%s=%q;", a.Name, a.Values)
	}
	return b.String()
}

// syncDial connects to s as the service account; cancelling ctx closes the
// connection, as the mirror's Dialer contract asks.
func syncDial(s *slapdtest.Server) Dialer {
	return func(ctx context.Context) (Searcher, func(), error) {
		c, err := ldap.DialURL(s.URL(), ldap.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}))
		if err != nil {
			return nil, nil, err
		}
		stop := context.AfterFunc(ctx, func() { c.Close() })
		c.SetTimeout(2 * time.Second) // bind only; cleared below for the persistent search
		if err := c.Bind(slapdtest.ServiceDN, slapdtest.ServicePassword); err != nil {
			stop()
			c.Close()
			return nil, nil, err
		}
		c.SetTimeout(0)
		return c, func() { stop(); c.Close() }, nil
	}
}

// eventually polls cond every 10 ms until it holds or d has passed, and
// returns how long it took.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// TestSyncAgainstSlapd follows a real slapd with syncprov: the first load
// comes from the sync refresh phase, and changes reach Lookup within
// seconds without any refresh; a stopped or frozen server makes it answer
// nothing, and it resumes once the server is back.
func TestSyncAgainstSlapd(t *testing.T) {
	const n = 300
	s := slapdtest.Start(t, slapdtest.WithSyncProv(), slapdtest.WithUsers(n))
	m, err := New(Config{
		Base: slapdtest.PeopleDN, Scope: ldap.ScopeWholeSubtree, Filter: "(&(objectClass=inetOrgPerson)(uid=%u))",
		Attributes: []string{"host"}, Refresh: time.Hour, // never reached: changes must come by sync
	}, syncDial(s), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			m.Close()
		}
	}()
	if !m.Status().Syncing {
		t.Fatal("no sync session against a server with syncprov")
	}
	if m.Status().Logins < n {
		t.Fatalf("mirror holds %d logins, want at least %d", m.Status().Logins, n)
	}
	host := func(login string) string {
		e, ok := m.Lookup(login)
		if !ok {
			return "(miss)"
		}
		return e.GetAttributeValue("host")
	}
	if h := host("user1"); h != "*" {
		t.Fatalf("user1: host %q", h)
	}

	c, err := ldap.DialURL(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(slapdtest.AdminDN, slapdtest.AdminPassword); err != nil {
		t.Fatal(err)
	}
	const bound = 5 * time.Second

	// A changed host attribute.
	mod := ldap.NewModifyRequest("uid=user1,"+slapdtest.PeopleDN, nil)
	mod.Replace("host", []string{"other.example.org"})
	sent := time.Now()
	if err := c.Modify(mod); err != nil {
		t.Fatal(err)
	}
	modified := time.Since(sent)
	eventually(t, bound, "modify", func() bool { return host("user1") == "other.example.org" })
	t.Logf("modify reached the mirror %v after it was sent (the modify itself took %v)", time.Since(sent), modified)

	// A new entry making user2 ambiguous (uid equal under case folding).
	add := ldap.NewAddRequest("cn=twin2,"+slapdtest.PeopleDN, nil)
	add.Attribute("objectClass", []string{"inetOrgPerson"})
	add.Attribute("cn", []string{"twin2"})
	add.Attribute("sn", []string{"twin2"})
	add.Attribute("uid", []string{"USER2"})
	if err := c.Add(add); err != nil {
		t.Fatal(err)
	}
	eventually(t, bound, "ambiguous add", func() bool { _, ok := m.Lookup("user2"); return !ok })
	if _, ok := m.Lookup("USER2"); ok {
		t.Fatal("USER2 answered although ambiguous")
	}
	// Removing the twin's uid (a modify) makes user2 unambiguous again.
	mod = ldap.NewModifyRequest("cn=twin2,"+slapdtest.PeopleDN, nil)
	mod.Replace("uid", []string{"twin2"})
	if err := c.Modify(mod); err != nil {
		t.Fatal(err)
	}
	eventually(t, bound, "twin renamed", func() bool {
		e, ok := m.Lookup("twin2")
		return host("user2") == "*" && ok && e.DN == "cn=twin2,"+slapdtest.PeopleDN
	})

	// A deleted entry.
	if err := c.Del(ldap.NewDelRequest("uid=user4,"+slapdtest.PeopleDN, nil)); err != nil {
		t.Fatal(err)
	}
	eventually(t, bound, "delete", func() bool { return host("user4") == "(miss)" })

	// An entry leaving the filter (no uid any more) is a delete too.
	mod = ldap.NewModifyRequest("cn=twin2,"+slapdtest.PeopleDN, nil)
	mod.Delete("uid", nil)
	if err := c.Modify(mod); err != nil {
		t.Fatal(err)
	}
	eventually(t, bound, "left the filter", func() bool { _, ok := m.Lookup("twin2"); return !ok })

	// A non-ASCII value anywhere turns the mirror off, its removal on again.
	add = ldap.NewAddRequest("uid=u\u0308ser,"+slapdtest.PeopleDN, nil)
	add.Attribute("objectClass", []string{"inetOrgPerson"})
	add.Attribute("cn", []string{"x"})
	add.Attribute("sn", []string{"x"})
	add.Attribute("uid", []string{"u\u0308ser"})
	if err := c.Add(add); err != nil {
		t.Fatal(err)
	}
	eventually(t, bound, "non-ASCII add", func() bool { return host("user3") == "(miss)" })
	if err := c.Del(ldap.NewDelRequest("uid=u\u0308ser,"+slapdtest.PeopleDN, nil)); err != nil {
		t.Fatal(err)
	}
	eventually(t, bound, "non-ASCII delete", func() bool { return host("user3") == "*" })

	// Killed server: the session ends and the mirror answers nothing.
	c.Close()
	s.Stop()
	took := eventually(t, bound, "slapd stopped", func() bool { return host("user3") == "(miss)" })
	t.Logf("stopped server noticed after %v", took)
	if m.Status().Syncing {
		t.Fatal("Syncing after the server died")
	}
	time.Sleep(500 * time.Millisecond) // a reconnect or two fails
	if h := host("user3"); h != "(miss)" {
		t.Fatalf("answered %q while the server is down", h)
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	took = eventually(t, 30*time.Second, "resume after restart", func() bool { return host("user3") == "*" })
	t.Logf("resumed %v after the restart", took)
	if h := host("user1"); h != "other.example.org" {
		t.Fatalf("user1 after restart: host %q", h)
	}

	// Frozen server (connection open, no answers): the probe notices.
	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	took = eventually(t, SyncStale+5*time.Second, "slapd frozen", func() bool { return host("user3") == "(miss)" })
	t.Logf("frozen server noticed after %v", took)
	if err := s.Resume(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "resume after freeze", func() bool { return host("user3") == "*" })

	// Close ends the session promptly.
	start := time.Now()
	m.Close()
	closed = true
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v", d)
	}
	if h := host("user3"); h != "(miss)" {
		t.Fatalf("answered %q after Close ended the session", h)
	}
}

// TestSyncCloseDuringFirstLoad: Close ends a first load still in flight
// (a frozen server), and Start returns.
func TestSyncCloseDuringFirstLoad(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithSyncProv())
	m, err := New(Config{Base: slapdtest.PeopleDN, Scope: ldap.ScopeWholeSubtree, Filter: "(uid=%u)",
		Refresh: time.Hour}, syncDial(s), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Pause(); err != nil {
		t.Fatal(err)
	}
	defer s.Resume()
	errc := make(chan error, 1)
	go func() { errc <- m.Start(context.Background()) }()
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	m.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("Start succeeded against a frozen server")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Start still running after Close")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Close took %v", d)
	}
}
