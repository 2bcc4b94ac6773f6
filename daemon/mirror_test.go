package daemon

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

func adminConn(t *testing.T, s *slapdtest.Server) *ldap.Conn {
	t.Helper()
	c, err := ldap.DialURL(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Bind(slapdtest.AdminDN, slapdtest.AdminPassword); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestMirror: with ldap.mirror_refresh on, every decision is the same as
// with search+bind, including after the directory changed behind the
// mirror's back (moved, deleted, password changed, host revoked on refresh).
func TestMirror(t *testing.T) {
	s := slapdtest.Start(t)
	cfg := slapdConfig(s.URL())
	cfg.LDAP.Directory.BindDN, cfg.LDAP.Directory.BindPassword = slapdtest.ServiceDN, slapdtest.ServicePassword
	cfg.LDAP.Search.MirrorRefresh = time.Hour // refreshed by hand below
	a := newDaemon(t, cfg)
	m := a.cur.Load().mirror
	if m == nil {
		t.Fatal("mirror not set up")
	}
	waitMirror(t, a, false)
	ctx := context.Background()
	try := func(user, pw, service string) auth.Verdict {
		return a.Authenticate(ctx, auth.Request{User: user, Password: pw, Service: service})
	}
	tests := []struct {
		user, pw, service string
		want              auth.Outcome
		reason            string
	}{
		{"alice", "alicepw", "imap", auth.Accept, "ok"},
		{"alice", "wrong", "imap", auth.Reject, "wrong password"},
		{"star", "starpw", "smtp", auth.Accept, "ok"},
		{"negated", "negatedpw", "imap", auth.Reject, "host not allowed"},
		{"otherhost", "otherhostpw", "imap", auth.Reject, "host not allowed"},
		{"smtponly", "smtponlypw", "imap", auth.Accept, "ok"}, // service attribute check is off by default
		{"twin", "twinpw", "imap", auth.Reject, "ambiguous"},
		{"a*b", "metapw", "imap", auth.Accept, "ok"},
		{"a*", "metapw", "imap", auth.Reject, "unknown user"},
		{"ALICE", "alicepw", "imap", auth.Accept, "ok"}, // not mirrored: the search decides, as before
		{"nobody", "x", "imap", auth.Reject, "unknown user"},
	}
	for _, tt := range tests {
		v := try(tt.user, tt.pw, tt.service)
		if v.Outcome != tt.want || !strings.HasPrefix(v.Reason, tt.reason) {
			t.Errorf("%s: %v %q, want %v %q", tt.user, v.Outcome, v.Reason, tt.want, tt.reason)
		}
	}
	if v := try("alice", "alicepw", "imap"); v.DN != "uid=alice,"+slapdtest.PeopleDN || len(v.Attributes["host"]) == 0 {
		t.Errorf("alice via the mirror: DN %q attributes %v", v.DN, v.Attributes)
	}

	var explained strings.Builder
	a.Explain(ctx, auth.Request{User: "star", Password: "starpw", Service: "imap"}, &explained)
	if !strings.Contains(explained.String(), "local mirror") {
		t.Errorf("star was not answered from the mirror:\n%s", explained.String())
	}

	admin := adminConn(t, s)
	// Moved: the mirrored DN no longer exists; the search finds the new one.
	if err := admin.ModifyDN(ldap.NewModifyDNRequest("uid=star,"+slapdtest.PeopleDN, "uid=star", true, "ou=services,"+slapdtest.Suffix)); err != nil {
		t.Fatal(err)
	}
	if v := try("star", "starpw", "imap"); v.Outcome != auth.Reject || !v.UserUnknown() {
		// Base is ou=people: the moved entry is out of scope, as a search would say.
		t.Errorf("moved out of the base: %v %q", v.Outcome, v.Reason)
	}
	// Password changed: the old one fails at once (the bind is always real).
	mod := ldap.NewModifyRequest("uid=alice,"+slapdtest.PeopleDN, nil)
	mod.Replace("userPassword", []string{"newalicepw"})
	if err := admin.Modify(mod); err != nil {
		t.Fatal(err)
	}
	if v := try("alice", "alicepw", "imap"); v.Outcome != auth.Reject {
		t.Errorf("old password after a change: %v", v.Outcome)
	}
	if v := try("alice", "newalicepw", "imap"); v.Outcome != auth.Accept {
		t.Errorf("new password: %v %q", v.Outcome, v.Reason)
	}
	// Host revoked: takes effect at the next refresh.
	mod = ldap.NewModifyRequest("uid=alice,"+slapdtest.PeopleDN, nil)
	mod.Replace("host", []string{"other.example.org"})
	if err := admin.Modify(mod); err != nil {
		t.Fatal(err)
	}
	if err := m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if v := try("alice", "newalicepw", "imap"); v.Outcome != auth.Reject {
		t.Errorf("host revoked, after refresh: %v %q", v.Outcome, v.Reason)
	}
	// Deleted: the bind as the mirrored DN fails, the search finds nothing.
	if err := admin.Del(ldap.NewDelRequest("uid=upper,"+slapdtest.PeopleDN, nil)); err != nil {
		t.Fatal(err)
	}
	if v := try("upper", "upperpw", "imap"); v.Outcome != auth.Reject || !v.UserUnknown() {
		t.Errorf("deleted: %v %q", v.Outcome, v.Reason)
	}
}

func TestMirrorRefusesAccessFilters(t *testing.T) {
	cfg := slapdConfig("ldap://127.0.0.1:1")
	cfg.LDAP.Search.MirrorRefresh = time.Minute
	cfg.Access.Filters = []string{"(!(employeeType=disabled))"}
	if _, err := New(cfg, Options{}); err == nil || !strings.Contains(err.Error(), "mirror") {
		t.Fatalf("err = %v", err)
	}
	cfg = slapdConfig("ldap://127.0.0.1:1")
	cfg.LDAP.Search.MirrorRefresh = time.Minute
	cfg.LDAP.Search.Filter = "(|(uid=%u)(mail=%u))"
	if _, err := New(cfg, Options{}); err == nil || !strings.Contains(err.Error(), "mirror") {
		t.Fatalf("err = %v", err)
	}
}

// TestMirrorSync: against a server with syncprov the mirror follows the
// directory, so a revoked host refuses the login within moments, still
// answered from the mirror, without any refresh.
func TestMirrorSync(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithSyncProv())
	cfg := slapdConfig(s.URL())
	cfg.LDAP.Directory.BindDN, cfg.LDAP.Directory.BindPassword = slapdtest.ServiceDN, slapdtest.ServicePassword
	cfg.LDAP.Search.MirrorRefresh = time.Hour // never reached: changes come by sync
	a := newDaemon(t, cfg)
	waitMirror(t, a, true)
	ctx := context.Background()
	req := auth.Request{User: "alice", Password: "alicepw", Service: "imap"}
	if v := a.Authenticate(ctx, req); v.Outcome != auth.Accept {
		t.Fatalf("alice: %v %q", v.Outcome, v.Reason)
	}
	mod := ldap.NewModifyRequest("uid=alice,"+slapdtest.PeopleDN, nil)
	mod.Replace("host", []string{"other.example.org"})
	if err := adminConn(t, s).Modify(mod); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		v := a.Authenticate(ctx, req)
		if v.Outcome == auth.Reject && strings.HasPrefix(v.Reason, "host not allowed") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("host revoked, by sync: %v %q", v.Outcome, v.Reason)
		}
		time.Sleep(10 * time.Millisecond)
	}
	var explained strings.Builder
	a.Explain(ctx, req, &explained)
	if !strings.Contains(explained.String(), "local mirror") {
		t.Errorf("the refusal did not come from the mirror:\n%s", explained.String())
	}
}

// TestMirrorAgreesWithSearch: the same case table decided through the
// mirror and through search+bind gives identical verdicts (outcome, cause,
// reason, DN and attributes), with the mirror loaded by periodic paged
// search and by content synchronisation.
func TestMirrorAgreesWithSearch(t *testing.T) {
	for _, sync := range []bool{false, true} {
		t.Run(map[bool]string{false: "paged", true: "sync"}[sync], func(t *testing.T) {
			var opts []slapdtest.Option
			if sync {
				opts = append(opts, slapdtest.WithSyncProv())
			}
			s := slapdtest.Start(t, opts...)
			cfg := slapdConfig(s.URL())
			cfg.LDAP.Directory.BindDN, cfg.LDAP.Directory.BindPassword = slapdtest.ServiceDN, slapdtest.ServicePassword
			cfg.LDAP.Search.Attributes = []string{"mailHost", "uidNumber"}
			plain := newDaemon(t, cfg)
			mcfg := *cfg
			mcfg.LDAP.Search.MirrorRefresh = time.Hour
			mirrored := newDaemon(t, &mcfg)
			waitMirror(t, mirrored, sync)
			ctx := context.Background()
			for _, c := range []struct{ user, pw string }{
				{"alice", "alicepw"}, {"alice", "wrong"}, {"star", "starpw"}, {"negated", "negatedpw"},
				{"nohost", "nohostpw"}, {"otherhost", "otherhostpw"}, {"upper", "upperpw"}, {"twin", "twinpw"},
				{"a*b", "metapw"}, {"a*", "metapw"}, {"ALICE", "alicepw"}, {"nobody", "x"}, {"alice", ""},
				{"dave", "davepw"}, {"locked", "lockedpw"}, {"smtponly", "smtponlypw"},
			} {
				req := auth.Request{User: c.user, Password: c.pw, Service: "imap"}
				p, m := plain.Authenticate(ctx, req), mirrored.Authenticate(ctx, req)
				if p.Outcome != m.Outcome || p.Cause != m.Cause || p.Reason != m.Reason || p.DN != m.DN ||
					p.User != m.User || fmt.Sprint(p.Attributes) != fmt.Sprint(m.Attributes) {
					t.Errorf("%s/%s: search+bind %+v, mirror %+v", c.user, c.pw, p, m)
				}
			}
			var explained strings.Builder
			mirrored.Explain(ctx, auth.Request{User: "alice", Password: "alicepw", Service: "imap"}, &explained)
			if !strings.Contains(explained.String(), "local mirror") {
				t.Errorf("alice was not answered from the mirror:\n%s", explained.String())
			}
		})
	}
}
