package saslauthd

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Listen opens a saslauthd socket at path, ready for Server.Serve:
//
//   - the parent directory is created (0755) if missing; an existing one is
//     left alone, since it carries the access control (Debian: root:sasl 0710);
//   - an existing socket file is replaced only if it is a socket and nothing
//     answers on it (a stale leftover); a live socket or any other kind of
//     file is an error, never removed;
//   - the socket gets mode and, if group is not empty, that group (a name or
//     a numeric gid; an unknown group is an error).
//
// The socket is bound in a private temporary directory, given its mode and
// group there, then renamed into place, so no client ever sees it with the
// wrong permissions and a stale socket is replaced atomically. Closing the
// listener removes the socket file, unless another process has since put its
// own socket there.
func Listen(path string, mode os.FileMode, group string) (net.Listener, error) {
	gid := -1
	if group != "" {
		g, err := lookupGroup(group)
		if err != nil {
			return nil, err
		}
		gid = g
	}
	dir := filepath.Dir(path)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("saslauthd: create socket directory: %w", err)
		}
		// MkdirAll is subject to the umask; the directory must be reachable.
		if err := os.Chmod(dir, 0o755); err != nil {
			return nil, fmt.Errorf("saslauthd: socket directory: %w", err)
		}
	} else if err != nil {
		return nil, fmt.Errorf("saslauthd: socket directory: %w", err)
	}
	if err := checkStale(path); err != nil {
		return nil, err
	}

	tmpDir, err := os.MkdirTemp(dir, ".mailauthd-")
	if err != nil {
		return nil, fmt.Errorf("saslauthd: listen %s: %w", path, err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("saslauthd: listen %s: %w", path, err)
	}
	ul.SetUnlinkOnClose(false) // the bound name is the temporary one; see Close
	fail := func(err error) (net.Listener, error) {
		ul.Close()
		return nil, fmt.Errorf("saslauthd: listen %s: %w", path, err)
	}
	if err := os.Chmod(tmp, mode.Perm()); err != nil {
		return fail(err)
	}
	if gid >= 0 {
		if err := os.Lchown(tmp, -1, gid); err != nil {
			return fail(err)
		}
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &unixListener{UnixListener: ul, path: path, file: fi}, nil
}

// checkStale refuses anything at path but a socket nobody listens on, and
// removes that one. Only ECONNREFUSED proves nobody listens: a timeout, a
// full backlog or a permission error may well be a live daemon.
func checkStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("saslauthd: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("saslauthd: %s exists and is not a socket (%s): refusing to replace it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("saslauthd: %s is in use by a running server", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("saslauthd: %s: cannot tell whether a server is using it: %w", path, err)
	}
	// The rename in Listen replaces it atomically; nothing to remove here.
	return nil
}

func lookupGroup(group string) (int, error) {
	if gid, err := strconv.Atoi(group); err == nil {
		if gid < 0 {
			return 0, fmt.Errorf("saslauthd: invalid group id %q", group)
		}
		return gid, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, fmt.Errorf("saslauthd: socket group: %w", err)
	}
	gid, err := strconv.Atoi(g.Gid)
	if err != nil {
		return 0, fmt.Errorf("saslauthd: socket group %q has gid %q: %w", group, g.Gid, err)
	}
	return gid, nil
}

// unixListener reports the public path and removes it on Close.
type unixListener struct {
	*net.UnixListener
	path string
	file os.FileInfo
}

func (l *unixListener) Addr() net.Addr { return &net.UnixAddr{Name: l.path, Net: "unix"} }

func (l *unixListener) Close() error {
	err := l.UnixListener.Close()
	// Remove the file only while it is still ours: a newer instance may
	// already have renamed its own socket over it.
	if fi, lerr := os.Lstat(l.path); lerr == nil && os.SameFile(fi, l.file) {
		os.Remove(l.path)
	}
	return err
}
