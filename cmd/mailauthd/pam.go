package main

import (
	"fmt"
	"io"
	"os"

	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/control"
	"github.com/mailauthd/mailauthd/daemon"
	"github.com/mailauthd/mailauthd/pamexec"
)

const pamSynopsis = "[--config FILE] [--saslauthd-conf FILE] [--account] [--service NAME] [--syslog auto|yes|no] [--standalone]\n" +
	"Run by pam_exec.so: exit 0 accepts, anything else refuses (docs/pam.md).\n" +
	"  auth     required pam_exec.so quiet expose_authtok /usr/bin/mailauthd pam\n" +
	"  account  required pam_exec.so quiet /usr/bin/mailauthd pam --account"

func init() {
	register("pam", "PAM front door for pam_exec.so (auth with expose_authtok, account)", pamSynopsis,
		func(args []string, stdout, stderr io.Writer) int {
			return pamMain(args, stdout, pamIO{stderr: stderr, stdin: os.Stdin, getenv: os.Getenv, exit: os.Exit,
				stderrIsNull: func() bool { return pamexec.IsDevNull(os.Stderr) }})
		})
}

// pamIO is what the run touches outside itself, so tests can drive it
// without libpam.
type pamIO struct {
	stderr       io.Writer
	stdin        io.Reader
	getenv       func(string) string
	exit         func(int)
	stderrIsNull func() bool
}

// pamMain parses the flags and runs package pamexec with a
// control.Fallback: the running daemon, else the same decision built here.
// pam_exec passes the application's PAM environment only (no
// MAILAUTHD_CONFIG): the configuration path is --config or the default.
func pamMain(args []string, stdout io.Writer, pio pamIO) int {
	fs := newFlagSet("pam", pamSynopsis)
	var cf configFlags
	cf.register(fs)
	account := fs.Bool("account", false, "this is an account line: host and service rules without a password (refuses to run on an auth line)")
	service := fs.String("service", "", "service `name` for the decision (access.service_attribute) instead of PAM_SERVICE")
	toSyslog := fs.String("syslog", "auto", "log each decision to syslog (authpriv, tag mailauthd-pam): yes, no, or auto = when stderr is /dev/null (pam_exec without log=)")
	standalone := fs.Bool("standalone", false, "never ask the running daemon; decide with LDAP directly")
	if code, ok := parseFlags(fs, args, 0, stdout, pio.stderr); !ok {
		return code
	}
	logTo := pio.stderr
	switch *toSyslog {
	case "yes", "no", "auto":
	default:
		fmt.Fprintf(pio.stderr, "mailauthd pam: --syslog %q: want yes, no or auto\n", *toSyslog)
		return exitUsage
	}
	if *toSyslog == "yes" || *toSyslog == "auto" && pio.stderrIsNull() {
		if w, err := pamexec.OpenSyslog(); err == nil {
			defer w.Close()
			logTo = io.MultiWriter(pio.stderr, w)
		} else {
			fmt.Fprintf(pio.stderr, "mailauthd pam: syslog: %v\n", err)
		}
	}
	cfg, err := cf.load()
	if err != nil {
		// PAM has no "try later": this refuses every login, and says why.
		config.Log{}.NewLogger(logTo, nil, false).Error("pam: configuration", "err", err.Error(), "exit", pamexec.ExitTempFail)
		return pamexec.ExitTempFail
	}
	log := cfg.Log.NewLogger(logTo, nil, false)
	fb := &control.Fallback{Standalone: func() (control.Decider, func(), error) {
		d, err := daemon.New(cfg, daemon.Options{Logger: log, OneShot: true})
		if err != nil {
			return nil, nil, err
		}
		return d.WithFields(), d.Close, nil
	}}
	if !*standalone && cfg.Listen.Control.Path != "" {
		fb.Client = &control.Client{Path: cfg.Listen.Control.Path, Timeout: cfg.PAM.Timeout}
	}
	defer fb.Close()
	r := &pamexec.Run{
		Stdin: pio.stdin, Getenv: pio.getenv, Exit: pio.exit,
		Timeout: cfg.PAM.Timeout, Account: *account, Service: *service,
		Logger:  log,
		Decider: fb, Via: fb.Via,
	}
	return r.Main()
}
