package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// TestTestsaslauthd drives the daemon with Cyrus's own client: each answer is
// what libsasl2 would see, and each request leaves exactly one decision line
// (user, service, outcome, reason) and no password in the log.
func TestTestsaslauthd(t *testing.T) {
	t.Parallel()
	peertest.NeedFile(t, "/usr/sbin/testsaslauthd", "testsaslauthd")
	slapd := slapdtest.Start(t)

	type want struct {
		answer  string // exact output, or "NO" for any NO answer
		outcome string
		reason  string // substring of the logged reason
		user    string // logged user (as the client sent it)
		realm   string
	}
	tests := []struct {
		name   string
		filter string
		req    saslReq
		want   want
	}{
		{"accept", "", saslReq{"alice", "alicepw", "smtp", ""},
			want{okAnswer, "accept", "ok", "alice", ""}},
		{"wrong password", "", saslReq{"alice", "Wrong-Secret-17", "smtp", ""},
			want{"NO", "reject", "wrong password", "alice", ""}},
		{"host negated", "", saslReq{"negated", "negatedpw", "smtp", ""},
			want{"NO", "reject", "host not allowed", "negated", ""}},
		{"no host attribute", "", saslReq{"nohost", "nohostpw", "imap", ""},
			want{"NO", "reject", "host not allowed", "nohost", ""}},
		{"other host", "", saslReq{"otherhost", "otherhostpw", "imap", ""},
			want{"NO", "reject", "host not allowed", "otherhost", ""}},
		{"unknown user", "", saslReq{"ghost", "Ghost-Secret-23", "smtp", ""},
			want{"NO", "reject", "unknown user", "ghost", ""}},
		{"filter injection", "", saslReq{"*", "alicepw", "smtp", ""},
			want{"NO", "reject", "unknown user", "*", ""}},
		// The realm reaches the filter: two "dave"s told apart by domain.
		{"realm example.net", "(mail=%U@%r)", saslReq{"dave", "dave2pw", "imap", "example.net"},
			want{okAnswer, "accept", "ok", "dave", "example.net"}},
		{"realm example.org", "(mail=%U@%r)", saslReq{"dave", "davepw", "imap", "example.org"},
			want{okAnswer, "accept", "ok", "dave", "example.org"}},
		{"realm mismatch", "(mail=%U@%r)", saslReq{"dave", "davepw", "imap", "example.net"},
			want{"NO", "reject", "wrong password", "dave", "example.net"}},
		// Without -r the login is split at the last '@' like libsasl2 does.
		{"user@domain split", "(mail=%U@%d)", saslReq{"dave@example.net", "dave2pw", "imap", ""},
			want{okAnswer, "accept", "ok", "dave@example.net", ""}},
		// A realm-blind filter: a realm sent with -r that this host does not
		// serve is refused with the right password (Cyrus imapd virtdomains:
		// "alice@evil.test" must not open evil.test's alice).
		{"realm not served", "", saslReq{"alice", "alicepw", "imap", "evil.test"},
			want{"NO", "reject", "realm not served: evil.test", "alice", "evil.test"}},
		{"client name variant", "", saslReq{"ALICE", "alicepw", "smtp", ""},
			want{okAnswer, "accept", "ok", "ALICE", ""}},
	}

	// One daemon per filter, all on the same slapd, living as long as the test.
	daemons := map[string]*daemon{}
	for _, tc := range tests {
		if daemons[tc.filter] == nil {
			dir := shortDir(t)
			sock := filepath.Join(dir, "mux")
			// The realm daemons log at debug level, so the password check
			// below also covers ldapauth's detailed decision lines.
			level := "info"
			if tc.filter != "" {
				level = "debug"
			}
			cfg := writeConfig(t, dir, settings{Socket: sock, LDAPURL: slapd.URL(), Filter: tc.filter, LogLevel: level})
			daemons[tc.filter] = startDaemon(t, sock, "--config", cfg)
		}
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := daemons[tc.filter]
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			got, l := d.ask(ctx, tc.req)
			if tc.want.answer == "NO" {
				if !isNO(got) {
					t.Errorf("answer %q, want NO", got)
				}
			} else if got != tc.want.answer {
				t.Errorf("answer %q, want %q", got, tc.want.answer)
			}
			for k, v := range map[string]string{"user": tc.want.user, "service": tc.req.service,
				"outcome": tc.want.outcome, "realm": tc.want.realm} {
				if got := logField(l, k); got != v {
					t.Errorf("logged %s=%q, want %q in %s", k, got, v, l)
				}
			}
			if r := logField(l, "reason"); !strings.Contains(r, tc.want.reason) {
				t.Errorf("logged reason %q, want it to contain %q", r, tc.want.reason)
			}
		})
	}
	// Exactly one decision line per request, none extra.
	sent := map[string]int{}
	for _, tc := range tests {
		sent[tc.filter]++
	}
	time.Sleep(100 * time.Millisecond)
	for filter, d := range daemons {
		if got := len(d.decisionLines()); got != sent[filter] {
			t.Errorf("daemon with filter %q logged %d decisions for %d requests", filter, got, sent[filter])
		}
		if filter != "" && d.countLog(`msg="ldap decision"`) == 0 {
			t.Errorf("daemon with filter %q at debug level logged no ldap decision lines", filter)
		}
	}
}
