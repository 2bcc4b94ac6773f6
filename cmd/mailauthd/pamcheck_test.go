package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

// The package-manager hooks run "mailauthd pamcheck check"; tests point them
// at this test binary, which acts as mailauthd when this variable is set.
func init() {
	if os.Getenv("MAILAUTHD_TEST_EXEC") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
}

func copyFixture(t *testing.T) string {
	t.Helper()
	src := "../../testdata/pamcheck/base"
	dst := t.TempDir()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dst, rel), data, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg := "pamcheck:\n  services: [imap, smtp, pop3]\n"
	if err := os.WriteFile(filepath.Join(dst, "mailauthd.yaml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return dst
}

func pc(t *testing.T, root string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	full := append([]string{"pamcheck", args[0], "--root", root, "--config", filepath.Join(root, "mailauthd.yaml")}, args[1:]...)
	code := run(full, &out, &errb)
	return code, out.String(), errb.String()
}

func TestPamcheckCLI(t *testing.T) {
	root := copyFixture(t)
	if code, out, errs := pc(t, root, "check"); code != pcClean || !strings.Contains(out, "no snapshot") {
		t.Fatalf("check without snapshot: %d %q %q", code, out, errs)
	}
	if code, out, errs := pc(t, root, "snapshot"); code != pcClean || !strings.Contains(out, "4 services (4 with their own file)") {
		t.Fatalf("snapshot: %d %q %q", code, out, errs)
	}
	if code, out, _ := pc(t, root, "check"); code != pcClean || !strings.Contains(out, "ok: no findings") {
		t.Fatalf("clean check: %d %q", code, out)
	}
	os.Remove(filepath.Join(root, "etc/pam.d/smtp"))
	os.WriteFile(filepath.Join(root, "etc/pam.d/imap.rpmsave"), []byte("x\n"), 0o644)

	code, out, _ := pc(t, root, "check", "--json")
	var res struct {
		Snapshot bool
		Worst    string
		Exit     int
		Findings []struct{ Severity, Code, Path, Message, Fix string }
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("json: %v\n%s", err, out)
	}
	if code != pcCritical || res.Exit != pcCritical || res.Worst != "critical" || !res.Snapshot || len(res.Findings) != 2 ||
		res.Findings[0].Code != "service-removed" || res.Findings[1].Code != "leftover" || res.Findings[1].Severity != "warning" {
		t.Fatalf("json check: code %d %+v", code, res)
	}
	code, out, _ = pc(t, root, "check")
	if code != pcCritical || !strings.Contains(out, "CRITICAL service-removed") || !strings.Contains(out, "fix: mailauthd pamcheck restore smtp") {
		t.Fatalf("text check: %d\n%s", code, out)
	}
	code, out, _ = pc(t, root, "restore", "--dry-run", "smtp")
	if code != pcClean || !strings.Contains(out, "would: /etc/pam.d/smtp: was missing") {
		t.Fatalf("dry run: %d %q", code, out)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/pam.d/smtp")); err == nil {
		t.Fatal("dry run restored a file")
	}
	if code, out, _ = pc(t, root, "restore", "smtp"); code != pcClean || !strings.Contains(out, "/etc/pam.d/smtp: was missing, put back") {
		t.Fatalf("restore: %d %q", code, out)
	}
	os.Remove(filepath.Join(root, "etc/pam.d/imap.rpmsave"))
	if code, out, _ = pc(t, root, "check"); code != pcClean {
		t.Fatalf("after restore: %d %q", code, out)
	}
	// warning only: exit 1
	os.WriteFile(filepath.Join(root, "etc/pam.d/smtp.rpmsave"), []byte("x\n"), 0o644)
	if code, _, _ = pc(t, root, "check"); code != pcWarning {
		t.Fatalf("warning exit %d", code)
	}
	// a usage error exits 2 (every command does); configuration errors 3
	if code, _, _ = pc(t, root, "check", "--bogus"); code != exitUsage {
		t.Fatalf("bad flag exit %d", code)
	}
	if code, _, _ = pc(t, root, "restore", "nosuchservice"); code != pcError {
		t.Fatalf("unknown service exit %d", code)
	}
	os.WriteFile(filepath.Join(root, "mailauthd.yaml"), []byte("pamcheck:\n  servces: [imap]\n"), 0o600)
	if code, _, errs := pc(t, root, "check"); code != pcError || !strings.Contains(errs, "servces") {
		t.Fatalf("config typo: %d %q", code, errs)
	}
}

// hookEnv makes a hook's "mailauthd" this test binary, checking root.
func hookEnv(t *testing.T, root string) []string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return append(os.Environ(), "MAILAUTHD_TEST_EXEC=1", "MAILAUTHD="+self,
		"MAILAUTHD_PAMCHECK_ROOT="+root, "MAILAUTHD_CONFIG="+filepath.Join(root, "mailauthd.yaml"))
}

// TestAptHook installs the hook into a scratch apt configuration, lets
// apt-config extract DPkg::Post-Invoke, and runs each command the way apt
// does (sh -c).
func TestAptHook(t *testing.T) {
	peertest.NeedFile(t, "apt-config")
	dir := t.TempDir()
	parts := filepath.Join(dir, "apt.conf.d")
	os.Mkdir(parts, 0o755)
	hook, err := os.ReadFile("../../packaging/pamcheck/apt/50mailauthd-pamcheck")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(parts, "50mailauthd-pamcheck"), hook, 0o644)
	conf := filepath.Join(dir, "apt.conf")
	os.WriteFile(conf, []byte(fmt.Sprintf("Dir::Etc::parts %q;\nDir::Etc::main \"/dev/null\";\n", parts)), 0o644)
	cmd := exec.Command("apt-config", "dump", "DPkg::Post-Invoke")
	cmd.Env = append(os.Environ(), "APT_CONFIG="+conf)
	dump, err := cmd.Output()
	if err != nil {
		t.Fatalf("apt-config: %v", err)
	}
	var lines []string
	for _, l := range strings.Split(string(dump), "\n") {
		if v, ok := strings.CutPrefix(l, `DPkg::Post-Invoke:: "`); ok {
			lines = append(lines, strings.TrimSuffix(v, `";`))
		}
	}
	if len(lines) != 1 || !strings.Contains(lines[0], "pamcheck check") {
		t.Fatalf("apt sees Post-Invoke %q", dump)
	}
	root := copyFixture(t)
	if code, _, errs := pc(t, root, "snapshot"); code != 0 {
		t.Fatal(errs)
	}
	runHook := func() (int, string) {
		c := exec.Command("/bin/sh", "-c", lines[0])
		c.Env = hookEnv(t, root)
		out, _ := c.CombinedOutput()
		return c.ProcessState.ExitCode(), string(out)
	}
	if code, out := runHook(); code != 0 || strings.Contains(out, "service-removed") {
		t.Fatalf("clean tree: %d %q", code, out)
	}
	os.WriteFile(filepath.Join(root, "etc/pam.d/pop3.dpkg-old"), []byte("x\n"), 0o644)
	if code, out := runHook(); code != 0 || !strings.Contains(out, "WARNING  leftover") {
		t.Fatalf("warning must not fail apt but must be shown: %d %q", code, out)
	}
	os.Remove(filepath.Join(root, "etc/pam.d/imap"))
	os.Remove(filepath.Join(root, "usr/lib/pam.d/imap"))
	if code, out := runHook(); code == 0 || !strings.Contains(out, "CRITICAL service-removed") {
		t.Fatalf("removed imap: exit %d %q", code, out)
	}
}

// TestZyppCommitPlugin drives the libzypp commit plugin through a commit the
// way libzypp does: frames on stdin, one reply frame per frame.
func TestZyppCommitPlugin(t *testing.T) {
	root := copyFixture(t)
	if code, _, errs := pc(t, root, "snapshot"); code != 0 {
		t.Fatal(errs)
	}
	os.Remove(filepath.Join(root, "etc/pam.d/smtp")) // what the upgrade did

	cmd := exec.Command("bash", "../../packaging/pamcheck/zypp/mailauthd-pamcheck")
	cmd.Env = hookEnv(t, root)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	in, _ := cmd.StdinPipe()
	outPipe, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	out := bufio.NewReader(outPipe)
	exchange := func(command, headers, body string) (string, map[string]string) {
		t.Helper()
		fmt.Fprintf(in, "%s\n%s\n%s\x00", command, headers, body)
		return readFrame(t, out)
	}
	for _, f := range []struct{ cmd, headers, body, want string }{
		{"PLUGINBEGIN", "userdata:test\n", "", "ACK"},
		{"COMMITBEGIN", "", `{"TransactionStepList":[]}`, "ACK"},
		{"COMMITEND", "", `{"TransactionStepList":[]}`, "ACK"},
		{"SOMETHINGNEW", "", "", "_ENOMETHOD"},
		{"PLUGINEND", "", "", "ACK"},
	} {
		if got, _ := exchange(f.cmd, f.headers, f.body); got != f.want {
			t.Fatalf("%s answered %q, want %q (stderr %s)", f.cmd, got, f.want, stderr.String())
		}
	}
	got, hdr := exchange("_DISCONNECT", "", "")
	if got != "ACK" || hdr["exit"] != "2" {
		t.Fatalf("_DISCONNECT: %q %v", got, hdr)
	}
	in.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		t.Fatal("plugin did not exit after _DISCONNECT")
	}
	if cmd.ProcessState.ExitCode() != 2 || !strings.Contains(stderr.String(), "CRITICAL service-removed") {
		t.Fatalf("exit %d, stderr %q", cmd.ProcessState.ExitCode(), stderr.String())
	}
}

// readFrame reads one libzypp plugin frame: command, headers, empty line, body, NUL.
func readFrame(t *testing.T, r *bufio.Reader) (string, map[string]string) {
	t.Helper()
	cmd, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read frame: %v", err)
	}
	hdr := map[string]string{}
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read header: %v", err)
		}
		if l == "\n" {
			break
		}
		k, v, ok := strings.Cut(strings.TrimSuffix(l, "\n"), ":")
		if !ok {
			t.Fatalf("header without colon: %q", l)
		}
		hdr[k] = v
	}
	if _, err := r.ReadString(0); err != nil && err != io.EOF {
		t.Fatalf("read body: %v", err)
	}
	return strings.TrimSuffix(cmd, "\n"), hdr
}
