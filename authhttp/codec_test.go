package authhttp

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// nginxHeaders builds a request header block the way
// ngx_mail_auth_http_create_request does: user and password escaped.
func nginxHeaders(method, user, pass, proto string, attempt string) http.Header {
	h := http.Header{}
	h.Set("Host", "localhost")
	h.Set("Auth-Method", method)
	h.Set("Auth-User", Escape(user))
	h.Set("Auth-Pass", Escape(pass))
	h.Set("Auth-Protocol", proto)
	if attempt != "" {
		h.Set("Auth-Login-Attempt", attempt)
	}
	h.Set("Client-IP", "192.0.2.42")
	return h
}

func TestEscapeIsNginxSet(t *testing.T) {
	// ngx_escape_uri with NGX_ESCAPE_MAIL_AUTH: space, '%' and 0x00-0x1F,
	// upper-case hex; nothing else (not '+', not DEL, not UTF-8 bytes).
	for c := 0; c < 256; c++ {
		got := Escape(string([]byte{byte(c)}))
		want := string([]byte{byte(c)})
		if c < 0x20 || c == ' ' || c == '%' {
			want = "%" + strings.ToUpper(string("0123456789abcdef"[c>>4])+string("0123456789abcdef"[c&15]))
		}
		if got != want {
			t.Errorf("Escape(%#x) = %q, want %q", c, got, want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"alice", "alice"},
		{"pass word", "pass%20word"},
		{"100%", "100%25"},
		{"a+b", "a+b"},
		{"tab\there", "tab%09here"},
		{"grüße", "grüße"},
		{"\x00", "%00"},
	} {
		if got := Escape(tc.in); got != tc.want {
			t.Errorf("Escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestUnescape(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		err      bool
	}{
		{"alice", "alice", false},
		{"pass%20word", "pass word", false},
		{"a+b", "a+b", false}, // '+' is literal: not QueryUnescape
		{"100%25", "100%", false},
		{"%41%42", "AB", false},
		{"%e2%82%ac", "€", false}, // lower-case hex too
		{"50%", "", true},
		{"%zz", "", true},
		{"%4", "", true},
	} {
		got, err := Unescape(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("Unescape(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestParseRequest(t *testing.T) {
	long := strings.Repeat("x", 65)
	tests := []struct {
		name    string
		h       http.Header
		want    Request
		wantErr error
	}{
		{"plain imap", nginxHeaders("plain", "alice", "pa ss%+w", "imap", "1"),
			Request{Method: "plain", User: "alice", Password: "pa ss%+w", Protocol: IMAP, Attempt: 1, ClientIP: "192.0.2.42"}, nil},
		{"pop3, attempt 3", nginxHeaders("plain", "bob@example.org", "pw", "pop3", "3"),
			Request{Method: "plain", User: "bob@example.org", Password: "pw", Protocol: POP3, Attempt: 3, ClientIP: "192.0.2.42"}, nil},
		{"smtp, names case-insensitive", nginxHeaders("PLAIN", "carol", "pw", "SMTP", ""),
			Request{Method: "plain", User: "carol", Password: "pw", Protocol: SMTP, ClientIP: "192.0.2.42"}, nil},
		{"no protocol: not nginx", http.Header{"Auth-User": {"alice"}}, Request{}, ErrNotNginx},
		{"unknown protocol", nginxHeaders("plain", "a", "b", "http", "1"), Request{Protocol: "http"}, ErrNotNginx},
		{"empty login", nginxHeaders("plain", "", "pw", "imap", "1"),
			Request{Method: "plain", Protocol: IMAP, Attempt: 1, ClientIP: "192.0.2.42"}, ErrEmptyLogin},
		{"empty password", nginxHeaders("plain", "alice", "", "imap", "1"),
			Request{Method: "plain", User: "alice", Protocol: IMAP, Attempt: 1, ClientIP: "192.0.2.42"}, ErrEmptyPassword},
		{"NUL in login", nginxHeaders("plain", "alice\x00x", "pw", "imap", "1"),
			Request{Method: "plain", Protocol: IMAP, Attempt: 1, ClientIP: "192.0.2.42"}, ErrControlByte},
		{"password too long after decoding", nginxHeaders("plain", "alice", long, "imap", "1"),
			Request{Method: "plain", User: "alice", Protocol: IMAP, Attempt: 1, ClientIP: "192.0.2.42"}, ErrFieldTooLong},
		{"bad escape in password", func() http.Header {
			h := nginxHeaders("plain", "alice", "x", "imap", "1")
			h.Set("Auth-Pass", "50%")
			return h
		}(), Request{Method: "plain", User: "alice", Protocol: IMAP, Attempt: 1, ClientIP: "192.0.2.42"}, ErrBadEscape},
		{"bad attempt", nginxHeaders("plain", "alice", "pw", "imap", "x"),
			Request{Method: "plain", User: "alice", Protocol: IMAP, ClientIP: "192.0.2.42"}, ErrBadAttempt},
		{"cram-md5: no password needed to parse", func() http.Header {
			h := nginxHeaders("cram-md5", "alice", "", "imap", "1")
			h.Set("Auth-Salt", "<1.2@host>")
			return h
		}(), Request{Method: "cram-md5", User: "alice", Protocol: IMAP, Attempt: 1, ClientIP: "192.0.2.42"}, nil},
		{"ssl headers", func() http.Header {
			h := nginxHeaders("plain", "alice", "pw", "imap", "1")
			h.Set("Auth-SSL", "on")
			h.Set("Auth-SSL-Verify", "SUCCESS")
			h.Set("Auth-SSL-Subject", "CN=alice")
			h.Set("Client-Host", "client.example.org")
			return h
		}(), Request{Method: "plain", User: "alice", Password: "pw", Protocol: IMAP, Attempt: 1, ClientIP: "192.0.2.42",
			ClientHost: "client.example.org", SSL: true, SSLVerify: "SUCCESS", SSLSubject: "CN=alice"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseRequest(tc.h, 64)
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
			if err != nil && got.Password != "" {
				t.Error("a refused request still carries the password")
			}
		})
	}
}

func TestParseRequestErrorsNeverQuoteThePassword(t *testing.T) {
	secret := "Secret-%zz-Value"
	h := nginxHeaders("plain", "alice", "x", "imap", "1")
	h.Set("Auth-Pass", secret)
	_, err := ParseRequest(h, 64)
	if err == nil || strings.Contains(err.Error(), "Secret") {
		t.Fatalf("error %v: want a bad-escape error that does not quote the password", err)
	}
}

func TestResponseWrite(t *testing.T) {
	tests := []struct {
		name string
		r    Response
		want http.Header
		err  bool
	}{
		{"ok", Response{Status: "OK", Server: "192.0.2.1", Port: 143},
			http.Header{"Auth-Status": {"OK"}, "Auth-Server": {"192.0.2.1"}, "Auth-Port": {"143"}}, false},
		{"ok with user", Response{Status: "OK", Server: "::1", Port: 25, User: "alice"},
			http.Header{"Auth-Status": {"OK"}, "Auth-Server": {"::1"}, "Auth-Port": {"25"}, "Auth-User": {"alice"}}, false},
		{"refusal with wait", Response{Status: TextRefused, Wait: 3},
			http.Header{"Auth-Status": {TextRefused}, "Auth-Wait": {"3"}}, false},
		{"smtp refusal", Response{Status: TextRefused, ErrorCode: CodeRefused},
			http.Header{"Auth-Status": {TextRefused}, "Auth-Error-Code": {"535 5.7.8"}}, false},
		{"ok without a port", Response{Status: "OK", Server: "192.0.2.1"}, nil, true},
		{"CRLF in user", Response{Status: "OK", Server: "192.0.2.1", Port: 143, User: "a\r\nAuth-Server: 6.6.6.6"}, nil, true},
		{"trailing space", Response{Status: "OK", Server: "192.0.2.1", Port: 143, User: "alice "}, nil, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			err := tc.r.Write(h)
			if (err != nil) != tc.err {
				t.Fatalf("error %v, want error %v", err, tc.err)
			}
			if err == nil && !equalHeader(h, tc.want) {
				t.Errorf("headers %v, want %v", h, tc.want)
			}
		})
	}
}

func equalHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if strings.Join(v, "\n") != strings.Join(b[k], "\n") {
			return false
		}
	}
	return true
}

// FuzzParseRequest: any header values parse without panicking, a refused
// request never carries the password, and whatever nginx can send round-
// trips: Unescape(Escape(s)) == s for every s.
func FuzzParseRequest(f *testing.F) {
	f.Add("plain", "alice", "pa ss%w+rd", "imap", "1", "192.0.2.1")
	f.Add("cram-md5", "bob%00", "%zz", "smtp", "x", "unix:")
	f.Add("plain", "%e2%82%ac", "50%", "pop3", "99999999999", "::1")
	f.Fuzz(func(t *testing.T, method, user, pass, proto, attempt, ip string) {
		if d, err := Unescape(Escape(user)); err != nil || d != user {
			t.Fatalf("Unescape(Escape(%q)) = %q, %v", user, d, err)
		}
		if e := Escape(pass); strings.ContainsAny(e, " \r\n\x00") {
			t.Fatalf("Escape(%q) = %q still holds a byte nginx escapes", pass, e)
		}
		h := http.Header{}
		for k, v := range map[string]string{"Auth-Method": method, "Auth-User": user, "Auth-Pass": pass,
			"Auth-Protocol": proto, "Auth-Login-Attempt": attempt, "Client-IP": ip} {
			h.Set(k, v)
		}
		r, err := ParseRequest(h, 64)
		if err != nil && r.Password != "" {
			t.Fatal("refused request carries the password")
		}
		if err == nil {
			if len(r.User) > 64 || len(r.Password) > 64 {
				t.Fatal("field over the limit accepted")
			}
			if r.Method == MethodPlain && (r.User == "" || r.Password == "") {
				t.Fatal("empty login or password accepted")
			}
			if want, _ := url.PathUnescape(pass); r.Password != want {
				t.Fatalf("password %q decoded as %q", pass, r.Password)
			}
		}
	})
}
