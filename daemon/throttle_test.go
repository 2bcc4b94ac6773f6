package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/internal/redistest"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// failedBinds reads what slapd's password policy recorded for dn: the
// failed binds it saw (pwdFailureTime) and whether it locked the account.
func failedBinds(t *testing.T, s *slapdtest.Server, dn string) (failures int, locked bool) {
	t.Helper()
	c, err := ldap.DialURL(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Bind(slapdtest.AdminDN, slapdtest.AdminPassword); err != nil {
		t.Fatal(err)
	}
	res, err := c.Search(ldap.NewSearchRequest(dn, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, 5, false,
		"(objectClass=*)", []string{"pwdFailureTime", "pwdAccountLockedTime"}, nil))
	if err != nil || len(res.Entries) != 1 {
		t.Fatalf("reading %s: %v", dn, err)
	}
	e := res.Entries[0]
	return len(e.GetAttributeValues("pwdFailureTime")), len(e.GetAttributeValues("pwdAccountLockedTime")) > 0
}

func throttleConfig(url string) *config.File {
	cfg := slapdConfig(url)
	cfg.Access.Realms = []string{"example.org"}
	cfg.Access.AllowMissingHost = true
	// Below the directory's own lockout (ppolicy pwdMaxFailure: 3), as the
	// documentation tells an admin to set it; tiny delays keep it quick.
	cfg.Throttle.Account.Failures = 2
	cfg.Throttle.Client.Failures = 10
	cfg.Throttle.Delay, cfg.Throttle.MaxDelay = time.Millisecond, 4*time.Millisecond
	return cfg
}

// TestThrottleAgainstSlapd: an attack on one account through every name
// variant is refused after the budget without reaching slapd, whose
// lockout policy is never tripped; the real user keeps logging in;
// spraying one password across 100 accounts from one address stops at the
// client budget.
func TestThrottleAgainstSlapd(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithPPolicy(), slapdtest.WithUsers(100))
	d := newDaemon(t, throttleConfig(s.URL()))
	ctx := context.Background()
	aliceDN := "uid=alice," + slapdtest.PeopleDN

	if v := d.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw", Service: "imap"}); v.Outcome != auth.Accept {
		t.Fatalf("alice before the attack: %+v", v)
	}
	variants := []string{"alice", "ALICE", " alice", "alice@example.org", "alice@anything.test", "Alice"}
	causes := map[auth.Cause]int{}
	for i := range 60 {
		req := auth.Request{User: variants[i%len(variants)], Password: "guess-" + strconv.Itoa(i), Service: "imap", ClientAddr: "198.51.100." + strconv.Itoa(i%200)}
		v := d.Authenticate(ctx, req)
		if v.Outcome != auth.Reject {
			t.Fatalf("guess %d accepted: %+v", i, v)
		}
		causes[v.Cause]++
	}
	if causes[auth.CauseWrongPassword] != 2 || causes[auth.CauseThrottled] != 58 {
		t.Errorf("causes %v: want 2 wrong passwords answered by slapd, 58 throttled", causes)
	}
	// (A successful bind clears slapd's failure record: look first.)
	if n, locked := failedBinds(t, s, aliceDN); n != 2 || locked {
		t.Errorf("slapd saw %d failed binds for alice (locked %v), want 2 and never locked", n, locked)
	}
	// The real password keeps working during the attack.
	if v := d.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw", Service: "smtp", ClientAddr: "192.0.2.1"}); v.Outcome != auth.Accept {
		t.Errorf("alice during the attack: %+v", v)
	}

	// Spraying one password over 100 accounts from one address.
	reached := 0
	for i := range 100 {
		v := d.Authenticate(ctx, auth.Request{User: "user" + strconv.Itoa(i), Password: "Winter2026!", Service: "imap", ClientAddr: "203.0.113.9;51234"})
		if v.Cause == auth.CauseWrongPassword {
			reached++
		}
	}
	seen := 0
	for i := range 100 {
		n, locked := failedBinds(t, s, "uid=user"+strconv.Itoa(i)+","+slapdtest.PeopleDN)
		seen += n
		if locked {
			t.Errorf("user%d locked by the spray", i)
		}
	}
	if reached != 10 || seen != 10 {
		t.Errorf("spray: %d guesses answered by slapd, %d failed binds recorded; want 10 and 10", reached, seen)
	}
	// Another address is not affected by the spraying one.
	if v := d.Authenticate(ctx, auth.Request{User: "user5", Password: slapdtest.GeneratedUserPassword(5), ClientAddr: "203.0.113.10"}); v.Outcome != auth.Accept {
		t.Errorf("user5 from another address: %+v", v)
	}
}

// TestThrottleFleet: two daemons sharing one real redis-server count
// guesses together; with Redis stopped, each keeps deciding on its own.
func TestThrottleFleet(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithPPolicy())
	r := redistest.Start(t)
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, []byte("fleet-secret-0123456789\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs [2]bytes.Buffer
	var mu sync.Mutex
	hosts := make([]*Daemon, 2)
	for i := range hosts {
		cfg := throttleConfig(s.URL())
		cfg.Throttle.Redis.Addr = r.Addr()
		cfg.Throttle.Redis.KeyFile = keyFile
		if i == 1 {
			cfg.Throttle.Redis.Addr = r.Socket // one over TCP, one over the Unix socket
		}
		d, err := New(cfg, Options{Logger: slog.New(slog.NewTextHandler(&lockedWriter{&mu, &logs[i]}, nil))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		hosts[i] = d
	}
	ctx := context.Background()
	// Two guesses on the first host use up alice's budget on both.
	for i := range 2 {
		if v := hosts[0].Authenticate(ctx, auth.Request{User: "alice", Password: fmt.Sprint("g", i)}); v.Cause != auth.CauseWrongPassword {
			t.Fatalf("guess %d on host 0: %+v", i, v)
		}
	}
	if v := hosts[1].Authenticate(ctx, auth.Request{User: "ALICE", Password: "g3"}); v.Cause != auth.CauseThrottled {
		t.Errorf("host 1 after host 0's guesses: %+v, want throttled", v)
	}
	if n, locked := failedBinds(t, s, "uid=alice,"+slapdtest.PeopleDN); n != 2 || locked {
		t.Errorf("slapd saw %d failed binds (locked %v), want 2", n, locked)
	}
	// Redis gone: logins go on with each host's own state, and it is logged.
	r.Stop()
	if v := hosts[1].Authenticate(ctx, auth.Request{User: "star", Password: "starpw"}); v.Outcome != auth.Accept {
		t.Errorf("with Redis down: %+v", v)
	}
	if v := hosts[0].Authenticate(ctx, auth.Request{User: "alice", Password: "g9"}); v.Cause != auth.CauseThrottled {
		t.Errorf("host 0 with Redis down forgot its own failures: %+v", v)
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logs[1].String(), "shared store (Redis) failed") {
		t.Errorf("no warning about Redis:\n%s", logs[1].String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
