package authhttp

import (
	"strconv"

	"github.com/mailauthd/mailauthd/auth"
)

// The texts nginx shows the mail client (after "<tag> NO " for IMAP, "-ERR "
// for POP3, the error code for SMTP). Every refusal gets the same text —
// unknown user, wrong password, host rule, locked account, throttled — so a
// client learns nothing about which; the admin's log says why.
const (
	TextRefused     = "Invalid login or password"
	TextTempFail    = "Temporary authentication failure, try again later"
	TextUnsupported = "Authentication method not supported"
)

// SMTP reply codes (RFC 4954 §6, RFC 3463).
const (
	CodeRefused     = "535 5.7.8" // authentication credentials invalid
	CodeTempFail    = "451 4.3.0" // temporary server failure: the client retries later
	CodeUnsupported = "504 5.5.4" // unrecognized authentication type
)

// tempResponseCode prefixes the temporary failure with the protocol's
// machine-readable code, so clients do not ask the user for a new password:
// IMAP [UNAVAILABLE] (RFC 5530), POP3 [SYS/TEMP] (RFC 3206).
var tempResponseCode = map[Protocol]string{IMAP: "[UNAVAILABLE] ", POP3: "[SYS/TEMP] "}

// replyFor maps a verdict to nginx's answer for a login on proto that was
// the session's attempt-th (Auth-Login-Attempt; 0 when nginx sent none):
//
//   - Accept with a route (Fields Auth-Server, Auth-Port, optional
//     Auth-User): "OK" and the route. An Accept without a usable route is
//     a temporary failure: never an OK with a guessed backend.
//   - Reject (any cause): TextRefused, SMTP code 535 5.7.8, and Auth-Wait
//     while attempt < waitAttempts, so nginx lets the client try again
//     after the pause; from then on without it, and nginx ends the session.
//   - TempFail: the "try again later" text (IMAP [UNAVAILABLE], POP3
//     [SYS/TEMP]), SMTP code 451 4.3.0; no Auth-Wait: the session ends.
func replyFor(proto Protocol, v auth.Verdict, attempt, wait, waitAttempts int) Response {
	switch v.Outcome {
	case auth.Accept:
		if r, ok := okResponse(v.Fields); ok {
			return r
		}
		return tempResponse(proto)
	case auth.TempFail:
		return tempResponse(proto)
	}
	r := Response{Status: TextRefused}
	if proto == SMTP {
		r.ErrorCode = CodeRefused
	}
	if attempt < 1 {
		attempt = 1
	}
	if wait > 0 && attempt < waitAttempts {
		r.Wait = wait
	}
	return r
}

func tempResponse(proto Protocol) Response {
	r := Response{Status: tempResponseCode[proto] + TextTempFail}
	if proto == SMTP {
		r.ErrorCode = CodeTempFail
	}
	return r
}

// unsupportedResponse answers a method mailauthd cannot verify (apop and
// cram-md5 send a digest, not the password; none and external no password
// at all). The session ends: retrying cannot help.
func unsupportedResponse(proto Protocol) Response {
	r := Response{Status: TextUnsupported}
	if proto == SMTP {
		r.ErrorCode = CodeUnsupported
	}
	return r
}

// okResponse reads the route the daemon put into an Accept.
func okResponse(fields []auth.Field) (Response, bool) {
	r := Response{Status: "OK"}
	for _, f := range fields {
		switch f.Key {
		case FieldServer:
			a, err := checkAddr(f.Value)
			if err != nil {
				return Response{}, false
			}
			r.Server = a.String()
		case FieldPort:
			n, err := strconv.Atoi(f.Value)
			if err != nil || n < 1 || n > 65535 {
				return Response{}, false
			}
			r.Port = n
		case FieldUser:
			if safeValue(f.Value) != nil {
				return Response{}, false
			}
			r.User = f.Value
		}
	}
	return r, r.Server != "" && r.Port != 0
}
