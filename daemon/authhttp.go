package daemon

import (
	"context"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/authhttp"
)

// AuthHTTP is the daemon as nginx's auth_http door sees it: the policy of
// the configuration in effect, and the decision, whose Accept carries the
// route — Auth-Server, Auth-Port, and Auth-User when configured — as
// Fields. The daemon routes, not the door: the attribute comes with the
// user's search (or the cache, or the mirror), a name is resolved within
// auth_http.resolve_timeout, and a route that cannot be made turns the
// Accept into a TempFail, never an OK with a guessed backend.
type AuthHTTP struct{ d *Daemon }

// AuthHTTP returns the daemon as an authhttp.Backend.
func (d *Daemon) AuthHTTP() AuthHTTP { return AuthHTTP{d} }

var _ authhttp.Backend = AuthHTTP{}

// Policy is the auth_http: section of the configuration in effect.
func (a AuthHTTP) Policy() *authhttp.Policy { return a.d.cur.Load().authHTTP }

// Authenticate decides req and routes an Accept.
func (a AuthHTTP) Authenticate(ctx context.Context, req auth.Request) auth.Verdict {
	return a.d.door("http", ctx, req, func() auth.Verdict { return a.route(ctx, req) })
}

func (a AuthHTTP) route(ctx context.Context, req auth.Request) auth.Verdict {
	g := a.d.cur.Load()
	v := g.front.Authenticate(ctx, req)
	if v.Outcome != auth.Accept {
		return v
	}
	if g.authHTTP == nil {
		return auth.TempFailed(auth.CauseInternal, "auth_http is not configured in this process")
	}
	fields, err := g.authHTTP.Route(ctx, req.Service, v)
	if err != nil {
		out := auth.TempFailed(auth.CauseUnavailable, err.Error())
		out.DN = v.DN
		return out
	}
	v.Fields = fields
	return v
}
