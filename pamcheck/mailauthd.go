package pamcheck

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Finding codes for services that route through mailauthd's PAM front door
// (pam_exec.so running "mailauthd pam").
const (
	// CodeMailauthdLost: a service that routed a module type through
	// mailauthd (at snapshot time, or by a require_mailauthd rule) no longer
	// does: an upgrade put the distribution's stack back, or the file is
	// gone and libpam uses other.
	CodeMailauthdLost = "mailauthd-route-lost"
	// CodeMailauthdLine: the line is there but cannot work: an auth line
	// without expose_authtok (no password reaches the program), or a
	// program path that does not exist.
	CodeMailauthdLine = "mailauthd-line"
)

// MailauthdRoute is a pam_exec.so line that runs "mailauthd pam".
type MailauthdRoute struct {
	Program       string // the program path pam_exec runs
	ExposeAuthtok bool   // pam_exec's expose_authtok: the password on stdin
	Account       bool   // --account
	OnlyType      string // pam_exec's type= option ("" = every type)
}

// ParseMailauthdRoute reports whether l runs mailauthd's PAM front door.
// Its arguments are read as pam_exec does (modules/pam_exec/pam_exec.c):
// options up to the first argument that starts with '/' or is not an
// option; that one is the program, the rest its arguments. The program
// counts as mailauthd when its file name is mailauthd and its first
// argument is "pam".
func ParseMailauthdRoute(l Line) (MailauthdRoute, bool) {
	if l.IsInclude() || filepath.Base(l.Module) != "pam_exec.so" {
		return MailauthdRoute{}, false
	}
	var r MailauthdRoute
	i := 0
	for ; i < len(l.Args); i++ {
		a := l.Args[i]
		if strings.HasPrefix(a, "/") {
			break
		}
		low := strings.ToLower(a)
		switch {
		case low == "expose_authtok":
			r.ExposeAuthtok = true
		case strings.HasPrefix(low, "type="):
			r.OnlyType = a[len("type="):]
		case low == "debug", low == "stdout", low == "seteuid", low == "quiet", low == "quiet_log", strings.HasPrefix(low, "log="):
		default:
			goto program // not an option: pam_exec takes it as the program
		}
	}
program:
	if i >= len(l.Args) {
		return MailauthdRoute{}, false
	}
	r.Program = l.Args[i]
	rest := l.Args[i+1:]
	if filepath.Base(r.Program) != "mailauthd" || len(rest) == 0 || rest[0] != "pam" {
		return MailauthdRoute{}, false
	}
	for _, a := range rest[1:] {
		if a == "--account" || a == "-account" {
			r.Account = true
		}
	}
	return r, true
}

// mailauthdTypes returns the module types (auth, account) whose stack, as
// libpam loads it for v, has a line running mailauthd pam, and those lines.
func mailauthdTypes(v *View) (map[string]bool, []Loaded) {
	types := map[string]bool{}
	var lines []Loaded
	for _, ld := range v.Lines {
		r, ok := ParseMailauthdRoute(ld.Line)
		if !ok || (r.OnlyType != "" && r.OnlyType != ld.Type) {
			continue
		}
		types[ld.Type] = true
		lines = append(lines, ld)
	}
	return types, lines
}

// MailauthdTypes lists the module types of service v that route through
// mailauthd, in libpam's order (auth, account, ...), for the snapshot.
func MailauthdTypes(v *View) []string {
	types, _ := mailauthdTypes(v)
	var out []string
	for _, t := range []string{TypeAuth, TypeAccount, TypeSession, TypePassword} {
		if types[t] {
			out = append(out, t)
		}
	}
	return out
}

// checkMailauthd reports services that should route through mailauthd
// (recorded in the snapshot, or required by a rule) but no longer do, and
// mailauthd lines that cannot work.
func checkMailauthd(c *collector, sys *System, snap *Snapshot, views map[string]*View, rules []Rule) {
	want := map[string][]string{} // service -> types that must route
	why := map[string]string{}
	if snap != nil {
		for _, name := range sortedKeys(snap.Services) {
			if ts := snap.Services[name].Mailauthd; len(ts) > 0 {
				want[name] = append(want[name], ts...)
				why[name] = "it did at snapshot time"
			}
		}
	}
	for _, r := range rules {
		if r.RequireMailauthd {
			if !contains(want[r.Service], r.Type) {
				want[r.Service] = append(want[r.Service], r.Type)
			}
			if why[r.Service] == "" {
				why[r.Service] = "a require_mailauthd rule says it must"
			}
		}
	}
	other := views[OtherService]
	for _, name := range sortedKeys(want) {
		v := views[name]
		if v == nil {
			v = sys.Analyze(name)
		}
		in := v
		if v.UsesOther() && other != nil {
			in = other
		}
		have, _ := mailauthdTypes(in)
		var lost []string
		for _, t := range want[name] {
			if !have[t] {
				lost = append(lost, t)
			}
		}
		if len(lost) == 0 {
			continue
		}
		types := strings.Join(lost, " and ")
		var put []string
		for _, t := range lost {
			if t == TypeAccount {
				put = append(put, "account required pam_exec.so quiet /usr/bin/mailauthd pam --account")
			} else {
				put = append(put, t+" required pam_exec.so quiet expose_authtok /usr/bin/mailauthd pam")
			}
		}
		f := Finding{Severity: Critical, Code: CodeMailauthdLost,
			Fix: fmt.Sprintf("mailauthd pamcheck restore %s if the snapshot has the right file; otherwise put back: %s", name, strings.Join(put, "; "))}
		switch {
		case v.UsesOther() && in.Path != "":
			f.Path = in.Path
			f.Message = fmt.Sprintf("service %s no longer routes %s through mailauthd (%s): it has no file of its own, and libpam uses %s (%s)",
				name, types, why[name], in.Path, stacksDesc(in, lost))
		case v.UsesOther():
			f.Message = fmt.Sprintf("service %s no longer routes %s through mailauthd (%s): it has no file of its own and there is no other file, so pam_start fails for every login",
				name, types, why[name])
		default:
			f.Path = v.Path
			f.Message = fmt.Sprintf("%s no longer routes %s through mailauthd (%s): %s; those logins are no longer the daemon's decision",
				v.Path, types, why[name], stacksDesc(v, lost))
		}
		c.add(f, name)
	}
	// Lines that route but cannot work, in every watched service.
	for _, name := range sortedKeys(views) {
		_, lines := mailauthdTypes(views[name])
		for _, ld := range lines {
			r, _ := ParseMailauthdRoute(ld.Line)
			if ld.Type == TypeAuth && !r.Account && !r.ExposeAuthtok {
				c.add(Finding{Severity: Critical, Code: CodeMailauthdLine, Path: ld.File, Line: ld.Line.Num,
					Message: fmt.Sprintf("%s line %d: pam_exec runs mailauthd pam without expose_authtok: no password reaches it, every login via %s is refused", ld.File, ld.Line.Num, name),
					Fix:     fmt.Sprintf("add expose_authtok before the program on line %d of %s", ld.Line.Num, ld.File)}, name)
			}
			if ld.Type == TypeAuth && r.Account {
				c.add(Finding{Severity: Critical, Code: CodeMailauthdLine, Path: ld.File, Line: ld.Line.Num,
					Message: fmt.Sprintf("%s line %d: mailauthd pam --account on an auth line refuses to run: every login via %s fails", ld.File, ld.Line.Num, name),
					Fix:     fmt.Sprintf("remove --account from line %d of %s (it belongs on account lines)", ld.Line.Num, ld.File)}, name)
			}
			if !strings.HasPrefix(r.Program, "/") || !sys.exists(r.Program) {
				c.add(Finding{Severity: Critical, Code: CodeMailauthdLine, Path: ld.File, Line: ld.Line.Num,
					Message: fmt.Sprintf("%s line %d: %s does not exist: pam_exec cannot run it, every %s via %s fails", ld.File, ld.Line.Num, r.Program, typeWord(ld.Type), name),
					Fix:     fmt.Sprintf("reinstall mailauthd, or correct the path on line %d of %s", ld.Line.Num, ld.File)}, name)
			}
		}
	}
}

// stacksDesc names the modules of each type's stack, e.g. "its auth stack
// is pam_unix.so, pam_deny.so, pam_permit.so".
func stacksDesc(v *View, types []string) string {
	var parts []string
	for _, typ := range types {
		var mods []string
		for _, ld := range v.Lines {
			if ld.Type != typ || ld.Line.IsInclude() || ld.Line.Module == "" {
				continue
			}
			mods = append(mods, filepath.Base(ld.Line.Module))
		}
		desc := "empty"
		if len(mods) > 0 {
			desc = strings.Join(uniq(mods), ", ")
		}
		parts = append(parts, "its "+typ+" stack is "+desc)
	}
	return strings.Join(parts, ", ")
}
