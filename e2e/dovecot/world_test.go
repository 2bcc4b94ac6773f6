// Package dovecot runs a real Dovecot 2.3 and 2.4 (the host's, or one
// chrooted into the root of the Debian release that ships it: see
// internal/dovecottest) against the real daemon (daemon.New and
// Serve, as "mailauthd serve" does) and a real slapd: the Lua passdb and
// userdb of packaging/dovecot/mailauthd.lua on both versions, and Dovecot
// 2.3's checkpassword driver running the mailauthd binary, all through one
// case table that must give the same answers and fields on every door.
package dovecot

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/daemon"
	"github.com/mailauthd/mailauthd/internal/dovecottest"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// repoRoot is this repository's root, found from this source file.
func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// The paths the documented configuration blocks use; the tests replace
// them with their own.
const (
	docScript = "/usr/share/mailauthd/dovecot/mailauthd.lua"
	docSocket = "/run/mailauthd/control"
	docBinary = "/usr/bin/mailauthd"
	docConfig = "/etc/mailauthd/mailauthd.yaml"
)

// docBlock returns the fenced block that follows the marker
// "<!-- tested: NAME -->" in docs/dovecot.md, so the configuration the
// documentation shows is the one these tests run.
func docBlock(t testing.TB, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(repoRoot(), "docs", "dovecot.md"))
	if err != nil {
		t.Fatal(err)
	}
	marker := "<!-- tested: " + name + " -->"
	_, rest, ok := strings.Cut(string(data), marker)
	if !ok {
		t.Fatalf("docs/dovecot.md has no %q", marker)
	}
	sc := bufio.NewScanner(strings.NewReader(rest))
	var b strings.Builder
	in := false
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "```") {
			if in {
				return b.String()
			}
			in = true
			continue
		}
		if in {
			b.WriteString(line + "\n")
		}
	}
	t.Fatalf("docs/dovecot.md: no fenced block after %q", marker)
	return ""
}

// The mailauthd binary, built once, for the checkpassword driver, in a
// directory the dovecot user can reach.
var binary struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func mailauthdBinary(t testing.TB) string {
	t.Helper()
	binary.once.Do(func() {
		dir, err := os.MkdirTemp("", "mailauthd-bin-")
		if err != nil {
			binary.err = err
			return
		}
		binary.dir = dir
		if err := os.Chmod(dir, 0o755); err != nil {
			binary.err = err
			return
		}
		binary.path = filepath.Join(dir, "mailauthd")
		cmd := exec.Command("go", "build", "-o", binary.path, "./cmd/mailauthd")
		cmd.Dir = repoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			binary.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binary.err != nil {
		t.Fatal(binary.err)
	}
	return binary.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binary.dir != "" {
		os.RemoveAll(binary.dir)
	}
	os.Exit(code)
}

// lockedBuffer collects the daemon's log while tests read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// daemonConfig is the daemon's configuration: the control socket as the
// documentation recommends it, the test slapd, the host and a service rule,
// and the Dovecot field mapping the checkpassword tests use.
const daemonConfig = `listen:
  saslauthd: []
  control:
    path: %[1]s
    mode: "0660"
    group: %[4]s
ldap:
  urls: [%[2]s]
  base: ou=people,dc=example,dc=org
  bind_dn: cn=mailauthd,ou=services,dc=example,dc=org
  bind_password_file: %[3]s
  timeout: 2s
access:
  hostnames: [mail.example.org, mail]
  # A single-domain site: the filter is realm-blind, so the domain is listed.
  realms: [example.org]
  # The service rule for entries that carry authorizedService (smtponly),
  # as a filter: access.service_attribute would refuse every entry without
  # the attribute, and most fixtures have none.
  filters: ["(|(!(authorizedService=*))(authorizedService=%%s))"]
checkpassword:
  timeout: 4s
log:
  level: debug
dovecot:
  fields:
    userdb_home: homeDirectory
    userdb_uid: uidNumber
    userdb_gid: gidNumber
    host: mailHost
  defaults:
    userdb_home: /var/vmail/%%d/%%n
    userdb_uid: "5000"
    userdb_gid: "5000"
    userdb_mail: maildir:~/Maildir
    proxy_maybe: "y"
`

// world is one Dovecot version's peers: a slapd, the daemon serving its
// control socket where that Dovecot can reach it, and the mailauthd
// configuration file (which checkpassword reads too).
type world struct {
	v       dovecottest.Version
	dir     dovecottest.Dir
	sock    dovecottest.Path
	cfgPath string
	// cfgView is the configuration checkpassword reads, with the paths as
	// Dovecot sees them: cfgPath itself, unless Dovecot runs chrooted.
	cfgView string
	cfg     *config.File
	slapd   *slapdtest.Server
	log     *lockedBuffer

	mu     sync.Mutex
	daemon *daemon.Running
}

func newWorld(t *testing.T, v dovecottest.Version) *world {
	t.Helper()
	dir := dovecottest.TempDir(t, v) // skips, or fails under CI, without this Dovecot
	s := slapdtest.Start(t, slapdtest.WithLDIF(
		filepath.Join(slapdtest.TestdataDir(), "users.ldif"),
		filepath.Join(slapdtest.TestdataDir(), "..", "dovecot", "users.ldif")))
	w := &world{v: v, dir: dir, sock: dir.Path("control"), slapd: s, log: &lockedBuffer{}}
	pw, err := dir.WriteFile("bindpw", []byte(slapdtest.ServicePassword+"\n"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// The socket's group is the dovecot group of the system Dovecot runs
	// on: a chrooted one's has another number than the host's.
	group := "dovecot"
	if dir.Root() != "" {
		_, gid, err := dir.LookupUser("dovecot")
		if err != nil {
			t.Fatal(err)
		}
		group = fmt.Sprint(gid)
	}
	conf, err := dir.WriteFile("mailauthd.yaml", fmt.Appendf(nil, daemonConfig, w.sock.Host, s.URL(), pw.Host, group), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w.cfgPath, w.cfgView = conf.Host, conf.Dovecot
	if dir.Root() != "" {
		view, err := dir.WriteFile("mailauthd-view.yaml", fmt.Appendf(nil, daemonConfig, w.sock.Dovecot, s.URL(), pw.Dovecot, group), 0o644)
		if err != nil {
			t.Fatal(err)
		}
		w.cfgView = view.Dovecot
	}
	if w.cfg, err = config.Load(w.cfgPath, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.stopDaemon)
	w.startDaemon(t)
	return w
}

// startDaemon builds and serves the daemon as "mailauthd serve" does.
func (w *world) startDaemon(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.daemon != nil {
		return
	}
	log := slog.New(slog.NewTextHandler(w.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	d, err := daemon.Start(w.cfg, daemon.Options{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	w.daemon = d
}

// reloadDaemon re-reads the configuration file, as SIGHUP does.
func (w *world) reloadDaemon(t testing.TB) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.daemon.Reload(func() (*config.File, error) { return config.Load(w.cfgPath, "") }, 5*time.Second); err != nil {
		t.Fatalf("reload: %v", err)
	}
}

// stopDaemon shuts the daemon down; its socket file goes with it.
func (w *world) stopDaemon() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.daemon == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	w.daemon.Stop(ctx)
	w.daemon = nil
}

// startLua runs Dovecot v with the documented Lua blocks, pointed at this
// world's daemon, with auth_debug on.
func (w *world) startLua(t *testing.T) *dovecottest.Dovecot {
	t.Helper()
	script, err := w.dir.CopyFile(filepath.Join(repoRoot(), "packaging", "dovecot", "mailauthd.lua"), "mailauthd.lua")
	if err != nil {
		t.Fatal(err)
	}
	var blocks, extra string
	if w.v == dovecottest.Version23 {
		// 2.3's args take no parameters of our own: the environment
		// carries the socket path to the script.
		blocks = docBlock(t, "lua-2.3")
		extra = "import_environment = $import_environment MAILAUTHD_SOCKET=" + w.sock.Dovecot
	} else {
		blocks = strings.ReplaceAll(docBlock(t, "lua-2.4"), docSocket, w.sock.Dovecot)
	}
	blocks = strings.ReplaceAll(blocks, docScript, script.Dovecot)
	// One auth-worker process: checkRestart follows one worker's kept
	// connection to the daemon across a reload and a restart.
	extra += "\nservice auth-worker {\n  process_limit = 1\n}"
	return dovecottest.Start(t, w.v, dovecottest.Config{
		PassdbUserdb: stripMechanisms(blocks),
		Extra:        extra + "\nauth_debug_passwords = no",
		AuthDebug:    true,
	})
}

// startCheckpassword runs Dovecot 2.3 with the documented checkpassword
// blocks (passdb and userdb) running the built binary, copied where that
// Dovecot can run it.
func (w *world) startCheckpassword(t *testing.T) *dovecottest.Dovecot {
	t.Helper()
	bin, err := w.dir.CopyProgram(mailauthdBinary(t), "mailauthd", "version")
	if err != nil {
		t.Fatal(err)
	}
	blocks := docBlock(t, "checkpassword-2.3")
	blocks = strings.ReplaceAll(blocks, docBinary, bin.Dovecot)
	blocks = strings.ReplaceAll(blocks, docConfig, w.cfgView)
	return dovecottest.Start(t, w.v, dovecottest.Config{PassdbUserdb: stripMechanisms(blocks)})
}

// stripMechanisms drops auth_mechanisms from a documented block: the
// harness sets the same value itself.
func stripMechanisms(s string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "auth_mechanisms") {
			continue
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

// TestReadmeShowsTheTestedBlocks: the README's Dovecot blocks are the
// tested ones of docs/dovecot.md, word for word (indented four spaces).
func TestReadmeShowsTheTestedBlocks(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(repoRoot(), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"lua-2.3", "lua-2.4"} {
		var indented strings.Builder
		for _, line := range strings.Split(strings.TrimRight(docBlock(t, name), "\n"), "\n") {
			indented.WriteString("    " + line + "\n")
		}
		if !strings.Contains(string(readme), indented.String()) {
			t.Errorf("README.md lacks docs/dovecot.md's %s block:\n%s", name, indented.String())
		}
	}
}
