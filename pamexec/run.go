package pamexec

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"log/syslog"
	"os"
	"syscall"
	"time"
)

// WatchdogGrace is how long past Timeout the watchdog waits for the normal
// path (which honours the same deadline) before it ends the process.
const WatchdogGrace = 500 * time.Millisecond

// Run is one run as pam_exec starts it: what it touches outside itself is
// here, so tests drive it without libpam.
type Run struct {
	// Stdin carries the password on auth lines with expose_authtok.
	Stdin  io.Reader
	Getenv func(string) string
	// Exit is the watchdog's way out (os.Exit): pam_exec waits for the
	// child forever, so whatever blocks, the run ends as a failure.
	Exit    func(int)
	Timeout time.Duration // the whole run (pam.timeout)
	// Account is --account: this line must be an account line.
	Account bool
	// Service, when set (--service), is the service the decision sees
	// instead of PAM_SERVICE.
	Service string
	// Logger receives one line per run (nil: none): to stderr (pam_exec's
	// log= file, or /dev/null), and syslog when the command decided so.
	Logger *slog.Logger
	// Decider decides (a control.Fallback: the daemon, else standalone).
	Decider Decider
	// Via, if set, says who decided, for the log line.
	Via func() (via, notRunning string)
}

// Main performs the run and returns the exit code. It logs one line per
// run, never the password.
func (r *Run) Main() int {
	start := time.Now()
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	wd := time.AfterFunc(r.Timeout+WatchdogGrace, func() {
		log.Error("pam: gave up", "reason", "watchdog", "timeout", r.Timeout, "exit", ExitTempFail)
		r.Exit(ExitTempFail)
	})
	defer wd.Stop()
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(r.Timeout))
	defer cancel()

	env, err := ParseEnv(r.Getenv, r.Service, r.Account)
	if err != nil {
		if errors.Is(err, ErrSetup) {
			log.Error("pam: setup", "err", err.Error(), "exit", ExitTempFail)
			return ExitTempFail
		}
		log.Warn("pam", "type", env.Mode.String(), "user", clip(env.User), "service", env.Service, "rhost", clip(env.RHost),
			"result", "reject", "exit", ExitReject, "reason", err.Error(), "cause", "invalid")
		return ExitReject
	}
	var password string
	if env.Mode == ModeAuth {
		if password, err = ReadAuthtok(r.Stdin); err != nil {
			exit := ExitTempFail
			if errors.Is(err, ErrAuthtokTooLong) || errors.Is(err, ErrAuthtokNUL) {
				exit = ExitReject
			}
			log.Warn("pam", "type", env.Mode.String(), "user", env.User, "service", env.Service, "rhost", env.RHost,
				"result", "reject", "exit", exit, "reason", err.Error(), "cause", "invalid")
			return exit
		}
	}

	res := Decide(ctx, env, password, r.Decider)
	password = ""

	attrs := []any{
		"type", env.Mode.String(), "user", env.User, "service", env.Service, "rhost", env.RHost,
		"result", res.Verdict.Outcome.String(), "exit", res.Exit, "reason", res.Verdict.Reason,
	}
	if c := res.Verdict.Cause; c != 0 {
		attrs = append(attrs, "cause", c.String())
	}
	if env.TTY != "" {
		attrs = append(attrs, "tty", env.TTY)
	}
	if r.Via != nil && res.Asked {
		if via, notRunning := r.Via(); via != "" {
			attrs = append(attrs, "via", via)
			if notRunning != "" {
				attrs = append(attrs, "daemon", notRunning)
			}
		}
	}
	attrs = append(attrs, "ms", time.Since(start).Milliseconds())
	if res.Exit == ExitTempFail {
		log.Warn("pam", attrs...)
	} else {
		log.Info("pam", attrs...)
	}
	return res.Exit
}

// SyslogTag is the tag of mailauthd pam's syslog lines
// (journalctl -t mailauthd-pam).
const SyslogTag = "mailauthd-pam"

// OpenSyslog connects to the local syslog (facility authpriv, where PAM's
// own messages go) and returns a writer that files each log record at its
// level.
func OpenSyslog() (io.WriteCloser, error) {
	w, err := syslog.New(syslog.LOG_AUTHPRIV|syslog.LOG_INFO, SyslogTag)
	if err != nil {
		return nil, err
	}
	return &syslogWriter{w: w}, nil
}

type syslogWriter struct{ w *syslog.Writer }

func (s *syslogWriter) Write(p []byte) (int, error) {
	msg := string(bytes.TrimRight(p, "\n"))
	var err error
	switch {
	case bytes.HasPrefix(p, []byte("level=ERROR")), bytes.HasPrefix(p, []byte(`{"level":"ERROR"`)):
		err = s.w.Err(msg)
	case bytes.HasPrefix(p, []byte("level=WARN")), bytes.HasPrefix(p, []byte(`{"level":"WARN"`)):
		err = s.w.Warning(msg)
	case bytes.HasPrefix(p, []byte("level=DEBUG")), bytes.HasPrefix(p, []byte(`{"level":"DEBUG"`)):
		err = s.w.Debug(msg)
	default:
		err = s.w.Info(msg)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *syslogWriter) Close() error { return s.w.Close() }

// IsDevNull reports whether f is /dev/null: pam_exec gives the child
// /dev/null as stdout and stderr unless its log= (or stdout) option is
// set, and then a line on stderr reaches nobody.
func IsDevNull(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	null, err := os.Stat(os.DevNull)
	if err != nil {
		return false
	}
	a, ok1 := fi.Sys().(*syscall.Stat_t)
	b, ok2 := null.Sys().(*syscall.Stat_t)
	return ok1 && ok2 && a.Rdev == b.Rdev && fi.Mode()&os.ModeCharDevice != 0
}
