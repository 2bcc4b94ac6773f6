// Package packaging holds no code: its test checks the shipped systemd units
// with systemd's own verifier, so a typo in a unit fails CI, not a server.
package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

func TestSystemdUnitsVerify(t *testing.T) {
	analyze := peertest.NeedFile(t, "systemd-analyze")
	// ExecStart must name an existing executable; point the copies at one.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	units, _ := filepath.Glob("systemd/*")
	more, _ := filepath.Glob("pamcheck/systemd/*")
	units = append(units, more...)
	if len(units) < 6 {
		t.Fatalf("found only %d units", len(units))
	}
	var names []string
	for _, u := range units {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(out, []byte(strings.ReplaceAll(string(data), "/usr/bin/mailauthd", exe)), 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, out)
	}
	cmd := exec.Command(analyze, append([]string{"verify", "--man=no"}, names...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_LEVEL=warning")
	if out, err := cmd.CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestPAMFilesShownInDocs: docs/pam.md shows each shipped pam.d file as it
// is (the PAM tests run these files).
func TestPAMFilesShownInDocs(t *testing.T) {
	doc, err := os.ReadFile(filepath.Join("..", "docs", "pam.md"))
	if err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob("pam.d/*")
	if len(files) != 3 {
		t.Fatalf("found %d pam.d files, want 3", len(files))
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(doc), "```\n"+string(data)+"```\n") {
			t.Errorf("docs/pam.md does not show %s as it is", f)
		}
	}
}
