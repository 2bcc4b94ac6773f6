package ldapauth

import (
	"errors"
	"syscall"
)

// idleOK tells whether an idle connection may be handed out: nothing may
// have arrived while it idled. An end of file (the server closed it, e.g.
// on restart), a notice of disconnection or any other byte means it is
// stale. One non-blocking peek at the socket; go-ldap's reader goroutine
// noticed the same while the connection idled.
func (b *wireConn) idleOK() bool {
	if b.dead {
		return false
	}
	if b.peek == nil {
		sc, ok := b.raw.(syscall.Conn)
		if !ok {
			return true
		}
		rc, err := sc.SyscallConn()
		if err != nil {
			return false
		}
		// Made once per connection: this runs before every operation.
		var alive bool
		var p [1]byte
		check := func(fd uintptr) bool {
			_, _, rerr := syscall.Recvfrom(int(fd), p[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			alive = errors.Is(rerr, syscall.EAGAIN)
			return true // never wait
		}
		b.peek = func() bool {
			alive = false
			return rc.Read(check) == nil && alive
		}
	}
	return b.peek()
}
