package pamcheck

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Severity orders findings; the exit status follows the worst one.
type Severity int

// Severities.
const (
	Info Severity = iota
	Warning
	Critical
)

func (s Severity) String() string {
	switch s {
	case Info:
		return "info"
	case Warning:
		return "warning"
	default:
		return "critical"
	}
}

// MarshalJSON writes the name.
func (s Severity) MarshalJSON() ([]byte, error) { return json.Marshal(s.String()) }

// UnmarshalJSON reads the name.
func (s *Severity) UnmarshalJSON(b []byte) error {
	var n string
	if err := json.Unmarshal(b, &n); err != nil {
		return err
	}
	switch n {
	case "info":
		*s = Info
	case "warning":
		*s = Warning
	case "critical":
		*s = Critical
	default:
		return fmt.Errorf("unknown severity %q", n)
	}
	return nil
}

// Finding is one problem, with what to do about it.
type Finding struct {
	Severity Severity `json:"severity"`
	Code     string   `json:"code"`
	Services []string `json:"services,omitempty"`
	Path     string   `json:"path,omitempty"`
	Line     int      `json:"line,omitempty"`
	Message  string   `json:"message"`
	Fix      string   `json:"fix"`
}

// Finding codes.
const (
	CodeServiceRemoved = "service-removed"
	CodeServiceMoved   = "service-moved"
	CodeNewFile        = "service-appeared"
	CodeContentChanged = "content-changed"
	CodeFileRemoved    = "file-removed"
	CodeModeChanged    = "mode-changed"
	CodeOwnerChanged   = "owner-changed"
	CodeUnsafeMode     = "unsafe-mode"
	CodeModuleMissing  = "module-missing"
	CodeIncludeMissing = "include-missing"
	CodeBadLine        = "bad-line"
	CodeFileRefused    = "file-refused"
	CodeUnreadable     = "unreadable"
	CodeTypeFallback   = "type-fallback"
	CodeOtherMissing   = "other-missing"
	CodeLeftover       = "leftover"
	CodeRuleFallback   = "rule-no-file"
	CodeRuleModule     = "rule-module"
)

// LeftoverSuffixes are what package managers leave beside a config file.
var LeftoverSuffixes = []string{".rpmnew", ".rpmsave", ".dpkg-dist", ".dpkg-old", ".dpkg-new", ".pam-old"}

// Worst returns the highest severity, or -1 when there are no findings.
func Worst(fs []Finding) Severity {
	w := Severity(-1)
	for _, f := range fs {
		if f.Severity > w {
			w = f.Severity
		}
	}
	return w
}

type collector struct {
	byKey map[string]*Finding
	order []string
}

func (c *collector) add(f Finding, service string) {
	key := f.Code + "\x00" + f.Path + "\x00" + fmt.Sprint(f.Line)
	if old, ok := c.byKey[key]; ok {
		if service != "" && !contains(old.Services, service) {
			old.Services = append(old.Services, service)
		}
		if f.Severity > old.Severity {
			old.Severity, old.Message, old.Fix = f.Severity, f.Message, f.Fix
		}
		return
	}
	if service != "" {
		f.Services = []string{service}
	}
	c.byKey[key] = &f
	c.order = append(c.order, key)
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// Check compares sys with snap (nil: no snapshot, only the lint and rules
// apply) and returns the findings, most severe first.
func Check(sys *System, snap *Snapshot, cfg Config) []Finding {
	cfg = cfg.WithDefaults()
	c := &collector{byKey: map[string]*Finding{}}
	names := watchList(cfg)
	if snap != nil {
		for _, n := range sortedKeys(snap.Services) {
			if !contains(names, n) {
				names = append(names, n)
			}
		}
	}
	views := map[string]*View{}
	for _, n := range names {
		views[n] = sys.Analyze(n)
	}
	other := views[OtherService]
	referenced := map[string]bool{}
	for _, v := range views {
		for _, p := range v.Files {
			referenced[p] = true
		}
		// A missing include target is still referenced: the lint reports it.
		for _, ld := range v.Lines {
			if ld.Line.IsInclude() && ld.Target == "" {
				for _, d := range sys.ConfDirs {
					referenced[filepath.Join(d, ld.Line.Module)] = true
				}
				referenced[ld.Line.Module] = true
			}
		}
	}

	if snap != nil {
		compareSnapshot(c, sys, snap, views, referenced, cfg.StateDir)
	}
	for _, n := range names {
		lint(c, sys, views[n], other)
	}
	for _, r := range cfg.Rules {
		v := views[r.Service]
		if v == nil {
			v = sys.Analyze(r.Service)
		}
		checkRule(c, v, r)
	}
	checkMailauthd(c, sys, snap, views, cfg.Rules)
	leftovers(c, sys, snap, views)

	modeChanged := map[string]bool{}
	for _, k := range c.order {
		if f := c.byKey[k]; f.Code == CodeModeChanged {
			modeChanged[f.Path] = true
		}
	}
	out := make([]Finding, 0, len(c.order))
	for _, k := range c.order {
		f := *c.byKey[k]
		if f.Code == CodeUnsafeMode && modeChanged[f.Path] {
			continue // the same fact, already reported against the snapshot
		}
		sort.Strings(f.Services)
		out = append(out, f)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Severity != out[j].Severity {
			return out[i].Severity > out[j].Severity
		}
		if out[i].Path != out[j].Path {
			return out[i].Path < out[j].Path
		}
		return out[i].Line < out[j].Line
	})
	return out
}

func otherDesc(other *View) string {
	if other.Path == "" {
		return "and there is no 'other' file either, so pam_start fails for every login"
	}
	return "libpam silently uses " + other.Path + " instead (no log line): whatever it allows, e.g. only local accounts"
}

func compareSnapshot(c *collector, sys *System, snap *Snapshot, views map[string]*View, referenced map[string]bool, stateDir string) {
	reported := map[string]bool{} // files whose state is already explained
	for _, name := range sortedKeys(snap.Services) {
		was, now := snap.Services[name], views[name]
		switch {
		case was.Path != "" && now.Path == "":
			msg := fmt.Sprintf("service %s has no file any more (was %s)", name, was.Path)
			if name == OtherService {
				msg += "; services without their own file now make pam_start fail"
			} else {
				msg += "; " + otherDesc(views[OtherService])
			}
			c.add(Finding{Severity: Critical, Code: CodeServiceRemoved, Path: was.Path, Message: msg,
				Fix: fmt.Sprintf("mailauthd pamcheck restore %s (puts back the snapshot copy of %s)", name, was.Path)}, name)
			reported[was.Path] = true
		case was.Path != "" && now.Path != was.Path:
			sev, what := Warning, "with the same content"
			if rec, ok := snap.Files[was.Path]; ok {
				if f, err := sys.ReadFile(now.Path); err != nil || f.SHA256 != rec.SHA256 {
					sev, what = Critical, "with different content: your changes in "+was.Path+" no longer apply"
				}
			}
			c.add(Finding{Severity: sev, Code: CodeServiceMoved, Path: now.Path,
				Message: fmt.Sprintf("service %s now resolves to %s (from %s) instead of %s, %s", name, now.Path, now.Dir, was.Path, what),
				Fix:     fmt.Sprintf("mailauthd pamcheck restore %s puts %s back, which libpam reads first", name, was.Path)}, name)
			reported[was.Path], reported[now.Path] = true, true
		case was.Path == "" && now.Path != "":
			c.add(Finding{Severity: Info, Code: CodeNewFile, Path: now.Path,
				Message: fmt.Sprintf("service %s has a file now (%s); at snapshot time it used other", name, now.Path),
				Fix:     "review it, then run mailauthd pamcheck snapshot"}, name)
			reported[now.Path] = true
		}
	}
	for _, p := range sortedKeys(snap.Files) {
		rec := snap.Files[p]
		services := servicesUsing(snap, p)
		f, err := sys.ReadFile(p)
		if err != nil {
			if reported[p] {
				continue
			}
			if errors.Is(err, os.ErrNotExist) {
				if !referenced[p] {
					for _, s := range services {
						c.add(Finding{Severity: Warning, Code: CodeFileRemoved, Path: p,
							Message: fmt.Sprintf("%s is gone; no watched service uses it now", p),
							Fix:     "if that is intended run mailauthd pamcheck snapshot, else mailauthd pamcheck restore"}, s)
					}
				}
				continue // a referenced include that is gone is reported by the lint
			}
			for _, s := range services {
				c.add(Finding{Severity: Critical, Code: CodeUnreadable, Path: p, Message: fmt.Sprintf("%s: %v", p, err),
					Fix: "check the file and its permissions"}, s)
			}
			continue
		}
		if f.SHA256 != rec.SHA256 && !reported[p] {
			gone, added := moduleDiff(rec, f)
			sev, msg := Warning, fmt.Sprintf("%s changed since the snapshot", p)
			if len(gone) > 0 {
				sev = Critical
				msg += "; modules no longer used: " + strings.Join(gone, ", ")
			}
			if len(added) > 0 {
				msg += "; new modules: " + strings.Join(added, ", ")
			}
			for _, s := range services {
				c.add(Finding{Severity: sev, Code: CodeContentChanged, Path: p, Message: msg,
					Fix: fmt.Sprintf("compare with the snapshot copy (diff -u %s %s); if unintended: mailauthd pamcheck restore; if intended: mailauthd pamcheck snapshot",
						filepath.Join(stateDir, rec.Copy), p)}, s)
			}
		}
		if uint32(f.Mode.Perm()) != rec.Mode {
			sev := Warning
			if modeProblem(f.Mode) != "" {
				sev = Critical
			}
			for _, s := range services {
				c.add(Finding{Severity: sev, Code: CodeModeChanged, Path: p,
					Message: fmt.Sprintf("%s mode changed from %04o to %04o", p, rec.Mode, f.Mode.Perm()),
					Fix:     fmt.Sprintf("chmod %04o %s", rec.Mode, p)}, s)
			}
		}
		if f.UID != rec.UID || f.GID != rec.GID {
			sev := Warning
			if f.UID != rec.UID {
				sev = Critical // a new owner can rewrite the stack
			}
			for _, s := range services {
				c.add(Finding{Severity: sev, Code: CodeOwnerChanged, Path: p,
					Message: fmt.Sprintf("%s owner changed from %d:%d to %d:%d", p, rec.UID, rec.GID, f.UID, f.GID),
					Fix:     fmt.Sprintf("chown %d:%d %s", rec.UID, rec.GID, p)}, s)
			}
		}
	}
}

func servicesUsing(snap *Snapshot, p string) []string {
	var out []string
	for _, n := range sortedKeys(snap.Services) {
		if contains(snap.Services[n].Files, p) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		out = []string{""}
	}
	return out
}

func moduleDiff(rec FileRecord, f *File) (gone, added []string) {
	was, now := map[string]bool{}, map[string]bool{}
	for _, m := range rec.Modules {
		was[filepath.Base(m.Module)] = true
	}
	for _, l := range f.Lines {
		if l.Module != "" && !l.IsInclude() {
			now[filepath.Base(l.Module)] = true
		}
	}
	for _, m := range sortedKeys(was) {
		if !now[m] {
			gone = append(gone, m)
		}
	}
	for _, m := range sortedKeys(now) {
		if !was[m] {
			added = append(added, m)
		}
	}
	return gone, added
}

// lint reports what is wrong with a service as it is now, snapshot or not.
func lint(c *collector, sys *System, v, other *View) {
	name := v.Service
	if v.UsesOther() {
		if name == OtherService {
			c.add(Finding{Severity: Warning, Code: CodeOtherMissing, Message: "no 'other' file: a service without its own file makes pam_start fail",
				Fix: "restore other from the distribution package or mailauthd pamcheck restore other"}, name)
		}
		return
	}
	for p, err := range v.Errors {
		if errors.Is(err, ErrAbort) {
			c.add(Finding{Severity: Critical, Code: CodeFileRefused, Path: p,
				Message: fmt.Sprintf("%v: pam_start fails for every login via %s", err, name),
				Fix:     "fix the line in " + p}, name)
		} else if !errors.Is(err, os.ErrNotExist) {
			c.add(Finding{Severity: Critical, Code: CodeUnreadable, Path: p, Message: fmt.Sprintf("%v", err),
				Fix: "check the file and its permissions"}, name)
		}
	}
	for _, p := range v.Files {
		if f, err := sys.ReadFile(p); err == nil {
			if prob := modeProblem(f.Mode); prob != "" {
				c.add(Finding{Severity: Critical, Code: CodeUnsafeMode, Path: p, Message: p + ": " + prob,
					Fix: "chmod go-w " + p}, name)
			}
		}
	}
	for _, ld := range v.Lines {
		l := ld.Line
		switch {
		case !l.parsedOK:
			c.add(Finding{Severity: Critical, Code: CodeBadLine, Path: ld.File, Line: l.Num,
				Message: fmt.Sprintf("%s line %d: %s; libpam makes every %s via %s fail", ld.File, l.Num, l.Problem, typeWord(ld.Type), name),
				Fix:     fmt.Sprintf("correct line %d of %s", l.Num, ld.File)}, name)
		case l.IsInclude() && ld.Target == "":
			if l.Control == "@include" {
				c.add(Finding{Severity: Critical, Code: CodeIncludeMissing, Path: ld.File, Line: l.Num,
					Message: fmt.Sprintf("%s line %d: @include %s: no such file in %s; libpam aborts pam_start, every login via %s fails",
						ld.File, l.Num, l.Module, strings.Join(sys.ConfDirs, ", "), name),
					Fix: fmt.Sprintf("restore %s (mailauthd pamcheck restore, or reinstall its package) or remove the line", l.Module)}, name)
			} else {
				c.add(Finding{Severity: Critical, Code: CodeIncludeMissing, Path: ld.File, Line: l.Num,
					Message: fmt.Sprintf("%s line %d: %s %s %s: no such file in %s; libpam installs a must-fail handler, every %s via %s fails",
						ld.File, l.Num, l.Type, l.Control, l.Module, strings.Join(sys.ConfDirs, ", "), typeWord(l.Type), name),
					Fix: fmt.Sprintf("restore %s (mailauthd pamcheck restore, or reinstall its package) or remove the line", l.Module)}, name)
			}
		case !l.IsInclude() && ld.Target == "":
			sev, effect := missingModuleEffect(l, ld.Type)
			c.add(Finding{Severity: sev, Code: CodeModuleMissing, Path: ld.File, Line: l.Num,
				Message: fmt.Sprintf("%s line %d: %s %s %s: module not found in %s; %s",
					ld.File, l.Num, ld.Type, controlWord(l), l.Module, moduleWhere(sys, l.Module), effect),
				Fix: fmt.Sprintf("reinstall the package that ships %s (apt-file search %s / dnf provides '*/%s' / zypper se --provides %s), or fix line %d of %s",
					filepath.Base(l.Module), filepath.Base(l.Module), filepath.Base(l.Module), filepath.Base(l.Module), l.Num, ld.File)}, name)
		}
	}
	if name == OtherService {
		return
	}
	for _, t := range []string{TypeAuth, TypeAccount} {
		if !v.Types[t] {
			where := "from " + other.Path
			if other.Path == "" {
				where = "but there is no other file: every " + typeWord(t) + " fails"
			}
			c.add(Finding{Severity: Warning, Code: CodeTypeFallback, Path: v.Path,
				Message: fmt.Sprintf("%s has no %s lines; libpam takes the %s stack %s", v.Path, t, t, where),
				Fix:     fmt.Sprintf("add the %s lines the service needs to %s", t, v.Path)}, name)
		}
	}
}

func typeWord(t string) string {
	switch t {
	case TypeAuth:
		return "authentication"
	case TypeAccount:
		return "account check"
	case TypeSession:
		return "session"
	case TypePassword:
		return "password change"
	}
	return "call"
}

func controlWord(l Line) string {
	if l.Bracket {
		return "[" + l.Control + "]"
	}
	return l.Control
}

func moduleWhere(sys *System, mod string) string {
	if strings.HasPrefix(mod, "/") {
		return filepath.Dir(mod)
	}
	return strings.Join(sys.ModuleDirs, ", ")
}

// missingModuleEffect says what libpam does with a line whose .so is gone:
// it adds a "faulty module" whose dispatch returns PAM_MODULE_UNKNOWN, and the
// line's control decides what that means.
func missingModuleEffect(l Line, typ string) (Severity, string) {
	quiet := ""
	if l.Silent {
		quiet = " (the leading '-' also hides libpam's 'unable to dlopen' log line)"
	}
	acceptPath := typ == TypeAuth || typ == TypeAccount
	switch act := l.OnModuleUnknown(); act {
	case "bad":
		return Critical, fmt.Sprintf("the %s control fails on PAM_MODULE_UNKNOWN, so every %s fails%s", controlWord(l), typeWord(typ), quiet)
	case "die":
		return Critical, fmt.Sprintf("the %s control stops the stack with failure on PAM_MODULE_UNKNOWN, so every %s fails%s", controlWord(l), typeWord(typ), quiet)
	case "ok", "done":
		return Critical, fmt.Sprintf("the %s control counts PAM_MODULE_UNKNOWN as success (%s): the missing module lets users through%s", controlWord(l), act, quiet)
	default:
		// A line whose success ends the stack or jumps over a deny is a way in.
		if s := l.OnSuccess(); s == "done" || s == "jump" || s == "ok" && l.Control != "optional" {
			if acceptPath {
				return Critical, fmt.Sprintf("the %s control silently skips it: users who only get in through this module (e.g. LDAP users via pam_sss) are refused while the other lines still work%s", controlWord(l), quiet)
			}
			return Warning, fmt.Sprintf("the %s control silently skips it%s", controlWord(l), quiet)
		}
		if l.Silent {
			return Info, fmt.Sprintf("the %s control ignores it and the leading '-' marks it as allowed to be absent", controlWord(l))
		}
		return Warning, fmt.Sprintf("the %s control ignores it: whatever it did no longer happens", controlWord(l))
	}
}

func checkRule(c *collector, v *View, r Rule) {
	if v.UsesOther() {
		c.add(Finding{Severity: Critical, Code: CodeRuleFallback,
			Message: fmt.Sprintf("rule: service %s must have its own file, but none exists; libpam uses other", r.Service),
			Fix:     fmt.Sprintf("create /etc/pam.d/%s (or mailauthd pamcheck restore %s if a snapshot has it)", r.Service, r.Service)}, r.Service)
		return
	}
	var found []string
	for _, ld := range v.Lines {
		if ld.Line.IsInclude() || ld.Line.Module == "" || (ld.Type != r.Type && ld.Type != "*") {
			continue
		}
		base := filepath.Base(ld.Line.Module)
		for _, m := range r.RequireAnyModule {
			if base == m && ld.Target != "" {
				found = append(found, m)
			}
		}
		for _, m := range r.ForbidModules {
			if base == m {
				c.add(Finding{Severity: Critical, Code: CodeRuleModule, Path: ld.File, Line: ld.Line.Num,
					Message: fmt.Sprintf("rule: service %s must not use %s in %s, but %s line %d does", r.Service, m, r.Type, ld.File, ld.Line.Num),
					Fix:     fmt.Sprintf("remove line %d of %s", ld.Line.Num, ld.File)}, r.Service)
			}
		}
	}
	if len(r.RequireAnyModule) > 0 && len(found) == 0 {
		c.add(Finding{Severity: Critical, Code: CodeRuleModule, Path: v.Path,
			Message: fmt.Sprintf("rule: service %s must use %s in its %s stack (with the .so present); %s does not",
				r.Service, strings.Join(r.RequireAnyModule, " or "), r.Type, v.Path),
			Fix: fmt.Sprintf("add e.g. '%s sufficient %s' to %s or install the module", r.Type, r.RequireAnyModule[0], v.Path)}, r.Service)
	}
}

// leftovers reports package-manager backups beside every watched file.
func leftovers(c *collector, sys *System, snap *Snapshot, views map[string]*View) {
	paths := map[string][]string{}
	for n, v := range views {
		for _, p := range v.Files {
			paths[p] = append(paths[p], n)
		}
		// A removed service's leftovers sit where its file used to be.
		for _, d := range sys.ConfDirs {
			p := filepath.Join(d, n)
			paths[p] = append(paths[p], n)
		}
	}
	if snap != nil {
		for _, p := range sortedKeys(snap.Files) {
			for _, s := range servicesUsing(snap, p) {
				paths[p] = append(paths[p], s)
			}
		}
	}
	for _, p := range sortedKeys(paths) {
		for _, suf := range LeftoverSuffixes {
			lp := p + suf
			if _, err := os.Lstat(sys.Real(lp)); err != nil {
				continue
			}
			sev, msg := Info, fmt.Sprintf("%s: the package's new version was not installed; %s is still the active file", lp, p)
			switch suf {
			case ".rpmsave", ".dpkg-old", ".pam-old":
				sev = Warning
				msg = fmt.Sprintf("%s: an earlier version (possibly yours) was moved aside; %s", lp, activeDesc(sys, p))
			}
			for _, s := range uniq(paths[p]) {
				c.add(Finding{Severity: sev, Code: CodeLeftover, Path: lp, Message: msg,
					Fix: fmt.Sprintf("diff -u %s %s, merge what you need, then remove %s", p, lp, lp)}, s)
			}
		}
	}
}

func activeDesc(sys *System, p string) string {
	if sys.exists(p) {
		return "the active " + p + " is the package's"
	}
	return p + " itself is gone"
}
