package authhttp

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// Config is the auth_http: section. The HTTP listener itself is
// listen.http; this section says what the auth_http handler answers.
type Config struct {
	// Path is the URL path the handler answers on, the URI of nginx's
	// auth_http directive ("auth_http unix:/run/mailauthd/http:/auth").
	// Default "/auth".
	Path string `yaml:"path"`
	// Backends gives, per nginx protocol (imap, pop3, smtp), the port nginx
	// proxies to and the default server. A protocol without an entry is
	// answered with a temporary failure (and logged): nginx offers it, but
	// mailauthd was not told where such sessions go.
	Backends map[Protocol]Upstream `yaml:"backends"`
	// ServerAttribute (e.g. mailHost) names the LDAP attribute holding the
	// user's backend: an IP address, or a host name the daemon resolves
	// (bounded by ResolveTimeout). When the entry has it, it overrides the
	// backend's server. "" = off.
	ServerAttribute string `yaml:"server_attribute"`
	// UserAttribute names an attribute whose value nginx sends to the
	// backend as the login (Auth-User), e.g. uid when clients log in with
	// their mail address. "" (default): the client's login as sent.
	UserAttribute string `yaml:"user_attribute"`
	// AddressFamily picks among a resolved name's addresses: "any" (the
	// resolver's first), "ipv4" or "ipv6". Default "any".
	AddressFamily string `yaml:"address_family"`
	// ResolveTimeout bounds resolving a ServerAttribute name. Default 2s.
	ResolveTimeout time.Duration `yaml:"resolve_timeout"`
	// Services maps nginx's protocol names to the service name the access
	// rules (access.service_attribute, %s) see. Default imap: imap,
	// pop3: pop, smtp: smtp — Cyrus's names, the vocabulary the saslauthd
	// door already feeds the rules (a directory written for Cyrus says
	// "pop"). A site whose directory says "pop3" (Dovecot's name) maps
	// pop3: pop3. Each protocol must map to its own service.
	Services map[Protocol]string `yaml:"services"`
	// Wait is sent as Auth-Wait with a refusal: nginx waits that long, shows
	// the error and lets the client try again in the same session. Rounded
	// up to whole seconds; 0 turns it off (the session ends after the
	// error). Default 2s.
	Wait time.Duration `yaml:"wait"`
	// WaitAttempts stops Auth-Wait from this attempt on (Auth-Login-Attempt),
	// so the session ends: nginx keeps each attempt's memory until the
	// session ends and asks servers to stop after 10-20 attempts. Default 5.
	WaitAttempts int `yaml:"wait_attempts"`
	// SecretHeader and SecretFile: when set, every request must carry this
	// header with the file's first line as value (nginx: auth_http_header
	// X-Auth-Key "..."); a missing or wrong one is answered 403 and logged.
	SecretHeader string `yaml:"secret_header"`
	SecretFile   string `yaml:"secret_file"`
}

// Upstream is where one protocol's sessions go.
type Upstream struct {
	// Server is the default backend address: an IP address (nginx takes no
	// names). "" means every user must have ServerAttribute.
	Server string `yaml:"server"`
	Port   int    `yaml:"port"` // required
}

// Defaults.
const (
	DefaultPath           = "/auth"
	DefaultResolveTimeout = 2 * time.Second
	DefaultWait           = 2 * time.Second
	DefaultWaitAttempts   = 5
)

// DefaultConfig is the section before the file is applied: auth_http
// answers on /auth, but no protocol has a backend until configured.
func DefaultConfig() Config {
	return Config{
		Path:           DefaultPath,
		AddressFamily:  "any",
		ResolveTimeout: DefaultResolveTimeout,
		Wait:           DefaultWait,
		WaitAttempts:   DefaultWaitAttempts,
	}
}

// defaultServices are Cyrus's service names (see Config.Services).
var defaultServices = map[Protocol]string{IMAP: "imap", POP3: "pop", SMTP: "smtp"}

// Service is the service name the access rules see for p.
func (c Config) Service(p Protocol) string {
	if s, ok := c.Services[p]; ok {
		return s
	}
	return defaultServices[p]
}

// Enabled reports whether any protocol has a backend: without one the
// handler is not registered.
func (c Config) Enabled() bool { return len(c.Backends) > 0 }

// Attributes are the LDAP attributes the routing needs fetched with the
// user (the daemon merges them into the search, like Dovecot's mapping).
func (c Config) Attributes() []string {
	var out []string
	for _, a := range []string{c.ServerAttribute, c.UserAttribute} {
		if a != "" {
			out = append(out, a)
		}
	}
	return out
}

// MergeAttributes returns attrs plus c.Attributes(), without duplicates
// (case-insensitive), attrs' order first.
func (c Config) MergeAttributes(attrs []string) []string {
	seen := map[string]bool{}
	out := make([]string, 0, len(attrs)+2)
	for _, a := range append(append([]string(nil), attrs...), c.Attributes()...) {
		if k := strings.ToLower(a); !seen[k] {
			seen[k] = true
			out = append(out, a)
		}
	}
	return out
}

// Validate checks the section without reading the secret file.
func (c Config) Validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if !strings.HasPrefix(c.Path, "/") || strings.ContainsAny(c.Path, " \t\r\n?#") {
		bad("auth_http.path %q must be an absolute URL path like /auth", c.Path)
	}
	for _, p := range sortedProtocols(c.Backends) {
		b := c.Backends[p]
		if !p.valid() {
			bad("auth_http.backends: unknown protocol %q (nginx speaks imap, pop3, smtp)", p)
			continue
		}
		if b.Port < 1 || b.Port > 65535 {
			bad("auth_http.backends.%s.port must be 1..65535, not %d", p, b.Port)
		}
		if b.Server != "" {
			if _, err := checkAddr(b.Server); err != nil {
				bad("auth_http.backends.%s.server: %v (nginx needs an IP address)", p, err)
			}
		} else if c.ServerAttribute == "" {
			bad("auth_http.backends.%s: no server and no auth_http.server_attribute: nowhere to send a session", p)
		}
	}
	seen := map[string]Protocol{}
	for _, p := range Protocols {
		s := c.Service(p)
		if !validServiceName(s) {
			bad("auth_http.services.%s: %q is not a service name", p, s)
		}
		if q, dup := seen[s]; dup {
			bad("auth_http.services: %s and %s both map to %q; each protocol needs its own service", q, p, s)
		}
		seen[s] = p
	}
	for p := range c.Services {
		if !p.valid() {
			bad("auth_http.services: unknown protocol %q (nginx speaks imap, pop3, smtp)", p)
		}
	}
	for _, a := range []struct{ key, v string }{{"server_attribute", c.ServerAttribute}, {"user_attribute", c.UserAttribute}} {
		if a.v != "" && !validAttributeName(a.v) {
			bad("auth_http.%s: %q is not an LDAP attribute name", a.key, a.v)
		}
	}
	switch c.AddressFamily {
	case "any", "ipv4", "ipv6":
	default:
		bad("auth_http.address_family must be any, ipv4 or ipv6, not %q", c.AddressFamily)
	}
	if c.ResolveTimeout <= 0 || c.ResolveTimeout > 30*time.Second {
		bad("auth_http.resolve_timeout must be 1ms..30s, not %s", c.ResolveTimeout)
	}
	if c.Wait < 0 || c.Wait > time.Minute {
		bad("auth_http.wait must be 0..1m, not %s", c.Wait)
	}
	if c.WaitAttempts < 1 || c.WaitAttempts > 20 {
		bad("auth_http.wait_attempts must be 1..20 (nginx asks to stop waiting after 10-20), not %d", c.WaitAttempts)
	}
	if (c.SecretHeader == "") != (c.SecretFile == "") {
		bad("auth_http.secret_header and auth_http.secret_file go together")
	}
	if c.SecretHeader != "" && !validHeaderName(c.SecretHeader) {
		bad("auth_http.secret_header %q is not an HTTP header name", c.SecretHeader)
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// checkAddr parses an address nginx can take as Auth-Server: an IP without
// a zone, neither unspecified nor multicast (ngx_parse_addr would take
// 0.0.0.0, and then proxy to this host's every address).
func checkAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%q is not an IP address", s)
	}
	a = a.Unmap()
	switch {
	case a.Zone() != "":
		return netip.Addr{}, fmt.Errorf("%q has a zone, which nginx cannot parse", s)
	case a.IsUnspecified(), a.IsMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return netip.Addr{}, fmt.Errorf("%q is not a host address", s)
	}
	return a, nil
}

func validServiceName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// validAttributeName accepts LDAP attribute descriptions (RFC 4512 names or
// OIDs, with options after ';').
func validAttributeName(a string) bool {
	if a == "" || len(a) > 128 {
		return false
	}
	for i := 0; i < len(a); i++ {
		c := a[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == ';' || c == '.') {
			return false
		}
	}
	return true
}

// validHeaderName accepts what nginx's auth_http_header can send and Go's
// server reads: letters, digits and '-'.
func validHeaderName(h string) bool {
	if h == "" || len(h) > 64 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func sortedProtocols(m map[Protocol]Upstream) []Protocol {
	out := make([]Protocol, 0, len(m))
	for p := range m {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
