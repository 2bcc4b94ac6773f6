package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// mailauthdTest runs "mailauthd test" as a socket client and returns its
// output and exit code (0 OK, 1 NO, 2 no answer).
func (d *daemon) mailauthdTest(ctx context.Context, user, pass, service string) (string, int) {
	d.addPassword(pass)
	d.sent.Add(1)
	cmd := exec.CommandContext(ctx, mailauthdBin, "test", "-u", user, "-p", "-", "-s", service, "-f", d.socket, "-t", "10s")
	cmd.Stdin = strings.NewReader(pass + "\n")
	out, err := cmd.CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return strings.TrimSpace(string(out)), code
}

// TestReload: SIGHUP swaps the access rules while requests keep flowing;
// every request in the storm gets a real OK/NO answer, none a transport
// error or tempfail. A broken configuration on SIGHUP is refused and the
// running one keeps serving.
func TestReload(t *testing.T) {
	t.Parallel()
	peertest.NeedFile(t, "/usr/sbin/testsaslauthd", "testsaslauthd")
	slapd := slapdtest.Start(t)
	dir := shortDir(t)
	sock := filepath.Join(dir, "mux")
	cfg := writeConfig(t, dir, settings{Socket: sock, LDAPURL: slapd.URL()})
	d := startDaemon(t, sock, "--config", cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()

	if got := d.testsaslauthd(ctx, saslReq{"otherhost", "otherhostpw", "imap", ""}); !isNO(got) {
		t.Fatalf("otherhost before reload: %q, want NO", got)
	}

	// The storm: Cyrus's client and mailauthd's own, in parallel, until stopped.
	var (
		mu      sync.Mutex
		answers []string
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				var a string
				switch i % 2 {
				case 0:
					a = d.testsaslauthd(ctx, saslReq{"otherhost", "otherhostpw", "imap", ""})
				default:
					out, code := d.mailauthdTest(ctx, "alice", "alicepw", "imap")
					a = fmt.Sprintf("mailauthd test: exit %d: %s", code, out)
					if code == 0 && out == "OK" || code == 1 && strings.HasPrefix(out, "NO ") {
						a = "ok-or-no"
					}
				}
				mu.Lock()
				answers = append(answers, a)
				mu.Unlock()
			}
		}(i)
	}
	// Enough answers on each side of the reload, however slow the machine.
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(answers) }
	waitCount := func(n int) {
		for count() < n && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitCount(8)
	beforeReload := count()

	writeConfig(t, dir, settings{Socket: sock, LDAPURL: slapd.URL(), Hostnames: []string{"other.example.org"}})
	d.signal(syscall.SIGHUP)
	d.waitLog(`msg="configuration reloaded"`, 10*time.Second)
	waitCount(count() + 8)
	close(stop)
	wg.Wait()

	if beforeReload == 0 || len(answers) <= beforeReload {
		t.Fatalf("storm too thin to prove anything: %d answers before reload, %d in all", beforeReload, len(answers))
	}
	for _, a := range answers {
		if a != "ok-or-no" && a != okAnswer && !isNO(a) {
			t.Errorf("request during reload got %q, want an OK or NO answer", a)
		}
	}
	for _, l := range d.waitDecisions(int(d.sent.Load())) {
		if o := logField(l, "outcome"); o != "accept" && o != "reject" {
			t.Errorf("decision during reload was %q: %s", o, l)
		}
	}
	t.Logf("%d requests during the reload storm", len(answers))

	// The new rules are in force: the host list now names only other.example.org.
	if got := d.testsaslauthd(ctx, saslReq{"otherhost", "otherhostpw", "imap", ""}); got != okAnswer {
		t.Errorf("otherhost after reload: %q, want OK", got)
	}
	if got := d.testsaslauthd(ctx, saslReq{"alice", "alicepw", "imap", ""}); !isNO(got) {
		t.Errorf("alice after reload: %q, want NO (host not allowed)", got)
	}

	// A broken file is refused; the running configuration stays.
	if err := os.WriteFile(cfg, []byte("acess:\n  hostnames: [mail.example.org]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.signal(syscall.SIGHUP)
	d.waitLog(`msg="reload refused, keeping the running configuration"`, 10*time.Second)
	if got := d.testsaslauthd(ctx, saslReq{"otherhost", "otherhostpw", "imap", ""}); got != okAnswer {
		t.Errorf("otherhost after refused reload: %q, want OK (old configuration kept)", got)
	}
	if n := d.countLog(`msg="configuration reloaded"`); n != 1 {
		t.Errorf("%d \"configuration reloaded\" lines, want 1 (the broken file must not load)", n)
	}
}

// TestShutdownDrains: a request waiting on a stuck LDAP server when SIGTERM
// arrives still gets its answer; then the daemon exits 0 and removes its socket.
func TestShutdownDrains(t *testing.T) {
	t.Parallel()
	peertest.NeedFile(t, "/usr/sbin/testsaslauthd", "testsaslauthd")
	slapd := slapdtest.Start(t)
	dir := shortDir(t)
	sock := filepath.Join(dir, "mux")
	cfg := writeConfig(t, dir, settings{Socket: sock, LDAPURL: slapd.URL(), LDAPTimeout: "3s", RequestLimit: "4s"})
	d := startDaemon(t, sock, "--config", cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if got := d.testsaslauthd(ctx, saslReq{"alice", "alicepw", "imap", ""}); got != okAnswer {
		t.Fatalf("alice: %q, want OK", got)
	}

	if err := slapd.Pause(); err != nil {
		t.Fatal(err)
	}
	defer slapd.Resume()
	answer := make(chan string, 1)
	go func() { answer <- d.testsaslauthd(ctx, saslReq{"alice", "alicepw", "imap", ""}) }()
	// Wait until the daemon holds the connection (then it waits on LDAP);
	// the log order below proves it was still running when SIGTERM came.
	waitAccepted(t, sock)
	time.Sleep(200 * time.Millisecond)
	select {
	case a := <-answer:
		t.Fatalf("answered %q while slapd is paused, before SIGTERM", a)
	default:
	}
	d.signal(syscall.SIGTERM)
	// New clients are turned away at once (the socket goes), while the
	// request already inside keeps waiting for its answer.
	deadline := time.Now().Add(2 * time.Second)
	for _, err := os.Stat(sock); err == nil; _, err = os.Stat(sock) {
		if time.Now().After(deadline) {
			t.Fatal("socket still there 2s after SIGTERM")
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case a := <-answer:
		t.Fatalf("in-flight request answered %q before its LDAP timeout: not a drain", a)
	default:
	}

	select {
	case a := <-answer:
		if !isNO(a) {
			t.Errorf("in-flight request got %q, want a NO answer", a)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("in-flight request not answered within 15s of SIGTERM")
	}
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		t.Fatal("daemon still running 15s after SIGTERM")
	}
	if d.err != nil {
		t.Errorf("daemon exit: %v, want status 0", d.err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket %s still there after exit (stat: %v)", sock, err)
	}
	log := d.stderr.String()
	shut := strings.Index(log, `msg="shutting down"`)
	lines := d.decisionLines()
	last := lines[len(lines)-1]
	if shut < 0 || strings.Index(log, last) < shut {
		t.Errorf("the in-flight decision was not logged after \"shutting down\":\n%s", log)
	}
	if o := logField(last, "outcome"); o != "tempfail" {
		t.Errorf("in-flight request outcome %q, want tempfail", o)
	}
	if !strings.Contains(log, `msg="mailauthd stopped"`) {
		t.Errorf("no \"mailauthd stopped\" line:\n%s", log)
	}
}

// TestServeCheck: --check loads and validates without serving; a bad key
// gets one line naming the key and its line.
func TestServeCheck(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	sock := filepath.Join(dir, "mux")
	// No slapd: --check must not need the network.
	good := writeConfig(t, dir, settings{Socket: sock, LDAPURL: "ldap://127.0.0.1:9", Realms: []string{"example.org"}})
	out, err := exec.Command(mailauthdBin, "serve", "--check", "--config", good).CombinedOutput()
	if err != nil {
		t.Fatalf("--check on a good config: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "mailauthd: configuration ok" {
		t.Errorf("--check output %q", got)
	}
	// A realm-blind filter with no served realm is valid but named, with
	// what to set.
	blind := writeConfig(t, shortDir(t), settings{Socket: sock, LDAPURL: "ldap://127.0.0.1:9"})
	out, err = exec.Command(mailauthdBin, "serve", "--check", "--config", blind).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "access.realms: [example.org]") || !strings.Contains(string(out), "configuration ok") {
		t.Errorf("--check on a realm-blind config: %v\n%s", err, out)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("--check created the socket (stat: %v)", err)
	}

	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(data), "\n")
	var badLine int
	for i, l := range lines {
		if strings.HasPrefix(l, "  hostnames:") {
			lines = append(lines[:i+1], append([]string{"  host_atribute: host"}, lines[i+1:]...)...)
			badLine = i + 2
			break
		}
	}
	if badLine == 0 {
		t.Fatal("no hostnames line in the generated config")
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(mailauthdBin, "serve", "--check", "--config", bad)
	out, err = cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("--check on a bad config: %v, want exit status 1\n%s", err, out)
	}
	msg := strings.TrimRight(string(out), "\n")
	if strings.Count(msg, "\n") != 0 {
		t.Errorf("want one line, got:\n%s", msg)
	}
	for _, want := range []string{fmt.Sprintf("line %d", badLine), `"host_atribute"`, bad} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not name %s", msg, want)
		}
	}
}

// TestSaslauthdConf: a migrating admin's Cyrus saslauthd.conf supplies the
// LDAP settings; the YAML file keeps only sockets and access rules.
func TestSaslauthdConf(t *testing.T) {
	t.Parallel()
	peertest.NeedFile(t, "/usr/sbin/testsaslauthd", "testsaslauthd")
	slapd := slapdtest.Start(t)
	dir := shortDir(t)
	sock := filepath.Join(dir, "mux")
	cfg := writeConfig(t, dir, settings{Socket: sock}) // no ldap: section
	conf := filepath.Join(dir, "saslauthd.conf")
	body := fmt.Sprintf("# as Cyrus saslauthd -a ldap reads it\nldap_servers: %s\nldap_bind_dn: %s\nldap_bind_pw: %s\nldap_search_base: %s\nldap_filter: uid=%%u\nldap_timeout: 2\n",
		slapd.URL(), slapdtest.ServiceDN, slapdtest.ServicePassword, slapdtest.PeopleDN)
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, sock, "--config", cfg, "--saslauthd-conf", conf)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		req  saslReq
		want string
	}{
		{saslReq{"alice", "alicepw", "smtp", ""}, okAnswer},
		{saslReq{"alice", "Wrong-Conf-5", "smtp", ""}, "NO"},
		{saslReq{"negated", "negatedpw", "smtp", ""}, "NO"}, // access rules from the YAML still apply
	} {
		got := d.testsaslauthd(ctx, tc.req)
		if tc.want == "NO" && !isNO(got) || tc.want != "NO" && got != tc.want {
			t.Errorf("%s/%s: %q, want %s", tc.req.user, tc.req.pass, got, tc.want)
		}
	}
}

// TestLDAPDown: with slapd dead or frozen, answers are NO within a bound
// (ldap timeout 1s); after slapd comes back, logins work again.
func TestLDAPDown(t *testing.T) {
	t.Parallel()
	peertest.NeedFile(t, "/usr/sbin/testsaslauthd", "testsaslauthd")
	slapd := slapdtest.Start(t)
	dir := shortDir(t)
	sock := filepath.Join(dir, "mux")
	d := startDaemon(t, sock, "--config", writeConfig(t, dir, settings{Socket: sock, LDAPURL: slapd.URL()}))
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	alice := saslReq{"alice", "alicepw", "smtp", ""}
	if got := d.testsaslauthd(ctx, alice); got != okAnswer {
		t.Fatalf("alice: %q, want OK", got)
	}

	refusedQuickly := func(state string) {
		t.Helper()
		start := time.Now()
		got, line := d.ask(ctx, alice)
		took := time.Since(start)
		if !isNO(got) {
			t.Errorf("LDAP %s: %q, want NO", state, got)
		}
		// Generous: the configured bound is 1s; this only catches a hang.
		if took > 5*time.Second {
			t.Errorf("LDAP %s: answer took %s, want < 5s", state, took)
		}
		if o := logField(line, "outcome"); o != "tempfail" {
			t.Errorf("LDAP %s: outcome %q, want tempfail", state, o)
		}
		t.Logf("LDAP %s: %q after %s", state, got, took.Round(time.Millisecond))
	}

	if err := slapd.Pause(); err != nil {
		t.Fatal(err)
	}
	refusedQuickly("frozen")
	if err := slapd.Resume(); err != nil {
		t.Fatal(err)
	}

	slapd.Stop()
	refusedQuickly("stopped")

	if err := slapd.Restart(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for {
		got := d.testsaslauthd(ctx, alice)
		if got == okAnswer {
			t.Logf("recovered %s after slapd restart", time.Since(start).Round(time.Millisecond))
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("still %q 20s after slapd restart", got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestExplain: "mailauthd test --explain" evaluates the configuration
// directly and shows the host rule that decided.
func TestExplain(t *testing.T) {
	t.Parallel()
	slapd := slapdtest.Start(t)
	dir := shortDir(t)
	cfg := writeConfig(t, dir, settings{Socket: filepath.Join(dir, "mux"), LDAPURL: slapd.URL()})
	run := func(user, pass string) (string, int) {
		t.Helper()
		cmd := exec.Command(mailauthdBin, "test", "--explain", "--config", cfg, "-u", user, "-p", pass)
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return string(out), cmd.ProcessState.ExitCode()
	}

	out, code := run("negated", "negatedpw")
	if code != 1 {
		t.Errorf("negated: exit %d, want 1\n%s", code, out)
	}
	var hostStep string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "host rule:") && strings.Contains(l, "denied by !mail.example.org") {
			hostStep = l
		}
	}
	if hostStep == "" {
		t.Errorf("negated: no \"host rule:\" step denying by !mail.example.org:\n%s", out)
	}
	if !strings.Contains(out, "\nNO ") {
		t.Errorf("negated: no final NO line:\n%s", out)
	}

	out, code = run("alice", "alicepw")
	if code != 0 || !strings.HasSuffix(out, "\nOK\n") {
		t.Errorf("alice: exit %d, want 0 and a final OK:\n%s", code, out)
	}
	if strings.Contains(out, "alicepw") || strings.Contains(out, slapdtest.ServicePassword) {
		t.Errorf("explain output shows a password:\n%s", out)
	}
}

// TestSocketOwnership: a second daemon on a live socket refuses to start and
// leaves the first one serving; after a crash (SIGKILL leaves the socket
// file behind) a new daemon takes the stale socket over.
func TestSocketOwnership(t *testing.T) {
	t.Parallel()
	dir := shortDir(t)
	sock := filepath.Join(dir, "mux")
	// Nothing listens on port 9: every answer is a tempfail NO, which is
	// enough to prove which daemon owns the socket.
	cfg := writeConfig(t, dir, settings{Socket: sock, LDAPURL: "ldap://127.0.0.1:9"})
	first := startDaemon(t, sock, "--config", cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	out, err := exec.CommandContext(ctx, mailauthdBin, "serve", "--config", cfg).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("second daemon on a live socket: %v, want exit status 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "in use") {
		t.Errorf("second daemon's error does not say the socket is in use:\n%s", out)
	}
	if got, code := first.mailauthdTest(ctx, "alice", "alicepw", "imap"); code != 1 || !strings.HasPrefix(got, "NO temporary failure") {
		t.Errorf("first daemon after the second one failed: exit %d %q, want NO temporary failure", code, got)
	}

	first.cmd.Process.Kill()
	<-first.done
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("SIGKILL should leave the socket file behind: %v", err)
	}
	second := startDaemon(t, sock, "--config", cfg)
	if got, code := second.mailauthdTest(ctx, "alice", "alicepw", "imap"); code != 1 || !strings.HasPrefix(got, "NO temporary failure") {
		t.Errorf("daemon on a stale socket: exit %d %q, want NO temporary failure", code, got)
	}
}

// waitAccepted waits until a connection to the Unix socket at path has been
// accepted: /proc/net/unix lists accepted sockets (state 03) under the name
// the listener was bound to. saslauthd.Listen binds a temporary name in the
// same directory and renames it, so match on the directory, which each test
// owns alone.
func waitAccepted(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		data, err := os.ReadFile("/proc/net/unix")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(data), "\n") {
			f := strings.Fields(l)
			if len(f) == 8 && f[5] == "03" && strings.HasPrefix(f[7], filepath.Dir(path)+"/") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no accepted connection on %s", path)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
