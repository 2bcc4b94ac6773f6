package sambatest

import (
	"os"
	"sync"
	"testing"
)

// need skips t when the Samba AD DC tools are missing or the test does
// not run as root, or fails it under CI.
func need(t testing.TB) {
	t.Helper()
	if !Available() {
		if os.Getenv("CI") != "" {
			t.Fatalf("sambatest: samba AD DC tools not installed (run scripts/install-deps.sh)")
		}
		t.Skipf("sambatest: samba AD DC tools not installed")
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatalf("sambatest: needs root (a network namespace for samba's fixed ports)")
		}
		t.Skipf("sambatest: needs root (a network namespace for samba's fixed ports)")
	}
}

// Start runs an instance for this test in t.TempDir() and closes it in
// t.Cleanup. Without the Samba packages or root the test is skipped, or
// fails when the environment variable CI is set. The first instance on a
// machine also builds the provisioning cache; share one instance per
// package with NewShared where tests allow.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	need(t)
	s, err := Launch(t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// Shared is one instance for a whole test binary, created by the first
// test that asks for it. Close it from TestMain after m.Run:
//
//	var dc = sambatest.NewShared()
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		ds.Close()
//		os.Exit(code)
//	}
//
// Tests that change server-wide state (Stop, Pause, SetIdleTimeout,
// locking Lockable) must restore it or use their own Start.
type Shared struct {
	opts []Option
	once sync.Once
	dir  string
	srv  *Server
	err  error
}

// NewShared prepares a shared instance with these options; nothing starts yet.
func NewShared(opts ...Option) *Shared { return &Shared{opts: opts} }

// Get returns the shared instance, creating it on first use. It skips or
// fails t like Start.
func (sh *Shared) Get(t testing.TB) *Server {
	t.Helper()
	need(t)
	sh.once.Do(func() {
		sh.dir, sh.err = os.MkdirTemp("", "sambatest")
		if sh.err == nil {
			sh.srv, sh.err = Launch(sh.dir, sh.opts...)
		}
	})
	if sh.err != nil {
		t.Fatal(sh.err)
	}
	return sh.srv
}

// Close stops the instance (if one was made) and removes its directory.
func (sh *Shared) Close() {
	if sh.srv != nil {
		sh.srv.Close()
	}
	if sh.dir != "" {
		os.RemoveAll(sh.dir)
	}
}
