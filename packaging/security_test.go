package packaging

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

// systemd-analyze security --offline=true works without systemd as PID 1
// (systemd 252 here): the daemon keeps its sandbox, the pamcheck oneshot
// gets one.
func TestSystemdSecurity(t *testing.T) {
	analyze := peertest.NeedFile(t, "systemd-analyze")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		unit string
		max  float64
	}{
		{"systemd/mailauthd.service", 1.4},
		{"pamcheck/systemd/mailauthd-pamcheck.service", 4.9},
	} {
		data, err := os.ReadFile(tc.unit)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(tc.unit))
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(string(data), "/usr/bin/mailauthd", exe)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := runCmd(t, time.Minute, []string{"SYSTEMD_LOG_LEVEL=warning"}, analyze, "security", "--offline=true", "--no-pager", p)
		m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("systemd-analyze security %s: %v\n%s", p, err, out)
		}
		score, _ := strconv.ParseFloat(m[1], 64)
		t.Logf("%s: exposure %.1f", filepath.Base(tc.unit), score)
		if score > tc.max {
			t.Errorf("%s: exposure %.1f, want at most %.1f\n%s", tc.unit, score, tc.max, out)
		}
	}
}
