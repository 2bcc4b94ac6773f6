package sambatest

import (
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

// netns is a private network namespace with only a loopback interface,
// held by one locked OS thread of this process: functions run through do
// execute on that thread, so sockets they create and processes they start
// belong to the namespace. The namespace lives as long as the thread and
// whatever runs in it; nothing is named in /run/netns, so a crashed test
// leaves nothing behind.
type netns struct {
	reqs chan func()
	once sync.Once
}

func newNetns() (*netns, error) {
	n := &netns{reqs: make(chan func())}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: when this goroutine returns, the runtime ends
		// the thread instead of reusing it in the wrong namespace.
		runtime.LockOSThread()
		if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		if err := loopbackUp(); err != nil {
			errc <- err
			return
		}
		errc <- nil
		for f := range n.reqs {
			f()
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return n, nil
}

// loopbackUp sets IFF_UP on lo, which gives it 127.0.0.1 and ::1.
func loopbackUp() error {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	var ifr [40]byte // struct ifreq: name[16], then a union starting with short flags
	copy(ifr[:], "lo")
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCGIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return e
	}
	flags := *(*uint16)(unsafe.Pointer(&ifr[16]))
	*(*uint16)(unsafe.Pointer(&ifr[16])) = flags | syscall.IFF_UP | syscall.IFF_RUNNING
	if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, uintptr(fd), syscall.SIOCSIFFLAGS, uintptr(unsafe.Pointer(&ifr[0]))); e != 0 {
		return e
	}
	return nil
}

var errNetnsClosed = errors.New("sambatest: network namespace closed")

// do runs f on the namespace's thread and waits for it.
func (n *netns) do(f func()) (err error) {
	done := make(chan struct{})
	defer func() {
		if recover() != nil { // send on closed channel
			err = errNetnsClosed
		}
	}()
	n.reqs <- func() { f(); close(done) }
	<-done
	return nil
}

// dial connects to addr inside the namespace.
func (n *netns) dial(addr string) (net.Conn, error) {
	var c net.Conn
	var err error
	if e := n.do(func() { c, err = net.DialTimeout("tcp", addr, 2*time.Second) }); e != nil {
		return nil, e
	}
	return c, err
}

// close ends the thread; the namespace goes when its last process does.
func (n *netns) close() { n.once.Do(func() { close(n.reqs) }) }

// proxy forwards one loopback port of this host to a port inside the
// namespace, byte for byte (TLS passes through end to end). It mirrors how
// each side ends: a FIN becomes a FIN (CloseWrite), a reset becomes a
// reset (SO_LINGER 0), so a client sees what the server did.
type proxy struct {
	ns     *netns
	target string // address inside the namespace
	addr   string // 127.0.0.1:PORT on the host

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// listen (re)opens the host port; addr "" picks a free one.
func (p *proxy) listen() error {
	addr := p.addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ { // after a stop the port may linger briefly
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	if p.conns == nil {
		p.conns = map[net.Conn]struct{}{}
	}
	p.mu.Unlock()
	p.wg.Add(1)
	go p.serve(ln)
	return nil
}

func (p *proxy) serve(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go p.forward(c.(*net.TCPConn))
	}
}

func (p *proxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *proxy) forward(client *net.TCPConn) {
	defer p.wg.Done()
	sc, err := p.ns.dial(p.target)
	if err != nil {
		// Nothing listens inside: refuse the way a closed port would.
		client.SetLinger(0)
		client.Close()
		return
	}
	server := sc.(*net.TCPConn)
	p.track(client, true)
	p.track(server, true)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); pipe(server, client) }()
	go func() { defer wg.Done(); pipe(client, server) }()
	wg.Wait()
	client.Close()
	server.Close()
	p.track(client, false)
	p.track(server, false)
}

// pipe copies src to dst until src ends, then ends dst the same way.
func pipe(dst, src *net.TCPConn) {
	_, err := io.Copy(dst, src)
	if err == nil { // src sent FIN
		dst.CloseWrite()
		return
	}
	// src was reset (or closed under us): reset dst too.
	dst.SetLinger(0)
	dst.Close()
	src.Close()
}

// closeListener stops accepting: new connections are refused, as by a
// server that is down. Forwarded connections end as their server side does.
func (p *proxy) closeListener() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
}

// shut closes the listener and cuts every forwarded connection with a reset.
func (p *proxy) shut() {
	p.closeListener()
	p.mu.Lock()
	for c := range p.conns {
		if t, ok := c.(*net.TCPConn); ok {
			t.SetLinger(0)
		}
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
