package sambatest

import (
	"testing"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

// need skips t when the Samba AD DC tools are missing or the test does
// not run as root, or fails it under CI.
func need(t testing.TB) {
	t.Helper()
	if !Available() {
		peertest.Missing(t, "sambatest: samba AD DC tools not installed (scripts/install-deps.sh installs them)")
	}
	peertest.NeedRoot(t, "sambatest: the network namespace for samba's fixed ports")
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

// Shared is one domain controller for a whole test binary (see
// peertest.Shared). Tests that change server-wide state (Stop, Pause,
// SetIdleTimeout, locking Lockable) must restore it or use their own Start.
type Shared = peertest.Shared[*Server]

// NewShared prepares a shared instance with these options; nothing starts yet.
func NewShared(opts ...Option) *Shared {
	return peertest.NewShared("sambatest", need,
		func(dir string) (*Server, error) { return Launch(dir, opts...) }, (*Server).Close)
}
