package pamcheck

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/msteinert/pam/v2"
)

// needRealPAM skips (or fails in CI) when libpam cannot run a confdir transaction.
func needRealPAM(t *testing.T) {
	t.Helper()
	sys := NewSystem("", Config{})
	if !pam.CheckPamHasStartConfdir() || sys.ResolveModule("pam_permit.so") == "" || sys.ResolveModule("pam_exec.so") == "" {
		peertest.Missing(t, "real PAM with pam_start_confdir, pam_permit and pam_exec not here (libpam0g-dev, libpam-modules)")
	}
}

func TestProbeRealPAM(t *testing.T) {
	needRealPAM(t)
	dir := t.TempDir()
	marker := filepath.Join(dir, "other-ran")
	script := filepath.Join(dir, "mark.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$PAM_SERVICE\" > "+marker+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "pam.d")
	os.Mkdir(conf, 0o755)
	files := map[string]string{
		"permitted": "auth required pam_permit.so\naccount required pam_permit.so\n",
		"denied":    "auth required pam_deny.so\naccount required pam_permit.so\n",
		// other proves itself twice: inotify sees it opened, and pam_exec
		// leaves a marker only when its auth stack actually runs.
		"other": "auth required pam_exec.so quiet " + script + "\nauth required pam_permit.so\naccount required pam_permit.so\n",
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(conf, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	sys := NewSystem("", Config{})
	run := func(service string) *ProbeResult {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		r, err := Probe(ctx, sys, ProbeOptions{Service: service, User: "mailprobe", Password: "s3cret", ConfDir: conf})
		if err != nil {
			t.Fatalf("%s: %v", service, err)
		}
		return r
	}

	r := run("permitted")
	if !r.OK || r.FellBack || r.Used != filepath.Join(conf, "permitted") || !r.Agrees {
		t.Fatalf("permitted: %+v", r)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("other's stack ran for a service with its own file")
	}

	r = run("denied")
	if r.OK || r.FellBack || r.Auth == "success" || r.Used != filepath.Join(conf, "denied") {
		t.Fatalf("denied: %+v", r)
	}

	r = run("imap") // no file: libpam falls back to other
	if !r.FellBack || r.Used != filepath.Join(conf, "other") || !r.Agrees || !r.OK {
		t.Fatalf("fallback: %+v", r)
	}
	got, err := os.ReadFile(marker)
	if err != nil || string(got) != "imap\n" {
		t.Fatalf("other's pam_exec did not run for imap: %q %v", got, err)
	}
}
