package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/cache"
	"github.com/mailauthd/mailauthd/control"
)

type cacheTestAccepter struct{}

func (cacheTestAccepter) Authenticate(context.Context, auth.Request) auth.Verdict {
	return auth.Accepted("uid=x", nil)
}

// cacheTestBackend stands in for the daemon behind the control socket: a
// real cache for Authenticate and Flush.
type cacheTestBackend struct{ *cache.Cache }

func (cacheTestBackend) Lookup(context.Context, auth.Request) auth.Verdict {
	return auth.Rejected(auth.CausePolicy, "no lookups here")
}

func (b cacheTestBackend) Flush() bool { b.Cache.Flush(); return true }

// cacheTestPlainBackend has no cache: the daemon must refuse the flush.
type cacheTestPlainBackend struct{ cacheTestAccepter }

func (cacheTestPlainBackend) Lookup(context.Context, auth.Request) auth.Verdict {
	return auth.Rejected(auth.CausePolicy, "no lookups here")
}

func (cacheTestPlainBackend) Flush() bool { return false }

func startCacheTestControl(t *testing.T, b control.Backend) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "control")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &control.Server{Backend: b}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return path
}

func TestCacheFlushCommand(t *testing.T) {
	c := cache.New(cache.Config{TTL: time.Minute, Size: 10}, cacheTestAccepter{})
	c.Authenticate(context.Background(), auth.Request{User: "alice", Password: "pw", Service: "smtp"})
	if c.Len() != 1 {
		t.Fatal("setup: nothing cached")
	}
	sock := startCacheTestControl(t, cacheTestBackend{c})

	dir := t.TempDir()
	conf := filepath.Join(dir, "mailauthd.yaml")
	os.WriteFile(conf, []byte("listen:\n  control:\n    path: "+sock+"\n"), 0o600)

	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string
	}{
		{"control flag", []string{"cache", "flush", "--control", sock}, 0, ""},
		{"flags before the verb", []string{"cache", "--control", sock, "flush"}, 0, ""},
		{"from the configuration", []string{"cache", "flush", "--config", conf}, 0, ""},
		{"no verb", []string{"cache"}, 2, "usage"},
		{"unknown verb", []string{"cache", "purge"}, 2, "usage"},
		{"extra argument", []string{"cache", "flush", "now", "--control", sock}, 2, "usage"},
		{"daemon not running", []string{"cache", "flush", "--control", filepath.Join(dir, "nothing")}, 1, "no daemon is listening"},
		{"missing explicit config", []string{"cache", "flush", "--config", filepath.Join(dir, "none.yaml")}, 2, "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Authenticate(context.Background(), auth.Request{User: "alice", Password: "pw", Service: "smtp"})
			var out, errOut bytes.Buffer
			code := run(tt.args, &out, &errOut)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr: %s", code, tt.wantCode, errOut.String())
			}
			if tt.wantErr != "" && !strings.Contains(errOut.String(), tt.wantErr) {
				t.Fatalf("stderr %q does not mention %q", errOut.String(), tt.wantErr)
			}
			if flushed := c.Len() == 0; flushed != (code == 0) {
				t.Fatalf("exit %d but cache Len = %d", code, c.Len())
			}
		})
	}
}

func TestCacheFlushWithoutCache(t *testing.T) {
	sock := startCacheTestControl(t, cacheTestPlainBackend{})
	var out, errOut bytes.Buffer
	if code := run([]string{"cache", "flush", "--control", sock}, &out, &errOut); code != 1 {
		t.Fatalf("exit %d, want 1 when the daemon has no cache; stderr %s", code, errOut.String())
	}
}
