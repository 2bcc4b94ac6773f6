package main

import (
	"bufio"
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
)

// Row labels bench/run.sh uses; the ratios compare these.
const (
	labelCyrus      = "cyrus"
	labelCyrusCache = "cyrus-cache"
	labelMine       = "mailauthd"
	labelMineCache  = "mailauthd-cache"
	labelMineMirror = "mailauthd-mirror" // ldap.mirror_refresh: one bind per login
	// nginx's auth_http through the same daemons as labelMine and
	// labelMineCache: one HTTP/1.0 request per connection, as nginx sends.
	labelHTTP      = "auth_http"
	labelHTTPCache = "auth_http-cache"
	// The same daemon as labelMine with throttling off.
	labelNoThrottle = "mailauthd-nothrottle"
)

// Targets from issue 5.
const (
	targetNoCacheRPS   = 3.0     // mailauthd / Cyrus, no cache, c=8 and c=32
	targetP99          = 1.0 / 3 // mailauthd p99 / Cyrus p99 at c=32, at most
	targetCacheRPS     = 2.0     // mailauthd cache / Cyrus cache
	targetRSSkB        = 50 * 1024
	measureConcurrency = 32
)

func runTable(args []string) error {
	fs := flag.NewFlagSet("table", flag.ExitOnError)
	in := fs.String("in", "", "results file (JSON lines from run -out)")
	fs.Parse(args)
	f, err := os.Open(*in)
	if err != nil {
		return err
	}
	defer f.Close()
	var results []Result
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var r Result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("%s: %w", *in, err)
		}
		results = append(results, r)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	printTable(os.Stdout, results)
	return nil
}

// rowOrder groups the table: the LDAP ceilings, then each daemon without
// and with its cache.
var rowOrder = []string{"ldap-bind", "ldap-search+bind", labelCyrus, labelMine, labelNoThrottle, labelHTTP, labelMineMirror, labelCyrusCache, labelMineCache, labelHTTPCache}

func printTable(w io.Writer, all []Result) {
	var results, security, dovecotRows, pairs []Result
	for _, r := range all {
		switch {
		case strings.HasPrefix(r.Label, "pair:"):
			pairs = append(pairs, r)
		case strings.HasPrefix(r.Label, "attack"), strings.HasPrefix(r.Label, "spray"), strings.HasPrefix(r.Label, "slowloris"):
			security = append(security, r)
		case strings.HasPrefix(r.Label, "dovecot-"):
			dovecotRows = append(dovecotRows, r)
		case !strings.HasPrefix(r.Label, "mem:"):
			results = append(results, r)
		}
	}
	defer printDovecotTable(w, dovecotRows)
	if len(results)+len(security) == 0 {
		printThrottlePairs(w, pairs) // BENCH_ONLY=dovecot or throttle
		return
	}
	rank := func(label string) int {
		if i := slices.Index(rowOrder, label); i >= 0 {
			return i
		}
		return len(rowOrder)
	}
	slices.SortStableFunc(results, func(a, b Result) int {
		return cmp.Or(cmp.Compare(rank(a.Label), rank(b.Label)), cmp.Compare(a.Concurrency, b.Concurrency))
	})
	fmt.Fprintf(w, "| %-17s | %3s | %8s | %7s | %7s | %7s | %6s | %10s | %9s | %10s | %6s |\n",
		"system", "c", "req/s", "p50 ms", "p99 ms", "max ms", "errors", "daemon CPU", "slapd CPU", "client CPU", "RSS MB")
	fmt.Fprintf(w, "| %-17s | %3s | %8s | %7s | %7s | %7s | %6s | %10s | %9s | %10s | %6s |\n",
		"", "", "", "", "", "", "", "us/req", "us/req", "us/req", "")
	fmt.Fprintf(w, "|%s|----:|---------:|--------:|--------:|--------:|-------:|-----------:|----------:|-----------:|-------:|\n", strings.Repeat("-", 19))
	opt := func(v float64, format string) string {
		if v <= 0 {
			return ""
		}
		return fmt.Sprintf(format, v)
	}
	for _, r := range results {
		fmt.Fprintf(w, "| %-17s | %3d | %8.0f | %7.2f | %7.2f | %7.1f | %6d | %10s | %9s | %10s | %6s |\n",
			r.Label, r.Concurrency, r.RPS, r.P50ms, r.P99ms, r.MaxMs, r.Errors,
			opt(r.DaemonCPUus, "%.0f"), opt(r.SlapdCPUus, "%.0f"), opt(r.ClientCPUus, "%.0f"), opt(float64(r.RSSkB)/1024, "%.1f"))
	}
	for _, r := range results {
		if r.Errors > 0 {
			fmt.Fprintf(w, "\n%s c=%d: %d errors (%d wrong answers); first: %s", r.Label, r.Concurrency, r.Errors, r.Mismatches, r.FirstError)
		}
	}
	fmt.Fprintln(w)

	find := func(label string, c int) *Result {
		for i := range results {
			if results[i].Label == label && results[i].Concurrency == c {
				return &results[i]
			}
		}
		return nil
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	fmt.Fprintln(w, "\nRatios measured in this run (mailauthd / Cyrus saslauthd, same slapd, same load):")
	for _, row := range []struct{ label, name string }{{labelMine, "no cache  "}, {labelMineMirror, "mirror    "}} {
		for _, c := range []int{1, 8, 32} {
			mine, cyrus := find(row.label, c), find(labelCyrus, c)
			if mine == nil || cyrus == nil || cyrus.RPS == 0 {
				continue
			}
			ratio := mine.RPS / cyrus.RPS
			target := ""
			if c != 1 {
				target = fmt.Sprintf("   target >= %.0fx: %s", targetNoCacheRPS, verdict(ratio >= targetNoCacheRPS && mine.Errors == 0))
			}
			fmt.Fprintf(w, "  %s c=%-2d req/s %5.2fx%s\n", row.name, c, ratio, target)
			if mine.DaemonCPUus > 0 && cyrus.DaemonCPUus > 0 {
				fmt.Fprintf(w, "  %s c=%-2d CPU per request: daemon %5.2fx, slapd %5.2fx, both %5.2fx\n", row.name, c,
					mine.DaemonCPUus/cyrus.DaemonCPUus, mine.SlapdCPUus/cyrus.SlapdCPUus,
					(mine.DaemonCPUus+mine.SlapdCPUus)/(cyrus.DaemonCPUus+cyrus.SlapdCPUus))
			}
			if c == measureConcurrency && cyrus.P99ms > 0 {
				p := mine.P99ms / cyrus.P99ms
				fmt.Fprintf(w, "  %s c=%-2d p99   %5.2fx   target <= 0.33x: %s\n", row.name, c, p, verdict(p <= targetP99))
			}
		}
	}
	for _, c := range []int{1, 8, 32} {
		mine, cyrus := find(labelMineCache, c), find(labelCyrusCache, c)
		if mine == nil || cyrus == nil || cyrus.RPS == 0 {
			continue
		}
		ratio := mine.RPS / cyrus.RPS
		target := ""
		if c != 1 {
			target = fmt.Sprintf("   target >= %.0fx: %s", targetCacheRPS, verdict(ratio >= targetCacheRPS && mine.Errors == 0))
		}
		fmt.Fprintf(w, "  with cache c=%-2d req/s %5.2fx%s\n", c, ratio, target)
	}
	fmt.Fprintln(w, "\nnginx auth_http / saslauthd socket, same daemon, same run:")
	for _, row := range []struct{ http, sasl, name string }{{labelHTTP, labelMine, "no cache  "}, {labelHTTPCache, labelMineCache, "with cache"}} {
		for _, c := range []int{1, 8, 32} {
			h, s := find(row.http, c), find(row.sasl, c)
			if h == nil || s == nil || s.RPS == 0 || s.P99ms == 0 {
				continue
			}
			cpu := ""
			if h.DaemonCPUus > 0 && s.DaemonCPUus > 0 {
				cpu = fmt.Sprintf("   daemon CPU per request %5.2fx", h.DaemonCPUus/s.DaemonCPUus)
			}
			fmt.Fprintf(w, "  %s c=%-2d req/s %5.2fx   p99 %5.2fx%s\n", row.name, c, h.RPS/s.RPS, h.P99ms/s.P99ms, cpu)
		}
	}
	printThrottlePairs(w, pairs)
	if len(security) > 0 {
		fmt.Fprintln(w, "\nattacks: guesses/s the attacker got answered (c=32, every guess a new password) and the real user's")
		fmt.Fprintln(w, "logins meanwhile (c=1, another address; the directory accepted its password before the attack):")
		for _, r := range security {
			errs := ""
			if r.Errors > 0 {
				errs = fmt.Sprintf("   %d errors: %s", r.Errors, r.FirstError)
			}
			fmt.Fprintf(w, "  %-58s c=%-2d %8.0f/s   p50 %7.2f ms   p99 %7.2f ms%s\n", r.Label, r.Concurrency, r.RPS, r.P50ms, r.P99ms, errs)
		}
	}
	var memRows []Result
	for _, r := range all {
		if strings.HasPrefix(r.Label, "mem:") && r.RSSkB > 0 {
			memRows = append(memRows, r)
		}
	}
	if len(memRows) > 0 {
		fmt.Fprintln(w, "\nmailauthd resident memory (VmRSS after each step; VmHWM = peak):")
		for _, r := range memRows {
			fmt.Fprintf(w, "  %-34s RSS %6.1f MB  peak %6.1f MB  (%d requests, %d errors)\n",
				strings.TrimPrefix(r.Label, "mem:"), float64(r.RSSkB)/1024, float64(r.HWMkB)/1024, r.Requests, r.Errors)
		}
		// Growth is measured from the full cache (the step after idle) to the end.
		first, last := memRows[min(1, len(memRows)-1)], memRows[len(memRows)-1]
		peak := int64(0)
		for _, r := range memRows {
			peak = max(peak, r.HWMkB)
		}
		fmt.Fprintf(w, "  peak %.1f MB, target <= 50 MB: %s; RSS change from the full cache to the last step %+.1f MB\n",
			float64(peak)/1024, verdict(peak <= targetRSSkB), float64(last.RSSkB-first.RSSkB)/1024)
	}
}

// Dovecot row labels (bench/run.sh), in table order.
const (
	labelDovecotLDAP     = "dovecot-ldap"
	labelDovecotLuaNoop  = "dovecot-lua-noop" // the floor: a Lua passdb that asks nobody
	labelDovecotCP       = "dovecot-checkpassword"
	labelDovecotCPDaemon = "dovecot-checkpassword-daemon"
	labelDovecotLua      = "dovecot-lua"
	labelDovecotLuaMir   = "dovecot-lua-mirror"
	labelDovecotLuaCache = "dovecot-lua-cache"
)

// Targets from issue 13: Lua via the daemon against checkpassword and
// against Dovecot's own LDAP passdb, at c=8 and c=32.
const (
	targetLuaVsCheckpassword = 5.0
	targetLuaVsDovecotLDAP   = 1.0
)

var dovecotOrder = []string{labelDovecotLuaNoop, labelDovecotLDAP, labelDovecotCP, labelDovecotCPDaemon, labelDovecotLua, labelDovecotLuaMir, labelDovecotLuaCache}

// baseSuffix marks a row measured with another build's daemon and script
// (bench/run.sh with BENCH_BASELINE): "dovecot-lua@base" beside
// "dovecot-lua", same run, cells interleaved.
const baseSuffix = "@base"

// printDovecotTable prints the logins through a real Dovecot auth process
// and the ratios of the Lua rows against checkpassword and Dovecot's LDAP
// passdb.
func printDovecotTable(w io.Writer, rows []Result) {
	if len(rows) == 0 {
		return
	}
	rank := func(label string) int {
		if i := slices.Index(dovecotOrder, strings.TrimSuffix(label, baseSuffix)); i >= 0 {
			return i
		}
		return len(dovecotOrder)
	}
	isBase := func(label string) int {
		if strings.HasSuffix(label, baseSuffix) {
			return 0 // the baseline first, then this build
		}
		return 1
	}
	slices.SortStableFunc(rows, func(a, b Result) int {
		return cmp.Or(cmp.Compare(rank(a.Label), rank(b.Label)), cmp.Compare(a.Concurrency, b.Concurrency),
			cmp.Compare(isBase(a.Label), isBase(b.Label)))
	})
	fmt.Fprintln(w, "\nLogins through Dovecot 2.3's auth process (auth-client protocol, AUTH PLAIN, good passwords):")
	fmt.Fprintf(w, "| %-28s | %3s | %8s | %7s | %7s | %7s | %6s | %13s | %11s | %9s | %10s |\n",
		"passdb", "c", "logins/s", "p50 ms", "p99 ms", "max ms", "errors", "mailauthd CPU", "Dovecot CPU", "slapd CPU", "client CPU")
	fmt.Fprintf(w, "| %-28s | %3s | %8s | %7s | %7s | %7s | %6s | %13s | %11s | %9s | %10s |\n",
		"", "", "", "", "", "", "", "us/login", "us/login", "us/login", "us/login")
	fmt.Fprintf(w, "|%s|----:|---------:|--------:|--------:|--------:|-------:|--------------:|------------:|----------:|-----------:|\n", strings.Repeat("-", 30))
	opt := func(v float64) string {
		if v <= 0 {
			return ""
		}
		return fmt.Sprintf("%.0f", v)
	}
	for _, r := range rows {
		fmt.Fprintf(w, "| %-28s | %3d | %8.0f | %7.2f | %7.2f | %7.1f | %6d | %13s | %11s | %9s | %10s |\n",
			r.Label, r.Concurrency, r.RPS, r.P50ms, r.P99ms, r.MaxMs, r.Errors,
			opt(r.DaemonCPUus), opt(r.DovecotCPUus), opt(r.SlapdCPUus), opt(r.ClientCPUus))
	}
	for _, r := range rows {
		if r.Errors > 0 {
			fmt.Fprintf(w, "\n%s c=%d: %d errors (%d wrong answers); first: %s", r.Label, r.Concurrency, r.Errors, r.Mismatches, r.FirstError)
		}
	}
	find := func(label string, c int) *Result {
		for i := range rows {
			if rows[i].Label == label && rows[i].Concurrency == c {
				return &rows[i]
			}
		}
		return nil
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "NOT met"
	}
	fmt.Fprintln(w, "\n\nRatios measured in this run (logins/s, same slapd, same Dovecot, same load):")
	for _, lua := range []string{labelDovecotLua, labelDovecotLuaMir, labelDovecotLuaCache} {
		for _, c := range []int{1, 8, 32} {
			l := find(lua, c)
			if l == nil {
				continue
			}
			for _, other := range []struct {
				label  string
				target float64
			}{{labelDovecotCP, targetLuaVsCheckpassword}, {labelDovecotCPDaemon, targetLuaVsCheckpassword}, {labelDovecotLDAP, targetLuaVsDovecotLDAP}} {
				o := find(other.label, c)
				if o == nil || o.RPS == 0 {
					continue
				}
				ratio := l.RPS / o.RPS
				target := ""
				if c != 1 {
					target = fmt.Sprintf("   target >= %.0fx: %s", other.target, verdict(ratio >= other.target && l.Errors == 0))
				}
				fmt.Fprintf(w, "  %-18s / %-28s c=%-2d %6.2fx%s\n", lua, other.label, c, ratio, target)
			}
		}
	}
	printBaselineRatios(w, find)
}

// printBaselineRatios compares each Lua row with its baseline ("@base")
// and both with Dovecot's LDAP passdb: logins/s, and the CPU per login of
// the daemon and of Dovecot.
func printBaselineRatios(w io.Writer, find func(string, int) *Result) {
	header := false
	for _, lua := range []string{labelDovecotLua, labelDovecotLuaMir, labelDovecotLuaCache} {
		for _, c := range []int{1, 8, 32} {
			l, b, ldap := find(lua, c), find(lua+baseSuffix, c), find(labelDovecotLDAP, c)
			if l == nil || b == nil || b.RPS == 0 || ldap == nil || ldap.RPS == 0 {
				continue
			}
			if !header {
				fmt.Fprintln(w, "\nThis build against the baseline (@base), and each against dovecot-ldap:")
				fmt.Fprintf(w, "  %-18s %-4s  %-25s  %-25s  %-25s  %-25s\n", "", "", "logins/s new/base", "vs ldap: base -> new",
					"mailauthd CPU new/base", "Dovecot CPU new/base (ldap)")
				header = true
			}
			cpu := func(n, o float64) string {
				if n <= 0 || o <= 0 {
					return "-"
				}
				return fmt.Sprintf("%.0f/%.0f us = %.2fx", n, o, n/o)
			}
			fmt.Fprintf(w, "  %-18s c=%-2d  %-25s  %-25s  %-25s  %-25s\n", lua, c,
				fmt.Sprintf("%.0f/%.0f = %.2fx", l.RPS, b.RPS, l.RPS/b.RPS),
				fmt.Sprintf("%.2fx -> %.2fx", b.RPS/ldap.RPS, l.RPS/ldap.RPS),
				cpu(l.DaemonCPUus, b.DaemonCPUus),
				cpu(l.DovecotCPUus, b.DovecotCPUus)+fmt.Sprintf(" (%.0f)", ldap.DovecotCPUus))
		}
	}
}

// printThrottlePairs prints what throttling costs a normal load: cells of
// the same daemon with it on and off, alternated (pair:mailauthd,
// pair:mailauthd-nothrottle, ...), as the median and range of the ratio
// of each pair, so that one noisy cell cannot make the number.
func printThrottlePairs(w io.Writer, pairs []Result) {
	if len(pairs) == 0 {
		return
	}
	fmt.Fprintln(w, "\nthrottling on / off, same daemon otherwise, no cache, cells alternated (target: within 5 %):")
	for _, c := range []int{1, 8, 32} {
		var on, off []Result
		for _, r := range pairs {
			switch {
			case r.Concurrency != c:
			case r.Label == "pair:"+labelMine:
				on = append(on, r)
			case r.Label == "pair:"+labelNoThrottle:
				off = append(off, r)
			}
		}
		var rps, cpu []float64
		for i := range min(len(on), len(off)) {
			if off[i].RPS > 0 {
				rps = append(rps, on[i].RPS/off[i].RPS)
			}
			if on[i].DaemonCPUus > 0 && off[i].DaemonCPUus > 0 {
				cpu = append(cpu, on[i].DaemonCPUus/off[i].DaemonCPUus)
			}
		}
		if len(rps) == 0 {
			continue
		}
		line := fmt.Sprintf("  c=%-2d req/s %s", c, medianRange(rps))
		if len(cpu) > 0 {
			line += "   daemon CPU per request " + medianRange(cpu)
		}
		fmt.Fprintf(w, "%s   (%d pairs)\n", line, len(rps))
	}
}

// medianRange formats ratios as "median (min-max)".
func medianRange(v []float64) string {
	s := slices.Clone(v)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return fmt.Sprintf("%5.2fx (%.2f-%.2f)", m, s[0], s[len(s)-1])
}
