package authhttp

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// Resolver looks up a host name's addresses (net.DefaultResolver).
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Policy is the auth_http: section compiled by the daemon for one
// configuration generation: the secret read, the backends parsed, and the
// routing of an accepted login. A reload builds a new one, so a rotated
// secret file or a changed backend takes effect with SIGHUP.
type Policy struct {
	cfg      Config
	secret   []byte
	servers  map[Protocol]netip.Addr // configured default servers
	protoFor map[string]Protocol     // service name -> protocol
	resolver Resolver
}

// NewPolicy reads the secret file (first line) and prepares the routing.
// resolver nil means net.DefaultResolver.
func NewPolicy(cfg Config, resolver Resolver) (*Policy, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	p := &Policy{cfg: cfg, servers: map[Protocol]netip.Addr{}, protoFor: map[string]Protocol{}, resolver: resolver}
	for proto, b := range cfg.Backends {
		if b.Server != "" {
			p.servers[proto], _ = checkAddr(b.Server) // validated
		}
	}
	for _, proto := range Protocols {
		p.protoFor[cfg.Service(proto)] = proto
	}
	if cfg.SecretFile != "" {
		fh, err := os.Open(cfg.SecretFile)
		if err != nil {
			return nil, fmt.Errorf("auth_http.secret_file: %w", err)
		}
		defer fh.Close()
		s, err := auth.ReadPasswordLine(fh)
		if err != nil {
			return nil, fmt.Errorf("auth_http.secret_file %s: %w", cfg.SecretFile, err)
		}
		p.secret = []byte(s)
	}
	return p, nil
}

// Config is the section the policy was built from.
func (p *Policy) Config() Config { return p.cfg }

// Errors of CheckSecret.
var (
	ErrSecretMissing = errors.New("authhttp: shared secret header missing")
	ErrSecretWrong   = errors.New("authhttp: shared secret header wrong")
)

// CheckSecret verifies the shared secret header when one is configured. The
// comparison takes the same time whatever the header holds (as long as it
// is not longer than the secret plus the header limit): a wrong first byte
// teaches an attacker nothing.
func (p *Policy) CheckSecret(h http.Header) error {
	if p.secret == nil {
		return nil
	}
	vs := h.Values(p.cfg.SecretHeader)
	if len(vs) == 0 {
		return ErrSecretMissing
	}
	if len(vs) != 1 || subtle.ConstantTimeCompare([]byte(vs[0]), p.secret) != 1 {
		return ErrSecretWrong
	}
	return nil
}

// RouteError is why an accepted login cannot be routed; the handler
// answers a temporary failure, never an OK with a guessed backend.
type RouteError struct{ Reason string }

func (e *RouteError) Error() string { return "auth_http route: " + e.Reason }

// Field keys Route returns (the response headers they become).
const (
	FieldServer = "Auth-Server"
	FieldPort   = "Auth-Port"
	FieldUser   = "Auth-User"
)

// Route picks the backend of an accepted login for service (the name the
// handler put in the request: Config.Service of its protocol): the user's
// ServerAttribute value when the entry has one (an IP, or a name resolved
// within ResolveTimeout), else the protocol's configured server; the port
// of the protocol; and the UserAttribute value as login when configured.
// Any doubt — several values, a name that does not resolve, a bad address —
// is a RouteError.
func (p *Policy) Route(ctx context.Context, service string, v auth.Verdict) ([]auth.Field, error) {
	proto, ok := p.protoFor[service]
	if !ok {
		return nil, &RouteError{fmt.Sprintf("service %q is none of auth_http's protocols", service)}
	}
	b, ok := p.cfg.Backends[proto]
	if !ok {
		return nil, &RouteError{fmt.Sprintf("auth_http.backends has no %s entry", proto)}
	}
	addr, err := p.server(ctx, proto, v.Attributes)
	if err != nil {
		return nil, err
	}
	fields := []auth.Field{{Key: FieldServer, Value: addr.String()}, {Key: FieldPort, Value: strconv.Itoa(b.Port)}}
	if a := p.cfg.UserAttribute; a != "" {
		u, err := single(v.Attributes, a)
		if err != nil {
			return nil, err
		}
		if u == "" {
			return nil, &RouteError{fmt.Sprintf("entry has no %s for the backend login", a)}
		}
		if safeValue(u) != nil {
			return nil, &RouteError{fmt.Sprintf("%s value cannot be sent as a login (control bytes, edge spaces or over %d bytes)", a, maxValue)}
		}
		fields = append(fields, auth.Field{Key: FieldUser, Value: u})
	}
	return fields, nil
}

func (p *Policy) server(ctx context.Context, proto Protocol, attrs map[string][]string) (netip.Addr, error) {
	a := p.cfg.ServerAttribute
	if a != "" {
		host, err := single(attrs, a)
		if err != nil {
			return netip.Addr{}, err
		}
		if host != "" {
			return p.resolve(ctx, host)
		}
	}
	if s, ok := p.servers[proto]; ok {
		return s, nil
	}
	return netip.Addr{}, &RouteError{fmt.Sprintf("entry has no %s and auth_http.backends.%s has no server", a, proto)}
}

// single returns the one value of attribute a ("" when absent); several
// values are an error: which backend would be a guess.
func single(attrs map[string][]string, a string) (string, error) {
	vs := attrs[strings.ToLower(a)]
	switch len(vs) {
	case 0:
		return "", nil
	case 1:
		return vs[0], nil
	}
	return "", &RouteError{fmt.Sprintf("entry has %d values of %s; want one", len(vs), a)}
}

// resolve turns a directory value into an address nginx can take: an IP
// literal as it is, a host name through the resolver within
// ResolveTimeout. The result passes checkAddr either way.
func (p *Policy) resolve(ctx context.Context, host string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil || strings.Contains(host, ":") {
		if err != nil {
			return netip.Addr{}, &RouteError{fmt.Sprintf("backend %q is not an address", truncate(host, 64))}
		}
		if a, err = checkAddr(a.String()); err != nil {
			return netip.Addr{}, &RouteError{err.Error()}
		}
		if !p.familyOK(a) {
			return netip.Addr{}, &RouteError{fmt.Sprintf("backend %s is not %s", a, p.cfg.AddressFamily)}
		}
		return a, nil
	}
	if !validHostName(host) {
		return netip.Addr{}, &RouteError{fmt.Sprintf("backend %q is neither an IP address nor a host name", truncate(host, 64))}
	}
	ctx, cancel := context.WithTimeout(ctx, p.cfg.ResolveTimeout)
	defer cancel()
	network := map[string]string{"any": "ip", "ipv4": "ip4", "ipv6": "ip6"}[p.cfg.AddressFamily]
	addrs, err := p.resolver.LookupNetIP(ctx, network, host)
	if err != nil {
		return netip.Addr{}, &RouteError{fmt.Sprintf("resolving backend %s: %v", host, err)}
	}
	for _, a := range addrs {
		a = a.Unmap()
		if c, err := checkAddr(a.String()); err == nil && p.familyOK(c) {
			return c, nil
		}
	}
	return netip.Addr{}, &RouteError{fmt.Sprintf("backend %s resolved to no usable %s address (%v)", host, p.cfg.AddressFamily, addrs)}
}

func (p *Policy) familyOK(a netip.Addr) bool {
	switch p.cfg.AddressFamily {
	case "ipv4":
		return a.Is4()
	case "ipv6":
		return a.Is6()
	}
	return true
}

// validHostName accepts RFC 1123 names: labels of letters, digits and '-',
// not starting or ending with '-', at most 253 bytes; a final dot allowed.
func validHostName(h string) bool {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := 0; i < len(l); i++ {
			c := l[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// waitSeconds is Config.Wait rounded up to whole seconds (Auth-Wait).
func (p *Policy) waitSeconds() int {
	return int((p.cfg.Wait + time.Second - 1) / time.Second)
}
