package directory

import (
	"errors"
	"net"
	"syscall"
)

// idleOK tells whether an idle connection may be handed out: nothing may
// have arrived while it idled. An end of file (the server closed it, e.g.
// on restart or after its idle timeout), a notice of disconnection, a TLS
// alert or any other byte means it is stale.
func (b *wireConn) idleOK() bool {
	if b.failed {
		return false
	}
	if b.peek == nil {
		b.peek = peeker(b.raw)
	}
	return b.peek()
}

// peeker returns a check that makes one non-blocking peek at raw, the TCP
// socket under any TLS: it reports true while nothing is waiting to be
// read. Made once per connection: it runs before every reuse.
func peeker(raw net.Conn) func() bool {
	sc, ok := raw.(syscall.Conn)
	if !ok {
		return func() bool { return true }
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return func() bool { return false }
	}
	var alive bool
	var p [1]byte
	check := func(fd uintptr) bool {
		_, _, rerr := syscall.Recvfrom(int(fd), p[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		alive = errors.Is(rerr, syscall.EAGAIN)
		return true // never wait
	}
	return func() bool {
		alive = false
		return rc.Read(check) == nil && alive
	}
}
