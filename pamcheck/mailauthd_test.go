package pamcheck

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

var mailauthdCfg = Config{
	Services: []string{"dovecot", "smtp", "imap"},
	StateDir: "/var/lib/mailauthd/pamcheck",
}.WithDefaults()

func TestParseMailauthdRoute(t *testing.T) {
	tests := []struct {
		line string
		want MailauthdRoute
		ok   bool
	}{
		{"auth required pam_exec.so quiet expose_authtok /usr/bin/mailauthd pam",
			MailauthdRoute{Program: "/usr/bin/mailauthd", ExposeAuthtok: true}, true},
		{"account required pam_exec.so quiet /usr/bin/mailauthd pam --account --config /etc/m.yaml",
			MailauthdRoute{Program: "/usr/bin/mailauthd", Account: true}, true},
		{"auth [success=1 default=ignore] /lib/security/pam_exec.so EXPOSE_AUTHTOK log=/var/log/m.log type=auth /usr/local/bin/mailauthd pam",
			MailauthdRoute{Program: "/usr/local/bin/mailauthd", ExposeAuthtok: true, OnlyType: "auth"}, true},
		{"auth required pam_exec.so quiet expose_authtok mailauthd pam", // relative: pam_exec's execve fails
			MailauthdRoute{Program: "mailauthd", ExposeAuthtok: true}, true},
		{"auth required pam_exec.so expose_authtok /usr/bin/mailauthd checkpassword", MailauthdRoute{}, false},
		{"auth required pam_exec.so expose_authtok /usr/bin/other pam", MailauthdRoute{}, false},
		{"auth required pam_exec.so expose_authtok", MailauthdRoute{}, false},
		{"auth required pam_unix.so /usr/bin/mailauthd pam", MailauthdRoute{}, false},
	}
	for _, tt := range tests {
		lines, err := ParseFile(strings.NewReader(tt.line + "\n"))
		if err != nil || len(lines) != 1 {
			t.Fatalf("%q: %v %v", tt.line, lines, err)
		}
		got, ok := ParseMailauthdRoute(lines[0])
		if ok != tt.ok || got != tt.want {
			t.Errorf("%q: got %+v %v, want %+v %v", tt.line, got, ok, tt.want, tt.ok)
		}
	}
}

// TestShippedPAMFilesRoute: the files docs/pam.md shows (and the Dovecot
// test runs) are what pamcheck recognises as routing through mailauthd.
func TestShippedPAMFilesRoute(t *testing.T) {
	want := map[string][]string{
		"dovecot":   {TypeAuth},
		"smtp":      {TypeAuth},
		"mailauthd": {TypeAuth, TypeAccount},
	}
	sys := NewSystem("", Config{ConfDirs: []string{"/"}}.WithDefaults())
	for name, types := range want {
		p, err := filepath.Abs(filepath.Join("..", "packaging", "pam.d", name))
		if err != nil {
			t.Fatal(err)
		}
		v := sys.Analyze(p)
		if got := MailauthdTypes(v); !reflect.DeepEqual(got, types) {
			t.Errorf("packaging/pam.d/%s routes %v through mailauthd, want %v", name, got, types)
		}
	}
}

// TestMailauthdRouteLost: with a snapshot of services that route through
// mailauthd, each way of losing that route is a critical finding naming
// the file now in effect.
func TestMailauthdRouteLost(t *testing.T) {
	dist, err := os.ReadFile("../testdata/pamcheck/dist/dovecot")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		mutate func(t *testing.T, root string)
		want   []string // "severity code path:line", sorted
		in     string   // a phrase the mailauthd finding's message must contain
	}{
		{"clean", func(*testing.T, string) {}, nil, ""},
		{"upgrade put the distribution's stack back", func(t *testing.T, r string) {
			write(t, r, "etc/pam.d/dovecot", string(dist))
		}, []string{
			"critical content-changed /etc/pam.d/dovecot:0",
			"critical mailauthd-route-lost /etc/pam.d/dovecot:0",
		}, "/etc/pam.d/dovecot no longer routes auth through mailauthd (it did at snapshot time): its auth stack is pam_unix.so, pam_deny.so, pam_permit.so"},
		{"file removed, other takes over", func(t *testing.T, r string) { remove(t, r, "etc/pam.d/smtp") }, []string{
			"critical mailauthd-route-lost /etc/pam.d/other:0",
			"critical service-removed /etc/pam.d/smtp:0",
		}, "service smtp no longer routes auth through mailauthd (it did at snapshot time): it has no file of its own, and libpam uses /etc/pam.d/other (its auth stack is pam_unix.so, pam_deny.so, pam_permit.so)"},
		{"included file stops routing", func(t *testing.T, r string) {
			write(t, r, "etc/pam.d/mailauthd", "auth required pam_unix.so\naccount required pam_unix.so\n")
		}, []string{
			"critical content-changed /etc/pam.d/mailauthd:0",
			"critical mailauthd-route-lost /etc/pam.d/imap:0",
		}, "/etc/pam.d/imap no longer routes auth and account through mailauthd (it did at snapshot time): its auth stack is pam_unix.so, its account stack is pam_unix.so"},
		{"expose_authtok dropped", func(t *testing.T, r string) {
			write(t, r, "etc/pam.d/smtp", "auth required pam_exec.so quiet /usr/bin/mailauthd pam\naccount required pam_permit.so\n")
		}, []string{
			"critical mailauthd-line /etc/pam.d/smtp:1",
			"warning content-changed /etc/pam.d/smtp:0",
		}, "without expose_authtok"},
		{"program gone", func(t *testing.T, r string) { remove(t, r, "usr/bin/mailauthd") }, []string{
			"critical mailauthd-line /etc/pam.d/dovecot:11",
			"critical mailauthd-line /etc/pam.d/mailauthd:13",
			"critical mailauthd-line /etc/pam.d/mailauthd:14",
			"critical mailauthd-line /etc/pam.d/smtp:9",
		}, "/usr/bin/mailauthd does not exist"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := copyTree(t, "../testdata/pamcheck/mailauthd")
			if err := os.Chmod(filepath.Join(root, "usr/bin/mailauthd"), 0o755); err != nil {
				t.Fatal(err)
			}
			sys := NewSystem(root, mailauthdCfg)
			snap, err := TakeSnapshot(sys, mailauthdCfg, time.Unix(1700000000, 0))
			if err != nil {
				t.Fatal(err)
			}
			for name, want := range map[string][]string{"dovecot": {TypeAuth}, "smtp": {TypeAuth}, "imap": {TypeAuth, TypeAccount}, "other": nil} {
				if got := snap.Services[name].Mailauthd; !reflect.DeepEqual(got, want) {
					t.Fatalf("snapshot of %s: mailauthd types %v, want %v", name, got, want)
				}
			}
			state := sys.Real(mailauthdCfg.StateDir)
			if err := snap.Save(sys, state); err != nil {
				t.Fatal(err)
			}
			if snap, err = LoadSnapshot(state); err != nil {
				t.Fatal(err)
			}
			tc.mutate(t, root)
			got := Check(NewSystem(root, mailauthdCfg), snap, mailauthdCfg)
			if strings.Join(summary(got), "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("findings:\n%s\nwant:\n%s\nfull: %+v", strings.Join(summary(got), "\n"), strings.Join(tc.want, "\n"), got)
			}
			if tc.in == "" {
				return
			}
			found := false
			for _, f := range got {
				if strings.HasPrefix(f.Code, "mailauthd-") && strings.Contains(f.Message, tc.in) {
					found = true
				}
				if f.Fix == "" || len(f.Services) == 0 {
					t.Errorf("finding without fix or service: %+v", f)
				}
			}
			if !found {
				t.Errorf("no mailauthd finding says %q: %+v", tc.in, got)
			}
		})
	}
}

// TestRequireMailauthdRule: without a snapshot (a fresh install), a rule
// states which services must route through mailauthd.
func TestRequireMailauthdRule(t *testing.T) {
	root := copyTree(t, "../testdata/pamcheck/mailauthd")
	write(t, root, "etc/pam.d/dovecot", mustRead(t, "../testdata/pamcheck/dist/dovecot"))
	cfg := mailauthdCfg
	cfg.Rules = []Rule{
		{Service: "dovecot", Type: TypeAuth, RequireMailauthd: true},
		{Service: "smtp", Type: TypeAuth, RequireMailauthd: true},
		{Service: "imap", Type: TypeAccount, RequireMailauthd: true},
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	got := Check(NewSystem(root, cfg), nil, cfg)
	want := []string{"critical mailauthd-route-lost /etc/pam.d/dovecot:0"}
	if strings.Join(summary(got), "\n") != strings.Join(want, "\n") {
		t.Fatalf("findings:\n%s\nwant:\n%s", strings.Join(summary(got), "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(got[0].Message, "a require_mailauthd rule says it must") {
		t.Errorf("message: %s", got[0].Message)
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
