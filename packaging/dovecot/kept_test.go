package dovecot

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/control"
)

// session is one lua5.4 process running testdata/session.lua: one Lua
// state, like a Dovecot auth-worker, calling the script's hooks in turn.
type session struct {
	t      *testing.T
	in     io.WriteCloser
	lines  chan string
	stderr *syncBuffer
}

// syncBuffer is lua5.4's stderr, written by os/exec's copier.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// waitFor waits until stderr holds s (it arrives on its own pipe, after
// or before the result on stdout).
func (s *session) waitFor(text string) bool {
	for range 100 {
		if strings.Contains(s.stderr.String(), text) {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

func startSession(t *testing.T, env ...string) *session {
	t.Helper()
	cmd := exec.Command(lua(t), filepath.Join("testdata", "session.lua"), "mailauthd.lua")
	cmd.Env = append(os.Environ(), env...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &session{t: t, in: in, lines: make(chan string, 16), stderr: &syncBuffer{}}
	cmd.Stderr = s.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() {
		in.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return s
}

// call runs one hook; it returns Dovecot's result code and what came with
// it ("table user=X" or "string TEXT").
func (s *session) call(hook, user, password string) (int, string) {
	s.t.Helper()
	fmt.Fprintf(s.in, "%s\t%s\t%s\n", hook, user, password)
	code, value := 0, ""
	for {
		select {
		case line, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("lua5.4 exited\n%s", s.stderr)
			}
			switch {
			case line == "done":
				return code, value
			case strings.HasPrefix(line, "result "):
				fmt.Sscan(strings.TrimPrefix(line, "result "), &code)
			default:
				value = line
			}
		case <-time.After(10 * time.Second):
			s.t.Fatalf("no answer from lua5.4 after 10 s\n%s", s.stderr)
		}
	}
}

func (s *session) verify(user string) (int, string) {
	s.t.Helper()
	return s.call(hookVerify, user, "pw")
}

// wantOK checks a login of user was accepted with the daemon's fields.
func (s *session) wantOK(user string) {
	s.t.Helper()
	if code, value := s.verify(user); code != passdbOK || value != "table user="+user {
		s.t.Fatalf("login %s: %d %s, want OK with user=%s\n%s", user, code, value, user, s.stderr)
	}
}

func (s *session) wantInternal(user, text string) {
	s.t.Helper()
	if code, value := s.verify(user); code != passdbInternal || !strings.Contains(value, text) {
		s.t.Fatalf("login %s: %d %s, want an internal failure saying %q\n%s", user, code, value, text, s.stderr)
	}
}

// countingListener counts the connections a server accepted.
type countingListener struct {
	net.Listener
	n atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// daemon is a control.Server with the fake backend on a fixed path that a
// test can stop and start again, as a daemon restart does.
type daemon struct {
	t       *testing.T
	path    string
	backend *fakeBackend
	tune    func(*control.Server)
	srv     *control.Server
	l       *countingListener
	conns   int32 // accepted by servers already stopped
}

func startDaemon(t *testing.T, tune func(*control.Server)) *daemon {
	t.Helper()
	d := &daemon{t: t, path: filepath.Join(shortDir(t), "control"), backend: &fakeBackend{}, tune: tune}
	d.start()
	t.Cleanup(d.stop)
	return d
}

func (d *daemon) start() {
	d.t.Helper()
	nl, err := net.Listen("unix", d.path)
	if err != nil {
		d.t.Fatal(err)
	}
	d.l = &countingListener{Listener: nl}
	d.srv = &control.Server{Backend: d.backend, IOTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)}
	if d.tune != nil {
		d.tune(d.srv)
	}
	go d.srv.Serve(d.l)
}

func (d *daemon) stop() {
	if d.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := d.srv.Shutdown(ctx); err != nil {
		d.t.Errorf("daemon shutdown: %v", err)
	}
	d.conns += d.l.n.Load()
	d.srv = nil
}

// accepted is the number of connections every server so far accepted.
func (d *daemon) accepted() int {
	n := d.conns
	if d.srv != nil {
		n += d.l.n.Load()
	}
	return int(n)
}

func (d *daemon) env() []string {
	return []string{"MAILAUTHD_SOCKET=" + d.path, "MAILAUTHD_TIMEOUT=" + testTimeoutSeconds}
}

// TestKeptConnection: one Lua state keeps one connection to the daemon for
// its logins, and a daemon that closes it (restart, idle timeout, its
// per-connection limit) never fails a login.
func TestKeptConnection(t *testing.T) {
	t.Run("many logins, one connection", func(t *testing.T) {
		d := startDaemon(t, nil)
		s := startSession(t, d.env()...)
		for i := range 20 {
			s.wantOK("ok")
			if code, _ := s.call(hookUserdbLookup, "nobody", ""); code != userdbUserUnknown {
				t.Fatalf("call %d: userdb lookup %d", i, code)
			}
		}
		if n := d.accepted(); n != 1 {
			t.Errorf("the daemon accepted %d connections for 40 calls, want 1", n)
		}
		if n := d.backend.count(); n != 40 {
			t.Errorf("the daemon decided %d requests, want 40", n)
		}
	})
	t.Run("daemon restarted between two logins", func(t *testing.T) {
		d := startDaemon(t, nil)
		s := startSession(t, d.env()...)
		s.wantOK("ok")
		d.stop()
		d.start()
		s.wantOK("ok")
		s.wantOK("ok")
		if !s.waitFor("debug mailauthd: the kept connection was closed") {
			t.Errorf("no debug line about the new connection:\n%s", s.stderr)
		}
		if n := d.accepted(); n != 2 {
			t.Errorf("%d connections, want 2 (one per daemon)", n)
		}
		if n := d.backend.count(); n != 3 {
			t.Errorf("the daemons decided %d requests, want 3", n)
		}
	})
	t.Run("daemon stopped, then started", func(t *testing.T) {
		d := startDaemon(t, nil)
		s := startSession(t, d.env()...)
		s.wantOK("ok")
		d.stop()
		s.wantInternal("ok", "connect "+d.path)
		d.start()
		s.wantOK("ok")
	})
	t.Run("daemon closed the idle connection", func(t *testing.T) {
		d := startDaemon(t, func(s *control.Server) { s.IdleTimeout = 100 * time.Millisecond })
		s := startSession(t, d.env()...)
		s.wantOK("ok")
		time.Sleep(400 * time.Millisecond)
		s.wantOK("ok")
		if n := d.accepted(); n != 2 {
			t.Errorf("%d connections, want 2", n)
		}
		if n := d.backend.count(); n != 2 {
			t.Errorf("the daemon decided %d requests, want 2 (nothing sent twice)", n)
		}
	})
	t.Run("the daemon's per-connection limit", func(t *testing.T) {
		d := startDaemon(t, func(s *control.Server) { s.MaxRequestsPerConn = 2 })
		s := startSession(t, d.env()...)
		for range 5 {
			s.wantOK("ok")
		}
		if n := d.accepted(); n != 3 {
			t.Errorf("%d connections for 5 logins at 2 per connection, want 3", n)
		}
		if n := d.backend.count(); n != 5 {
			t.Errorf("the daemon decided %d requests, want 5", n)
		}
	})
	t.Run("script_deinit closes the connection", func(t *testing.T) {
		closed := make(chan struct{})
		d := startRaw(t, func(c *rawConn) {
			serveAll(c)
			close(closed)
		})
		s := startSession(t, "MAILAUTHD_SOCKET="+d.path)
		s.wantOK("ok")
		fmt.Fprintln(s.in, "deinit")
		select {
		case <-closed:
		case <-time.After(3 * time.Second):
			t.Fatal("the kept connection is still open after script_deinit")
		}
	})
}

// rawDaemon answers the script's requests as handle says, per connection
// (numbered from 1), and records every request it read.
type rawDaemon struct {
	path string
	mu   sync.Mutex
	reqs []string // "conn/magic/user"
}

type rawConn struct {
	n int
	net.Conn
	r *bufio.Reader
	d *rawDaemon
}

func startRaw(t *testing.T, handle func(c *rawConn)) *rawDaemon {
	t.Helper()
	d := &rawDaemon{path: filepath.Join(shortDir(t), "raw")}
	l, err := net.Listen("unix", d.path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	go func() {
		for n := 1; ; n++ {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				handle(&rawConn{n: n, Conn: c, r: bufio.NewReader(c), d: d})
			}()
		}
	}()
	return d
}

// read reads one request: its magic and user; the magic alone when it is
// not "MAC2" or "MACK" (the rest stays unread).
func (c *rawConn) read() (magic, user string, err error) {
	return c.readKnowing("MAC2", "MACK")
}

// readKnowing reads a request as a daemon that knows only these magics.
func (c *rawConn) readKnowing(magics ...string) (magic, user string, err error) {
	var f [7]string
	for i := range f {
		var hdr [2]byte
		if _, err := io.ReadFull(c.r, hdr[:]); err != nil {
			return "", "", err
		}
		b := make([]byte, binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(c.r, b); err != nil {
			return "", "", err
		}
		f[i] = string(b)
		if i == 0 && !slices.Contains(magics, f[0]) {
			break
		}
	}
	c.d.mu.Lock()
	c.d.reqs = append(c.d.reqs, fmt.Sprintf("%d/%s/%s", c.n, f[0], f[2]))
	c.d.mu.Unlock()
	return f[0], f[2], nil
}

func (d *rawDaemon) requests() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.Join(d.reqs, " ")
}

func acceptReply(user string) []byte {
	return counted("MAC2", "accept", "", "ok", "uid="+user, "1", "user", user)
}

// serveAll answers every request on c with an accept for its user, keeping
// the connection while the client asks so.
func serveAll(c *rawConn) {
	for {
		magic, user, err := c.read()
		if err != nil || (magic != "MAC2" && magic != "MACK") {
			return
		}
		c.Write(acceptReply(user))
		if magic != "MACK" {
			return
		}
	}
}

// TestKeptConnectionFailures: what the script resends and what it never
// does, against daemons that misbehave on purpose.
func TestKeptConnectionFailures(t *testing.T) {
	t.Run("part of a reply, then closed: not sent again", func(t *testing.T) {
		d := startRaw(t, func(c *rawConn) {
			if c.n == 1 {
				_, user, _ := c.read()
				c.Write(acceptReply(user))
				c.read()
				c.Write(acceptReply("cut")[:9])
				return
			}
			serveAll(c)
		})
		s := startSession(t, "MAILAUTHD_SOCKET="+d.path, "MAILAUTHD_TIMEOUT=2")
		s.wantOK("first")
		s.wantInternal("second", "closed")
		s.wantOK("third")
		if got, want := d.requests(), "1/MACK/first 1/MACK/second 2/MACK/third"; got != want {
			t.Errorf("the daemon read %q, want %q", got, want)
		}
	})
	t.Run("closed without a reply: sent once more on a new connection", func(t *testing.T) {
		d := startRaw(t, func(c *rawConn) {
			if c.n == 1 {
				_, user, _ := c.read()
				c.Write(acceptReply(user))
				c.read()
				return // read, no answer, closed
			}
			serveAll(c)
		})
		s := startSession(t, "MAILAUTHD_SOCKET="+d.path, "MAILAUTHD_TIMEOUT=2")
		s.wantOK("first")
		s.wantOK("second")
		if got, want := d.requests(), "1/MACK/first 1/MACK/second 2/MACK/second"; got != want {
			t.Errorf("the daemon read %q, want %q", got, want)
		}
	})
	t.Run("a late reply is never the next login's answer", func(t *testing.T) {
		d := startRaw(t, func(c *rawConn) {
			for {
				_, user, err := c.read()
				if err != nil {
					return
				}
				if user == "slow" {
					time.Sleep(1500 * time.Millisecond) // the script's timeout is 1 s
				}
				c.Write(acceptReply(user))
			}
		})
		s := startSession(t, "MAILAUTHD_SOCKET="+d.path, "MAILAUTHD_TIMEOUT=1")
		s.wantOK("first")
		s.wantInternal("slow", "timeout")
		s.wantOK("next")
		if got, want := d.requests(), "1/MACK/first 1/MACK/slow 2/MACK/next"; got != want {
			t.Errorf("the daemon read %q, want %q", got, want)
		}
	})
	t.Run("bytes after a reply: a broken reply, connection dropped", func(t *testing.T) {
		d := startRaw(t, func(c *rawConn) {
			if c.n == 1 {
				_, user, _ := c.read()
				c.Write(append(acceptReply(user), acceptReply("other")...))
				c.read()
				return
			}
			serveAll(c)
		})
		s := startSession(t, "MAILAUTHD_SOCKET="+d.path, "MAILAUTHD_TIMEOUT=2")
		s.wantInternal("first", "bytes after the reply")
		s.wantOK("second")
		if got, want := d.requests(), "1/MACK/first 2/MACK/second"; got != want {
			t.Errorf("the daemon read %q, want %q", got, want)
		}
	})
	t.Run("a daemon older than keep-alive", func(t *testing.T) {
		// It closes at a magic it does not know, and after every reply.
		d := startRaw(t, func(c *rawConn) {
			magic, user, err := c.readKnowing("MAC2")
			if err != nil || magic != "MAC2" {
				return
			}
			c.Write(acceptReply(user))
		})
		s := startSession(t, "MAILAUTHD_SOCKET="+d.path, "MAILAUTHD_TIMEOUT=2")
		for _, u := range []string{"a", "b", "c"} {
			s.wantOK(u)
		}
		if got, want := d.requests(), "1/MACK/ 2/MAC2/a 3/MAC2/b 4/MAC2/c"; got != want {
			t.Errorf("the daemon read %q, want %q", got, want)
		}
	})
	t.Run("every attempt closed without a reply: three tries at most", func(t *testing.T) {
		d := startRaw(t, func(c *rawConn) {
			if c.n == 1 {
				_, user, _ := c.read()
				c.Write(acceptReply(user))
			}
			c.read()
		})
		s := startSession(t, "MAILAUTHD_SOCKET="+d.path, "MAILAUTHD_TIMEOUT=2")
		s.wantOK("first")
		// The kept connection, a new one with "MACK", a new one with
		// "MAC2" in case the daemon predates keep-alive.
		s.wantInternal("second", "receive")
		// Then one request per connection for a while: one try.
		s.wantInternal("third", "receive")
		if got, want := d.requests(), "1/MACK/first 1/MACK/second 2/MACK/second 3/MAC2/second 4/MAC2/third"; got != want {
			t.Errorf("the daemon read %q, want %q", got, want)
		}
	})
}
