package checkpassword

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Config is the Dovecot checkpassword part of the configuration (YAML key
// "checkpassword").
type Config struct {
	// Timeout bounds the whole run: Dovecot sets none and forks one child per
	// login, so a hung LDAP server must turn into exit 111 quickly. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// Fields maps a Dovecot field (userdb_home, userdb_uid, host, proxy...) to
	// the LDAP attribute whose first value it takes.
	Fields map[string]string `yaml:"fields"`
	// Defaults gives static values for fields the directory does not hold,
	// with tokens %u (full user), %n (local part), %d (domain), e.g.
	// userdb_home: /var/vmail/%d/%n. A field in both maps takes the LDAP
	// value when the entry has one and the default otherwise.
	Defaults map[string]string `yaml:"defaults"`
}

// Limits on what a mapping may produce. Dovecot reads the reply without a
// limit; a directory value longer than this is a data error, not a home.
const (
	maxFieldName  = 64
	maxFieldValue = 1024
	maxFields     = 64
)

// forbiddenFields change how Dovecot authenticates rather than what it does
// after a login. mailauthd has already verified the password (or, for a
// lookup, verifies nothing), so none of them may come from a mapping:
// "nopassword" in a credentials-lookup reply would let any password in.
var forbiddenFields = map[string]string{
	"password":            "mailauthd never returns password hashes",
	"password_noscheme":   "mailauthd never returns password hashes",
	"nopassword":          "would accept any password on credentials lookups",
	"noauthenticate":      "changes passdb chaining",
	"skip_password_check": "changes passdb chaining",
	"user":                "mailauthd always returns the user Dovecot asked for",
	"username":            "mailauthd always returns the user Dovecot asked for",
	"login_user":          "would change who is logged in",
	"master":              "master-user logins are not mapped from LDAP",
	"pass":                "master-user passwords are not mapped from LDAP",
}

// Validate checks the mapping: field names Dovecot can parse and that do
// not change authentication, LDAP attribute names, and default templates
// with known tokens only. It is run by Load's caller at startup, so a typo
// is an error before the first login, not a silently missing field.
func (c Config) Validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if c.Timeout <= 0 {
		bad("checkpassword.timeout must be positive")
	}
	if n := len(c.fieldNames()); n > maxFields {
		bad("checkpassword: %d fields; at most %d", n, maxFields)
	}
	for _, name := range sortedKeys(c.Fields) {
		if err := checkFieldName(name); err != nil {
			bad("checkpassword.fields: %v", err)
		}
		if !validAttributeName(c.Fields[name]) {
			bad("checkpassword.fields.%s: %q is not an LDAP attribute name", name, c.Fields[name])
		}
	}
	for _, name := range sortedKeys(c.Defaults) {
		if err := checkFieldName(name); err != nil {
			bad("checkpassword.defaults: %v", err)
		}
		if err := checkTemplate(c.Defaults[name]); err != nil {
			bad("checkpassword.defaults.%s: %v", name, err)
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// LDAPAttributes lists the attributes the field mapping reads, lower-cased
// and sorted. Add them to ldapauth.Config.Attributes before ldapauth.New
// (both in serve and in checkpassword), or the mapped fields stay empty.
func (c Config) LDAPAttributes() []string {
	seen := map[string]bool{}
	var out []string
	for _, a := range c.Fields {
		a = strings.ToLower(a)
		if a != "" && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}

// MergeAttributes returns attrs plus the mapping's attributes, without
// duplicates (case-insensitive), keeping attrs' order first.
func (c Config) MergeAttributes(attrs []string) []string {
	seen := map[string]bool{}
	out := make([]string, 0, len(attrs)+len(c.Fields))
	for _, a := range append(append([]string(nil), attrs...), c.LDAPAttributes()...) {
		if k := strings.ToLower(a); !seen[k] {
			seen[k] = true
			out = append(out, a)
		}
	}
	return out
}

func (c Config) fieldNames() []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range []map[string]string{c.Fields, c.Defaults} {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	sort.Strings(out)
	return out
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// checkFieldName accepts what Dovecot's auth fields look like: lower-case
// letters, digits, '_', '-', and '/' and '.' for settings such as
// userdb_namespace/inbox/location. No ':' (the ":protected"/":remove"
// suffixes), no '=', no control characters, nothing upper-case.
func checkFieldName(name string) error {
	if name == "" || len(name) > maxFieldName {
		return fmt.Errorf("field name %q must be 1..%d bytes", name, maxFieldName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '_':
		case (c == '-' || c == '/' || c == '.') && i > 0:
		default:
			return fmt.Errorf("field name %q: byte %q not allowed (use lower-case Dovecot field names)", name, c)
		}
	}
	if why, ok := forbiddenFields[name]; ok {
		return fmt.Errorf("field %q cannot be mapped: %s", name, why)
	}
	if name == "userdb_" {
		return fmt.Errorf("field name %q is incomplete", name)
	}
	return nil
}

// validAttributeName accepts an LDAP attribute description: a name
// (letter, then letters, digits, '-') or a numeric OID, with options
// (";lang-de") allowed.
func validAttributeName(a string) bool {
	if a == "" || len(a) > 128 {
		return false
	}
	name, _, _ := strings.Cut(a, ";")
	if name == "" {
		return false
	}
	if name[0] >= '0' && name[0] <= '9' {
		for i := 0; i < len(name); i++ {
			if !(name[i] >= '0' && name[i] <= '9' || name[i] == '.') {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(a); i++ {
		c := a[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == ';') {
			return false
		}
	}
	return true
}

// checkTemplate accepts %u %n %d %% and no other '%' sequence, and no
// byte Dovecot could not carry (NUL) or that makes no sense in a field.
func checkTemplate(t string) error {
	if len(t) > maxFieldValue {
		return fmt.Errorf("template longer than %d bytes", maxFieldValue)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if c < 0x20 || c == 0x7f {
			return fmt.Errorf("template %q holds a control character", t)
		}
		if c != '%' {
			continue
		}
		if i+1 >= len(t) {
			return fmt.Errorf("template %q ends with a lone %%", t)
		}
		switch t[i+1] {
		case 'u', 'n', 'd', '%':
			i++
		default:
			return fmt.Errorf("template %q: unknown token %%%c (known: %%u %%n %%d %%%%)", t, t[i+1])
		}
	}
	return nil
}

// expandTemplate replaces %u (full user), %n (local part) and %d (domain)
// in a template that checkTemplate accepted.
func expandTemplate(t, user, local, domain string) string {
	if !strings.Contains(t, "%") {
		return t
	}
	var b strings.Builder
	for i := 0; i < len(t); i++ {
		if t[i] != '%' || i+1 >= len(t) {
			b.WriteByte(t[i])
			continue
		}
		i++
		switch t[i] {
		case 'u':
			b.WriteString(user)
		case 'n':
			b.WriteString(local)
		case 'd':
			b.WriteString(domain)
		default:
			b.WriteByte(t[i])
		}
	}
	return b.String()
}
