package ldapauth

import (
	"errors"
	"fmt"
	"strings"

	"github.com/go-ldap/ldap/v3"
)

// A login's realm is part of its identity: "alice@other.example" must never
// open what belongs to the alice the directory knows for another domain,
// whatever the filter says. When a request carries a realm (sent by the
// client, or split from "name@domain"), the login succeeds only if that
// realm is bound to the entry found:
//
//   - the search used it: ldap.filter or ldap.base holds %r or %R (the
//     realm), or %d / %1-%9 (the login's domain, which must then be the
//     realm), so the directory itself decided;
//   - the entry's own domain attribute (access.realm_attribute, e.g. mail or
//     associatedDomain) holds it: a value's part after its last '@', or the
//     whole value;
//   - it is listed in access.realms (a single-domain site: the domains this
//     host serves), or it is ldap.default_realm.
//
// A request without a realm takes ldap.default_realm; with none set there is
// no realm to check.
type realmRule struct {
	bindsRealm  bool            // the search used %r or %R
	bindsDomain bool            // the search used %d or %1-%9
	attr        string          // access.realm_attribute; "" = none
	served      map[string]bool // access.realms and the default realm, lower-cased
}

func newRealmRule(cfg Config, access AccessConfig) (realmRule, error) {
	r := realmRule{attr: access.RealmAttribute, served: map[string]bool{}}
	for _, tmpl := range []string{cfg.Filter, cfg.Base} {
		for tok := range templateTokens(tmpl) {
			switch tok {
			case 'r', 'R':
				r.bindsRealm = true
			case 'd', '1', '2', '3', '4', '5', '6', '7', '8', '9':
				r.bindsDomain = true
			}
		}
	}
	if r.attr != "" && !validAttrName(r.attr) {
		return r, fmt.Errorf("access.realm_attribute: %q is not an attribute name", r.attr)
	}
	for i, d := range access.Realms {
		if d == "" || strings.ContainsAny(d, " \t@*!") || len(d) > 253 {
			return r, fmt.Errorf("access.realms[%d]: %q is not a domain", i, d)
		}
		r.served[strings.ToLower(d)] = true
	}
	if cfg.DefaultRealm != "" {
		r.served[strings.ToLower(cfg.DefaultRealm)] = true
	}
	return r, nil
}

// blind reports a configuration in which no realm can be bound but the
// listed ones: logins with another realm are all refused. The daemon warns
// about it once at startup.
func (r realmRule) blind() bool {
	return !r.bindsRealm && !r.bindsDomain && r.attr == ""
}

// BindsRealms reports whether cfg and access can bind a login's realm to
// the entry found (the search uses the realm or the login's domain, or
// access.realm_attribute is set). When false, only the domains listed in
// access.realms and ldap.default_realm are served, and every one of them
// reaches the same entries: "mailauthd doctor" flags that on a host whose
// mail server serves several domains.
func BindsRealms(cfg Config, access AccessConfig) bool {
	r, err := newRealmRule(cfg, access)
	return err == nil && !r.blind()
}

// check decides whether realm (as the request carries it, "" for none) is
// bound to entry; why explains it for --explain and the log.
func (r realmRule) check(realm string, tv *tokenValues, entry *ldap.Entry) (ok bool, why string) {
	if realm == "" {
		return true, "none given"
	}
	switch {
	case r.served[strings.ToLower(realm)]:
		return true, realm + " is served (access.realms or ldap.default_realm)"
	case r.bindsRealm:
		return true, realm + " was part of the search"
	case r.bindsDomain && strings.EqualFold(tv.domain(), realm):
		return true, realm + " was part of the search"
	}
	if r.attr != "" {
		for _, v := range entry.GetEqualFoldAttributeValues(r.attr) {
			d := v
			if i := strings.LastIndexByte(v, '@'); i >= 0 {
				d = v[i+1:]
			}
			if strings.EqualFold(d, realm) {
				return true, fmt.Sprintf("%s is the entry's (%s: %s)", realm, r.attr, v)
			}
		}
		return false, fmt.Sprintf("%s is not served: not in access.realms, and the entry's %s does not name it", realm, r.attr)
	}
	return false, realm + " is not served: not in access.realms, not part of the search, and access.realm_attribute is not set"
}

// canonical builds the name the entry is known by (ldap.canonical_user),
// so that a front door handing a name to the mail store (Dovecot's user=,
// nginx's Auth-User) names the entry, not whatever case, spacing or realm
// the client typed. Tokens: %{ATTR} the entry's first value of ATTR, %u %U
// the login, %d and %r its domain and realm (lower-cased), %% a percent.
type canonical struct {
	tmpl  string
	attrs []string // the %{ATTR} names, fetched with the user
}

// defaultCanonical derives the template from the filter: the attribute the
// login is matched against, as the entry spells it, and "@realm" when the
// login had a realm and that attribute does not hold the domain itself.
// ok is false when the filter has no single such attribute; the login as
// sent is then used.
func defaultCanonical(filter string) (tmpl string, ok bool) {
	attr, valueHasDomain, ok := loginAttribute(filter)
	if !ok {
		return "", false
	}
	if valueHasDomain {
		return "%{" + attr + "}", true
	}
	return "%{" + attr + "}%R", true
}

// loginAttribute finds the one equality assertion whose value holds %u or
// %U, e.g. uid in (uid=%u) or mail in (mail=%U@%d).
func loginAttribute(filter string) (attr string, valueHasDomain bool, ok bool) {
	n := 0
	for i := 0; i < len(filter); i++ {
		if filter[i] != '(' {
			continue
		}
		j := strings.IndexAny(filter[i+1:], "=()")
		if j < 0 || filter[i+1+j] != '=' {
			continue
		}
		name := filter[i+1 : i+1+j]
		end := strings.IndexByte(filter[i+1+j:], ')')
		if end < 0 || !validAttrName(name) {
			continue
		}
		value := filter[i+2+j : i+1+j+end]
		toks := templateTokens(value)
		if !toks['u'] && !toks['U'] {
			continue
		}
		n++
		attr = name
		valueHasDomain = toks['d'] || toks['r'] || toks['R'] || (toks['u'] && strings.Contains(value, "@"))
	}
	return attr, valueHasDomain, n == 1
}

var errCanonical = errors.New("unknown token")

func newCanonical(tmpl string) (canonical, error) {
	c := canonical{tmpl: tmpl}
	for i := 0; i < len(tmpl); i++ {
		if tmpl[i] != '%' {
			continue
		}
		if i+1 >= len(tmpl) {
			return c, fmt.Errorf("ldap.canonical_user %q: lone %% at the end", tmpl)
		}
		switch tmpl[i+1] {
		case 'u', 'U', 'd', 'r', 'R', '%':
			i++
		case '{':
			end := strings.IndexByte(tmpl[i:], '}')
			if end < 0 {
				return c, fmt.Errorf("ldap.canonical_user %q: %%{ without }", tmpl)
			}
			name := tmpl[i+2 : i+end]
			if !validAttrName(name) || strings.EqualFold(name, "userPassword") {
				return c, fmt.Errorf("ldap.canonical_user %q: %q is not an attribute name", tmpl, name)
			}
			c.attrs = append(c.attrs, name)
			i += end
		default:
			return c, fmt.Errorf("ldap.canonical_user %q: %w %%%c (known: %%{ATTR} %%u %%U %%d %%r %%R %%%%)", tmpl, errCanonical, tmpl[i+1])
		}
	}
	return c, nil
}

// build returns the canonical name for the entry and login, or an error
// naming the attribute the entry lacks.
func (c canonical) build(tv *tokenValues, entry *ldap.Entry) (string, error) {
	var b strings.Builder
	t := c.tmpl
	for i := 0; i < len(t); i++ {
		if t[i] != '%' || i+1 >= len(t) {
			b.WriteByte(t[i])
			continue
		}
		i++
		switch t[i] {
		case '%':
			b.WriteByte('%')
		case 'u':
			b.WriteString(tv.user)
		case 'U':
			u := tv.user
			if j := strings.IndexByte(u, '@'); j >= 0 {
				u = u[:j]
			}
			b.WriteString(u)
		case 'd':
			b.WriteString(strings.ToLower(tv.domain()))
		case 'r':
			b.WriteString(strings.ToLower(tv.realm))
		case 'R':
			if tv.realm != "" {
				b.WriteString("@" + strings.ToLower(tv.realm))
			}
		case '{':
			end := strings.IndexByte(t[i:], '}')
			name := t[i+1 : i+end]
			vals := entry.GetEqualFoldAttributeValues(name)
			if len(vals) == 0 || vals[0] == "" {
				return "", fmt.Errorf("the entry has no %s for ldap.canonical_user", name)
			}
			b.WriteString(vals[0])
			i += end
		}
	}
	return b.String(), nil
}

// templateTokens lists the tokens a template uses (the byte after each
// '%', "%%" excluded).
func templateTokens(tmpl string) map[byte]bool {
	toks := map[byte]bool{}
	for i := 0; i+1 < len(tmpl); i++ {
		if tmpl[i] == '%' {
			if tmpl[i+1] != '%' {
				toks[tmpl[i+1]] = true
			}
			i++
		}
	}
	return toks
}
