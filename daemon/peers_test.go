package daemon

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/internal/ds389test"
	"github.com/mailauthd/mailauthd/internal/sambatest"
)

var (
	ds = ds389test.NewShared(ds389test.WithContentSync())
	dc = sambatest.NewShared()
)

func TestMain(m *testing.M) {
	code := m.Run()
	ds.Close()
	dc.Close()
	os.Exit(code)
}

// TestMirrorPeers: the mirror loads from 389-ds (paged, and its content
// synchronisation) and from Samba (paged, from the domain root with its
// continuation references), and a login through it decides as a search
// would, account states included: the mirror saves the search, never the
// bind, so a locked or disabled account is refused all the same.
func TestMirrorPeers(t *testing.T) {
	type acct struct {
		user, pw string
		outcome  auth.Outcome
		reason   string
	}
	for _, tc := range []struct {
		name  string
		cfg   func(t *testing.T) *config.File
		cases []acct
	}{
		{"389-ds", func(t *testing.T) *config.File {
			s := ds.Get(t)
			cfg := slapdConfig(s.LDAPSURL())
			cfg.LDAP.Directory.CAFile = s.CAFile()
			cfg.LDAP.Directory.BindDN, cfg.LDAP.Directory.BindPassword = ds389test.ServiceDN, ds389test.ServicePassword
			cfg.LDAP.Search.Base = ds389test.PeopleDN
			cfg.Access.HostAttribute = ""
			return cfg
		}, []acct{
			{"alice", ds389test.Alice.Password, auth.Accept, "ok"},
			{"alice", "wrong", auth.Reject, "wrong password"},
			{"inactivated", ds389test.Inactivated.Password, auth.Reject, "account disabled"},
			{"lockedout", ds389test.LockedOut.Password, auth.Reject, "account locked"},
			{"mustchange", ds389test.MustChange.Password, auth.Reject, "password must be changed"},
			{"expired", ds389test.Expired.Password, auth.Reject, "password expired"},
			{"expiring", ds389test.Expiring.Password, auth.Accept, "ok"},
		}},
		{"samba", func(t *testing.T) *config.File {
			s := dc.Get(t)
			cfg := slapdConfig(s.LDAPSURL())
			cfg.LDAP.Directory.CAFile = s.CAFile()
			cfg.LDAP.Directory.BindDN, cfg.LDAP.Directory.BindPassword = sambatest.Service.DN, sambatest.Service.Password
			cfg.LDAP.Search.Base = sambatest.BaseDN
			cfg.LDAP.Search.Filter = "(sAMAccountName=%u)"
			cfg.Access.HostAttribute = ""
			return cfg
		}, []acct{
			{"alice", sambatest.Alice.Password, auth.Accept, "ok"},
			{"alice", "Wrong-Pass-1", auth.Reject, "wrong password"},
			{"disabled", sambatest.Disabled.Password, auth.Reject, "account disabled"},
			{"lockedout", sambatest.LockedOut.Password, auth.Reject, "account locked"},
			{"mustchange", sambatest.MustChange.Password, auth.Reject, "password must be changed"},
			{"pwexpired", sambatest.PasswordExpired.Password, auth.Reject, "password expired"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg(t)
			cfg.LDAP.Search.MirrorRefresh = time.Hour
			d := newDaemon(t, cfg)
			waitMirror(t, d, tc.name == "389-ds") // 389-ds: a content synchronisation session too
			ctx := context.Background()
			for _, c := range tc.cases {
				v := d.Authenticate(ctx, auth.Request{User: c.user, Password: c.pw, Service: "imap"})
				if v.Outcome != c.outcome || !strings.HasPrefix(v.Reason, c.reason) {
					t.Errorf("%s: %v %q, want %v %q", c.user, v.Outcome, v.Reason, c.outcome, c.reason)
				}
			}
			var b strings.Builder
			d.Explain(ctx, auth.Request{User: "lockedout", Password: "x", Service: "imap"}, &b)
			if !strings.Contains(b.String(), "local mirror") || !strings.Contains(b.String(), "account locked") {
				t.Errorf("a locked account through the mirror:\n%s", b.String())
			}
		})
	}
}
