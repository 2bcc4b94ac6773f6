package directory

import (
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair is a loopback TCP connection: the client end (as the pool dials
// it) and the server end.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

// TestPollReader: the response reader of a plain TCP connection returns
// what the server sends whether it is there at once, arrives within the
// kernel wait or after it (through the poller), reports the server's close
// as EOF, and keeps the connection's deadline and its cancellation (a
// deadline set in the past, as Directory.run does), so a login still never
// waits longer than it may.
func TestPollReader(t *testing.T) {
	c, s := tcpPair(t)
	r := responseReader(c)
	if _, ok := r.(*pollReader); !ok {
		t.Fatalf("plain TCP reads through %T, want *pollReader", r)
	}
	buf := make([]byte, 16)
	read := func() (string, error) {
		n, err := r.Read(buf)
		return string(buf[:n]), err
	}
	for _, delay := range []time.Duration{0, kernelWait / 4, 3 * kernelWait} {
		go func() {
			time.Sleep(delay)
			s.Write([]byte("answer"))
		}()
		if delay == 0 {
			time.Sleep(10 * time.Millisecond) // already there when read
		}
		if got, err := read(); got != "answer" || err != nil {
			t.Fatalf("after %v: %q %v", delay, got, err)
		}
	}

	// The deadline holds while nothing comes.
	c.SetDeadline(time.Now().Add(50 * time.Millisecond))
	start := time.Now()
	if _, err := read(); !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("deadline: %v after %v", err, time.Since(start))
	}
	// A cancellation moves the deadline into the past during the wait.
	c.SetDeadline(time.Time{})
	go func() {
		time.Sleep(3 * kernelWait)
		c.SetDeadline(time.Unix(1, 0))
	}()
	start = time.Now()
	if _, err := read(); !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 2*time.Second {
		t.Fatalf("cancel: %v after %v", err, time.Since(start))
	}
	c.SetDeadline(time.Time{})

	// The server's close is an end of file, not an empty read.
	s.Close()
	if got, err := read(); got != "" || err != io.EOF {
		t.Fatalf("after close: %q %v", got, err)
	}
	// So is our own close, as an error.
	c.Close()
	if _, err := read(); err == nil {
		t.Fatal("read on a closed connection succeeded")
	}
	if n, err := r.Read(nil); n != 0 || err != nil {
		t.Fatalf("empty read: %d %v", n, err)
	}
}

// TestPollReaderConcurrent: readers beyond maxKernelWaiters wait through
// the poller; every one gets its own answer.
func TestPollReaderConcurrent(t *testing.T) {
	const n = 8
	done := make(chan error, n)
	for i := range n {
		c, s := tcpPair(t)
		r := responseReader(c)
		go func() {
			buf := make([]byte, 4)
			_, err := io.ReadFull(r, buf)
			if err == nil && string(buf) != string(rune('a'+i))+"bcd" {
				err = errors.New("wrong answer " + string(buf))
			}
			done <- err
		}()
		go func() {
			time.Sleep(time.Duration(i) * time.Millisecond)
			s.Write([]byte(string(rune('a'+i)) + "bcd"))
		}()
	}
	for range n {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if w := kernelWaiters.Load(); w != 0 {
		t.Fatalf("%d kernel waiters left", w)
	}
}

func TestResponseReaderOthers(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if r := responseReader(a); r != io.Reader(a) {
		t.Fatalf("a pipe reads through %T", r)
	}
}
