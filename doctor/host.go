package doctor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// host is the machine (or tree) being checked. Every path given to its
// methods is a system path such as /etc/postfix/main.cf.
type host struct {
	root string // "" for the live system
	live bool

	accounts map[string]*account
	groups   map[string]*group
	dbLoaded bool
}

// account is a user as far as file permissions go.
type account struct {
	Name   string
	UID    int
	GID    int
	Groups []int // supplementary and primary
}

type group struct {
	Name    string
	GID     int
	Members []string
}

func newHost(root string) *host {
	if root == "/" {
		root = ""
	}
	return &host{root: root, live: root == ""}
}

// real maps a system path to where it is on disk.
func (h *host) real(p string) string {
	if h.root == "" {
		return p
	}
	return filepath.Join(h.root, p)
}

// maxRead bounds every configuration file we read.
const maxRead = 4 << 20

func (h *host) readFile(p string) ([]byte, error) {
	f, err := os.Open(h.real(p))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxRead+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxRead {
		return nil, fmt.Errorf("%s: larger than %d bytes", p, maxRead)
	}
	return data, nil
}

func (h *host) stat(p string) (fs.FileInfo, error)  { return os.Stat(h.real(p)) }
func (h *host) lstat(p string) (fs.FileInfo, error) { return os.Lstat(h.real(p)) }

func (h *host) exists(p string) bool {
	_, err := h.stat(p)
	return err == nil
}

// glob expands a pattern of system paths.
func (h *host) glob(pattern string) []string {
	ms, _ := filepath.Glob(h.real(pattern))
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		if h.root != "" {
			m = "/" + strings.TrimPrefix(strings.TrimPrefix(m, h.root), "/")
		}
		out = append(out, m)
	}
	return out
}

// canonical resolves symlinks of a system path inside the tree (so
// /var/run/x and /run/x compare equal on a system where /var/run -> /run).
// The part that does not exist is kept as written.
func (h *host) canonical(p string) string {
	p = filepath.Clean(p)
	dir, rest := p, ""
	for i := 0; i < 64; i++ {
		if real, err := h.evalSymlinks(dir); err == nil {
			return filepath.Join(real, rest)
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		rest = filepath.Join(filepath.Base(dir), rest)
		dir = parent
	}
	return p
}

// evalSymlinks resolves p below the root: an absolute link target is taken
// relative to the root, as the system would see it.
func (h *host) evalSymlinks(p string) (string, error) {
	if h.root == "" {
		return filepath.EvalSymlinks(p)
	}
	parts := strings.Split(strings.TrimPrefix(filepath.Clean(p), "/"), "/")
	cur := "/"
	for hops := 0; len(parts) > 0; {
		name := parts[0]
		parts = parts[1:]
		if name == "" || name == "." {
			continue
		}
		if name == ".." {
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, name)
		fi, err := os.Lstat(h.real(next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", errors.New("too many symlinks")
		}
		target, err := os.Readlink(h.real(next))
		if err != nil {
			return "", err
		}
		if strings.HasPrefix(target, "/") {
			cur = "/"
		}
		parts = append(strings.Split(strings.TrimPrefix(target, "/"), "/"), parts...)
	}
	return cur, nil
}

// loadAccounts reads passwd and group below the root. The live system
// falls back to NSS (os/user) for names the files do not have.
func (h *host) loadAccounts() {
	if h.dbLoaded {
		return
	}
	h.dbLoaded = true
	h.accounts = map[string]*account{}
	h.groups = map[string]*group{}
	if data, err := h.readFile("/etc/group"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			f := strings.Split(l, ":")
			if len(f) < 4 || strings.HasPrefix(f[0], "#") {
				continue
			}
			gid, err := strconv.Atoi(f[2])
			if err != nil {
				continue
			}
			g := &group{Name: f[0], GID: gid}
			for _, m := range strings.Split(f[3], ",") {
				if m = strings.TrimSpace(m); m != "" {
					g.Members = append(g.Members, m)
				}
			}
			h.groups[g.Name] = g
		}
	}
	if data, err := h.readFile("/etc/passwd"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			f := strings.Split(l, ":")
			if len(f) < 4 || strings.HasPrefix(f[0], "#") {
				continue
			}
			uid, err1 := strconv.Atoi(f[2])
			gid, err2 := strconv.Atoi(f[3])
			if err1 != nil || err2 != nil {
				continue
			}
			a := &account{Name: f[0], UID: uid, GID: gid, Groups: []int{gid}}
			for _, g := range h.groups {
				for _, m := range g.Members {
					if m == a.Name && g.GID != gid {
						a.Groups = append(a.Groups, g.GID)
					}
				}
			}
			h.accounts[a.Name] = a
		}
	}
}

// lookupUser finds a user by name; nil when there is none.
func (h *host) lookupUser(name string) *account {
	h.loadAccounts()
	if a, ok := h.accounts[name]; ok {
		return a
	}
	if !h.live {
		return nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	a := &account{Name: name, UID: uid, GID: gid, Groups: []int{gid}}
	if ids, err := u.GroupIds(); err == nil {
		for _, s := range ids {
			if g, err := strconv.Atoi(s); err == nil && g != gid {
				a.Groups = append(a.Groups, g)
			}
		}
	}
	h.accounts[name] = a
	return a
}

// lookupGroup finds a group by name or number; nil when there is none.
func (h *host) lookupGroup(name string) *group {
	h.loadAccounts()
	if g, ok := h.groups[name]; ok {
		return g
	}
	if n, err := strconv.Atoi(name); err == nil {
		for _, g := range h.groups {
			if g.GID == n {
				return g
			}
		}
		if !h.live {
			return &group{Name: name, GID: n}
		}
	}
	if !h.live {
		return nil
	}
	var gr *user.Group
	var err error
	if _, nerr := strconv.Atoi(name); nerr == nil {
		gr, err = user.LookupGroupId(name)
	} else {
		gr, err = user.LookupGroup(name)
	}
	if err != nil {
		return nil
	}
	gid, _ := strconv.Atoi(gr.Gid)
	g := &group{Name: gr.Name, GID: gid}
	h.groups[name] = g
	return g
}

func (h *host) userName(uid int) string {
	h.loadAccounts()
	for _, a := range h.accounts {
		if a.UID == uid {
			return a.Name
		}
	}
	if h.live {
		if u, err := user.LookupId(strconv.Itoa(uid)); err == nil {
			return u.Username
		}
	}
	return strconv.Itoa(uid)
}

func (h *host) groupName(gid int) string {
	h.loadAccounts()
	for _, g := range h.groups {
		if g.GID == gid {
			return g.Name
		}
	}
	if h.live {
		if g, err := user.LookupGroupId(strconv.Itoa(gid)); err == nil {
			return g.Name
		}
	}
	return strconv.Itoa(gid)
}

func ownerOf(fi fs.FileInfo) (uid, gid int) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return -1, -1
}

// describe is "owner:group 0750" for a file.
func (h *host) describe(fi fs.FileInfo) string {
	uid, gid := ownerOf(fi)
	return fmt.Sprintf("%s:%s %04o", h.userName(uid), h.groupName(gid), fi.Mode().Perm())
}

// permBits returns the rwx bits that apply to a for a file: owner, group
// or other class, as the kernel picks them (ACLs are not read).
func permBits(a *account, fi fs.FileInfo) (bits fs.FileMode, class string) {
	uid, gid := ownerOf(fi)
	m := fi.Mode().Perm()
	switch {
	case a.UID == uid:
		return (m >> 6) & 7, "owner"
	case a.inGroup(gid):
		return (m >> 3) & 7, "group"
	}
	return m & 7, "other"
}

func (a *account) inGroup(gid int) bool {
	for _, g := range a.Groups {
		if g == gid {
			return true
		}
	}
	return false
}

// accessProblem is why a cannot reach a file: a directory on the way it
// may not search, or the file itself without the needed bit. Nil when it
// can (root always can).
type accessProblem struct {
	Path   string // the component that blocks
	IsDir  bool
	Desc   string // "root:sasl 0710"
	Need   string // "search (x)", "write (w)", "read (r)"
	Class  string // owner, group, other
	Group  string // the file's group name
	Exists bool
}

func (p *accessProblem) String() string {
	if !p.Exists {
		return p.Path + " does not exist"
	}
	what := "file"
	if p.IsDir {
		what = "directory"
	}
	return fmt.Sprintf("%s %s is %s, which gives no %s to its %s class", what, p.Path, p.Desc, p.Need, p.Class)
}

// fixFor suggests the one-line change that lets a in.
func (p *accessProblem) fixFor(a *account) string {
	if !p.Exists {
		return ""
	}
	bit := map[string]string{"search (x)": "x", "write (w)": "w", "read (r)": "r"}[p.Need]
	if p.Class != "other" {
		return fmt.Sprintf("chmod %s+%s %s", map[string]string{"owner": "u", "group": "g"}[p.Class], bit, p.Path)
	}
	join := ""
	if p.Group != "" && p.Group != "root" {
		join = fmt.Sprintf("adduser %s %s (then restart the service)", a.Name, p.Group)
	}
	other := ""
	switch {
	case p.IsDir:
		other = "chmod o+x " + p.Path
	case bit == "r":
		other = "chmod o+r " + p.Path
	}
	switch {
	case join != "" && other != "":
		return join + ", or " + other
	case join != "":
		return join
	case other != "":
		return other
	}
	return fmt.Sprintf("chgrp %s %s && chmod g+%s %s", a.Name, p.Path, bit, p.Path)
}

// access checks that a can reach path (x on every directory from /) and
// has the wanted bits on it (e.g. 2 = w for a socket, 4 = r for a file).
func (h *host) access(a *account, path string, want fs.FileMode) *accessProblem {
	if a.UID == 0 {
		if !h.exists(path) {
			return &accessProblem{Path: path}
		}
		return nil
	}
	path = filepath.Clean(path)
	dirs := []string{}
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		dirs = append([]string{d}, dirs...)
		if d == "/" || d == "." {
			break
		}
	}
	for _, d := range dirs {
		fi, err := h.stat(d)
		if err != nil {
			return &accessProblem{Path: d, IsDir: true}
		}
		if bits, class := permBits(a, fi); bits&1 == 0 {
			_, gid := ownerOf(fi)
			return &accessProblem{Path: d, IsDir: true, Desc: h.describe(fi), Need: "search (x)", Class: class, Group: h.groupName(gid), Exists: true}
		}
	}
	fi, err := h.stat(path)
	if err != nil {
		return &accessProblem{Path: path}
	}
	if bits, class := permBits(a, fi); bits&want != want {
		_, gid := ownerOf(fi)
		need := "read (r)"
		if want&2 != 0 {
			need = "write (w)"
		}
		return &accessProblem{Path: path, Desc: h.describe(fi), Need: need, Class: class, Group: h.groupName(gid), Exists: true}
	}
	return nil
}

// dialUnix connects to a Unix socket below the root (as the user running
// the doctor) and reports why not. Nil means something accepted.
func (h *host) dialUnix(path string) error {
	conn, err := (&netDialer{timeout: 2 * time.Second}).dial(h.real(path))
	if err != nil {
		return err
	}
	conn.Close()
	return nil
}

// run executes a peer binary (live checks only) with a deadline.
func (h *host) run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		// The tool's own complaint says it best; else which run failed how.
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return out, errors.New(msg)
		}
		return out, fmt.Errorf("%s %s: %v", bin, strings.Join(args, " "), err)
	}
	return out, nil
}

// findBinary returns the first candidate that exists below the root.
func (h *host) findBinary(cands ...string) string {
	for _, c := range cands {
		if fi, err := h.stat(c); err == nil && fi.Mode().IsRegular() {
			return c
		}
	}
	return ""
}

// dpkgVersion asks dpkg-query for a package's installed version, with the
// database below the root ("" when not installed, or not a dpkg system).
func (h *host) dpkgVersion(pkg string) string {
	admin := h.real("/var/lib/dpkg")
	if _, err := os.Stat(admin); err != nil {
		return ""
	}
	bin, err := exec.LookPath("dpkg-query")
	if err != nil {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "--admindir="+admin, "-W", "-f", "${db:Status-Abbrev}|${Version}", pkg).Output()
	if err != nil {
		return ""
	}
	st, ver, ok := strings.Cut(string(out), "|")
	if !ok || !strings.HasPrefix(st, "ii") {
		return ""
	}
	return strings.TrimSpace(ver)
}

// fileContains reports whether a (binary) file below the root contains s.
func (h *host) fileContains(p, s string) bool {
	f, err := os.Open(h.real(p))
	if err != nil {
		return false
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 64<<20))
	if err != nil {
		return false
	}
	return bytes.Contains(data, []byte(s))
}
