package daemon

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/directory"
)

// slapdConfig is a configuration for the test directory at url, as this
// "machine" mail.example.org sees it.
func slapdConfig(url string) *config.File {
	cfg := config.Default()
	cfg.LDAP.Directory.URLs = []string{url}
	cfg.LDAP.Directory.Timeout = 2 * time.Second
	cfg.LDAP.Search.Base = "ou=people,dc=example,dc=org"
	cfg.Access.Hostnames = []string{"mail.example.org", "mail"}
	return cfg
}

func newDaemon(t testing.TB, cfg *config.File) *Daemon {
	t.Helper()
	d, err := New(cfg, Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// waitMirror waits until the daemon's mirror has loaded (and, with sync,
// a sync session keeps it current).
func waitMirror(t testing.TB, d *Daemon, sync bool) {
	t.Helper()
	m := d.cur.Load().mirror
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		st := m.Status()
		if st.Logins > 0 && (!sync || st.Syncing) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("mirror not ready: %+v", st)
		}
	}
}

// An unreachable directory: building and reloading never need LDAP.
const nowhere = "ldap://127.0.0.1:1"

func TestReload(t *testing.T) {
	cfg := slapdConfig(nowhere)
	d := newDaemon(t, cfg)
	first := d.cur.Load()

	next := slapdConfig(nowhere)
	next.Access.ServiceAttribute = "authorizedService"
	if err := reloadWith(d, next, time.Hour); err != nil {
		t.Fatal(err)
	}
	if d.Config() != next || d.cur.Load() == first {
		t.Fatal("the new configuration is not in effect")
	}
	// The old one is retired at once (no idle connection kept), closed later.
	if _, waiting := d.retired[first]; !waiting {
		t.Fatal("the old configuration is not waiting to be closed")
	}

	// A configuration that cannot be built leaves the running one.
	bad := slapdConfig(nowhere)
	bad.LDAP.Search.Base = "not a dn"
	if err := reloadWith(d, bad, time.Hour); err == nil {
		t.Fatal("a bad configuration was accepted")
	}
	if d.Config() != next {
		t.Fatal("a failed reload replaced the running configuration")
	}

	// A short grace closes the retired configuration by itself.
	second := d.cur.Load()
	if err := reloadWith(d, slapdConfig(nowhere), 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		d.mu.Lock()
		_, waiting := d.retired[second]
		d.mu.Unlock()
		if !waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("retired configuration not closed after its grace")
		}
	}
	if v := second.ldap.Authenticate(context.Background(), auth.Request{User: "alice", Password: "x"}); v.Outcome != auth.TempFail || !strings.Contains(v.Reason, "shutting down") {
		t.Errorf("a closed configuration answered %v %q", v.Outcome, v.Reason)
	}

	// Close closes what is still waiting; reloads after Close fail.
	d.Close()
	if len(d.retired) != 0 {
		t.Error("Close left retired configurations open")
	}
	if err := reloadWith(d, slapdConfig(nowhere), time.Hour); !errors.Is(err, directory.ErrClosed) {
		t.Errorf("reload after close: %v", err)
	}
}

func TestOneShotAndFlush(t *testing.T) {
	cfg := slapdConfig(nowhere)
	cfg.Cache.TTL = time.Minute
	cfg.LDAP.Search.MirrorRefresh = time.Minute
	d := newDaemon(t, cfg)
	if g := d.cur.Load(); g.cache == nil || g.mirror == nil {
		t.Fatal("cache or mirror not built")
	}
	if !d.Flush() {
		t.Error("Flush with a cache reports none")
	}
	one, err := New(cfg, Options{OneShot: true})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	if g := one.cur.Load(); g.cache != nil || g.mirror != nil {
		t.Fatal("a one-shot decision built a cache or a mirror")
	}
	if one.Flush() {
		t.Error("Flush without a cache reports one")
	}
}

// TestWithFields: the helpers' view of an accept carries the fields of the
// configuration that decided it, "user" first; a mapped attribute missing
// from the entry is logged once; an unusable value is a TempFail.
func TestWithFields(t *testing.T) {
	cfg := slapdConfig(nowhere)
	cfg.Dovecot.Fields = map[string]string{"userdb_home": "homeDirectory", "host": "mailHost"}
	cfg.Dovecot.Defaults = map[string]string{"userdb_home": "/var/vmail/%d/%n"}
	var logs bytes.Buffer
	d, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	attrs := map[string][]string{"homedirectory": {"/srv/alice"}}
	g := d.cur.Load()
	g.front = auth.AuthenticatorFunc(func(context.Context, auth.Request) auth.Verdict {
		return auth.Accepted("uid=alice,dc=example,dc=org", attrs)
	})
	req := auth.Request{User: "alice", Realm: "example.org", Password: "pw"}
	for range 3 {
		v := d.WithFields().Authenticate(context.Background(), req)
		if v.Outcome != auth.Accept || len(v.Fields) != 2 || v.Fields[0] != (auth.Field{Key: "user", Value: "alice@example.org"}) ||
			v.Fields[1] != (auth.Field{Key: "userdb_home", Value: "/srv/alice"}) {
			t.Fatalf("fields = %+v", v)
		}
	}
	if n := strings.Count(logs.String(), "mapped attribute missing"); n != 1 {
		t.Errorf("missing mailHost logged %d times, want once:\n%s", n, logs.String())
	}
	// The saslauthd door's view carries no fields (no mapping on its path).
	if v := d.Authenticate(context.Background(), req); len(v.Fields) != 0 {
		t.Errorf("Authenticate mapped fields: %+v", v.Fields)
	}
	attrs["mailhost"] = []string{"imap\x00evil"}
	if v := d.WithFields().Authenticate(context.Background(), req); v.Outcome != auth.TempFail || v.Cause != auth.CauseInternal {
		t.Errorf("NUL in a mapped value: %+v", v)
	}
}

// reloadWith reloads d with a configuration built in the test.
func reloadWith(d *Daemon, cfg *config.File, grace time.Duration) error {
	_, err := d.Reload(func() (*config.File, error) { return cfg, nil }, grace)
	return err
}
