package main

import (
	"fmt"
	"io"
	"os"

	"github.com/mailauthd/mailauthd/checkpassword"
	"github.com/mailauthd/mailauthd/control"
	"github.com/mailauthd/mailauthd/daemon"
)

const checkpasswordSynopsis = "[--config FILE] [--saslauthd-conf FILE] [--standalone] [reply-program]\n" +
	"Reads user\\0password\\0 from fd 3, writes Dovecot fields to fd 4.\n" +
	"Dovecot 2.3: passdb/userdb { driver = checkpassword  args = /usr/bin/mailauthd checkpassword }"

func init() {
	register("checkpassword", "Dovecot 2.3 checkpassword passdb/userdb (fd 3 in, fd 4 out)", checkpasswordSynopsis,
		func(args []string, stdout, stderr io.Writer) int {
			return checkpasswordMain(args, stdout, checkpasswordIO{
				stderr: stderr,
				getenv: os.Getenv,
				fds:    func() (*os.File, *os.File) { return os.NewFile(3, "fd3"), os.NewFile(4, "fd4") },
				exit:   os.Exit,
			})
		})
}

// checkpasswordIO is what the run touches outside itself, so tests can
// drive it without a Dovecot.
type checkpasswordIO struct {
	stderr io.Writer
	getenv func(string) string
	// fds wraps Dovecot's fd 3 (request) and fd 4 (reply), called only
	// once the run really starts: an *os.File owns its descriptor and its
	// finalizer closes it, so wrapping 3 and 4 for "checkpassword -h" in a
	// process that uses them otherwise (a test calling run in-process)
	// would close them under it.
	fds  func() (fd3, fd4 *os.File)
	exit func(int) // the watchdog's way out
}

// checkpasswordMain parses the flags and runs package checkpassword with a
// control.Fallback: the running daemon, else the same decision built here.
// Dovecot appends the reply program as the last argument; mailauthd writes
// the reply to fd 4 itself, so that argument is accepted and ignored.
func checkpasswordMain(args []string, stdout io.Writer, cio checkpasswordIO) int {
	fs := newFlagSet("checkpassword", checkpasswordSynopsis)
	var cf configFlags
	cf.register(fs)
	standalone := fs.Bool("standalone", false, "never ask the running daemon; decide with LDAP directly")
	// flag stops at the first non-flag argument: Dovecot's appended reply
	// program path.
	if code, ok := parseFlags(fs, args, 1, stdout, cio.stderr); !ok {
		return code
	}
	cfg, err := cf.load()
	if err != nil {
		// Dovecot logs our stderr; a broken configuration is a temporary
		// failure for the login, never a refusal.
		fmt.Fprintf(cio.stderr, "mailauthd checkpassword: configuration: %v\n", err)
		return checkpassword.ExitTempFail
	}
	log := cfg.Log.NewLogger(checkpassword.LogWriter(cio.stderr, cio.getenv), nil, false)
	fb := &control.Fallback{Standalone: func() (control.Decider, func(), error) {
		d, err := daemon.New(cfg, daemon.Options{Logger: log, OneShot: true})
		if err != nil {
			return nil, nil, err
		}
		return d.WithFields(), d.Close, nil
	}}
	if !*standalone && cfg.Listen.Control.Path != "" {
		fb.Client = &control.Client{Path: cfg.Listen.Control.Path, Timeout: cfg.Checkpassword.Timeout}
	}
	defer fb.Close()
	fd3, fd4 := cio.fds()
	r := &checkpassword.Run{
		Getenv: cio.getenv, FD3: fd3, FD4: fd4, Exit: cio.exit,
		Timeout: cfg.Checkpassword.Timeout, Logger: log,
		Decider: fb, Via: fb.Via,
	}
	return r.Main()
}
