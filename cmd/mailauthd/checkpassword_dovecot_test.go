package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	dovecotPath = "/usr/sbin/dovecot"
	doveadmPath = "/usr/bin/doveadm"
)

// dovecotConfTemplate is the configuration documented in docs/dovecot.md,
// with paths in a temp dir. %[1]s dir, %[2]s passdb args, %[3]s userdb block.
const dovecotConfTemplate = `protocols =
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
ssl = no
auth_mechanisms = plain login
auth_verbose = yes
# No delay after a failed login: the test runs many on purpose.
auth_failure_delay = 0
auth_cache_size = 0
# Dovecot's default 256M address-space limit is inherited by the
# checkpassword child; a Go program reserves about 1.2G of (never touched)
# address space, and 1G failed now and then under load.
service auth {
  vsz_limit = 2G
}
passdb {
  driver = checkpassword
  args = %[2]s
}
%[3]s
`

type dovecot struct {
	conf string
	log  string
}

// startDovecot runs a real Dovecot master with its own config; userdb is
// the userdb block (prefetch or checkpassword).
func startDovecot(t *testing.T, args, userdb string) *dovecot {
	t.Helper()
	for _, p := range []string{dovecotPath, doveadmPath} {
		if _, err := os.Stat(p); err != nil {
			if os.Getenv("CI") != "" {
				t.Fatalf("%s not installed (run scripts/install-deps.sh)", p)
			}
			t.Skipf("%s not installed", p)
		}
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the Dovecot test runs dovecot's master, which needs root")
		}
		t.Skip("dovecot's master needs root")
	}
	dir := publicTempDir(t)
	d := &dovecot{conf: filepath.Join(dir, "dovecot.conf"), log: filepath.Join(dir, "dovecot.log")}
	conf := fmt.Sprintf(dovecotConfTemplate, dir, args, userdb)
	if err := os.WriteFile(d.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// The master daemonizes and its children keep stdout/stderr open:
	// give it a file, not a pipe, or waiting for it never ends.
	startLog, err := os.Create(filepath.Join(dir, "start.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer startLog.Close()
	cmd := exec.Command(dovecotPath, "-c", d.conf)
	cmd.Stdout, cmd.Stderr = startLog, startLog
	if err := cmd.Run(); err != nil {
		out, _ := os.ReadFile(startLog.Name())
		t.Fatalf("dovecot: %v\n%s\n%s", err, out, d.logText())
	}
	t.Cleanup(func() {
		exec.Command(dovecotPath, "-c", d.conf, "stop").Run()
		// Wait for the master to remove its pid file, so the temp dir
		// can go.
		for i := 0; i < 50; i++ {
			if _, err := os.Stat(filepath.Join(dir, "run", "master.pid")); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	// The auth socket appears once the auth process is up.
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(dir, "run", "auth-userdb")); err == nil {
			break
		}
		if i > 100 {
			t.Fatalf("dovecot auth never came up\n%s", d.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return d
}

func (d *dovecot) logText() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}

// doveadm runs doveadm -c CONF args... and returns its exit code and output.
func (d *dovecot) doveadm(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(doveadmPath, append([]string{"-c", d.conf}, args...)...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), out.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, out.String()
}

// TestDovecot runs a real Dovecot 2.3 with mailauthd as its checkpassword
// passdb (and, in a second instance, userdb), through the daemon's control
// socket and standalone, and checks what doveadm sees.
func TestDovecot(t *testing.T) {
	bin := mailauthdBinary(t)
	w := newCPWorld(t)
	args := bin + " checkpassword --config " + w.cfgPath
	withPrefetch := startDovecot(t, args, "userdb {\n  driver = prefetch\n}")
	withUserdb := startDovecot(t, args, "userdb {\n  driver = checkpassword\n  args = "+args+"\n}")

	type check struct {
		name     string
		d        *dovecot
		args     []string
		wantExit int
		want     []string // lines that must appear in doveadm's output
		wantNot  []string
	}
	checks := []check{
		{"accepted, proxy host from LDAP", withPrefetch,
			[]string{"auth", "test", "-x", "service=imap", "-x", "rip=192.0.2.7", "alice", "alicepw"}, 0,
			[]string{"auth succeeded", "host=imap1.example.org", "proxy_maybe=y"}, nil},
		{"wrong password", withPrefetch, []string{"auth", "test", "alice", "wrong"}, 77,
			[]string{"auth failed"}, []string{"temp_fail"}},
		{"refused by host attribute", withPrefetch, []string{"auth", "test", "otherhost", "otherhostpw"}, 77,
			[]string{"auth failed"}, []string{"temp_fail"}},
		{"unknown user", withPrefetch, []string{"auth", "test", "nobody", "x"}, 77,
			[]string{"auth failed"}, []string{"temp_fail"}},
		{"passdb lookup", withPrefetch, []string{"auth", "lookup", "proxied"}, 0,
			[]string{"host      : 192.0.2.25", "  proxy"}, nil},
		{"passdb lookup unknown", withPrefetch, []string{"auth", "lookup", "nobody"}, 67, nil, nil},
		{"userdb", withUserdb, []string{"user", "alice"}, 0,
			[]string{"uid\t2001", "gid\t2000", "home\t/srv/mail/example.org/alice", "mail\tmaildir:~/Maildir"}, []string{"host"}},
		{"userdb defaults", withUserdb, []string{"user", "star@example.net"}, 0,
			[]string{"uid\t5000", "home\t/var/vmail/example.net/star"}, nil},
		{"userdb unknown", withUserdb, []string{"user", "nobody"}, 67, nil, nil},
		// The realm is part of the identity, and Dovecot gets the entry's
		// canonical name whatever the client typed.
		{"another tenant's realm", withPrefetch, []string{"auth", "test", "alice@evil.test", "alicepw"}, 77,
			[]string{"auth failed"}, []string{"temp_fail"}},
		{"own realm, canonical user", withPrefetch, []string{"auth", "test", "alice@Example.ORG", "alicepw"}, 0,
			[]string{"auth succeeded", "user=alice@example.org"}, nil},
		{"name variant, canonical user", withPrefetch, []string{"auth", "test", "ALICE", "alicepw"}, 0,
			[]string{"auth succeeded", "  user=alice\n"}, []string{"  user=ALICE"}},
		{"userdb, another tenant's realm", withUserdb, []string{"user", "alice@evil.test"}, 67, nil, nil},
		{"userdb refused by host", withUserdb, []string{"user", "otherhost"}, 67, nil, nil},
	}
	n := 0
	for _, via := range []string{"daemon", "standalone"} {
		if via == "daemon" {
			w.startDaemon(t)
		} else {
			w.stopDaemon()
		}
		for _, c := range checks {
			t.Run(via+"/"+c.name, func(t *testing.T) {
				args := c.args
				if args[1] == "test" && args[2] != "-x" {
					// Dovecot's auth penalty grows per client IP with
					// each failure; a fresh IP keeps the test fast.
					n++
					args = append([]string{"auth", "test", "-x", fmt.Sprintf("rip=198.51.100.%d", n)}, args[2:]...)
				}
				code, out := c.d.doveadm(t, args...)
				if code != c.wantExit {
					t.Fatalf("doveadm %v: exit %d, want %d\n%s\n%s", c.args, code, c.wantExit, out, c.d.logText())
				}
				for _, s := range c.want {
					if !strings.Contains(out, s) {
						t.Errorf("output lacks %q:\n%s", s, out)
					}
				}
				for _, s := range c.wantNot {
					if strings.Contains(out, s) {
						t.Errorf("output has %q:\n%s", s, out)
					}
				}
			})
		}
	}

	log := withPrefetch.logText()
	for _, s := range []string{
		// Our decision lines, filed as Info (not Error) with the client
		// address and service doveadm passed.
		"auth: Info: level=INFO msg=checkpassword mode=auth user=alice service=imap rip=192.0.2.7 result=accept exit=0",
		"via=daemon", "via=standalone",
		"Login failed (status=1)",
	} {
		if !strings.Contains(log, s) {
			t.Errorf("dovecot log lacks %q:\n%s", s, log)
		}
	}
	for _, pw := range []string{"alicepw", "otherhostpw"} {
		if strings.Contains(log, pw) {
			t.Errorf("password %q in Dovecot's log", pw)
		}
	}

	// LDAP down: a temporary failure, never "wrong password".
	w.slapd.Stop()
	for _, via := range []string{"daemon", "standalone"} {
		if via == "daemon" {
			w.startDaemon(t)
		} else {
			w.stopDaemon()
		}
		code, out := withPrefetch.doveadm(t, "auth", "test", "-x", map[string]string{"daemon": "rip=203.0.113.1", "standalone": "rip=203.0.113.2"}[via], "alice", "alicepw")
		if code != 77 || !strings.Contains(out, "code=temp_fail") {
			t.Errorf("%s, LDAP down: exit %d, want 77 with code=temp_fail:\n%s", via, code, out)
		}
		code, out = withUserdb.doveadm(t, "user", "alice")
		if code != 75 {
			t.Errorf("%s, LDAP down: doveadm user exit %d, want 75 (temporary failure):\n%s", via, code, out)
		}
	}
	if log := withPrefetch.logText(); !strings.Contains(log, "exited with status 111") {
		t.Errorf("dovecot log lacks the 111 exit:\n%s", log)
	}
}
