package daemon

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"
)

// healthTTL is how long a health answer is reused: probes every second
// from several monitors must not each cost an LDAP round trip.
const healthTTL = time.Second

// Health is the daemon's readiness: its configuration is loaded (always,
// once New returned) and at least one LDAP server answers. Detail names
// the servers' state.
type Health struct {
	OK     bool              `json:"ok"`
	LDAP   map[string]string `json:"ldap"` // URL -> "ok" or what failed
	Mirror string            `json:"mirror,omitempty"`
	At     time.Time         `json:"checked_at"`
}

type healthCache struct {
	mu   sync.Mutex
	last Health
}

// Health checks each LDAP server with a root DSE read (bounded by
// ldap.timeout), at most once a second.
func (d *Daemon) Health(ctx context.Context) Health {
	d.health.mu.Lock()
	defer d.health.mu.Unlock()
	if time.Since(d.health.last.At) < healthTTL {
		return d.health.last
	}
	g := d.cur.Load()
	h := Health{LDAP: map[string]string{}, At: time.Now()}
	for url, err := range g.dir.Ping(ctx) {
		if err != nil {
			h.LDAP[url] = err.Error()
			continue
		}
		h.LDAP[url] = "ok"
		h.OK = true
	}
	if g.mirror != nil {
		st := g.mirror.Status()
		switch {
		case st.Syncing:
			h.Mirror = "syncing"
		case st.Loaded:
			h.Mirror = "loaded, " + st.Age.Round(time.Second).String() + " old"
		default:
			h.Mirror = "not loaded: logins search"
		}
	}
	d.health.last = h
	return h
}

// serveHealth is /healthz: 200 when some LDAP server answers, 503 when
// none does; the body says which.
func (d *Daemon) serveHealth(w http.ResponseWriter, r *http.Request) {
	h := d.Health(r.Context())
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if !h.OK {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(h)
}
