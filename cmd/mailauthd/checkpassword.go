package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/checkpassword"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/control"
	"github.com/mailauthd/mailauthd/ldapauth"
)

func init() {
	register("checkpassword", "Dovecot 2.3 checkpassword passdb/userdb (fd 3 in, fd 4 out)", func(args []string, _, stderr io.Writer) int {
		return checkpasswordMain(args, checkpasswordIO{
			stderr: stderr,
			getenv: os.Getenv,
			fd3:    os.NewFile(3, "fd3"),
			fd4:    os.NewFile(4, "fd4"),
			exit:   os.Exit,
		})
	})
}

// checkpasswordIO is what the run touches outside itself, so tests can
// drive it without a Dovecot.
type checkpasswordIO struct {
	stderr   io.Writer
	getenv   func(string) string
	fd3, fd4 *os.File
	exit     func(int) // the watchdog's way out
}

// watchdogGrace is how long past checkpassword.timeout the watchdog waits
// for the normal path (which honours the same deadline) before it exits.
const watchdogGrace = 500 * time.Millisecond

// checkpasswordMain is one Dovecot checkpassword run. Dovecot appends the
// reply program as the last argument; mailauthd writes the reply to fd 4
// itself, so that argument is accepted and ignored.
func checkpasswordMain(args []string, cio checkpasswordIO) int {
	start := time.Now()
	log := slog.New(slog.NewTextHandler(cio.stderr, &slog.HandlerOptions{ReplaceAttr: checkpasswordDropTime}))

	fs := flag.NewFlagSet("checkpassword", flag.ContinueOnError)
	fs.SetOutput(cio.stderr)
	cfgPath := fs.String("config", config.DefaultPath, "configuration file")
	saslConf := fs.String("saslauthd-conf", "", "take the LDAP settings from this Cyrus saslauthd.conf")
	standalone := fs.Bool("standalone", false, "never ask the running daemon; decide with LDAP directly")
	fs.Usage = func() {
		fmt.Fprintln(cio.stderr, "usage: mailauthd checkpassword [--config FILE] [--saslauthd-conf FILE] [--standalone] [reply-program]")
		fmt.Fprintln(cio.stderr, "Reads user\\0password\\0 from fd 3, writes Dovecot fields to fd 4. Dovecot: passdb/userdb { driver = checkpassword  args = /usr/bin/mailauthd checkpassword }")
		fs.PrintDefaults()
	}
	// flag stops at the first non-flag argument: Dovecot's appended reply
	// program path.
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return checkpassword.ExitTempFail
	}
	if fs.NArg() > 1 {
		log.Error("too many arguments; only the reply program Dovecot appends may follow the flags", "args", fs.Args())
		return checkpassword.ExitTempFail
	}

	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	cfg, err := checkpasswordConfig(*cfgPath, explicit, *saslConf)
	if err != nil {
		log.Error("configuration", "err", err)
		return checkpassword.ExitTempFail
	}
	logOut := cio.stderr
	if cio.getenv("ORIG_UID") != "" && cio.getenv("PROTO") == "TCP" {
		// Run by Dovecot: stderr is its log pipe.
		logOut = &dovecotLogWriter{w: cio.stderr}
	}
	log = checkpasswordLogger(logOut, cfg.Log)

	// Dovecot waits for us forever; whatever blocks (a pipe, a stuck
	// LDAP server ignoring deadlines), this run ends as a temporary failure.
	timeout := cfg.Checkpassword.Timeout
	wd := time.AfterFunc(timeout+watchdogGrace, func() {
		log.Error("checkpassword: gave up", "reason", "watchdog", "timeout", timeout)
		cio.exit(checkpassword.ExitTempFail)
	})
	defer wd.Stop()
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(timeout))
	defer cancel()

	env, err := checkpassword.ParseEnv(cio.getenv)
	if err != nil {
		log.Error("checkpassword: environment", "err", err)
		return checkpassword.ExitTempFail
	}
	in, err := checkpassword.ReadInput(cio.fd3)
	if err != nil {
		log.Warn("checkpassword: refused", "mode", env.Mode.String(), "service", env.Service, "rip", env.RemoteIP, "reason", err.Error())
		if errors.Is(err, checkpassword.ErrInputTooLong) || errors.Is(err, checkpassword.ErrMalformedInput) {
			return checkpassword.ExitReject
		}
		return checkpassword.ExitTempFail
	}
	if env.CredentialsLookup && env.Scheme != "" {
		log.Warn("checkpassword: Dovecot asked for a password hash, which mailauthd never has (it verifies by LDAP bind); the login fails. Offer only PLAIN/LOGIN: auth_mechanisms = plain login",
			"user", in.User, "scheme", env.Scheme)
	}

	d := &checkpasswordDecider{cfg: cfg, log: log}
	if !*standalone && cfg.Listen.Control.Path != "" {
		d.client = &control.Client{Path: cfg.Listen.Control.Path, Timeout: timeout}
	}
	defer d.close()
	res := checkpassword.Decide(ctx, cfg.Checkpassword, in, env, d)
	in.Password = ""

	if len(res.Reply) > 0 {
		if err := writeAll(cio.fd4, res.Reply); err != nil {
			log.Error("checkpassword: writing reply to fd 4", "user", in.User, "err", err)
			return checkpassword.ExitTempFail
		}
		cio.fd4.Close()
	}
	attrs := []any{
		"mode", env.Mode.String(), "user", in.User, "service", env.Service, "rip", env.RemoteIP,
		"result", res.Verdict.Outcome.String(), "exit", res.Exit, "reason", res.Verdict.Reason,
		"via", d.via, "ms", time.Since(start).Milliseconds(),
	}
	if res.Verdict.UserUnknown {
		attrs = append(attrs, "unknown", true)
	}
	if d.fallbackReason != "" {
		attrs = append(attrs, "daemon", d.fallbackReason)
	}
	if res.Exit == checkpassword.ExitTempFail {
		log.Warn("checkpassword", attrs...)
	} else {
		log.Info("checkpassword", attrs...)
	}
	return res.Exit
}

func writeAll(f *os.File, b []byte) error {
	for len(b) > 0 {
		n, err := f.Write(b)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// checkpasswordConfig loads the configuration as serve does. config.Load
// does not read ldap.bind_password_file (ldapauth.New does, only when this
// run decides on its own), so on the fast path that file can stay readable
// by the daemon alone, not by Dovecot's auth user.
func checkpasswordConfig(path string, explicit bool, saslConf string) (*config.File, error) {
	if !explicit && saslConf != "" {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			path = ""
		}
	}
	return config.Load(path, saslConf)
}

// checkpasswordLogger writes to stderr, which Dovecot copies into its own
// log with its own timestamp, so ours is left out.
func checkpasswordLogger(w io.Writer, c config.Log) *slog.Logger {
	var level slog.Level
	level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: checkpasswordDropTime}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// checkpasswordDecider asks the daemon first and decides with LDAP itself
// only when no daemon is there (control.ErrNotRunning: no socket, or a
// stale one). A daemon that is there but fails (timeout, busy, permission
// denied, broken reply) gives a temporary failure: falling back could
// answer differently from the daemon, e.g. while its cache or its view of
// a failed-over LDAP server differs, and would double the LDAP load at
// exactly the moment something is wrong.
type checkpasswordDecider struct {
	cfg    *config.File
	log    *slog.Logger
	client *control.Client

	via            string // "daemon" or "standalone", for the log line
	fallbackReason string
	ldap           *ldapauth.Authenticator
}

func (d *checkpasswordDecider) Authenticate(ctx context.Context, req auth.Request) auth.Verdict {
	return d.decide(ctx, req, false)
}

func (d *checkpasswordDecider) Lookup(ctx context.Context, req auth.Request) auth.Verdict {
	return d.decide(ctx, req, true)
}

func (d *checkpasswordDecider) decide(ctx context.Context, req auth.Request, lookup bool) auth.Verdict {
	if d.client != nil {
		var v auth.Verdict
		var err error
		if lookup {
			v, err = d.client.Lookup(ctx, req)
		} else {
			v, err = d.client.Authenticate(ctx, req)
		}
		if err == nil || !errors.Is(err, control.ErrNotRunning) {
			d.via = "daemon"
			return v // on error a TempFail carrying the reason
		}
		d.fallbackReason = "not running"
	}
	d.via = "standalone"
	a, err := d.standaloneAuthenticator()
	if err != nil {
		return auth.TempFailed("standalone: " + err.Error())
	}
	if lookup {
		return a.Lookup(ctx, req)
	}
	return a.Authenticate(ctx, req)
}

func (d *checkpasswordDecider) standaloneAuthenticator() (*ldapauth.Authenticator, error) {
	if d.ldap != nil {
		return d.ldap, nil
	}
	// config.Load already added the mapped attributes to the search, and
	// ldapauth.New reads ldap.bind_password_file itself.
	a, err := ldapauth.New(d.cfg.LDAP, d.cfg.Access, d.log)
	if err != nil {
		return nil, err
	}
	d.ldap = a
	return a, nil
}

func (d *checkpasswordDecider) close() {
	if d.ldap != nil {
		d.ldap.Close()
	}
}

func checkpasswordDropTime(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey && len(groups) == 0 {
		return slog.Attr{}
	}
	return a
}

// dovecotLogWriter tags each line with Dovecot's internal log prefix
// (lib/failures.c: 0x01, log type + 1, optional pid, space), so Dovecot
// files our lines as Info/Warning/Error instead of logging every line of a
// child's stderr as "Error".
type dovecotLogWriter struct{ w io.Writer }

func (d *dovecotLogWriter) Write(p []byte) (int, error) {
	typ := byte(4) // error
	switch {
	case bytes.HasPrefix(p, []byte("level=DEBUG")), bytes.HasPrefix(p, []byte(`{"level":"DEBUG"`)):
		typ = 1
	case bytes.HasPrefix(p, []byte("level=INFO")), bytes.HasPrefix(p, []byte(`{"level":"INFO"`)):
		typ = 2
	case bytes.HasPrefix(p, []byte("level=WARN")), bytes.HasPrefix(p, []byte(`{"level":"WARN"`)):
		typ = 3
	}
	// One write per record keeps lines whole on the shared pipe.
	line := make([]byte, 0, len(p)+3)
	line = append(line, 0x01, typ, ' ')
	line = append(line, p...)
	if _, err := d.w.Write(line); err != nil {
		return 0, err
	}
	return len(p), nil
}
