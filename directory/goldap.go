package directory

import (
	"errors"
	"net"

	"github.com/go-ldap/ldap/v3"
)

// goLDAPConn is the go-ldap client behind the pool's client interface
// (ldap.client: go-ldap). It gets the connection after TLS and StartTLS,
// so both clients share one dial path; deadlines are set on the net.Conn
// as for the wire client (go-ldap's reader fails, and closes the
// connection, when one passes).
type goLDAPConn struct {
	lc *ldap.Conn
	// failed is set when an operation failed at the connection level.
	failed bool
}

func newGoLDAPConn(nc net.Conn, isTLS bool) *goLDAPConn {
	lc := ldap.NewConn(nc, isTLS)
	lc.Start()
	return &goLDAPConn{lc: lc}
}

func (g *goLDAPConn) bind(dn, password string, policy bool) (Policy, error) {
	req := &ldap.SimpleBindRequest{Username: dn, Password: password}
	if policy {
		req.Controls = []ldap.Control{ldap.NewControlBeheraPasswordPolicy()}
	}
	res, err := g.lc.SimpleBind(req)
	var p Policy
	if res != nil {
		p = policyFromGoLDAP(res.Controls)
	}
	var le *ldap.Error
	if err != nil && !errors.As(err, &le) {
		// Not a result: go-ldap could not decode the answer (a control,
		// say). Refused like the wire client refuses a malformed answer.
		g.failed = true
		return Policy{}, ldap.NewError(ldap.ErrorNetwork, err)
	}
	return p, g.check(err)
}

func (g *goLDAPConn) search(r *searchRequest) (*ldap.SearchResult, error) {
	req := ldap.NewSearchRequest(r.base, r.scope, ldap.NeverDerefAliases, int(r.sizeLimit), int(r.timeLimit),
		false, r.filterText, r.attrs, nil)
	res, err := g.lc.Search(req)
	if err != nil && res != nil && len(res.Entries) == 0 {
		res = nil
	}
	if res != nil {
		// Only Values are read; go-ldap keeps every value twice.
		for _, e := range res.Entries {
			for _, a := range e.Attributes {
				a.ByteValues = nil
			}
		}
	}
	return res, g.check(err)
}

// check records a connection-level failure; an LDAP result leaves the
// connection usable.
func (g *goLDAPConn) check(err error) error {
	if err != nil && (IsConnection(err) || g.lc.IsClosing()) {
		g.failed = true
		if !IsConnection(err) {
			err = ldap.NewError(ldap.ErrorNetwork, err)
		}
	}
	return err
}

func (g *goLDAPConn) dead() bool { return g.failed || g.lc.IsClosing() }

// idleOK: go-ldap's reader goroutine, always reading, notices a close
// while the connection idles. (A peek at the socket would wait for the
// reader's hold on it.)
func (g *goLDAPConn) idleOK() bool { return !g.dead() }

func (g *goLDAPConn) close() {
	if !g.dead() {
		g.lc.Unbind() // sends UnbindRequest and closes
	}
	g.failed = true
	g.lc.Close()
}
