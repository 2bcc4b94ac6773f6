package dovecot

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	dt "github.com/mailauthd/mailauthd/internal/dovecottest"
)

// utf8Password is uid=utf8's password in testdata/dovecot/users.ldif.
const utf8Password = "Grüße aus Köln 🌧 mit Leerzeichen"

// kind is the doveadm command a case runs.
type kind int

const (
	authTest   kind = iota // doveadm auth test: a plaintext login (auth_password_verify)
	authLookup             // doveadm auth lookup: passdb lookup
	userLookup             // doveadm user: userdb lookup
)

func (k kind) String() string {
	return [...]string{"auth test", "auth lookup", "user"}[k]
}

// dcase is one row of the table every door must answer alike.
type dcase struct {
	name     string
	kind     kind
	user     string
	password string
	service  string // auth test: -x service=
	want     dt.Result
	// fields that must be among those doveadm printed (value "" for a
	// field printed bare).
	fields map[string]string
	// absent fields must not be there.
	absent []string
}

var cases = []dcase{
	{"accepted, proxy host from LDAP", authTest, "alice", "alicepw", "imap", dt.OK,
		map[string]string{"user": "alice", "host": "imap1.example.org"}, nil},
	{"wrong password", authTest, "alice", "Wr0ng-alice-pw", "imap", dt.Failed, nil, nil},
	{"refused by the host rule", authTest, "otherhost", "otherhostpw", "imap", dt.Failed, nil, nil},
	{"unknown user", authTest, "nobody", "N0body-pw", "imap", dt.Failed, nil, nil},
	{"refused by the service rule", authTest, "smtponly", "smtponlypw", "imap", dt.Failed, nil, nil},
	{"allowed by the service rule", authTest, "smtponly", "smtponlypw", "smtp", dt.OK,
		map[string]string{"user": "smtponly"}, nil},
	{"UTF-8 password with spaces", authTest, "utf8", utf8Password, "imap", dt.OK,
		map[string]string{"user": "utf8"}, nil},
	{"UTF-8 password, one space less", authTest, "utf8", strings.Replace(utf8Password, " ", "", 1), "imap", dt.Failed, nil, nil},
	{"user@domain", authTest, "alice@example.org", "alicepw", "imap", dt.OK,
		map[string]string{"user": "alice@example.org"}, nil},
	{"proxy host from LDAP in the passdb reply", authTest, "proxied", "proxiedpw", "imap", dt.OK,
		map[string]string{"user": "proxied", "host": "192.0.2.25"}, nil},
	{"passdb lookup", authLookup, "proxied", "", "", dt.OK,
		map[string]string{"user": "proxied", "host": "192.0.2.25"}, nil},
	{"passdb lookup, unknown user", authLookup, "nobody", "", "", dt.UserUnknown, nil, nil},
	{"passdb lookup, refused by the host rule", authLookup, "otherhost", "", "", dt.UserUnknown, nil, nil},
	{"userdb", userLookup, "alice", "", "", dt.OK,
		map[string]string{"uid": "2001", "gid": "2000", "home": "/srv/mail/example.org/alice", "mail": "maildir:~/Maildir"},
		[]string{"host", "proxy_maybe", "userdb_home", "userdb_uid"}},
	{"userdb defaults", userLookup, "star@example.org", "", "", dt.OK,
		map[string]string{"uid": "5000", "gid": "5000", "home": "/var/vmail/example.org/star"}, nil},
	{"userdb, unknown user", userLookup, "nobody", "", "", dt.UserUnknown, nil, nil},
	{"userdb, refused by the host rule", userLookup, "otherhost", "", "", dt.UserUnknown, nil, nil},
}

// answer is what doveadm reported for one case.
type answer struct {
	Result dt.Result
	Fields map[string]string
}

func (a answer) String() string {
	keys := make([]string, 0, len(a.Fields))
	for k := range a.Fields {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(a.Result.String())
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%s", k, a.Fields[k])
	}
	return b.String()
}

// clientIP is the -x rip= of a case: one per case, so each decision line
// in the daemon's log can be found by it.
func clientIP(i int) string { return fmt.Sprintf("192.0.2.%d", 10+i) }

func run(t *testing.T, d *dt.Dovecot, i int, c dcase) answer {
	t.Helper()
	var (
		r      dt.Result
		fields map[string]string
		err    error
	)
	switch c.kind {
	case authTest:
		r, fields, err = d.AuthTest(c.user, c.password, map[string]string{"service": c.service, "rip": clientIP(i)})
	case authLookup:
		r, fields, err = d.AuthLookup(c.user)
	case userLookup:
		r, fields, err = d.User(c.user)
	}
	if err != nil {
		t.Fatalf("%s %s: %v", c.kind, c.user, err)
	}
	if c.kind == authTest && r != dt.OK {
		fields = nil // what a failure prints is Dovecot's, not ours
	}
	return answer{r, fields}
}

// check compares an answer with the case's expectation.
func check(t *testing.T, door string, c dcase, got answer, log func() string) {
	t.Helper()
	if got.Result != c.want {
		t.Errorf("%s: %s %s: %s, want %s\n%s", door, c.kind, c.user, got, c.want, log())
		return
	}
	for k, v := range c.fields {
		if gv, ok := got.Fields[k]; !ok || gv != v {
			t.Errorf("%s: %s %s: field %s=%q missing (got %s)", door, c.kind, c.user, k, v, got)
		}
	}
	for _, k := range c.absent {
		if _, ok := got.Fields[k]; ok {
			t.Errorf("%s: %s %s: field %s present (got %s)", door, c.kind, c.user, k, got)
		}
	}
}

// TestLua23 runs the case table through Dovecot 2.3 with the Lua blocks
// and with the checkpassword blocks of docs/dovecot.md, against one
// daemon, and requires the same answers and fields from both; then the
// failures that must be temporary.
func TestLua23(t *testing.T) {
	t.Parallel()
	w := newWorld(t, dt.Version23)
	lua := w.startLua(t)
	cp := w.startCheckpassword(t)
	for i, c := range cases {
		gotLua := run(t, lua, i, c)
		gotCP := run(t, cp, i, c)
		check(t, "lua", c, gotLua, lua.Log)
		check(t, "checkpassword", c, gotCP, cp.Log)
		if gotLua.String() != gotCP.String() {
			t.Errorf("%s %s: Lua and checkpassword differ:\n  lua:           %s\n  checkpassword: %s", c.kind, c.user, gotLua, gotCP)
		}
	}
	checkLogs(t, w, lua)
	checkRestart(t, w, lua)
	checkTempFail(t, w, lua)
}

// TestLua24 runs the same case table through Dovecot 2.4 (no
// checkpassword there).
func TestLua24(t *testing.T) {
	t.Parallel()
	w := newWorld(t, dt.Version24)
	lua := w.startLua(t)
	for i, c := range cases {
		check(t, "lua", c, run(t, lua, i, c), lua.Log)
	}
	checkLogs(t, w, lua)
	checkRestart(t, w, lua)
	checkTempFail(t, w, lua)
}

// checkLogs: with auth_debug on, no password reached Dovecot's log or the
// daemon's, and the daemon's decision lines carry the client's address.
func checkLogs(t *testing.T, w *world, d *dt.Dovecot) {
	t.Helper()
	dovecotLog, daemonLog := d.Log(), w.log.String()
	if !strings.Contains(dovecotLog, "Calling auth_password_verify") {
		t.Errorf("auth_debug is not on: no \"Calling auth_password_verify\" in Dovecot's log")
	}
	for _, c := range cases {
		if c.password == "" {
			continue
		}
		for name, log := range map[string]string{"Dovecot's": dovecotLog, "the daemon's": daemonLog} {
			if strings.Contains(log, c.password) {
				t.Errorf("%s log holds the password of case %q", name, c.name)
			}
		}
	}
	for i, c := range cases {
		if c.kind != authTest {
			continue
		}
		want := fmt.Sprintf("user=%s realm=%s service=%s client=%s", strings.Split(c.user, "@")[0], realmOf(c.user), c.service, clientIP(i))
		if !strings.Contains(daemonLog, want) {
			t.Errorf("daemon log lacks a decision line with %q:\n%s", want, daemonLog)
		}
	}
	// A policy refusal's reason is in Dovecot's log, not only the daemon's.
	if !strings.Contains(dovecotLog, "mailauthd: refused (policy)") {
		t.Errorf("Dovecot's log lacks the policy refusal's reason:\n%s", dovecotLog)
	}
}

func realmOf(user string) string {
	if _, r, ok := strings.Cut(user, "@"); ok {
		return r
	}
	return `""`
}

// checkRestart: a daemon reload and a daemon restart between two logins
// served by the same auth-worker fail no login. The worker's Lua state
// keeps its connection to the daemon: a reload keeps it too; a restart
// closes it, and the next login is asked again on a new connection.
func checkRestart(t *testing.T, w *world, d *dt.Dovecot) {
	t.Helper()
	login := func(what string) {
		t.Helper()
		r, fields, err := d.AuthTest("alice", "alicepw", map[string]string{"service": "imap", "rip": "198.51.100.2"})
		if err != nil || r != dt.OK {
			t.Fatalf("login %s: %s %v, %v\n%s", what, r, fields, err, d.Log())
		}
	}
	before := len(d.Log())
	login("before")
	w.reloadDaemon(t)
	login("after a reload")
	w.stopDaemon()
	w.startDaemon(t)
	login("after a restart")
	login("after a restart, again")
	log := d.Log()[before:]
	// The same worker process ran the four calls.
	var pids []string
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "Calling auth_password_verify") {
			if m := workerPID.FindStringSubmatch(line); m != nil {
				pids = append(pids, m[1]+m[2])
			}
		}
	}
	if len(pids) != 4 || pids[0] != pids[1] || pids[0] != pids[2] || pids[0] != pids[3] {
		t.Fatalf("auth-workers %v ran the 4 logins, want one worker for all (auth_debug lines):\n%s", pids, log)
	}
	// Its kept connection survived the reload and was replaced once,
	// after the restart.
	if n := strings.Count(log, "mailauthd: the kept connection was closed"); n != 1 {
		t.Errorf("%d new connections after a closed kept one, want 1 (the restart):\n%s", n, log)
	}
}

// workerPID finds the auth-worker's process ID in an auth_debug line:
// 2.3 "auth-worker(2247): ...", 2.4 "auth-worker(alice,192.0.2.1)<2026>: ...".
var workerPID = regexp.MustCompile(`auth-worker(?:\((\d+)\)|\([^)]*\)<(\d+)>)`)

// checkTempFail: a stopped daemon and a stopped LDAP server are temporary
// failures, never a wrong password or an unknown user, on every call.
func checkTempFail(t *testing.T, w *world, d *dt.Dovecot) {
	t.Helper()
	probe := func(what string) {
		t.Helper()
		start := time.Now()
		r, fields, err := d.AuthTest("alice", "alicepw", map[string]string{"service": "imap", "rip": "198.51.100.1"})
		if err != nil {
			t.Fatal(err)
		}
		if r != dt.TempFail {
			t.Errorf("%s: auth test %s %v, want tempfail\n%s", what, r, fields, d.Log())
		}
		// The script's timeout is 5 s; a stopped daemon is noticed at
		// connect, at once.
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s: auth test took %s, more than the script's timeout", what, took)
		}
		for _, lookup := range []func(string) (dt.Result, map[string]string, error){d.AuthLookup, d.User} {
			if r, _, err := lookup("alice"); err != nil || r != dt.TempFail {
				t.Errorf("%s: lookup: %s, %v; want tempfail", what, r, err)
			}
		}
	}
	w.stopDaemon()
	probe("daemon stopped")
	if !strings.Contains(d.Log(), "mailauthd: connect "+w.sock.Dovecot) {
		t.Errorf("Dovecot's log does not say the daemon was unreachable:\n%s", d.Log())
	}
	w.startDaemon(t)
	if r, _, err := d.AuthTest("alice", "alicepw", nil); err != nil || r != dt.OK {
		t.Fatalf("daemon restarted: %s, %v; want ok\n%s", r, err, d.Log())
	}
	w.slapd.Stop()
	probe("LDAP stopped")
}
