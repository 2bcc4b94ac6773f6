package saslauthd

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// conn is one connection being served.
type conn struct {
	s            *Server
	c            net.Conn
	addr         string
	start        time.Time
	readDeadline time.Time
	pending      bool   // holds a pending place (until its request is read)
	peer         uint32 // the peer's uid, when hasPeer (Unix sockets)
	hasPeer      bool
	hasSlot      bool // holds a decision slot

	mu        sync.Mutex
	cancelReq context.CancelFunc // ends the request's context while the Authenticator runs
	aborted   bool               // Shutdown gave up on this connection
	running   bool               // the Authenticator is running
	answered  bool               // the client's reply is sent or being sent
	watchdogd chan struct{}      // closed when the interrupt's reply is written

	d decision // its req (no password) is set before the Authenticator runs, then not changed
}

// interrupt runs when the request's context ends (its deadline, or
// Shutdown giving up): if the Authenticator is still running and the
// client has no answer yet, the client is answered tempfail here, at once.
func (r *conn) interrupt(err error) {
	r.mu.Lock()
	answer := r.running && !r.answered
	if answer {
		r.answered = true
		r.watchdogd = make(chan struct{})
	}
	r.mu.Unlock()
	if !answer {
		return
	}
	defer close(r.watchdogd)
	d := decision{req: r.d.req, outcome: auth.TempFail.String(), reason: interruptReason(err)}
	r.s.reply(r, &d)
	r.c.Close() // as if done; the slot stays taken until the call returns
}

// interruptReason is the reason of a request its context ended.
func interruptReason(err error) string {
	if err == context.Canceled {
		return "server shutting down"
	}
	return "timeout"
}

// abort is Shutdown giving up: a request not yet decided is answered
// "shutting down"; one being decided has its context cancelled.
func (r *conn) abort() {
	r.mu.Lock()
	r.aborted = true
	cancel := r.cancelReq
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}
