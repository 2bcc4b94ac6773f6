package saslauthd

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// conn is one connection being served. While its request is decided it is
// also the context.Context the Authenticator gets: one allocation and one
// timer instead of the half-dozen allocations, the parent registration and
// the extra watchdog context that context.WithTimeout plus context.AfterFunc
// cost on every request. It ends with DeadlineExceeded at its deadline, with
// Canceled when Shutdown gives up or the request is done, and it implements
// AfterFunc, so contexts derived from it (context.WithTimeout in a backend)
// are cancelled with it without a goroutine each.
type conn struct {
	s            *Server
	c            net.Conn
	addr         string
	start        time.Time
	readDeadline time.Time
	deadline     time.Time // of the request context; set before the Authenticator runs
	timer        *time.Timer

	mu        sync.Mutex
	err       error          // why the context ended; nil while live
	done      chan struct{}  // made by the first Done call
	funcs     map[int]func() // AfterFunc registrations still pending
	nextFunc  int            // key of the next registration
	running   bool           // the Authenticator is running
	answered  bool           // the client's reply is sent or being sent
	watchdogd chan struct{}  // closed when the timeout's reply is written

	d decision // its req (no password) is set before the Authenticator runs, then not changed
}

var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// Deadline implements context.Context.
func (r *conn) Deadline() (time.Time, bool) { return r.deadline, true }

// Done implements context.Context.
func (r *conn) Done() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done == nil {
		if r.err != nil {
			r.done = closedChan
		} else {
			r.done = make(chan struct{})
		}
	}
	return r.done
}

// Err implements context.Context.
func (r *conn) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// Value implements context.Context: a request context carries no values.
func (r *conn) Value(any) any { return nil }

// AfterFunc arranges for f to run in its own goroutine when the context
// ends, like context.AfterFunc; context.WithCancel and friends use it to
// tie derived contexts to this one.
func (r *conn) AfterFunc(f func()) (stop func() bool) {
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	if r.funcs == nil {
		r.funcs = make(map[int]func())
	}
	k := r.nextFunc
	r.nextFunc++
	r.funcs[k] = f
	r.mu.Unlock()
	return func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		_, pending := r.funcs[k]
		delete(r.funcs, k)
		return pending
	}
}

// cancel ends the context with err (first caller wins). If the
// Authenticator is still running and the client has no answer yet, the
// client is answered tempfail here, at once; the caller must be a
// goroutine that may block for the write.
func (r *conn) cancel(err error) {
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		return
	}
	r.err = err
	if r.done != nil && r.done != closedChan {
		close(r.done)
	}
	funcs := r.funcs
	r.funcs = nil
	answer := r.running && !r.answered
	if answer {
		r.answered = true
		r.watchdogd = make(chan struct{})
	}
	r.mu.Unlock()
	for _, f := range funcs {
		go f()
	}
	if answer {
		defer close(r.watchdogd)
		reason := "timeout"
		if err == context.Canceled {
			reason = "server shutting down"
		}
		d := decision{req: r.d.req, outcome: auth.TempFail.String(), reason: reason}
		r.s.reply(r, &d)
		r.c.Close() // as if done; the slot stays taken until the call returns
	}
}

// expire is the request timer's callback (its own goroutine).
func (r *conn) expire() { r.cancel(context.DeadlineExceeded) }
