package ldapauth

import (
	"errors"
	"fmt"
	"strings"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/auth"
)

// ErrNoValue means a template token has no value for this request (e.g. %d
// for a user without a domain and no realm). The request is refused: the
// entry cannot be named, and an empty substitution could change what the
// filter or base means.
var ErrNoValue = errors.New("token has no value")

// tokenValues are the values a template can refer to. Cyrus lak.c semantics:
//
//	%%    a literal %
//	%u    the user (after libsasl2's realm split)
//	%U    the user up to its first '@'
//	%d    the part of the user after its first '@', else the realm
//	%1-%9 labels of that domain counted from the right (%1 = TLD)
//	%r    the realm, or Config.DefaultRealm
//	%R    "@" + realm, or nothing without a realm
//	%s    the service
//	%h    this host's first name (access filters only)
//	%D    the user's DN (access filters only)
type tokenValues struct {
	user, realm, service string
	host, dn             string
	access               bool // %h and %D allowed
}

func (v *tokenValues) domain() string {
	if i := strings.IndexByte(v.user, '@'); i >= 0 && i < len(v.user)-1 {
		return v.user[i+1:]
	}
	return v.realm
}

// domainLabel returns label n (1 = rightmost) of d, or "".
func domainLabel(d string, n int) string {
	for i := 1; ; i++ {
		j := strings.LastIndexByte(d, '.')
		if i == n {
			return d[j+1:]
		}
		if j < 0 {
			return ""
		}
		d = d[:j]
	}
}

// escaper escapes one value for its context (filter value or DN value).
type escaper func(string) string

// expand appends tmpl with its tokens replaced by escaped values to dst.
// A syntax error (unknown token, lone % at the end) and a token without a
// value (ErrNoValue) are errors; New checks syntax once, so at request time
// only ErrNoValue occurs.
func expand(dst []byte, tmpl string, v *tokenValues, esc escaper) ([]byte, error) {
	for {
		i := strings.IndexByte(tmpl, '%')
		if i < 0 {
			return append(dst, tmpl...), nil
		}
		dst = append(dst, tmpl[:i]...)
		if i+1 >= len(tmpl) {
			return dst, errors.New("lone % at the end (write %% for a literal %)")
		}
		tok := tmpl[i+1]
		tmpl = tmpl[i+2:]
		var val string
		optional := false
		switch tok {
		case '%':
			dst = append(dst, '%')
			continue
		case 'u':
			val = v.user
		case 'U':
			val = v.user
			if j := strings.IndexByte(val, '@'); j >= 0 {
				val = val[:j]
			}
		case 'd':
			val = v.domain()
		case '1', '2', '3', '4', '5', '6', '7', '8', '9':
			val = domainLabel(v.domain(), int(tok-'0'))
		case 'r':
			val = v.realm
		case 'R':
			optional = true
			if v.realm != "" {
				dst = append(dst, '@')
				val = v.realm
			}
		case 's':
			val = v.service
		case 'h', 'D':
			if !v.access {
				return dst, fmt.Errorf("%%%c is only allowed in access filters", tok)
			}
			val = v.host
			if tok == 'D' {
				val = v.dn
			}
		default:
			return dst, fmt.Errorf("unknown token %%%c", tok)
		}
		if val == "" && !optional {
			return dst, fmt.Errorf("%%%c: %w", tok, ErrNoValue)
		}
		dst = append(dst, esc(val)...)
	}
}

// requestValues normalizes a request the way the decision uses it: realm
// split off "name@domain" like libsasl2, default realm applied.
func requestValues(req auth.Request, defaultRealm string) tokenValues {
	req = req.SplitRealm()
	if req.Realm == "" {
		req.Realm = defaultRealm
	}
	return tokenValues{user: req.User, realm: req.Realm, service: req.Service}
}

// checkTemplate validates a template's syntax with placeholder values, and
// for filters that the result compiles.
func checkTemplate(tmpl string, access, isFilter bool) error {
	v := tokenValues{user: "u@example.org", realm: "example.org", service: "imap",
		host: "host.example.org", dn: "uid=u,dc=example,dc=org", access: access}
	esc := ldap.EscapeDN
	if isFilter {
		esc = ldap.EscapeFilter
	}
	b, err := expand(nil, tmpl, &v, esc)
	if err != nil {
		return err
	}
	if isFilter {
		if _, err := ldap.CompileFilter(string(b)); err != nil {
			return fmt.Errorf("not a valid LDAP filter: %w", err)
		}
	} else if _, err := ldap.ParseDN(string(b)); err != nil {
		return fmt.Errorf("not a valid DN: %w", err)
	}
	return nil
}

func usesUserToken(tmpl string) bool {
	for i := 0; i+1 < len(tmpl); i++ {
		if tmpl[i] == '%' {
			switch tmpl[i+1] {
			case 'u', 'U':
				return true
			}
			i++ // skip the token character, so %%u is not a user token
		}
	}
	return false
}

func hasTokens(tmpl string) bool { return strings.IndexByte(tmpl, '%') >= 0 }
