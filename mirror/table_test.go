package mirror

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"github.com/go-ldap/ldap/v3"
)

// TestIndex: inserts and backward-shift removals, with hashes drawn from a
// small range so that tags collide and clusters wrap around, always find
// exactly what a plain multiset holds.
func TestIndex(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	var x index
	type pair struct {
		h   uint64
		rec uint32
	}
	var want []pair
	for step := 0; step < 20000; step++ {
		if len(want) > 0 && rng.IntN(3) == 0 {
			i := rng.IntN(len(want))
			x.remove(want[i].h, want[i].rec)
			want = slices.Delete(want, i, i+1)
		} else {
			p := pair{uint64(rng.IntN(64)) | uint64(rng.IntN(2))<<40, uint32(rng.IntN(1000))}
			if slices.Contains(want, p) {
				continue // one slot per (hash, record), as the table uses it
			}
			x.insert(p.h, p.rec)
			want = append(want, p)
		}
		if step%97 != 0 {
			continue
		}
		if x.n != len(want) {
			t.Fatalf("step %d: %d slots used, want %d", step, x.n, len(want))
		}
		for h := uint64(0); h < 64; h++ {
			var got, exp []uint32
			for p := range x.probe(h) {
				got = append(got, x.rec(p))
			}
			for _, p := range want {
				if uint32(p.h) == uint32(h) {
					exp = append(exp, p.rec)
				}
			}
			slices.Sort(got)
			slices.Sort(exp)
			if !slices.Equal(got, exp) {
				t.Fatalf("step %d, hash %d: found %v, want %v", step, h, got, exp)
			}
		}
	}
}

func TestSplitDN(t *testing.T) {
	for _, tt := range []struct{ dn, rdn, parent string }{
		{"uid=a,ou=people,dc=x", "uid=a", "ou=people,dc=x"},
		{`cn=Smith\, John,ou=people,dc=x`, `cn=Smith\, John`, "ou=people,dc=x"},
		{`cn=back\\,ou=people`, `cn=back\\`, "ou=people"},
		{"dc=x", "dc=x", ""},
		{"uid=a,", "uid=a", ""},
		{`cn="a,b",dc=x`, `cn="a,b",dc=x`, ""},
	} {
		rdn, parent := splitDN(tt.dn)
		if rdn != tt.rdn || parent != tt.parent {
			t.Errorf("%q: %q + %q, want %q + %q", tt.dn, rdn, parent, tt.rdn, tt.parent)
		}
	}
}

// TestTableKeepsEntriesExactly: what Lookup returns is the entry as the
// server sent it (DN byte for byte, attribute names and values in order),
// whatever was interned or stored inline.
func TestTableKeepsEntriesExactly(t *testing.T) {
	x := newTable("uid", false, 0)
	long := string(make([]byte, 300))
	cases := []*ldap.Entry{
		{DN: "uid=a,ou=people,dc=x", Attributes: []*ldap.EntryAttribute{
			{Name: "uid", Values: []string{"a"}}, {Name: "host", Values: []string{"*", "mail.example.org"}},
			{Name: "mail", Values: []string{"a@example.org"}}, {Name: "empty", Values: []string{""}}}},
		{DN: "uid=b,", Attributes: []*ldap.EntryAttribute{{Name: "UID", Values: []string{"b"}}}},
		{DN: `cn=Smith\, John,ou=people,dc=x`, Attributes: []*ldap.EntryAttribute{
			{Name: "uid;x-legacy", Values: []string{"c"}}, {Name: "description", Values: []string{long}},
			{Name: "a1", Values: []string{"1"}}, {Name: "a2", Values: []string{"2"}}, {Name: "a3", Values: []string{"3", "4", "5", "6", "7", "8", "9", "10"}}}},
	}
	for _, e := range cases {
		if err := x.put(e.DN, e); err != nil {
			t.Fatal(err)
		}
	}
	for i, login := range []string{"a", "b", "c"} {
		got, ok := x.lookup(login)
		if !ok || got.DN != cases[i].DN || attrString(got) != attrString(cases[i]) {
			t.Errorf("%s: %v %v, want %v", login, got, ok, cases[i])
		}
	}
}

// TestInternerBounds: past maxValuesPerKey distinct values of one
// attribute, or past maxParents, strings are stored inline and still come
// back right.
func TestInternerBounds(t *testing.T) {
	x := newTable("uid", false, 0)
	n := max(maxValuesPerKey, maxParents) + 100
	for i := range n {
		s := strconv.Itoa(i)
		e := ldap.NewEntry("uid=u"+s+",ou=o"+s+",dc=x",
			map[string][]string{"uid": {"u" + s}, "mail": {s + "@x"}})
		if err := x.put(e.DN, e); err != nil {
			t.Fatal(err)
		}
	}
	if len(x.parents.s) != maxParents || len(x.vals[x.names.m["mail"]].s) != maxValuesPerKey {
		t.Fatalf("interners: %d parents, %d mail values", len(x.parents.s), len(x.vals[x.names.m["mail"]].s))
	}
	for _, i := range []int{0, maxValuesPerKey - 1, maxValuesPerKey, maxParents - 1, maxParents, n - 1} {
		s := strconv.Itoa(i)
		e, ok := x.lookup("u" + s)
		if !ok || e.DN != "uid=u"+s+",ou=o"+s+",dc=x" || e.GetAttributeValue("mail") != s+"@x" {
			t.Errorf("u%s: %v %v", s, e, ok)
		}
	}
}
