// Package auth holds the one request and the one verdict that every front
// door (saslauthd socket, Dovecot checkpassword, later HTTP) speaks, so that
// policy lives in one place and each protocol stays a thin adapter.
package auth

import (
	"context"
	"strings"
)

// Request is one authentication attempt as a front door received it.
type Request struct {
	User     string // login as the client sent it (libsasl2 has already split off the realm)
	Password string // never logged; empty means "lookup only" for Lookup calls and is refused by Authenticate
	Service  string // smtp, imap, pop, sieve, ...
	Realm    string // domain part, if any
	// ClientAddr is the remote address as the peer gave it: "a.b.c.d;port"
	// (cyrus-sasl master), "a.b.c.d" (Dovecot), or empty.
	ClientAddr string
}

// SplitRealm applies libsasl2's rule when a front door received
// "name@domain" with no realm: split at the last '@'. A request that already
// has a realm is returned unchanged.
func (r Request) SplitRealm() Request {
	if r.Realm != "" {
		return r
	}
	if i := strings.LastIndexByte(r.User, '@'); i > 0 && i < len(r.User)-1 {
		r.Realm = r.User[i+1:]
		r.User = r.User[:i]
	}
	return r
}

// Outcome is the kind of verdict. The zero value is Reject so that a
// forgotten assignment fails closed.
type Outcome int

const (
	Reject   Outcome = iota // wrong password, unknown user, refused by policy
	Accept                  // password verified and every access rule passed
	TempFail                // could not decide: LDAP down, timeout, ambiguous directory state
)

func (o Outcome) String() string {
	switch o {
	case Accept:
		return "accept"
	case TempFail:
		return "tempfail"
	default:
		return "reject"
	}
}

// Verdict is the single answer an Authenticator gives.
type Verdict struct {
	Outcome Outcome
	// Reason says why, for logs and for the text of a NO answer. It never
	// contains the password.
	Reason string
	// UserUnknown is set on a Reject because no such user exists (as opposed
	// to a wrong password or a policy refusal). Dovecot lookups need the difference.
	UserUnknown bool
	// DN is the directory entry the user resolved to, when known.
	DN string
	// Attributes holds the non-secret attributes fetched with the user
	// (mapped attributes for Dovecot fields, host, service), lower-cased names.
	Attributes map[string][]string
}

// Accepted, Rejected and TempFailed build verdicts.
func Accepted(dn string, attrs map[string][]string) Verdict {
	return Verdict{Outcome: Accept, Reason: "ok", DN: dn, Attributes: attrs}
}
func Rejected(reason string) Verdict   { return Verdict{Outcome: Reject, Reason: reason} }
func TempFailed(reason string) Verdict { return Verdict{Outcome: TempFail, Reason: reason} }

// Authenticator gives one verdict for one request. Implementations must be
// safe for concurrent use and must honour ctx's deadline.
type Authenticator interface {
	Authenticate(ctx context.Context, req Request) Verdict
}
