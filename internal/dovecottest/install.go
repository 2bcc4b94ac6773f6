package dovecottest

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
)

// The binaries, inside whichever root they run from.
const (
	dovecotPath = "/usr/sbin/dovecot"
	doveadmPath = "/usr/bin/doveadm"
)

// DefaultTrixieRoot and DefaultBookwormRoot are where scripts/debian-root.sh
// keeps the Debian 13 and Debian 12 roots unless the environment variables
// MAILAUTHD_TRIXIE_ROOT and MAILAUTHD_BOOKWORM_ROOT say otherwise.
const (
	DefaultTrixieRoot   = "/var/cache/mailauthd/trixie-root"
	DefaultBookwormRoot = "/var/cache/mailauthd/bookworm-root"
)

// ErrUnavailable is what Launch and NewDir return (errors.Is) when this host
// cannot run the Dovecot version asked for.
var ErrUnavailable = errors.New("dovecottest: Dovecot version unavailable")

// unavailable says why: a missing package, no root for the Debian release
// that ships the version, not running as root. Each is a missing peer, so
// CI fails where a developer's run skips.
type unavailable struct {
	reason string
}

func (u *unavailable) Error() string        { return "dovecottest: " + u.reason }
func (u *unavailable) Is(target error) bool { return target == ErrUnavailable }

// install is one Dovecot: its binaries inside root ("" = the host's /).
type install struct {
	root             string
	dovecot, doveadm string
}

// dovecotVersion is `dovecot --version` of the Dovecot in root ("" = the
// host's): "2.3.19.1 (9b53102964)", "" when none is installed.
func dovecotVersion(root string) (string, error) {
	if _, err := os.Stat(filepath.Join(root, dovecotPath)); err != nil {
		return "", nil
	}
	cmd := exec.Command(dovecotPath, "--version")
	if root != "" {
		cmd = exec.Command("chroot", root, dovecotPath, "--version")
	}
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("dovecottest: %s%s --version: %w", root, dovecotPath, err)
	}
	return strings.TrimSpace(string(out)), nil
}

var hostDovecot struct {
	once    sync.Once
	version string
	err     error
}

// hostVersion is the host's `dovecot --version`, "" without dovecot.
func hostVersion() (string, error) {
	hostDovecot.once.Do(func() {
		hostDovecot.version, hostDovecot.err = dovecotVersion("")
	})
	return hostDovecot.version, hostDovecot.err
}

// isVersion reports whether a `dovecot --version` line is release line v.
func isVersion(line string, v Version) bool {
	return strings.HasPrefix(line, v.String()+".")
}

// locate finds Dovecot v: the host's when `dovecot --version` says it is
// v, otherwise the one in the root of the Debian release that ships v
// (Root), whose version is checked the same way. So a Debian 12 host runs
// 2.3 itself and 2.4 from a Debian 13 root, a Debian 13 host the reverse,
// and a host without Dovecot both from roots.
func locate(v Version) (install, error) {
	if _, ok := releases[v]; !ok {
		return install{}, fmt.Errorf("dovecottest: unknown version %d", int(v))
	}
	if os.Geteuid() != 0 {
		return install{}, &unavailable{"Dovecot's master needs root"}
	}
	host, err := hostVersion()
	if err != nil {
		return install{}, err
	}
	if isVersion(host, v) {
		if _, err := os.Stat(doveadmPath); err != nil {
			return install{}, &unavailable{doveadmPath + " not installed (run scripts/install-deps.sh)"}
		}
		return install{dovecot: dovecotPath, doveadm: doveadmPath}, nil
	}
	root, err := Root(v)
	if err != nil {
		return install{}, err
	}
	return install{root: root, dovecot: dovecotPath, doveadm: doveadmPath}, nil
}

// release is the Debian release whose root runs a Dovecot version.
type release struct {
	suite     string // debootstrap's name, scripts/debian-root.sh's argument
	name      string // for messages
	env, root string // MAILAUTHD_<SUITE>_ROOT and its default
	once      sync.Once
	path      string
	err       error
}

var releases = map[Version]*release{
	Version23: {suite: "bookworm", name: "Debian 12", env: "MAILAUTHD_BOOKWORM_ROOT", root: DefaultBookwormRoot},
	Version24: {suite: "trixie", name: "Debian 13", env: "MAILAUTHD_TRIXIE_ROOT", root: DefaultTrixieRoot},
}

// Root returns the root of the Debian release that ships Dovecot v
// (Debian 12 for 2.3, Debian 13 for 2.4), running scripts/debian-root.sh
// the first time this binary asks: it builds the root once (debootstrap
// and packages, one to a few minutes) and afterwards only checks its
// stamp. The root's Dovecot must say it is v. The error is ErrUnavailable
// when the root cannot be built.
func Root(v Version) (string, error) {
	r, ok := releases[v]
	if !ok {
		return "", fmt.Errorf("dovecottest: unknown version %d", int(v))
	}
	r.once.Do(func() {
		root := os.Getenv(r.env)
		if root == "" {
			root = r.root
		}
		root = filepath.Clean(root)
		if os.Geteuid() != 0 {
			r.err = &unavailable{"building and entering the " + r.name + " root needs root"}
			return
		}
		script := debianRootScript()
		cmd := exec.Command("bash", script, r.suite)
		cmd.Env = append(os.Environ(), r.env+"="+root)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if _, err := cmd.Output(); err != nil {
			r.err = &unavailable{fmt.Sprintf("no %s root for Dovecot %s: %s %s: %v\n%s", r.name, v, script, r.suite, err, stderr.String())}
			return
		}
		got, err := dovecotVersion(root)
		if err != nil {
			r.err = err
			return
		}
		if !isVersion(got, v) {
			r.err = fmt.Errorf("dovecottest: the %s root %s has Dovecot %q, not %s", r.name, root, got, v)
			return
		}
		r.path = root
	})
	return r.path, r.err
}

// TrixieRoot is Root(Version24): the Debian 13 root.
func TrixieRoot() (string, error) { return Root(Version24) }

// debianRootScript is scripts/debian-root.sh of this repository, found from
// this source file (as slapdtest finds testdata), or the environment
// variable MAILAUTHD_DEBIAN_ROOT_SCRIPT.
func debianRootScript() string {
	if s := os.Getenv("MAILAUTHD_DEBIAN_ROOT_SCRIPT"); s != "" {
		return s
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join("scripts", "debian-root.sh")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", "debian-root.sh")
}

// lookupUser reads a passwd file (no NSS: it may be another system's).
func lookupUser(passwd, name string) (uid, gid int, err error) {
	f, err := os.Open(passwd)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ":")
		if len(fs) < 4 || fs[0] != name {
			continue
		}
		if uid, err = strconv.Atoi(fs[2]); err != nil {
			return 0, 0, fmt.Errorf("dovecottest: %s: %s: %w", passwd, name, err)
		}
		if gid, err = strconv.Atoi(fs[3]); err != nil {
			return 0, 0, fmt.Errorf("dovecottest: %s: %s: %w", passwd, name, err)
		}
		return uid, gid, nil
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	return 0, 0, fmt.Errorf("dovecottest: no user %s in %s", name, passwd)
}
