package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/doctor"
)

// Exit codes of mailauthd doctor (docs/doctor.md), pamcheck's. A usage
// error is exitUsage (2), as for every command.
const (
	doctorClean    = 0 // no findings above info
	doctorWarning  = 1
	doctorCritical = 2 // also: --upgrade refused the transaction
	doctorError    = 3 // an unreadable --root, or an internal error
)

const doctorSynopsis = `[--json] [--only AREA,...] [--root DIR] [--offline] [flags]
       mailauthd doctor --upgrade apt|list|post   (from a package manager's hook)

Checks mailauthd's configuration and LDAP servers, the Postfix, Cyrus imapd
and Dovecot configurations that use it, the sockets between them and the PAM
files pamcheck watches. Each finding names the file, what is wrong and the fix.

exit status: 0 clean (or info only), 1 warnings, 2 critical findings
             (--upgrade: 2 only when refusing, see doctor.upgrades) or a
             usage error, 3 an unreadable --root or an internal error`

func init() {
	register("doctor", "check this host's whole mail-authentication wiring (mailauthd, LDAP, Postfix, Cyrus, Dovecot, PAM)",
		doctorSynopsis, cmdDoctor)
}

func cmdDoctor(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("doctor", doctorSynopsis)
	cfgDefault := os.Getenv("MAILAUTHD_CONFIG")
	if cfgDefault == "" {
		cfgDefault = doctor.DefaultConfigPath
	}
	var o doctor.Options
	fs.StringVar(&o.Config, "config", cfgDefault, "mailauthd configuration file")
	fs.StringVar(&o.SaslauthdConf, "saslauthd-conf", "", "LDAP settings from this Cyrus saslauthd.conf, as mailauthd serve --saslauthd-conf")
	// The hooks shared with pamcheck are pointed at a chroot with its variable.
	rootDefault := os.Getenv("MAILAUTHD_DOCTOR_ROOT")
	if rootDefault == "" {
		rootDefault = os.Getenv("MAILAUTHD_PAMCHECK_ROOT")
	}
	fs.StringVar(&o.Root, "root", rootDefault, "check the tree below this directory (a mounted system, a test tree); runs no peer binaries")
	fs.StringVar(&o.PostfixConfig, "postfix-config", "", "Postfix config_directory (postconf -c); default Postfix's own")
	fs.StringVar(&o.DovecotConfig, "dovecot-config", "", "dovecot.conf (doveconf -c); default /etc/dovecot/dovecot.conf")
	fs.StringVar(&o.CyrusConfig, "cyrus-config", "", "Cyrus imapd.conf; default /etc/imapd.conf")
	fs.BoolVar(&o.Offline, "offline", false, "do not contact the LDAP servers")
	fs.BoolVar(&o.NoSystemd, "no-systemd", false, "ignore systemd units: the sockets are the configuration's listen.* (daemon started by hand)")
	fs.DurationVar(&o.Timeout, "timeout", 0, "bound on each LDAP step (dial, TLS, bind, search); default ldap.timeout")
	only := fs.String("only", "", "comma-separated areas: "+strings.Join(doctor.AllAreas, ","))
	asJSON := fs.Bool("json", false, "print the findings as JSON")
	quiet := fs.Bool("quiet", false, "leave out info findings")
	toSyslog := fs.Bool("syslog", false, "also log each finding above info (facility authpriv, tag mailauthd-doctor)")
	upgrade := fs.String("upgrade", "", "judge a package transaction instead: apt (DPkg::Pre-Install-Pkgs version 3 on $APT_HOOK_INFO_FD or stdin), list (\"name old new\" lines on stdin), post (after a transaction: check Postfix, Cyrus, Dovecot now)")
	if code, ok := parseFlags(fs, args, 0, stdout, stderr); !ok {
		return code
	}
	if o.Root != "" {
		if fi, err := os.Stat(o.Root); err != nil || !fi.IsDir() {
			fmt.Fprintf(stderr, "mailauthd doctor: --root %q is not a directory\n", o.Root)
			return doctorError
		}
	}
	if *only != "" {
		o.Areas = map[string]bool{}
		for _, a := range strings.Split(*only, ",") {
			a = strings.TrimSpace(a)
			if !contains(doctor.AllAreas, a) {
				fmt.Fprintf(stderr, "mailauthd doctor: --only: unknown area %q (areas: %s)\n", a, strings.Join(doctor.AllAreas, ","))
				return exitUsage
			}
			o.Areas[a] = true
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if *upgrade != "" {
		return doctorUpgrade(ctx, o, *upgrade, os.Stdin, stdout, stderr, *asJSON, *toSyslog)
	}
	rep := doctor.Run(ctx, o)
	code := doctorExit(rep)
	if *toSyslog {
		if err := logDoctor(rep); err != nil {
			fmt.Fprintln(stderr, "mailauthd doctor: syslog:", err)
		}
	}
	printDoctor(stdout, rep, code, *asJSON, *quiet)
	return code
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func doctorExit(rep *doctor.Report) int {
	switch rep.Worst() {
	case doctor.Critical:
		return doctorCritical
	case doctor.Warning:
		return doctorWarning
	}
	return doctorClean
}

func printDoctor(w io.Writer, rep *doctor.Report, code int, asJSON, quiet bool) {
	if asJSON {
		out := struct {
			Worst    string           `json:"worst"`
			Exit     int              `json:"exit"`
			Findings []doctor.Finding `json:"findings"`
		}{"none", code, rep.Findings}
		if len(rep.Findings) > 0 {
			out.Worst = rep.Worst().String()
		}
		if out.Findings == nil {
			out.Findings = []doctor.Finding{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(out)
		return
	}
	n := map[doctor.Severity]int{}
	for _, f := range rep.Findings {
		n[f.Severity]++
		if quiet && f.Severity == doctor.Info {
			continue
		}
		fmt.Fprintln(w, formatDoctorFinding(f))
	}
	fmt.Fprintf(w, "doctor: %d critical, %d warning, %d info\n", n[doctor.Critical], n[doctor.Warning], n[doctor.Info])
}

func formatDoctorFinding(f doctor.Finding) string {
	loc := f.Path
	if loc != "" && f.Line > 0 {
		loc += ":" + strconv.Itoa(f.Line)
	}
	s := fmt.Sprintf("%-8s %-9s %-30s %s\n         %s", strings.ToUpper(f.Severity.String()), f.Area, f.Code, loc, f.Message)
	if f.Fix != "" {
		s += "\n         fix: " + f.Fix
	}
	return s
}

func logDoctor(rep *doctor.Report) error {
	w, err := syslog.New(syslog.LOG_AUTHPRIV|syslog.LOG_WARNING, "mailauthd-doctor")
	if err != nil {
		return err
	}
	defer w.Close()
	for _, f := range rep.Findings {
		if f.Severity == doctor.Info {
			continue
		}
		msg := fmt.Sprintf("%s %s %s: %s; fix: %s", f.Severity, f.Code, f.Path, f.Message, f.Fix)
		if f.Severity == doctor.Critical {
			err = w.Crit(msg)
		} else {
			err = w.Warning(msg)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// doctorUpgrade runs from a package manager's hook. It never fails the
// hook because of its own trouble (an unreadable stream, a broken
// configuration): only a refusal the admin opted into stops the transaction.
func doctorUpgrade(ctx context.Context, o doctor.Options, mode string, stdin io.Reader, stdout, stderr io.Writer, asJSON, toSyslog bool) int {
	var rep *doctor.Report
	switch mode {
	case "apt", "list":
		in := stdin
		if mode == "apt" {
			if fd := os.Getenv("APT_HOOK_INFO_FD"); fd != "" && fd != "0" {
				n, err := strconv.Atoi(fd)
				if err != nil {
					fmt.Fprintf(stderr, "mailauthd doctor: APT_HOOK_INFO_FD=%q is not a number; not checking\n", fd)
					return doctorClean
				}
				f := os.NewFile(uintptr(n), "apt-hook-info")
				defer f.Close() // ours, from apt; closed now, not by a finalizer later
				in = f
			}
		}
		var changes []doctor.Change
		var err error
		if mode == "apt" {
			changes, err = doctor.ParseAptHook(in)
		} else {
			changes, err = doctor.ParseChangeList(in)
		}
		if err != nil {
			fmt.Fprintln(stderr, "mailauthd doctor --upgrade: cannot read the transaction, not checking it:", err)
			return doctorClean
		}
		rep = doctor.CheckUpgrade(ctx, o, changes)
	case "post":
		o.Offline = true
		if o.Areas == nil {
			o.Areas = map[string]bool{doctor.AreaMailauthd: true, doctor.AreaPostfix: true, doctor.AreaCyrus: true, doctor.AreaDovecot: true}
		}
		rep = doctor.Run(ctx, o)
	default:
		fmt.Fprintf(stderr, "mailauthd doctor: --upgrade %q: want apt, list or post\n", mode)
		return exitUsage
	}
	if toSyslog {
		if err := logDoctor(rep); err != nil {
			fmt.Fprintln(stderr, "mailauthd doctor: syslog:", err)
		}
	}
	refuse := false
	cfgNote := ""
	root := o.Root
	cfgFile := o.Config
	if root != "" && root != "/" {
		cfgFile = strings.TrimSuffix(root, "/") + "/" + strings.TrimPrefix(o.Config, "/")
	}
	// A missing file means the defaults: the hooks run on hosts where
	// mailauthd is installed but not configured yet.
	if cfg, err := config.Find(cfgFile, false, ""); err == nil {
		refuse = cfg.Doctor.Upgrades == config.UpgradesRefuse
	} else {
		cfgNote = " (" + err.Error() + ")"
	}
	critical := rep.Worst() == doctor.Critical
	code := doctorClean
	if critical && refuse {
		code = doctorCritical
	}
	if asJSON {
		printDoctor(stdout, rep, code, true, false)
		return code
	}
	var loud []doctor.Finding
	for _, f := range rep.Findings {
		if f.Severity > doctor.Info {
			loud = append(loud, f)
		}
	}
	if len(loud) == 0 {
		return code
	}
	// apt shows a hook's stderr on the terminal; say it where it is seen.
	bar := strings.Repeat("=", 72)
	fmt.Fprintln(stderr, bar)
	if critical {
		fmt.Fprintln(stderr, "mailauthd doctor: THIS TRANSACTION WOULD BREAK MAIL AUTHENTICATION")
	} else {
		fmt.Fprintln(stderr, "mailauthd doctor: this transaction needs attention")
	}
	for _, f := range loud {
		fmt.Fprintln(stderr, formatDoctorFinding(f))
	}
	switch {
	case critical && refuse:
		fmt.Fprintf(stderr, "mailauthd doctor: refusing (doctor.upgrades: refuse in %s). Fix the above, or set doctor.upgrades: warn to let it through.\n", o.Config)
	case critical:
		fmt.Fprintf(stderr, "mailauthd doctor: letting it run; to stop such transactions set doctor.upgrades: refuse in %s%s\n", o.Config, cfgNote)
	}
	fmt.Fprintln(stderr, bar)
	return code
}
