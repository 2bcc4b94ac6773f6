package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/mailauthd/mailauthd/internal/dovecottest"
)

// dovecotCheckpasswordTemplate is the configuration documented in
// docs/dovecot.md: %[1]s is the passdb's args, %[2]s the userdb block.
// Dovecot 2.3 only: 2.4 has no checkpassword driver.
const dovecotCheckpasswordTemplate = `passdb {
  driver = checkpassword
  args = %[1]s
}
%[2]s
`

// dovecotCheckpasswordVsz: Dovecot's default 256M address-space limit is
// inherited by the checkpassword child; a Go program reserves about 1.2G
// of (never touched) address space, and 1G failed now and then under load.
const dovecotCheckpasswordVsz = `service auth {
  vsz_limit = 2G
}
`

// doveadm runs doveadm args... against d and returns its exit code and
// everything it printed.
func doveadm(t *testing.T, d *dovecottest.Dovecot, args ...string) (int, string) {
	t.Helper()
	code, out, errOut, err := d.Doveadm(args...)
	if err != nil {
		t.Fatal(err)
	}
	return code, out + errOut
}

// TestDovecot runs a real Dovecot 2.3 with mailauthd as its checkpassword
// passdb (and, in a second instance, userdb), through the daemon's control
// socket and standalone, and checks what doveadm sees.
//
// The Dovecot is 2.3 on either Debian release: the host's on Debian 12, a
// Debian 12 root's on Debian 13 (internal/dovecottest), with the binary
// and its configuration inside the tree it sees.
func TestDovecot(t *testing.T) {
	dir := dovecottest.TempDir(t, dovecottest.Version23)
	bin, err := dir.CopyProgram(mailauthdBinary(t), "mailauthd", "version")
	if err != nil {
		t.Fatal(err)
	}
	w := newCPWorldIn(t, dir.Host, dir.Dovecot)
	args := bin.Dovecot + " checkpassword --config " + w.cfgView
	start := func(userdb string) *dovecottest.Dovecot {
		return dovecottest.Start(t, dovecottest.Version23, dovecottest.Config{
			PassdbUserdb: fmt.Sprintf(dovecotCheckpasswordTemplate, args, userdb),
			Extra:        dovecotCheckpasswordVsz,
		})
	}
	withPrefetch := start("userdb {\n  driver = prefetch\n}")
	withUserdb := start("userdb {\n  driver = checkpassword\n  args = " + args + "\n}")

	type check struct {
		name     string
		d        *dovecottest.Dovecot
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
				code, out := doveadm(t, c.d, args...)
				if code != c.wantExit {
					t.Fatalf("doveadm %v: exit %d, want %d\n%s\n%s", c.args, code, c.wantExit, out, c.d.Log())
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

	log := withPrefetch.Log()
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
		code, out := doveadm(t, withPrefetch, "auth", "test", "-x", map[string]string{"daemon": "rip=203.0.113.1", "standalone": "rip=203.0.113.2"}[via], "alice", "alicepw")
		if code != 77 || !strings.Contains(out, "code=temp_fail") {
			t.Errorf("%s, LDAP down: exit %d, want 77 with code=temp_fail:\n%s", via, code, out)
		}
		code, out = doveadm(t, withUserdb, "user", "alice")
		if code != 75 {
			t.Errorf("%s, LDAP down: doveadm user exit %d, want 75 (temporary failure):\n%s", via, code, out)
		}
	}
	if log := withPrefetch.Log(); !strings.Contains(log, "exited with status 111") {
		t.Errorf("dovecot log lacks the 111 exit:\n%s", log)
	}
}
