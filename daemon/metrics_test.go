package daemon

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/control"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
	"github.com/mailauthd/mailauthd/saslauthd"
)

// serving starts the daemon's front doors on sockets in a temp dir and
// returns a client for its HTTP socket.
func serving(t *testing.T, cfg *config.File) (*Daemon, *http.Client, string) {
	t.Helper()
	dir := t.TempDir()
	cfg.Listen.Saslauthd = []config.Socket{{Path: filepath.Join(dir, "mux"), Mode: "0600"}}
	cfg.Listen.Control = config.Socket{Path: filepath.Join(dir, "control"), Mode: "0600"}
	cfg.Listen.HTTP = []config.HTTPSocket{{Path: filepath.Join(dir, "http"), Mode: "0600"}}
	r, err := Start(cfg, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r.Stop(ctx)
	})
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "http"))
		}}}
	return r.Daemon, hc, dir
}

func get(t *testing.T, hc *http.Client, path string) (int, string) {
	t.Helper()
	resp, err := hc.Get("http://mailauthd" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// value reads one sample from a scrape: the line that starts with series.
func value(t *testing.T, scrape, series string) float64 {
	t.Helper()
	for _, l := range strings.Split(scrape, "\n") {
		if strings.HasPrefix(l, series+" ") {
			v, err := strconv.ParseFloat(strings.TrimPrefix(l, series+" "), 64)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
	}
	return 0
}

// TestMetricsAndHealth: the metrics listed in the issue are there and move
// with the traffic through each front door; /healthz says 200 while slapd
// answers and 503 once it stops; reloads are counted.
func TestMetricsAndHealth(t *testing.T) {
	s := slapdtest.Start(t)
	cfg := slapdConfig(s.URL())
	cfg.Cache.TTL = time.Minute
	cfg.Access.Realms = []string{"example.org"}
	cfg.Throttle.Account.Failures = 2
	cfg.Throttle.Delay, cfg.Throttle.MaxDelay = time.Millisecond, time.Millisecond
	d, hc, dir := serving(t, cfg)
	ctx := context.Background()

	sasl := saslauthd.Client{Path: filepath.Join(dir, "mux"), Timeout: 10 * time.Second}
	for range 3 { // one miss, then cache hits
		if ok, _, err := sasl.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw", Service: "smtp"}); !ok || err != nil {
			t.Fatalf("alice: %v %v", ok, err)
		}
	}
	for i := range 5 { // two wrong passwords, then throttled
		sasl.Authenticate(ctx, auth.Request{User: "star", Password: "guess" + strconv.Itoa(i), Service: "imap"})
	}
	ctl := control.Client{Path: filepath.Join(dir, "control")}
	if v, err := ctl.Lookup(ctx, auth.Request{User: "alice", Service: "imap"}); err != nil || v.Outcome != auth.Accept {
		t.Fatalf("lookup: %v %+v", err, v)
	}

	code, scrape := get(t, hc, "/metrics")
	if code != 200 {
		t.Fatalf("/metrics: %d", code)
	}
	for series, want := range map[string]float64{
		`mailauthd_requests_total{cause="",door="saslauthd",outcome="accept",service="smtp"}`:               3,
		`mailauthd_requests_total{cause="wrong_password",door="saslauthd",outcome="reject",service="imap"}`: 2,
		`mailauthd_requests_total{cause="throttled",door="saslauthd",outcome="reject",service="imap"}`:      3,
		`mailauthd_requests_total{cause="",door="control-lookup",outcome="accept",service="imap"}`:          1,
		`mailauthd_cache_requests_total{result="hit"}`:                                                      2,
		`mailauthd_throttle_refusals_total{scope="account"}`:                                                3,
		`mailauthd_request_duration_seconds_count{door="saslauthd"}`:                                        8,
		`mailauthd_ldap_operations_total{op="bind",result="ok",server="` + s.URL() + `"}`:                   1,
		`mailauthd_ldap_operations_total{op="bind",result="49",server="` + s.URL() + `"}`:                   2,
		`mailauthd_ldap_connections{role="search",state="idle"}`:                                            1,
	} {
		if got := value(t, scrape, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	for _, name := range []string{"mailauthd_ldap_operation_duration_seconds_bucket", "mailauthd_cache_entries",
		"mailauthd_mirror_loaded", "mailauthd_throttle_delays_total", "mailauthd_ldap_pool_waits_total",
		"mailauthd_config_last_reload_success_timestamp_seconds"} {
		if !regexp.MustCompile(`(?m)^` + name + `[{ ]`).MatchString(scrape) {
			t.Errorf("no %s in the scrape", name)
		}
	}
	if strings.Contains(scrape, "alicepw") || strings.Contains(scrape, "guess") {
		t.Error("a password in the metrics")
	}

	// A slapd restart leaves the pooled connections dead: the next lookup
	// still succeeds, and the recovery is counted.
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if v, err := ctl.Lookup(ctx, auth.Request{User: "alice", Service: "imap"}); err != nil || v.Outcome != auth.Accept {
		t.Fatalf("lookup after a slapd restart: %v %+v", err, v)
	}
	_, scrape = get(t, hc, "/metrics")
	if n := value(t, scrape, `mailauthd_ldap_recoveries_total{kind="stale_idle"}`) +
		value(t, scrape, `mailauthd_ldap_recoveries_total{kind="stale_retry"}`); n < 1 {
		t.Errorf("no recovery counted after a slapd restart:\n%s", grepLines(scrape, "recoveries"))
	}

	// Reloads are counted, and counters do not go back with a new cache.
	if _, err := d.Reload(func() (*config.File, error) { return d.Config(), nil }, time.Hour); err != nil {
		t.Fatal(err)
	}
	d.Reload(func() (*config.File, error) { return nil, io.ErrUnexpectedEOF }, time.Hour)
	_, scrape = get(t, hc, "/metrics")
	if value(t, scrape, `mailauthd_config_reloads_total{result="success"}`) != 1 ||
		value(t, scrape, `mailauthd_config_reloads_total{result="failure"}`) != 1 ||
		value(t, scrape, `mailauthd_cache_requests_total{result="hit"}`) != 2 {
		t.Errorf("after reloads:\n%s", grepLines(scrape, "reloads|cache_requests"))
	}

	code, body := get(t, hc, "/healthz")
	var h Health
	if code != 200 || json.Unmarshal([]byte(body), &h) != nil || h.LDAP[s.URL()] != "ok" {
		t.Fatalf("/healthz with slapd up: %d %s", code, body)
	}
	s.Stop()
	time.Sleep(healthTTL + 100*time.Millisecond)
	if code, body := get(t, hc, "/healthz"); code != 503 || !strings.Contains(body, s.URL()) {
		t.Errorf("/healthz with slapd down: %d %s", code, body)
	}
}

func grepLines(s, re string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if regexp.MustCompile(re).MatchString(l) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
