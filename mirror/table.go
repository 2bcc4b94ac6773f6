package mirror

import (
	"fmt"
	"hash/maphash"
	"strings"
	"sync"

	"github.com/go-ldap/ldap/v3"
)

// table is the mirror's store, built for directories of millions of
// entries: each entry is one packed string (its record), attribute names,
// DN parents and common attribute values are interned, and the two
// indexes (identity -> record, folded login -> records) are open-addressed
// arrays of integers the garbage collector does not scan. About 100 bytes
// of heap per typical entry (DN, uid, host), against ~2.4 KB when go-ldap's
// decoded entries were kept.
//
// The same rules hold in both modes (periodic reload keyed by DN, content
// synchronisation keyed by entryUUID): a login is answered only if exactly
// one entry holds a value that folds (RFC 4518 as far as ASCII goes) to the
// login's folded form, and that entry holds the login exactly; any entry
// with a non-ASCII key value turns every lookup into a miss while it is
// there. Lookup materialises an *ldap.Entry per call.
//
// A record is:
//
//	[16 bytes entryUUID, sync mode only]
//	parent   str (interned DN parent, or "" when the DN is kept whole)
//	rdn      str (the DN up to its first unescaped comma, or the whole DN)
//	nattrs   uvarint
//	nattrs × { name str; nvals uvarint; nvals × value str }
//
// where str is a uvarint x: x odd → the interned string x>>1 of the
// field's interner; x even → x>>1 bytes follow inline.
type table struct {
	keyAttr string
	byUUID  bool // identity is the 16-byte entryUUID, else the DN
	max     int  // sync mode: more entries than this is an error (0: no bound)
	seed    maphash.Seed

	mu     sync.RWMutex
	recs   []string // records by number; "" is a free number
	free   []uint32
	live   int
	ids    index    // hash(identity) -> record
	keys   index    // hash(folded key value) -> records, one slot per distinct folded value per record
	marks  []uint64 // paged mode: record seen by the current pass
	logins int      // exact login values answered (unambiguous)
	offs   int      // records with a non-ASCII key value
	offWhy string

	names   interner   // attribute names as the server spelled them
	vals    []interner // per interned name: its common values
	parents interner
	buf     []byte // scratch: encoding
	folds   []foldKey
}

// Bounds on what is interned: past them, strings are stored inline (the
// interners never shrink, so they must stay small).
const (
	maxNames        = 1024
	maxParents      = 1 << 14
	maxValuesPerKey = 4096 // distinct values per attribute name
	maxInternLen    = 128
)

type interner struct {
	m map[string]uint32
	s []string
}

// id returns v's number, interning it if there is room.
func (in *interner) id(v string, max int) (uint32, bool) {
	if id, ok := in.m[v]; ok {
		return id, true
	}
	if len(in.s) >= max || len(v) > maxInternLen {
		return 0, false
	}
	if in.m == nil {
		in.m = make(map[string]uint32)
	}
	v = strings.Clone(v) // never keep the decoder's buffer alive
	id := uint32(len(in.s))
	in.m[v] = id
	in.s = append(in.s, v)
	return id, true
}

func newTable(keyAttr string, byUUID bool, max int) *table {
	return &table{keyAttr: keyAttr, byUUID: byUUID, max: max, seed: maphash.MakeSeed()}
}

// ---- records ----

func appendUvarint(b []byte, x uint64) []byte {
	for x >= 0x80 {
		b = append(b, byte(x)|0x80)
		x >>= 7
	}
	return append(b, byte(x))
}

func appendStr(b []byte, in *interner, max int, s string) []byte {
	if in != nil {
		if id, ok := in.id(s, max); ok {
			return appendUvarint(b, uint64(id)<<1|1)
		}
	}
	b = appendUvarint(b, uint64(len(s))<<1)
	return append(b, s...)
}

// splitDN cuts a DN at its first comma not escaped by a backslash. Any cut
// at a comma joins back to the same bytes; this one shares parents.
func splitDN(dn string) (rdn, parent string) {
	bs := 0
	for i := 0; i < len(dn); i++ {
		switch dn[i] {
		case '\\':
			bs++
			continue
		case ',':
			if bs%2 == 0 {
				return dn[:i], dn[i+1:]
			}
		case '"':
			return dn, "" // old quoted form: keep whole
		}
		bs = 0
	}
	return dn, ""
}

// isKeyName: the key attribute or one of its subtypes with options
// (cn;lang-en matches a (cn=...) filter).
func (t *table) isKeyName(name string) bool {
	base, _, _ := strings.Cut(name, ";")
	return strings.EqualFold(base, t.keyAttr)
}

// encode packs e into t.buf.
func (t *table) encode(id string, e *ldap.Entry) []byte {
	b := t.buf[:0]
	if t.byUUID {
		b = append(b, id...)
	}
	rdn, parent := splitDN(e.DN)
	if parent == "" {
		rdn = e.DN // no comma, or a trailing one: keep it whole
	}
	if parent != "" {
		if pid, ok := t.parents.id(parent, maxParents); ok {
			b = appendUvarint(b, uint64(pid)<<1|1)
		} else {
			b = appendUvarint(b, 0) // inline ""
			rdn = e.DN
		}
	} else {
		b = appendUvarint(b, 0)
	}
	b = appendUvarint(b, uint64(len(rdn))<<1)
	b = append(b, rdn...)
	b = appendUvarint(b, uint64(len(e.Attributes)))
	for _, a := range e.Attributes {
		nid, named := t.names.id(a.Name, maxNames)
		if named {
			b = appendUvarint(b, uint64(nid)<<1|1)
			for len(t.vals) <= int(nid) {
				t.vals = append(t.vals, interner{})
			}
		} else {
			b = appendUvarint(b, uint64(len(a.Name))<<1)
			b = append(b, a.Name...)
		}
		var vin *interner
		if named && !t.isKeyName(a.Name) {
			vin = &t.vals[nid]
		}
		b = appendUvarint(b, uint64(len(a.Values)))
		for _, v := range a.Values {
			b = appendStr(b, vin, maxValuesPerKey, v)
		}
	}
	t.buf = b
	return b
}

// reader walks a record.
type reader struct {
	s string
	i int
}

func (r *reader) uvarint() int {
	var x uint64
	var sh uint
	for r.i < len(r.s) {
		c := r.s[r.i]
		r.i++
		x |= uint64(c&0x7f) << sh
		if c < 0x80 {
			return int(x)
		}
		sh += 7
	}
	return 0 // unreachable: records are ours
}

// str reads a str field; in resolves interned ones (nil: never interned).
func (r *reader) str(in *interner) string {
	x := r.uvarint()
	if x&1 == 1 {
		return in.s[x>>1]
	}
	n := x >> 1
	s := r.s[r.i : r.i+n]
	r.i += n
	return s
}

// attr reads an attribute's name and count of values, and says where its
// interned values live.
func (t *table) attr(r *reader) (name string, vin *interner, n int) {
	x := r.uvarint()
	if x&1 == 1 {
		nid := x >> 1
		name, vin = t.names.s[nid], &t.vals[nid]
	} else {
		name = r.s[r.i : r.i+x>>1]
		r.i += x >> 1
	}
	return name, vin, r.uvarint()
}

// open starts reading rec after its identity: parent, rdn, and the number
// of attributes.
func (t *table) open(rec string) (r reader, parent, rdn string, nattrs int) {
	r = reader{s: rec}
	if t.byUUID {
		r.i = 16
	}
	parent = r.str(&t.parents)
	rdn = r.str(nil)
	return r, parent, rdn, r.uvarint()
}

// keyValues calls fn for each value of the key attribute (and subtypes)
// in rec, until fn returns false.
func (t *table) keyValues(rec string, fn func(v string) bool) {
	r, _, _, n := t.open(rec)
	for range n {
		name, vin, nv := t.attr(&r)
		key := t.isKeyName(name)
		for range nv {
			v := r.str(vin)
			if key && !fn(v) {
				return
			}
		}
	}
}

func (t *table) dnEquals(rec, dn string) bool {
	_, parent, rdn, _ := t.open(rec)
	if parent == "" {
		return rdn == dn
	}
	return len(dn) == len(rdn)+1+len(parent) && dn[:len(rdn)] == rdn && dn[len(rdn)] == ',' && dn[len(rdn)+1:] == parent
}

// smallEntry and entryBuf are a materialised entry in one allocation, for
// the usual shapes (uid and host; a few more attributes).
type smallEntry struct {
	e     ldap.Entry
	ptrs  [2]*ldap.EntryAttribute
	attrs [2]ldap.EntryAttribute
	vals  [3]string
}

type entryBuf struct {
	e     ldap.Entry
	ptrs  [6]*ldap.EntryAttribute
	attrs [6]ldap.EntryAttribute
	vals  [10]string
}

func (t *table) materialize(rec string) *ldap.Entry {
	r, parent, rdn, n := t.open(rec)
	// Count the values first, to size one backing array.
	nv := 0
	{
		r2 := r
		for range n {
			_, vin, k := t.attr(&r2)
			for range k {
				r2.str(vin)
			}
			nv += k
		}
	}
	var (
		e     *ldap.Entry
		ptrs  []*ldap.EntryAttribute
		attrs []ldap.EntryAttribute
		vals  []string
	)
	switch {
	case n <= 2 && nv <= 3:
		b := &smallEntry{}
		e, ptrs, attrs, vals = &b.e, b.ptrs[:0], b.attrs[:0], b.vals[:0]
	case n <= 6 && nv <= 10:
		b := &entryBuf{}
		e, ptrs, attrs, vals = &b.e, b.ptrs[:0], b.attrs[:0], b.vals[:0]
	default:
		e, ptrs, attrs, vals = &ldap.Entry{}, make([]*ldap.EntryAttribute, 0, n), make([]ldap.EntryAttribute, 0, n), make([]string, 0, nv)
	}
	for range n {
		name, vin, k := t.attr(&r)
		start := len(vals)
		for range k {
			vals = append(vals, r.str(vin))
		}
		attrs = append(attrs, ldap.EntryAttribute{Name: name, Values: vals[start:len(vals):len(vals)]})
		ptrs = append(ptrs, &attrs[len(attrs)-1])
	}
	e.DN = rdn
	if parent != "" {
		e.DN = rdn + "," + parent
	}
	e.Attributes = ptrs
	return e
}

// ---- folding ----

// foldKey is one distinct folded key value of a record, and how many
// distinct exact values fold to it.
type foldKey struct {
	fold  string
	exact int
}

// foldAppend appends v folded (fold's rules) to b; ok is false for
// non-ASCII.
func foldAppend(b []byte, v string) ([]byte, bool) {
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 0x80:
			return b, false
		case c <= ' ' || c == 0x7f:
			continue
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		}
		b = append(b, c)
	}
	return b, true
}

// foldEquals: v folds to exactly f.
func foldEquals(v, f string) bool {
	j := 0
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 0x80:
			return false
		case c <= ' ' || c == 0x7f:
			continue
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		}
		if j >= len(f) || f[j] != c {
			return false
		}
		j++
	}
	return j == len(f)
}

// foldKeys lists rec's distinct folded key values (in t.folds), or
// reports a non-ASCII one.
func (t *table) foldKeys(rec string) (keys []foldKey, off string) {
	keys = t.folds[:0]
	var exact []string
	var fb []byte
	t.keyValues(rec, func(v string) bool {
		var ok bool
		fb, ok = foldAppend(fb[:0], v)
		if !ok {
			off = v
			return false
		}
		for _, x := range exact {
			if x == v {
				return true
			}
		}
		exact = append(exact, v)
		for i := range keys {
			if keys[i].fold == string(fb) {
				keys[i].exact++
				return true
			}
		}
		keys = append(keys, foldKey{fold: string(fb), exact: 1})
		return true
	})
	t.folds = keys
	return keys, off
}

// exactCount: distinct values of rec that fold to f.
func (t *table) exactCount(rec, f string) int {
	var seen []string
	t.keyValues(rec, func(v string) bool {
		if foldEquals(v, f) {
			for _, x := range seen {
				if x == v {
					return true
				}
			}
			seen = append(seen, v)
		}
		return true
	})
	return len(seen)
}

func (t *table) holdsFold(rec, f string) (held bool) {
	t.keyValues(rec, func(v string) bool {
		held = foldEquals(v, f)
		return !held
	})
	return held
}

func (t *table) holdsExact(rec, login string) (held bool) {
	t.keyValues(rec, func(v string) bool {
		held = v == login
		return !held
	})
	return held
}

// owners returns up to two records other than not holding a value that
// folds to f.
func (t *table) owners(h uint64, f string, not uint32) (n int, first uint32) {
	for p := range t.keys.probe(h) {
		rec := t.keys.rec(p)
		if rec == not || (n == 1 && rec == first) || !t.holdsFold(t.recs[rec], f) {
			continue
		}
		if n == 0 {
			first = rec
		}
		n++
		if n == 2 {
			break
		}
	}
	return n, first
}

// ---- changes (under t.mu) ----

func (t *table) hashString(s string) uint64 { return maphash.String(t.seed, s) }

// find returns the record whose identity is id, or -1.
func (t *table) find(h uint64, id string) int {
	for p := range t.ids.probe(h) {
		rec := t.ids.rec(p)
		s := t.recs[rec]
		if t.byUUID {
			if s[:16] == id {
				return int(rec)
			}
		} else if t.dnEquals(s, id) {
			return int(rec)
		}
	}
	return -1
}

// put adds or replaces the entry with this identity (its DN, or its
// entryUUID's 16 bytes in sync mode) and marks it seen by the current pass.
func (t *table) put(id string, e *ldap.Entry) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.hashString(id)
	b := t.encode(id, e)
	i := t.find(h, id)
	if i >= 0 {
		if t.recs[i] == string(b) {
			t.mark(uint32(i))
			return nil
		}
		t.unindexKeys(uint32(i))
		t.recs[i] = string(b)
	} else {
		i = t.alloc(string(b))
		t.ids.insert(h, uint32(i))
		t.live++
	}
	t.indexKeys(uint32(i))
	t.mark(uint32(i))
	if t.max > 0 && t.live > t.max {
		return fmt.Errorf("mirror: more than %d entries", t.max)
	}
	return nil
}

// del removes the entry with this identity, if held.
func (t *table) del(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.hashString(id)
	if i := t.find(h, id); i >= 0 {
		t.drop(uint32(i), h)
	}
}

func (t *table) drop(i uint32, idHash uint64) {
	t.unindexKeys(i)
	t.ids.remove(idHash, i)
	t.recs[i] = ""
	t.free = append(t.free, i)
	t.live--
}

func (t *table) alloc(rec string) int {
	if n := len(t.free); n > 0 {
		i := t.free[n-1]
		t.free = t.free[:n-1]
		t.recs[i] = rec
		return int(i)
	}
	t.recs = append(t.recs, rec)
	return len(t.recs) - 1
}

func (t *table) indexKeys(i uint32) {
	keys, off := t.foldKeys(t.recs[i])
	if off != "" {
		t.offs++
		t.offWhy = fmt.Sprintf("entry %s has a non-ASCII %s value", t.dnOf(t.recs[i]), t.keyAttr)
		return
	}
	for _, k := range keys {
		h := t.hashString(k.fold)
		switch n, o := t.owners(h, k.fold, i); n {
		case 0:
			t.logins += k.exact
		case 1:
			t.logins -= t.exactCount(t.recs[o], k.fold)
		}
		t.keys.insert(h, i)
	}
}

func (t *table) unindexKeys(i uint32) {
	keys, off := t.foldKeys(t.recs[i])
	if off != "" {
		t.offs--
		return
	}
	for _, k := range keys {
		h := t.hashString(k.fold)
		t.keys.remove(h, i)
		switch n, o := t.owners(h, k.fold, i); n {
		case 0:
			t.logins -= k.exact
		case 1:
			t.logins += t.exactCount(t.recs[o], k.fold)
		}
	}
}

func (t *table) identity(i uint32) (string, uint64) {
	s := t.recs[i]
	if t.byUUID {
		return s[:16], t.hashString(s[:16])
	}
	dn := t.dnOf(s)
	return dn, t.hashString(dn)
}

func (t *table) dnOf(rec string) string {
	_, parent, rdn, _ := t.open(rec)
	if parent == "" {
		return rdn
	}
	return rdn + "," + parent
}

// ---- paged passes ----

func (t *table) mark(i uint32) {
	for int(i>>6) >= len(t.marks) {
		t.marks = append(t.marks, 0)
	}
	t.marks[i>>6] |= 1 << (i & 63)
}

// beginPass forgets which entries were seen.
func (t *table) beginPass() {
	t.mu.Lock()
	clear(t.marks)
	t.mu.Unlock()
}

// sweep removes the entries the pass did not see, a batch at a time so
// lookups are not held up for long.
func (t *table) sweep() (removed int) {
	const batch = 4096
	for start := 0; ; start += batch {
		t.mu.Lock()
		if start >= len(t.recs) {
			t.mu.Unlock()
			return removed
		}
		for i := start; i < min(start+batch, len(t.recs)); i++ {
			if t.recs[i] == "" || (i>>6 < len(t.marks) && t.marks[i>>6]&(1<<(i&63)) != 0) {
				continue
			}
			_, h := t.identity(uint32(i))
			t.drop(uint32(i), h)
			removed++
		}
		t.mu.Unlock()
	}
}

// ---- reads ----

// lookup answers login (plainLogin already checked) when exactly one entry
// holds it under folding and that one holds it exactly.
func (t *table) lookup(login string) (*ldap.Entry, bool) {
	var fb [256]byte
	f, ok := foldAppend(fb[:0], login)
	if !ok {
		return nil, false
	}
	fs := string(f) // small: on the stack
	h := t.hashString(fs)
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.offs > 0 {
		return nil, false
	}
	n, o := t.owners(h, fs, ^uint32(0))
	if n != 1 || !t.holdsExact(t.recs[o], login) {
		return nil, false
	}
	return t.materialize(t.recs[o]), true
}

func (t *table) counts() (entries, logins int, off string) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.offs > 0 {
		return t.live, 0, t.offWhy
	}
	return t.live, t.logins, ""
}

// ---- index ----

// index is an open-addressed hash table with linear probing and backward-
// shift deletion. A slot is tag<<32 | record+1 (0: empty), tag being the
// low 32 bits of the hash; a slot's home is tag & mask, so growing needs
// no rehashing. Several slots may share a tag: callers verify.
type index struct {
	slots []uint64
	n     int
}

func (x *index) mask() uint32 { return uint32(len(x.slots) - 1) }

func (x *index) rec(p uint32) uint32 { return uint32(x.slots[p]) - 1 }

// probe yields the positions of the slots whose tag is h's.
func (x *index) probe(h uint64) func(yield func(uint32) bool) {
	return func(yield func(uint32) bool) {
		if len(x.slots) == 0 {
			return
		}
		tag, m := uint32(h), x.mask()
		for p := tag & m; ; p = (p + 1) & m {
			s := x.slots[p]
			if s == 0 {
				return
			}
			if uint32(s>>32) == tag && !yield(p) {
				return
			}
		}
	}
}

func (x *index) insert(h uint64, rec uint32) {
	if (x.n+1)*10 > len(x.slots)*7 {
		x.grow()
	}
	x.put(uint64(uint32(h))<<32 | uint64(rec+1))
	x.n++
}

func (x *index) put(s uint64) {
	m := x.mask()
	p := uint32(s>>32) & m
	for x.slots[p] != 0 {
		p = (p + 1) & m
	}
	x.slots[p] = s
}

func (x *index) grow() {
	old := x.slots
	x.slots = make([]uint64, max(16, 2*len(old)))
	for _, s := range old {
		if s != 0 {
			x.put(s)
		}
	}
}

// remove deletes the slot for rec under h's tag, if present.
func (x *index) remove(h uint64, rec uint32) {
	want := uint64(uint32(h))<<32 | uint64(rec+1)
	for p := range x.probe(h) {
		if x.slots[p] != want {
			continue
		}
		m := x.mask()
		i := p
		for j := (i + 1) & m; x.slots[j] != 0; j = (j + 1) & m {
			home := uint32(x.slots[j]>>32) & m
			// Move slot j back to i unless its home lies cyclically in (i, j].
			if (j > i && (home <= i || home > j)) || (j < i && home <= i && home > j) {
				x.slots[i] = x.slots[j]
				i = j
			}
		}
		x.slots[i] = 0
		x.n--
		return
	}
}
