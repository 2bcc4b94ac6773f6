package mirror

import (
	"context"
	"encoding/binary"
	"runtime"
	"strconv"
	"testing"

	"github.com/go-ldap/ldap/v3"
)

// genDir pages through n generated users shaped like the benchmark's
// (bench/loadgen slapd: uid=userN,ou=people,dc=example,dc=org, uid, host *),
// making fresh entries for every page as a decoder would.
type genDir struct{ n int }

func genEntry(i int) *ldap.Entry {
	uid := "user" + strconv.Itoa(i)
	return &ldap.Entry{DN: "uid=" + uid + ",ou=people,dc=example,dc=org", Attributes: []*ldap.EntryAttribute{
		{Name: "uid", Values: []string{uid}, ByteValues: [][]byte{[]byte(uid)}},
		{Name: "host", Values: []string{"*"}, ByteValues: [][]byte{[]byte("*")}},
	}}
}

func (g genDir) Search(req *ldap.SearchRequest) (*ldap.SearchResult, error) {
	pc := ldap.FindControl(req.Controls, ldap.ControlTypePaging).(*ldap.ControlPaging)
	from := 0
	if len(pc.Cookie) > 0 {
		from, _ = strconv.Atoi(string(pc.Cookie))
	}
	to := min(g.n, from+int(pc.PagingSize))
	res := &ldap.SearchResult{}
	for i := from; i < to; i++ {
		res.Entries = append(res.Entries, genEntry(i))
	}
	next := &ldap.ControlPaging{}
	if to < g.n {
		next.SetCookie([]byte(strconv.Itoa(to)))
	}
	res.Controls = append(res.Controls, next)
	return res, nil
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

const benchEntries = 200_000

// BenchmarkMirrorMemory reports the heap the mirror keeps per entry
// (B/entry, live heap after a GC) for 200,000 generated users, loaded by
// paged refresh and by a sync session's table, and the cost of a paged
// refresh pass over an unchanged directory (ns/entry). A regression of the
// compact representation shows here; RSS is about twice the live heap
// under Go's default GOGC (docs/benchmarks.md).
func BenchmarkMirrorMemory(b *testing.B) {
	b.Run("paged", func(b *testing.B) {
		d := genDir{benchEntries}
		before := heapInUse()
		m, err := New(Config{Filter: "(uid=%u)", MaxEntries: benchEntries},
			func(context.Context) (Searcher, func(), error) { return d, func() {}, nil }, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Refresh(context.Background()); err != nil {
			b.Fatal(err)
		}
		perEntry := float64(heapInUse()-before) / benchEntries
		if _, ok := m.Lookup("user12345"); !ok {
			b.Fatal("miss")
		}
		b.ResetTimer()
		for b.Loop() {
			if err := m.Refresh(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/benchEntries, "ns/entry")
		b.ReportMetric(perEntry, "B/entry")
		runtime.KeepAlive(m)
	})
	b.Run("sync", func(b *testing.B) {
		for b.Loop() {
			before := heapInUse()
			x := newTable("uid", true, 0)
			var id [16]byte
			for i := range benchEntries {
				binary.BigEndian.PutUint64(id[8:], uint64(i))
				if err := x.put(string(id[:]), genEntry(i)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(heapInUse()-before)/benchEntries, "B/entry")
			runtime.KeepAlive(x)
		}
	})
}
