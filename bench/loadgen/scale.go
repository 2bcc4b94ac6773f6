package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// MirrorResult is one mirror measurement (loadgen mirror, loadgen syncmods),
// a JSON line beside the Results; Kind tells them apart.
type MirrorResult struct {
	Kind  string `json:"kind"` // "mirror"
	Label string `json:"label"`
	Users int    `json:"users"`
	// Phase: "load" (start until the first load answers), "refresh" (one
	// periodic pass), "sync-load" (start until the sync session is live),
	// "sync-modifies" (modifies until the mirror shows them all).
	Phase   string  `json:"phase"`
	Seconds float64 `json:"seconds"`
	// CPU seconds (user+system) of the daemon and slapd in that phase.
	DaemonCPU float64 `json:"daemon_cpu_s"`
	SlapdCPU  float64 `json:"slapd_cpu_s"`
	RSSkB     int64   `json:"rss_kb,omitempty"`
	// HWMkB is the peak RSS during the phase (VmHWM, reset at its start
	// for a refresh); BeforekB the RSS when it started.
	HWMkB    int64 `json:"hwm_kb,omitempty"`
	BeforekB int64 `json:"before_kb,omitempty"`
	Logins   int64 `json:"logins"`
	// sync-modifies: how many, and how long until slapd had acknowledged
	// them all (Seconds is until the mirror answered for them all).
	Modifies      int     `json:"modifies,omitempty"`
	ModifySeconds float64 `json:"modify_seconds,omitempty"`
}

// metricsClient reads the daemon's /metrics over its listen.http socket.
type metricsClient struct {
	c http.Client
}

func newMetricsClient(socket string) *metricsClient {
	return &metricsClient{c: http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// mirror returns the mailauthd_mirror_* gauges.
func (m *metricsClient) mirror() (map[string]float64, error) {
	resp, err := m.c.Get("http://mailauthd/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics: %s", resp.Status)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok || !strings.HasPrefix(name, "mailauthd_mirror_") {
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err == nil {
			out[strings.TrimPrefix(name, "mailauthd_mirror_")] = f
		}
	}
	return out, sc.Err()
}

// poll calls cond with the mirror gauges until it holds: every 20 ms at
// first, then every twentieth of the time waited so far (at most every
// maxEvery), so that reading /metrics costs the daemon little CPU beside
// what is being measured. It returns the gauges and how many reads it made.
func (m *metricsClient) poll(timeout, maxEvery time.Duration, what string, cond func(g map[string]float64) bool) (map[string]float64, int, error) {
	start := time.Now()
	deadline := start.Add(timeout)
	for n := 1; ; n++ {
		g, err := m.mirror()
		if err == nil && cond(g) {
			return g, n, nil
		}
		if time.Now().After(deadline) {
			return g, n, fmt.Errorf("%s: not within %v (last gauges %v, err %v)", what, timeout, g, err)
		}
		time.Sleep(min(maxEvery, max(20*time.Millisecond, time.Since(start)/20)))
	}
}

// scrapeCost is the daemon's CPU (seconds) for one read of /metrics,
// measured over 50 reads, so that it can be taken out of a measurement.
func (m *metricsClient) scrapeCost(pid int) float64 {
	const n = 50
	t0 := cpuTicks([]int{pid})
	for range n {
		m.mirror()
	}
	return ticksToSeconds(cpuTicks([]int{pid})-t0) / n
}

func ticksToSeconds(t int64) float64 { return float64(t) / clockTicks }

func appendJSON(path string, v any) error {
	line, _ := json.Marshal(v)
	fmt.Println(string(line))
	if path == "" {
		return nil
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write(append(line, '\n'))
	return err
}

// runMirror measures a mirror's first load (from -since, when the daemon
// was started, until its gauges say it answers) or one periodic refresh
// (from now until the mirror's age drops: the next pass has completed).
func runMirror(args []string) error {
	fs := flag.NewFlagSet("mirror", flag.ExitOnError)
	phase := fs.String("phase", "load", "load | sync-load | refresh")
	socket := fs.String("metrics", "", "the daemon's listen.http socket")
	pid := fs.Int("pid", 0, "the daemon's pid")
	slapdPID := fs.Int("slapdpid", 0, "slapd's pid")
	since := fs.Float64("since", 0, "load: unix time (seconds) the daemon was started")
	label := fs.String("label", "", "row label")
	users := fs.Int("users", 0, "users in the directory")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after")
	interval := fs.Duration("interval", 0, "refresh: the daemon's ldap.mirror_refresh")
	out := fs.String("out", "", "append the result as a JSON line to this file")
	fs.Parse(args)
	if *socket == "" || *pid == 0 {
		return errors.New("mirror: -metrics and -pid required")
	}
	mc := newMetricsClient(*socket)
	r := MirrorResult{Kind: "mirror", Label: *label, Users: *users, Phase: *phase}
	s0 := cpuTicks([]int{*slapdPID})
	switch *phase {
	case "load", "sync-load":
		start := time.Unix(0, int64(*since*1e9))
		if *since == 0 {
			start = time.Now()
		}
		g, scrapes, err := mc.poll(*timeout, 500*time.Millisecond, "first load", func(g map[string]float64) bool {
			return g["loaded"] == 1 && g["logins"] > 0 && (*phase == "load" || g["syncing"] == 1)
		})
		if err != nil {
			return err
		}
		r.Seconds = time.Since(start).Seconds()
		cost := mc.scrapeCost(*pid) // after the load: not to slow it down
		// All of the daemon's CPU since its start, less the reads of /metrics.
		r.DaemonCPU = max(0, ticksToSeconds(cpuTicks([]int{*pid}))-float64(scrapes+50)*cost)
		r.Logins = int64(g["logins"])
	case "refresh":
		cost := mc.scrapeCost(*pid)
		// VmHWM from now on: writing 5 to clear_refs resets it (Linux 4.0).
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", *pid), []byte("5"), 0); err != nil {
			return fmt.Errorf("mirror: reset VmHWM: %w", err)
		}
		r.BeforekB, _ = procMemory(*pid)
		d0 := cpuTicks([]int{*pid})
		g, err := mc.mirror()
		if err != nil {
			return err
		}
		// The next pass starts an interval after the last one ended, so
		// at an age of at least the interval: sleep until shortly before,
		// then poll (often at first, so a short pass is timed closely).
		if wait := *interval - time.Duration(g["age_seconds"]*float64(time.Second)) - 2*time.Second; wait > 0 {
			time.Sleep(wait)
		}
		last := g["age_seconds"]
		g, scrapes, err := mc.poll(*timeout, 50*time.Millisecond, "refresh", func(g map[string]float64) bool {
			age := g["age_seconds"]
			if age < last-0.5 {
				return true
			}
			last = age
			return false
		})
		if err != nil {
			return err
		}
		// The mirror dates a pass from its start: its age when first seen
		// complete is the pass's duration (plus at most one poll interval,
		// 20 to 50 ms).
		r.Seconds = g["age_seconds"]
		r.DaemonCPU = max(0, ticksToSeconds(cpuTicks([]int{*pid})-d0)-float64(scrapes+1)*cost)
		r.Logins = int64(g["logins"])
	default:
		return fmt.Errorf("mirror: unknown -phase %q", *phase)
	}
	if *slapdPID > 0 {
		r.SlapdCPU = ticksToSeconds(cpuTicks([]int{*slapdPID}) - s0)
	}
	r.RSSkB, r.HWMkB = procMemory(*pid)
	return appendJSON(*out, r)
}

// runSyncMods adds a uid value to n users spread over the directory, on c
// connections as fast as slapd takes them, and measures how long until
// the syncing mirror answers for all n new logins (its logins gauge).
func runSyncMods(args []string) error {
	fs := flag.NewFlagSet("syncmods", flag.ExitOnError)
	url := fs.String("url", "", "ldap:// URL")
	bindDN := fs.String("binddn", "", "an account that may modify users")
	bindPW := fs.String("bindpw", "", "its password")
	base := fs.String("base", "ou=people,dc=example,dc=org", "users are uid=userN,BASE")
	users := fs.Int("users", 10000, "users in the directory")
	n := fs.Int("n", 1000, "modifies")
	conc := fs.Int("c", 4, "connections sending them")
	socket := fs.String("metrics", "", "the daemon's listen.http socket")
	pid := fs.Int("pid", 0, "the daemon's pid")
	slapdPID := fs.Int("slapdpid", 0, "slapd's pid")
	label := fs.String("label", "", "row label")
	timeout := fs.Duration("timeout", 2*time.Minute, "give up after")
	out := fs.String("out", "", "append the result as a JSON line to this file")
	fs.Parse(args)
	if *socket == "" || *url == "" || *n < 1 || *n > *users {
		return errors.New("syncmods: need -url, -metrics and 1 <= -n <= -users")
	}
	mc := newMetricsClient(*socket)
	g, err := mc.mirror()
	if err != nil {
		return err
	}
	if g["syncing"] != 1 {
		return errors.New("syncmods: the mirror is not syncing")
	}
	want := g["logins"] + float64(*n)
	conns := make([]*ldap.Conn, *conc)
	for i := range conns {
		c, err := dialLDAP(*url, 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Bind(*bindDN, *bindPW); err != nil {
			return err
		}
		conns[i] = c
	}
	tag := strconv.FormatInt(time.Now().UnixNano(), 36)
	d0, s0 := cpuTicks([]int{*pid}), cpuTicks([]int{*slapdPID})
	start := time.Now()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	step := *users / *n
	for w, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < *n; i += len(conns) {
				u := i * step
				mod := ldap.NewModifyRequest("uid=user"+strconv.Itoa(u)+","+*base, nil)
				mod.Add("uid", []string{"alias" + strconv.Itoa(u) + "-" + tag})
				if err := c.Modify(mod); err != nil {
					mu.Lock()
					firstErr = firstOf(firstErr, err)
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	modified := time.Since(start)
	if firstErr != nil {
		return fmt.Errorf("syncmods: modify: %w", firstErr)
	}
	g, _, err = mc.poll(*timeout, 50*time.Millisecond, "modifies reaching the mirror", func(g map[string]float64) bool { return g["logins"] >= want })
	if err != nil {
		return err
	}
	r := MirrorResult{Kind: "mirror", Label: *label, Users: *users, Phase: "sync-modifies",
		Seconds: time.Since(start).Seconds(), ModifySeconds: modified.Seconds(), Modifies: *n,
		DaemonCPU: ticksToSeconds(cpuTicks([]int{*pid}) - d0), SlapdCPU: ticksToSeconds(cpuTicks([]int{*slapdPID}) - s0),
		Logins: int64(g["logins"])}
	r.RSSkB, r.HWMkB = procMemory(*pid)
	return appendJSON(*out, r)
}

func firstOf(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// runScaleTable prints bench/scale.sh's results: the login rows by
// directory size, then what the mirror costs at each size.
func runScaleTable(args []string) error {
	fs := flag.NewFlagSet("scaletable", flag.ExitOnError)
	in := fs.String("in", "", "results file")
	fs.Parse(args)
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer f.Close()
	var runs []Result
	var mirrors []MirrorResult
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		if len(strings.TrimSpace(string(line))) == 0 {
			continue
		}
		var probe struct {
			Kind string `json:"kind"`
		}
		if err := json.Unmarshal(line, &probe); err != nil {
			return fmt.Errorf("%s: %w", *in, err)
		}
		if probe.Kind == "mirror" {
			var m MirrorResult
			if err := json.Unmarshal(line, &m); err != nil {
				return err
			}
			mirrors = append(mirrors, m)
			continue
		}
		var r Result
		if err := json.Unmarshal(line, &r); err != nil {
			return err
		}
		runs = append(runs, r)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	printScaleTable(os.Stdout, runs, mirrors)
	return nil
}

func printScaleTable(w io.Writer, runs []Result, mirrors []MirrorResult) {
	fmt.Fprintln(w, "| users     | system           |   c |   req/s |  p99 ms | daemon CPU us/req | slapd CPU us/req | RSS MB |")
	fmt.Fprintln(w, "|----------:|------------------|----:|--------:|--------:|------------------:|-----------------:|-------:|")
	for _, r := range runs {
		if r.Label == "idle" {
			continue
		}
		rss := ""
		if r.RSSkB > 0 {
			rss = fmt.Sprintf("%.1f", float64(r.RSSkB)/1024)
		}
		errs := ""
		if r.Errors > 0 {
			errs = fmt.Sprintf(" (%d errors)", r.Errors)
		}
		fmt.Fprintf(w, "| %9d | %-16s | %3d | %7.0f | %7.2f | %17s | %16s | %6s |%s\n", r.Users, r.Label, r.Concurrency,
			r.RPS, r.P99ms, us(r.DaemonCPUus), us(r.SlapdCPUus), rss, errs)
	}
	// Ratios within each size: the mirror against the one-bind floor.
	for _, r := range runs {
		if r.Label != "mirror" {
			continue
		}
		for _, f := range runs {
			if f.Label == "ldap-bind" && f.Users == r.Users && f.Concurrency == r.Concurrency && f.RPS > 0 {
				fmt.Fprintf(w, "  %d users, c=%d: mirror / ldap-bind floor req/s %.2f\n", r.Users, r.Concurrency, r.RPS/f.RPS)
			}
		}
	}
	fmt.Fprintln(w)
	idle := map[int]int64{}
	for _, r := range runs {
		if r.Label == "idle" {
			idle[r.Users] = r.RSSkB
		}
	}
	by := map[int]map[string]MirrorResult{}
	var sizes []int
	for _, m := range mirrors {
		if by[m.Users] == nil {
			by[m.Users] = map[string]MirrorResult{}
			sizes = append(sizes, m.Users)
		}
		by[m.Users][m.Phase] = m
	}
	slices.Sort(sizes)
	fmt.Fprintln(w, "| users     | idle RSS MB | mirror RSS MB | B/entry over idle | load s | load CPU s (daemon/slapd) | refresh s | refresh CPU s (daemon/slapd) | refresh peak / before | sync load s | sync RSS MB | 1,000 modifies: slapd s / in mirror s |")
	fmt.Fprintln(w, "|----------:|------------:|--------------:|------------------:|-------:|--------------------------:|----------:|-----------------------------:|----------------------:|------------:|------------:|--------------------------------------:|")
	for _, n := range sizes {
		p := by[n]
		ld, rf, sl, sm := p["load"], p["refresh"], p["sync-load"], p["sync-modifies"]
		perEntry := ""
		if ld.RSSkB > 0 && idle[n] > 0 && ld.Logins > 0 {
			perEntry = fmt.Sprintf("%.0f", float64(ld.RSSkB-idle[n])*1024/float64(n))
		}
		peak := ""
		if rf.BeforekB > 0 {
			peak = fmt.Sprintf("%.2f", float64(rf.HWMkB)/float64(rf.BeforekB))
		}
		fmt.Fprintf(w, "| %9d | %11s | %13s | %17s | %6s | %25s | %9s | %28s | %21s | %11s | %11s | %37s |\n", n,
			mb(idle[n]), mb(ld.RSSkB), perEntry, secs(ld.Seconds), pair(ld.DaemonCPU, ld.SlapdCPU),
			secs(rf.Seconds), pair(rf.DaemonCPU, rf.SlapdCPU), peak, secs(sl.Seconds), mb(sl.RSSkB),
			pair(sm.ModifySeconds, sm.Seconds))
	}
}

func us(v float64) string {
	if v == 0 {
		return ""
	}
	return fmt.Sprintf("%.0f", v)
}

func mb(kb int64) string {
	if kb == 0 {
		return ""
	}
	return fmt.Sprintf("%.1f", float64(kb)/1024)
}

func secs(s float64) string {
	if s == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f", s)
}

func pair(a, b float64) string {
	if a == 0 && b == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f / %.2f", a, b)
}
