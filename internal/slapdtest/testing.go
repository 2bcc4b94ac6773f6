package slapdtest

import (
	"testing"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

// Start runs a slapd for this test in t.TempDir() and stops it in
// t.Cleanup. Without slapd installed the test is skipped, or fails when the
// environment variable CI is set.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	if !Available() {
		peertest.Missing(t, "slapdtest: %s not installed (scripts/install-deps.sh installs it)", SlapdPath)
	}
	s, err := Launch(t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}
