package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// masterServices are the standard Postfix services, all unchrooted so the
// private instance needs no copies of /etc files.
var masterServices = `pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

// startPostfix runs a private Postfix instance whose smtpd offers SMTP AUTH
// through libsasl2 with pwcheck_method saslauthd pointed at socket. It
// returns the SMTP address; the instance is stopped in t.Cleanup. Lines in
// extraMain are appended to main.cf.
func startPostfix(t *testing.T, socket string, extraMain ...string) string {
	t.Helper()
	addr, _ := startPostfixConf(t, socket, extraMain...)
	return addr
}

// startPostfixConf is startPostfix that also returns the instance's
// config_directory (for postconf -c).
func startPostfixConf(t *testing.T, socket string, extraMain ...string) (addr, configDir string) {
	t.Helper()
	postfix := peertest.NeedFile(t, "/usr/sbin/postfix")
	peertest.NeedRoot(t, "the Postfix test (postfix start)")
	pu, err := user.Lookup("postfix")
	if err != nil {
		t.Fatalf("user postfix: %v", err)
	}
	uid, _ := strconv.Atoi(pu.Uid)

	dir := shortDir(t)
	etc, queue, data := filepath.Join(dir, "etc"), filepath.Join(dir, "queue"), filepath.Join(dir, "data")
	for _, d := range []string{filepath.Join(etc, "sasl"), queue, data} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(data, uid, -1); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	mainCF := fmt.Sprintf(`compatibility_level = 3.6
queue_directory = %[1]s
data_directory = %[2]s
myhostname = mail.example.org
mydomain = example.org
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
smtpd_sasl_security_options = noanonymous
# Where libsasl2 reads smtpd.conf. Debian 12's Postfix has it compiled in
# (<config_directory>/sasl:/usr/lib/sasl) and ignores this line; Debian
# 13's (3.9+) reads only this line, and without it falls back to libsasl2's
# own /etc/sasl2: then smtpd.conf below is never read and every login fails.
cyrus_sasl_config_path = %[5]s
smtpd_tls_security_level = none
maillog_file = %[3]s
maillog_file_prefixes = %[4]s
smtpd_relay_restrictions = permit_sasl_authenticated, reject
alias_maps =
alias_database =
`, queue, data, filepath.Join(dir, "maillog"), dir, filepath.Join(etc, "sasl")) + strings.Join(extraMain, "\n") + "\n"
	masterCF := fmt.Sprintf("127.0.0.1:%d inet n - n - - smtpd\n", port) + masterServices
	// libsasl2 reads <cyrus_sasl_config_path>/<smtpd_sasl_path>.conf.
	saslConf := fmt.Sprintf("pwcheck_method: saslauthd\nsaslauthd_path: %s\nmech_list: PLAIN LOGIN\n", socket)
	for name, body := range map[string]string{
		filepath.Join(etc, "main.cf"):            mainCF,
		filepath.Join(etc, "master.cf"):          masterCF,
		filepath.Join(etc, "sasl", "smtpd.conf"): saslConf,
	} {
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, postfix, "-c", etc, "start").CombinedOutput(); err != nil {
		maillog, _ := os.ReadFile(filepath.Join(dir, "maillog"))
		t.Fatalf("postfix start: %v\n%s\nmaillog:\n%s", err, out, maillog)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, postfix, "-c", etc, "stop").CombinedOutput(); err != nil {
			t.Errorf("postfix stop: %v\n%s", err, out)
			killMaster(data)
		}
		if t.Failed() {
			maillog, _ := os.ReadFile(filepath.Join(dir, "maillog"))
			t.Logf("postfix maillog:\n%s", maillog)
		}
	})
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return addr, etc
		}
		if time.Now().After(deadline) {
			maillog, _ := os.ReadFile(filepath.Join(dir, "maillog"))
			t.Fatalf("postfix smtpd not accepting on %s: %v\nmaillog:\n%s", addr, err, maillog)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// killMaster kills this instance's master process (its pid is in
// master.lock), for when "postfix stop" failed.
func killMaster(dataDir string) {
	b, err := os.ReadFile(filepath.Join(dataDir, "master.lock"))
	if err != nil {
		return
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
		if p, err := os.FindProcess(pid); err == nil {
			p.Kill()
		}
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// TestPostfixSMTPAuth logs in to a real Postfix smtpd with swaks: Postfix
// hands the credentials to libsasl2, which asks mailauthd over the saslauthd
// socket. The daemon's log proves each login came through that path.
func TestPostfixSMTPAuth(t *testing.T) {
	t.Parallel()
	swaks := peertest.NeedFile(t, "/usr/bin/swaks", "swaks")
	slapd := slapdtest.Start(t)
	dir := shortDir(t)
	sock := filepath.Join(dir, "mux")
	// A single-domain site: realm-blind filter, the served domain listed.
	d := startDaemon(t, sock, "--config", writeConfig(t, dir, settings{Socket: sock, LDAPURL: slapd.URL(), Realms: []string{"example.org"}}))
	server := startPostfix(t, sock)

	tests := []struct {
		mech, user, pass string
		code             string // SMTP reply code to AUTH
		outcome, reason  string // logged by mailauthd
		loggedUser       string // as mailauthd received it; "" = user
		realm            string
	}{
		{"PLAIN", "alice", "alicepw", "235", "accept", "ok", "", ""},
		{"PLAIN", "alice", "Wrong-Plain-31", "535", "reject", "wrong password", "", ""},
		{"LOGIN", "alice", "alicepw", "235", "accept", "ok", "", ""},
		{"LOGIN", "negated", "negatedpw", "535", "reject", "host not allowed", "", ""},
		// libsasl2 splits "name@domain" itself and sends the domain as the realm.
		{"PLAIN", "alice@example.org", "alicepw", "235", "accept", "ok", "alice", "example.org"},
		// The realm is part of the identity: alice's password opens nothing
		// in a domain this host does not serve for her.
		{"PLAIN", "alice@evil.test", "alicepw", "535", "reject", "realm not served: evil.test", "alice", "evil.test"},
	}
	for _, tc := range tests {
		t.Run(tc.mech+"/"+tc.user+"/"+tc.code, func(t *testing.T) {
			before := len(d.decisionLines())
			d.addPassword(tc.pass)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, _ := exec.CommandContext(ctx, swaks, "--server", server, "--auth", tc.mech,
				"--auth-user", tc.user, "--auth-password", tc.pass, "--quit-after", "AUTH",
				"--timeout", "20").CombinedOutput()
			// swaks marks server lines "<-  ", "<~  " (TLS) or "<** " (errors).
			var codeLine string
			for _, l := range strings.Split(string(out), "\n") {
				l = strings.TrimLeft(l, "<-~* ")
				if strings.HasPrefix(l, "235 ") || strings.HasPrefix(l, "535 ") {
					codeLine = l
				}
			}
			if !strings.HasPrefix(codeLine, tc.code+" ") {
				t.Fatalf("AUTH %s %s: reply %q, want %s; swaks output:\n%s", tc.mech, tc.user, codeLine, tc.code, out)
			}
			l := d.waitDecisions(before + 1)[before]
			wantUser := tc.loggedUser
			if wantUser == "" {
				wantUser = tc.user
			}
			if got := logField(l, "user"); got != wantUser {
				t.Errorf("logged user %q, want %q", got, wantUser)
			}
			if got := logField(l, "realm"); got != tc.realm {
				t.Errorf("logged realm %q, want %q", got, tc.realm)
			}
			if got := logField(l, "service"); got != "smtp" {
				t.Errorf("logged service %q, want smtp (from libsasl2 in Postfix)", got)
			}
			if got := logField(l, "outcome"); got != tc.outcome {
				t.Errorf("logged outcome %q, want %q", got, tc.outcome)
			}
			if got := logField(l, "reason"); !strings.Contains(got, tc.reason) {
				t.Errorf("logged reason %q, want %q", got, tc.reason)
			}
		})
	}
	// One saslauthd request per AUTH: libsasl2 neither retries nor probes.
	time.Sleep(100 * time.Millisecond)
	if got := len(d.decisionLines()); got != len(tests) {
		t.Errorf("%d decisions logged for %d AUTH commands", got, len(tests))
	}
}
