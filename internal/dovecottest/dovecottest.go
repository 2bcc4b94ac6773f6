// Package dovecottest runs a real Dovecot for integration tests, in two
// versions, 2.3 and 2.4, on either Debian release: the host's own Dovecot
// when `dovecot --version` says it is the version asked for, otherwise the
// one of the Debian release that ships it, chrooted into a root that
// scripts/debian-root.sh builds (the harness runs the script the first time
// a test binary needs it): Debian 13's (trixie) for 2.4 on a Debian 12
// host, Debian 12's (bookworm) for 2.3 on a Debian 13 host.
//
// Each instance has a self-contained configuration: no protocols, base_dir,
// state and log in its own directory, no users but the packages' dovecot and
// dovenull, no failure delay and no auth cache. The harness writes the
// version's boilerplate (2.4 needs dovecot_config_version first); the test
// supplies the passdb and userdb blocks in the version's own syntax (see
// FINDINGS.md for both).
//
// Files Dovecot must reach (a Lua script, a program it runs, a daemon's
// socket) must lie inside the tree Dovecot sees, which for a chrooted one is
// its root: make them with NewDir or TempDir, whose Path gives both the host
// path (for the test) and the path as Dovecot sees it (for the
// configuration); Dir.System and Dir.Command reach the rest of that system
// (its /etc/pam.d, its programs).
//
// Tests call Start(t, ...), or share one instance per test binary with
// Shared; programs call Launch and Stop.
package dovecottest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mailauthd/mailauthd/internal/mountns"
)

// Version is a Dovecot release line.
type Version int

const (
	Version23 Version = 23 // Debian 12 (bookworm) ships 2.3.19
	Version24 Version = 24 // Debian 13 (trixie) ships 2.4.1
)

func (v Version) String() string {
	switch v {
	case Version23:
		return "2.3"
	case Version24:
		return "2.4"
	}
	return fmt.Sprintf("Version(%d)", int(v))
}

// Config is what a test varies.
type Config struct {
	// PassdbUserdb is the passdb and userdb blocks, in the version's syntax
	// (2.3: passdb { driver = lua; args = file=... }; 2.4: passdb NAME {
	// driver = lua; lua_file = ... }). Required.
	PassdbUserdb string
	// Extra is appended verbatim after everything else (service blocks,
	// other auth_* settings, which override the harness's).
	Extra string
	// AuthDebug turns on auth_debug: every passdb/userdb step in Log.
	AuthDebug bool
	// Dir is where dovecot.conf, base_dir (run/), state/ and dovecot.log go.
	// The zero Dir means a new one, removed by Stop; a Dir from NewDir or
	// TempDir stays its owner's to remove.
	Dir Dir
}

// Dovecot is one running Dovecot master.
type Dovecot struct {
	Version Version
	Dir     Dir  // holds dovecot.conf, run/ (base_dir), state/, dovecot.log
	Conf    Path // dovecot.conf

	inst    install
	ownDir  bool
	cmd     *exec.Cmd
	done    chan struct{} // closed when the master has exited
	stopped sync.Once
}

// Result is what doveadm reported.
type Result int

const (
	// Failed is the zero Result, so a forgotten assignment fails closed:
	// authentication failed (wrong password, or a user doveadm auth test
	// cannot tell apart from one).
	Failed Result = iota
	OK
	TempFail    // temporary or internal failure
	UserUnknown // lookups: the user does not exist
)

func (r Result) String() string {
	switch r {
	case Failed:
		return "failed"
	case OK:
		return "ok"
	case TempFail:
		return "tempfail"
	case UserUnknown:
		return "user unknown"
	}
	return fmt.Sprintf("Result(%d)", int(r))
}

// doveadm's exit codes (sysexits.h), as Dovecot uses them.
const (
	exitNoUser   = 67 // EX_NOUSER: lookup found no such user
	exitTempFail = 75 // EX_TEMPFAIL: 2.4's auth test on an internal failure; lookups
	exitNoPerm   = 77 // EX_NOPERM: auth test failed (2.3: also temporary, with code=temp_fail)
)

// How long a doveadm call and the master's start and stop may take.
const (
	doveadmTimeout = 30 * time.Second
	startTimeout   = 15 * time.Second
	stopTimeout    = 10 * time.Second
)

// Launch writes the configuration and starts Dovecot's master in the
// foreground, returning once its auth listeners exist. The caller must call
// Stop. When this host cannot run v, the error is ErrUnavailable (errors.Is).
func Launch(v Version, cfg Config) (*Dovecot, error) {
	if strings.TrimSpace(cfg.PassdbUserdb) == "" {
		return nil, errors.New("dovecottest: Config.PassdbUserdb is empty")
	}
	inst, err := locate(v)
	if err != nil {
		return nil, err
	}
	d := &Dovecot{Version: v, Dir: cfg.Dir, inst: inst}
	if d.Dir.Host != "" && d.Dir.root != inst.root {
		return nil, fmt.Errorf("dovecottest: Config.Dir %s is not inside the tree Dovecot %s sees", d.Dir.Host, v)
	}
	if d.Dir.Host == "" {
		if d.Dir, err = newDir(inst); err != nil {
			return nil, err
		}
		d.ownDir = true
	}
	if err := d.start(cfg); err != nil {
		d.Stop()
		return nil, err
	}
	return d, nil
}

func (d *Dovecot) start(cfg Config) error {
	for _, sub := range []string{"run", "state"} {
		if err := os.MkdirAll(d.Dir.Path(sub).Host, 0o755); err != nil {
			return err
		}
	}
	d.Conf = d.Dir.Path("dovecot.conf")
	if err := os.WriteFile(d.Conf.Host, []byte(configText(d.Version, d.Dir.Dovecot, cfg)), 0o644); err != nil {
		return err
	}
	// -F keeps the master attached, so its end is known, and it dies with
	// the test binary (Pdeathsig) instead of outliving it.
	startLog, err := os.Create(d.Dir.Path("start.log").Host)
	if err != nil {
		return err
	}
	defer startLog.Close()
	var cmd *exec.Cmd
	if d.inst.root == "" {
		cmd = exec.Command(d.inst.dovecot, "-F", "-c", d.Conf.Dovecot)
	} else {
		// chroot ROOT dovecot, with a /proc mounted in a mount namespace of
		// its own: the mount disappears with the last Dovecot process,
		// however the test ends.
		propagation, err := mountns.Propagation()
		if err != nil {
			return err
		}
		cmd = exec.Command("unshare", "--mount", "--propagation", propagation, "/bin/sh", "-c",
			`mount -t proc -o nosuid,nodev,noexec proc "$1/proc" && exec chroot "$1" "$2" -F -c "$3"`,
			"sh", d.inst.root, d.inst.dovecot, d.Conf.Dovecot)
	}
	// Startup errors go to stderr before the log process runs; the
	// services inherit it too: a file, not a pipe, so nothing waits on it.
	cmd.Stdout, cmd.Stderr = startLog, startLog
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dovecottest: start dovecot %s: %w", d.Version, err)
	}
	d.cmd = cmd
	d.done = make(chan struct{})
	go func() { cmd.Wait(); close(d.done) }()

	// The master creates every listener before it starts a service; the
	// auth process itself starts when doveadm first connects.
	deadline := time.Now().Add(startTimeout)
	for {
		select {
		case <-d.done:
			return fmt.Errorf("dovecottest: dovecot %s exited at start (%s)\n%s\n%s",
				d.Version, cmd.ProcessState, d.startLog(), d.Log())
		default:
		}
		if fileExists(d.Dir.Path("run", "auth-client").Host) && fileExists(d.Dir.Path("run", "auth-userdb").Host) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dovecottest: dovecot %s: no auth listeners after %s\n%s\n%s",
				d.Version, startTimeout, d.startLog(), d.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop ends the master and every process it started, and removes the
// directory if Launch made it. Safe to call more than once.
func (d *Dovecot) Stop() {
	d.stopped.Do(func() {
		if d.cmd != nil {
			pgid := d.cmd.Process.Pid
			d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(stopTimeout):
				syscall.Kill(-pgid, syscall.SIGKILL)
				<-d.done
			}
			// The services notice the master's end by themselves; wait
			// for the last one, then make sure.
			for i := 0; i < 100 && groupAlive(pgid); i++ {
				time.Sleep(20 * time.Millisecond)
			}
			if groupAlive(pgid) {
				syscall.Kill(-pgid, syscall.SIGKILL)
			}
		}
		if d.ownDir {
			d.Dir.Remove()
		}
	})
}

// groupAlive reports whether a process of group pgid still runs. Not
// kill(-pgid, 0): that also counts the zombies the master leaves to init,
// which may be slow to reap them.
func groupAlive(pgid int) bool {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces and parens.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		fs := strings.Fields(string(b[i+1:]))
		if len(fs) >= 3 && fs[2] == strconv.Itoa(pgid) && fs[0] != "Z" && fs[0] != "X" {
			return true
		}
	}
	return false
}

// PGID is the process group of the master and every process it started
// (for measuring their CPU time).
func (d *Dovecot) PGID() int { return d.cmd.Process.Pid }

// Log is Dovecot's log file (log_path) so far.
func (d *Dovecot) Log() string {
	b, _ := os.ReadFile(d.Dir.Path("dovecot.log").Host)
	return string(b)
}

func (d *Dovecot) startLog() string {
	b, _ := os.ReadFile(d.Dir.Path("start.log").Host)
	return string(b)
}

// Doveadm runs doveadm -c CONF args... (chrooted like the master) and
// returns its exit code and output. err is only for doveadm not running.
func (d *Dovecot) Doveadm(args ...string) (exit int, stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), doveadmTimeout)
	defer cancel()
	argv := append([]string{d.inst.doveadm, "-c", d.Conf.Dovecot}, args...)
	var cmd *exec.Cmd
	if d.inst.root == "" {
		cmd = exec.CommandContext(ctx, argv[0], argv[1:]...)
	} else {
		cmd = exec.CommandContext(ctx, "chroot", append([]string{d.inst.root}, argv...)...)
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) && ctx.Err() == nil {
		return ee.ExitCode(), out.String(), errOut.String(), nil
	}
	if err != nil {
		return -1, out.String(), errOut.String(), fmt.Errorf("dovecottest: doveadm %s: %w\n%s", strings.Join(args, " "), err, errOut.String())
	}
	return 0, out.String(), errOut.String(), nil
}

// AuthTest runs doveadm auth test: a plaintext login through the passdbs,
// as a login process does. info is passed as -x key=value (service, rip,
// ...; an empty value sends the bare key). The harness always adds
// no-penalty, so failures do not slow later logins down (Dovecot's per-IP
// auth penalty reaches 15 s). fields are the extra fields doveadm printed
// (user=, host=, ...; a field printed without "=" maps to "").
func (d *Dovecot) AuthTest(user, password string, info map[string]string) (Result, map[string]string, error) {
	args := []string{"auth", "test", "-x", "no-penalty"}
	keys := make([]string, 0, len(info))
	for k := range info {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if info[k] == "" {
			args = append(args, "-x", k)
		} else {
			args = append(args, "-x", k+"="+info[k])
		}
	}
	args = append(args, user, password)
	exit, out, errOut, err := d.Doveadm(args...)
	if err != nil {
		return Failed, nil, err
	}
	fields := parseAuthTest(out)
	switch {
	case exit == 0:
		return OK, fields, nil
	case exit == exitNoPerm && fields["code"] == "temp_fail":
		return TempFail, fields, nil
	case exit == exitNoPerm:
		return Failed, fields, nil
	case exit == exitTempFail:
		return TempFail, fields, nil
	}
	return Failed, fields, d.unexpected("auth test "+user, exit, out, errOut)
}

// AuthLookup runs doveadm auth lookup: the passdb's fields for user,
// without a password.
func (d *Dovecot) AuthLookup(user string) (Result, map[string]string, error) {
	exit, out, errOut, err := d.Doveadm("auth", "lookup", user)
	if err != nil {
		return Failed, nil, err
	}
	return d.lookupResult("auth lookup "+user, exit, out, errOut, parseAuthLookup(out))
}

// User runs doveadm user: the userdb's fields for user.
func (d *Dovecot) User(user string) (Result, map[string]string, error) {
	exit, out, errOut, err := d.Doveadm("user", user)
	if err != nil {
		return Failed, nil, err
	}
	return d.lookupResult("user "+user, exit, out, errOut, parseUser(out))
}

func (d *Dovecot) lookupResult(what string, exit int, out, errOut string, fields map[string]string) (Result, map[string]string, error) {
	switch exit {
	case 0:
		return OK, fields, nil
	case exitNoUser:
		return UserUnknown, fields, nil
	case exitTempFail:
		return TempFail, fields, nil
	}
	return Failed, fields, d.unexpected(what, exit, out, errOut)
}

func (d *Dovecot) unexpected(what string, exit int, out, errOut string) error {
	return fmt.Errorf("dovecottest: doveadm %s on Dovecot %s: unexpected exit %d\n%s%s", what, d.Version, exit, out, errOut)
}

// parseAuthTest reads doveadm auth test's "extra fields:" section:
//
//	passdb: alice auth succeeded
//	extra fields:
//	  user=alice
//	  proxy
func parseAuthTest(out string) map[string]string {
	fields := map[string]string{}
	in := false
	for _, line := range strings.Split(out, "\n") {
		if line == "extra fields:" {
			in = true
			continue
		}
		if !in || !strings.HasPrefix(line, "  ") {
			in = false
			continue
		}
		k, v, _ := strings.Cut(strings.TrimPrefix(line, "  "), "=")
		fields[k] = v
	}
	return fields
}

// parseAuthLookup reads doveadm auth lookup's "  key       : value" lines.
func parseAuthLookup(out string) map[string]string {
	fields := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "  ") {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields[strings.TrimSpace(k)] = strings.TrimPrefix(v, " ")
	}
	return fields
}

// parseUser reads doveadm user's tab-separated table after its
// "field\tvalue" header.
func parseUser(out string) map[string]string {
	fields := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, "\t")
		if !ok || (k == "field" && v == "value") {
			continue
		}
		fields[k] = v
	}
	return fields
}

// configText is the harness's boilerplate for v, then the test's blocks.
func configText(v Version, dir string, cfg Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# written by internal/dovecottest for Dovecot %s\n", v)
	if v == Version24 {
		// 2.4 refuses a configuration that does not start with these.
		b.WriteString("dovecot_config_version = 2.4.0\ndovecot_storage_version = 2.4.0\n")
	}
	internalDelay := ""
	if v == Version24 {
		// New in 2.4, default 2s: every internal failure waits for it.
		internalDelay = "auth_internal_failure_delay = 0\n"
	}
	debug := "no"
	if cfg.AuthDebug {
		debug = "yes"
	}
	fmt.Fprintf(&b, `protocols =
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
ssl = no
auth_mechanisms = plain login
auth_verbose = yes
auth_debug = %[2]s
# Tests fail logins on purpose: no delay, and no cache hiding a changed answer.
auth_failure_delay = 0
auth_cache_size = 0
%[3]s
# passdb and userdb (from the test)
%[4]s
`, dir, debug, internalDelay, strings.TrimSpace(cfg.PassdbUserdb))
	if cfg.Extra != "" {
		fmt.Fprintf(&b, "\n# extra (from the test)\n%s\n", strings.TrimSpace(cfg.Extra))
	}
	return b.String()
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Path is one file as the test sees it (Host) and as Dovecot sees it
// (Dovecot): for a chrooted Dovecot the second is relative to its root.
type Path struct {
	Host    string
	Dovecot string
}

// Dir is a directory Dovecot can reach (world-traversable, inside the tree
// Dovecot sees). Put Lua scripts and daemon sockets here.
type Dir struct {
	Host    string
	Dovecot string
	root    string // host path of Dovecot's "/"; "" for the host's
}

// Path is a file or directory below d.
func (d Dir) Path(elem ...string) Path {
	rel := filepath.Join(elem...)
	return Path{Host: filepath.Join(d.Host, rel), Dovecot: filepath.Join(d.Dovecot, rel)}
}

// WriteFile writes data to name below d (readable by Dovecot's users when
// perm allows) and returns its Path.
func (d Dir) WriteFile(name string, data []byte, perm os.FileMode) (Path, error) {
	p := d.Path(name)
	if err := os.MkdirAll(filepath.Dir(p.Host), 0o755); err != nil {
		return Path{}, err
	}
	if err := os.WriteFile(p.Host, data, perm); err != nil {
		return Path{}, err
	}
	return p, os.Chmod(p.Host, perm) // not narrowed by the umask
}

// CopyFile copies the host file src to name below d, mode 0644.
func (d Dir) CopyFile(src, name string) (Path, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return Path{}, err
	}
	return d.WriteFile(name, data, 0o644)
}

// LookupUser finds a user in the passwd file of the system Dovecot runs on
// (its root's when chrooted: the dovecot user there has other ids than the
// host's), for a socket that must be owned by or open to it.
func (d Dir) LookupUser(name string) (uid, gid int, err error) {
	return lookupUser(filepath.Join(d.root, "/etc/passwd"), name)
}

// Root is the host path of the tree Dovecot sees as "/": its Debian root
// when it runs chrooted, "" when it is the host's own.
func (d Dir) Root() string { return d.root }

// System is the host path of an absolute path of the system Dovecot runs on
// (its /etc/pam.d, /usr/lib/dovecot/imap): below Root, or p itself.
func (d Dir) System(p string) string { return filepath.Join(d.root, p) }

// Command runs a program of the system Dovecot runs on (name is a path as
// Dovecot sees it): chrooted into Root when there is one, so a program
// copied into d can be checked to start there before Dovecot is asked to
// run it.
func (d Dir) Command(name string, arg ...string) *exec.Cmd {
	return d.CommandContext(context.Background(), name, arg...)
}

// CommandContext is Command with a context, as exec.CommandContext.
func (d Dir) CommandContext(ctx context.Context, name string, arg ...string) *exec.Cmd {
	if d.root == "" {
		return exec.CommandContext(ctx, name, arg...)
	}
	return exec.CommandContext(ctx, "chroot", append([]string{d.root, name}, arg...)...)
}

// CopyProgram copies the host program src to name below d (mode 0755, for
// Dovecot to run: checkpassword, pam_exec) and runs it there once with args
// (e.g. "version") through Command, so a program that cannot start on the
// system Dovecot runs on (built against a newer C library than its root
// has) is an error here, with the program's own complaint, instead of
// failed logins later.
func (d Dir) CopyProgram(src, name string, args ...string) (Path, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return Path{}, err
	}
	p, err := d.WriteFile(name, data, 0o755)
	if err != nil {
		return Path{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), doveadmTimeout)
	defer cancel()
	if out, err := d.CommandContext(ctx, p.Dovecot, args...).CombinedOutput(); err != nil {
		where := "this host"
		if d.root != "" {
			where = d.root
		}
		return Path{}, fmt.Errorf("dovecottest: %s does not run on %s: %s %s: %v\n%s", src, where, p.Dovecot, strings.Join(args, " "), err, out)
	}
	return p, nil
}

// Remove deletes d and everything in it.
func (d Dir) Remove() error { return os.RemoveAll(d.Host) }

// NewDir makes a new directory that Dovecot v can reach: under /tmp for the
// host's Dovecot, under its root's /tmp for a chrooted one (building the
// root if needed). Paths are short, for Unix sockets. The caller removes it.
func NewDir(v Version) (Dir, error) {
	inst, err := locate(v)
	if err != nil {
		return Dir{}, err
	}
	return newDir(inst)
}

func newDir(inst install) (Dir, error) {
	host, err := os.MkdirTemp(filepath.Join(inst.root, "/tmp"), "dt")
	if err != nil {
		return Dir{}, err
	}
	// MkdirTemp makes it 0700; Dovecot's auth process runs as dovecot.
	if err := os.Chmod(host, 0o755); err != nil {
		os.RemoveAll(host)
		return Dir{}, err
	}
	return Dir{Host: host, Dovecot: "/" + strings.TrimPrefix(strings.TrimPrefix(host, inst.root), "/"), root: inst.root}, nil
}
