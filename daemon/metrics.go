package daemon

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/cache"
	"github.com/mailauthd/mailauthd/directory"
	"github.com/mailauthd/mailauthd/throttle"
)

// metrics are the daemon's Prometheus metrics, in a registry of its own.
// Counters that live in a generation (cache, pool waits) or in the
// throttle are kept monotonic across reloads: what a retired one counted
// is added to a base.
type metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec   // door, service, outcome, cause
	duration *prometheus.HistogramVec // door
	ldapOps  *prometheus.CounterVec   // server, op, result
	ldapDur  *prometheus.HistogramVec // server, op
	reloads  *prometheus.CounterVec   // result
	lastOK   prometheus.Gauge

	mu              sync.Mutex
	retiredCache    cache.Stats
	retiredWaits    [2]uint64 // search, bind
	retiredRetries  directory.Stats
	retiredThrottle throttle.Stats
}

// services are the service names kept as a label value; anything else a
// client sends is "other", so a client cannot grow the label set.
var services = map[string]bool{
	"smtp": true, "submission": true, "imap": true, "pop": true, "pop3": true, "sieve": true,
	"managesieve": true, "lmtp": true, "doveadm": true, "login": true, "": true,
}

func newMetrics(d *Daemon) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	f := promauto{m.reg}
	m.requests = f.counterVec("mailauthd_requests_total",
		"Decisions by front door, service, outcome and cause.", "door", "service", "outcome", "cause")
	m.duration = f.histogramVec("mailauthd_request_duration_seconds",
		"Time to decide a request, LDAP included, by front door.",
		prometheus.ExponentialBuckets(0.0001, 2.5, 12), "door")
	m.ldapOps = f.counterVec("mailauthd_ldap_operations_total",
		"LDAP binds and searches by server and result: ok, an LDAP result code, timeout, connection, busy, closed.",
		"server", "op", "result")
	m.ldapDur = f.histogramVec("mailauthd_ldap_operation_duration_seconds",
		"Time of LDAP binds and searches, connection included, by server.",
		prometheus.ExponentialBuckets(0.0001, 2.5, 12), "server", "op")
	m.reloads = f.counterVec("mailauthd_config_reloads_total", "Configuration reloads by result.", "result")
	m.lastOK = f.gauge("mailauthd_config_last_reload_success_timestamp_seconds",
		"When the configuration in effect was loaded (Unix time).")
	m.lastOK.SetToCurrentTime()

	for i, role := range []string{"search", "bind"} {
		i := i
		for _, state := range []string{"in_use", "idle"} {
			state := state
			f.gaugeFunc("mailauthd_ldap_connections", "LDAP connections of the pools by role and state.",
				prometheus.Labels{"role": role, "state": state}, func() float64 {
					st := d.poolStats(i)
					if state == "idle" {
						return float64(st.Idle)
					}
					return float64(st.InUse)
				})
		}
		f.counterFunc("mailauthd_ldap_pool_waits_total",
			"Operations that waited for a free pooled connection.", prometheus.Labels{"role": role},
			func() float64 {
				m.mu.Lock()
				defer m.mu.Unlock()
				return float64(m.retiredWaits[i] + d.poolStats(i).Waits)
			})
	}
	for kind, pick := range map[string]func(directory.Stats) int64{
		"stale_idle":  func(s directory.Stats) int64 { return s.StaleIdle },
		"stale_retry": func(s directory.Stats) int64 { return s.StaleRetries },
		"failover":    func(s directory.Stats) int64 { return s.Failovers },
	} {
		f.counterFunc("mailauthd_ldap_recoveries_total",
			"Connection trouble the transport absorbed without failing the login: idle connections found closed (stale_idle), "+
				"operations retried on a fresh connection (stale_retry), operations moved to another server (failover).",
			prometheus.Labels{"kind": kind}, func() float64 {
				m.mu.Lock()
				defer m.mu.Unlock()
				return float64(pick(m.retiredRetries) + pick(d.cur.Load().dir.Stats()))
			})
	}
	cacheStat := func(pick func(cache.Stats) uint64) func() float64 {
		return func() float64 {
			m.mu.Lock()
			defer m.mu.Unlock()
			n := pick(m.retiredCache)
			if c := d.cur.Load().cache; c != nil {
				n += pick(c.Stats())
			}
			return float64(n)
		}
	}
	for result, pick := range map[string]func(cache.Stats) uint64{
		"hit": func(s cache.Stats) uint64 { return s.Hits }, "miss": func(s cache.Stats) uint64 { return s.Misses },
		"coalesced": func(s cache.Stats) uint64 { return s.Coalesced },
	} {
		f.counterFunc("mailauthd_cache_requests_total", "Credential cache lookups by result.",
			prometheus.Labels{"result": result}, cacheStat(pick))
	}
	f.counterFunc("mailauthd_cache_evictions_total", "Entries evicted from the credential cache.", nil,
		cacheStat(func(s cache.Stats) uint64 { return s.Evictions }))
	f.gaugeFunc("mailauthd_cache_entries", "Entries in the credential cache.", nil, func() float64 {
		if c := d.cur.Load().cache; c != nil {
			return float64(c.Len())
		}
		return 0
	})
	mirror := func(pick func(loaded, syncing bool, logins int, age time.Duration) float64) func() float64 {
		return func() float64 {
			m := d.cur.Load().mirror
			if m == nil {
				return 0
			}
			st := m.Status()
			return pick(st.Loaded, st.Syncing, st.Logins, st.Age)
		}
	}
	f.gaugeFunc("mailauthd_mirror_loaded", "1 while the mirror of user entries answers (ldap.mirror_refresh).", nil,
		mirror(func(l, _ bool, _ int, _ time.Duration) float64 { return b2f(l) }))
	f.gaugeFunc("mailauthd_mirror_syncing", "1 while a content-synchronisation session keeps the mirror current.", nil,
		mirror(func(_, s bool, _ int, _ time.Duration) float64 { return b2f(s) }))
	f.gaugeFunc("mailauthd_mirror_logins", "Logins the mirror answers for.", nil,
		mirror(func(_, _ bool, n int, _ time.Duration) float64 { return float64(n) }))
	f.gaugeFunc("mailauthd_mirror_age_seconds", "Time since the mirror was last known current.", nil,
		mirror(func(_, _ bool, _ int, a time.Duration) float64 { return a.Seconds() }))
	throttleStat := func(pick func(throttle.Stats) uint64) func() float64 {
		return func() float64 {
			m.mu.Lock()
			defer m.mu.Unlock()
			n := pick(m.retiredThrottle)
			if th := d.currentThrottle(); th != nil {
				n += pick(th.Stats())
			}
			return float64(n)
		}
	}
	f.counterFunc("mailauthd_throttle_refusals_total", "Attempts refused without asking the directory, by budget.",
		prometheus.Labels{"scope": "account"}, throttleStat(func(s throttle.Stats) uint64 { return s.RefusedAccount }))
	f.counterFunc("mailauthd_throttle_refusals_total", "Attempts refused without asking the directory, by budget.",
		prometheus.Labels{"scope": "client"}, throttleStat(func(s throttle.Stats) uint64 { return s.RefusedClient }))
	f.counterFunc("mailauthd_throttle_repeats_total", "The same wrong password again, answered from memory.", nil,
		throttleStat(func(s throttle.Stats) uint64 { return s.Repeated }))
	f.counterFunc("mailauthd_throttle_delays_total", "Failure answers that were delayed.", nil,
		throttleStat(func(s throttle.Stats) uint64 { return s.Delayed }))
	return m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// promauto registers on one registry (the package of that name registers
// on the global one).
type promauto struct{ reg *prometheus.Registry }

func (p promauto) counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	p.reg.MustRegister(c)
	return c
}

func (p promauto) histogramVec(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
	h := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: name, Help: help, Buckets: buckets}, labels)
	p.reg.MustRegister(h)
	return h
}

func (p promauto) gauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
	p.reg.MustRegister(g)
	return g
}

func (p promauto) gaugeFunc(name, help string, labels prometheus.Labels, f func() float64) {
	p.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help, ConstLabels: labels}, f))
}

func (p promauto) counterFunc(name, help string, labels prometheus.Labels, f func() float64) {
	p.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: labels}, f))
}

// observeLDAP is the directory's Observer.
func (m *metrics) observeLDAP(op, server string, took time.Duration, err error) {
	result := "ok"
	var le *ldap.Error
	switch {
	case err == nil:
	case errors.Is(err, directory.ErrTimeout):
		result = "timeout"
	case errors.Is(err, directory.ErrBusy):
		result = "busy"
	case errors.Is(err, directory.ErrClosed):
		result = "closed"
	case directory.IsConnection(err):
		result = "connection"
	case errors.As(err, &le):
		result = strconv.Itoa(int(le.ResultCode))
	default:
		result = "error"
	}
	m.ldapOps.WithLabelValues(server, op, result).Inc()
	if server != "" {
		m.ldapDur.WithLabelValues(server, op).Observe(took.Seconds())
	}
}

// observe records one front door's decision.
func (m *metrics) observe(door string, req auth.Request, v auth.Verdict, took time.Duration) {
	svc := req.Service
	if !services[svc] {
		svc = "other"
	}
	m.requests.WithLabelValues(door, svc, v.Outcome.String(), v.Cause.String()).Inc()
	m.duration.WithLabelValues(door).Observe(took.Seconds())
}

// retire adds what a retired generation counted to the base.
func (m *metrics) retire(g *generation) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if g.cache != nil {
		st := g.cache.Stats()
		m.retiredCache.Hits += st.Hits
		m.retiredCache.Misses += st.Misses
		m.retiredCache.Coalesced += st.Coalesced
		m.retiredCache.Evictions += st.Evictions
	}
	s, b := g.dir.Pools()
	m.retiredWaits[0] += s.Waits
	m.retiredWaits[1] += b.Waits
	st := g.dir.Stats()
	m.retiredRetries.StaleIdle += st.StaleIdle
	m.retiredRetries.StaleRetries += st.StaleRetries
	m.retiredRetries.Failovers += st.Failovers
}

func (m *metrics) retireThrottle(th *throttle.Throttle) {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := th.Stats()
	m.retiredThrottle.RefusedAccount += st.RefusedAccount
	m.retiredThrottle.RefusedClient += st.RefusedClient
	m.retiredThrottle.Repeated += st.Repeated
	m.retiredThrottle.Delayed += st.Delayed
}

// poolStats is the current generation's search (0) or bind (1) pool.
func (d *Daemon) poolStats(i int) directory.PoolStats {
	s, b := d.cur.Load().dir.Pools()
	if i == 0 {
		return s
	}
	return b
}

// door runs one front door's decision and records it.
func (d *Daemon) door(name string, ctx context.Context, req auth.Request, decide func() auth.Verdict) auth.Verdict {
	if d.metrics == nil {
		return decide()
	}
	start := time.Now()
	v := decide()
	d.metrics.observe(name, req, v, time.Since(start))
	return v
}

// Door is the daemon as the named front door asks it: the same decision,
// counted under that door's name.
func (d *Daemon) Door(name string) auth.Authenticator {
	return auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
		return d.door(name, ctx, req, func() auth.Verdict { return d.Authenticate(ctx, req) })
	})
}

// MetricsHandler serves the metrics (Prometheus text format); nil for a
// one-shot decision.
func (d *Daemon) MetricsHandler() http.Handler {
	if d.metrics == nil {
		return nil
	}
	return promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}
