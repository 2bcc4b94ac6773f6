package saslauthd

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

// benchClientEnv makes the test binary act as BenchmarkServe's load
// generator: "requests,concurrency,socket path".
const benchClientEnv = "SASLAUTHD_BENCH_CLIENT"

func TestMain(m *testing.M) {
	if spec := os.Getenv(benchClientEnv); spec != "" {
		if err := runBenchClient(spec); err != nil {
			fmt.Fprintln(os.Stderr, "bench client:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runBenchClient sends requests the way released libsasl2 does (and
// bench/loadgen): a new connection per request, four fields in one write,
// blocking system calls bounded by socket timeouts, close after the reply.
func runBenchClient(spec string) error {
	parts := strings.SplitN(spec, ",", 3)
	if len(parts) != 3 {
		return fmt.Errorf("bad spec %q", spec)
	}
	n, _ := strconv.Atoi(parts[0])
	conc, _ := strconv.Atoi(parts[1])
	path := parts[2]
	if path == "" || n <= 0 || conc <= 0 {
		return fmt.Errorf("bad spec %q", spec)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, conc)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var msg []byte
			for _, f := range [...]string{"alice", "correct horse", "smtp", ""} {
				msg = binary.BigEndian.AppendUint16(msg, uint16(len(f)))
				msg = append(msg, f...)
			}
			var reply [64]byte
			for next.Add(1) <= int64(n) {
				if err := libsaslExchange(path, msg, reply[:]); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

func libsaslExchange(path string, msg, reply []byte) error {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	tv := syscall.NsecToTimeval((10 * time.Second).Nanoseconds())
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv)
	syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv)
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		return err
	}
	if _, err := syscall.Write(fd, msg); err != nil {
		return err
	}
	got := 0
	for got < 2 || got < 2+int(binary.BigEndian.Uint16(reply)) {
		m, err := syscall.Read(fd, reply[got:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if m == 0 {
			return io.ErrUnexpectedEOF
		}
		got += m
	}
	if string(reply[2:4]) != "OK" {
		return fmt.Errorf("reply %q", reply[:got])
	}
	return nil
}

// BenchmarkServe measures the server side of the front door: a real
// Unix-socket Server with an in-memory Authenticator (a cache hit), driven
// by a separate process that talks like libsasl2. server-cpu-us/op is this
// process's CPU (user+system) per request, so the client's cost is not in it;
// -cpuprofile likewise profiles only the server.
func BenchmarkServe(b *testing.B) {
	for _, conc := range []int{1, 8} {
		for _, lvl := range []slog.Level{slog.LevelWarn, slog.LevelInfo} {
			b.Run(fmt.Sprintf("c=%d/log=%s", conc, lvl), func(b *testing.B) {
				benchServe(b, conc, lvl)
			})
		}
	}
}

func benchServe(b *testing.B, conc int, level slog.Level) {
	srv := &Server{
		Authenticator: auth.AuthenticatorFunc(func(ctx context.Context, req auth.Request) auth.Verdict {
			if req.User == "alice" && req.Password == "correct horse" {
				return auth.Accepted("uid=alice,ou=people,dc=example,dc=org", nil)
			}
			return auth.Rejected(auth.CausePolicy, "invalid credentials")
		}),
		// As the daemon logs: JSON, one line per decision when at info.
		Logger: slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: level})),
	}
	path := filepath.Join(b.TempDir(), "mux")
	l, err := Listen(path, 0o666, "")
	if err != nil {
		b.Fatal(err)
	}
	go srv.Serve(l)
	defer srv.Shutdown(context.Background())

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d,%d,%s", benchClientEnv, b.N, conc, path))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	b.ReportAllocs()
	b.ResetTimer()
	before := cpuTime()
	if err := cmd.Run(); err != nil {
		b.Fatal(err)
	}
	used := cpuTime() - before
	b.StopTimer()
	b.ReportMetric(float64(used.Microseconds())/float64(b.N), "server-cpu-us/op")
}

// cpuTime is this process's user+system CPU time so far (not its children's).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
