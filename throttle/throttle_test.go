package throttle

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// clock is a settable time source.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

// delays records the delays attempt asked for.
var delays []time.Duration

// newTest returns a throttle on a fake clock; the delays asked for are
// recorded.
func newTest(t *testing.T, edit func(*Config)) (*Throttle, *clock, *[]time.Duration) {
	t.Helper()
	cfg := DefaultConfig()
	if edit != nil {
		edit(&cfg)
	}
	th, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	th.now = c.now
	th.store.(*memory).now = c.now
	delays = nil
	return th, c, &delays
}

const aliceDN = "uid=alice,ou=people,dc=example,dc=org"

// attempt runs one login through the throttle as the decision does, with
// a directory that accepts only "right" for alice.
func attempt(th *Throttle, req auth.Request) auth.Verdict {
	ctx := context.Background()
	after := func(v auth.Verdict) auth.Verdict {
		if d := th.After(ctx, req, v); d > 0 {
			delays = append(delays, d)
		}
		return v
	}
	if v := th.Before(ctx, req); v != nil {
		return after(*v)
	}
	if v := th.BeforeBind(ctx, req, aliceDN); v != nil {
		return after(*v)
	}
	v := auth.Rejected(auth.CauseWrongPassword, "wrong password")
	v.DN = aliceDN
	if req.Password == "right" {
		v = auth.Accepted(aliceDN, nil)
	}
	return after(v)
}

func TestAccountBudget(t *testing.T) {
	th, clk, slept := newTest(t, func(c *Config) { c.Account.Failures = 3 })
	// Name variants resolve to one entry: one budget.
	variants := []string{"alice", "ALICE", " alice", "alice@anything", "Alice"}
	for i, u := range variants[:3] {
		v := attempt(th, auth.Request{User: u, Password: "guess" + string(rune('a'+i))})
		if v.Cause != auth.CauseWrongPassword {
			t.Fatalf("guess %d (%q): %+v, want a wrong password answered by the directory", i, u, v)
		}
	}
	for _, u := range variants {
		v := attempt(th, auth.Request{User: u, Password: "another-guess"})
		if v.Outcome != auth.Reject || v.Cause != auth.CauseThrottled {
			t.Errorf("%q over budget: %+v, want throttled", u, v)
		}
	}
	if st := th.Stats(); st.RefusedAccount != uint64(len(variants)) {
		t.Errorf("refusals counted %d", st.RefusedAccount)
	}
	// Delays: none for the first failure, then doubling, capped.
	if len(*slept) == 0 || (*slept)[0] != 250*time.Millisecond {
		t.Errorf("delays %v, want 250ms first", *slept)
	}
	for _, d := range *slept {
		if d > 2*time.Second {
			t.Errorf("delay %v above max_delay", d)
		}
	}
	// The budget comes back as the failures age out of the window.
	clk.t = clk.t.Add(16 * time.Minute)
	if v := attempt(th, auth.Request{User: "alice", Password: "later"}); v.Cause != auth.CauseWrongPassword {
		t.Errorf("after the window: %+v, want the directory asked again", v)
	}
}

func TestRealUserKeepsWorking(t *testing.T) {
	th, _, _ := newTest(t, func(c *Config) { c.Account.Failures = 2 })
	if v := attempt(th, auth.Request{User: "alice", Password: "right"}); v.Outcome != auth.Accept {
		t.Fatal(v)
	}
	for i := range 10 {
		attempt(th, auth.Request{User: "alice", Password: "attack" + string(rune('0'+i)), ClientAddr: "198.51.100.9"})
	}
	if v := attempt(th, auth.Request{User: "alice", Password: "attack-more"}); v.Cause != auth.CauseThrottled {
		t.Fatalf("attack not throttled: %+v", v)
	}
	// The password the directory accepted before still gets through.
	if v := attempt(th, auth.Request{User: "ALICE", Password: "right", ClientAddr: "192.0.2.1"}); v.Outcome != auth.Accept {
		t.Fatalf("real user during the attack: %+v", v)
	}
}

func TestSamePasswordCountsOnce(t *testing.T) {
	th, _, slept := newTest(t, func(c *Config) { c.Account.Failures = 3 })
	for range 20 { // a phone retrying an old password
		v := attempt(th, auth.Request{User: "alice", Password: "old-password"})
		if v.Cause != auth.CauseWrongPassword {
			t.Fatalf("repeated old password: %+v, want wrong password", v)
		}
	}
	if st := th.Stats(); st.Repeated != 19 {
		t.Errorf("%d repeats answered from memory, want 19", st.Repeated)
	}
	if len(*slept) != 0 {
		t.Errorf("a phone retrying its old password on a quiet account was delayed: %v", *slept)
	}
	// One failure counted: the real user's typo does not tip it over.
	if v := attempt(th, auth.Request{User: "alice", Password: "typo"}); v.Cause != auth.CauseWrongPassword {
		t.Fatalf("%+v", v)
	}
	if v := attempt(th, auth.Request{User: "alice", Password: "right"}); v.Outcome != auth.Accept {
		t.Fatalf("real password after an old one and a typo: %+v", v)
	}
}

func TestClientSpraying(t *testing.T) {
	th, _, _ := newTest(t, func(c *Config) { c.Client.Failures = 10; c.Account.Failures = 5 })
	ctx := context.Background()
	sprayed := 0
	for i := range 100 {
		req := auth.Request{User: "user" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Password: "Summer2026!", ClientAddr: "203.0.113.5;40000"}
		if v := th.Before(ctx, req); v != nil {
			if v.Cause != auth.CauseThrottled {
				t.Fatalf("%+v", v)
			}
			continue
		}
		sprayed++
		th.After(ctx, req, auth.Rejected(auth.CauseUnknownUser, "unknown user"))
	}
	if sprayed != 10 {
		t.Errorf("%d guesses reached the directory from one client, want 10", sprayed)
	}
	// Another client is separate; an exempt network has no address budget.
	if v := th.Before(ctx, auth.Request{User: "usera", Password: "x", ClientAddr: "203.0.113.6"}); v != nil {
		t.Errorf("another client throttled: %+v", v)
	}
	for i := range 100 {
		req := auth.Request{User: "webmail" + strconv.Itoa(i), Password: "typo", ClientAddr: "127.0.0.1"}
		if v := th.Before(ctx, req); v != nil {
			t.Fatalf("webmail on loopback throttled by address after %d failures: %+v", i, v)
		}
		th.After(ctx, req, auth.Rejected(auth.CauseUnknownUser, "unknown user"))
	}
}

func TestClientKey(t *testing.T) {
	th, _, _ := newTest(t, nil)
	for in, want := range map[string]string{
		"127.0.0.1;40000":           "", // exempt: webmail on this host
		"::1":                       "",
		"192.0.2.7":                 "c:192.0.2.7",
		"192.0.2.7;40000":           "c:192.0.2.7",
		"[2001:db8::1]:993":         "c:2001:db8::/64",
		"2001:db8::1:2:3:4":         "c:2001:db8::/64",
		"2001:db8:0:1::5":           "c:2001:db8:0:1::/64",
		"::ffff:192.0.2.7":          "c:192.0.2.7",
		"mail.example.org":          "",
		"":                          "",
		"not an address;at all; no": "",
	} {
		if got := th.clientKey(in); got != want {
			t.Errorf("clientKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestBoundedState: an attacker cycling through millions of names or
// addresses cannot grow the state beyond Entries.
func TestBoundedState(t *testing.T) {
	th, _, _ := newTest(t, func(c *Config) { c.Entries = 1000 })
	ctx := context.Background()
	for i := range 20_000 {
		req := auth.Request{User: "u" + string(rune(i)), Password: "p", ClientAddr: "10.0." + string(rune('0'+i%10)) + ".1"}
		th.After(ctx, req, auth.Rejected(auth.CauseUnknownUser, "unknown user"))
	}
	if n := th.store.(*memory).len(); n > 1000 {
		t.Errorf("%d records held, limit 1000", n)
	}
}

func TestConfigValidate(t *testing.T) {
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(*Config){
		"negative failures": func(c *Config) { c.Account.Failures = -1 },
		"tiny window":       func(c *Config) { c.Client.Window = time.Millisecond },
		"delay above max":   func(c *Config) { c.Delay = 3 * time.Second },
		"redis without key": func(c *Config) { c.Redis.Addr = "127.0.0.1:6379" },
		"bad exempt":        func(c *Config) { c.Client.Exempt = []string{"10.0.0.1"} },
		"account exempt":    func(c *Config) { c.Account.Exempt = []string{"10.0.0.0/8"} },
	} {
		c := DefaultConfig()
		edit(&c)
		if c.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// BenchmarkAcceptedLogin is what the throttle adds to a login that
// succeeds (the common case): Before, BeforeBind and After, from parallel
// goroutines over 1,000 accounts and client addresses. Compare with the
// daemon's CPU per login (BenchmarkAuthenticate in package daemon).
func BenchmarkAcceptedLogin(b *testing.B) {
	th, err := New(DefaultConfig(), nil)
	if err != nil {
		b.Fatal(err)
	}
	type login struct {
		req auth.Request
		dn  string
	}
	logins := make([]login, 1000)
	for i := range logins {
		u := "user" + strconv.Itoa(i)
		logins[i] = login{auth.Request{User: u, Password: "pw-" + u, Service: "imap",
			ClientAddr: "192.0." + strconv.Itoa(i/250) + "." + strconv.Itoa(i%250)}, "uid=" + u + ",ou=people,dc=example,dc=org"}
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			l := logins[i%len(logins)]
			i++
			if v := th.Before(ctx, l.req); v != nil {
				b.Fatalf("%s refused: %s", l.req.User, v.Reason)
			}
			if v := th.BeforeBind(ctx, l.req, l.dn); v != nil {
				b.Fatalf("%s refused: %s", l.req.User, v.Reason)
			}
			th.After(ctx, l.req, auth.Accepted(l.dn, nil))
		}
	})
}
