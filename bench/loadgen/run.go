package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/mailauthd/mailauthd/authhttp"
)

// Result is one measured cell, one JSON line in the results file.
type Result struct {
	Label       string  `json:"label"`
	Mode        string  `json:"mode"`
	Users       int     `json:"users,omitempty"` // users in the directory (-users)
	Concurrency int     `json:"c"`
	Seconds     float64 `json:"seconds"`
	Requests    int64   `json:"requests"`
	Errors      int64   `json:"errors"`
	// Mismatches are answers that were well-formed but wrong (OK for a
	// wrong password, NO for a good one); they are included in Errors.
	Mismatches int64   `json:"mismatches"`
	RPS        float64 `json:"rps"`
	P50ms      float64 `json:"p50_ms"`
	P99ms      float64 `json:"p99_ms"`
	MaxMs      float64 `json:"max_ms"`
	RSSkB      int64   `json:"rss_kb,omitempty"` // VmRSS of -pid after the run
	HWMkB      int64   `json:"hwm_kb,omitempty"` // VmHWM (peak RSS)
	// CPU time (user+system) the daemon's processes and slapd spent during
	// the measured window, per request: on a shared, noisy machine this is
	// steadier than requests/s, and it shows where the time goes.
	DaemonCPUus float64 `json:"daemon_cpu_us,omitempty"`
	SlapdCPUus  float64 `json:"slapd_cpu_us,omitempty"`
	// DovecotCPUus is Dovecot's (master, auth, auth-workers and the
	// checkpassword programs they ran), for the Dovecot rows.
	DovecotCPUus float64 `json:"dovecot_cpu_us,omitempty"`
	// ClientCPUus is this load generator's own CPU per request: on a small
	// machine it shares the cores and bounds what any daemon can show.
	ClientCPUus float64 `json:"client_cpu_us,omitempty"`
	FirstError  string  `json:"first_error,omitempty"`
}

// workload picks the next user and whether to send a wrong password.
type workload struct {
	users   int     // uid=user0 .. user<users-1> exist, password passN
	hot     int     // hot set: user0 .. user<hot-1>
	hotFrac float64 // share of requests going to the hot set
	wrong   float64 // share of requests with a wrong password
	seq     bool    // walk users in order instead (fills a cache)
	next    atomic.Int64
	service string
}

func (w *workload) pick(r *rand.Rand) (user int, good bool) {
	switch {
	case w.seq:
		user = int(w.next.Add(1)-1) % w.users
	case w.hot > 0 && r.Float64() < w.hotFrac:
		user = r.IntN(w.hot)
	default:
		user = r.IntN(w.users)
	}
	return user, r.Float64() >= w.wrong
}

func password(user int, good bool) string {
	if good {
		return "pass" + strconv.Itoa(user)
	}
	// Same length class as a real one, different value.
	return "wrong" + strconv.Itoa(user)
}

// doer performs one authentication and reports whether it was accepted.
// An error means no valid answer at all.
type doer interface {
	do(user string, pw string) (accepted bool, err error)
	close()
}

func runLoad(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	mode := fs.String("mode", "saslauthd", "saslauthd | http | bind | searchbind | dovecot")
	label := fs.String("label", "", "row label in the results table")
	socket := fs.String("socket", "", "saslauthd, http: socket path; dovecot: Dovecot's auth-client socket")
	url := fs.String("url", "", "bind, searchbind: ldap:// URL")
	base := fs.String("base", "ou=people,dc=example,dc=org", "bind: users are uid=userN,BASE; searchbind: search base")
	bindDN := fs.String("binddn", "", "searchbind: service account DN (empty: anonymous)")
	bindPW := fs.String("bindpw", "", "searchbind: service account password")
	conc := fs.Int("c", 8, "concurrent clients (closed loop: each waits for its answer)")
	dur := fs.Duration("d", 5*time.Second, "measured duration")
	warm := fs.Duration("warmup", time.Second, "unmeasured warm-up before the measurement")
	users := fs.Int("users", 10000, "users in the directory")
	hot := fs.Int("hot", 100, "size of the hot set (user0..)")
	hotFrac := fs.Float64("hotfrac", 0.9, "share of requests to the hot set; the rest spread over all users")
	wrong := fs.Float64("wrong", 0.05, "share of requests with a wrong password")
	seq := fs.Bool("seq", false, "walk all users in order (to fill a cache)")
	service := fs.String("service", "smtp", "saslauthd service field")
	timeout := fs.Duration("timeout", 5*time.Second, "per-request deadline; exceeding it is an error")
	pid := fs.Int("pid", 0, "after the run, record VmRSS and VmHWM of this process")
	out := fs.String("out", "", "append the result as a JSON line to this file (and print it)")
	cpuPIDs := fs.String("cpupids", "", "comma-separated PIDs of the daemon's processes, for CPU time per request")
	slapdPID := fs.Int("slapdpid", 0, "PID of slapd, for its CPU time per request")
	addr := fs.String("addr", "", "saslauthd: client address sent as the fifth field, e.g. 203.0.113.5;40000")
	distinct := fs.Bool("distinct", false, "every wrong password a new one (an attacker's guesses), not the same wrong one per user")
	stalled := fs.Int("stall", 0, "saslauthd: open this many connections that send one byte and stall, before measuring")
	dovecotPGID := fs.Int("dovecotpgid", 0, "process group of Dovecot, for its CPU time per request")
	fs.Parse(args)
	if *conc < 1 || *users < 1 || *hot > *users {
		return errors.New("run: need -c >= 1, -users >= 1, -hot <= -users")
	}

	w := &workload{users: *users, hot: *hot, hotFrac: *hotFrac, wrong: *wrong, seq: *seq, service: *service}
	var newDoer func() (doer, error)
	switch *mode {
	case "saslauthd":
		if *socket == "" {
			return errors.New("run: -socket required")
		}
		newDoer = func() (doer, error) {
			return &saslDoer{path: *socket, service: *service, addr: *addr, timeout: *timeout}, nil
		}
		if *stalled > 0 {
			conns, err := stall(*socket, *stalled)
			if err != nil {
				return err
			}
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
		}
		// Each client blocks in the kernel like a Postfix worker, and the
		// kernel should schedule them like separate processes. With fewer
		// Ps than clients, a client whose reply came back finds no P free
		// and queues in the Go run queue behind clients that keep theirs:
		// against a fast daemon that was most of the measured p99 (cache
		// hits at c=32: p50 0.13 ms, p99 19-21 ms with GOMAXPROCS=2;
		// p50 0.8 ms, p99 3.2-3.4 ms with one P per client).
		runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), *conc+1))
	case "http":
		if *socket == "" {
			return errors.New("run: -socket required")
		}
		newDoer = func() (doer, error) { return &httpDoer{path: *socket, protocol: *service, timeout: *timeout}, nil }
		runtime.GOMAXPROCS(max(runtime.GOMAXPROCS(0), *conc+1)) // as for saslauthd
	case "dovecot":
		if *socket == "" {
			return errors.New("run: -socket required")
		}
		var cpid atomic.Int64
		cpid.Store(int64(os.Getpid()) << 8)
		newDoer = func() (doer, error) {
			return newDovecotDoer(*socket, *service, int(cpid.Add(1)), *timeout)
		}
	case "bind":
		newDoer = func() (doer, error) { return newBindDoer(*url, *base, *timeout) }
	case "searchbind":
		newDoer = func() (doer, error) { return newSearchBindDoer(*url, *base, *bindDN, *bindPW, *timeout) }
	default:
		return fmt.Errorf("run: unknown -mode %q", *mode)
	}

	doers := make([]doer, *conc)
	for i := range doers {
		d, err := newDoer()
		if err != nil {
			return fmt.Errorf("run: connect: %w", err)
		}
		doers[i] = d
		defer d.close()
	}

	var (
		measuring atomic.Bool
		stop      atomic.Bool
		wg        sync.WaitGroup
		mu        sync.Mutex
		lat       []int64
		requests  int64
		errs      int64
		mismatch  int64
		firstErr  string
	)
	for i, d := range doers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(i)+1, uint64(time.Now().UnixNano())))
			local := make([]int64, 0, 1<<14)
			var n, e, m int64
			var fe string
			for !stop.Load() {
				u, good := w.pick(r)
				pw := password(u, good)
				if !good && *distinct {
					pw += "-" + strconv.FormatUint(r.Uint64(), 36)
				}
				t0 := time.Now()
				ok, err := d.do("user"+strconv.Itoa(u), pw)
				el := time.Since(t0)
				if !measuring.Load() {
					continue
				}
				n++
				local = append(local, int64(el))
				switch {
				case err != nil:
					e++
					if fe == "" {
						fe = err.Error()
					}
				case ok != good:
					e++
					m++
					if fe == "" {
						fe = fmt.Sprintf("user%d with a %s password: accepted=%v", u, map[bool]string{true: "good", false: "wrong"}[good], ok)
					}
				}
			}
			mu.Lock()
			lat = append(lat, local...)
			requests += n
			errs += e
			mismatch += m
			if firstErr == "" {
				firstErr = fe
			}
			mu.Unlock()
		}()
	}
	daemonPIDs, err := parsePIDs(*cpuPIDs)
	if err != nil {
		return err
	}
	time.Sleep(*warm)
	self := []int{os.Getpid()}
	d0, s0, c0, v0 := cpuTicks(daemonPIDs), cpuTicks([]int{*slapdPID}), cpuTicks(self), pgroupTicks(*dovecotPGID)
	measuring.Store(true)
	start := time.Now()
	time.Sleep(*dur)
	measuring.Store(false)
	elapsed := time.Since(start)
	d1, s1, c1, v1 := cpuTicks(daemonPIDs), cpuTicks([]int{*slapdPID}), cpuTicks(self), pgroupTicks(*dovecotPGID)
	stop.Store(true)
	wg.Wait()

	res := Result{
		Label: *label, Mode: *mode, Users: *users, Concurrency: *conc, Seconds: elapsed.Seconds(),
		Requests: requests, Errors: errs, Mismatches: mismatch, FirstError: firstErr,
		RPS: float64(requests) / elapsed.Seconds(),
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
		res.P50ms, res.P99ms, res.MaxMs = pct(0.50), pct(0.99), pct(1)
	}
	if *pid > 0 {
		res.RSSkB, res.HWMkB = procMemory(*pid)
	}
	if requests > 0 {
		res.ClientCPUus = ticksToMicros(c1-c0) / float64(requests)
		if len(daemonPIDs) > 0 {
			res.DaemonCPUus = ticksToMicros(d1-d0) / float64(requests)
		}
		if *slapdPID > 0 {
			res.SlapdCPUus = ticksToMicros(s1-s0) / float64(requests)
		}
		if *dovecotPGID > 0 {
			res.DovecotCPUus = ticksToMicros(v1-v0) / float64(requests)
		}
	}
	line, _ := json.Marshal(res)
	fmt.Println(string(line))
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		if _, err := f.Write(append(line, '\n')); err != nil {
			return err
		}
	}
	return nil
}

func parsePIDs(s string) ([]int, error) {
	var pids []int
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("run: bad pid %q in -cpupids", f)
		}
		pids = append(pids, n)
	}
	return pids, nil
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go supports.
const clockTicks = 100

func ticksToMicros(t int64) float64 { return float64(t) * 1e6 / clockTicks }

// cpuTicks sums utime+stime of the processes (fields 14 and 15 of
// /proc/PID/stat). A process that is gone counts 0.
func cpuTicks(pids []int) int64 {
	var total int64
	for _, pid := range pids {
		if pid <= 0 {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The command name (field 2) may hold spaces; fields resume after its ')'.
		i := strings.LastIndexByte(string(data), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(data[i+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += u + st
	}
	return total
}

// procMemory reads VmRSS and VmHWM (kB) from /proc/PID/status.
func procMemory(pid int) (rss, hwm int64) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = n
		case "VmHWM":
			hwm = n
		}
	}
	return rss, hwm
}

// saslDoer speaks the saslauthd protocol exactly as released libsasl2
// (2.1.27/2.1.28) does: a new connection per request, the four counted
// strings login, password, service, realm in one write, one counted reply.
// Like libsasl2 it uses plain blocking system calls (bounded here by
// SO_RCVTIMEO/SO_SNDTIMEO), not Go's netpoller: the client then costs what a
// Postfix or Cyrus worker costs, and leaves the shared cores to the daemons.
type saslDoer struct {
	path, service string
	addr          string // the optional fifth field, client address
	timeout       time.Duration
	buf           []byte
	reply         [1100]byte
}

func (s *saslDoer) do(user, pw string) (bool, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return false, fmt.Errorf("socket: %w", err)
	}
	defer syscall.Close(fd)
	tv := syscall.NsecToTimeval(s.timeout.Nanoseconds())
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		return false, err
	}
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv); err != nil {
		return false, err
	}
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: s.path}); err != nil {
		return false, fmt.Errorf("connect: %w", err)
	}
	b := s.buf[:0]
	for _, f := range [...]string{user, pw, s.service, ""} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	if s.addr != "" {
		b = binary.BigEndian.AppendUint16(b, uint16(len(s.addr)))
		b = append(b, s.addr...)
	}
	s.buf = b
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("write: %w", err)
		}
		b = b[n:]
	}
	got := 0
	for got < 2 || got < 2+int(binary.BigEndian.Uint16(s.reply[:2])) {
		if got >= 2 && 2+int(binary.BigEndian.Uint16(s.reply[:2])) > len(s.reply) {
			return false, fmt.Errorf("reply of %d bytes", binary.BigEndian.Uint16(s.reply[:2]))
		}
		n, err := syscall.Read(fd, s.reply[got:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("read reply: %w", err)
		}
		if n == 0 {
			return false, fmt.Errorf("read reply: %w", io.ErrUnexpectedEOF)
		}
		got += n
	}
	body := s.reply[2 : 2+int(binary.BigEndian.Uint16(s.reply[:2]))]
	switch {
	case len(body) >= 2 && string(body[:2]) == "OK":
		return true, nil
	case len(body) >= 2 && string(body[:2]) == "NO":
		return false, nil
	}
	return false, fmt.Errorf("reply %q is neither OK nor NO", body)
}

func (s *saslDoer) close() {}

// httpDoer asks mailauthd's auth_http as nginx's mail module does
// (ngx_mail_auth_http_create_request): a new connection per login, one
// HTTP/1.0 GET with the credentials in headers (escaped as nginx escapes
// them), no keep-alive; the answer is read to EOF and its Auth-Status
// checked. Blocking system calls, like saslDoer.
type httpDoer struct {
	path, protocol string
	timeout        time.Duration
	buf            []byte
	reply          [2048]byte
}

func (h *httpDoer) do(user, pw string) (bool, error) {
	fd, err := dialUnix(h.path, h.timeout)
	if err != nil {
		return false, err
	}
	defer syscall.Close(fd)
	b := append(h.buf[:0], "GET /auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\nAuth-User: "...)
	b = append(b, authhttp.Escape(user)...)
	b = append(b, "\r\nAuth-Pass: "...)
	b = append(b, authhttp.Escape(pw)...)
	b = append(b, "\r\nAuth-Protocol: "...)
	b = append(b, h.protocol...)
	b = append(b, "\r\nAuth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1\r\n\r\n"...)
	h.buf = b
	if err := writeAll(fd, b); err != nil {
		return false, err
	}
	got := 0
	for {
		if got == len(h.reply) {
			return false, fmt.Errorf("reply over %d bytes", len(h.reply))
		}
		n, err := syscall.Read(fd, h.reply[got:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("read reply: %w", err)
		}
		if n == 0 {
			break
		}
		got += n
	}
	reply := string(h.reply[:got])
	head, _, _ := strings.Cut(reply, "\r\n\r\n")
	for _, l := range strings.Split(head, "\r\n") {
		if v, ok := strings.CutPrefix(l, "Auth-Status: "); ok {
			switch v {
			case "OK":
				return true, nil
			case authhttp.TextRefused:
				return false, nil
			}
			return false, fmt.Errorf("Auth-Status %q", v)
		}
	}
	return false, fmt.Errorf("no Auth-Status in %q", head)
}

func (h *httpDoer) close() {}

// dialUnix connects a blocking Unix stream socket with send and receive
// timeouts.
func dialUnix(path string, timeout time.Duration) (int, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	tv := syscall.NsecToTimeval(timeout.Nanoseconds())
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_SNDTIMEO, &tv); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		syscall.Close(fd)
		return -1, fmt.Errorf("connect: %w", err)
	}
	return fd, nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := syscall.Write(fd, b)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("write: %w", err)
		}
		b = b[n:]
	}
	return nil
}

func dialLDAP(url string, timeout time.Duration) (*ldap.Conn, error) {
	c, err := ldap.DialURL(url, ldap.DialWithDialer(&net.Dialer{Timeout: timeout}))
	if err != nil {
		return nil, err
	}
	c.SetTimeout(timeout)
	return c, nil
}

// bindDoer is the ceiling: one simple bind per authentication on a
// persistent connection, the DN computed without a search.
type bindDoer struct {
	conn *ldap.Conn
	base string
}

func newBindDoer(url, base string, timeout time.Duration) (*bindDoer, error) {
	c, err := dialLDAP(url, timeout)
	if err != nil {
		return nil, err
	}
	return &bindDoer{conn: c, base: base}, nil
}

func (b *bindDoer) do(user, pw string) (bool, error) {
	return bindResult(b.conn.Bind("uid="+ldap.EscapeDN(user)+","+b.base, pw))
}

func (b *bindDoer) close() { b.conn.Close() }

func bindResult(err error) (bool, error) {
	if err == nil {
		return true, nil
	}
	if ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
		return false, nil
	}
	return false, err
}

// searchBindDoer is what a good LDAP authenticator does without a local
// mirror: search for the user on a service connection, bind as the found DN
// on a second connection; both persistent.
type searchBindDoer struct {
	search, bind *ldap.Conn
	base         string
}

func newSearchBindDoer(url, base, bindDN, bindPW string, timeout time.Duration) (*searchBindDoer, error) {
	s, err := dialLDAP(url, timeout)
	if err != nil {
		return nil, err
	}
	if bindDN != "" {
		if err := s.Bind(bindDN, bindPW); err != nil {
			s.Close()
			return nil, fmt.Errorf("service bind: %w", err)
		}
	}
	b, err := dialLDAP(url, timeout)
	if err != nil {
		s.Close()
		return nil, err
	}
	return &searchBindDoer{search: s, bind: b, base: base}, nil
}

func (d *searchBindDoer) do(user, pw string) (bool, error) {
	res, err := d.search.Search(ldap.NewSearchRequest(d.base, ldap.ScopeWholeSubtree, ldap.NeverDerefAliases,
		2, 5, false, "(uid="+ldap.EscapeFilter(user)+")", []string{"host"}, nil))
	if err != nil {
		return false, fmt.Errorf("search: %w", err)
	}
	if len(res.Entries) != 1 {
		return false, nil
	}
	return bindResult(d.bind.Bind(res.Entries[0].DN, pw))
}

func (d *searchBindDoer) close() { d.search.Close(); d.bind.Close() }

// stall opens n connections to a saslauthd socket that send the first byte
// of a request and nothing more (the slowloris client). They stay open
// until closed.
func stall(path string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("unix", path)
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("stall: %w", err)
		}
		c.Write([]byte{0})
		conns = append(conns, c)
	}
	return conns, nil
}
