package ldapauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Defaults applied by New to zero values.
const (
	DefaultFilter = "(uid=%u)"
	maxFilters    = 8
)

// DefaultConfig returns the search settings a configuration file starts from.
func DefaultConfig() Config {
	return Config{Scope: "sub", Filter: DefaultFilter}
}

// DefaultAccessConfig returns the access policy a configuration file starts
// from: host filtering on with attribute "host". A config loader must decode
// into this (not into a zero AccessConfig), because an empty HostAttribute
// turns host filtering off.
func DefaultAccessConfig() AccessConfig {
	return AccessConfig{HostAttribute: "host"}
}

// New checks cfg and access and resolves this host's names; dir is the
// transport. It does not contact LDAP.
func New(dir Directory, cfg Config, access AccessConfig, opts Options) (*Authenticator, error) {
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Authenticator{log: logger, dir: dir, mirror: opts.Mirror, throttle: opts.Throttle}
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
	if a.realm.blind() && len(a.realm.served) == 0 {
		logger.Warn("ldap.filter and ldap.base do not use the realm, and access.realm_attribute is not set: "+
			"every login that carries a realm (name@domain, or a realm the client sends) other than ldap.default_realm is refused. "+
			"Single-domain site: list the domain in access.realms (e.g. access.realms: [example.org]); "+
			"several domains: put %d or %r into ldap.filter, or set access.realm_attribute (e.g. mail)",
			"filter", cfg.Filter, "default_realm", cfg.DefaultRealm)
	}
	if a.realm.blind() && len(a.realm.served) > 1 {
		logger.Warn("ldap.filter and ldap.base do not use the realm, and access.realm_attribute is not set, but several domains are served: "+
			"name@a and name@b reach the same entry, so one password opens both domains' mailboxes of that name. "+
			"Put %d or %r into ldap.filter, or set access.realm_attribute (e.g. mail)",
			"filter", cfg.Filter, "realms", access.Realms, "default_realm", cfg.DefaultRealm)
	}
	return a, nil
}

func (a *Authenticator) configure(cfg *Config, access *AccessConfig) error {
	if cfg.Base == "" {
		return errors.New("ldap.base: required (e.g. ou=people,dc=example,dc=org)")
	}
	if err := checkTemplate(cfg.Base, false, false); err != nil {
		return fmt.Errorf("ldap.base %q: %w", cfg.Base, err)
	}
	a.baseHasTokens = hasTokens(cfg.Base)
	scope, err := parseScope(cfg.Scope)
	if err != nil {
		return err
	}
	a.scope = scope
	if cfg.Filter == "" {
		cfg.Filter = DefaultFilter
	}
	if err := checkTemplate(cfg.Filter, false, true); err != nil {
		return fmt.Errorf("ldap.filter %q: %w", cfg.Filter, err)
	}
	if !usesUserToken(cfg.Filter) {
		return fmt.Errorf("ldap.filter %q: must contain %%u or %%U, or every login would match the same entries", cfg.Filter)
	}
	if a.realm, err = newRealmRule(*cfg, *access); err != nil {
		return err
	}
	if a.canonical, err = canonicalFor(*cfg); err != nil {
		return err
	}
	attrs, err := searchAttributes(*cfg, *access)
	if err != nil {
		return err
	}
	a.attrs = attrs
	a.fetched = make(map[string]bool, len(attrs))
	for _, n := range attrs {
		a.fetched[strings.ToLower(n)] = true
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

func parseScope(s string) (int, error) {
	switch strings.ToLower(s) {
	case "", "sub", "subtree":
		return ldap.ScopeWholeSubtree, nil
	case "one", "onelevel":
		return ldap.ScopeSingleLevel, nil
	case "base":
		return ldap.ScopeBaseObject, nil
	}
	return 0, fmt.Errorf("ldap.scope: %q is not sub, one or base", s)
}

// canonicalFor is the canonical-user rule: ldap.canonical_user, or the one
// derived from the filter; ok false (no %{ATTR}) keeps the login as sent.
func canonicalFor(cfg Config) (*canonical, error) {
	tmpl := cfg.CanonicalUser
	if tmpl == "" {
		filter := cfg.Filter
		if filter == "" {
			filter = DefaultFilter
		}
		t, ok := defaultCanonical(filter)
		if !ok {
			return nil, nil
		}
		tmpl = t
	}
	c, err := newCanonical(tmpl)
	if err != nil {
		return nil, err
	}
	return &c, nil
}

// searchAttributes are the attributes fetched with the user: the host,
// service and realm attributes, those the canonical user is made of, and
// cfg.Attributes, without duplicates; "1.1" (none, RFC 4511) when there is
// nothing to fetch.
func searchAttributes(cfg Config, access AccessConfig) ([]string, error) {
	seen := map[string]bool{}
	var attrs []string
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
			attrs = append(attrs, name)
		}
		return nil
	}
	if access.HostAttribute != "" {
		if err := addAttr(access.HostAttribute); err != nil {
			return nil, fmt.Errorf("access.host_attribute: %w", err)
		}
	}
	if access.ServiceAttribute != "" {
		if err := addAttr(access.ServiceAttribute); err != nil {
			return nil, fmt.Errorf("access.service_attribute: %w", err)
		}
	}
	if access.RealmAttribute != "" {
		if err := addAttr(access.RealmAttribute); err != nil {
			return nil, fmt.Errorf("access.realm_attribute: %w", err)
		}
	}
	c, err := canonicalFor(cfg)
	if err != nil {
		return nil, err
	}
	if c != nil {
		for _, n := range c.attrs {
			if err := addAttr(n); err != nil {
				return nil, fmt.Errorf("ldap.canonical_user: %w", err)
			}
		}
	}
	for _, n := range cfg.Attributes {
		if err := addAttr(n); err != nil {
			return nil, fmt.Errorf("ldap.attributes: %w", err)
		}
	}
	if len(attrs) == 0 {
		attrs = []string{"1.1"}
	}
	return attrs, nil
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
