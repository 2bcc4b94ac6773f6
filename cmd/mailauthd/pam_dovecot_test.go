package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailauthd/mailauthd/internal/dovecottest"
)

// dovecotPAMBlock is docs/pam.md's Dovecot block, with the test's PAM
// service name: Dovecot's pam passdb runs in the auth-worker, whose
// address-space limit (vsz_limit, default 256M) pam_exec's child inherits.
const dovecotPAMBlock = `passdb {
  driver = pam
  args = %s
}
userdb {
  driver = static
  args = uid=5000 gid=5000 home=/var/vmail/%%d/%%n
}
`

const dovecotPAMVsz = `service auth-worker {
  vsz_limit = 2G
}
`

// installPAMService writes a pam.d service file into pamd (the /etc/pam.d
// of the system Dovecot runs on), where Dovecot's pam_start reads it: Dovecot cannot
// be given a pam.d directory, and libpam reads /etc/pam.d. The name is
// unique; t.Cleanup removes it.
func installPAMService(t *testing.T, pamd, name, content string) {
	t.Helper()
	path := filepath.Join(pamd, name)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatalf("installing a test PAM service: %v", err)
	}
	t.Cleanup(func() { os.Remove(path) })
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func uniquePAMName(t *testing.T) string {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	return fmt.Sprintf("mailauthd-test-%d-%s", os.Getpid(), hex.EncodeToString(b))
}

// dovecotPAMBlock24 is the same for Dovecot 2.4, whose pam passdb takes
// service_name (var-expanded per request) instead of args.
const dovecotPAMBlock24 = `passdb pam {
  service_name = %s
}
userdb static {
  driver = static
  fields {
    uid = 5000
    gid = 5000
    home = /var/vmail/%%{user}
  }
}
`

// dovecotPAMWorld is a PAM world where Dovecot v can reach it: in a
// directory of the tree that Dovecot sees (the host's, or the root of the
// Debian release that ships v), with the mailauthd binary copied there and
// checked to run there. It returns the world and that system's pam.d
// directory.
func dovecotPAMWorld(t *testing.T, v dovecottest.Version) (*pamWorld, string) {
	t.Helper()
	dir := dovecottest.TempDir(t, v)
	bin, err := dir.CopyProgram(mailauthdBinary(t), "mailauthd", "version")
	if err != nil {
		t.Fatal(err)
	}
	return newPAMWorldIn(t, dir.Host, dir.Dovecot, bin.Dovecot), dir.System("/etc/pam.d")
}

// TestPAMDovecot runs a real Dovecot 2.3 with passdb { driver = pam } on
// the shipped pam.d file, through the daemon and standalone, and requires
// the saslauthd socket's answer for every case of the table.
//
// Dovecot names the PAM service from args (var-expanded): here
// NAME-%Ls, so "-x service=smtp" reaches the file NAME-smtp, whose line
// passes --service smtp (what args = * and a file per protocol give an
// admin; the test cannot take /etc/pam.d/imap from the host).
func TestPAMDovecot(t *testing.T) {
	w, pamd := dovecotPAMWorld(t, dovecottest.Version23)
	name := uniquePAMName(t)
	for _, svc := range []string{"imap", "smtp"} {
		installPAMService(t, pamd, name+"-"+svc, w.shippedPAMFile(t, "dovecot", " --service "+svc))
	}
	d := dovecottest.Start(t, dovecottest.Version23, dovecottest.Config{
		PassdbUserdb: fmt.Sprintf(dovecotPAMBlock, name+"-%Ls"),
		Extra:        dovecotPAMVsz,
	})
	dovecotPAMCases(t, w, d)

	// The blocks shown in docs/pam.md are the ones run here.
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "pam.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, block := range []string{dovecotPAMVsz, fmt.Sprintf(dovecotPAMBlock, "dovecot"), fmt.Sprintf(dovecotPAMBlock24, "dovecot")} {
		if !strings.Contains(string(doc), block) {
			t.Errorf("docs/pam.md does not show the tested block:\n%s", block)
		}
	}
}

// TestPAMDovecot24 is TestPAMDovecot on Dovecot 2.4.
func TestPAMDovecot24(t *testing.T) {
	w, pamd := dovecotPAMWorld(t, dovecottest.Version24)
	name := uniquePAMName(t)
	for _, svc := range []string{"imap", "smtp"} {
		installPAMService(t, pamd, name+"-"+svc, w.shippedPAMFile(t, "dovecot", " --service "+svc))
	}
	d := dovecottest.Start(t, dovecottest.Version24, dovecottest.Config{
		PassdbUserdb: fmt.Sprintf(dovecotPAMBlock24, name+"-%{protocol}"),
		Extra:        dovecotPAMVsz,
	})
	dovecotPAMCases(t, w, d)
}

// dovecotPAMCases runs the case table through Dovecot's pam passdb, via the
// daemon and standalone, then with LDAP down.
func dovecotPAMCases(t *testing.T, w *pamWorld, d *dovecottest.Dovecot) {
	w.startDaemon(t)
	sasl := map[string]bool{}
	for _, c := range pamCases {
		sasl[c.name] = w.saslauthd(t, c.service, c.user, c.password)
	}
	for _, via := range []string{"daemon", "standalone"} {
		if via == "standalone" {
			w.stopDaemon()
		}
		for i, c := range pamCases {
			t.Run(via+"/"+c.name, func(t *testing.T) {
				n := len(w.pamLogLines())
				w.sent(c.password)
				rip := fmt.Sprintf("192.0.2.%d", 10+i)
				res, fields, err := d.AuthTest(c.user, c.password, map[string]string{"service": c.service, "rip": rip})
				if err != nil {
					t.Fatal(err)
				}
				got := res == dovecottest.OK
				if got != c.want || got != sasl[c.name] {
					t.Fatalf("Dovecot: %v %v; want accepted=%v like the saslauthd socket\n%s", res, fields, c.want, d.Log())
				}
				if !got && res != dovecottest.Failed {
					t.Errorf("refusal is %v, want failed", res)
				}
				// Dovecot hands even an empty password to PAM; the
				// program refuses it without asking anyone.
				want := []string{"service=" + c.service + " rhost=" + rip, "tty=dovecot", "via=" + via}
				if c.password == "" {
					want = []string{"service=" + c.service + " rhost=" + rip, "cause=invalid"}
				}
				line := w.pamLineAfter(t, n)
				for _, s := range want {
					if !strings.Contains(line, s) {
						t.Errorf("pam log line lacks %q:\n%s", s, line)
					}
				}
			})
		}
	}

	// LDAP down: PAM has no "try later"; Dovecot answers a plain failure
	// (not temp_fail), and our log says it was a temporary one.
	w.slapd.Stop()
	for _, via := range []string{"standalone", "daemon"} {
		if via == "daemon" {
			w.startDaemon(t)
		}
		n := len(w.pamLogLines())
		res, fields, err := d.AuthTest("pamuser", "pamuserpw", map[string]string{"service": "imap", "rip": "198.51.100.1"})
		if err != nil || res != dovecottest.Failed {
			t.Errorf("%s, LDAP down: %v %v %v, want failed", via, res, fields, err)
		}
		if line := w.pamLineAfter(t, n); !strings.Contains(line, "result=tempfail exit=111") {
			t.Errorf("%s, LDAP down: log line %s", via, line)
		}
	}

	log := d.Log()
	if !strings.Contains(log, "pam_authenticate() failed: System error") {
		t.Errorf("Dovecot's log lacks pam_authenticate() failed: System error:\n%s", log)
	}
	w.mu.Lock()
	for _, pw := range w.passwords {
		if len(pw) >= 4 && strings.Contains(log, pw) {
			t.Errorf("password %q in Dovecot's log", pw)
		}
	}
	w.mu.Unlock()
}

// TestPAMDovecotDefaultVszLimit: without the vsz_limit setting of
// docs/pam.md, the Go runtime cannot start under the auth-worker's 256M
// address-space limit, which pam_exec's child inherits: every login fails,
// and pam_exec's log= file shows why.
func TestPAMDovecotDefaultVszLimit(t *testing.T) {
	w, pamd := dovecotPAMWorld(t, dovecottest.Version23)
	name := uniquePAMName(t)
	installPAMService(t, pamd, name, w.shippedPAMFile(t, "dovecot", ""))
	d := dovecottest.Start(t, dovecottest.Version23, dovecottest.Config{
		PassdbUserdb: fmt.Sprintf(dovecotPAMBlock, name),
	})
	w.startDaemon(t)
	res, _, err := d.AuthTest("pamuser", "pamuserpw", map[string]string{"service": "imap"})
	if err != nil || res != dovecottest.Failed {
		t.Fatalf("with the default vsz_limit: %v %v, want failed", res, err)
	}
	data, _ := os.ReadFile(w.pamLog)
	if !strings.Contains(string(data), "fatal error: failed to reserve") {
		t.Errorf("pam_exec's log does not show the Go runtime's failure:\n%s", data)
	}
}
