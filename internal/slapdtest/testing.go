package slapdtest

import (
	"os"
	"testing"
)

// Start runs a slapd for this test in t.TempDir() and stops it in
// t.Cleanup. Without slapd installed the test is skipped, or fails when the
// environment variable CI is set.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	if !Available() {
		if os.Getenv("CI") != "" {
			t.Fatalf("slapdtest: %s not installed (run scripts/install-deps.sh)", SlapdPath)
		}
		t.Skipf("slapdtest: %s not installed", SlapdPath)
	}
	s, err := Launch(t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}
