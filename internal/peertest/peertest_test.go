package peertest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// recorder is a testing.TB whose Fatal and Skip are recorded, and end the
// calling goroutine as the real ones do.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper() {}
func (r *recorder) Fatal(args ...any) {
	r.fatal = fmt.Sprint(args...)
	runtime.Goexit()
}
func (r *recorder) Skip(args ...any) {
	r.skip = fmt.Sprint(args...)
	runtime.Goexit()
}

// run calls f with a recorder in its own goroutine, as the testing package
// runs a test, and returns what it recorded.
func run(t *testing.T, f func(testing.TB)) *recorder {
	r := &recorder{TB: t}
	done := make(chan struct{})
	go func() { defer close(done); f(r) }()
	<-done
	return r
}

func TestMissingFailsUnderCI(t *testing.T) {
	for _, ci := range []string{"", "true"} {
		t.Setenv("CI", ci)
		r := run(t, func(tb testing.TB) { Missing(tb, "%s not installed", "slapd") })
		got, other := r.skip, r.fatal
		if ci != "" {
			got, other = r.fatal, r.skip
		}
		if got != "slapd not installed" || other != "" {
			t.Errorf("CI=%q: skip %q, fatal %q", ci, r.skip, r.fatal)
		}
	}
}

func TestNeedFile(t *testing.T) {
	t.Setenv("CI", "true")
	if p := NeedFile(t, "/nonexistent/sh", "sh"); p == "" || p[0] != '/' {
		t.Errorf("NeedFile falls back to PATH: got %q", p)
	}
	r := run(t, func(tb testing.TB) { NeedFile(tb, "/nonexistent/a", "no-such-command-here") })
	if r.fatal == "" {
		t.Error("a missing file did not fail the test under CI")
	}
}

func TestSharedStartsOnceAndRemembersFailure(t *testing.T) {
	launches, stops := 0, 0
	sh := NewShared("peertest", func(testing.TB) {},
		func(dir string) (string, error) { launches++; return dir, nil },
		func(string) { stops++ })
	dir := sh.Get(t)
	if sh.Get(t) != dir || launches != 1 {
		t.Fatalf("two Gets: %d launches", launches)
	}
	sh.Close()
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) || stops != 1 {
		t.Errorf("Close: stops %d, dir: %v", stops, err)
	}

	failed := NewShared("peertest", func(testing.TB) {},
		func(string) (int, error) { launches++; return 0, errors.New("no start") },
		func(int) { t.Error("stopped an instance that never started") })
	for range 2 {
		if r := run(t, func(tb testing.TB) { failed.Get(tb) }); r.fatal != "no start" {
			t.Errorf("Get after a failed start: fatal %q", r.fatal)
		}
	}
	if launches != 2 {
		t.Errorf("a failed start was retried: %d launches", launches)
	}
	failed.Close()

	unused := NewShared("peertest", func(testing.TB) {},
		func(string) (int, error) { t.Error("launched after Close"); return 0, nil }, func(int) {})
	unused.Close()
	if r := run(t, func(tb testing.TB) { unused.Get(tb) }); r.fatal == "" {
		t.Error("Get after Close did not fail")
	}
}

func TestWaitStopped(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if err := WaitStopped(cmd.Process.Pid, 50*time.Millisecond); err == nil {
		t.Error("a running process counted as stopped")
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := WaitStopped(cmd.Process.Pid, 5*time.Second); err != nil {
		t.Error(err)
	}
}
