package ldapauth

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Defaults applied by New to zero values.
const (
	DefaultTimeout  = 5 * time.Second
	DefaultPoolSize = 8
	DefaultFilter   = "(uid=%u)"
	maxFilters      = 8
	maxPasswordFile = 4096
)

// DefaultConfig returns the LDAP settings a configuration file starts from.
func DefaultConfig() Config {
	return Config{Scope: "sub", Filter: DefaultFilter, Timeout: DefaultTimeout, PoolSize: DefaultPoolSize}
}

// DefaultAccessConfig returns the access policy a configuration file starts
// from: host filtering on with attribute "host". A config loader must decode
// into this (not into a zero AccessConfig), because an empty HostAttribute
// turns host filtering off.
func DefaultAccessConfig() AccessConfig {
	return AccessConfig{HostAttribute: "host"}
}

// New checks cfg and access, reads the bind password file and resolves this
// host's names. It does not contact LDAP: the daemon starts while LDAP is
// down, and answers TempFail until it is back.
func New(cfg Config, access AccessConfig, logger *slog.Logger) (*Authenticator, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Authenticator{log: logger}
	if err := a.configure(&cfg, &access); err != nil {
		return nil, fmt.Errorf("ldapauth: %w", err)
	}
	a.cfg, a.access = cfg, access
	if access.HostAttribute != "" || len(access.Filters) > 0 {
		if len(access.Hostnames) == 0 {
			a.hostnames = localHostnames(logger)
			if len(a.hostnames) == 0 {
				return nil, errors.New("ldapauth: access.hostnames is empty and this host's name cannot be determined")
			}
		} else {
			for _, h := range access.Hostnames {
				a.hostnames = append(a.hostnames, strings.ToLower(strings.TrimSuffix(h, ".")))
			}
		}
	}
	if access.HostAttribute == "" {
		logger.Info("ldap host attribute check is off (access.host_attribute is empty)")
	}
	if cfg.InsecureSkipTLS {
		logger.Warn("LDAP TLS certificate verification is OFF (tls_insecure_skip_verify): anyone on the path can impersonate the directory")
	}
	a.search = newPool(a, roleSearch)
	a.bind = newPool(a, roleBind)
	if err := a.startMirror(); err != nil {
		return nil, fmt.Errorf("ldapauth: %w", err)
	}
	return a, nil
}

func (a *Authenticator) configure(cfg *Config, access *AccessConfig) error {
	if len(cfg.URLs) == 0 {
		return errors.New("ldap.urls: at least one ldap:// or ldaps:// URL is required")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Timeout < 0 || cfg.Timeout > 5*time.Minute {
		return fmt.Errorf("ldap.timeout: %v is out of range (0 < timeout <= 5m)", cfg.Timeout)
	}
	if cfg.PoolSize == 0 {
		cfg.PoolSize = DefaultPoolSize
	}
	if cfg.PoolSize < 0 || cfg.PoolSize > 1024 {
		return fmt.Errorf("ldap.pool_size: %d is out of range (1..1024)", cfg.PoolSize)
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 4 * cfg.PoolSize
	}
	if cfg.MaxConns < cfg.PoolSize || cfg.MaxConns > 4096 {
		return fmt.Errorf("ldap.max_conns: %d is out of range (pool_size..4096)", cfg.MaxConns)
	}

	var roots *x509.CertPool
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return fmt.Errorf("ldap.ca_file: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("ldap.ca_file: %s holds no PEM certificate", cfg.CAFile)
		}
	}
	for _, raw := range cfg.URLs {
		u, err := url.Parse(raw)
		if err != nil {
			return fmt.Errorf("ldap.urls: %q: %w", raw, err)
		}
		s := &server{url: raw}
		port := ""
		switch strings.ToLower(u.Scheme) {
		case "ldap":
			port = "389"
		case "ldaps":
			port, s.ldaps = "636", true
			if cfg.StartTLS {
				return fmt.Errorf("ldap.urls: %q is ldaps:// but start_tls is on; use one or the other", raw)
			}
		default:
			return fmt.Errorf("ldap.urls: %q: scheme must be ldap:// or ldaps://", raw)
		}
		if u.Hostname() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return fmt.Errorf("ldap.urls: %q: want scheme://host[:port] only", raw)
		}
		if u.Port() != "" {
			port = u.Port()
		}
		s.addr = net.JoinHostPort(u.Hostname(), port)
		if s.ldaps || cfg.StartTLS {
			s.tls = &tls.Config{
				ServerName:         u.Hostname(),
				RootCAs:            roots,
				MinVersion:         tls.VersionTLS12,
				InsecureSkipVerify: cfg.InsecureSkipTLS,
			}
		}
		a.servers = append(a.servers, s)
	}

	if cfg.BindPasswordFile != "" {
		if cfg.BindPassword != "" {
			return errors.New("ldap.bind_password_file: a bind password is also given; keep one")
		}
		pw, err := readPasswordFile(cfg.BindPasswordFile)
		if err != nil {
			return fmt.Errorf("ldap.bind_password_file: %w", err)
		}
		cfg.BindPassword = pw
	}
	if cfg.BindDN != "" {
		if _, err := ldap.ParseDN(cfg.BindDN); err != nil {
			return fmt.Errorf("ldap.bind_dn: %w", err)
		}
		if cfg.BindPassword == "" {
			// An empty password would be an unauthenticated bind (RFC 4513):
			// anonymous access while the admin believes a service account is used.
			return errors.New("ldap.bind_dn is set but the bind password is empty (bind_password_file)")
		}
	} else if cfg.BindPassword != "" {
		return errors.New("ldap: a bind password is given without ldap.bind_dn")
	}

	if cfg.Base == "" {
		return errors.New("ldap.base: required (e.g. ou=people,dc=example,dc=org)")
	}
	if err := checkTemplate(cfg.Base, false, false); err != nil {
		return fmt.Errorf("ldap.base %q: %w", cfg.Base, err)
	}
	a.baseHasTokens = hasTokens(cfg.Base)
	switch strings.ToLower(cfg.Scope) {
	case "", "sub", "subtree":
		a.scope = ldap.ScopeWholeSubtree
	case "one", "onelevel":
		a.scope = ldap.ScopeSingleLevel
	case "base":
		a.scope = ldap.ScopeBaseObject
	default:
		return fmt.Errorf("ldap.scope: %q is not sub, one or base", cfg.Scope)
	}
	if cfg.Filter == "" {
		cfg.Filter = DefaultFilter
	}
	if err := checkTemplate(cfg.Filter, false, true); err != nil {
		return fmt.Errorf("ldap.filter %q: %w", cfg.Filter, err)
	}
	if !usesUserToken(cfg.Filter) {
		return fmt.Errorf("ldap.filter %q: must contain %%u or %%U, or every login would match the same entries", cfg.Filter)
	}

	seen := map[string]bool{}
	addAttr := func(name string) error {
		if !validAttrName(name) {
			return fmt.Errorf("%q is not an attribute name", name)
		}
		l := strings.ToLower(name)
		if l == "userpassword" || l == "2.5.4.35" {
			return errors.New("userPassword must never be fetched")
		}
		if !seen[l] {
			seen[l] = true
			a.attrs = append(a.attrs, name)
		}
		return nil
	}
	if access.HostAttribute != "" {
		if err := addAttr(access.HostAttribute); err != nil {
			return fmt.Errorf("access.host_attribute: %w", err)
		}
	}
	if access.ServiceAttribute != "" {
		if err := addAttr(access.ServiceAttribute); err != nil {
			return fmt.Errorf("access.service_attribute: %w", err)
		}
	}
	for _, n := range cfg.Attributes {
		if err := addAttr(n); err != nil {
			return fmt.Errorf("ldap.attributes: %w", err)
		}
	}
	if len(a.attrs) == 0 {
		a.attrs = []string{"1.1"} // RFC 4511: no attributes, just the DN
	}
	if len(access.Filters) > maxFilters {
		return fmt.Errorf("access.filters: %d filters, at most %d", len(access.Filters), maxFilters)
	}
	for i, f := range access.Filters {
		if err := checkTemplate(f, true, true); err != nil {
			return fmt.Errorf("access.filters[%d] %q: %w", i, f, err)
		}
	}
	for i, h := range access.Hostnames {
		if strings.TrimSpace(h) == "" || strings.ContainsAny(h, " \t*!") {
			return fmt.Errorf("access.hostnames[%d]: %q is not a host name", i, h)
		}
	}
	return nil
}

func validAttrName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == ';') {
			return false
		}
	}
	return true
}

func readPasswordFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	line, err := bufio.NewReaderSize(io.LimitReader(f, maxPasswordFile), maxPasswordFile).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("%s: first line is empty", path)
	}
	return line, nil
}

// localHostnames is os.Hostname() plus its canonical name and the reverse
// names of its addresses, lower-cased, bounded to two seconds in all.
func localHostnames(logger *slog.Logger) []string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		logger.Warn("cannot read this host's name", "err", err)
		return nil
	}
	names := []string{strings.ToLower(strings.TrimSuffix(h, "."))}
	add := func(n string) {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if n == "" {
			return
		}
		for _, have := range names {
			if have == n {
				return
			}
		}
		names = append(names, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r := net.DefaultResolver
	if cname, err := r.LookupCNAME(ctx, h); err == nil {
		add(cname)
	}
	if addrs, err := r.LookupHost(ctx, h); err == nil {
		if len(addrs) > 4 {
			addrs = addrs[:4]
		}
		for _, ad := range addrs {
			if ptrs, err := r.LookupAddr(ctx, ad); err == nil {
				for _, p := range ptrs {
					add(p)
				}
			}
		}
	}
	return names
}
