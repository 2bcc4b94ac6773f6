package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/mailauthd/mailauthd/saslauthd"
)

// TestPAMCyrusSaslauthd runs Cyrus saslauthd -a pam (a site that keeps its
// saslauthd) on the shipped smtp file: Postfix's request reaches PAM, PAM
// runs mailauthd pam, the daemon decides. The answers must be those of
// mailauthd's own saslauthd socket, for every case of the table.
//
// saslauthd calls pam_start with the request's service as the PAM service
// name, and libpam reads /etc/pam.d: the files go there under unique names
// (NAME-smtp, NAME-imap) with --service, and the requests name that service.
func TestPAMCyrusSaslauthd(t *testing.T) {
	bin := peertest.NeedFile(t, "/usr/sbin/saslauthd")
	peertest.NeedRoot(t, "installing files in /etc/pam.d")
	w := newPAMWorld(t)
	name := uniquePAMName(t)
	for _, svc := range []string{"imap", "smtp"} {
		installPAMService(t, "/etc/pam.d", name+"-"+svc, w.shippedPAMFile(t, "smtp", " --service "+svc))
	}
	run := filepath.Join(w.dir, "cyrus")
	if err := os.Mkdir(run, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-a", "pam", "-m", run, "-n", "1", "-d")
	var out lockedBuf
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("saslauthd:\n%s", out.String())
		}
	})
	cyrus := &saslauthd.Client{Path: filepath.Join(run, "mux"), Timeout: 10 * time.Second}
	for i := 0; ; i++ {
		if _, err := os.Stat(cyrus.Path); err == nil {
			break
		}
		if i > 100 {
			t.Fatalf("saslauthd never made its socket:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	w.startDaemon(t)
	for _, via := range []string{"daemon", "standalone"} {
		if via == "standalone" {
			w.stopDaemon()
		}
		for _, c := range pamCases {
			if strings.Contains(c.user, "@") {
				continue // saslauthd drops the realm before PAM unless -r
			}
			t.Run(via+"/"+c.name, func(t *testing.T) {
				want := c.want
				if via == "daemon" {
					if got := w.saslauthd(t, c.service, c.user, c.password); got != want {
						t.Fatalf("mailauthd's socket: %v, want %v", got, want)
					}
				}
				n := len(w.pamLogLines())
				w.sent(c.password)
				ok, text, err := cyrus.Authenticate(context.Background(), auth.Request{User: c.user, Password: c.password, Service: name + "-" + c.service})
				if err != nil {
					t.Fatal(err)
				}
				if ok != want {
					t.Fatalf("saslauthd -a pam: ok=%v %q, want %v", ok, text, want)
				}
				if c.password == "" {
					return // saslauthd refuses an empty password itself
				}
				if line := w.pamLineAfter(t, n); !strings.Contains(line, "user="+logValue(c.user)+" service="+c.service) || !strings.Contains(line, "via="+via) {
					t.Errorf("pam log line: %s", line)
				}
			})
		}
	}
}
