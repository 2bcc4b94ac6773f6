package ldapauth

// A user search whose base does not exist (noSuchObject). A fixed
// ldap.base that is missing is a configuration error (a typo, a renamed
// tree): answering "unknown user" would refuse every login as if nobody
// existed, and tell the admin nothing. It is a TempFail "base DN not
// found", logged as an error. A base with tokens (ou=%d,...) is different:
// it names a subtree per realm or domain, and a login for a realm that
// has none is an unknown user. There the fixed part of the template (the
// RDNs after the last one with a token) must exist: if it does not, the
// configuration is wrong for every realm, and that is the TempFail again.

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/directory"
)

// ReasonBaseNotFound is the TempFail reason of a missing search base.
const ReasonBaseNotFound = "ldap unavailable: base DN not found"

// baseErrorEvery bounds the error log of a missing base to one line per
// interval (every login would log it).
const baseErrorEvery = 30 * time.Second

var lastBaseError atomic.Int64

// missingBase decides a user search answered noSuchObject (err) for base,
// the expanded ldap.base.
func (a *Authenticator) missingBase(ctx context.Context, err error, base string, ex *explainer, d *decision) auth.Verdict {
	matched := ""
	var le *ldap.Error
	if errors.As(err, &le) {
		matched = le.MatchedDN
	}
	if !a.baseHasTokens {
		return a.baseNotFound(base, matched, ex, d)
	}
	fixed := fixedSuffix(a.cfg.Base)
	exists := fixed == "" || covers(matched, fixed)
	if !exists {
		// The server did not say how much of the base exists (matchedDN
		// is optional): ask for the fixed part itself.
		res, _, serr := a.dir.Search(ctx, &directory.SearchRequest{Base: fixed, Scope: ldap.ScopeBaseObject, SizeLimit: 1,
			Filter: "(objectClass=*)", Attributes: noAttributes})
		switch {
		case serr == nil && res != nil && len(res.Entries) == 1:
			exists = true
		case serr == nil || ldap.IsErrorWithCode(serr, ldap.LDAPResultNoSuchObject):
		default:
			d.detail = "search of the base's fixed part " + fixed + ": " + serr.Error()
			if ex != nil {
				ex.step("LDAP search failed: %v", serr)
			}
			return unavailable(serr)
		}
	}
	if !exists {
		return a.baseNotFound(fixed, matched, ex, d)
	}
	d.detail = "no base " + base + " for this login"
	if ex != nil {
		ex.step("user not found: base %s does not exist (the fixed part %s does)", base, fixed)
	}
	return unknownUser()
}

func (a *Authenticator) baseNotFound(base, matched string, ex *explainer, d *decision) auth.Verdict {
	d.detail = "base DN not found: " + base
	if ex != nil {
		ex.step("LDAP search failed: base %s does not exist (the deepest existing entry: %q): check ldap.base", base, matched)
	}
	now := time.Now().UnixNano()
	if last := lastBaseError.Load(); now-last >= int64(baseErrorEvery) && lastBaseError.CompareAndSwap(last, now) {
		a.log.Error("ldap.base does not exist on the server: every login fails until it is fixed",
			"base", base, "matched", matched)
	}
	return auth.TempFailed(auth.CauseUnavailable, ReasonBaseNotFound)
}

// fixedSuffix is the part of a base template after its last RDN with a
// token ("" when the last RDN has one).
func fixedSuffix(tmpl string) string {
	rdns := splitRDNs(tmpl)
	last := -1
	for i, r := range rdns {
		if hasTokens(r) {
			last = i
		}
	}
	return strings.Join(rdns[last+1:], ",")
}

// splitRDNs splits a DN at its unescaped commas.
func splitRDNs(dn string) []string {
	var out []string
	start := 0
	for i := 0; i < len(dn); i++ {
		switch dn[i] {
		case '\\':
			i++
		case ',':
			out = append(out, dn[start:i])
			start = i + 1
		}
	}
	return append(out, dn[start:])
}

// covers reports that matched (the deepest existing entry a server named)
// is fixed or below it.
func covers(matched, fixed string) bool {
	if matched == "" {
		return false
	}
	m, err1 := ldap.ParseDN(matched)
	f, err2 := ldap.ParseDN(fixed)
	if err1 != nil || err2 != nil {
		return false
	}
	return f.EqualFold(m) || f.AncestorOfFold(m)
}
