package saslauthd

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/internal/peertest"
)

// testsaslauthdPath finds Cyrus's own client (Debian package sasl2-bin).
func testsaslauthdPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/sbin/testsaslauthd", "/usr/bin/testsaslauthd"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return peertest.NeedFile(t, "testsaslauthd")
}

// TestCyrusTestsaslauthd speaks to the Server with the real Cyrus client,
// which encodes requests the way libsasl2 2.1.x does (four fields, one
// write) and reads the reply the way Postfix's libsasl2 does.
func TestCyrusTestsaslauthd(t *testing.T) {
	bin := testsaslauthdPath(t)
	var mu sync.Mutex
	var got []auth.Request
	srv := &Server{Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
		mu.Lock()
		got = append(got, req)
		mu.Unlock()
		if req.User == "alice" && req.Password == "correct horse" && req.Service == "smtp" && req.Realm == "example.org" {
			return auth.Accepted("uid=alice,ou=people,dc=example,dc=org", nil)
		}
		return auth.Rejected(auth.CausePolicy, "invalid credentials")
	})}
	path, _ := startServer(t, srv)

	long := strings.Repeat("L", 900) // beyond Cyrus's own 256-byte limit
	tests := []struct {
		name   string
		args   []string
		want   string
		wantRq auth.Request
	}{
		{"accept", []string{"-u", "alice", "-p", "correct horse", "-s", "smtp", "-r", "example.org"},
			`0: OK "Success."`, auth.Request{User: "alice", Password: "correct horse", Service: "smtp", Realm: "example.org"}},
		{"wrong password", []string{"-u", "alice", "-p", "wrong", "-s", "smtp", "-r", "example.org"},
			`0: NO "authentication failed"`, auth.Request{User: "alice", Password: "wrong", Service: "smtp", Realm: "example.org"}},
		{"defaults: service imap, empty realm", []string{"-u", "bob", "-p", "pw"},
			`0: NO "authentication failed"`, auth.Request{User: "bob", Password: "pw", Service: "imap"}},
		{"long password", []string{"-u", "carol", "-p", long, "-s", "smtp", "-r", "example.org"},
			`0: NO "authentication failed"`, auth.Request{User: "carol", Password: long, Service: "smtp", Realm: "example.org"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mu.Lock()
			got = nil
			mu.Unlock()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			out, err := exec.CommandContext(ctx, bin, append(tt.args, "-f", path)...).CombinedOutput()
			line := strings.TrimSpace(string(out))
			if line != tt.want {
				t.Fatalf("testsaslauthd printed %q (exit %v), want %q", line, err, tt.want)
			}
			if (err == nil) != strings.Contains(tt.want, "OK") {
				t.Fatalf("testsaslauthd exit status %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if len(got) != 1 || got[0] != tt.wantRq {
				t.Fatalf("authenticator got %d requests: %+v", len(got), redactAll(got))
			}
		})
	}

	// An empty password is refused before the authenticator, as Cyrus does.
	mu.Lock()
	got = nil
	mu.Unlock()
	out, _ := exec.Command(bin, "-u", "alice", "-p", "", "-s", "smtp", "-f", path).CombinedOutput()
	if line := strings.TrimSpace(string(out)); line != `0: NO "authentication failed"` {
		t.Fatalf("empty password: testsaslauthd printed %q", line)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 0 {
		t.Fatal("empty password reached the authenticator")
	}
}

func redactAll(rs []auth.Request) []auth.Request {
	out := make([]auth.Request, len(rs))
	for i, r := range rs {
		out[i] = redact(r)
	}
	return out
}
