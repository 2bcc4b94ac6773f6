package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

// scripts/version.sh in a scratch repository: every kind of version it
// prints sorts after the ones before it, as dpkg compares them.
func TestVersionsSort(t *testing.T) {
	git := peertest.NeedFile(t, "git")
	dpkg := peertest.NeedFile(t, "dpkg")
	script, err := os.ReadFile("../scripts/version.sh")
	if err != nil {
		t.Fatal(err)
	}
	repo := t.TempDir()
	if err := os.MkdirAll(filepath.Join(repo, "scripts"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "scripts", "version.sh"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	commitNo := 0
	run := func(env []string, name string, args ...string) string {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), append([]string{"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.org",
			"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.org", "GIT_CONFIG_GLOBAL=/dev/null"}, env...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	commit := func(date string) {
		commitNo++
		os.WriteFile(filepath.Join(repo, "f"), []byte(strings.Repeat("x", commitNo)), 0o644)
		run(nil, git, "add", ".")
		run([]string{"GIT_COMMITTER_DATE=" + date, "GIT_AUTHOR_DATE=" + date}, git, "commit", "-q", "-m", "c")
	}
	version := func() string { return run(nil, "sh", "scripts/version.sh") }

	run(nil, git, "init", "-q")
	// The later commit has the "smaller" hash or not: only the time counts.
	commit("2026-01-02T03:04:05Z")
	v1 := version()
	commit("2026-01-02T03:05:00Z")
	v2 := version()
	os.WriteFile(filepath.Join(repo, "f"), []byte("edited"), 0o644)
	v2dirty := version()
	run(nil, git, "checkout", "-q", "f")
	run(nil, git, "tag", "v0.2.0")
	v3 := version()
	commit("2026-02-01T00:00:00Z")
	v4 := version()
	run(nil, git, "tag", "0.2.1")
	v5 := version()

	if !strings.HasPrefix(v1, "0~git202601020304.") || !strings.HasPrefix(v2, "0~git202601020305.") {
		t.Errorf("untagged: %s, %s", v1, v2)
	}
	if !strings.HasSuffix(v2dirty, ".dirty") {
		t.Errorf("dirty tree: %s", v2dirty)
	}
	if v3 != "0.2.0" || v5 != "0.2.1" {
		t.Errorf("on tags: %s, %s", v3, v5)
	}
	if !strings.HasPrefix(v4, "0.2.0+git202602010000.") {
		t.Errorf("after a tag: %s", v4)
	}
	order := []string{v1, v2, v2dirty, v3, v4, v5}
	for i := 1; i < len(order); i++ {
		if err := exec.Command(dpkg, "--compare-versions", order[i-1], "lt", order[i]).Run(); err != nil {
			t.Errorf("dpkg does not sort %s before %s", order[i-1], order[i])
		}
	}
}
