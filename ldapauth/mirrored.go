package ldapauth

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/mailauthd/mailauthd/mirror"
)

// startMirror sets up the optional local copy of user entries
// (ldap.mirror_refresh > 0), so that an authentication is one bind instead
// of a search and a bind. It does not contact LDAP here: the first load
// runs in the background, and until it succeeds every login searches.
func (a *Authenticator) startMirror() error {
	if a.cfg.MirrorRefresh == 0 {
		return nil
	}
	if a.cfg.MirrorRefresh < 10*time.Second {
		return fmt.Errorf("ldap.mirror_refresh: %v is too short (at least 10s, or 0 for off): each refresh reads the whole directory", a.cfg.MirrorRefresh)
	}
	if len(a.access.Filters) > 0 {
		return fmt.Errorf("ldap.mirror_refresh: cannot be combined with access.filters (they need a search per login)")
	}
	attrs := a.attrs
	m, err := mirror.New(mirror.Config{
		Base: a.cfg.Base, Scope: a.scope, Filter: a.cfg.Filter, Attributes: attrs,
		Refresh: a.cfg.MirrorRefresh,
	}, a.mirrorDial, a.log)
	if err != nil {
		return fmt.Errorf("ldap.mirror_refresh: %w", err)
	}
	a.mirror = m
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), a.cfg.MirrorRefresh/2+a.cfg.Timeout)
		defer cancel()
		if err := m.Start(ctx); err != nil {
			a.log.Warn("ldap mirror: first load failed; logins search until it succeeds", "err", err)
		}
	}()
	return nil
}

// mirrorDial gives the mirror its own service-account connection (not one
// from the pool: a refresh is long and would hold a slot).
func (a *Authenticator) mirrorDial(ctx context.Context) (mirror.Searcher, func(), error) {
	lc, nc, err := a.dialMirror(ctx)
	if err != nil {
		return nil, nil, err
	}
	// A sync session's ctx has no deadline: its connection lives until the
	// mirror cancels ctx (it bounds each phase itself and probes the
	// connection every second). A Refresh's ctx has one: keep to it.
	if _, ok := ctx.Deadline(); ok {
		nc.SetDeadline(opDeadline(ctx, a.cfg.MirrorRefresh))
	}
	// Close (or a reload) cancels ctx: end a refresh in flight at once.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(longAgo) })
	return lc, func() { stop(); lc.Close() }, nil
}

// dialMirror connects a go-ldap client bound as the service account, on the
// first server that answers, in the order dial uses. The mirror's searches
// (paged, or an RFC 4533 session) need go-ldap's asynchronous reader.
func (a *Authenticator) dialMirror(ctx context.Context) (*ldap.Conn, net.Conn, error) {
	var lc *ldap.Conn
	var nc net.Conn
	err := a.eachServer(ctx, "mirror", func(s *server) error {
		var err error
		lc, nc, err = a.dialGoLDAP(ctx, s)
		return err
	})
	return lc, nc, err
}

// dialGoLDAP connects to s like dialServer does for the search role, but
// with a go-ldap client.
func (a *Authenticator) dialGoLDAP(ctx context.Context, s *server) (*ldap.Conn, net.Conn, error) {
	nc, err := a.connect(ctx, s)
	if err != nil {
		return nil, nil, err
	}
	lc := ldap.NewConn(nc, s.ldaps)
	lc.Start()
	if s.tls != nil && !s.ldaps {
		if err := lc.StartTLS(s.tls); err != nil {
			lc.Close()
			return nil, nil, fmt.Errorf("StartTLS: %w", err)
		}
	}
	if a.cfg.BindDN != "" {
		if err := lc.Bind(a.cfg.BindDN, a.cfg.BindPassword); err != nil {
			lc.Close()
			if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
				return nil, nil, fmt.Errorf("%w (%s)", errServiceBind, a.cfg.BindDN)
			}
			return nil, nil, err
		}
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		lc.Close()
		return nil, nil, err
	}
	return lc, nc, nil
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

// Mirror returns the local copy of user entries, nil when it is off; for
// status reports.
func (a *Authenticator) Mirror() *mirror.Mirror { return a.mirror }
