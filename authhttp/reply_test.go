package authhttp

import (
	"testing"

	"github.com/mailauthd/mailauthd/auth"
)

var route = []auth.Field{{Key: FieldServer, Value: "192.0.2.1"}, {Key: FieldPort, Value: "143"}}

// TestReplyFor is the status mapping, as nginx's client sees it.
func TestReplyFor(t *testing.T) {
	rejected := func(c auth.Cause) auth.Verdict { return auth.Rejected(c, "why") }
	accepted := func(f ...auth.Field) auth.Verdict { v := auth.Accepted("uid=a", nil); v.Fields = f; return v }
	temp := auth.TempFailed(auth.CauseUnavailable, "ldap down")
	const wait, attempts = 2, 3
	tests := []struct {
		name    string
		proto   Protocol
		v       auth.Verdict
		attempt int
		want    Response
	}{
		{"imap accept", IMAP, accepted(route...), 1, Response{Status: "OK", Server: "192.0.2.1", Port: 143}},
		{"smtp accept with login rewrite", SMTP, accepted(route[0], auth.Field{Key: FieldPort, Value: "25"}, auth.Field{Key: FieldUser, Value: "alice"}), 1,
			Response{Status: "OK", Server: "192.0.2.1", Port: 25, User: "alice"}},
		{"accept without route is temporary", IMAP, accepted(), 1, Response{Status: "[UNAVAILABLE] " + TextTempFail}},
		{"accept with a name as server is temporary", POP3, accepted(auth.Field{Key: FieldServer, Value: "imap1.example.org"}, route[1]), 1,
			Response{Status: "[SYS/TEMP] " + TextTempFail}},
		{"accept with port 0 is temporary", SMTP, accepted(route[0], auth.Field{Key: FieldPort, Value: "0"}), 1,
			Response{Status: TextTempFail, ErrorCode: CodeTempFail}},
		{"imap wrong password, first attempt: wait", IMAP, rejected(auth.CauseWrongPassword), 1, Response{Status: TextRefused, Wait: wait}},
		{"imap unknown user: same text", IMAP, rejected(auth.CauseUnknownUser), 1, Response{Status: TextRefused, Wait: wait}},
		{"pop3 host rule: same text", POP3, rejected(auth.CausePolicy), 2, Response{Status: TextRefused, Wait: wait}},
		{"smtp throttled: same text and code", SMTP, rejected(auth.CauseThrottled), 1, Response{Status: TextRefused, ErrorCode: CodeRefused, Wait: wait}},
		{"no Auth-Login-Attempt counts as the first", IMAP, rejected(auth.CauseWrongPassword), 0, Response{Status: TextRefused, Wait: wait}},
		{"last waited attempt reached: session ends", IMAP, rejected(auth.CauseWrongPassword), attempts, Response{Status: TextRefused}},
		{"smtp after the attempts", SMTP, rejected(auth.CauseAccount), 7, Response{Status: TextRefused, ErrorCode: CodeRefused}},
		{"zero verdict is a refusal", IMAP, auth.Verdict{}, 1, Response{Status: TextRefused, Wait: wait}},
		{"imap tempfail", IMAP, temp, 1, Response{Status: "[UNAVAILABLE] " + TextTempFail}},
		{"pop3 tempfail", POP3, temp, 1, Response{Status: "[SYS/TEMP] " + TextTempFail}},
		{"smtp tempfail", SMTP, temp, 1, Response{Status: TextTempFail, ErrorCode: CodeTempFail}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := replyFor(tc.proto, tc.v, tc.attempt, wait, attempts); got != tc.want {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
	t.Run("wait off", func(t *testing.T) {
		if got := replyFor(IMAP, rejected(auth.CauseWrongPassword), 1, 0, attempts); got.Wait != 0 {
			t.Errorf("Auth-Wait %d with wait 0", got.Wait)
		}
	})
}

func TestUnsupportedResponse(t *testing.T) {
	if got := unsupportedResponse(SMTP); got != (Response{Status: TextUnsupported, ErrorCode: CodeUnsupported}) {
		t.Errorf("smtp: %+v", got)
	}
	if got := unsupportedResponse(IMAP); got != (Response{Status: TextUnsupported}) {
		t.Errorf("imap: %+v", got)
	}
}
