package saslauthd

import (
	"errors"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// staleSocket leaves a socket file nobody listens on, as a crashed daemon does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("stale socket not left behind: %v", err)
	}
}

func TestListenCreatesDirAndSetsMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "saslauthd", "mux")
	l, err := Listen(path, 0o660, "")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want socket 0660", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil || di.Mode().Perm() != 0o755 {
		t.Fatalf("directory mode %v (%v), want 0755", di.Mode(), err)
	}
	if got := l.Addr().String(); got != path {
		t.Fatalf("Addr() = %q, want %q", got, path)
	}
	// No temporary directory left next to the socket.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("socket directory holds %d entries, want only the socket", len(entries))
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the new socket: %v", err)
	}
	c.Close()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("socket file left after Close: %v", err)
	}
}

func TestListenKeepsExistingDirMode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sasl")
	if err := os.Mkdir(dir, 0o710); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o710)
	l, err := Listen(filepath.Join(dir, "mux"), 0o777, "")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if di, _ := os.Stat(dir); di.Mode().Perm() != 0o710 {
		t.Fatalf("existing directory changed to %v", di.Mode())
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mux")
	staleSocket(t, path)
	l, err := Listen(path, 0o666, "")
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial after replacing: %v", err)
	}
	c.Close()
}

func TestListenRefuses(t *testing.T) {
	dir := t.TempDir()

	live := filepath.Join(dir, "live")
	l1, err := Listen(live, 0o666, "")
	if err != nil {
		t.Fatal(err)
	}
	defer l1.Close()
	if _, err := Listen(live, 0o666, ""); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second Listen on a live socket: %v", err)
	}
	if c, err := net.Dial("unix", live); err != nil {
		t.Fatalf("live socket damaged by the refused Listen: %v", err)
	} else {
		c.Close()
	}

	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep me"), 0o600)
	if _, err := Listen(file, 0o666, ""); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Fatal("regular file was replaced")
	}

	sub := filepath.Join(dir, "subdir")
	os.Mkdir(sub, 0o755)
	if _, err := Listen(sub, 0o666, ""); err == nil {
		t.Fatal("Listen over a directory succeeded")
	}

	link := filepath.Join(dir, "link")
	os.Symlink(live, link)
	if _, err := Listen(link, 0o666, ""); err == nil {
		t.Fatal("Listen over a symlink succeeded")
	}

	if _, err := Listen(filepath.Join(dir, "g"), 0o666, "no-such-group-mailauthd"); err == nil {
		t.Fatal("unknown group accepted")
	}
	if _, err := os.Lstat(filepath.Join(dir, "g")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("socket created despite the group error")
	}
}

func TestListenClosePreservesForeignSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mux")
	l, err := Listen(path, 0o666, "")
	if err != nil {
		t.Fatal(err)
	}
	// Another instance took over the path (it found ours stale or was
	// started by hand): closing ours must not delete theirs.
	os.Remove(path)
	staleSocket(t, path)
	l.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("foreign socket removed by Close: %v", err)
	}
}

func TestListenGroup(t *testing.T) {
	// A group this process may chown to other than its own primary group.
	gids, _ := os.Getgroups()
	want := -1
	if os.Geteuid() == 0 {
		if g, err := user.LookupGroup("daemon"); err == nil {
			want, _ = strconv.Atoi(g.Gid)
		}
	}
	for _, g := range gids {
		if want < 0 && g != os.Getegid() {
			want = g
		}
	}
	if want < 0 || want == os.Getegid() {
		t.Skip("no second group to test chgrp with")
	}
	g, err := user.LookupGroupId(strconv.Itoa(want))
	if err != nil {
		t.Skipf("gid %d has no name: %v", want, err)
	}
	for _, spec := range []string{g.Name, g.Gid} {
		t.Run(spec, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "mux")
			l, err := Listen(path, 0o660, spec)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			if gid := int(fi.Sys().(*syscall.Stat_t).Gid); gid != want {
				t.Fatalf("socket gid %d, want %d", gid, want)
			}
			if fi.Mode().Perm() != 0o660 {
				t.Fatalf("socket mode %v", fi.Mode())
			}
		})
	}
}
