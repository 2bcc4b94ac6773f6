package packaging

// SLOW: the tests in this file build the Debian package (dpkg-buildpackage,
// a Go build, lintian: about a minute), install it on this machine, check
// what it put where, and purge it again. They need root and skip without
// it (fail under CI). Nothing they install stays: the package is purged in
// t.Cleanup even when a check fails, and they refuse to run when a
// mailauthd package is already installed. Run alone with
//
//	go test -count=1 -run TestDeb -v ./packaging/

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

func needRoot(t *testing.T, why string) {
	t.Helper()
	peertest.NeedRoot(t, why)
}

func runCmd(t *testing.T, timeout time.Duration, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func installed(pkg string) bool {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", pkg).Output()
	return err == nil && strings.HasPrefix(string(out), "ii")
}

// present: dpkg knows the package in any state but gone (half-configured,
// removed with its configuration left, ...).
func present(pkg string) bool {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${db:Status-Abbrev}", pkg).Output()
	s := string(out)
	return err == nil && !strings.HasPrefix(s, "un") && !strings.HasPrefix(s, "pn")
}

// apt-get waits for the dpkg lock (others may run apt on this machine);
// plain dpkg would fail at once.
var aptEnv = []string{"DEBIAN_FRONTEND=noninteractive"}

func aptGet(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runCmd(t, 12*time.Minute, aptEnv, "apt-get", append([]string{"-o", "DPkg::Lock::Timeout=600", "-y", "--no-install-recommends"}, args...)...)
	if err != nil {
		t.Fatalf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func TestDeb(t *testing.T) {
	needRoot(t, "installing the package")
	for _, tool := range []string{"dpkg-buildpackage", "dh", "go-md2man", "lintian", "apt-get"} {
		peertest.NeedFile(t, tool)
	}
	if present("mailauthd") {
		t.Skip("a mailauthd package is on this machine; not touching it")
	}

	// Build: make deb runs packaging/deb/build.sh, which fails on lintian errors.
	out, err := runCmd(t, 8*time.Minute, nil, "make", "-C", "..", "--no-print-directory", "deb")
	if err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	deb := lines[len(lines)-1]
	if !strings.HasSuffix(deb, ".deb") {
		t.Fatalf("make deb printed no package path:\n%s", out)
	}
	t.Cleanup(func() { os.Remove(deb) })
	version := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(deb), "mailauthd_"), "_"+debArch()+".deb")

	t.Run("lintian", func(t *testing.T) {
		// Overridden tags (debian/mailauthd.lintian-overrides, each with its
		// reason) are shown but do not count.
		out, _ := runCmd(t, 5*time.Minute, nil, "lintian", "-I", "--show-overrides", deb)
		t.Logf("lintian -I --show-overrides:\n%s", out)
		if out, err := runCmd(t, 5*time.Minute, nil, "lintian", "--fail-on", "error,warning", deb); err != nil {
			t.Errorf("lintian --fail-on error,warning: %v\n%s", err, out)
		}
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "E: ") || strings.HasPrefix(l, "W: ") {
				t.Errorf("lintian: %s", l)
			}
		}
	})
	t.Run("metadata", func(t *testing.T) {
		info, err := runCmd(t, time.Minute, nil, "dpkg-deb", "-f", deb, "Version", "Depends")
		if err != nil {
			t.Fatal(err)
		}
		// Depends from dpkg-shlibdeps: versioned, from the binary's NEEDED.
		for _, re := range []string{`Version: ` + regexp.QuoteMeta(version), `libc6 \(>= [0-9.]+\)`, `libpam0g \(>= [0-9.]+\)`, `systemd \| systemd-standalone-sysusers`} {
			if !regexp.MustCompile(re).MatchString(info) {
				t.Errorf("control lacks %s:\n%s", re, info)
			}
		}
		contents, _ := runCmd(t, time.Minute, nil, "dpkg-deb", "-c", deb)
		for _, f := range []string{"./usr/share/doc/mailauthd/copyright", "./usr/share/doc/mailauthd/changelog.gz",
			"./usr/share/man/man8/mailauthd.8.gz", "./usr/share/man/man5/mailauthd.yaml.5.gz",
			"./usr/share/bash-completion/completions/mailauthd", "./usr/lib/sysusers.d/mailauthd.conf",
			"./usr/lib/tmpfiles.d/mailauthd.conf", "./etc/apt/apt.conf.d/50mailauthd-doctor", "./usr/share/doc/mailauthd/doctor.md.gz"} {
			if !strings.Contains(contents, f+"\n") {
				t.Errorf("package lacks %s", f)
			}
		}
		if !regexp.MustCompile(`-rw-r--r-- root/root .* \./etc/mailauthd/mailauthd\.yaml`).MatchString(contents) {
			t.Errorf("mailauthd.yaml is not root:root 0644 in the package:\n%s", grepLines(contents, "mailauthd.yaml"))
		}
	})

	// Install, with the purge registered first so nothing stays.
	t.Cleanup(func() {
		if present("mailauthd") {
			out, err := runCmd(t, 12*time.Minute, aptEnv, "apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "purge", "mailauthd")
			if err != nil {
				t.Errorf("cleanup: apt-get purge mailauthd: %v\n%s", err, out)
			}
		}
	})
	abs, _ := filepath.Abs(deb)
	aptGet(t, "install", abs)
	if !installed("mailauthd") {
		t.Fatal("not installed after apt-get install")
	}

	t.Run("files and modes", func(t *testing.T) {
		for p, want := range map[string]string{
			"/usr/bin/mailauthd":                             "root:root 0755 file",
			"/etc/mailauthd/mailauthd.yaml":                  "root:root 0644 file",
			"/etc/mailauthd/private":                         "root:mailauthd 0750 dir",
			"/var/lib/mailauthd/pamcheck":                    "root:root 0700 dir",
			"/lib/systemd/system/mailauthd.service":          "root:root 0644 file",
			"/lib/systemd/system/mailauthd.socket":           "root:root 0644 file",
			"/lib/systemd/system/mailauthd-control.socket":   "root:root 0644 file",
			"/lib/systemd/system/mailauthd-pamcheck.service": "root:root 0644 file",
			"/etc/apt/apt.conf.d/50mailauthd-doctor":         "root:root 0644 file",
			"/etc/apt/apt.conf.d/50mailauthd-pamcheck":       "root:root 0644 file",
		} {
			if got := describe(p); got != want {
				t.Errorf("%s: %s, want %s", p, got, want)
			}
		}
		if out, err := runCmd(t, time.Minute, nil, "dpkg-statoverride", "--list", "/etc/mailauthd/private"); err != nil || !strings.Contains(out, "root mailauthd 750 /etc/mailauthd/private") {
			t.Errorf("no statoverride for /etc/mailauthd/private: %v %s", err, out)
		}
		if _, err := user.Lookup("mailauthd"); err != nil {
			t.Errorf("user mailauthd: %v", err)
		}
		f, err := elf.Open("/usr/bin/mailauthd")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if f.Type != elf.ET_DYN {
			t.Errorf("/usr/bin/mailauthd is %v, not a PIE", f.Type)
		}
		for _, s := range []string{"postinst", "prerm", "postrm"} {
			b, err := os.ReadFile("/var/lib/dpkg/info/mailauthd." + s)
			if err != nil {
				t.Errorf("maintainer script %s: %v", s, err)
				continue
			}
			for _, w := range map[string][]string{
				"postinst": {"systemd-sysusers", "deb-systemd-helper", "systemd-tmpfiles", "dpkg-statoverride --update --add root mailauthd 0750 /etc/mailauthd/private"},
				"prerm":    {"deb-systemd-invoke stop"},
				"postrm":   {"deb-systemd-helper purge", "dpkg-statoverride --remove /etc/mailauthd/private", "userdel mailauthd"},
			}[s] {
				if !bytes.Contains(b, []byte(w)) {
					t.Errorf("%s lacks %q", s, w)
				}
			}
		}
	})
	t.Run("the configuration is readable by dovecot", func(t *testing.T) {
		// What "mailauthd checkpassword" does first, as Dovecot's auth user.
		u, err := user.Lookup("dovecot")
		if err != nil {
			t.Skip("no dovecot user")
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cmd := exec.Command("/usr/bin/mailauthd", "serve", "--check", "--config", "/etc/mailauthd/mailauthd.yaml")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("as dovecot: mailauthd serve --check: %v\n%s", err, out)
		}
	})
	t.Run("units", func(t *testing.T) {
		svc, _ := os.ReadFile("/lib/systemd/system/mailauthd.service")
		if regexp.MustCompile(`(?m)^RuntimeDirectory`).Match(svc) {
			t.Error("mailauthd.service has RuntimeDirectory=: systemd would chown the sockets' directory")
		}
		units, _ := filepath.Glob("/lib/systemd/system/mailauthd*")
		out, err := runCmd(t, time.Minute, []string{"SYSTEMD_LOG_LEVEL=warning"}, "systemd-analyze", append([]string{"verify", "--man=no"}, units...)...)
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify (installed): %v\n%s", err, out)
		}
		// The installed doctor on the installed units.
		out, _ = runCmd(t, time.Minute, nil, "/usr/bin/mailauthd", "doctor", "--only", "mailauthd", "--offline")
		for _, code := range []string{"runtime-directory-chown", "daemon-user-missing", "socket-group-missing", "config-invalid"} {
			if strings.Contains(out, code) {
				t.Errorf("doctor on the installed package: %s\n%s", code, out)
			}
		}
	})
	t.Run("reinstall (upgrade path of the maintainer scripts)", func(t *testing.T) {
		aptGet(t, "install", "--reinstall", abs)
		if got := describe("/etc/mailauthd/private"); got != "root:mailauthd 0750 dir" {
			t.Errorf("after reinstall: %s", got)
		}
	})

	// Purge removes everything it added.
	aptGet(t, "purge", "mailauthd")
	if present("mailauthd") {
		t.Fatal("still installed after purge")
	}
	for _, p := range []string{"/usr/bin/mailauthd", "/etc/mailauthd", "/var/lib/mailauthd", "/lib/systemd/system/mailauthd.service",
		"/etc/apt/apt.conf.d/50mailauthd-doctor", "/etc/apt/apt.conf.d/50mailauthd-pamcheck", "/usr/share/doc/mailauthd",
		"/usr/lib/sysusers.d/mailauthd.conf", "/usr/share/man/man8/mailauthd.8.gz"} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("%s is still there after purge", p)
		}
	}
	links, _ := filepath.Glob("/etc/systemd/system/*/mailauthd*")
	if len(links) > 0 {
		t.Errorf("unit links left after purge: %v", links)
	}
	if _, err := user.Lookup("mailauthd"); err == nil {
		t.Error("user mailauthd still exists after purge")
	}
	if _, err := user.LookupGroup("mailauthd"); err == nil {
		t.Error("group mailauthd still exists after purge")
	}
	if out, _ := runCmd(t, time.Minute, nil, "dpkg-statoverride", "--list", "/etc/mailauthd/private"); strings.TrimSpace(out) != "" {
		t.Errorf("statoverride left after purge: %s", out)
	}
}

func describe(p string) string {
	fi, err := os.Lstat(p)
	if err != nil {
		return err.Error()
	}
	st := fi.Sys().(*syscall.Stat_t)
	kind := "file"
	if fi.IsDir() {
		kind = "dir"
	}
	un, gn := strconv.Itoa(int(st.Uid)), strconv.Itoa(int(st.Gid))
	if u, err := user.LookupId(un); err == nil {
		un = u.Username
	}
	if g, err := user.LookupGroupId(gn); err == nil {
		gn = g.Name
	}
	return fmt.Sprintf("%s:%s %04o %s", un, gn, fi.Mode().Perm(), kind)
}

func debArch() string {
	out, err := exec.Command("dpkg", "--print-architecture").Output()
	if err != nil {
		return "amd64"
	}
	return strings.TrimSpace(string(out))
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
