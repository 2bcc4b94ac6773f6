package directory

import (
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// A login waits for two LDAP answers that a local server sends within
// tens of microseconds. Through Go's network poller each wait parks the
// goroutine, lets its thread look for other work and sleep, and has the
// poller wake a thread again when the answer is there: at low concurrency
// that hand-off, not the LDAP work, was most of the daemon's CPU per login
// (docs/benchmarks.md, "Low concurrency"). So the response reader of a
// plain TCP connection first waits in the kernel, in the calling thread
// (ppoll(2) on the socket, as libldap does), for up to kernelWait; only
// then, or when another thread is already waiting that way, does it wait
// through the poller, which also enforces the connection's deadline and
// cancellation. At most maxKernelWaiters threads wait in the kernel at
// once, so under concurrency the poller, which scales, does the waiting;
// a kernel wait delays a cancellation by at most kernelWait.
const (
	kernelWait       = 2 * time.Millisecond
	maxKernelWaiters = 1
)

var kernelWaiters atomic.Int32

// pollReader reads a TCP socket as described above.
type pollReader struct {
	rc syscall.RawConn
}

// responseReader returns the reader for nc's responses: a pollReader for a
// plain TCP connection, nc itself otherwise (TLS reads through its own
// record layer).
func responseReader(nc net.Conn) io.Reader {
	tc, ok := nc.(*net.TCPConn)
	if !ok {
		return nc
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nc
	}
	return &pollReader{rc: rc}
}

func (r *pollReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var (
		n      int
		rerr   error
		waited bool
	)
	err := r.rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = syscall.Read(int(fd), p)
			switch {
			case rerr == syscall.EINTR:
				continue
			case rerr != syscall.EAGAIN:
				return true
			case waited:
				return false // the poller waits from here, with the deadline
			}
			waited = true
			if kernelWaiters.Add(1) > maxKernelWaiters {
				kernelWaiters.Add(-1)
				return false
			}
			ready := pollIn(int(fd), kernelWait)
			kernelWaiters.Add(-1)
			if !ready {
				return false
			}
		}
	})
	if n < 0 {
		n = 0
	}
	switch {
	case err != nil: // the deadline, a cancellation or a close, from the poller
		return n, err
	case rerr != nil:
		return n, rerr
	case n == 0:
		return 0, io.EOF
	}
	return n, nil
}

// pollIn waits up to d for fd to be readable (or to have an error or
// hang-up, which the read then reports).
func pollIn(fd int, d time.Duration) bool {
	pfd := struct {
		fd      int32
		events  int16
		revents int16
	}{fd: int32(fd), events: 0x1} // POLLIN
	ts := syscall.NsecToTimespec(d.Nanoseconds())
	n, _, errno := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1,
		uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	return errno == 0 && n > 0
}
