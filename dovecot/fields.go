// Package dovecot maps a directory entry to Dovecot's passdb and userdb
// extra fields (userdb_home, proxy, host, ...). The daemon owns the mapping
// (the dovecot: section), so every Dovecot front door — checkpassword, the
// Lua passdb/userdb — and every helper asking the daemon returns the same
// fields for the same entry.
package dovecot

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/mailauthd/mailauthd/auth"
)

// Mapping is the dovecot: section of the configuration.
type Mapping struct {
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
	MaxFieldValue = 1024
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
	"user":                "mailauthd returns the entry's canonical name (ldap.canonical_user)",
	"username":            "mailauthd returns the entry's canonical name (ldap.canonical_user)",
	"login_user":          "would change who is logged in",
	"master":              "master-user logins are not mapped from LDAP",
	"pass":                "master-user passwords are not mapped from LDAP",
}

// Validate checks the mapping: field names Dovecot can parse and that do
// not change authentication, LDAP attribute names, and default templates
// with known tokens only, so a typo is an error at startup, not a silently
// missing field.
func (c Mapping) Validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if n := len(c.fieldNames()); n > maxFields {
		bad("dovecot: %d fields; at most %d", n, maxFields)
	}
	for _, name := range sortedKeys(c.Fields) {
		if err := checkFieldName(name); err != nil {
			bad("dovecot.fields: %v", err)
		}
		if !validAttributeName(c.Fields[name]) {
			bad("dovecot.fields.%s: %q is not an LDAP attribute name", name, c.Fields[name])
		}
	}
	for _, name := range sortedKeys(c.Defaults) {
		if err := checkFieldName(name); err != nil {
			bad("dovecot.defaults: %v", err)
		}
		if err := checkTemplate(c.Defaults[name]); err != nil {
			bad("dovecot.defaults.%s: %v", name, err)
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

// LDAPAttributes lists the attributes the field mapping reads, lower-cased
// and sorted; the daemon fetches them with the user.
func (c Mapping) LDAPAttributes() []string {
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
func (c Mapping) MergeAttributes(attrs []string) []string {
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

func (c Mapping) fieldNames() []string {
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
	if len(t) > MaxFieldValue {
		return fmt.Errorf("template longer than %d bytes", MaxFieldValue)
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

// ErrBadValue means a directory value cannot be put in a field (NUL byte or
// over-long). The caller answers "temporary failure": the directory holds
// something it should not, and guessing (dropping a proxy host, say) could
// send the user to the wrong place.
var ErrBadValue = errors.New("dovecot: directory value unusable in a Dovecot field")

// Map builds the fields for user (the entry's canonical name, auth.Verdict's
// User) from an accepted verdict: "user" first, so Dovecot opens the
// entry's mailbox whatever the client typed, then every mapped field in
// name order, the LDAP value when present, else the default (its %u %n %d
// from user). Fields with neither are left out. missing, if not nil,
// is called for each mapped attribute the entry lacks.
func (c Mapping) Map(user string, v auth.Verdict, missing func(field, attr string)) ([]auth.Field, error) {
	local, domain := user, ""
	if i := strings.LastIndexByte(user, '@'); i > 0 && i < len(user)-1 {
		local, domain = user[:i], user[i+1:]
	}
	names := c.fieldNames()
	out := make([]auth.Field, 0, 1+len(names))
	out = append(out, auth.Field{Key: "user", Value: user})
	for _, name := range names {
		value, ok := "", false
		if attr, mapped := c.Fields[name]; mapped {
			if vals := lookupAttr(v.Attributes, attr); len(vals) > 0 && vals[0] != "" {
				value, ok = vals[0], true
			} else if missing != nil {
				missing(name, attr)
			}
		}
		if !ok {
			if t, has := c.Defaults[name]; has {
				value, ok = expandTemplate(t, user, local, domain), true
			}
		}
		if !ok {
			continue
		}
		if len(value) > MaxFieldValue || strings.IndexByte(value, 0) >= 0 {
			return nil, fmt.Errorf("field %s: %w", name, ErrBadValue)
		}
		out = append(out, auth.Field{Key: name, Value: value})
	}
	return out, nil
}

// lookupAttr finds an attribute by name, case-insensitively: ldapauth
// lower-cases names, but the config may spell them like the schema does.
func lookupAttr(attrs map[string][]string, name string) []string {
	if vals, ok := attrs[strings.ToLower(name)]; ok {
		return vals
	}
	for k, vals := range attrs {
		if strings.EqualFold(k, name) {
			return vals
		}
	}
	return nil
}
