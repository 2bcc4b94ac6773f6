package ds389test

import (
	"os"
	"sync"
	"testing"
)

// need skips t when 389-ds is not installed, or fails it under CI.
func need(t testing.TB) {
	t.Helper()
	if !Available() {
		if os.Getenv("CI") != "" {
			t.Fatalf("ds389test: 389-ds-base not installed (run scripts/install-deps.sh)")
		}
		t.Skipf("ds389test: 389-ds-base not installed")
	}
}

// Start runs an instance for this test in t.TempDir() and closes it in
// t.Cleanup. Without 389-ds-base the test is skipped, or fails when the
// environment variable CI is set. An instance takes several seconds to
// create: share one per package with NewShared where tests allow.
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
//	var ds = ds389test.NewShared()
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
		sh.dir, sh.err = os.MkdirTemp("", "ds389test")
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
