package ds389test

import (
	"testing"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

// need skips t when 389-ds is not installed, or fails it under CI.
func need(t testing.TB) {
	t.Helper()
	if !Available() {
		peertest.Missing(t, "ds389test: 389-ds-base not installed (scripts/install-deps.sh installs it)")
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

// Shared is one instance for a whole test binary (see peertest.Shared).
// Tests that change server-wide state (Stop, Pause, SetIdleTimeout,
// locking Lockable) must restore it or use their own Start.
type Shared = peertest.Shared[*Server]

// NewShared prepares a shared instance with these options; nothing starts yet.
func NewShared(opts ...Option) *Shared {
	return peertest.NewShared("ds389test", need,
		func(dir string) (*Server, error) { return Launch(dir, opts...) }, (*Server).Close)
}
