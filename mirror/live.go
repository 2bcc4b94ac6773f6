package mirror

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/go-ldap/ldap/v3"
)

// liveIndex is the mirror kept current by a sync session: built from the
// refresh phase, then changed entry by entry. It keeps the same rules as
// build (a value answers only when its folded form belongs to exactly one
// entry; any non-ASCII value turns the whole mirror off), maintained per
// change instead of per reload.
type liveIndex struct {
	keyAttr string
	max     int

	mu      sync.RWMutex
	items   map[[16]byte]*item // by entryUUID (from the sync state control)
	byFold  map[string][]*item // folded value -> distinct entries holding it
	byValue map[string]*ldap.Entry
	offs    int    // entries holding a non-ASCII key value
	offWhy  string // one of them, for the log

	// Session health, read by Lookup without the lock.
	dead  atomic.Bool  // the session ended: answer nothing
	alive atomic.Int64 // unix nanos of the last proof the session was current
}

type item struct {
	e     *ldap.Entry
	folds []foldVals // usually one; a slice is lighter than a map per entry
	off   bool
}

type foldVals struct {
	fold string
	vals []string // the exact values folding to it
}

func (it *item) vals(fk string) []string {
	for _, f := range it.folds {
		if f.fold == fk {
			return f.vals
		}
	}
	return nil
}

func newLiveIndex(keyAttr string, max int) *liveIndex {
	return &liveIndex{
		keyAttr: keyAttr, max: max,
		items:   map[[16]byte]*item{},
		byFold:  map[string][]*item{},
		byValue: map[string]*ldap.Entry{},
	}
}

// put adds or replaces the entry with this entryUUID.
func (x *liveIndex) put(id [16]byte, e *ldap.Entry) error {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old := x.items[id]; old != nil {
		x.remove(id, old)
	}
	for _, a := range e.Attributes {
		a.ByteValues = nil // as in build: the access rules read Values only
	}
	it := &item{e: e}
	for _, v := range keyValues(e, x.keyAttr) {
		fk, ok := fold(v)
		if !ok {
			it.off = true
			x.offWhy = fmt.Sprintf("entry %s has a non-ASCII %s value", e.DN, x.keyAttr)
			break
		}
		if i := slices.IndexFunc(it.folds, func(f foldVals) bool { return f.fold == fk }); i >= 0 {
			it.folds[i].vals = append(it.folds[i].vals, v)
		} else {
			it.folds = append(it.folds, foldVals{fk, []string{v}})
		}
	}
	x.items[id] = it
	if it.off {
		it.folds = nil
		x.offs++
	} else {
		for _, f := range it.folds {
			x.byFold[f.fold] = append(x.byFold[f.fold], it)
			x.recompute(f.fold)
		}
	}
	if len(x.items) > x.max {
		return fmt.Errorf("mirror: more than %d entries", x.max)
	}
	return nil
}

// del removes the entry with this entryUUID, if mirrored.
func (x *liveIndex) del(id [16]byte) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if old := x.items[id]; old != nil {
		x.remove(id, old)
	}
}

func (x *liveIndex) remove(id [16]byte, it *item) {
	delete(x.items, id)
	if it.off {
		x.offs--
		return
	}
	for _, f := range it.folds {
		fk := f.fold
		for _, v := range f.vals {
			if x.byValue[v] == it.e {
				delete(x.byValue, v)
			}
		}
		owners := slices.DeleteFunc(x.byFold[fk], func(o *item) bool { return o == it })
		if len(owners) == 0 {
			delete(x.byFold, fk)
			continue
		}
		x.byFold[fk] = owners
		x.recompute(fk)
	}
}

// recompute sets byValue for every exact value folding to fk: answered
// when exactly one entry holds fk, absent otherwise.
func (x *liveIndex) recompute(fk string) {
	owners := x.byFold[fk]
	for _, o := range owners {
		for _, v := range o.vals(fk) {
			if len(owners) == 1 {
				x.byValue[v] = o.e
			} else {
				delete(x.byValue, v)
			}
		}
	}
}

func (x *liveIndex) lookup(login string) (*ldap.Entry, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.offs > 0 {
		return nil, false
	}
	e, ok := x.byValue[login]
	return e, ok
}

func (x *liveIndex) logins() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.offs > 0 {
		return 0
	}
	return len(x.byValue)
}

func (x *liveIndex) off() string {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if x.offs > 0 {
		return x.offWhy
	}
	return ""
}
