package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/syslog"
	"os"
	"strings"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/pamcheck"
)

// Exit codes of mailauthd pamcheck (documented in docs/pamcheck.md). A
// usage error is exitUsage (2), as for every command: both ask for a look.
const (
	pcClean    = 0 // no findings, or info only; probe: login succeeded
	pcWarning  = 1 // worst finding is a warning; probe: PAM refused the login
	pcCritical = 2 // at least one critical finding
	pcError    = 3 // configuration or internal error
)

func init() {
	register("pamcheck", "check PAM service files mail depends on (snapshot, check, restore, probe)",
		"<snapshot|check|restore|probe> [flags]", cmdPamcheck)
}

func pamcheckUsage(w io.Writer) {
	fmt.Fprintln(w, `usage: mailauthd pamcheck <snapshot|check|restore|probe> [flags]

  snapshot                 record the watched PAM services as known-good
  check [--json]           compare the system with the snapshot (or the rules)
  restore [--dry-run] [SERVICE...]
                           put back the snapshot copies of missing or changed files
  probe --service S --user U [--password-file F]
                           run a real PAM authenticate + acct_mgmt (password on stdin)

exit status: 0 clean (or info only), 1 warnings (probe: login refused),
             2 critical findings or a usage error, 3 configuration or internal error`)
}

func cmdPamcheck(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		pamcheckUsage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "-help", "help":
		pamcheckUsage(stdout)
		return pcClean
	}
	switch args[0] {
	case "snapshot":
		return pcSnapshot(args[1:], stdout, stderr)
	case "check":
		return pcCheck(args[1:], stdout, stderr)
	case "restore":
		return pcRestore(args[1:], stdout, stderr)
	case "probe":
		return pcProbe(args[1:], os.Stdin, stdout, stderr)
	}
	fmt.Fprintf(stderr, "mailauthd pamcheck: unknown subcommand %q\n", args[0])
	pamcheckUsage(stderr)
	return exitUsage
}

// common holds the flags every subcommand has. Defaults may come from the
// environment so package-manager hooks can be pointed at a chroot or a test tree.
type common struct {
	config, root, stateDir string
}

func (c *common) register(fs *flag.FlagSet) {
	cfg := os.Getenv("MAILAUTHD_CONFIG")
	if cfg == "" {
		cfg = config.DefaultPath
	}
	fs.StringVar(&c.config, "config", cfg, "mailauthd YAML `file`; its pamcheck: section applies (missing file = defaults)")
	fs.StringVar(&c.root, "root", os.Getenv("MAILAUTHD_PAMCHECK_ROOT"), "treat every path as relative to this directory (a mounted system, a test tree)")
	fs.StringVar(&c.stateDir, "state-dir", "", "snapshot directory below --root (default: pamcheck.state_dir, "+pamcheck.DefaultStateDir+")")
}

func (c *common) load() (pamcheck.Config, *pamcheck.System, string, error) {
	// A missing file means defaults even when named: package-manager hooks
	// run on hosts where mailauthd is installed but not configured yet.
	f, err := config.Find(c.config, false, "")
	if err != nil {
		return pamcheck.Config{}, nil, "", err
	}
	cfg := f.Pamcheck
	if c.stateDir != "" {
		if !strings.HasPrefix(c.stateDir, "/") {
			return cfg, nil, "", fmt.Errorf("--state-dir %q must be absolute", c.stateDir)
		}
		cfg.StateDir = c.stateDir
	}
	if c.root != "" {
		fi, err := os.Stat(c.root)
		if err != nil || !fi.IsDir() {
			return cfg, nil, "", fmt.Errorf("--root %q is not a directory", c.root)
		}
	}
	sys := pamcheck.NewSystem(c.root, cfg)
	return cfg, sys, sys.Real(cfg.StateDir), nil
}

func pcSnapshot(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("pamcheck snapshot", "[--config FILE] [--root DIR] [--state-dir DIR]")
	var c common
	c.register(fs)
	if code, ok := parseFlags(fs, args, 0, stdout, stderr); !ok {
		return code
	}
	cfg, sys, stateDir, err := c.load()
	if err != nil {
		fmt.Fprintln(stderr, "mailauthd pamcheck snapshot:", err)
		return pcError
	}
	snap, err := pamcheck.TakeSnapshot(sys, cfg, time.Now())
	if err == nil {
		err = snap.Save(sys, stateDir)
	}
	if err != nil {
		fmt.Fprintln(stderr, "mailauthd pamcheck snapshot:", err)
		return pcError
	}
	present := 0
	for _, s := range snap.Services {
		if s.Path != "" {
			present++
		}
	}
	fmt.Fprintf(stdout, "snapshot of %d services (%d with their own file), %d files, saved in %s\n",
		len(snap.Services), present, len(snap.Files), stateDir)
	return pcClean
}

func pcCheck(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("pamcheck check", "[--json] [--syslog] [--quiet] [--config FILE] [--root DIR] [--state-dir DIR]")
	var c common
	c.register(fs)
	asJSON := fs.Bool("json", false, "print findings as JSON (for monitoring)")
	toSyslog := fs.Bool("syslog", false, "also log each finding to syslog/journal (tag mailauthd-pamcheck)")
	quiet := fs.Bool("quiet", false, "print nothing when there is nothing above info")
	if code, ok := parseFlags(fs, args, 0, stdout, stderr); !ok {
		return code
	}
	cfg, sys, stateDir, err := c.load()
	if err != nil {
		fmt.Fprintln(stderr, "mailauthd pamcheck check:", err)
		return pcError
	}
	snap, err := pamcheck.LoadSnapshot(stateDir)
	if err != nil && !errors.Is(err, pamcheck.ErrNoSnapshot) {
		fmt.Fprintln(stderr, "mailauthd pamcheck check:", err)
		return pcError
	}
	findings := pamcheck.Check(sys, snap, cfg)
	code := exitFor(findings)
	if *toSyslog {
		if err := logFindings(findings, snap != nil); err != nil {
			fmt.Fprintln(stderr, "mailauthd pamcheck check: syslog:", err)
		}
	}
	if *asJSON {
		out := struct {
			Snapshot bool               `json:"snapshot"`
			Worst    string             `json:"worst"`
			Exit     int                `json:"exit"`
			Findings []pamcheck.Finding `json:"findings"`
		}{snap != nil, worstName(findings), code, findings}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			return pcError
		}
		return code
	}
	if *quiet && code == pcClean {
		return code
	}
	if snap == nil {
		fmt.Fprintf(stdout, "note: no snapshot in %s; only the built-in checks and the configured rules apply (run: mailauthd pamcheck snapshot)\n", stateDir)
	}
	for _, f := range findings {
		fmt.Fprintln(stdout, formatFinding(f))
	}
	if len(findings) == 0 {
		fmt.Fprintln(stdout, "ok: no findings")
	}
	return code
}

func formatFinding(f pamcheck.Finding) string {
	svc := strings.Join(f.Services, ",")
	if svc == "" {
		svc = "-"
	}
	return fmt.Sprintf("%-8s %-16s %-10s %s\n         fix: %s", strings.ToUpper(f.Severity.String()), f.Code, svc, f.Message, f.Fix)
}

func worstName(fs []pamcheck.Finding) string {
	if len(fs) == 0 {
		return "none"
	}
	return pamcheck.Worst(fs).String()
}

func exitFor(fs []pamcheck.Finding) int {
	switch pamcheck.Worst(fs) {
	case pamcheck.Critical:
		return pcCritical
	case pamcheck.Warning:
		return pcWarning
	}
	return pcClean
}

func logFindings(fs []pamcheck.Finding, haveSnapshot bool) error {
	w, err := syslog.New(syslog.LOG_AUTHPRIV|syslog.LOG_WARNING, "mailauthd-pamcheck")
	if err != nil {
		return err
	}
	defer w.Close()
	if len(fs) == 0 {
		return w.Info("PAM service files OK")
	}
	if !haveSnapshot {
		w.Notice("no snapshot taken; only built-in checks and rules applied")
	}
	for _, f := range fs {
		msg := fmt.Sprintf("%s %s [%s]: %s; fix: %s", f.Severity, f.Code, strings.Join(f.Services, ","), f.Message, f.Fix)
		switch f.Severity {
		case pamcheck.Critical:
			err = w.Crit(msg)
		case pamcheck.Warning:
			err = w.Warning(msg)
		default:
			err = w.Info(msg)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func pcRestore(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("pamcheck restore", "[--dry-run] [--config FILE] [--root DIR] [--state-dir DIR] [SERVICE...]")
	var c common
	c.register(fs)
	dry := fs.Bool("dry-run", false, "only print what would be done")
	if code, ok := parseFlags(fs, args, 1<<20, stdout, stderr); !ok {
		return code
	}
	_, sys, stateDir, err := c.load()
	if err != nil {
		fmt.Fprintln(stderr, "mailauthd pamcheck restore:", err)
		return pcError
	}
	snap, err := pamcheck.LoadSnapshot(stateDir)
	if err != nil {
		fmt.Fprintln(stderr, "mailauthd pamcheck restore:", err)
		return pcError
	}
	acts, err := pamcheck.Restore(sys, snap, pamcheck.RestoreOptions{
		Services: fs.Args(), DryRun: *dry, StateDir: stateDir, Now: time.Now(),
	})
	prefix := ""
	if *dry {
		prefix = "would: "
	}
	for _, a := range acts {
		fmt.Fprintln(stdout, prefix+a.String())
	}
	if err != nil {
		fmt.Fprintln(stderr, "mailauthd pamcheck restore:", err)
		return pcError
	}
	if len(acts) == 0 {
		fmt.Fprintln(stdout, "nothing to restore: every file matches the snapshot")
	}
	return pcClean
}

func pcProbe(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := newFlagSet("pamcheck probe", "--service S --user U [--password-file F] [--conf-dir DIR] [--json] [--timeout D]")
	var c common
	c.register(fs)
	service := fs.String("service", "imap", "PAM service to run")
	user := fs.String("user", "", "user to authenticate")
	pwFile := fs.String("password-file", "", "read the password from this file (default: first line of stdin)")
	confDir := fs.String("conf-dir", "", "run against this pam.d directory (pam_start_confdir) instead of the system's")
	timeout := fs.Duration("timeout", 30*time.Second, "give up waiting for the PAM stack after this long")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if code, ok := parseFlags(fs, args, 0, stdout, stderr); !ok {
		return code
	}
	if *user == "" {
		fmt.Fprintln(stderr, "mailauthd pamcheck probe: --user is required")
		return exitUsage
	}
	if c.root != "" && *confDir == "" {
		fmt.Fprintln(stderr, "mailauthd pamcheck probe: the host's libpam reads the host's /etc/pam.d; with --root give --conf-dir")
		return exitUsage
	}
	_, sys, _, err := c.load()
	if err != nil {
		fmt.Fprintln(stderr, "mailauthd pamcheck probe:", err)
		return pcError
	}
	pw, err := readPassword(*pwFile, stdin)
	if err != nil {
		fmt.Fprintln(stderr, "mailauthd pamcheck probe:", err)
		return pcError
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	res, err := pamcheck.Probe(ctx, sys, pamcheck.ProbeOptions{Service: *service, User: *user, Password: pw, ConfDir: *confDir})
	if err != nil {
		if res != nil && len(res.Opened) > 0 {
			fmt.Fprintf(stderr, "files libpam opened: %s\n", strings.Join(res.Opened, " "))
		}
		fmt.Fprintln(stderr, "mailauthd pamcheck probe:", err)
		return pcError
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(res)
	} else {
		used := res.Used
		if res.FellBack {
			used += " (FALLBACK: no file of its own, libpam used other)"
		}
		fmt.Fprintf(stdout, "service:      %s\nuser:         %s\nfile used:    %s\n", res.Service, res.User, used)
		fmt.Fprintf(stdout, "files opened: %s\n", strings.Join(res.Opened, " "))
		if !res.Agrees {
			exp := res.Expected
			if exp == "" {
				exp = "other"
			}
			fmt.Fprintf(stdout, "WARNING: libpam order predicts %s; another process may have opened pam.d files at the same time\n", exp)
		}
		fmt.Fprintf(stdout, "authenticate: %s\nacct_mgmt:    %s\n", res.Auth, res.Account)
		for _, m := range res.Messages {
			fmt.Fprintf(stdout, "module says:  %s\n", m)
		}
	}
	if res.FellBack && res.OK {
		fmt.Fprintln(stdout, "result:       login accepted, but by the other stack")
		return pcWarning
	}
	if !res.OK {
		fmt.Fprintln(stdout, "result:       login refused")
		return pcWarning
	}
	fmt.Fprintln(stdout, "result:       login accepted")
	return pcClean
}

func readPassword(file string, stdin io.Reader) (string, error) {
	if file == "" {
		return auth.ReadPasswordLine(stdin)
	}
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	return auth.ReadPasswordLine(f)
}
