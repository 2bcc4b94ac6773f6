package authhttp

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// fakeResolver answers from a map; a name not in it is NXDOMAIN, "slow.*"
// waits for the context.
type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	if strings.HasPrefix(host, "slow.") {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	addrs, ok := f[host]
	if !ok {
		return nil, errors.New("no such host")
	}
	var out []netip.Addr
	for _, a := range addrs {
		if network == "ip4" && !a.Is4() || network == "ip6" && !a.Is6() {
			continue
		}
		out = append(out, a)
	}
	return out, nil
}

var resolver = fakeResolver{
	"imap2.example.org": {netip.MustParseAddr("192.0.2.2")},
	"dual.example.org":  {netip.MustParseAddr("2001:db8::7"), netip.MustParseAddr("192.0.2.7")},
	"bad.example.org":   {netip.MustParseAddr("0.0.0.0")},
}

func testConfig() Config {
	c := DefaultConfig()
	c.Backends = map[Protocol]Upstream{IMAP: {Server: "192.0.2.1", Port: 143}, SMTP: {Server: "192.0.2.1", Port: 25}}
	c.ServerAttribute = "mailHost"
	c.ResolveTimeout = 50 * time.Millisecond
	return c
}

func mustPolicy(t *testing.T, c Config) *Policy {
	t.Helper()
	p, err := NewPolicy(c, resolver)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRoute(t *testing.T) {
	withAttrs := func(kv ...string) auth.Verdict {
		attrs := map[string][]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			attrs[kv[i]] = append(attrs[kv[i]], kv[i+1])
		}
		return auth.Accepted("uid=a", attrs)
	}
	tests := []struct {
		name    string
		cfg     func(*Config)
		service string
		v       auth.Verdict
		want    string // "server:port[ user]"; "" = RouteError
	}{
		{"configured server", nil, "imap", withAttrs(), "192.0.2.1:143"},
		{"smtp port", nil, "smtp", withAttrs(), "192.0.2.1:25"},
		{"attribute IP wins", nil, "imap", withAttrs("mailhost", "198.51.100.9"), "198.51.100.9:143"},
		{"attribute IPv6", nil, "imap", withAttrs("mailhost", "2001:db8::1"), "2001:db8::1:143"},
		{"attribute name resolved", nil, "imap", withAttrs("mailhost", "imap2.example.org"), "192.0.2.2:143"},
		{"ipv4 only picks the A record", func(c *Config) { c.AddressFamily = "ipv4" }, "imap", withAttrs("mailhost", "dual.example.org"), "192.0.2.7:143"},
		{"unresolvable name", nil, "imap", withAttrs("mailhost", "nowhere.example.org"), ""},
		{"resolver timeout", nil, "imap", withAttrs("mailhost", "slow.example.org"), ""},
		{"name resolving to 0.0.0.0", nil, "imap", withAttrs("mailhost", "bad.example.org"), ""},
		{"attribute 0.0.0.0", nil, "imap", withAttrs("mailhost", "0.0.0.0"), ""},
		{"attribute with a zone", nil, "imap", withAttrs("mailhost", "fe80::1%eth0"), ""},
		{"attribute garbage", nil, "imap", withAttrs("mailhost", "imap1 ; rm -rf"), ""},
		{"attribute host:port", nil, "imap", withAttrs("mailhost", "192.0.2.5:993"), ""},
		{"two values: ambiguous", nil, "imap", withAttrs("mailhost", "192.0.2.5", "mailhost", "192.0.2.6"), ""},
		{"protocol without backend", nil, "pop", withAttrs(), ""},
		{"unknown service", nil, "sieve", withAttrs(), ""},
		{"no server, no attribute", func(c *Config) { c.Backends[IMAP] = Upstream{Port: 143} }, "imap", withAttrs(), ""},
		{"login rewrite", func(c *Config) { c.UserAttribute = "uid" }, "imap", withAttrs("uid", "alice"), "192.0.2.1:143 alice"},
		{"login rewrite missing", func(c *Config) { c.UserAttribute = "uid" }, "imap", withAttrs(), ""},
		{"login rewrite unsafe", func(c *Config) { c.UserAttribute = "uid" }, "imap", withAttrs("uid", "a\r\nb"), ""},
		{"pop3 mapped to its own name", func(c *Config) {
			c.Services = map[Protocol]string{POP3: "pop3"}
			c.Backends[POP3] = Upstream{Server: "192.0.2.1", Port: 110}
		}, "pop3", withAttrs(), "192.0.2.1:110"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := testConfig()
			if tc.cfg != nil {
				tc.cfg(&c)
			}
			fields, err := mustPolicy(t, c).Route(context.Background(), tc.service, tc.v)
			if tc.want == "" {
				var re *RouteError
				if !errors.As(err, &re) {
					t.Fatalf("fields %v, error %v; want a RouteError", fields, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			r, ok := okResponse(fields)
			got := r.Server + ":" + strconv.Itoa(r.Port)
			if r.User != "" {
				got += " " + r.User
			}
			if !ok || got != tc.want {
				t.Errorf("route %s (ok %v), want %s", got, ok, tc.want)
			}
		})
	}
}

func TestCheckSecret(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "secret")
	if err := os.WriteFile(file, []byte("s3cr3t-Value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c := testConfig()
	c.SecretHeader, c.SecretFile = "X-Auth-Key", file
	p := mustPolicy(t, c)
	tests := []struct {
		name   string
		values []string
		want   error
	}{
		{"right", []string{"s3cr3t-Value"}, nil},
		{"missing", nil, ErrSecretMissing},
		{"wrong", []string{"s3cr3t-Valuf"}, ErrSecretWrong},
		{"prefix", []string{"s3cr3t"}, ErrSecretWrong},
		{"longer", []string{"s3cr3t-Value2"}, ErrSecretWrong},
		{"empty", []string{""}, ErrSecretWrong},
		{"sent twice", []string{"s3cr3t-Value", "s3cr3t-Value"}, ErrSecretWrong},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tc.values {
				h.Add("X-Auth-Key", v)
			}
			if err := p.CheckSecret(h); !errors.Is(err, tc.want) || (err == nil) != (tc.want == nil) {
				t.Errorf("CheckSecret = %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("no secret configured", func(t *testing.T) {
		if err := mustPolicy(t, testConfig()).CheckSecret(http.Header{}); err != nil {
			t.Error(err)
		}
	})
	t.Run("unreadable file", func(t *testing.T) {
		c := testConfig()
		c.SecretHeader, c.SecretFile = "X-Auth-Key", filepath.Join(dir, "missing")
		if _, err := NewPolicy(c, resolver); err == nil {
			t.Error("NewPolicy with a missing secret file succeeded")
		}
	})
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		edit func(*Config)
		want string // substring of the error; "" = valid
	}{
		{"default is valid", func(c *Config) {}, ""},
		{"test config", func(c *Config) { *c = testConfig() }, ""},
		{"name as server", func(c *Config) { c.Backends = map[Protocol]Upstream{IMAP: {Server: "imap.example.org", Port: 143}} }, "needs an IP address"},
		{"no port", func(c *Config) { c.Backends = map[Protocol]Upstream{IMAP: {Server: "192.0.2.1"}} }, "port must be"},
		{"unknown protocol", func(c *Config) { c.Backends = map[Protocol]Upstream{"http": {Server: "192.0.2.1", Port: 80}} }, "unknown protocol"},
		{"nowhere to send", func(c *Config) { c.Backends = map[Protocol]Upstream{IMAP: {Port: 143}} }, "nowhere to send"},
		{"same service twice", func(c *Config) { c.Services = map[Protocol]string{POP3: "imap"} }, "both map"},
		{"secret header without file", func(c *Config) { c.SecretHeader = "X-Auth-Key" }, "go together"},
		{"bad secret header", func(c *Config) { c.SecretHeader, c.SecretFile = "X Auth", "/x" }, "not an HTTP header"},
		{"relative path", func(c *Config) { c.Path = "auth" }, "absolute URL path"},
		{"bad family", func(c *Config) { c.AddressFamily = "ip4" }, "address_family"},
		{"too many waits", func(c *Config) { c.WaitAttempts = 50 }, "wait_attempts"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := DefaultConfig()
			tc.edit(&c)
			err := c.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("Validate = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestMergeAttributes(t *testing.T) {
	c := testConfig()
	c.UserAttribute = "uid"
	got := strings.Join(c.MergeAttributes([]string{"homeDirectory", "MAILHOST"}), ",")
	if got != "homeDirectory,MAILHOST,uid" {
		t.Errorf("MergeAttributes = %s", got)
	}
}
