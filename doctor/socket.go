package doctor

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

type netDialer struct{ timeout time.Duration }

// dial connects to the Unix socket at path (a real path). A path too long
// for sun_path is reached through /proc/self/fd of its directory.
func (d *netDialer) dial(path string) (net.Conn, error) {
	if len(path) < 100 {
		return net.DialTimeout("unix", path, d.timeout)
	}
	dir, err := os.OpenFile(filepath.Dir(path), syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	return net.DialTimeout("unix", fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), filepath.Base(path)), d.timeout)
}

// socketState is what a peer finds at a socket path right now.
type socketState int

const (
	sockListening socketState = iota // something accepted a connection
	sockMissing                      // no such file
	sockNotSocket                    // a file, but not a socket
	sockRefused                      // a socket nobody listens on (stale)
	sockOther                        // could not tell (error in detail)
)

// probeSocket looks at path and connects to it as the doctor's own user
// (root, normally, so permissions do not hide a listener; they are
// checked separately for each peer's user).
func (h *host) probeSocket(path string) (socketState, error) {
	fi, err := h.stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return sockMissing, err
	}
	if err != nil {
		return sockOther, err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return sockNotSocket, fmt.Errorf("%s is a %s, not a socket", path, fileKind(fi))
	}
	err = h.dialUnix(path)
	switch {
	case err == nil:
		return sockListening, nil
	case errors.Is(err, syscall.ECONNREFUSED):
		return sockRefused, err
	case errors.Is(err, syscall.EACCES):
		// We are not root: the socket is there, whether it listens we
		// cannot tell; the per-user check says who may connect.
		return sockListening, nil
	}
	return sockOther, err
}

func fileKind(fi fs.FileInfo) string {
	switch {
	case fi.IsDir():
		return "directory"
	case fi.Mode().IsRegular():
		return "regular file"
	case fi.Mode()&fs.ModeSymlink != 0:
		return "symlink"
	}
	return fi.Mode().Type().String()
}

// servedSocket is a saslauthd-protocol socket mailauthd listens on.
type servedSocket struct {
	Path  string // as configured
	Canon string // symlinks resolved
	From  string // where it is configured (file)
	Mode  fs.FileMode
	Group string
}

// unitFile is a systemd unit with its drop-ins merged, as far as the
// doctor reads it: the settings of one section, in order.
type unitFile struct {
	Path     string              // the unit file systemd uses
	Sections map[string][]kvLine // section -> settings in order
}

type kvLine struct {
	Key, Value string
	File       string
	Line       int
}

// unitDirs is systemd's search order for system units (first wins).
var unitDirs = []string{"/etc/systemd/system", "/run/systemd/system", "/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"}

// loadUnit finds a unit like systemd does and merges its drop-ins
// (name.d/*.conf from every unit directory, in name order). Nil when the
// unit is not installed or masked.
func (h *host) loadUnit(name string) *unitFile {
	var main string
	for _, d := range unitDirs {
		p := filepath.Join(d, name)
		fi, err := h.stat(p)
		if err != nil {
			continue
		}
		if fi.Size() == 0 {
			return nil // masked (symlink to /dev/null)
		}
		main = p
		break
	}
	if main == "" {
		return nil
	}
	u := &unitFile{Path: main, Sections: map[string][]kvLine{}}
	u.parse(h, main)
	seen := map[string]string{}
	for _, d := range unitDirs {
		for _, p := range h.glob(filepath.Join(d, name+".d", "*.conf")) {
			if _, dup := seen[filepath.Base(p)]; !dup {
				seen[filepath.Base(p)] = p
			}
		}
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		u.parse(h, seen[n])
	}
	return u
}

func (u *unitFile) parse(h *host, p string) {
	data, err := h.readFile(p)
	if err != nil {
		return
	}
	section := ""
	lines := strings.Split(string(data), "\n")
	for i := 0; i < len(lines); i++ {
		l := strings.TrimSpace(lines[i])
		num := i + 1
		for strings.HasSuffix(l, "\\") && i+1 < len(lines) {
			i++
			l = strings.TrimSuffix(l, "\\") + " " + strings.TrimSpace(lines[i])
		}
		if l == "" || l[0] == '#' || l[0] == ';' {
			continue
		}
		if l[0] == '[' && strings.HasSuffix(l, "]") {
			section = l[1 : len(l)-1]
			continue
		}
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			continue
		}
		u.Sections[section] = append(u.Sections[section], kvLine{Key: strings.TrimSpace(k), Value: strings.TrimSpace(v), File: p, Line: num})
	}
}

// list returns the values of a list setting (an empty assignment resets it).
func (u *unitFile) list(section, key string) []kvLine {
	var out []kvLine
	for _, kv := range u.Sections[section] {
		if kv.Key != key {
			continue
		}
		if kv.Value == "" {
			out = nil
			continue
		}
		for _, f := range strings.Fields(kv.Value) {
			c := kv
			c.Value = f
			out = append(out, c)
		}
	}
	return out
}

// get returns the last value of a setting and where it was set.
func (u *unitFile) get(section, key string) (kvLine, bool) {
	var last kvLine
	found := false
	for _, kv := range u.Sections[section] {
		if kv.Key == key {
			last, found = kv, true
		}
	}
	return last, found
}

// socketUnitPaths returns the Unix socket paths of a .socket unit's
// ListenStream= lines.
func socketUnitPaths(u *unitFile) []kvLine {
	var out []kvLine
	for _, kv := range u.list("Socket", "ListenStream") {
		if strings.HasPrefix(kv.Value, "/") {
			out = append(out, kv)
		}
	}
	return out
}
