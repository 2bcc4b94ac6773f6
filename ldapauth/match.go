package ldapauth

import "strings"

// matchRule applies the host- and service-attribute rules (SSSD / pam_ldap
// semantics without SSSD's hostname-first quirk) to an entry's values and
// the names they are matched against (this machine's names, or the
// request's service):
//
//   - no values: not allowed (the caller decides about AllowMissingHost);
//   - "!name" equal (case-insensitively) to ANY of names denies, whatever
//     else is there; "!*" denies everywhere;
//   - otherwise a value equal to one of names, or a literal "*", allows;
//   - nothing matching denies. No globs: "*.example.org" matches nothing.
//
// why is a short explanation naming the deciding value.
func matchRule(values []string, names []string) (ok bool, why string) {
	if len(values) == 0 {
		return false, "no value"
	}
	for _, v := range values {
		if len(v) > 1 && v[0] == '!' {
			neg := v[1:]
			if neg == "*" {
				return false, "denied by " + v
			}
			for _, n := range names {
				if strings.EqualFold(neg, n) {
					return false, "denied by " + v
				}
			}
		}
	}
	for _, v := range values {
		if v == "*" {
			return true, "allowed by *"
		}
		if v == "" || v[0] == '!' {
			continue
		}
		for _, n := range names {
			if strings.EqualFold(v, n) {
				return true, "allowed by " + v
			}
		}
	}
	return false, "no value matches"
}
