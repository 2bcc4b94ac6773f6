package saslauthd

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/internal/peertest"
)

// stall opens n connections to path that send one byte of a request and
// then nothing: the slowloris client. They are closed when the test ends.
func stall(t testing.TB, path string, n int) {
	t.Helper()
	conns := make([]net.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range n {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatalf("stalled connection %d: %v", len(conns), err)
		}
		c.Write([]byte{0})
		conns = append(conns, c)
	}
}

func acceptAll() auth.Authenticator {
	return auth.AuthenticatorFunc(func(context.Context, auth.Request) auth.Verdict { return auth.Accepted("", nil) })
}

// TestSlowlorisDelaysNoOne: 2,000 connections that send one byte and stall
// hold no decision slot, so a real login is answered at once, not after
// the stalled ones time out (read_timeout is an hour here: only the
// structure can make it quick).
func TestSlowlorisDelaysNoOne(t *testing.T) {
	srv := &Server{Authenticator: acceptAll(), ReadTimeout: time.Hour, MaxConns: 16, MaxPendingPerPeer: -1}
	path, _ := startServer(t, srv)
	stall(t, path, 2000)
	for i := range 20 {
		start := time.Now()
		c := Client{Path: path, Timeout: 30 * time.Second}
		ok, _, err := c.Authenticate(context.Background(), auth.Request{User: "alice", Password: "pw"})
		if !ok || err != nil {
			t.Fatalf("login %d behind 2,000 stalled connections: %v %v", i, ok, err)
		}
		// Generous: a hang would be an hour; a slow machine is not a failure.
		if el := time.Since(start); el > 10*time.Second {
			t.Fatalf("login %d answered after %v", i, el)
		}
	}
}

// TestSlowlorisReadTimeout: a stalled connection is dropped after
// read_timeout and its pending place comes back.
func TestSlowlorisReadTimeout(t *testing.T) {
	srv := &Server{Authenticator: acceptAll(), ReadTimeout: 100 * time.Millisecond, MaxPending: 4, MaxConns: 2, MaxPendingPerPeer: -1}
	path, _ := startServer(t, srv)
	stall(t, path, 4) // every pending place taken
	c := Client{Path: path, Timeout: 30 * time.Second}
	if ok, _, err := c.Authenticate(context.Background(), auth.Request{User: "alice", Password: "pw"}); !ok || err != nil {
		t.Fatalf("login after the stalled ones timed out: %v %v", ok, err)
	}
}

// peerHelperEnv makes the test binary open stalled connections as another
// user (TestPerPeerLimit): "path,count,done-file".
const peerHelperEnv = "SASLAUTHD_TEST_STALL_AS"

func init() {
	spec := os.Getenv(peerHelperEnv)
	if spec == "" {
		return
	}
	var path, done string
	var n int
	if _, err := fmt.Sscanf(spec, "%d", &n); err != nil {
		os.Exit(2)
	}
	for i, part := range splitN(spec, 3) {
		switch i {
		case 1:
			path = part
		case 2:
			done = part
		}
	}
	opened := 0
	for range n {
		c, err := net.Dial("unix", path)
		if err != nil {
			break
		}
		c.Write([]byte{0})
		opened++
		defer c.Close()
	}
	os.WriteFile(done, []byte(strconv.Itoa(opened)), 0o644)
	time.Sleep(time.Minute) // until killed
	os.Exit(0)
}

func splitN(s string, n int) []string {
	var out []string
	for len(out) < n-1 {
		i := 0
		for i < len(s) && s[i] != ',' {
			i++
		}
		out = append(out, s[:i])
		if i == len(s) {
			return out
		}
		s = s[i+1:]
	}
	return append(out, s)
}

// TestPerPeerLimit: one local user (here: nobody) filling the socket with
// stalled connections gets at most its share of the pending places; the
// connections over it are closed at once, and another user's login (the
// test's, root) still gets in.
func TestPerPeerLimit(t *testing.T) {
	peertest.NeedRoot(t, "opening connections as another user")
	dir, err := os.MkdirTemp("", "sasl-peer-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o777)
	srv := &Server{Authenticator: acceptAll(), ReadTimeout: time.Hour, MaxPending: 64, MaxPendingPerPeer: 16, MaxConns: 4, Logger: slog.New(slog.DiscardHandler)}
	path := filepath.Join(dir, "mux")
	l, err := Listen(path, 0o666, "")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()

	done := filepath.Join(dir, "done")
	// The test binary sits in a directory only root may enter: copy it.
	helper := filepath.Join(dir, "stall-helper")
	bin, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(helper, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(helper, "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%s,%s", peerHelperEnv, 200, path, done))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(done); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the other user's client never finished connecting")
		}
	}
	waitFor(t, func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return srv.perPeer[65534] == 16
	})
	c := Client{Path: path, Timeout: 30 * time.Second}
	if ok, _, err := c.Authenticate(context.Background(), auth.Request{User: "alice", Password: "pw"}); !ok || err != nil {
		t.Fatalf("root's login while nobody holds its share: %v %v", ok, err)
	}
}

// TestShutdownAnswersTheBacklog: connections queued in the listen backlog
// when Shutdown begins (every slot was busy) get their answer, not a reset.
func TestShutdownAnswersTheBacklog(t *testing.T) {
	release := make(chan struct{})
	var calls atomic.Int32
	srv := &Server{
		MaxConns: 1, MaxPending: 1, MaxPendingPerPeer: -1, Logger: slog.New(slog.DiscardHandler),
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
			if calls.Add(1) == 1 {
				<-release
			}
			return auth.Accepted("", nil)
		}),
	}
	path := filepath.Join(t.TempDir(), "mux")
	l, err := Listen(path, 0o666, "")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	const n = 20
	var wg sync.WaitGroup
	results := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := Client{Path: path, Timeout: 30 * time.Second}
			ok, text, err := c.Authenticate(context.Background(), auth.Request{User: "u", Password: "p"})
			if err == nil && !ok {
				err = fmt.Errorf("NO %s", text)
			}
			results <- err
		}()
	}
	// Wait until the first request holds the only slot and the rest queue.
	waitFor(t, func() bool { return calls.Load() == 1 })
	time.Sleep(100 * time.Millisecond)
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	time.Sleep(100 * time.Millisecond)
	close(release)
	wg.Wait()
	close(results)
	failed := 0
	for err := range results {
		if err != nil {
			failed++
			t.Log(err)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d queued clients got no answer", failed, n)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	<-served
}

// BenchmarkSlowloris measures a real login's latency (p50, p99) with 2,000
// stalled connections on the socket: today's number for the issue's
// target (under 50 ms).
func BenchmarkSlowloris(b *testing.B) {
	srv := &Server{Authenticator: acceptAll(), ReadTimeout: time.Hour, MaxPendingPerPeer: -1, Logger: slog.New(slog.DiscardHandler)}
	path := filepath.Join(b.TempDir(), "mux")
	l, err := Listen(path, 0o666, "")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Close()
	stall(b, path, 2000)
	var msg []byte
	for _, f := range [...]string{"alice", "pw", "smtp", ""} {
		msg = binary.BigEndian.AppendUint16(msg, uint16(len(f)))
		msg = append(msg, f...)
	}
	lat := make([]time.Duration, 0, b.N)
	var reply [64]byte
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		if err := libsaslExchange(path, msg, reply[:]); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}

// TestDelayedFailureFreesItsSlot: the throttle's delay holds the guesser's
// answer back, not a decision slot: with one slot, a real login is
// answered while the guess still waits.
func TestDelayedFailureFreesItsSlot(t *testing.T) {
	srv := &Server{MaxConns: 1, Logger: slog.New(slog.DiscardHandler),
		Authenticator: auth.AuthenticatorFunc(func(_ context.Context, req auth.Request) auth.Verdict {
			if req.User == "guesser" {
				v := auth.Rejected(auth.CauseThrottled, "throttled")
				v.Delay = 3 * time.Second
				return v
			}
			return auth.Accepted("", nil)
		})}
	path, _ := startServer(t, srv)
	guess := make(chan time.Time, 1)
	go func() {
		c := Client{Path: path, Timeout: 30 * time.Second}
		c.Authenticate(context.Background(), auth.Request{User: "guesser", Password: "x"})
		guess <- time.Now()
	}()
	time.Sleep(200 * time.Millisecond) // the guess is decided and waiting
	c := Client{Path: path, Timeout: 30 * time.Second}
	if ok, _, err := c.Authenticate(context.Background(), auth.Request{User: "alice", Password: "pw"}); !ok || err != nil {
		t.Fatalf("real login: %v %v", ok, err)
	}
	answered := time.Now()
	select {
	case g := <-guess:
		t.Fatalf("the guess was answered (%v) before the real login (%v): it held the slot", g, answered)
	default:
	}
	<-guess
}
