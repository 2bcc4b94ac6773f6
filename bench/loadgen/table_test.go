package main

import (
	"strings"
	"testing"
)

// TestDovecotBaselineRows: with BENCH_BASELINE, each Lua row is printed
// right after its "@base" row, and compared with it and with
// dovecot-ldap; a Dovecot-only run prints no saslauthd table.
func TestDovecotBaselineRows(t *testing.T) {
	rows := []Result{
		{Label: "dovecot-lua", Concurrency: 8, RPS: 6000, DaemonCPUus: 40, DovecotCPUus: 110},
		{Label: "dovecot-ldap", Concurrency: 8, RPS: 5000, DovecotCPUus: 80},
		{Label: "dovecot-lua@base", Concurrency: 8, RPS: 4000, DaemonCPUus: 80, DovecotCPUus: 160},
	}
	var b strings.Builder
	printTable(&b, rows)
	out := b.String()
	if strings.Contains(out, "| system ") {
		t.Errorf("the saslauthd table is printed without its rows:\n%s", out)
	}
	base, lua := strings.Index(out, "| dovecot-lua@base "), strings.Index(out, "| dovecot-lua ")
	if base < 0 || lua < 0 || base > lua {
		t.Errorf("want the @base row right before its row:\n%s", out)
	}
	for _, want := range []string{
		"dovecot-lua        / dovecot-ldap                 c=8    1.20x   target >= 1x: met",
		"dovecot-lua        c=8   6000/4000 = 1.50x          0.80x -> 1.20x             40/80 us = 0.50x           110/160 us = 0.69x (80)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// TestThrottlePairs: the throttling cost is the median of the on/off ratio
// of each alternated pair, with its range; pair cells stay out of the main
// table.
func TestThrottlePairs(t *testing.T) {
	rows := []Result{{Label: labelMine, Concurrency: 8, RPS: 5000}}
	for i, p := range [][2]float64{{990, 1000}, {500, 1000}, {1000, 980}} {
		rows = append(rows,
			Result{Label: "pair:" + labelMine, Concurrency: 8, RPS: p[0], DaemonCPUus: 50 + float64(i)},
			Result{Label: "pair:" + labelNoThrottle, Concurrency: 8, RPS: p[1], DaemonCPUus: 50})
	}
	var b strings.Builder
	printTable(&b, rows)
	out := b.String()
	if strings.Contains(out, "| pair:") {
		t.Errorf("pair cells in the main table:\n%s", out)
	}
	want := "c=8  req/s  0.99x (0.50-1.02)   daemon CPU per request  1.02x (1.00-1.04)   (3 pairs)"
	if !strings.Contains(out, want) {
		t.Errorf("output lacks %q:\n%s", want, out)
	}
}

// TestThrottleOnly: BENCH_ONLY=throttle prints the pairs without the
// saslauthd table.
func TestThrottleOnly(t *testing.T) {
	rows := []Result{
		{Label: "pair:" + labelMine, Concurrency: 32, RPS: 950},
		{Label: "pair:" + labelNoThrottle, Concurrency: 32, RPS: 1000},
	}
	var b strings.Builder
	printTable(&b, rows)
	out := b.String()
	if strings.Contains(out, "| system ") || !strings.Contains(out, "c=32 req/s  0.95x (0.95-0.95)") {
		t.Errorf("want the pairs alone:\n%s", out)
	}
}
