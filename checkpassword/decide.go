// Package checkpassword implements Dovecot 2.3's checkpassword interface
// (passdb and userdb driver "checkpassword") on top of mailauthd's LDAP
// decision: parse fd 3 and the environment, ask a Decider, and turn the
// verdict into an exit code and the tab-escaped reply Dovecot reads from
// fd 4 (dovecot/core src/auth/db-checkpassword.c).
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

// Decider gives the LDAP decision: ldapauth.Authenticator directly, or the
// running daemon through control.Client.
type Decider interface {
	Authenticate(ctx context.Context, req auth.Request) auth.Verdict
	Lookup(ctx context.Context, req auth.Request) auth.Verdict
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
func Decide(ctx context.Context, cfg Config, in Input, env Env, d Decider) Result {
	req := env.Request(in)
	res := Result{Request: req}
	res.Request.Password = ""

	var v auth.Verdict
	switch env.Mode {
	case ModeAuthenticate:
		if in.Password == "" {
			res.Verdict = auth.Rejected("empty password")
			res.Exit = ExitReject
			return res
		}
		v = d.Authenticate(ctx, req)
	case ModeLookup:
		req.Password = ""
		v = d.Lookup(ctx, req)
	default:
		res.Verdict = auth.TempFailed("unknown mode")
		res.Exit = ExitTempFail
		return res
	}
	res.Verdict = v

	switch v.Outcome {
	case auth.Accept:
		fields, err := cfg.ReplyFields(in.User, v)
		if err != nil {
			res.Verdict = auth.TempFailed(err.Error())
			res.Verdict.DN = v.DN
			res.Exit = ExitTempFail
			return res
		}
		res.Reply = EncodeReply(fields)
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
		// Cannot happen (ReplyFields always sends "user"), but an empty
		// reply with a success code is Dovecot's "internal failure" at best.
		res.Exit = ExitTempFail
		res.Verdict = auth.TempFailed("empty reply")
	}
	return res
}
