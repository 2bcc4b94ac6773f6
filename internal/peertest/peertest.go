// Package peertest is what the tests of real peers share: how a test ends
// when a peer it needs is missing (a skip on a developer's machine, a
// failure in CI), one instance of a slow peer per test binary, and the two
// probes every directory harness (slapdtest, ds389test, sambatest) needs:
// is the server answering, and has SIGSTOP frozen it.
package peertest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Missing ends t because something it needs is not here (a package, root,
// a kernel feature). It skips t, or fails it when the environment variable
// CI is set: there scripts/install-deps.sh provides every peer, and a suite
// must never pass by skipping what it was meant to test.
func Missing(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// NeedRoot ends t through Missing unless it runs as root; what says what
// needs it ("the Postfix test", "pamtester's mount namespace").
func NeedRoot(t testing.TB, what string) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "%s needs root", what)
	}
}

// NeedFile returns the first of paths that exists (a bare name is looked up
// in PATH); when none does, it ends t through Missing.
func NeedFile(t testing.TB, paths ...string) string {
	t.Helper()
	for _, p := range paths {
		if !strings.Contains(p, "/") {
			if lp, err := exec.LookPath(p); err == nil {
				return lp
			}
			continue
		}
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	Missing(t, "%s not installed (scripts/install-deps.sh installs it)", paths[0])
	return ""
}

// Shared is one instance of a slow peer for a whole test binary, started by
// the first test that asks for it and stopped from TestMain after m.Run
// (t.Cleanup would stop it when the first test ends):
//
//	var ds = ds389test.NewShared()
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		ds.Close()
//		os.Exit(code)
//	}
//
// A failed start is remembered: every test that asks fails the same way.
type Shared[S any] struct {
	name   string
	need   func(testing.TB)
	launch func(dir string) (S, error)
	stop   func(S)

	once    sync.Once
	dir     string
	srv     S
	started bool
	err     error
}

// NewShared prepares a shared instance; nothing starts yet. need ends a
// test that cannot have the peer (see Missing), launch starts it in a
// fresh directory named after name, stop stops it.
func NewShared[S any](name string, need func(testing.TB), launch func(dir string) (S, error), stop func(S)) *Shared[S] {
	return &Shared[S]{name: name, need: need, launch: launch, stop: stop}
}

// Get returns the shared instance, starting it on first use.
func (sh *Shared[S]) Get(t testing.TB) S {
	t.Helper()
	sh.need(t)
	sh.once.Do(func() {
		sh.dir, sh.err = os.MkdirTemp("", sh.name)
		if sh.err == nil {
			sh.srv, sh.err = sh.launch(sh.dir)
			sh.started = sh.err == nil
		}
	})
	if sh.err != nil {
		t.Fatal(sh.err)
	}
	return sh.srv
}

// Close stops the instance, if one was started, and removes its directory.
// A Get after Close fails.
func (sh *Shared[S]) Close() {
	sh.once.Do(func() { sh.err = fmt.Errorf("%s: shared instance used after Close", sh.name) })
	if sh.started {
		sh.stop(sh.srv)
	}
	if sh.dir != "" {
		os.RemoveAll(sh.dir)
	}
}

// PingLDAP connects to url and reads the root DSE anonymously, within a
// second: the directory is up and answering, whatever its kind.
func PingLDAP(url string) error {
	c, err := ldap.DialURL(url, ldap.DialWithDialer(&net.Dialer{Timeout: time.Second}))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetTimeout(time.Second)
	_, err = c.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 1, false,
		"(objectClass=*)", []string{"namingContexts"}, nil))
	return err
}

// WaitStopped waits until every thread of pid is stopped (after SIGSTOP),
// so that a test freezing a server knows it no longer answers.
func WaitStopped(pid int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !allThreadsStopped(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d did not stop within %v after SIGSTOP", pid, timeout)
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// allThreadsStopped reads each thread's state from /proc (T = stopped).
func allThreadsStopped(pid int) bool {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			return false
		}
		// Format: pid (comm) state ...; comm may hold spaces, so cut at the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
			return false
		}
	}
	return true
}
