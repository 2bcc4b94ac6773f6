package checkpassword

import (
	"bytes"
	"context"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/mailauthd/mailauthd/auth"
)

func TestParseInput(t *testing.T) {
	long := strings.Repeat("p", MaxInput-len("alice")-3)
	tests := []struct {
		name    string
		in      string
		want    Input
		wantErr error
	}{
		{"dovecot auth", "alice\x00secret\x00\x00", Input{"alice", "secret"}, nil},
		{"dovecot lookup", "alice@example.org\x00\x00\x00", Input{"alice@example.org", ""}, nil},
		{"djb timestamp and more", "alice\x00secret\x00<1.2@host>\x00extra", Input{"alice", "secret"}, nil},
		{"exactly 512", "alice\x00" + long + "\x00\x00", Input{"alice", long}, nil},
		{"513", "alice\x00" + long + "x\x00\x00", Input{}, ErrInputTooLong},
		{"empty", "", Input{}, ErrMalformedInput},
		{"no NUL", "alice", Input{}, ErrMalformedInput},
		{"no password NUL", "alice\x00secret", Input{}, ErrMalformedInput},
		{"no timestamp NUL", "alice\x00secret\x00", Input{}, ErrMalformedInput},
		{"empty user", "\x00secret\x00\x00", Input{}, ErrMalformedInput},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseInput([]byte(tt.in))
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
			// The same through a reader that returns one byte at a time.
			got2, err2 := ReadInput(iotest.OneByteReader(strings.NewReader(tt.in)))
			if got2 != got || (err2 == nil) != (err == nil) {
				t.Fatalf("ReadInput = %+v, %v; ParseInput = %+v, %v", got2, err2, got, err)
			}
		})
	}
}

func TestReadInputBounded(t *testing.T) {
	// An endless fd 3 must stop at 513 bytes, not read forever.
	r := io.MultiReader(strings.NewReader("alice\x00"), neverEnding('x'))
	if _, err := ReadInput(r); !errors.Is(err, ErrInputTooLong) {
		t.Fatalf("err = %v, want ErrInputTooLong", err)
	}
	if _, err := ReadInput(iotest.ErrReader(errors.New("EBADF"))); err == nil || errors.Is(err, ErrMalformedInput) {
		t.Fatalf("read error should be reported as such, got %v", err)
	}
}

type neverEnding byte

func (b neverEnding) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

func TestParseEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    Env
		wantErr bool
	}{
		{"auth with UCSPI names", map[string]string{"SERVICE": "imap", "TCPREMOTEIP": "192.0.2.7", "TCPLOCALIP": "127.0.0.1"},
			Env{Mode: ModeAuthenticate, Service: "imap", RemoteIP: "192.0.2.7", LocalIP: "127.0.0.1"}, false},
		{"AUTH_ variables only", map[string]string{"AUTH_SERVICE": "pop3", "AUTH_RIP": "2001:db8::7"},
			Env{Mode: ModeAuthenticate, Service: "pop3", RemoteIP: "2001:db8::7"}, false},
		{"old REMOTE_IP", map[string]string{"SERVICE": "imap", "REMOTE_IP": "198.51.100.1"},
			Env{Mode: ModeAuthenticate, Service: "imap", RemoteIP: "198.51.100.1"}, false},
		{"userdb lookup", map[string]string{"AUTHORIZED": "1", "SERVICE": "lmtp"},
			Env{Mode: ModeLookup, Service: "lmtp"}, false},
		{"AUTHORIZED=2", map[string]string{"AUTHORIZED": "2"}, Env{Mode: ModeLookup}, false},
		{"credentials lookup", map[string]string{"AUTHORIZED": "1", "CREDENTIALS_LOOKUP": "1", "SCHEME": "CRAM-MD5"},
			Env{Mode: ModeLookup, CredentialsLookup: true, Scheme: "CRAM-MD5"}, false},
		{"bad AUTHORIZED", map[string]string{"AUTHORIZED": "yes"}, Env{}, true},
		{"bad IP", map[string]string{"TCPREMOTEIP": "192.0.2.7\tx"}, Env{}, true},
		{"bad service", map[string]string{"SERVICE": "imap\nforged"}, Env{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEnv(func(k string) string { return tt.env[k] })
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestEnvRequestSplitsRealm(t *testing.T) {
	env := Env{Service: "imap", RemoteIP: "192.0.2.7"}
	got := env.Request(Input{User: "alice@example.org", Password: "pw"})
	want := auth.Request{User: "alice", Password: "pw", Service: "imap", Realm: "example.org", ClientAddr: "192.0.2.7"}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestEscapeRoundTrip(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"a\tb", "a\x01tb"},
		{"line\nbreak\r", "line\x01nbreak\x01r"},
		{"\x01", "\x011"},
		{"\x01t", "\x011t"},
	}
	for _, tt := range tests {
		got := string(AppendEscaped(nil, tt.in))
		if got != tt.want {
			t.Errorf("escape(%q) = %q, want %q", tt.in, got, tt.want)
		}
		back, err := Unescape(got)
		if err != nil || back != tt.in {
			t.Errorf("unescape(%q) = %q, %v", got, back, err)
		}
	}
	for _, bad := range []string{"x\x01", "x\x01z"} {
		if _, err := Unescape(bad); err == nil {
			t.Errorf("Unescape(%q) accepted a bad escape", bad)
		}
	}
}

func TestReplyInjection(t *testing.T) {
	// A directory value trying to add fields: must stay one field's value.
	evil := "/home/x\tnopassword=y\nproxy\x01"
	fields := []auth.Field{{Key: "user", Value: "alice"}, {Key: "userdb_home", Value: evil}}
	b := EncodeReply(fields)
	if bytes.IndexByte(b, '\n') >= 0 || bytes.Contains(b, []byte("\tnopassword")) {
		t.Fatalf("injection survived: %q", b)
	}
	back, err := DecodeReply(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, fields) {
		t.Fatalf("round trip: %q != %q", back, fields)
	}
	if fieldValue(back, "nopassword") != "" || fieldValue(back, "userdb_home") != evil {
		t.Fatalf("decoded fields wrong: %q", back)
	}
}

func fieldValue(fs []auth.Field, k string) string {
	for _, f := range fs {
		if f.Key == k {
			return f.Value
		}
	}
	return ""
}

// decider records what it was asked and answers with fixed verdicts, so the
// exit-code mapping is tested apart from LDAP (the LDAP side is tested
// against real slapd in cmd/mailauthd).
type decider struct {
	auth, lookup auth.Verdict
	calls        []string
	lastReq      auth.Request
}

func (d *decider) Authenticate(_ context.Context, r auth.Request) auth.Verdict {
	d.calls = append(d.calls, "auth")
	d.lastReq = r
	return d.auth
}

func (d *decider) Lookup(_ context.Context, r auth.Request) auth.Verdict {
	d.calls = append(d.calls, "lookup")
	d.lastReq = r
	return d.lookup
}

func TestDecideExitCodes(t *testing.T) {
	accepted := auth.Accepted("uid=alice,ou=people,dc=example,dc=org", nil)
	accepted.Fields = []auth.Field{{Key: "user", Value: "alice"}, {Key: "userdb_home", Value: "/srv/alice"}}
	unmapped := auth.Accepted("uid=alice,ou=people,dc=example,dc=org", nil)
	unknown := auth.Rejected(auth.CauseUnknownUser, "no such user")
	tests := []struct {
		name      string
		in        Input
		mode      Mode
		d         decider
		wantExit  int
		wantCalls []string
		wantReply bool
	}{
		{"accept", Input{"alice", "pw"}, ModeAuthenticate, decider{auth: accepted}, ExitOK, []string{"auth"}, true},
		{"wrong password", Input{"alice", "bad"}, ModeAuthenticate, decider{auth: auth.Rejected(auth.CauseWrongPassword, "invalid credentials")}, ExitReject, []string{"auth"}, false},
		{"unknown user on auth", Input{"nobody", "pw"}, ModeAuthenticate, decider{auth: unknown}, ExitReject, []string{"auth"}, false},
		{"ldap down", Input{"alice", "pw"}, ModeAuthenticate, decider{auth: auth.TempFailed(auth.CauseUnavailable, "ldap unreachable")}, ExitTempFail, []string{"auth"}, false},
		{"empty password never asked", Input{"alice", ""}, ModeAuthenticate, decider{auth: accepted}, ExitReject, nil, false},
		{"lookup found", Input{"alice", ""}, ModeLookup, decider{lookup: accepted}, ExitFound, []string{"lookup"}, true},
		{"lookup ignores a password", Input{"alice", "pw"}, ModeLookup, decider{lookup: accepted}, ExitFound, []string{"lookup"}, true},
		{"lookup unknown", Input{"nobody", ""}, ModeLookup, decider{lookup: unknown}, ExitUnknown, []string{"lookup"}, false},
		{"lookup refused by policy", Input{"otherhost", ""}, ModeLookup, decider{lookup: auth.Rejected(auth.CausePolicy, "host not allowed")}, ExitUnknown, []string{"lookup"}, false},
		{"lookup ldap down", Input{"alice", ""}, ModeLookup, decider{lookup: auth.TempFailed(auth.CauseUnavailable, "timeout")}, ExitTempFail, []string{"lookup"}, false},
		// A decider that maps no fields (the daemon always sends "user"):
		// never a success code with an empty reply.
		{"accept without fields", Input{"alice", "pw"}, ModeAuthenticate, decider{auth: unmapped}, ExitTempFail, []string{"auth"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := tt.d
			res := Decide(context.Background(), tt.in, Env{Mode: tt.mode, Service: "imap"}, &d)
			if res.Exit != tt.wantExit {
				t.Fatalf("exit = %d, want %d (verdict %+v)", res.Exit, tt.wantExit, res.Verdict)
			}
			if !reflect.DeepEqual(d.calls, tt.wantCalls) {
				t.Fatalf("calls = %v, want %v", d.calls, tt.wantCalls)
			}
			if tt.mode == ModeLookup && d.lastReq.Password != "" {
				t.Fatal("lookup passed a password to the decider")
			}
			if (len(res.Reply) > 0) != tt.wantReply {
				t.Fatalf("reply = %q, want reply %v", res.Reply, tt.wantReply)
			}
			if res.Request.Password != "" {
				t.Fatal("Result.Request keeps the password")
			}
			if tt.wantReply {
				fs, err := DecodeReply(res.Reply)
				if err != nil || fieldValue(fs, "user") != tt.in.User || fieldValue(fs, "userdb_home") != "/srv/alice" {
					t.Fatalf("reply %q decoded to %q, %v", res.Reply, fs, err)
				}
			}
		})
	}
}

func FuzzParseInput(f *testing.F) {
	f.Add([]byte("alice\x00secret\x00\x00"))
	f.Add([]byte("alice@example.org\x00\x00\x00"))
	f.Add([]byte("\x00\x00\x00"))
	f.Add([]byte("a\x00b"))
	f.Fuzz(func(t *testing.T, b []byte) {
		in, err := ParseInput(b)
		if err != nil {
			return
		}
		if len(b) > MaxInput || in.User == "" || strings.ContainsRune(in.User, 0) || strings.ContainsRune(in.Password, 0) {
			t.Fatalf("accepted bad input %q as %+v", b, in)
		}
		if !bytes.HasPrefix(b, []byte(in.User+"\x00"+in.Password+"\x00")) {
			t.Fatalf("parse of %q does not match its prefix: %+v", b, in)
		}
	})
}

func FuzzReplyRoundTrip(f *testing.F) {
	f.Add("userdb_home", "/srv/mail/alice")
	f.Add("host", "a\tb\nc\rd\x01e")
	f.Add("userdb_mail", "\x01t")
	f.Fuzz(func(t *testing.T, key, value string) {
		if key == "" || strings.ContainsAny(key, "=\t\r\n\x01") {
			return // not a field name (dovecot.Mapping refuses these)
		}
		fields := []auth.Field{{Key: "user", Value: "alice"}, {Key: key, Value: value}}
		b := EncodeReply(fields)
		if bytes.ContainsAny(b, "\n\r") || bytes.Count(b, []byte{'\t'}) != 1 {
			t.Fatalf("reply %q has raw LF/CR or extra TAB", b)
		}
		got, err := DecodeReply(b)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, fields) {
			t.Fatalf("round trip %q -> %q -> %q", fields, b, got)
		}
	})
}
