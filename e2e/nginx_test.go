package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/dovecottest"
	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// nginxMailModule is Debian's libnginx-mod-mail.
const nginxMailModule = "/usr/lib/nginx/modules/ngx_mail_module.so"

// The nginx tests' own users, beside testdata/ldap/users.ldif: two users
// routed to two different backends by mailHost (127.0.0.1 and 127.0.0.2,
// both loopback), one whose mailHost is a name (localhost, resolved by the
// daemon from /etc/hosts: no DNS traffic), and a password with every kind
// of byte nginx escapes or does not.
var nginxUsers = []struct{ uid, password, mailHost string }{
	{"route1", "r1 pass%+word", "127.0.0.1"},
	{"route2", "route2pw", "127.0.0.2"},
	{"routename", "routenamepw", "localhost"},
}

// nginxSecret is the shared secret nginx sends (auth_http_header).
const nginxSecret = "nginx-Shared-Secret-7"

// writeNginxLDIF writes the routing users with {SSHA} passwords.
func writeNginxLDIF(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	for _, u := range nginxUsers {
		salt := make([]byte, 8)
		rand.Read(salt)
		sum := sha1.Sum(append([]byte(u.password), salt...))
		fmt.Fprintf(&b, "dn: uid=%s,%s\nobjectClass: inetOrgPerson\nobjectClass: hostObject\nobjectClass: inetLocalMailRecipient\n"+
			"uid: %s\ncn: %s\nsn: Route\nhost: *\nmailHost: %s\nuserPassword: {SSHA}%s\n\n",
			u.uid, slapdtest.PeopleDN, u.uid, u.uid, u.mailHost, base64.StdEncoding.EncodeToString(append(sum[:], salt...)))
	}
	path := filepath.Join(dir, "nginx-users.ldif")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// startIMAPBackend runs Dovecot 2.3's IMAP server (the host's, or chrooted
// into a Debian 12 root: internal/dovecottest) on port on 127.0.0.1 and
// 127.0.0.2, with a passwd-file holding the same passwords as LDAP: the
// backend checks again what nginx forwards, so a password mangled on the
// way (escaping) fails the login.
func startIMAPBackend(t *testing.T, port int) *dovecottest.Dovecot {
	t.Helper()
	dir := dovecottest.TempDir(t, dovecottest.Version23)
	for _, p := range []string{"/usr/lib/dovecot/imap", "/usr/lib/dovecot/imap-login"} {
		peertest.NeedFile(t, dir.System(p))
	}
	var users strings.Builder
	for _, u := range append(nginxUsers, struct{ uid, password, mailHost string }{"star", "starpw", ""}) {
		fmt.Fprintf(&users, "%s:{PLAIN}%s\n", u.uid, u.password)
	}
	pw, err := dir.WriteFile("users", []byte(users.String()), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	mail := dir.Path("mail")
	if err := os.MkdirAll(mail.Host, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(mail.Host, 0o777)
	return dovecottest.Start(t, dovecottest.Version23, dovecottest.Config{
		Dir: dir,
		PassdbUserdb: fmt.Sprintf(`passdb {
  driver = passwd-file
  args = %s
}
userdb {
  driver = static
  args = uid=65534 gid=65534 home=%s/%%u
}`, pw.Dovecot, mail.Dovecot),
		Extra: fmt.Sprintf(`protocols = imap
disable_plaintext_auth = no
mail_location = maildir:~/Maildir
first_valid_uid = 100
service imap-login {
  inet_listener imap {
    address = 127.0.0.1, 127.0.0.2
    port = %d
  }
  inet_listener imaps {
    port = 0
  }
}`, port),
	})
}

// nginxServer is one running nginx master.
type nginxServer struct {
	dir          string
	imap, smtp   string
	cmd          *exec.Cmd
	done         chan struct{}
	errorLogPath string
}

// startNginx runs nginx with only the mail module: an IMAP proxy asking
// auth_http over the daemon's Unix socket, an SMTP proxy asking over
// loopback TCP, both sending the shared secret.
func startNginx(t *testing.T, conf string) *nginxServer {
	t.Helper()
	bin := peertest.NeedFile(t, "/usr/sbin/nginx")
	peertest.NeedFile(t, nginxMailModule)
	dir := shortDir(t)
	n := &nginxServer{dir: dir, errorLogPath: filepath.Join(dir, "error.log"), done: make(chan struct{})}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	n.cmd = exec.Command(bin, "-p", dir, "-c", path, "-e", n.errorLogPath)
	out := &lockedBuffer{}
	n.cmd.Stdout, n.cmd.Stderr = out, out
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.cmd.Wait(); close(n.done) }()
	t.Cleanup(func() {
		n.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-n.done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
			<-n.done
		}
		if t.Failed() {
			log, _ := os.ReadFile(n.errorLogPath)
			t.Logf("nginx output:\n%s\nnginx error.log:\n%s", out.String(), log)
		}
	})
	return n
}

// waitListening waits until addr accepts connections.
func waitListening(t *testing.T, addr string, done <-chan struct{}, what string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-done:
			t.Fatalf("%s exited before listening on %s", what, addr)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening on %s: %v", what, addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// imapSession is a minimal IMAP client: enough for LOGIN through nginx.
type imapSession struct {
	t    *testing.T
	c    net.Conn
	r    *bufio.Reader
	tag  int
	sent []string
}

func dialIMAP(t *testing.T, addr string) *imapSession {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	s := &imapSession{t: t, c: c, r: bufio.NewReader(c)}
	if greeting := s.line(); !strings.HasPrefix(greeting, "* OK") {
		t.Fatalf("IMAP greeting %q", greeting)
	}
	return s
}

func (s *imapSession) line() string {
	s.t.Helper()
	s.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	l, err := s.r.ReadString('\n')
	if err != nil {
		return "read error: " + err.Error()
	}
	return strings.TrimRight(l, "\r\n")
}

// cmd sends one command and returns its tagged reply line.
func (s *imapSession) cmd(format string, a ...any) string {
	s.t.Helper()
	s.tag++
	tag := fmt.Sprintf("a%d", s.tag)
	s.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(s.c, "%s %s\r\n", tag, fmt.Sprintf(format, a...))
	for {
		l := s.line()
		if strings.HasPrefix(l, tag+" ") || strings.HasPrefix(l, "read error") {
			return strings.TrimPrefix(l, tag+" ")
		}
	}
}

func imapQuote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}

// TestNginxMailProxy runs a real nginx mail proxy in front of a real
// Dovecot IMAP server and a real Postfix, with mailauthd answering
// nginx's auth_http from the test slapd: accepted logins are proxied (to
// the backend their mailHost names), refusals are refused with one text,
// and with LDAP down the client hears "try again later", never a refusal.
func TestNginxMailProxy(t *testing.T) {
	t.Parallel()
	swaks := peertest.NeedFile(t, "/usr/bin/swaks", "swaks")
	peertest.NeedFile(t, "/usr/sbin/nginx")
	peertest.NeedFile(t, nginxMailModule)
	dir := shortDir(t)
	slapd := slapdtest.Start(t, slapdtest.WithLDIF(filepath.Join(slapdtest.TestdataDir(), "users.ldif"), writeNginxLDIF(t, dir)))

	imapBackendPort, smtpProxyPort, imapProxyPort, httpPort := freePort(t), freePort(t), freePort(t), freePort(t)
	sock := filepath.Join(dir, "mux")
	httpSock := filepath.Join(dir, "http")
	postfixSMTP := startPostfix(t, sock, "smtpd_authorized_xclient_hosts = 127.0.0.0/8")
	_, postfixPort, _ := net.SplitHostPort(postfixSMTP)
	secretFile := filepath.Join(dir, "auth_http.secret")
	if err := os.WriteFile(secretFile, []byte(nginxSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := writeConfig(t, dir, settings{Socket: sock, LDAPURL: slapd.URL(),
		ListenExtra: fmt.Sprintf("  http:\n    - {path: %q, mode: \"0666\"}\n    - {address: \"127.0.0.1:%d\"}\n", httpSock, httpPort),
		Extra: fmt.Sprintf(`auth_http:
  server_attribute: mailHost
  address_family: ipv4
  wait: 1s
  wait_attempts: 2
  secret_header: X-Auth-Key
  secret_file: %s
  backends:
    imap: {server: 127.0.0.1, port: %d}
    smtp: {server: 127.0.0.1, port: %s}
`, secretFile, imapBackendPort, postfixPort)})
	d := startDaemon(t, sock, "--config", cfg)
	d.addPassword(nginxSecret)
	dovecot := startIMAPBackend(t, imapBackendPort)
	waitListening(t, fmt.Sprintf("127.0.0.2:%d", imapBackendPort), nil, "dovecot")

	// The configuration docs/nginx.md shows, with the test's ports and paths.
	n := startNginx(t, fmt.Sprintf(`load_module %s;
daemon off;
worker_processes 1;
pid %s/nginx.pid;
error_log %s/error.log info;
events { worker_connections 64; }
mail {
    server_name mail.example.org;
    auth_http_header X-Auth-Key "%s";
    proxy_pass_error_message on;
    server {
        listen 127.0.0.1:%d;
        protocol imap;
        auth_http unix:%s:/auth;
    }
    server {
        listen 127.0.0.1:%d;
        protocol smtp;
        smtp_auth plain login;
        xclient on;
        auth_http 127.0.0.1:%d/auth;
    }
}
`, nginxMailModule, dir, dir, nginxSecret, imapProxyPort, httpSock, smtpProxyPort, httpPort))
	imapAddr, smtpAddr := fmt.Sprintf("127.0.0.1:%d", imapProxyPort), fmt.Sprintf("127.0.0.1:%d", smtpProxyPort)
	waitListening(t, imapAddr, n.done, "nginx")
	waitListening(t, smtpAddr, n.done, "nginx")

	httpDecisions := func() []string {
		var out []string
		for _, l := range strings.Split(d.stderr.String(), "\n") {
			if strings.Contains(l, `msg="auth_http: decision"`) {
				out = append(out, l)
			}
		}
		return out
	}
	waitHTTPDecisions := func(n int) []string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			if l := httpDecisions(); len(l) >= n {
				return l
			}
			if time.Now().After(deadline) {
				t.Fatalf("fewer than %d auth_http decisions logged; log:\n%s", n, d.stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	checkDecision := func(t *testing.T, before int, user, service, outcome, reason string) {
		t.Helper()
		l := waitHTTPDecisions(before + 1)[before]
		for k, want := range map[string]string{"user": user, "service": service, "outcome": outcome, "client": "127.0.0.1"} {
			if got := logField(l, k); got != want {
				t.Errorf("logged %s %q, want %q: %s", k, got, want, l)
			}
		}
		if got := logField(l, "reason"); !strings.Contains(got, reason) {
			t.Errorf("logged reason %q, want %q", got, reason)
		}
	}

	t.Run("imap/routed by mailHost", func(t *testing.T) {
		for _, u := range nginxUsers {
			d.addPassword(u.password)
			before := len(httpDecisions())
			s := dialIMAP(t, imapAddr)
			if got := s.cmd("LOGIN %s %s", imapQuote(u.uid), imapQuote(u.password)); !strings.HasPrefix(got, "OK") {
				t.Fatalf("%s: LOGIN through nginx: %q", u.uid, got)
			}
			// Proxied: this answer comes from Dovecot, not from nginx.
			if got := s.cmd("SELECT INBOX"); !strings.HasPrefix(got, "OK") {
				t.Errorf("%s: SELECT INBOX at the backend: %q", u.uid, got)
			}
			s.cmd("LOGOUT")
			checkDecision(t, before, u.uid, "imap", "accept", "ok")
			wantIP := u.mailHost
			if wantIP == "localhost" {
				wantIP = "127.0.0.1"
			}
			l := httpDecisions()[before]
			if got := logField(l, "backend"); got != fmt.Sprintf("%s:%d", wantIP, imapBackendPort) {
				t.Errorf("%s: logged backend %q, want %s:%d", u.uid, got, wantIP, imapBackendPort)
			}
			// Dovecot saw the login arrive on the address mailHost names.
			want := fmt.Sprintf("Login: user=<%s>, method=PLAIN, rip=127.0.0.1, lip=%s", u.uid, wantIP)
			deadline := time.Now().Add(5 * time.Second)
			for !strings.Contains(dovecot.Log(), want) {
				if time.Now().After(deadline) {
					t.Fatalf("dovecot log lacks %q:\n%s", want, dovecot.Log())
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	})

	t.Run("imap/refusals", func(t *testing.T) {
		for _, tc := range []struct{ user, pass, reason string }{
			{"route2", "Wrong-Route2-Pw", "wrong password"},
			{"negated", "negatedpw", "host not allowed"},
			{"nosuchuser", "Whatever-Pw-9", "unknown"},
		} {
			d.addPassword(tc.pass)
			before := len(httpDecisions())
			s := dialIMAP(t, imapAddr)
			start := time.Now()
			got := s.cmd("LOGIN %s %s", imapQuote(tc.user), imapQuote(tc.pass))
			if got != "NO Invalid login or password" {
				t.Errorf("%s: %q, want the one refusal text", tc.user, got)
			}
			// Auth-Wait: 1 on the first attempt: nginx paused, then kept the
			// session for a second try, which (wait_attempts: 2) ends it.
			if took := time.Since(start); took < 900*time.Millisecond {
				t.Errorf("%s: refused after %s; Auth-Wait asked for 1s", tc.user, took)
			}
			checkDecision(t, before, tc.user, "imap", "reject", tc.reason)
			if got := s.cmd("LOGIN %s %s", imapQuote(tc.user), imapQuote(tc.pass)); got != "NO Invalid login or password" {
				t.Errorf("%s: second attempt %q", tc.user, got)
			}
			if l := waitHTTPDecisions(before + 2)[before+1]; logField(l, "attempt") != "2" {
				t.Errorf("second attempt logged as %s", l)
			}
		}
	})

	smtp := func(user, pass string, extra ...string) string {
		t.Helper()
		d.addPassword(pass)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args := append([]string{"--server", smtpAddr, "--auth", "PLAIN", "--auth-user", user, "--auth-password", pass,
			"--timeout", "20"}, extra...)
		out, _ := exec.CommandContext(ctx, swaks, args...).CombinedOutput()
		return string(out)
	}
	replyLine := func(out, code string) bool {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(strings.TrimLeft(l, "<-~* "), code) {
				return true
			}
		}
		return false
	}

	t.Run("smtp/accepted, relayed by Postfix via XCLIENT", func(t *testing.T) {
		before := len(httpDecisions())
		// Postfix relays only for an authenticated client
		// (permit_sasl_authenticated): the 250 for a foreign recipient
		// proves nginx's XCLIENT LOGIN reached it.
		out := smtp("star", "starpw", "--from", "star@example.org", "--to", "someone@elsewhere.example", "--quit-after", "RCPT")
		if !replyLine(out, "235 ") || !replyLine(out, "250 2.1.5") {
			t.Fatalf("want 235 from nginx and 250 2.1.5 from Postfix for the relay; swaks:\n%s", out)
		}
		checkDecision(t, before, "star", "smtp", "accept", "ok")
	})

	t.Run("smtp/refused", func(t *testing.T) {
		before := len(httpDecisions())
		out := smtp("star", "Wrong-Smtp-Pw", "--quit-after", "AUTH")
		if !replyLine(out, "535 5.7.8 Invalid login or password") {
			t.Fatalf("want 535 5.7.8; swaks:\n%s", out)
		}
		checkDecision(t, before, "star", "smtp", "reject", "wrong password")
	})

	t.Run("secret required", func(t *testing.T) {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/auth", httpPort), nil)
		req.Header.Set("Auth-Method", "plain")
		req.Header.Set("Auth-User", "star")
		req.Header.Set("Auth-Pass", "starpw")
		req.Header.Set("Auth-Protocol", "imap")
		resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 403 || resp.Header.Get("Auth-Status") != "" {
			t.Errorf("without the secret: %s, Auth-Status %q; want 403 and none", resp.Status, resp.Header.Get("Auth-Status"))
		}
		d.waitLog("shared secret header missing or wrong", 5*time.Second)
	})

	// Last: it stops the directory.
	t.Run("ldap down: try again later", func(t *testing.T) {
		slapd.Stop()
		before := len(httpDecisions())
		s := dialIMAP(t, imapAddr)
		got := s.cmd("LOGIN %s %s", imapQuote("route1"), imapQuote(nginxUsers[0].password))
		if got != "NO [UNAVAILABLE] Temporary authentication failure, try again later" {
			t.Errorf("IMAP with LDAP down: %q", got)
		}
		checkDecision(t, before, "route1", "imap", "tempfail", "")
		out := smtp("star", "starpw", "--quit-after", "AUTH")
		if !replyLine(out, "451 4.3.0 Temporary authentication failure") {
			t.Errorf("SMTP with LDAP down: want 451 4.3.0; swaks:\n%s", out)
		}
		checkDecision(t, before+1, "star", "smtp", "tempfail", "")
	})
}
