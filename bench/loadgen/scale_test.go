package main

import (
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestScaleTable: the per-entry memory is the mirror's RSS over the idle
// daemon's, divided by the users; the refresh peak is over the RSS before it.
func TestScaleTable(t *testing.T) {
	runs := []Result{
		{Label: "idle", Users: 1000000, RSSkB: 20 * 1024},
		{Label: "ldap-bind", Users: 1000000, Concurrency: 32, RPS: 20000},
		{Label: "mirror", Users: 1000000, Concurrency: 32, RPS: 15000, P99ms: 3, DaemonCPUus: 40, RSSkB: 220 * 1024},
	}
	mirrors := []MirrorResult{
		{Kind: "mirror", Users: 1000000, Phase: "load", Seconds: 12, DaemonCPU: 8.6, SlapdCPU: 3, RSSkB: 215 * 1024, Logins: 1000000},
		{Kind: "mirror", Users: 1000000, Phase: "refresh", Seconds: 10, HWMkB: 240 * 1024, BeforekB: 200 * 1024},
		{Kind: "mirror", Users: 1000000, Phase: "sync-modifies", Seconds: 2.6, ModifySeconds: 2.5, Modifies: 1000},
	}
	var b strings.Builder
	printScaleTable(&b, runs, mirrors)
	out := b.String()
	for _, want := range []string{
		"mirror / ldap-bind floor req/s 0.75",
		fmt.Sprintf("| %17s |", "204"), // (215-20) MiB / 1M users
		"1.20",                         // 240/200
		"2.50 / 2.60",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "| idle   ") {
		t.Errorf("the idle row is not a login row:\n%s", out)
	}
}

// TestMetricsClient reads the mirror's gauges from a /metrics page over a
// Unix socket, as from the daemon's listen.http.
func TestMetricsClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "http")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, "# HELP x\nmailauthd_cache_entries 3\nmailauthd_mirror_loaded 1\nmailauthd_mirror_logins 1.000014e+06\nmailauthd_mirror_age_seconds 2.5\n")
	}))
	mc := newMetricsClient(path)
	g, n, err := mc.poll(time.Second, 50*time.Millisecond, "loaded", func(g map[string]float64) bool { return g["loaded"] == 1 })
	if err != nil || n != 1 || g["logins"] != 1000014 || g["age_seconds"] != 2.5 || len(g) != 3 {
		t.Fatalf("%v %d %v", g, n, err)
	}
}
