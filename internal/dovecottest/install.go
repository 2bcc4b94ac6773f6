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

// DefaultTrixieRoot is where scripts/trixie-root.sh keeps the Debian 13 root
// unless the environment variable MAILAUTHD_TRIXIE_ROOT says otherwise.
const DefaultTrixieRoot = "/var/cache/mailauthd/trixie-root"

// ErrUnavailable is what Launch and NewDir return (errors.Is) when this host
// cannot run the Dovecot version asked for.
var ErrUnavailable = errors.New("dovecottest: Dovecot version unavailable")

// unavailable says why; installable tells whether installing something
// would help (then CI must not skip, as with any missing peer) or whether
// the version cannot exist here (2.3 on a Debian 13 host).
type unavailable struct {
	reason      string
	installable bool
}

func (u *unavailable) Error() string        { return "dovecottest: " + u.reason }
func (u *unavailable) Is(target error) bool { return target == ErrUnavailable }

// install is one Dovecot: its binaries inside root ("" = the host's /).
type install struct {
	root             string
	dovecot, doveadm string
}

var hostDovecot struct {
	once    sync.Once
	version string // "2.3.19.1 (9b53102964)", "" when not installed
	err     error
}

// hostVersion is the host's `dovecot --version`, "" without dovecot.
func hostVersion() (string, error) {
	hostDovecot.once.Do(func() {
		if _, err := os.Stat(dovecotPath); err != nil {
			return
		}
		out, err := exec.Command(dovecotPath, "--version").Output()
		if err != nil {
			hostDovecot.err = fmt.Errorf("dovecottest: %s --version: %w", dovecotPath, err)
			return
		}
		hostDovecot.version = strings.TrimSpace(string(out))
	})
	return hostDovecot.version, hostDovecot.err
}

// locate finds Dovecot v: the host's when it is that version, otherwise (2.4
// only) the Debian 13 root's.
func locate(v Version) (install, error) {
	if v != Version23 && v != Version24 {
		return install{}, fmt.Errorf("dovecottest: unknown version %d", int(v))
	}
	if os.Geteuid() != 0 {
		return install{}, &unavailable{"Dovecot's master needs root", true}
	}
	host, err := hostVersion()
	if err != nil {
		return install{}, err
	}
	if strings.HasPrefix(host, v.String()+".") {
		if _, err := os.Stat(doveadmPath); err != nil {
			return install{}, &unavailable{doveadmPath + " not installed (run scripts/install-deps.sh)", true}
		}
		return install{dovecot: dovecotPath, doveadm: doveadmPath}, nil
	}
	switch {
	case v == Version23 && host == "":
		return install{}, &unavailable{dovecotPath + " not installed (run scripts/install-deps.sh)", true}
	case v == Version23:
		return install{}, &unavailable{"the host's Dovecot is " + host + "; 2.3 only runs on a Debian 12 host", false}
	}
	root, err := TrixieRoot()
	if err != nil {
		return install{}, err
	}
	return install{root: root, dovecot: dovecotPath, doveadm: doveadmPath}, nil
}

var trixie struct {
	once sync.Once
	root string
	err  error
}

// TrixieRoot returns the Debian 13 root that Version24 runs in, running
// scripts/trixie-root.sh the first time this binary asks: it builds the root
// once (debootstrap and packages, about a minute) and afterwards only checks
// its stamp. The error is ErrUnavailable when the root cannot be built.
func TrixieRoot() (string, error) {
	trixie.once.Do(func() {
		root := os.Getenv("MAILAUTHD_TRIXIE_ROOT")
		if root == "" {
			root = DefaultTrixieRoot
		}
		root = filepath.Clean(root)
		if os.Geteuid() != 0 {
			trixie.err = &unavailable{"building and entering the Debian 13 root needs root", true}
			return
		}
		script := trixieRootScript()
		cmd := exec.Command("bash", script)
		cmd.Env = append(os.Environ(), "MAILAUTHD_TRIXIE_ROOT="+root)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if _, err := cmd.Output(); err != nil {
			trixie.err = &unavailable{fmt.Sprintf("no Debian 13 root for Dovecot 2.4: %s: %v\n%s", script, err, stderr.String()), true}
			return
		}
		trixie.root = root
	})
	return trixie.root, trixie.err
}

// trixieRootScript is scripts/trixie-root.sh of this repository, found from
// this source file (as slapdtest finds testdata), or the environment
// variable MAILAUTHD_TRIXIE_ROOT_SCRIPT.
func trixieRootScript() string {
	if s := os.Getenv("MAILAUTHD_TRIXIE_ROOT_SCRIPT"); s != "" {
		return s
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join("scripts", "trixie-root.sh")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", "trixie-root.sh")
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
