package control

import (
	"context"
	"errors"
	"sync"

	"github.com/mailauthd/mailauthd/auth"
)

// Decider is the decision a helper needs: an Accept carries the Dovecot
// fields.
type Decider interface {
	auth.Authenticator
	auth.Looker
}

// Fallback is how a helper program (checkpassword, pam) decides: it asks
// the running daemon, and decides on its own only when no daemon is there
// (ErrNotRunning: no socket, or a stale one). A daemon that is there but
// fails (timeout, busy, permission denied, broken reply) gives a temporary
// failure: deciding alone could answer differently from the daemon (its
// cache, its throttling, its view of a failed-over LDAP server) and would
// double the LDAP load at exactly the moment something is wrong.
type Fallback struct {
	// Client reaches the daemon; nil decides standalone always.
	Client *Client
	// Standalone builds the daemon's decision in this process (package
	// daemon, one-shot). Called at most once, and only when needed.
	Standalone func() (d Decider, close func(), err error)

	once       sync.Once
	standalone Decider
	closeFn    func()
	err        error

	mu sync.Mutex
	// via says who decided the last request: "daemon" or "standalone".
	via string
	// notRunning is why the daemon was not asked, when it was not.
	notRunning string
}

// Authenticate asks for a password check.
func (f *Fallback) Authenticate(ctx context.Context, req auth.Request) auth.Verdict {
	return f.decide(ctx, req, false)
}

// Lookup asks for the user without a password.
func (f *Fallback) Lookup(ctx context.Context, req auth.Request) auth.Verdict {
	return f.decide(ctx, req, true)
}

func (f *Fallback) decide(ctx context.Context, req auth.Request, lookup bool) auth.Verdict {
	if f.Client != nil {
		var v auth.Verdict
		var err error
		if lookup {
			v, err = f.Client.Lookup(ctx, req)
		} else {
			v, err = f.Client.Authenticate(ctx, req)
		}
		if err == nil || !errors.Is(err, ErrNotRunning) {
			f.record("daemon", "")
			return v // on error a TempFail carrying the reason
		}
		f.record("standalone", "not running")
	} else {
		f.record("standalone", "")
	}
	f.once.Do(func() {
		if f.Standalone == nil {
			f.err = errors.New("no standalone decision configured")
			return
		}
		f.standalone, f.closeFn, f.err = f.Standalone()
	})
	if f.err != nil {
		return auth.TempFailed(auth.CauseUnavailable, "standalone: "+f.err.Error())
	}
	if lookup {
		return f.standalone.Lookup(ctx, req)
	}
	return f.standalone.Authenticate(ctx, req)
}

func (f *Fallback) record(via, notRunning string) {
	f.mu.Lock()
	f.via, f.notRunning = via, notRunning
	f.mu.Unlock()
}

// Via says who decided the last request ("daemon" or "standalone") and,
// when the daemon was not asked because none runs, says so.
func (f *Fallback) Via() (via, notRunning string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.via, f.notRunning
}

// Close releases the standalone decision, if one was built.
func (f *Fallback) Close() {
	if f.closeFn != nil {
		f.closeFn()
	}
}
