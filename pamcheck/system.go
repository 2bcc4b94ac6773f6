package pamcheck

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// OtherService is libpam's fallback service (PAM_DEFAULT_SERVICE).
const OtherService = "other"

// maxIncludeLevel is libpam's PAM_SUBSTACK_MAX_LEVEL: deeper includes abort.
const maxIncludeLevel = 16

// System is the machine being checked. Every path is interpreted below Root
// ("" or "/" for the live system).
type System struct {
	Root       string
	ConfDirs   []string
	ModuleDirs []string

	files map[string]*File
}

// NewSystem returns a System for cfg's directories below root.
func NewSystem(root string, cfg Config) *System {
	cfg = cfg.WithDefaults()
	return &System{Root: root, ConfDirs: cfg.ConfDirs, ModuleDirs: cfg.ModuleDirs}
}

// Real maps a system path (/etc/pam.d/imap) to where it is on disk.
func (s *System) Real(p string) string {
	if s.Root == "" || s.Root == "/" {
		return p
	}
	return filepath.Join(s.Root, p)
}

// File is one pam.d file as found on disk.
type File struct {
	Path     string      // system path, e.g. /etc/pam.d/imap
	Data     []byte      `json:"-"`
	SHA256   string      // of Data
	Mode     fs.FileMode // permission bits and type
	UID, GID int
	Lines    []Line
	ParseErr error // wraps ErrAbort when libpam refuses the file
}

// exists reports whether libpam's fopen would succeed on p (symlinks followed).
func (s *System) exists(p string) bool {
	_, err := os.Stat(s.Real(p))
	return err == nil
}

// ResolveService returns the file libpam reads for name and the directory it
// came from, or "" when no directory has it.
func (s *System) ResolveService(name string) (path, dir string) {
	if strings.HasPrefix(name, "/") {
		if s.exists(name) {
			return name, filepath.Dir(name)
		}
		return "", ""
	}
	for _, d := range s.ConfDirs {
		p := filepath.Join(d, name)
		if s.exists(p) {
			return p, d
		}
	}
	return "", ""
}

// ResolveModule returns where the module on a line lives, or "" if nowhere.
// libpam dlopens an absolute path as written (then with $ISA replaced) and a
// relative one below its compiled-in module directory; we try ModuleDirs in
// order because that directory differs between distributions.
func (s *System) ResolveModule(mod string) string {
	var cands []string
	if strings.HasPrefix(mod, "/") {
		cands = []string{mod}
	} else {
		for _, d := range s.ModuleDirs {
			cands = append(cands, filepath.Join(d, mod))
		}
	}
	for _, c := range cands {
		for _, p := range []string{c, strings.ReplaceAll(c, "$ISA", ".")} {
			if fi, err := os.Stat(s.Real(p)); err == nil && fi.Mode().IsRegular() {
				return filepath.Clean(p)
			}
		}
	}
	return ""
}

// ReadFile reads and parses a pam.d file (cached per System).
func (s *System) ReadFile(p string) (*File, error) {
	if f, ok := s.files[p]; ok {
		return f, nil
	}
	real := s.Real(p)
	fi, err := os.Stat(real)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (%s)", p, fi.Mode().Type())
	}
	if fi.Size() > MaxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes", p, MaxFileSize)
	}
	data, err := os.ReadFile(real)
	if err != nil {
		return nil, err
	}
	f := &File{Path: p, Data: data, SHA256: sha256Hex(data), Mode: fi.Mode()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		f.UID, f.GID = int(st.Uid), int(st.Gid)
	}
	f.Lines, f.ParseErr = parseBytes(data)
	if s.files == nil {
		s.files = map[string]*File{}
	}
	s.files[p] = f
	return f, nil
}

// Loaded is one line libpam loads for a service.
type Loaded struct {
	File string // file the line is in
	Line Line
	// Type the line is loaded for (an @include line carries "*").
	Type string
	// Target is the resolved include target or module path; "" when missing.
	Target string
}

// View is what libpam builds for one service: which file, and every line it
// loads through includes.
type View struct {
	Service string
	Path    string // "" when libpam falls back to other
	Dir     string
	Lines   []Loaded
	Files   []string         // every file read, in order
	Errors  map[string]error // unreadable or refused files
	Types   map[string]bool  // module types with at least one line
}

// UsesOther reports whether the service has no file of its own.
func (v *View) UsesOther() bool { return v.Path == "" }

// Analyze builds the view of service name.
func (s *System) Analyze(name string) *View {
	v := &View{Service: name, Errors: map[string]error{}, Types: map[string]bool{}}
	v.Path, v.Dir = s.ResolveService(name)
	if v.Path != "" {
		s.load(v, v.Path, "", 0)
	}
	return v
}

// load follows _pam_load_conf_file: only lines of the requested type (all
// types when typ is "") are taken; includes resolve like services.
func (s *System) load(v *View, p, typ string, level int) {
	v.Files = append(v.Files, p)
	f, err := s.ReadFile(p)
	if err != nil {
		v.Errors[p] = err
		return
	}
	if f.ParseErr != nil {
		v.Errors[p] = f.ParseErr
	}
	for _, l := range f.Lines {
		lt := l.Type
		switch {
		case l.Control == "@include": // every type of the target, within the current filter
			lt = typ
			if lt == "" {
				lt = "*"
			}
		case lt == "" && typ != "":
			lt = typ // an illegal type is filed under the requested one
		case lt == "":
			lt = TypeAuth // libpam's "most sensitive" choice
		}
		if typ != "" && lt != typ {
			continue
		}
		ld := Loaded{File: p, Line: l, Type: lt}
		switch {
		case !l.parsedOK:
		case l.IsInclude():
			if level+1 < maxIncludeLevel {
				ld.Target, _ = s.ResolveService(l.Module)
			}
			if ld.Target != "" {
				next := l.Type
				if l.Control == "@include" {
					next = typ
				}
				v.Lines = append(v.Lines, ld)
				s.load(v, ld.Target, next, level+1)
				continue
			}
		default:
			ld.Target = s.ResolveModule(l.Module)
		}
		if ld.Type != "*" {
			v.Types[ld.Type] = true
		} else {
			for _, t := range []string{TypeAuth, TypeAccount, TypeSession, TypePassword} {
				v.Types[t] = true
			}
		}
		v.Lines = append(v.Lines, ld)
	}
}

// modeProblem describes permissions that let someone other than root rewrite
// authentication, or "" if the mode is safe.
func modeProblem(m fs.FileMode) string {
	if m.Perm()&0o022 != 0 {
		return fmt.Sprintf("mode %04o lets non-root users rewrite it", m.Perm())
	}
	return ""
}

func sha256Hex(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func ownerOf(fi fs.FileInfo) (uid, gid int) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return -1, -1
}

func ownerOfFile(f *os.File) (uid, gid int) {
	fi, err := f.Stat()
	if err != nil {
		return -1, -1
	}
	return ownerOf(fi)
}
