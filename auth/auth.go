// Package auth holds the one request and the one verdict that every front
// door (saslauthd socket, Dovecot checkpassword and Lua, PAM, HTTP) speaks,
// so that policy lives in one place and each protocol stays a thin adapter.
package auth

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"
)

// Request is one authentication attempt as a front door received it.
type Request struct {
	User     string // login as the client sent it (libsasl2 has already split off the realm)
	Password string // never logged; empty means "lookup only" for Lookup calls and is refused by Authenticate
	Service  string // smtp, imap, pop, sieve, ...
	Realm    string // domain part, if any
	// ClientAddr is the remote address as the peer gave it: "a.b.c.d;port"
	// (cyrus-sasl master), "a.b.c.d" (Dovecot, nginx), or empty.
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

// Cause classifies a verdict for the code that acts on it (Dovecot's
// "unknown user", throttling, metrics); Reason keeps the detail for the
// admin's log. The zero value says nothing more than the Outcome.
type Cause uint8

const (
	CauseNone          Cause = iota
	CauseInvalid             // malformed request: empty login or password, NUL bytes, too long
	CauseUnknownUser         // no entry for this login
	CauseWrongPassword       // the directory refused the password
	CauseAmbiguous           // several entries for one login
	CausePolicy              // host, service, realm or access-filter rule
	CauseAccount             // the directory's account state: disabled, locked, expired, must change password
	CauseThrottled           // refused without asking the directory: too many failures
	CauseUnavailable         // TempFail: directory down, timeout, busy, misconfigured
	CauseInternal            // TempFail: a bug or an impossible reply
)

var causeNames = [...]string{"", "invalid", "unknown_user", "wrong_password", "ambiguous", "policy",
	"account", "throttled", "unavailable", "internal"}

// String is the cause's stable name, used in logs and metrics labels.
func (c Cause) String() string {
	if int(c) < len(causeNames) {
		return causeNames[c]
	}
	return "unknown"
}

// Field is one extra field a front door returns with an accept (a Dovecot
// passdb/userdb field such as userdb_home or proxy), mapped by the daemon
// from the entry's attributes.
type Field struct {
	Key, Value string
}

// Verdict is the single answer an Authenticator gives.
type Verdict struct {
	Outcome Outcome
	Cause   Cause
	// Reason says why, for logs and for --explain. It never contains the
	// password. Front doors do not show it to clients by default.
	Reason string
	// DN is the directory entry the user resolved to, when known.
	DN string
	// User is the name the entry is known by (ldap.canonical_user) on an
	// Accept: what a front door hands to the mail store, whatever case,
	// spacing or realm the client typed.
	User string
	// Attributes holds the non-secret attributes fetched with the user
	// (mapped attributes for Dovecot fields, host, service), lower-cased names.
	// Shared: callers must not modify it.
	Attributes map[string][]string
	// Fields are the front door's extra fields, set by the daemon for the
	// front doors that return them (control socket: Dovecot, PAM).
	Fields []Field
	// Delay asks the front door to wait this long before answering a
	// failure (the throttle's growing delay). The door waits after its
	// decision slot is free, so delayed guesses hold no capacity that
	// other logins need.
	Delay time.Duration
}

// UserUnknown reports a Reject because no such user exists (as opposed to a
// wrong password or a policy refusal). Dovecot lookups need the difference.
func (v Verdict) UserUnknown() bool { return v.Outcome == Reject && v.Cause == CauseUnknownUser }

// Accepted, Rejected and TempFailed build verdicts.
func Accepted(dn string, attrs map[string][]string) Verdict {
	return Verdict{Outcome: Accept, Reason: "ok", DN: dn, Attributes: attrs}
}
func Rejected(c Cause, reason string) Verdict {
	return Verdict{Outcome: Reject, Cause: c, Reason: reason}
}
func TempFailed(c Cause, reason string) Verdict {
	return Verdict{Outcome: TempFail, Cause: c, Reason: reason}
}

// Authenticator gives one verdict for one request. Implementations must be
// safe for concurrent use and must honour ctx's deadline.
type Authenticator interface {
	Authenticate(ctx context.Context, req Request) Verdict
}

// AuthenticatorFunc adapts a function to Authenticator, like http.HandlerFunc.
type AuthenticatorFunc func(ctx context.Context, req Request) Verdict

// Authenticate calls f.
func (f AuthenticatorFunc) Authenticate(ctx context.Context, req Request) Verdict { return f(ctx, req) }

// Looker finds a user and applies the access rules without a password
// (Dovecot userdb, PAM account): Accept with DN and attributes, Reject with
// CauseUnknownUser when there is no entry, Reject on policy, TempFail on
// errors.
type Looker interface {
	Lookup(ctx context.Context, req Request) Verdict
}

// MaxPassword bounds a password read from a file or a pipe (Cyrus's LDAP
// path truncates at 127 bytes; nothing legitimate comes near this).
const MaxPassword = 4096

// ReadPasswordLine reads the first line of r as a password (a bind
// password file, "-p -", pam_exec's expose_authtok): without its line
// ending, at most MaxPassword bytes, never empty. A longer line is an
// error, not a truncated password.
func ReadPasswordLine(r io.Reader) (string, error) {
	line, err := bufio.NewReaderSize(io.LimitReader(r, MaxPassword+2), 256).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("reading password: %w", err)
	}
	line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	switch {
	case len(line) > MaxPassword:
		return "", fmt.Errorf("password longer than %d bytes", MaxPassword)
	case line == "":
		return "", errors.New("empty password")
	}
	return line, nil
}

// ReadPasswordFile returns the first line of a secret file (a bind
// password, a shared key), without its line ending; an empty line is an
// error, as it would be an empty password.
func ReadPasswordFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	pw, err := ReadPasswordLine(f)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return pw, nil
}

// SecretFileProblem names what is wrong with the permissions of a file
// that holds a secret: readable or writable by every user. "" = fine, or
// the file cannot be examined (reading it reports that).
func SecretFileProblem(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return ""
	}
	if m := fi.Mode().Perm(); m&0o006 != 0 {
		return fmt.Sprintf("%s holds a secret but is mode %04o (every user on this host can read it): chmod o-rwx %s", path, m, path)
	}
	return ""
}

// Panic is what Recover caught: the panic's value, with the request's
// password replaced, and the stack.
type Panic struct {
	Value string
	Stack []byte
}

// Recover runs decide and turns a panic into a temporary failure, so that
// one request's bug costs that request only, never the daemon. Every front
// door decides through it and logs p.
func Recover(req Request, decide func() Verdict) (v Verdict, p *Panic) {
	defer func() {
		if r := recover(); r != nil {
			// The panic value may quote the request: keep the password out of the log.
			msg := fmt.Sprint(r)
			if req.Password != "" {
				msg = strings.ReplaceAll(msg, req.Password, "[password]")
			}
			v, p = TempFailed(CauseInternal, "internal error"), &Panic{Value: msg, Stack: debug.Stack()}
		}
	}()
	return decide(), nil
}
