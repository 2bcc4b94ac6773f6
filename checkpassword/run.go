package checkpassword

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"

	"time"
)

// WatchdogGrace is how long past Timeout the watchdog waits for the normal
// path (which honours the same deadline) before it exits the process.
const WatchdogGrace = 500 * time.Millisecond

// Run is one checkpassword run as Dovecot starts it: what it touches
// outside itself is here, so tests drive it without a Dovecot.
type Run struct {
	Getenv func(string) string
	FD3    io.Reader      // user\0password\0timestamp\0
	FD4    io.WriteCloser // the reply
	// Exit is the watchdog's way out (os.Exit): Dovecot waits for the
	// child forever, so whatever blocks, the run ends as a temporary
	// failure.
	Exit    func(int)
	Timeout time.Duration // the whole run (checkpassword.timeout)
	// Logger receives one line per run (nil: none); see LogWriter.
	Logger *slog.Logger
	// Decider decides (a control.Fallback: the daemon, else standalone).
	Decider Decider
	// Via, if set, says who decided, for the log line.
	Via func() (via, notRunning string)
}

// Main performs the run and returns the exit code.
func (r *Run) Main() int {
	start := time.Now()
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	wd := time.AfterFunc(r.Timeout+WatchdogGrace, func() {
		log.Error("checkpassword: gave up", "reason", "watchdog", "timeout", r.Timeout)
		r.Exit(ExitTempFail)
	})
	defer wd.Stop()
	ctx, cancel := context.WithDeadline(context.Background(), start.Add(r.Timeout))
	defer cancel()

	env, err := ParseEnv(r.Getenv)
	if err != nil {
		log.Error("checkpassword: environment", "err", err)
		return ExitTempFail
	}
	in, err := ReadInput(r.FD3)
	if err != nil {
		log.Warn("checkpassword: refused", "mode", env.Mode.String(), "service", env.Service, "rip", env.RemoteIP, "reason", err.Error())
		if errors.Is(err, ErrInputTooLong) || errors.Is(err, ErrMalformedInput) {
			return ExitReject
		}
		return ExitTempFail
	}
	if env.CredentialsLookup && env.Scheme != "" {
		log.Warn("checkpassword: Dovecot asked for a password hash, which mailauthd never has (it verifies by LDAP bind); the login fails. Offer only PLAIN/LOGIN: auth_mechanisms = plain login",
			"user", in.User, "scheme", env.Scheme)
	}

	res := Decide(ctx, in, env, r.Decider)
	in.Password = ""

	if len(res.Reply) > 0 {
		if err := writeAll(r.FD4, res.Reply); err != nil {
			log.Error("checkpassword: writing reply to fd 4", "user", in.User, "err", err)
			return ExitTempFail
		}
		r.FD4.Close()
	}
	attrs := []any{
		"mode", env.Mode.String(), "user", in.User, "service", env.Service, "rip", env.RemoteIP,
		"result", res.Verdict.Outcome.String(), "exit", res.Exit, "reason", res.Verdict.Reason,
	}
	if c := res.Verdict.Cause; c != 0 {
		attrs = append(attrs, "cause", c.String())
	}
	if r.Via != nil {
		via, notRunning := r.Via()
		attrs = append(attrs, "via", via)
		if notRunning != "" {
			attrs = append(attrs, "daemon", notRunning)
		}
	}
	attrs = append(attrs, "ms", time.Since(start).Milliseconds())
	if res.Exit == ExitTempFail {
		log.Warn("checkpassword", attrs...)
	} else {
		log.Info("checkpassword", attrs...)
	}
	return res.Exit
}

func writeAll(w io.Writer, b []byte) error {
	for len(b) > 0 {
		n, err := w.Write(b)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// LogWriter is where a run logs: stderr, which is Dovecot's log pipe when
// Dovecot started the run (one line per write, as Dovecot reads it).
func LogWriter(stderr io.Writer, getenv func(string) string) io.Writer {
	if getenv("ORIG_UID") != "" && getenv("PROTO") == "TCP" {
		return &DovecotLogWriter{W: stderr}
	}
	return stderr
}

// DovecotLogWriter tags each line with Dovecot's internal log prefix
// (lib/failures.c: 0x01, log type + 1, optional pid, space), so Dovecot
// files our lines as Info/Warning/Error instead of logging every line of a
// child's stderr as "Error".
type DovecotLogWriter struct{ W io.Writer }

func (d *DovecotLogWriter) Write(p []byte) (int, error) {
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
	if _, err := d.W.Write(line); err != nil {
		return 0, err
	}
	return len(p), nil
}
