// Package checkpassword implements Dovecot 2.3's checkpassword interface
// (passdb and userdb driver "checkpassword") on top of mailauthd's
// decision: parse fd 3 and the environment, ask a Decider (the running
// daemon, or the same decision built in-process when none runs), and turn
// the verdict and its fields into an exit code and the tab-escaped reply
// Dovecot reads from fd 4 (dovecot/core src/auth/db-checkpassword.c).
package checkpassword

import (
	"context"

	"github.com/mailauthd/mailauthd/auth"
)

// Exit codes, as db-checkpassword.c reads them.
const (
	// ExitOK: password accepted, reply on fd 4 (authentication).
	ExitOK = 0
	// ExitReject: wrong password, unknown user or refused by policy
	// (authentication). Dovecot answers AUTHENTICATIONFAILED.
	ExitReject = 1
	// ExitFound: user found, reply on fd 4 (lookup, AUTHORIZED=1).
	// On an authentication Dovecot would read 2 as "userdb-only program
	// used as passdb"; mailauthd does both, so never returns it there.
	ExitFound = 2
	// ExitUnknown: no such user, or refused by policy (lookup).
	ExitUnknown = 3
	// ExitTempFail: could not decide (LDAP down, timeout, bad setup).
	// Dovecot answers [UNAVAILABLE] and the client may retry.
	ExitTempFail = 111
)

// Decider gives the decision with the Dovecot fields of an accept already
// mapped: the running daemon through control, or the daemon's decision
// built in this process.
type Decider interface {
	auth.Authenticator
	auth.Looker
}

// Result is one run's outcome: the exit code, the reply for fd 4 (only
// with ExitOK and ExitFound), and the verdict for the log line.
type Result struct {
	Exit    int
	Reply   []byte
	Verdict auth.Verdict
	Request auth.Request // Password cleared
}

// Decide answers one Dovecot request. It never returns ExitOK or
// ExitFound without a non-empty reply, and never asks the Decider to
// authenticate an empty password.
func Decide(ctx context.Context, in Input, env Env, d Decider) Result {
	req := env.Request(in)
	res := Result{Request: req}
	res.Request.Password = ""

	var v auth.Verdict
	switch env.Mode {
	case ModeAuthenticate:
		if in.Password == "" {
			res.Verdict = auth.Rejected(auth.CauseInvalid, "empty password")
			res.Exit = ExitReject
			return res
		}
		v = d.Authenticate(ctx, req)
	case ModeLookup:
		req.Password = ""
		v = d.Lookup(ctx, req)
	default:
		res.Verdict = auth.TempFailed(auth.CauseInternal, "unknown mode")
		res.Exit = ExitTempFail
		return res
	}
	res.Verdict = v

	switch v.Outcome {
	case auth.Accept:
		res.Reply = EncodeReply(v.Fields)
		if env.Mode == ModeLookup {
			res.Exit = ExitFound
		} else {
			res.Exit = ExitOK
		}
	case auth.Reject:
		if env.Mode == ModeLookup {
			// A user the policy refuses here is, for Dovecot, not a user
			// of this server: "unknown" fails the login or the delivery
			// cleanly instead of retrying forever.
			res.Exit = ExitUnknown
		} else {
			res.Exit = ExitReject
		}
	default:
		res.Exit = ExitTempFail
	}
	if len(res.Reply) == 0 && (res.Exit == ExitOK || res.Exit == ExitFound) {
		// The daemon's mapping always sends "user"; an accept without
		// fields is a decider that maps nothing, and an empty reply with a
		// success code is Dovecot's "internal failure" at best.
		res.Exit = ExitTempFail
		res.Verdict = auth.TempFailed(auth.CauseInternal, "accept without Dovecot fields")
	}
	return res
}
