package pamcheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"time"
)

// snapshotVersion changes when the file format does.
const snapshotVersion = 1

// maxSnapshotSize bounds snapshot.json.
const maxSnapshotSize = 16 << 20

// Snapshot is the recorded known-good state.
type Snapshot struct {
	Version    int                      `json:"version"`
	Created    time.Time                `json:"created"`
	ConfDirs   []string                 `json:"conf_dirs"`
	ModuleDirs []string                 `json:"module_dirs"`
	Services   map[string]ServiceRecord `json:"services"`
	Files      map[string]FileRecord    `json:"files"`
}

// ServiceRecord is where a service resolved; Path "" means it had no file of
// its own (libpam used other).
type ServiceRecord struct {
	Path  string   `json:"path"`
	Dir   string   `json:"dir,omitempty"`
	Files []string `json:"files,omitempty"` // the service file and everything it includes
	// Mailauthd lists the module types (auth, account) that ran
	// "mailauthd pam" through pam_exec.so: check reports a service that
	// stops doing so.
	Mailauthd []string `json:"mailauthd,omitempty"`
}

// FileRecord is one pam.d file as it was.
type FileRecord struct {
	Path     string         `json:"path"`
	SHA256   string         `json:"sha256"`
	Size     int            `json:"size"`
	Mode     uint32         `json:"mode"` // permission bits
	UID      int            `json:"uid"`
	GID      int            `json:"gid"`
	Copy     string         `json:"copy"` // below the state directory
	Modules  []ModuleRecord `json:"modules,omitempty"`
	Includes []string       `json:"includes,omitempty"`
}

// ModuleRecord is one module line and where its .so was.
type ModuleRecord struct {
	Line     int    `json:"line"`
	Type     string `json:"type"`
	Control  string `json:"control"`
	Module   string `json:"module"`
	Resolved string `json:"resolved,omitempty"`
}

// watchList is the configured services plus other, without duplicates.
func watchList(cfg Config) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range append(append([]string{}, cfg.Services...), OtherService) {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// TakeSnapshot records the watched services of sys.
func TakeSnapshot(sys *System, cfg Config, now time.Time) (*Snapshot, error) {
	cfg = cfg.WithDefaults()
	snap := &Snapshot{
		Version: snapshotVersion, Created: now.UTC(),
		ConfDirs: sys.ConfDirs, ModuleDirs: sys.ModuleDirs,
		Services: map[string]ServiceRecord{}, Files: map[string]FileRecord{},
	}
	for _, name := range watchList(cfg) {
		v := sys.Analyze(name)
		for p, err := range v.Errors {
			if !errors.Is(err, ErrAbort) {
				return nil, fmt.Errorf("snapshot %s: %w", p, err)
			}
		}
		snap.Services[name] = ServiceRecord{Path: v.Path, Dir: v.Dir, Files: uniq(v.Files), Mailauthd: MailauthdTypes(v)}
		for _, p := range v.Files {
			if _, done := snap.Files[p]; done {
				continue
			}
			f, err := sys.ReadFile(p)
			if err != nil {
				return nil, fmt.Errorf("snapshot %s: %w", p, err)
			}
			snap.Files[p] = fileRecord(sys, f)
		}
	}
	return snap, nil
}

func fileRecord(sys *System, f *File) FileRecord {
	r := FileRecord{
		Path: f.Path, SHA256: f.SHA256, Size: len(f.Data), Mode: uint32(f.Mode.Perm()),
		UID: f.UID, GID: f.GID, Copy: filepath.Join("files", f.SHA256),
	}
	for _, l := range f.Lines {
		switch {
		case l.IsInclude():
			r.Includes = append(r.Includes, l.Module)
		case l.Module != "":
			r.Modules = append(r.Modules, ModuleRecord{
				Line: l.Num, Type: l.Type, Control: l.Control, Module: l.Module,
				Resolved: sys.ResolveModule(l.Module),
			})
		}
	}
	return r
}

func uniq(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// Save writes the snapshot and a private copy of every file into dir
// (created 0700). snapshot.json is replaced atomically, after the copies.
func (snap *Snapshot) Save(sys *System, dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "files"), 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, r := range snap.Files {
		f, err := sys.ReadFile(r.Path)
		if err != nil {
			return err
		}
		keep[filepath.Base(r.Copy)] = true
		if err := writeAtomic(filepath.Join(dir, r.Copy), f.Data, 0o600); err != nil {
			return err
		}
	}
	data, err := json.MarshalIndent(snap, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(filepath.Join(dir, "snapshot.json"), append(data, '\n'), 0o600); err != nil {
		return err
	}
	// Copies no snapshot refers to any more would only grow the directory.
	ents, err := os.ReadDir(filepath.Join(dir, "files"))
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !keep[e.Name()] {
			os.Remove(filepath.Join(dir, "files", e.Name()))
		}
	}
	return nil
}

// ErrNoSnapshot is returned by LoadSnapshot when none was taken.
var ErrNoSnapshot = errors.New("no snapshot")

// LoadSnapshot reads dir/snapshot.json.
func LoadSnapshot(dir string) (*Snapshot, error) {
	f, err := os.Open(filepath.Join(dir, "snapshot.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNoSnapshot
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSnapshotSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxSnapshotSize {
		return nil, fmt.Errorf("snapshot.json larger than %d bytes", maxSnapshotSize)
	}
	var snap Snapshot
	if err := json.Unmarshal(data, &snap); err != nil {
		return nil, fmt.Errorf("snapshot.json: %w", err)
	}
	if snap.Version != snapshotVersion {
		return nil, fmt.Errorf("snapshot.json: version %d, this mailauthd reads %d (take a new snapshot)", snap.Version, snapshotVersion)
	}
	return &snap, nil
}

// copyData returns the private copy of r, verified against its hash.
func copyData(dir string, r FileRecord) ([]byte, error) {
	data, err := os.ReadFile(filepath.Join(dir, "files", filepath.Base(r.Copy)))
	if err != nil {
		return nil, err
	}
	if sha256Hex(data) != r.SHA256 {
		return nil, fmt.Errorf("private copy of %s does not match its recorded hash", r.Path)
	}
	return data, nil
}

// sortedKeys returns m's keys in order, for stable output.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(mode)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, path)
	}
	if err != nil {
		os.Remove(name)
	}
	return err
}
