package mirror

import (
	"context"
	"errors"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

func TestRefreshFilter(t *testing.T) {
	tests := []struct {
		filter, attr, refresh string
	}{
		{"(uid=%u)", "uid", "(uid=*)"},
		{"(&(objectClass=posixAccount)(uid=%u))", "uid", "(&(objectClass=posixAccount)(uid=*))"},
		{"(&(mail=%u)(accountStatus=active))", "mail", "(&(mail=*)(accountStatus=active))"},
		// Unsupported: the mirror could not know which entry the search finds.
		{"(|(uid=%u)(mail=%u))", "", ""},
		{"(&(uid=%u)(!(employeeType=disabled)))", "", ""},
		{"(uid=%U)", "", ""},
		{"(mail=%U@%d)", "", ""},
		{"(uid=%u*)", "", ""},
		{"(uid=x%u)", "", ""},
		{"(uid>=%u)", "", ""},
		{"(uid=%u)(%%)", "", ""},
		{"(objectClass=*)", "", ""},
	}
	for _, tt := range tests {
		attr, refresh, err := refreshFilter(tt.filter)
		if tt.attr == "" {
			if !errors.Is(err, ErrUnsupported) {
				t.Errorf("%s: err = %v, want ErrUnsupported", tt.filter, err)
			}
			continue
		}
		if err != nil || attr != tt.attr || refresh != tt.refresh {
			t.Errorf("%s: got %q %q %v, want %q %q", tt.filter, attr, refresh, err, tt.attr, tt.refresh)
		}
	}
}

// fakeDir is an in-memory Searcher for the folding and staleness rules. It
// pages as a server does (RFC 2696): the cookie is the next entry's index.
type fakeDir struct {
	entries []*ldap.Entry
	err     error
	pages   int // searches answered
	failAt  int // the search with this number (from 1) fails with err
}

func (f *fakeDir) Search(req *ldap.SearchRequest) (*ldap.SearchResult, error) {
	f.pages++
	if f.err != nil && (f.failAt == 0 || f.pages == f.failAt) {
		return nil, f.err
	}
	pc, _ := ldap.FindControl(req.Controls, ldap.ControlTypePaging).(*ldap.ControlPaging)
	if pc == nil {
		return &ldap.SearchResult{Entries: f.entries}, nil
	}
	from := 0
	if len(pc.Cookie) > 0 {
		from, _ = strconv.Atoi(string(pc.Cookie))
	}
	to := min(len(f.entries), from+int(pc.PagingSize))
	res := &ldap.SearchResult{Entries: f.entries[from:to]}
	next := &ldap.ControlPaging{}
	if to < len(f.entries) {
		next.SetCookie([]byte(strconv.Itoa(to)))
	}
	res.Controls = append(res.Controls, next)
	return res, nil
}

func entry(dn string, uids ...string) *ldap.Entry {
	return ldap.NewEntry(dn, map[string][]string{"uid": uids, "host": {"*"}})
}

func newFake(t *testing.T, d *fakeDir, cfg Config) *Mirror {
	t.Helper()
	if cfg.Filter == "" {
		cfg.Filter = "(uid=%u)"
	}
	m, err := New(cfg, func(context.Context) (Searcher, func(), error) { return d, func() {}, nil }, nil)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestLookupAnswersOnlyWhenSure(t *testing.T) {
	d := &fakeDir{entries: []*ldap.Entry{
		entry("uid=alice,dc=x", "alice"),
		entry("uid=bob,dc=x", "bob", "robert"),
		// Two entries whose values LDAP's caseIgnoreMatch treats as equal.
		entry("uid=carol,dc=x", "carol"),
		entry("uid=Carol,ou=other,dc=x", "Carol"),
		// Insignificant spaces (RFC 4518) make "dave " equal to "dave".
		entry("uid=dave,dc=x", "dave"),
		entry("uid=dave2,dc=x", "dave "),
		// The same value twice in one entry is not ambiguous.
		entry("uid=erin,dc=x", "erin", "ERIN"),
		// A value in a subtype with options matches the filter too.
		entry("uid=frank,dc=x", "frank"),
		ldap.NewEntry("uid=frank2,dc=x", map[string][]string{"uid;x-legacy": {"frank"}}),
	}}
	m := newFake(t, d, Config{Attributes: []string{"host"}})
	if _, ok := m.Lookup("alice"); ok {
		t.Fatal("answered before the first load")
	}
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		login, dn string // dn "" = miss
	}{
		{"alice", "uid=alice,dc=x"},
		{"bob", "uid=bob,dc=x"},
		{"robert", "uid=bob,dc=x"},
		{"Alice", ""}, // not the exact value: the server decides
		{"carol", ""}, // ambiguous
		{"Carol", ""}, // ambiguous
		{"dave", ""},  // ambiguous through spaces
		{"erin", "uid=erin,dc=x"},
		{"frank", ""}, // ambiguous through uid;x-legacy
		{"ERIN", "uid=erin,dc=x"},
		{"nobody", ""},
		{"alice ", ""}, // spaces: never answered
		{"al ice", ""},
		{"", ""},
		{"alice\x00", ""},
		{"ålice", ""},
	}
	for _, tt := range tests {
		e, ok := m.Lookup(tt.login)
		switch {
		case tt.dn == "" && ok:
			t.Errorf("%q: answered %s, want a miss", tt.login, e.DN)
		case tt.dn != "" && (!ok || e.DN != tt.dn):
			t.Errorf("%q: got %v %v, want %s", tt.login, e, ok, tt.dn)
		}
	}
	if e, _ := m.Lookup("alice"); e.GetAttributeValue("host") != "*" {
		t.Errorf("attributes not kept: %v", e.Attributes)
	}
}

func TestNonASCIIValueTurnsMirrorOff(t *testing.T) {
	// "ａlice" (fullwidth a) normalises (NFKC) to "alice" on the server.
	d := &fakeDir{entries: []*ldap.Entry{entry("uid=alice,dc=x", "alice"), entry("uid=x,dc=x", "\uff41lice")}}
	m := newFake(t, d, Config{})
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Lookup("alice"); ok {
		t.Fatal("answered while a non-ASCII value could equal the login")
	}
}

func TestStaleMirrorAnswersNothing(t *testing.T) {
	d := &fakeDir{entries: []*ldap.Entry{entry("uid=alice,dc=x", "alice")}}
	m := newFake(t, d, Config{Refresh: time.Minute, MaxStale: 3 * time.Minute})
	now := time.Now()
	m.now = func() time.Time { return now }
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	now = now.Add(2 * time.Minute)
	if _, ok := m.Lookup("alice"); !ok {
		t.Fatal("miss within MaxStale")
	}
	// Refreshes fail: the old snapshot ages out.
	d.err = errors.New("ldap down")
	if err := m.Refresh(context.Background()); err == nil {
		t.Fatal("refresh error not reported")
	}
	now = now.Add(2 * time.Minute)
	if _, ok := m.Lookup("alice"); ok {
		t.Fatal("answered from a snapshot older than MaxStale")
	}
	// A good refresh brings it back, and removes deleted users.
	d.err = nil
	d.entries = []*ldap.Entry{entry("uid=bob,dc=x", "bob")}
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.Lookup("alice"); ok {
		t.Fatal("deleted user still answered")
	}
	if _, ok := m.Lookup("bob"); !ok {
		t.Fatal("new user not answered")
	}
}

func TestTooManyEntriesKeepsOldSnapshot(t *testing.T) {
	d := &fakeDir{entries: []*ldap.Entry{entry("uid=alice,dc=x", "alice")}}
	m := newFake(t, d, Config{MaxEntries: 1})
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.entries = append(d.entries, entry("uid=bob,dc=x", "bob"))
	if err := m.Refresh(context.Background()); err == nil {
		t.Fatal("oversized directory accepted")
	}
	if _, ok := m.Lookup("alice"); !ok {
		t.Fatal("old snapshot dropped")
	}
}

// TestRefreshInPlace: a refresh updates the table entry by entry as it
// pages. A first load cut short answers nothing; a later pass cut short
// leaves what it updated and removes nothing (the snapshot ages as before);
// the next complete pass removes the entries it did not see.
func TestRefreshInPlace(t *testing.T) {
	all := func(n int, host string) []*ldap.Entry {
		var es []*ldap.Entry
		for i := range n {
			u := "u" + strconv.Itoa(i)
			es = append(es, ldap.NewEntry("uid="+u+",dc=x", map[string][]string{"uid": {u}, "host": {host}}))
		}
		return es
	}
	d := &fakeDir{entries: all(10, "a"), err: errors.New("connection reset"), failAt: 2}
	m := newFake(t, d, Config{PageSize: 4, Attributes: []string{"host"}})
	if err := m.Refresh(context.Background()); err == nil {
		t.Fatal("a failed page was not reported")
	}
	if _, ok := m.Lookup("u0"); ok || m.Status().Loaded {
		t.Fatal("answered from a first load cut short")
	}
	d.err = nil
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	host := func(login string) string {
		e, ok := m.Lookup(login)
		if !ok {
			return "(miss)"
		}
		return e.GetAttributeValue("host")
	}
	if host("u0") != "a" || host("u9") != "a" || m.Status().Entries != 10 {
		t.Fatalf("after the first complete load: %q %q %+v", host("u0"), host("u9"), m.Status())
	}
	// The directory changes: every host is now b, u8 and u9 are gone. The
	// pass fails on its second page.
	d.entries = all(8, "b")
	d.pages, d.failAt, d.err = 0, 2, errors.New("connection reset")
	if err := m.Refresh(context.Background()); err == nil {
		t.Fatal("a failed page was not reported")
	}
	if host("u0") != "b" || host("u7") != "a" || host("u9") != "a" {
		t.Fatalf("after a pass cut short: u0 %q, u7 %q, u9 %q; want b, a, a", host("u0"), host("u7"), host("u9"))
	}
	d.pages, d.err = 0, nil
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if host("u7") != "b" || host("u9") != "(miss)" || m.Status().Entries != 8 || m.Status().Logins != 8 {
		t.Fatalf("after a complete pass: u7 %q, u9 %q, %+v", host("u7"), host("u9"), m.Status())
	}
}

func TestUnsupportedConfig(t *testing.T) {
	dial := func(context.Context) (Searcher, func(), error) { return nil, nil, errors.New("unused") }
	for _, cfg := range []Config{
		{Filter: "(|(uid=%u)(mail=%u))"},
		{Filter: "(uid=%u)", Base: "ou=%d,dc=x"},
	} {
		if _, err := New(cfg, dial, nil); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%+v: err = %v", cfg, err)
		}
	}
}

// TestAgainstSlapd loads a real directory and checks that the mirror finds
// the same entry as the search, for every generated user.
func TestAgainstSlapd(t *testing.T) {
	const n = 300
	s := slapdtest.Start(t, slapdtest.WithUsers(n))
	dial := func(ctx context.Context) (Searcher, func(), error) {
		c, err := ldap.DialURL(s.URL(), ldap.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}))
		if err != nil {
			return nil, nil, err
		}
		c.SetTimeout(10 * time.Second)
		if err := c.Bind(slapdtest.ServiceDN, slapdtest.ServicePassword); err != nil {
			c.Close()
			return nil, nil, err
		}
		return c, func() { c.Close() }, nil
	}
	m, err := New(Config{
		Base: slapdtest.Suffix, Scope: ldap.ScopeWholeSubtree, Filter: "(&(objectClass=inetOrgPerson)(uid=%u))",
		Attributes: []string{"host", "mail"}, Refresh: time.Hour, PageSize: 50,
	}, dial, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Status().Syncing {
		t.Fatal("sync session against a server without syncprov")
	}
	if m.Status().Logins < n {
		t.Fatalf("mirror holds %d logins, want at least %d (paging?)", m.Status().Logins, n)
	}
	for i := 0; i < n; i += 37 {
		login := "user" + strconv.Itoa(i)
		e, ok := m.Lookup(login)
		want := "uid=" + login + "," + slapdtest.PeopleDN
		if !ok || e.DN != want {
			t.Fatalf("%s: got %v %v, want %s", login, e, ok, want)
		}
		if len(e.GetAttributeValues("host")) == 0 {
			t.Fatalf("%s: host attribute not mirrored: %v", login, e.Attributes)
		}
	}
	if _, ok := m.Lookup("user" + strconv.Itoa(n)); ok {
		t.Fatal("a user that does not exist was answered")
	}
	if m.Status().Age < 0 || m.Status().Age > time.Minute {
		t.Fatalf("age %v", m.Status().Age)
	}
}

// BenchmarkLookup is the mirror's share of a login: one map lookup under
// an atomic snapshot, from 10,000 mirrored users.
func BenchmarkLookup(b *testing.B) {
	entries := make([]*ldap.Entry, 10000)
	for i := range entries {
		entries[i] = entry("uid=user"+strconv.Itoa(i)+",dc=x", "user"+strconv.Itoa(i))
	}
	d := &fakeDir{entries: entries}
	m, err := New(Config{Filter: "(uid=%u)"}, func(context.Context) (Searcher, func(), error) { return d, func() {}, nil }, nil)
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Refresh(context.Background()); err != nil {
		b.Fatal(err)
	}
	logins := make([]string, 1024)
	for i := range logins {
		logins[i] = "user" + strconv.Itoa(i*9)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := m.Lookup(logins[i&1023]); !ok {
			b.Fatal("miss")
		}
		i++
	}
}
