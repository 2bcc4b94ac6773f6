package control

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// standaloneFake counts how often the standalone decision was built and asked.
type standaloneFake struct {
	built, asked, closed int
}

func (s *standaloneFake) factory() (Decider, func(), error) {
	s.built++
	b := &backend{verdicts: map[string]auth.Verdict{"auth:alice": auth.Accepted("uid=alice", nil)}}
	return countingDecider{b, &s.asked}, func() { s.closed++ }, nil
}

type countingDecider struct {
	*backend
	n *int
}

func (c countingDecider) Authenticate(ctx context.Context, r auth.Request) auth.Verdict {
	*c.n++
	return c.backend.Authenticate(ctx, r)
}

// TestFallback is the rule checkpassword and pam share: the daemon decides
// when it is there, standalone only when nothing listens, and a daemon that
// is there but fails is a TempFail, never a second opinion.
func TestFallback(t *testing.T) {
	alice := auth.Request{User: "alice", Password: "pw"}
	ctx := context.Background()

	t.Run("daemon answers", func(t *testing.T) {
		var s standaloneFake
		path := startServer(t, &Server{Backend: &backend{verdicts: map[string]auth.Verdict{"auth:alice": auth.Rejected(auth.CauseWrongPassword, "wrong password")}}})
		f := &Fallback{Client: &Client{Path: path}, Standalone: s.factory}
		defer f.Close()
		if v := f.Authenticate(ctx, alice); v.Outcome != auth.Reject || v.Cause != auth.CauseWrongPassword {
			t.Fatalf("daemon's verdict lost: %+v", v)
		}
		if via, _ := f.Via(); via != "daemon" || s.built != 0 {
			t.Fatalf("via %q, standalone built %d times", via, s.built)
		}
	})
	t.Run("nothing listens", func(t *testing.T) {
		var s standaloneFake
		f := &Fallback{Client: &Client{Path: filepath.Join(t.TempDir(), "none")}, Standalone: s.factory}
		for range 2 {
			if v := f.Authenticate(ctx, alice); v.Outcome != auth.Accept {
				t.Fatalf("standalone verdict: %+v", v)
			}
		}
		if via, why := f.Via(); via != "standalone" || why != "not running" {
			t.Fatalf("via %q (%q)", via, why)
		}
		f.Close()
		if s.built != 1 || s.asked != 2 || s.closed != 1 {
			t.Fatalf("built %d asked %d closed %d, want 1 2 1", s.built, s.asked, s.closed)
		}
	})
	t.Run("daemon there but stuck", func(t *testing.T) {
		var s standaloneFake
		path := filepath.Join(t.TempDir(), "stuck")
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				defer c.Close()
			}
		}()
		f := &Fallback{Client: &Client{Path: path, Timeout: 100 * time.Millisecond}, Standalone: s.factory}
		if v := f.Authenticate(ctx, alice); v.Outcome != auth.TempFail {
			t.Fatalf("stuck daemon: %+v, want TempFail", v)
		}
		if s.built != 0 {
			t.Fatal("a stuck daemon made the helper decide on its own")
		}
	})
	t.Run("standalone cannot be built", func(t *testing.T) {
		f := &Fallback{Standalone: func() (Decider, func(), error) { return nil, nil, errors.New("bad config") }}
		if v := f.Lookup(ctx, auth.Request{User: "alice"}); v.Outcome != auth.TempFail || v.Cause != auth.CauseUnavailable {
			t.Fatalf("%+v", v)
		}
	})
}
