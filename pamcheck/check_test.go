package pamcheck

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// copyTree copies a fixture tree into a fresh temporary directory so tests
// can break it without touching testdata.
func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	return dst
}

var testCfg = Config{
	Services: []string{"imap", "smtp", "pop3", "sieve"},
	StateDir: "/var/lib/mailauthd/pamcheck",
}.WithDefaults()

func snapshotTree(t *testing.T, root string) (*System, *Snapshot, string) {
	t.Helper()
	sys := NewSystem(root, testCfg)
	snap, err := TakeSnapshot(sys, testCfg, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}
	state := sys.Real(testCfg.StateDir)
	if err := snap.Save(sys, state); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadSnapshot(state)
	if err != nil {
		t.Fatal(err)
	}
	return sys, loaded, state
}

func summary(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, fmt.Sprintf("%s %s %s:%d", f.Severity, f.Code, f.Path, f.Line))
	}
	sort.Strings(out)
	return out
}

func write(t *testing.T, root, p, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(root, p), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func remove(t *testing.T, root, p string) {
	t.Helper()
	if err := os.Remove(filepath.Join(root, p)); err != nil {
		t.Fatal(err)
	}
}

func TestCheckBreakages(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(t *testing.T, root string)
		want   []string // "severity code path:line", sorted
		in     string   // a phrase the first finding's message must contain
	}{
		{"clean", func(*testing.T, string) {}, nil, ""},
		{"service removed, other takes over", func(t *testing.T, r string) { remove(t, r, "etc/pam.d/smtp") },
			[]string{"critical service-removed /etc/pam.d/smtp:0"}, "silently uses /etc/pam.d/other"},
		{"service moved to the vendor dir", func(t *testing.T, r string) { remove(t, r, "etc/pam.d/imap") },
			[]string{"critical service-moved /usr/lib/pam.d/imap:0"}, "now resolves to /usr/lib/pam.d/imap"},
		{"content changed, pam_sss dropped", func(t *testing.T, r string) {
			write(t, r, "etc/pam.d/smtp", "auth required pam_unix.so\naccount required pam_unix.so\n")
		}, []string{"critical content-changed /etc/pam.d/smtp:0"}, "no longer used: pam_localuser.so, pam_permit.so, pam_sss.so"},
		{"content changed, same modules", func(t *testing.T, r string) {
			write(t, r, "etc/pam.d/other", "auth required pam_unix.so nodelay\naccount required pam_unix.so\n")
		}, []string{"warning content-changed /etc/pam.d/other:0"}, "changed since the snapshot"},
		{"required module missing", func(t *testing.T, r string) { remove(t, r, "lib/security/pam_sss.so") },
			// imap/smtp line 4 (auth) and 6 (account) are required: every
			// login fails; common-auth's bracket line jumps over pam_deny on
			// success, so losing it silently locks LDAP users out.
			[]string{
				"critical module-missing /etc/pam.d/common-auth:2",
				"critical module-missing /etc/pam.d/imap:4",
				"critical module-missing /etc/pam.d/imap:6",
				"critical module-missing /etc/pam.d/smtp:4",
				"critical module-missing /etc/pam.d/smtp:6",
			}, "LDAP users via pam_sss) are refused"},
		{"optional silent module missing", func(t *testing.T, r string) { remove(t, r, "lib/security/pam_systemd.so") },
			[]string{"info module-missing /etc/pam.d/pop3:3"}, "allowed to be absent"},
		{"include target missing", func(t *testing.T, r string) { remove(t, r, "etc/pam.d/common-account") },
			[]string{"critical include-missing /etc/pam.d/pop3:2"}, "must-fail handler"},
		{"rpm and dpkg leftovers", func(t *testing.T, r string) {
			write(t, r, "etc/pam.d/imap.rpmnew", "auth include common-auth\n")
			write(t, r, "etc/pam.d/smtp.rpmsave", "old\n")
			write(t, r, "etc/pam.d/common-auth.dpkg-dist", "new\n")
			write(t, r, "etc/pam.d/common-auth.dpkg-old", "old\n")
			write(t, r, "etc/pam.d/other.dpkg-new", "new\n")
			write(t, r, "etc/pam.d/common-account.pam-old", "old\n")
		}, []string{
			"info leftover /etc/pam.d/common-auth.dpkg-dist:0",
			"info leftover /etc/pam.d/imap.rpmnew:0",
			"info leftover /etc/pam.d/other.dpkg-new:0",
			"warning leftover /etc/pam.d/common-account.pam-old:0",
			"warning leftover /etc/pam.d/common-auth.dpkg-old:0",
			"warning leftover /etc/pam.d/smtp.rpmsave:0",
		}, ""},
		{"mode made world-writable", func(t *testing.T, r string) {
			if err := os.Chmod(filepath.Join(r, "etc/pam.d/imap"), 0o666); err != nil {
				t.Fatal(err)
			}
		}, []string{"critical mode-changed /etc/pam.d/imap:0"}, "0644 to 0666"},
		{"mode tightened", func(t *testing.T, r string) {
			if err := os.Chmod(filepath.Join(r, "etc/pam.d/imap"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, []string{"warning mode-changed /etc/pam.d/imap:0"}, "0644 to 0600"},
		{"continuation past end of file", func(t *testing.T, r string) {
			write(t, r, "etc/pam.d/other", "auth required pam_unix.so\naccount required pam_unix.so \\\n")
		}, []string{"critical file-refused /etc/pam.d/other:0", "warning content-changed /etc/pam.d/other:0"}, "pam_start fails"},
		{"bad control", func(t *testing.T, r string) {
			write(t, r, "etc/pam.d/common-auth", "auth [success=2 default=ignore  pam_unix.so\nauth required pam_permit.so\n")
		}, []string{"critical bad-line /etc/pam.d/common-auth:1", "critical content-changed /etc/pam.d/common-auth:0"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			root := copyTree(t, "../testdata/pamcheck/base")
			_, snap, _ := snapshotTree(t, root)
			tc.mutate(t, root)
			got := Check(NewSystem(root, testCfg), snap, testCfg)
			if strings.Join(summary(got), "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("findings:\n%s\nwant:\n%s\nfull: %+v", strings.Join(summary(got), "\n"), strings.Join(tc.want, "\n"), got)
			}
			if tc.in != "" && !strings.Contains(got[0].Message, tc.in) {
				t.Errorf("message %q does not say %q", got[0].Message, tc.in)
			}
			for _, f := range got {
				if f.Fix == "" || len(f.Services) == 0 {
					t.Errorf("finding without fix or service: %+v", f)
				}
			}
		})
	}
}

// TestLeap15 reproduces the seed story: an upgrade deletes imap and smtp
// without a backup; restore must bring the system back to a clean check.
func TestLeap15RemovalAndRestore(t *testing.T) {
	root := copyTree(t, "../testdata/pamcheck/base")
	os.RemoveAll(filepath.Join(root, "usr/lib/pam.d")) // Leap 15 ships no vendor imap file
	sys, snap, state := snapshotTree(t, root)
	remove(t, root, "etc/pam.d/imap")
	remove(t, root, "etc/pam.d/smtp")

	got := Check(NewSystem(root, testCfg), snap, testCfg)
	want := []string{"critical service-removed /etc/pam.d/imap:0", "critical service-removed /etc/pam.d/smtp:0"}
	if strings.Join(summary(got), "\n") != strings.Join(want, "\n") {
		t.Fatalf("findings %v, want %v", summary(got), want)
	}

	dry, err := Restore(sys, snap, RestoreOptions{DryRun: true, StateDir: state, Now: time.Now()})
	if err != nil || len(dry) != 2 {
		t.Fatalf("dry run: %v %v", dry, err)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/pam.d/imap")); err == nil {
		t.Fatal("dry run wrote a file")
	}
	acts, err := Restore(NewSystem(root, testCfg), snap, RestoreOptions{Services: []string{"imap", "smtp"}, StateDir: state, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if len(acts) != 2 || acts[0].What != "restored" || acts[1].What != "restored" {
		t.Fatalf("actions %v", acts)
	}
	if got := Check(NewSystem(root, testCfg), snap, testCfg); len(got) != 0 {
		t.Fatalf("after restore: %v", summary(got))
	}
}

func TestRestoreKeepsChangedFileAside(t *testing.T) {
	root := copyTree(t, "../testdata/pamcheck/base")
	_, snap, state := snapshotTree(t, root)
	write(t, root, "etc/pam.d/smtp", "auth required pam_permit.so\n")
	acts, err := Restore(NewSystem(root, testCfg), snap, RestoreOptions{Services: []string{"smtp"}, StateDir: state, Now: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}
	if len(acts) != 1 || acts[0].What != "replaced" || acts[0].Aside != "/etc/pam.d/smtp.pamcheck-20231114T221320" {
		t.Fatalf("actions %+v", acts)
	}
	aside, err := os.ReadFile(filepath.Join(root, acts[0].Aside))
	if err != nil || string(aside) != "auth required pam_permit.so\n" {
		t.Fatalf("aside copy: %q %v", aside, err)
	}
	if got := Check(NewSystem(root, testCfg), snap, testCfg); len(got) != 0 {
		t.Fatalf("after restore: %v", summary(got))
	}
}

func TestRestoreRefusesTamperedCopy(t *testing.T) {
	root := copyTree(t, "../testdata/pamcheck/base")
	_, snap, state := snapshotTree(t, root)
	remove(t, root, "etc/pam.d/imap")
	rec := snap.Files["/etc/pam.d/imap"]
	write(t, root, filepath.Join(testCfg.StateDir, rec.Copy), "auth sufficient pam_permit.so\n")
	if _, err := Restore(NewSystem(root, testCfg), snap, RestoreOptions{Services: []string{"imap"}, StateDir: state, Now: time.Now()}); err == nil {
		t.Fatal("restore wrote a copy whose hash does not match")
	}
	if _, err := os.Stat(filepath.Join(root, "etc/pam.d/imap")); err == nil {
		t.Fatal("tampered copy was written")
	}
}

func TestRulesWithoutSnapshot(t *testing.T) {
	root := copyTree(t, "../testdata/pamcheck/base")
	cfg := testCfg
	cfg.Rules = []Rule{
		{Service: "imap", Type: TypeAuth, RequireAnyModule: []string{"pam_sss.so", "pam_ldap.so"}},
		{Service: "pop3", Type: TypeAuth, RequireAnyModule: []string{"pam_ldap.so"}},
		{Service: "sieve", Type: TypeAuth, RequireAnyModule: []string{"pam_sss.so"}},
		{Service: "smtp", Type: TypeAuth, ForbidModules: []string{"pam_unix.so"}},
	}
	got := Check(NewSystem(root, cfg), nil, cfg)
	want := []string{
		"critical rule-module /etc/pam.d/pop3:0",
		"critical rule-module /etc/pam.d/smtp:3",
		"critical rule-no-file :0",
	}
	if strings.Join(summary(got), "\n") != strings.Join(want, "\n") {
		t.Fatalf("findings:\n%s\nwant:\n%s", strings.Join(summary(got), "\n"), strings.Join(want, "\n"))
	}
	// The LDAP module's .so vanishing breaks the imap rule too.
	remove(t, root, "lib/security/pam_sss.so")
	found := false
	for _, f := range Check(NewSystem(root, cfg), nil, cfg) {
		if f.Code == CodeRuleModule && f.Path == "/etc/pam.d/imap" {
			found = true
		}
	}
	if !found {
		t.Fatal("rule did not notice pam_sss.so is gone")
	}
}
