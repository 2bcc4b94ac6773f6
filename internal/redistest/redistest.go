// Package redistest runs a real redis-server for tests: its own temp
// directory, a Unix socket and a free loopback port, no persistence.
package redistest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/peertest"
)

// Path is the redis-server binary.
var Path = "/usr/bin/redis-server"

// Server is one running redis-server.
type Server struct {
	Dir    string
	Port   int
	Socket string
	cmd    *exec.Cmd
	done   chan struct{}
}

// Addr is 127.0.0.1:PORT.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// Start starts a server for the test and stops it when the test ends. It
// skips the test when redis-server is not installed, and fails it under CI.
func Start(t testing.TB) *Server {
	t.Helper()
	peertest.NeedFile(t, Path)
	s, err := Launch(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Launch starts a server in dir; the caller must Stop it.
func Launch(dir string) (*Server, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := &Server{Dir: dir, Port: port, Socket: filepath.Join(dir, "redis.sock"), done: make(chan struct{})}
	s.cmd = exec.Command(Path, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--unixsocket", s.Socket, "--unixsocketperm", "700", "--dir", dir,
		"--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", filepath.Join(dir, "redis.log"))
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(dir, "redis.log"))
			return nil, fmt.Errorf("redis-server exited during start-up:\n%s", log)
		default:
		}
		if c, err := net.Dial("unix", s.Socket); err == nil {
			c.Close()
			return s, nil
		}
	}
	s.Stop()
	return nil, errors.New("redis-server not ready after 10s")
}

// Stop kills the server and waits for it; harmless twice.
func (s *Server) Stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Kill()
	}
	<-s.done
}
