package doctor

import (
	"fmt"
	"regexp"
	"sort"
	"strings"

	"github.com/mailauthd/mailauthd/ldapauth"
)

// A mail server that keeps mailboxes per domain hands mailauthd logins of
// the form name@domain. mailauthd never lets such a login open an entry its
// realm is not bound to, but a realm-blind search (the README's (uid=%u))
// still goes wrong in one of two ways, both of which the admin should hear
// about before a user does:
//
//   - access.realms lists one domain (or none): every other domain's users
//     are refused (realm not served) — a lockout;
//   - access.realms lists several: alice@a.example and alice@b.example reach
//     the same entry, so one password opens both domains' "alice" mailboxes.
//
// The fix is the same: let the search or the entry decide the realm.
const realmFix = "put the domain into the search (ldap.filter: (mail=%u@%d), or (&(uid=%u)(associatedDomain=%d))) " +
	"or name the entry's domain attribute (access.realm_attribute: mail); see docs/ldapauth.md, multi-domain"

// checkRealms flags a realm-blind configuration when why says the peer
// serves several domains.
func (c *checker) checkRealms(area, why, file string, line int) {
	cfg := c.m.Config
	if cfg == nil || ldapauth.BindsRealms(cfg.LDAP.Search, cfg.Access) {
		return
	}
	served := map[string]bool{}
	for _, d := range cfg.Access.Realms {
		served[strings.ToLower(d)] = true
	}
	if d := cfg.LDAP.Search.DefaultRealm; d != "" {
		served[strings.ToLower(d)] = true
	}
	list := make([]string, 0, len(served))
	for d := range served {
		list = append(list, d)
	}
	sort.Strings(list)
	search := fmt.Sprintf("mailauthd's search (ldap.filter %s, ldap.base %s) does not use the realm and access.realm_attribute is not set",
		cfg.LDAP.Search.Filter, cfg.LDAP.Search.Base)
	if len(list) >= 2 {
		c.add(Finding{Severity: Critical, Area: area, Code: "realm-blind-shared", Path: file, Line: line,
			Message: fmt.Sprintf("%s; %s, so logins for %s all reach the same entries: one password opens the mailbox of the same name in every one of those domains",
				why, search, strings.Join(list, ", ")),
			Fix: realmFix})
		return
	}
	only := "no domain is served"
	if len(list) == 1 {
		only = "only " + list[0] + " is served"
	}
	c.add(Finding{Severity: Warning, Area: area, Code: "realm-blind", Path: file, Line: line,
		Message: fmt.Sprintf("%s; %s, so %s and every other domain's logins are refused (realm not served)", why, search, only),
		Fix:     realmFix})
}

// cyrusVirtdomains is imapd.conf's virtdomains: "userid" or "on" make
// Cyrus keep mailboxes per domain and pass logins on as name@domain.
func cyrusVirtdomains(v string) bool {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "userid", "on", "yes", "true", "1":
		return true
	}
	return false
}

// dovecotDomainVar matches the domain in a Dovecot mail path: 2.3's %d,
// %Ld, %{domain}, and 2.4's %{user | domain}, %{user|domain|lower}.
var dovecotDomainVar = regexp.MustCompile(`%[A-Za-z]*d\b|%\{\s*(domain|user\s*\|\s*domain)\b`)

// multiDomain returns the setting that shows Dovecot keeps
// mailboxes per domain, or "" when none does.
func (dc *dovecotConf) multiDomain() (key string, v dcValue) {
	for _, k := range []string{"mail_location", "mail_home", "mail_path", "mail_driver"} {
		if val, ok := dc.Tree.Settings[k]; ok && dovecotDomainVar.MatchString(val.Value) {
			return k, val
		}
	}
	var found string
	var fv dcValue
	dc.Tree.walk(func(n *dcNode) {
		if found != "" || (n.Kind != "userdb" && n.Kind != "namespace") {
			return
		}
		for _, k := range []string{"override_fields", "default_fields", "args", "mail_home", "mail_path", "location"} {
			if val, ok := n.Settings[k]; ok && dovecotDomainVar.MatchString(val.Value) {
				found, fv = k, val
				return
			}
		}
	})
	return found, fv
}
