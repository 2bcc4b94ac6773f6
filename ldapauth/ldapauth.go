// Package ldapauth is the decision: search the user (through package
// directory's transport, as the service account or anonymously), bind as
// the entry found, then apply host, service and extra-filter access rules.
// Every doubt fails closed: LDAP errors and timeouts are TempFail, never
// Accept; only "invalid credentials" from the server is a wrong password.
package ldapauth

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/directory"
)

// Input limits: far above real logins, low enough to bound the work.
const (
	maxUserLen     = 1024
	maxPasswordLen = 4096
)

// Directory is the transport the decision runs on (*directory.Directory).
type Directory interface {
	Search(ctx context.Context, r *directory.SearchRequest) (*ldap.SearchResult, string, error)
	Bind(ctx context.Context, dn, password string) (directory.BindResult, error)
	// Identity says how searches are made ("as cn=...", "anonymously").
	Identity() string
}

// Mirror is the optional local copy of user entries (*mirror.Mirror).
type Mirror interface {
	// Lookup returns the entry the search for login would find, or false
	// when the copy is not sure.
	Lookup(login string) (*ldap.Entry, bool)
}

// Throttle limits password guessing (*throttle.Throttle). The decision
// asks it before any directory traffic, once the entry is known and before
// its password is tried (a refusal there never reaches the directory's own
// lockout counter), and tells it every outcome.
type Throttle interface {
	Before(ctx context.Context, req auth.Request) *auth.Verdict
	BeforeBind(ctx context.Context, req auth.Request, dn string) *auth.Verdict
	After(ctx context.Context, req auth.Request, v auth.Verdict) time.Duration
}

// Options are the decision's optional parts.
type Options struct {
	Logger   *slog.Logger // nil: discard
	Mirror   Mirror       // nil: every login searches
	Throttle Throttle     // nil: no throttling
}

// Authenticator is safe for concurrent use.
type Authenticator struct {
	cfg      Config
	access   AccessConfig
	log      *slog.Logger
	dir      Directory
	mirror   Mirror   // nil unless ldap.mirror_refresh > 0
	throttle Throttle // nil: off

	hostnames     []string
	scope         int
	attrs         []string        // fetched with the user: host, service, realm, canonical, cfg.Attributes
	fetched       map[string]bool // attrs, lower-cased
	baseHasTokens bool
	realm         realmRule
	canonical     *canonical // nil: the login as sent is the canonical name
}

var _ auth.Authenticator = (*Authenticator)(nil)
var _ auth.Looker = (*Authenticator)(nil)

type mode int

const (
	modeAuth mode = iota
	modeLookup
)

// Authenticate verifies req.Password for req.User and applies the access rules.
func (a *Authenticator) Authenticate(ctx context.Context, req auth.Request) auth.Verdict {
	return a.decide(ctx, req, modeAuth, nil)
}

// Lookup finds the user and applies the access rules without a password:
// Accept with DN and Attributes, Reject with UserUnknown when there is no
// entry, Reject on policy, TempFail on errors.
func (a *Authenticator) Lookup(ctx context.Context, req auth.Request) auth.Verdict {
	return a.decide(ctx, req, modeLookup, nil)
}

// Explain makes the same decision as Authenticate (or Lookup when
// req.Password is empty), writing each step to w for an administrator.
func (a *Authenticator) Explain(ctx context.Context, req auth.Request, w io.Writer) auth.Verdict {
	m := modeAuth
	if req.Password == "" {
		m = modeLookup
		fmt.Fprintln(w, "no password given: lookup only (no bind as the user)")
	}
	v := a.decide(ctx, req, m, &explainer{w: w})
	fmt.Fprintf(w, "verdict: %s (%s)\n", v.Outcome, v.Reason)
	return v
}

// explainer writes --explain's steps; nil when nobody asked. Callers on
// the login path test for nil before calling step: its arguments would
// otherwise be boxed (allocated) on every login for nothing.
type explainer struct{ w io.Writer }

func (e *explainer) step(format string, args ...any) {
	if e != nil {
		fmt.Fprintf(e.w, format+"\n", args...)
	}
}

// decision carries the details of one request for the debug log line.
type decision struct {
	user, service, dn, detail string
}

func (a *Authenticator) decide(ctx context.Context, req auth.Request, m mode, ex *explainer) auth.Verdict {
	d := decision{user: req.User, service: req.Service}
	v := a.decideInner(ctx, req, m, ex, &d)
	if v.DN == "" && v.Outcome == auth.Reject {
		v.DN = d.dn // the entry a refusal concerns, for the throttle and the control socket's log
	}
	if m == modeAuth && a.throttle != nil && v.Cause != auth.CauseInvalid {
		v.Delay = a.throttle.After(ctx, req, v)
	}
	if v.Cause == auth.CauseAmbiguous {
		a.log.Warn("ldap: login matches several entries", "user", d.user, "detail", d.detail)
	}
	if a.log.Enabled(ctx, slog.LevelDebug) {
		op := "authenticate"
		if m == modeLookup {
			op = "lookup"
		}
		a.log.LogAttrs(ctx, slog.LevelDebug, "ldap decision",
			slog.String("op", op), slog.String("user", d.user), slog.String("service", d.service),
			slog.String("outcome", v.Outcome.String()), slog.String("reason", v.Reason),
			slog.String("dn", d.dn), slog.String("detail", d.detail))
	}
	return v
}

func unknownUser() auth.Verdict { return auth.Rejected(auth.CauseUnknownUser, "unknown user") }

// unavailable turns a transport error into a TempFail whose reason names
// the kind of failure (directory.Reason).
func unavailable(err error) auth.Verdict {
	return auth.TempFailed(auth.CauseUnavailable, "ldap unavailable: "+directory.Reason(err))
}

func (a *Authenticator) decideInner(ctx context.Context, req auth.Request, m mode, ex *explainer, d *decision) auth.Verdict {
	// Input checks come before any LDAP traffic. An empty password must
	// never reach a bind: RFC 4513 makes it an unauthenticated bind, which
	// servers may answer with success.
	if req.User == "" {
		return auth.Rejected(auth.CauseInvalid, "empty user")
	}
	if len(req.User) > maxUserLen || len(req.Realm) > maxUserLen || len(req.Service) > maxUserLen {
		return auth.Rejected(auth.CauseInvalid, "user too long")
	}
	if strings.IndexByte(req.User, 0) >= 0 || strings.IndexByte(req.Realm, 0) >= 0 || strings.IndexByte(req.Service, 0) >= 0 {
		return auth.Rejected(auth.CauseInvalid, "invalid user")
	}
	if m == modeAuth {
		if req.Password == "" {
			return auth.Rejected(auth.CauseInvalid, "empty password")
		}
		if len(req.Password) > maxPasswordLen {
			return auth.Rejected(auth.CauseInvalid, "password too long")
		}
		if strings.IndexByte(req.Password, 0) >= 0 {
			return auth.Rejected(auth.CauseInvalid, "invalid password")
		}
	}

	if m == modeAuth && a.throttle != nil {
		if v := a.throttle.Before(ctx, req); v != nil {
			if ex != nil {
				ex.step("throttle: %s: refused without asking the directory", v.Reason)
			}
			return *v
		}
	}
	tv := requestValues(req, a.cfg.DefaultRealm)
	var buf [256]byte
	fb, err := expand(buf[:0], a.cfg.Filter, &tv, ldap.EscapeFilter)
	if err != nil {
		d.detail = "filter: " + err.Error()
		if ex != nil {
			ex.step("filter %s: %v: no entry can match", a.cfg.Filter, err)
		}
		return unknownUser()
	}
	filter := string(fb)
	base := a.cfg.Base
	if a.baseHasTokens {
		bb, err := expand(nil, base, &tv, ldap.EscapeDN)
		if err != nil {
			d.detail = "base: " + err.Error()
			if ex != nil {
				ex.step("base %s: %v: no entry can match", a.cfg.Base, err)
			}
			return unknownUser()
		}
		base = string(bb)
	}

	// 1. Find the user (and the access attributes in the same search), or
	// take the entry from the mirror and go straight to the bind.
	var entry *ldap.Entry
	if m == modeAuth && !a.baseHasTokens {
		if me := a.mirrored(&tv); me != nil {
			if ex != nil {
				ex.step("user found in the local mirror: %s", me.DN)
			}
			if v := a.guard(ctx, req, me.DN, ex, d); v != nil {
				return *v
			}
			br, err := a.dir.Bind(ctx, me.DN, req.Password)
			if ans := classifyBind(err, br.Policy); ans.kind == bindWrongPassword {
				// A wrong password, or the entry moved or went away since
				// the last refresh: the search below tells which.
				if ex != nil {
					ex.step("bind as mirrored %s refused: checking with a search", me.DN)
				}
			} else if v, ok := a.checkBind(br, err, me.DN, ex, d); !ok {
				d.dn = me.DN
				return v
			} else {
				entry = me
				d.dn = me.DN
			}
			if entry == nil {
				v, searched := a.searchAndBind(ctx, req, m, ex, d, base, filter, me.DN)
				if searched == nil {
					return v
				}
				entry = searched
			}
		}
	}
	if entry == nil {
		v, found := a.searchAndBind(ctx, req, m, ex, d, base, filter, "")
		if found == nil {
			return v
		}
		entry = found
	}
	return a.applyAccess(ctx, req.SplitRealm(), ex, d, &tv, entry)
}

// searchAndBind finds the user's entry and, for an authentication, checks
// the password with a bind as that entry. refusedDN is a DN a bind with this
// password already refused: if the search finds the same entry, the
// password is wrong without a second bind. It returns the entry, or nil and
// the verdict to give.
func (a *Authenticator) searchAndBind(ctx context.Context, req auth.Request, m mode, ex *explainer, d *decision, base, filter, refusedDN string) (auth.Verdict, *ldap.Entry) {
	res, srv, err := a.dir.Search(ctx, &directory.SearchRequest{Base: base, Scope: a.scope, SizeLimit: 2, Filter: filter, Attributes: a.attrs})
	n := 0
	if res != nil {
		n = len(res.Entries)
	}
	switch {
	case err == nil:
	case ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded):
		if n < 2 {
			n = 2
		}
	case ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject):
		return a.missingBase(ctx, err, base, ex, d), nil
	default:
		d.detail = "search: " + err.Error()
		if ex != nil {
			ex.step("LDAP search failed: %v", err)
		}
		return unavailable(err), nil
	}
	if ex != nil {
		ex.step("LDAP reachable: %s (search %s)", srv, a.dir.Identity())
	}
	if n == 0 {
		d.detail = "no entry for " + filter
		if ex != nil {
			ex.step("user not found: filter %s under %s", filter, base)
		}
		return unknownUser(), nil
	}
	if n > 1 {
		d.detail = strconv.Itoa(n) + "+ entries for " + filter
		if ex != nil {
			ex.step("ambiguous: %d or more entries match %s under %s: refused", n, filter, base)
		}
		return auth.Rejected(auth.CauseAmbiguous, "ambiguous: several entries"), nil
	}
	entry := res.Entries[0]
	d.dn = entry.DN
	if ex != nil {
		ex.step("user found: %s", entry.DN)
	}

	// 2. The password, as the user, on a bind connection.
	if m == modeAuth && refusedDN != "" && entry.DN == refusedDN {
		d.detail = "invalid credentials"
		if ex != nil {
			ex.step("password: wrong (bind as %s: invalid credentials)", entry.DN)
		}
		return auth.Rejected(auth.CauseWrongPassword, "wrong password"), nil
	}
	if m == modeAuth {
		if v := a.guard(ctx, req, entry.DN, ex, d); v != nil {
			return *v, nil
		}
		br, err := a.dir.Bind(ctx, entry.DN, req.Password)
		if v, ok := a.checkBind(br, err, entry.DN, ex, d); !ok {
			return v, nil
		}
	}
	return auth.Verdict{}, entry
}

// guard asks the throttle, once the entry is known, whether its password
// may be tried.
func (a *Authenticator) guard(ctx context.Context, req auth.Request, dn string, ex *explainer, d *decision) *auth.Verdict {
	if a.throttle == nil {
		return nil
	}
	v := a.throttle.BeforeBind(ctx, req, dn)
	if v != nil {
		d.dn, d.detail = dn, v.Reason
		if ex != nil {
			ex.step("throttle: %s: refused without asking the directory", v.Reason)
		}
	}
	return v
}

// applyAccess applies the host, service and filter rules to the user's
// entry, after the password was checked (or for a lookup).
func (a *Authenticator) applyAccess(ctx context.Context, req auth.Request, ex *explainer, d *decision, tv *tokenValues, entry *ldap.Entry) auth.Verdict {
	// 3. The realm is part of the identity, then the access rules.
	ok, why := a.realm.check(req.Realm, tv, entry)
	if ex != nil {
		ex.step("realm: %s", why)
	}
	if !ok {
		d.detail = "realm: " + why
		return auth.Rejected(auth.CausePolicy, "realm not served: "+req.Realm)
	}
	if a.access.HostAttribute != "" {
		vals := entry.GetEqualFoldAttributeValues(a.access.HostAttribute)
		if len(vals) == 0 && a.access.AllowMissingHost {
			if ex != nil {
				ex.step("host rule: no %s value, allowed (allow_missing_host)", a.access.HostAttribute)
			}
		} else {
			ok, why := matchRule(vals, a.hostnames)
			if ex != nil {
				ex.step("host rule: %s %v against this host %v: %s", a.access.HostAttribute, vals, a.hostnames, why)
			}
			if !ok {
				d.detail = "host: " + why
				return auth.Rejected(auth.CausePolicy, "host not allowed: "+why)
			}
		}
	} else {
		if ex != nil {
			ex.step("host rule: off")
		}
	}
	if a.access.ServiceAttribute != "" {
		vals := entry.GetEqualFoldAttributeValues(a.access.ServiceAttribute)
		ok, why := matchRule(vals, []string{req.Service})
		if ex != nil {
			ex.step("service rule: %s %v against service %q: %s", a.access.ServiceAttribute, vals, req.Service, why)
		}
		if !ok {
			d.detail = "service: " + why
			return auth.Rejected(auth.CausePolicy, "service not allowed: "+why)
		}
	} else {
		if ex != nil {
			ex.step("service rule: off")
		}
	}
	if len(a.access.Filters) > 0 {
		tv.access, tv.dn = true, entry.DN
		if len(a.hostnames) > 0 {
			tv.host = a.hostnames[0]
		}
		for i, tmpl := range a.access.Filters {
			v, ok := a.checkFilter(ctx, i, tmpl, tv, ex, d)
			if !ok {
				return v
			}
		}
	}

	// Only the attributes the search asks for, so a verdict is the same
	// whether the entry came from a search or from the mirror (which also
	// keeps the login attribute).
	attrs := make(map[string][]string, len(a.attrs))
	for _, at := range entry.Attributes {
		name := strings.ToLower(at.Name)
		base, _, _ := strings.Cut(name, ";")
		if a.fetched[base] {
			attrs[name] = at.Values
		}
	}
	v := auth.Accepted(entry.DN, attrs)
	v.User = tv.user
	if tv.realm != "" && req.Realm != "" {
		v.User += "@" + req.Realm
	}
	if a.canonical != nil {
		name, err := a.canonical.build(tv, entry)
		if err != nil {
			d.detail = err.Error()
			if ex != nil {
				ex.step("canonical user: %v: refused", err)
			}
			return auth.Rejected(auth.CausePolicy, err.Error())
		}
		v.User = name
	}
	if ex != nil {
		ex.step("canonical user: %s", v.User)
	}
	d.detail = "ok"
	return v
}

// checkFilter runs access filter i with the user's DN as base, scope base:
// the entry must come back.
func (a *Authenticator) checkFilter(ctx context.Context, i int, tmpl string, tv *tokenValues, ex *explainer, d *decision) (auth.Verdict, bool) {
	fb, err := expand(nil, tmpl, tv, ldap.EscapeFilter)
	if err != nil {
		d.detail = "access filter " + tmpl + ": " + err.Error()
		if ex != nil {
			ex.step("filter %d %s: %v: refused", i+1, tmpl, err)
		}
		return auth.Rejected(auth.CausePolicy, "access filter not matched: "+tmpl), false
	}
	f := string(fb)
	res, _, err := a.dir.Search(ctx, &directory.SearchRequest{Base: tv.dn, Scope: ldap.ScopeBaseObject, SizeLimit: 1, Filter: f, Attributes: noAttributes})
	if err != nil && !ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
		d.detail = "access filter search: " + err.Error()
		if ex != nil {
			ex.step("filter %d %s: search failed: %v", i+1, f, err)
		}
		return unavailable(err), false
	}
	if err != nil || res == nil || len(res.Entries) != 1 {
		d.detail = "access filter not matched: " + f
		if ex != nil {
			ex.step("filter %d %s: no match: refused", i+1, f)
		}
		return auth.Rejected(auth.CausePolicy, "access filter not matched: "+tmpl), false
	}
	if ex != nil {
		ex.step("filter %d %s: ok", i+1, f)
	}
	return auth.Verdict{}, true
}

// noAttributes asks for the DN only (RFC 4511 4.5.1.8).
var noAttributes = []string{"1.1"}
