package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/mailauthd/mailauthd/doctor"
)

// doctorRoot writes files (system path -> content) below a fresh root.
func doctorRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, body := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const doctorYAML = "listen:\n  saslauthd:\n    - {path: /run/mailauthd/mux}\n  control: {path: \"\"}\nldap:\n  urls: [ldaps://ldap.corp.test]\n  base: ou=people,dc=corp,dc=test\n"

func runDoctor(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"doctor"}, args...), &out, &errb)
	return code, out.String(), errb.String()
}

func TestDoctorExitCodes(t *testing.T) {
	clean := doctorRoot(t, map[string]string{"/etc/mailauthd/mailauthd.yaml": doctorYAML})
	placeholder := doctorRoot(t, map[string]string{"/etc/mailauthd/mailauthd.yaml": strings.Replace(doctorYAML, "dc=corp,dc=test", "dc=example,dc=org", 1)})
	empty := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		code int
		out  string
	}{
		{"info only", []string{"--root", clean, "--offline", "--only", "ldap"}, doctorClean, "ldap-skipped"},
		{"warning", []string{"--root", placeholder, "--offline", "--only", "mailauthd", "--no-systemd"}, doctorWarning, "placeholder"},
		{"critical", []string{"--root", empty, "--offline", "--only", "mailauthd"}, doctorCritical, "config-missing"},
		{"bad root", []string{"--root", filepath.Join(empty, "nope")}, doctorError, ""},
		{"bad area", []string{"--only", "postfix,exim"}, exitUsage, ""},
		{"argument", []string{"extra"}, exitUsage, ""},
		{"bad upgrade mode", []string{"--upgrade", "yum"}, exitUsage, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errs := runDoctor(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out, errs)
			}
			if !strings.Contains(out, tc.out) {
				t.Errorf("output lacks %q:\n%s", tc.out, out)
			}
		})
	}
}

func TestDoctorTextAndJSON(t *testing.T) {
	root := doctorRoot(t, map[string]string{"/etc/mailauthd/mailauthd.yaml": strings.Replace(doctorYAML, "dc=corp,dc=test", "dc=example,dc=org", 1)})
	code, out, _ := runDoctor(t, "--root", root, "--offline", "--no-systemd", "--only", "mailauthd,ldap")
	if code != doctorWarning {
		t.Fatalf("exit %d\n%s", code, out)
	}
	for _, s := range []string{
		"WARNING  mailauthd placeholder",
		"/etc/mailauthd/mailauthd.yaml\n         values from the shipped sample are still there: ldap.base ou=people,dc=example,dc=org",
		"\n         fix: replace them",
		"INFO     ldap      ldap-skipped",
		"doctor: 0 critical, 2 warning, 2 info\n",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("text output lacks %q:\n%s", s, out)
		}
	}
	_, quiet, _ := runDoctor(t, "--root", root, "--offline", "--no-systemd", "--only", "mailauthd,ldap", "--quiet")
	if strings.Contains(quiet, "INFO") {
		t.Errorf("--quiet printed info:\n%s", quiet)
	}

	code, out, _ = runDoctor(t, "--root", root, "--offline", "--no-systemd", "--only", "mailauthd,ldap", "--json")
	var got struct {
		Worst    string           `json:"worst"`
		Exit     int              `json:"exit"`
		Findings []doctor.Finding `json:"findings"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got.Worst != "warning" || got.Exit != 1 || code != 1 {
		t.Errorf("worst %q exit %d code %d", got.Worst, got.Exit, code)
	}
	var raw map[string][]map[string]any
	json.Unmarshal([]byte(out), &raw)
	f := raw["findings"][0]
	for _, k := range []string{"severity", "area", "code", "path", "message", "fix"} {
		if _, ok := f[k]; !ok {
			t.Errorf("JSON finding lacks %q: %v", k, f)
		}
	}
	if f["severity"] != "warning" {
		t.Errorf("severity %v: written as a name", f["severity"])
	}
}

// dovecotCheckpasswordRoot is a tree whose Dovecot uses checkpassword.
func dovecotCheckpasswordRoot(t *testing.T, yamlExtra string) string {
	return doctorRoot(t, map[string]string{
		"/etc/mailauthd/mailauthd.yaml": doctorYAML + yamlExtra,
		"/etc/dovecot/dovecot.conf":     "passdb {\n  driver = checkpassword\n  args = /usr/bin/mailauthd checkpassword\n}\n",
	})
}

const aptStream = "VERSION 3\nAPT::Architecture=amd64\n\n" +
	"dovecot-core 1:2.3.19.1+dfsg1-2.1+deb12u7 amd64 none < 1:2.4.1+dfsg1-6 amd64 none /var/cache/apt/archives/dovecot-core_1%3a2.4.1+dfsg1-6_amd64.deb\n" +
	"dovecot-core 1:2.3.19.1+dfsg1-2.1+deb12u7 amd64 none < 1:2.4.1+dfsg1-6 amd64 none **CONFIGURE**\n"

func runUpgrade(t *testing.T, root, mode, stdin string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	o := doctor.Options{Root: root, Config: doctor.DefaultConfigPath, NoSystemd: true}
	code := doctorUpgrade(context.Background(), o, mode, strings.NewReader(stdin), &out, &errb, false, false)
	return code, out.String(), errb.String()
}

func TestDoctorUpgradeApt(t *testing.T) {
	t.Setenv("APT_HOOK_INFO_FD", "")
	t.Run("warns, lets it run", func(t *testing.T) {
		code, _, errs := runUpgrade(t, dovecotCheckpasswordRoot(t, ""), "apt", aptStream)
		if code != doctorClean {
			t.Fatalf("exit %d, want 0 (warn is the default)\n%s", code, errs)
		}
		for _, s := range []string{"THIS TRANSACTION WOULD BREAK MAIL AUTHENTICATION", "CRITICAL upgrade", "upgrade-dovecot-checkpassword",
			"/etc/dovecot/dovecot.conf:1", "letting it run; to stop such transactions set doctor.upgrades: refuse"} {
			if !strings.Contains(errs, s) {
				t.Errorf("stderr lacks %q:\n%s", s, errs)
			}
		}
	})
	t.Run("refuses when opted in", func(t *testing.T) {
		code, _, errs := runUpgrade(t, dovecotCheckpasswordRoot(t, "doctor:\n  upgrades: refuse\n"), "apt", aptStream)
		if code != doctorCritical {
			t.Fatalf("exit %d, want 2\n%s", code, errs)
		}
		if !strings.Contains(errs, "refusing (doctor.upgrades: refuse") {
			t.Errorf("stderr:\n%s", errs)
		}
	})
	t.Run("nothing to say", func(t *testing.T) {
		stream := "VERSION 3\n\nvim - - none < 2:9.0 amd64 none /x.deb\n"
		code, out, errs := runUpgrade(t, dovecotCheckpasswordRoot(t, "doctor:\n  upgrades: refuse\n"), "apt", stream)
		if code != doctorClean || out != "" || errs != "" {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
		}
	})
	t.Run("an unreadable stream never blocks apt", func(t *testing.T) {
		code, _, errs := runUpgrade(t, dovecotCheckpasswordRoot(t, "doctor:\n  upgrades: refuse\n"), "apt", "/var/cache/apt/archives/x.deb\n")
		if code != doctorClean || !strings.Contains(errs, "not checking it") {
			t.Fatalf("exit %d\n%s", code, errs)
		}
	})
	t.Run("list form", func(t *testing.T) {
		code, _, errs := runUpgrade(t, dovecotCheckpasswordRoot(t, "doctor:\n  upgrades: refuse\n"), "list", "dovecot 2.3.21 2.4.1\n")
		if code != doctorCritical || !strings.Contains(errs, "upgrade-dovecot-checkpassword") {
			t.Fatalf("exit %d\n%s", code, errs)
		}
	})
	t.Run("info fd", func(t *testing.T) {
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		go func() { pw.WriteString(aptStream); pw.Close() }()
		defer pr.Close()
		// The doctor closes the descriptor it is given, as apt's hook
		// does: hand it a copy.
		fd, err := syscall.Dup(int(pr.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv("APT_HOOK_INFO_FD", strconv.Itoa(fd))
		code, _, errs := runUpgrade(t, dovecotCheckpasswordRoot(t, "doctor:\n  upgrades: refuse\n"), "apt", "")
		if code != doctorCritical {
			t.Fatalf("exit %d: the stream on APT_HOOK_INFO_FD was not read\n%s", code, errs)
		}
	})
}

// The zypp commit plugin runs the doctor after the commit, too; a refusal
// opted into shows in the exit header of its last ACK.
func TestZyppPluginRunsDoctor(t *testing.T) {
	root := doctorRoot(t, map[string]string{
		"/etc/mailauthd/mailauthd.yaml": doctorYAML + "doctor:\n  upgrades: refuse\n",
		"/etc/dovecot/dovecot.conf":     "dovecot_config_version = 2.4.1\npassdb checkpassword {\n  args = /usr/bin/mailauthd checkpassword\n}\n",
		"/etc/pam.d/other":              "auth required pam_deny.so\naccount required pam_deny.so\n",
		"/lib/security/pam_deny.so":     "",
	})
	cmd := exec.Command("bash", "../../packaging/pamcheck/zypp/mailauthd-pamcheck")
	cmd.Env = append(hookEnv(t, root), "MAILAUTHD_DOCTOR_ROOT="+root, "MAILAUTHD_CONFIG=/etc/mailauthd/mailauthd.yaml")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdin = strings.NewReader("PLUGINBEGIN\n\n\x00COMMITBEGIN\n\n{}\x00COMMITEND\n\n{}\x00_DISCONNECT\n\n\x00")
	out, _ := cmd.Output()
	if !strings.Contains(string(out), "exit:2") {
		t.Errorf("plugin replies %q, want exit:2 in the last ACK\nstderr:\n%s", out, stderr.String())
	}
	if !strings.Contains(stderr.String(), "dovecot-checkpassword-removed") {
		t.Errorf("stderr lacks the doctor's finding:\n%s", stderr.String())
	}
}
