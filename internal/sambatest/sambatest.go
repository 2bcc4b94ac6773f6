// Package sambatest runs a real Samba Active Directory domain controller
// (Debian packages samba, samba-ad-dc, samba-ad-provision) for integration
// tests, with fixture accounts in each state an AD bind can refuse (see
// fixtures.go and FINDINGS.md).
//
// Ports: Samba's LDAP server listens on 389, 636, 3268 and 3269 and has no
// setting to change them, so each instance runs in a private network
// namespace of its own (only a loopback there; see netns.go) and the
// harness forwards two free loopback ports of the host to its 389 and 636.
// Tests dial ldap://127.0.0.1:PORT and ldaps://127.0.0.1:PORT like any
// other server; several instances can run at once and nothing on the host's
// own 389/636 matters. The forwarder copies bytes (TLS is end to end, with
// the test-CA certificate configured as samba's tls certfile) and passes a
// FIN on as a FIN and a reset as a reset. Creating a network namespace and
// running samba need root: without it the tests skip (or fail under CI).
//
// Provisioning (samba-tool domain provision plus the fixtures) is done once
// into a cache directory keyed by CacheVersion and the Samba version, and
// copied for each instance.
package sambatest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/mailauthd/mailauthd/internal/testca"
)

// Fixed identities of the test domain.
const (
	Realm      = "EXAMPLE.ORG"
	DNSDomain  = "example.org"
	Domain     = "EXAMPLE" // NetBIOS domain
	HostName   = "dc1"
	BaseDN     = "DC=example,DC=org"
	UsersDN    = "CN=Users," + BaseDN
	ConfigDN   = "CN=Configuration," + BaseDN
	AdminDN    = "CN=Administrator," + UsersDN
	AdminUPN   = "Administrator@" + DNSDomain
	AdminPass  = "Admin-Pass-2024"
	QueryPolDN = "CN=Default Query Policy,CN=Query-Policies,CN=Directory Service,CN=Windows NT,CN=Services," + ConfigDN
)

// Paths of the Samba tools; the defaults are Debian's.
var (
	SambaPath     = "/usr/sbin/samba"
	SambaToolPath = "/usr/bin/samba-tool"
	LdbmodifyPath = "/usr/bin/ldbmodify"
	// FaketimePath (package faketime) back-dates one password change so an
	// account's password is already expired (AD data 532).
	FaketimePath = "/usr/bin/faketime"
	// ProvisionDir holds the schema files samba-tool provisions from
	// (package samba-ad-provision).
	ProvisionDir = "/usr/share/samba/setup/ad-schema"
)

// Available reports whether the Samba AD DC tools are installed.
func Available() bool {
	for _, p := range []string{SambaPath, SambaToolPath, LdbmodifyPath, FaketimePath, ProvisionDir} {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

type options struct {
	plainBinds   bool
	readyTimeout time.Duration
}

// Option changes how the server is set up.
type Option func(*options)

// WithPlainBinds sets "ldap server require strong auth = no", so simple
// binds work over plain ldap:// too. Samba's default (and this harness's)
// refuses them without TLS.
func WithPlainBinds() Option { return func(o *options) { o.plainBinds = true } }

// WithReadyTimeout bounds the wait for samba to answer (default 60s).
func WithReadyTimeout(d time.Duration) Option { return func(o *options) { o.readyTimeout = d } }

// Server is one running Samba AD DC.
type Server struct {
	Dir string // instance directory: copy of the provisioned domain, smb.conf, certificates

	opts    options
	ns      *netns
	ldapFwd *proxy // host port → namespace 127.0.0.1:389
	tlsFwd  *proxy // host port → namespace 127.0.0.1:636

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	out     *tailBuffer
	stopped bool
	closed  bool
}

// URL is ldap://127.0.0.1:PORT (forwarded to the DC's port 389).
func (s *Server) URL() string { return "ldap://" + s.ldapFwd.addr }

// LDAPSURL is ldaps://127.0.0.1:PORT (forwarded to the DC's port 636).
func (s *Server) LDAPSURL() string { return "ldaps://" + s.tlsFwd.addr }

// Port and TLSPort are the host ports of URL and LDAPSURL.
func (s *Server) Port() int    { return portOf(s.ldapFwd.addr) }
func (s *Server) TLSPort() int { return portOf(s.tlsFwd.addr) }

func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// CAFile is the PEM file of the test CA that signed the DC's certificate
// (SAN 127.0.0.1, ::1, localhost, dc1.example.org).
func (s *Server) CAFile() string { return filepath.Join(s.Dir, "tls", testca.CAFile) }

// TLSConfig trusts the test CA and verifies the name 127.0.0.1.
func (s *Server) TLSConfig() (*tls.Config, error) {
	return testca.ClientConfig(s.CAFile(), "127.0.0.1")
}

// AdminDN and AdminPassword are the domain Administrator's credentials.
func (s *Server) AdminDN() string       { return AdminDN }
func (s *Server) AdminPassword() string { return AdminPass }

// BaseDN is the domain's naming context.
func (s *Server) BaseDN() string { return BaseDN }

// Output returns the last part of samba's log output, for failure messages.
func (s *Server) Output() string { return s.out.String() }

// Launch copies the provisioned domain (building the cache first if
// needed) into dir, starts samba in its own network namespace and forwards
// two free loopback ports to it. The caller must call Close.
func Launch(dir string, opts ...Option) (*Server, error) {
	o := options{readyTimeout: 60 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("sambatest: needs root (network namespace, samba)")
	}
	cache, err := Provisioned()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, opts: o, out: newTailBuffer(64 << 10)}
	if out, err := exec.Command("cp", "-a", cache+"/.", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("sambatest: copy %s: %v\n%s", cache, err, out)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tls"), 0o700); err != nil {
		return nil, err
	}
	if err := testca.Write(filepath.Join(dir, "tls"), HostName+"."+DNSDomain); err != nil {
		return nil, fmt.Errorf("sambatest: certificates: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "etc", "smb.conf"), []byte(smbConf(dir, o, true)), 0o644); err != nil {
		return nil, err
	}
	if s.ns, err = newNetns(); err != nil {
		return nil, fmt.Errorf("sambatest: network namespace: %w", err)
	}
	s.ldapFwd = &proxy{ns: s.ns, target: "127.0.0.1:389"}
	s.tlsFwd = &proxy{ns: s.ns, target: "127.0.0.1:636"}
	if err := s.ldapFwd.listen(); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.tlsFwd.listen(); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.start(); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.runtimeFixtures(); err != nil {
		s.Close()
		return nil, fmt.Errorf("sambatest: fixtures: %w\n%s", err, s.Output())
	}
	return s, nil
}

// smbConf is the configuration of a DC whose state lives under dir. At
// run time only the LDAP server runs ("server services = ldap"): no
// SMB, Kerberos, DNS, RPC or NetBIOS, nothing that listens beyond LDAP.
func smbConf(dir string, o options, run bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# generated by internal/sambatest
[global]
	netbios name = %s
	realm = %s
	workgroup = %s
	server role = active directory domain controller
	interfaces = lo
	bind interfaces only = yes
	private dir = %[4]s/private
	lock directory = %[4]s
	state directory = %[4]s/state
	cache directory = %[4]s/cache
	binddns dir = %[4]s/bind-dns
	pid directory = %[4]s/run
	ncalrpc dir = %[4]s/run/ncalrpc
	winbindd socket directory = %[4]s/run/winbindd
	ntp signd socket directory = %[4]s/run/ntp_signd
	usershare path = %[4]s/usershares
	log file = %[4]s/log/samba.log
	idmap_ldb:use rfc2307 = yes
`, strings.ToUpper(HostName), Realm, Domain, dir)
	if run {
		fmt.Fprintf(&b, `	server services = ldap
	tls enabled = yes
	tls certfile = %[1]s/tls/%[2]s
	tls keyfile = %[1]s/tls/%[3]s
	tls cafile = %[1]s/tls/%[4]s
`, dir, testca.CertFile, testca.KeyFile, testca.CAFile)
		if o.plainBinds {
			b.WriteString("\tldap server require strong auth = no\n")
		}
	}
	return b.String()
}

// start runs samba (one process: -M single) inside the namespace and waits
// until it answers a RootDSE search through the forwarded port.
func (s *Server) start() error {
	for _, d := range []string{"run", "log"} {
		if err := os.MkdirAll(filepath.Join(s.Dir, d), 0o755); err != nil {
			return err
		}
	}
	os.Remove(filepath.Join(s.Dir, "run", "samba.pid"))
	cmd := exec.Command(SambaPath, "-i", "-M", "single", "--debug-stdout", "-d", "1",
		"-s", filepath.Join(s.Dir, "etc", "smb.conf"))
	cmd.Stdout, cmd.Stderr = s.out, s.out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var err error
	if e := s.ns.do(func() { err = cmd.Start() }); e != nil {
		return e
	}
	if err != nil {
		return fmt.Errorf("sambatest: start samba: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done, s.stopped = cmd, done, false
	s.mu.Unlock()
	deadline := time.Now().Add(s.opts.readyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-done:
			return fmt.Errorf("sambatest: samba exited during start-up; output:\n%s", s.Output())
		default:
		}
		if lastErr = peertest.PingLDAP(s.URL()); lastErr == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.Stop()
	return fmt.Errorf("sambatest: samba not ready after %v (%v); output:\n%s", s.opts.readyTimeout, lastErr, s.Output())
}

// Admin returns a connection over LDAPS bound as Administrator; the caller closes it.
func (s *Server) Admin() (*ldap.Conn, error) {
	tc, err := s.TLSConfig()
	if err != nil {
		return nil, err
	}
	c, err := ldap.DialURL(s.LDAPSURL(), ldap.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}), ldap.DialWithTLSConfig(tc))
	if err != nil {
		return nil, err
	}
	c.SetTimeout(10 * time.Second)
	if err := c.Bind(AdminDN, AdminPass); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// SetIdleTimeout sets MaxConnIdleTime (seconds) in the Default Query
// Policy's lDAPAdminLimits; Samba reads it for each new connection and
// drops connections idle that long (AD default 900).
func (s *Server) SetIdleTimeout(seconds int) error {
	c, err := s.Admin()
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := c.Search(ldap.NewSearchRequest(QueryPolDN, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"lDAPAdminLimits"}, nil))
	if err != nil {
		return err
	}
	m := ldap.NewModifyRequest(QueryPolDN, nil)
	for _, e := range res.Entries {
		for _, v := range e.GetAttributeValues("lDAPAdminLimits") {
			if strings.HasPrefix(strings.ToLower(v), "maxconnidletime=") {
				m.Delete("lDAPAdminLimits", []string{v})
			}
		}
	}
	m.Add("lDAPAdminLimits", []string{"MaxConnIdleTime=" + strconv.Itoa(seconds)})
	return c.Modify(m)
}

// Stop kills samba (SIGKILL, like a crash) and closes the forwarded ports,
// so new connections are refused as by a server that is down. The data
// stays; Restart brings it back on the same ports. Calling Stop twice is
// harmless.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.stopped = true
	s.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		cmd.Process.Signal(syscall.SIGCONT)
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // samba and any helper it forked
		<-done
	}
	if s.ldapFwd != nil {
		s.ldapFwd.closeListener()
	}
	if s.tlsFwd != nil {
		s.tlsFwd.closeListener()
	}
}

// Restart stops samba if it runs and starts it again (same ports, data).
func (s *Server) Restart() error {
	s.Stop()
	if err := s.ldapFwd.listen(); err != nil {
		return err
	}
	if err := s.tlsFwd.listen(); err != nil {
		return err
	}
	return s.start()
}

// Pause freezes samba with SIGSTOP: connections are still accepted (by the
// kernel, and by the forwarder) but never answered.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume continues a paused samba (SIGCONT).
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.stopped {
		return errors.New("sambatest: samba is not running")
	}
	if err := syscall.Kill(-s.cmd.Process.Pid, sig); err != nil {
		return err
	}
	if sig != syscall.SIGSTOP {
		return nil
	}
	if err := peertest.WaitStopped(s.cmd.Process.Pid, 5*time.Second); err != nil {
		return fmt.Errorf("sambatest: samba: %w", err)
	}
	return nil
}

// Close stops samba, the forwarders and the namespace. Dir stays (it
// belongs to the caller).
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.Stop()
	if s.ldapFwd != nil {
		s.ldapFwd.shut()
	}
	if s.tlsFwd != nil {
		s.tlsFwd.shut()
	}
	if s.ns != nil {
		s.ns.close()
	}
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}
