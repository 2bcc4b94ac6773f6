package authhttp

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// fakeBackend decides from a table and routes like the daemon does.
type fakeBackend struct {
	pol *Policy
	mu  sync.Mutex
	got []auth.Request
}

func (b *fakeBackend) Policy() *Policy { return b.pol }

func (b *fakeBackend) Authenticate(ctx context.Context, req auth.Request) auth.Verdict {
	b.mu.Lock()
	b.got = append(b.got, req)
	b.mu.Unlock()
	var v auth.Verdict
	switch {
	case req.User == "panic":
		panic("boom " + req.Password)
	case req.User == "down":
		return auth.TempFailed(auth.CauseUnavailable, "ldap down")
	case req.User == "alice" && req.Password == "good pw+%":
		v = auth.Accepted("uid=alice", map[string][]string{"mailhost": {"imap2.example.org"}})
	case req.User == "bob" && req.Password == "bobpw":
		v = auth.Accepted("uid=bob", map[string][]string{"mailhost": {"nowhere.example.org"}})
	default:
		return auth.Rejected(auth.CauseWrongPassword, "wrong password")
	}
	fields, err := b.pol.Route(ctx, req.Service, v)
	if err != nil {
		return auth.TempFailed(auth.CauseUnavailable, err.Error())
	}
	v.Fields = fields
	return v
}

func newTestHandler(t *testing.T, edit func(*Config)) (*Handler, *fakeBackend, *bytes.Buffer) {
	t.Helper()
	c := testConfig()
	if edit != nil {
		edit(&c)
	}
	b := &fakeBackend{pol: mustPolicy(t, c)}
	var logs bytes.Buffer
	h := &Handler{Backend: b, Logger: slog.New(slog.NewTextHandler(&logs, nil)), RequestTimeout: time.Second, MaxFieldSize: 64}
	return h, b, &logs
}

func serve(h http.Handler, method string, hdr http.Header) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, "/auth", nil)
	r.Proto, r.ProtoMajor, r.ProtoMinor = "HTTP/1.0", 1, 0
	for k, v := range hdr {
		r.Header[k] = v
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func TestHandler(t *testing.T) {
	h, b, logs := newTestHandler(t, nil)
	tests := []struct {
		name   string
		hdr    http.Header
		code   int
		want   map[string]string // response headers; "" = absent
		logged string            // substring of the decision line
	}{
		{"accepted, routed by attribute", nginxHeaders("plain", "alice", "good pw+%", "imap", "1"), 200,
			map[string]string{"Auth-Status": "OK", "Auth-Server": "192.0.2.2", "Auth-Port": "143", "Auth-Wait": ""},
			`outcome=accept`},
		{"wrong password", nginxHeaders("plain", "alice", "bad", "imap", "1"), 200,
			map[string]string{"Auth-Status": TextRefused, "Auth-Wait": "2", "Auth-Server": ""}, `outcome=reject cause=wrong_password`},
		{"smtp wrong password", nginxHeaders("plain", "alice", "bad", "smtp", "1"), 200,
			map[string]string{"Auth-Status": TextRefused, "Auth-Error-Code": "535 5.7.8"}, `service=smtp`},
		{"accepted but route unresolvable", nginxHeaders("plain", "bob", "bobpw", "imap", "1"), 200,
			map[string]string{"Auth-Status": "[UNAVAILABLE] " + TextTempFail, "Auth-Server": ""}, `outcome=tempfail`},
		{"ldap down, smtp", nginxHeaders("plain", "down", "x", "smtp", "1"), 200,
			map[string]string{"Auth-Status": TextTempFail, "Auth-Error-Code": "451 4.3.0", "Auth-Wait": ""}, `reason="ldap down"`},
		{"panic is a tempfail", nginxHeaders("plain", "panic", "Panic-Secret-1", "pop3", "1"), 200,
			map[string]string{"Auth-Status": "[SYS/TEMP] " + TextTempFail}, `outcome=tempfail`},
		{"cram-md5 cannot be verified", nginxHeaders("cram-md5", "alice", "", "imap", "1"), 200,
			map[string]string{"Auth-Status": TextUnsupported, "Auth-Wait": ""}, `Auth-Method \"cram-md5\" cannot be verified`},
		{"apop over smtp code", nginxHeaders("apop", "alice", "", "smtp", "1"), 200,
			map[string]string{"Auth-Error-Code": "504 5.5.4"}, `cause=invalid`},
		{"empty password never reaches the decision", nginxHeaders("plain", "carol", "", "imap", "1"), 200,
			map[string]string{"Auth-Status": TextRefused}, `reason="empty password"`},
		{"not nginx", http.Header{"X-Foo": {"1"}}, 400, map[string]string{"Auth-Status": ""}, ``},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logs.Reset()
			w := serve(h, http.MethodGet, tc.hdr)
			if w.Code != tc.code {
				t.Fatalf("status %d, want %d", w.Code, tc.code)
			}
			for k, v := range tc.want {
				if got := w.Header().Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if !strings.Contains(logs.String(), tc.logged) {
				t.Errorf("log %q lacks %q", logs.String(), tc.logged)
			}
			for _, secret := range []string{"good pw+%", "bobpw", "Panic-Secret-1"} {
				if strings.Contains(logs.String(), secret) {
					t.Errorf("log contains the password %q", secret)
				}
			}
		})
	}
	for _, r := range b.got {
		if r.User == "carol" {
			t.Error("a request with an empty password reached the authenticator")
		}
	}
}

// TestHandlerRequest: Client-IP becomes the decision's client address,
// the protocol its service (pop3 -> pop), and "user@domain" is split at
// the last '@' as libsasl2 does.
func TestHandlerRequest(t *testing.T) {
	h, b, logs := newTestHandler(t, nil)
	hdr := nginxHeaders("plain", "dave@example.org", "pw", "pop3", "2")
	hdr.Set("Client-IP", "::ffff:198.51.100.7")
	serve(h, http.MethodGet, hdr)
	want := auth.Request{User: "dave", Password: "pw", Service: "pop", Realm: "example.org", ClientAddr: "198.51.100.7"}
	if len(b.got) != 1 || b.got[0] != want {
		t.Fatalf("authenticator got %+v, want %+v", b.got, want)
	}
	for _, kv := range []string{`user=dave`, `realm=example.org`, `service=pop`, `client=198.51.100.7`, `protocol=pop3`, `attempt=2`} {
		if !strings.Contains(logs.String(), kv) {
			t.Errorf("decision line lacks %s: %s", kv, logs.String())
		}
	}
	b.got = nil
	hdr.Set("Client-IP", "unix:")
	serve(h, http.MethodGet, hdr)
	if len(b.got) != 1 || b.got[0].ClientAddr != "" {
		t.Errorf("Client-IP unix: gave client address %q, want none", b.got[0].ClientAddr)
	}
}

func TestHandlerSecret(t *testing.T) {
	file := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(file, []byte("k3y\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h, b, logs := newTestHandler(t, func(c *Config) { c.SecretHeader, c.SecretFile = "X-Auth-Key", file })
	hdr := nginxHeaders("plain", "alice", "good pw+%", "imap", "1")
	for _, tc := range []struct {
		key  string
		code int
	}{{"", 403}, {"k3x", 403}, {"k3y", 200}} {
		logs.Reset()
		hdr.Del("X-Auth-Key")
		if tc.key != "" {
			hdr.Set("X-Auth-Key", tc.key)
		}
		w := serve(h, http.MethodGet, hdr)
		if w.Code != tc.code {
			t.Errorf("key %q: status %d, want %d", tc.key, w.Code, tc.code)
		}
		if tc.code == 403 {
			if w.Header().Get("Auth-Status") != "" {
				t.Errorf("key %q: 403 carries Auth-Status", tc.key)
			}
			if !strings.Contains(logs.String(), "shared secret header missing or wrong") || strings.Contains(logs.String(), "k3") {
				t.Errorf("key %q: log %q: want the refusal, never the secret", tc.key, logs.String())
			}
		}
	}
	if len(b.got) != 1 {
		t.Errorf("%d requests reached the authenticator, want only the one with the secret", len(b.got))
	}
}

func TestHandlerMethod(t *testing.T) {
	h, _, _ := newTestHandler(t, nil)
	if w := serve(h, http.MethodPost, nginxHeaders("plain", "alice", "good pw+%", "imap", "1")); w.Code != 405 {
		t.Errorf("POST: status %d, want 405", w.Code)
	}
}
