package config

import (
	"bufio"

	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// ParseSaslauthdConf reads the LDAP settings of a Cyrus saslauthd.conf
// (saslauthd -a ldap, cyrus-sasl saslauthd/lak.c) into base, which holds
// the defaults to start from. It returns the keys it accepted but does not
// honour, each with the reason, for the daemon to log at startup.
//
// A key whose loss would change who is let in (group checks, SASL binds,
// client certificates, custom password comparison) is an error, not a
// warning: dropping it silently would accept users Cyrus refused.
func ParseSaslauthdConf(data []byte, base LDAP) (LDAP, []string, error) {
	l := base
	c, q := &l.Directory, &l.Search // transport and search settings
	var warnings, errs []string
	c.URLs = []string{"ldap://localhost/"} // Cyrus's default
	q.Base = ""
	q.Filter = "(uid=%u)"
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), 64*1024)
	lineno := 0
	for sc.Scan() {
		lineno++
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		// Cyrus allows only [A-Za-z0-9_-] directly followed by ':'.
		if !ok || key == "" || strings.IndexFunc(key, func(r rune) bool {
			return !(r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
		}) >= 0 {
			errs = append(errs, fmt.Sprintf("line %d: not a \"key: value\" line", lineno))
			continue
		}
		key = strings.ToLower(key)
		val = strings.TrimSpace(val)
		if val == "" {
			errs = append(errs, fmt.Sprintf("line %d: %s has no value", lineno, key))
			continue
		}
		at := func(format string, a ...any) string {
			return fmt.Sprintf("line %d: %s: ", lineno, key) + fmt.Sprintf(format, a...)
		}
		bad := func(format string, a ...any) { errs = append(errs, at(format, a...)) }
		warn := func(format string, a ...any) { warnings = append(warnings, at(format, a...)) }

		switch key {
		case "ldap_servers":
			c.URLs = strings.Fields(val)
		case "ldap_bind_dn":
			c.BindDN = val
		case "ldap_bind_pw", "ldap_password":
			c.BindPassword = val
		case "ldap_version":
			if val != "3" {
				bad("only LDAPv3 is supported")
			}
		case "ldap_search_base":
			q.Base = val
		case "ldap_filter":
			if !strings.HasPrefix(val, "(") {
				val = "(" + val + ")" // Cyrus's libldap accepts the unparenthesised form
			}
			q.Filter = val
		case "ldap_scope":
			switch strings.ToLower(val) {
			case "sub", "one", "base":
				q.Scope = strings.ToLower(val)
			default:
				bad("scope must be sub, one or base, not %q", val)
			}
		case "ldap_auth_method":
			if !strings.EqualFold(val, "bind") {
				bad("%q is not supported; mailauthd verifies passwords with an LDAP bind only (ldap_auth_method: bind)", val)
			}
		case "ldap_timeout":
			n, err := strconv.Atoi(val)
			if err != nil || n <= 0 || n > 300 {
				bad("want whole seconds 1..300, not %q", val)
			} else {
				c.Timeout = time.Duration(n) * time.Second
			}
		case "ldap_time_limit":
			warn("not used; every LDAP operation is bounded by ldap_timeout (%s)", c.Timeout)
		case "ldap_size_limit":
			warn("not used; mailauthd asks for 2 entries and refuses a user that matches more than one")
		case "ldap_deref":
			if !strings.EqualFold(val, "never") {
				warn("aliases are never dereferenced; users found only through an alias are refused")
			}
		case "ldap_referrals":
			if switchOn(val) {
				warn("referrals are not followed; users found only through a referral are refused")
			}
		case "ldap_restart", "ldap_debug":
			warn("not needed; ignored")
		case "ldap_cache_ttl", "ldap_cache_mem":
			warn("libldap's cache is not used; see the cache: section of mailauthd.yaml")
		case "ldap_start_tls":
			c.StartTLS = switchOn(val)
		case "ldap_tls_check_peer":
			if !switchOn(val) {
				warn("certificates are always verified (against ldap_tls_cacert_file or the system roots)")
			}
		case "ldap_tls_cacert_file":
			c.CAFile = val
		case "ldap_tls_cacert_dir":
			bad("not supported; put the CA certificates into one file and name it in ldap_tls_cacert_file")
		case "ldap_tls_ciphers":
			warn("Go's TLS defaults are used (TLS 1.2+, modern ciphers)")
		case "ldap_tls_cert", "ldap_tls_key":
			bad("client certificates are not supported")
		case "ldap_use_sasl":
			if switchOn(val) {
				bad("SASL binds are not supported; use a simple bind DN and password")
			}
		case "ldap_id", "ldap_authz_id", "ldap_mech", "ldap_realm":
			warn("only used with ldap_use_sasl; ignored")
		case "ldap_password_attr":
			warn("only used with ldap_auth_method: custom; ignored")
		case "ldap_group_dn", "ldap_group_attr", "ldap_group_filter", "ldap_group_search_base",
			"ldap_group_scope", "ldap_group_match_method":
			bad("group checks are not translated automatically; express membership as an access.filters entry, e.g. (memberOf=cn=mail,ou=groups,dc=example,dc=org)")
		case "ldap_default_realm", "ldap_default_domain":
			q.DefaultRealm = val
		default:
			bad("unknown key (Cyrus would silently ignore it; it is probably a typo)")
		}
	}
	if err := sc.Err(); err != nil {
		return l, warnings, fmt.Errorf("reading: %w", err)
	}
	if c.BindDN != "" && c.BindPassword == "" {
		errs = append(errs, "ldap_bind_dn is set without ldap_bind_pw: the search would run anonymously")
	}
	if len(errs) > 0 {
		return l, warnings, errors.New(strings.Join(errs, "; "))
	}
	return l, warnings, nil
}

// switchOn reads a Cyrus boolean: a leading 1/y/on/t is true; anything
// else (0/n/off/f, or garbage) is false, as lak_config_switch does.
func switchOn(v string) bool {
	v = strings.ToLower(v)
	return strings.HasPrefix(v, "1") || strings.HasPrefix(v, "y") || strings.HasPrefix(v, "on") || strings.HasPrefix(v, "t")
}

// LoadSaslauthdConf replaces f's LDAP settings with those of a Cyrus
// saslauthd.conf. The YAML file must then have no ldap: section, so that
// there is one source of truth.
func (f *File) LoadSaslauthdConf(path string) error {
	if f.ldapSet {
		return fmt.Errorf("%s: the YAML configuration has an ldap: section too; use one or the other", path)
	}
	data, err := readBounded(path)
	if err != nil {
		return err
	}
	l, warnings, err := ParseSaslauthdConf(data, f.LDAP)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	f.LDAP = l
	for _, w := range warnings {
		f.Warnings = append(f.Warnings, path+": "+w)
	}
	if l.Directory.BindPassword != "" {
		if p := auth.SecretFileProblem(path); p != "" {
			f.Warnings = append(f.Warnings, "ldap_bind_pw: "+p)
		}
	}
	return nil
}
