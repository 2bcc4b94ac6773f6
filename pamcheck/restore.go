package pamcheck

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Action is one thing restore did (or would do with DryRun).
type Action struct {
	Path  string `json:"path"`
	What  string `json:"what"`            // "restored", "replaced", "fixed-mode", "fixed-owner"
	Aside string `json:"aside,omitempty"` // where the current version was kept
}

func (a Action) String() string {
	switch a.What {
	case "replaced":
		return fmt.Sprintf("%s: put back the snapshot copy; current version kept as %s", a.Path, a.Aside)
	case "restored":
		return fmt.Sprintf("%s: was missing, put back the snapshot copy", a.Path)
	case "fixed-mode":
		return fmt.Sprintf("%s: mode set back to the snapshot's", a.Path)
	default:
		return fmt.Sprintf("%s: owner set back to the snapshot's", a.Path)
	}
}

// RestoreOptions select what Restore does.
type RestoreOptions struct {
	Services []string // empty: every service in the snapshot
	DryRun   bool
	StateDir string // real path of the state directory
	Now      time.Time
}

// Restore puts back the snapshot's copy of every missing or changed file of
// the selected services (service file and includes), keeping a changed file
// aside as FILE.pamcheck-YYYYMMDDTHHMMSS, and resets mode and owner.
func Restore(sys *System, snap *Snapshot, opt RestoreOptions) ([]Action, error) {
	names := opt.Services
	if len(names) == 0 {
		names = sortedKeys(snap.Services)
	}
	var paths []string
	for _, n := range names {
		rec, ok := snap.Services[n]
		if !ok {
			return nil, fmt.Errorf("service %q is not in the snapshot", n)
		}
		paths = append(paths, rec.Files...)
	}
	var acts []Action
	for _, p := range uniq(paths) {
		rec, ok := snap.Files[p]
		if !ok {
			return acts, fmt.Errorf("snapshot lists %s for a service but has no record of it", p)
		}
		data, err := copyData(opt.StateDir, rec)
		if err != nil {
			return acts, err // never write something we cannot vouch for
		}
		real := sys.Real(p)
		cur, err := os.ReadFile(real)
		switch {
		case errors.Is(err, os.ErrNotExist):
			acts = append(acts, Action{Path: p, What: "restored"})
			if !opt.DryRun {
				if err := os.MkdirAll(filepath.Dir(real), 0o755); err != nil {
					return acts, err
				}
				if err := writeFileAs(real, data, rec); err != nil {
					return acts, err
				}
			}
			continue
		case err != nil:
			return acts, err
		case sha256Hex(cur) != rec.SHA256:
			aside := p + ".pamcheck-" + opt.Now.UTC().Format("20060102T150405")
			acts = append(acts, Action{Path: p, What: "replaced", Aside: aside})
			if !opt.DryRun {
				if err := os.Link(real, sys.Real(aside)); err != nil {
					return acts, fmt.Errorf("keep %s aside: %w", p, err)
				}
				if err := writeFileAs(real, data, rec); err != nil {
					return acts, err
				}
			}
			continue
		}
		fi, err := os.Stat(real)
		if err != nil {
			return acts, err
		}
		if uint32(fi.Mode().Perm()) != rec.Mode {
			acts = append(acts, Action{Path: p, What: "fixed-mode"})
			if !opt.DryRun {
				if err := os.Chmod(real, os.FileMode(rec.Mode)); err != nil {
					return acts, err
				}
			}
		}
		uid, gid := ownerOf(fi)
		if uid != rec.UID || gid != rec.GID {
			acts = append(acts, Action{Path: p, What: "fixed-owner"})
			if !opt.DryRun {
				if err := os.Chown(real, rec.UID, rec.GID); err != nil {
					return acts, err
				}
			}
		}
	}
	return acts, nil
}

// writeFileAs writes data atomically with the recorded mode and owner.
func writeFileAs(real string, data []byte, rec FileRecord) error {
	tmp, err := os.CreateTemp(filepath.Dir(real), "."+filepath.Base(real)+".pamcheck*")
	if err != nil {
		return err
	}
	name := tmp.Name()
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(os.FileMode(rec.Mode))
	}
	if err == nil {
		if uid, gid := ownerOfFile(tmp); uid != rec.UID || gid != rec.GID {
			err = tmp.Chown(rec.UID, rec.GID)
		}
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, real)
	}
	if err != nil {
		os.Remove(name)
	}
	return err
}
