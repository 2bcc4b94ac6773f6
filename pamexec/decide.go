// Package pamexec is the PAM front door: the program Linux-PAM's
// pam_exec.so runs (modules/pam_exec/pam_exec.c), so that any service that
// speaks only PAM (Dovecot's pam passdb, saslauthd -a pam, FTP, webmail)
// gets the daemon's decision without a PAM module of ours loaded into its
// process. It reads pam_exec's environment (PAM_TYPE, PAM_USER,
// PAM_SERVICE, PAM_RHOST) and, on auth lines with expose_authtok, the
// password from stdin; asks a Decider (the running daemon over its control
// socket, or the daemon's decision built in this process when none runs);
// and turns the verdict into an exit code.
//
// pam_exec knows only two answers: exit 0 is PAM_SUCCESS; any other exit
// status, and death by a signal, is PAM_SYSTEM_ERR (logged by pam_exec as
// "PROGRAM failed: exit code N" unless quiet_log). PAM has no "try later"
// for authentication, so a temporary failure is a refusal too; the exit
// codes differ only for the administrator reading logs.
package pamexec

import (
	"context"

	"github.com/mailauthd/mailauthd/auth"
)

// Exit codes. pam_exec maps every one but ExitOK to PAM_SYSTEM_ERR.
const (
	// ExitOK: accepted (auth: password and rules; account: rules).
	ExitOK = 0
	// ExitReject: wrong password, unknown user, refused by a host or
	// service rule, empty or unusable password or user name.
	ExitReject = 1
	// ExitUsage: a bad flag (every mailauthd command exits 2 on that).
	// The Go runtime also exits 2 when it cannot start, e.g. under an
	// address-space limit that is too small (Dovecot's vsz_limit).
	ExitUsage = 2
	// ExitTempFail: could not decide (LDAP down, timeout, daemon busy,
	// configuration unreadable, not run by pam_exec as expected).
	ExitTempFail = 111
)

// Decider is the decision: the running daemon through control.Fallback,
// or the daemon's decision built here when none runs.
type Decider interface {
	auth.Authenticator
	auth.Looker
}

// Result is one run's outcome: the exit code and the verdict for the log.
type Result struct {
	Exit    int
	Verdict auth.Verdict
	Request auth.Request // Password cleared
	Asked   bool         // the Decider was asked
}

// Decide answers one PAM call. It never asks the Decider to authenticate
// an empty password, and never passes a password on an account line.
func Decide(ctx context.Context, env Env, password string, d Decider) Result {
	req := env.Request(password)
	res := Result{Request: req}
	res.Request.Password = ""

	switch env.Mode {
	case ModeAuth:
		if password == "" {
			res.Verdict = auth.Rejected(auth.CauseInvalid, "empty password (or no expose_authtok on the pam_exec line)")
			res.Exit = ExitReject
			return res
		}
		res.Verdict, res.Asked = d.Authenticate(ctx, req), true
	case ModeAccount:
		req.Password = ""
		res.Verdict, res.Asked = d.Lookup(ctx, req), true
	default:
		res.Verdict = auth.TempFailed(auth.CauseInternal, "unknown mode")
		res.Exit = ExitTempFail
		return res
	}
	res.Exit = ExitCode(res.Verdict.Outcome)
	return res
}

// ExitCode maps an outcome to the program's exit code.
func ExitCode(o auth.Outcome) int {
	switch o {
	case auth.Accept:
		return ExitOK
	case auth.Reject:
		return ExitReject
	default:
		return ExitTempFail
	}
}
