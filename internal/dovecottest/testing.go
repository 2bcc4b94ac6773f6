package dovecottest

import (
	"errors"
	"sync"
	"testing"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

// Start runs Dovecot v for this test and stops it in t.Cleanup. When this
// host cannot run v (a missing package, a root that could not be built) the
// test is skipped, or fails when the environment variable CI is set, as for
// any missing peer. -short skips it too: it is an integration test.
func Start(t testing.TB, v Version, cfg Config) *Dovecot {
	t.Helper()
	skipShort(t)
	d, err := Launch(v, cfg)
	if err != nil {
		skipOrFatal(t, err)
	}
	t.Cleanup(d.Stop)
	return d
}

// TempDir is NewDir for this test, removed in t.Cleanup, with Start's skip
// rules.
func TempDir(t testing.TB, v Version) Dir {
	t.Helper()
	skipShort(t)
	d, err := NewDir(v)
	if err != nil {
		skipOrFatal(t, err)
	}
	t.Cleanup(func() { d.Remove() })
	return d
}

func skipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("dovecottest: real Dovecot skipped in -short mode")
	}
}

func skipOrFatal(t testing.TB, err error) {
	t.Helper()
	var u *unavailable
	if !errors.As(err, &u) {
		t.Fatal(err)
	}
	peertest.Missing(t, "%v", err)
}

// Shared is one Dovecot for a whole test binary, for tests that only ask it
// questions: the first test that calls Get starts it (so `go test -run` of
// unrelated tests never does), later ones get the same instance, and
// TestMain stops it after m.Run:
//
//	var dove = &dovecottest.Shared{Version: dovecottest.Version24, Setup: setupLua}
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		dove.Close()
//		os.Exit(code)
//	}
//
//	func TestLogin(t *testing.T) {
//		d := dove.Get(t)
//		...
//	}
//
// t.Cleanup cannot do it: it runs when the first test ends, not the binary.
// A failed start is remembered: every test that asks skips or fails the
// same way.
type Shared struct {
	Version Version
	// Setup puts the test's files into dir (Lua scripts, a daemon's
	// socket) and returns the configuration; Config.Dir is set to dir.
	Setup func(dir Dir) (Config, error)

	once sync.Once
	dir  Dir
	d    *Dovecot
	err  error
}

// Get returns the shared instance, starting it on the first call.
func (s *Shared) Get(t testing.TB) *Dovecot {
	t.Helper()
	skipShort(t)
	s.once.Do(func() {
		if s.dir, s.err = NewDir(s.Version); s.err != nil {
			return
		}
		cfg := Config{}
		if s.Setup != nil {
			if cfg, s.err = s.Setup(s.dir); s.err != nil {
				return
			}
		}
		cfg.Dir = s.dir
		s.d, s.err = Launch(s.Version, cfg)
	})
	if s.err != nil {
		skipOrFatal(t, s.err)
	}
	return s.d
}

// Close stops the instance, if one was started, and removes its directory.
// A Get after Close fails.
func (s *Shared) Close() {
	s.once.Do(func() { s.err = errors.New("dovecottest: Shared used after Close") })
	if s.d != nil {
		s.d.Stop()
	}
	if s.dir.Host != "" {
		s.dir.Remove()
	}
}
