package ldapauth

import (
	"fmt"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/mailauthd/mailauthd/mirror"
)

// MinMirrorRefresh is the shortest ldap.mirror_refresh: each periodic
// refresh reads the whole user subtree.
const MinMirrorRefresh = 10 * time.Second

// MirrorConfig says what the mirror must copy for this search
// (ldap.mirror_refresh > 0): the same base, scope and filter, and the
// attributes the decision reads. It refuses settings the mirror cannot
// answer for: access filters (a search per login anyway) and a refresh
// under MinMirrorRefresh. ok is false when the mirror is off.
func MirrorConfig(cfg Config, access AccessConfig) (mc mirror.Config, ok bool, err error) {
	if cfg.MirrorRefresh == 0 {
		return mc, false, nil
	}
	if cfg.MirrorRefresh < MinMirrorRefresh {
		return mc, false, fmt.Errorf("ldap.mirror_refresh: %v is too short (at least %v, or 0 for off): each refresh reads the whole directory", cfg.MirrorRefresh, MinMirrorRefresh)
	}
	if len(access.Filters) > 0 {
		return mc, false, fmt.Errorf("ldap.mirror_refresh: cannot be combined with access.filters (they need a search per login)")
	}
	scope, err := parseScope(cfg.Scope)
	if err != nil {
		return mc, false, err
	}
	if cfg.Filter == "" {
		cfg.Filter = DefaultFilter
	}
	attrs, err := searchAttributes(cfg, access)
	if err != nil {
		return mc, false, err
	}
	if len(attrs) == 1 && attrs[0] == "1.1" {
		attrs = nil
	}
	return mirror.Config{Base: cfg.Base, Scope: scope, Filter: cfg.Filter, Attributes: attrs, Refresh: cfg.MirrorRefresh}, true, nil
}

// mirrored returns the user's entry from the mirror, or nil when the
// mirror is off or not sure.
func (a *Authenticator) mirrored(tv *tokenValues) *ldap.Entry {
	if a.mirror == nil {
		return nil
	}
	e, ok := a.mirror.Lookup(tv.user)
	if !ok {
		return nil
	}
	return e
}
