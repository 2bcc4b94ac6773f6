package mirror

import (
	"fmt"
	"strings"

	"github.com/go-ldap/ldap/v3"
)

// reference is the mirror's rule written the plain way (the whole snapshot
// rebuilt from the entries, maps of strings), as the mirror was before the
// compact table: the oracle the table's answers are checked against.
type reference struct {
	byValue map[string]*ldap.Entry
	off     string
}

func buildReference(entries []*ldap.Entry, keyAttr string) reference {
	ref := reference{byValue: map[string]*ldap.Entry{}}
	type owner struct {
		entry *ldap.Entry
		count int
	}
	owners := map[string]*owner{}
	exact := map[string]*ldap.Entry{}
	for _, e := range entries {
		seen := map[string]bool{}
		for _, a := range e.Attributes {
			name, _, _ := strings.Cut(a.Name, ";")
			if !strings.EqualFold(name, keyAttr) {
				continue
			}
			for _, v := range a.Values {
				fk, ok := refFold(v)
				if !ok {
					ref.off = fmt.Sprintf("entry %s has a non-ASCII %s value", e.DN, keyAttr)
					return ref
				}
				exact[v] = e
				if seen[fk] {
					continue
				}
				seen[fk] = true
				if o := owners[fk]; o != nil {
					o.count++
				} else {
					owners[fk] = &owner{entry: e, count: 1}
				}
			}
		}
	}
	for v, e := range exact {
		fk, _ := refFold(v)
		if o := owners[fk]; o.count == 1 && o.entry == e {
			ref.byValue[v] = e
		}
	}
	return ref
}

func refFold(v string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 0x80:
			return "", false
		case c <= ' ' || c == 0x7f:
			continue
		case c >= 'A' && c <= 'Z':
			c += 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String(), true
}
