// Package ds389test runs a real 389 Directory Server (Debian package
// 389-ds-base) for integration tests: its own directory tree, free loopback
// ports, a certificate from the shared test CA (internal/testca) whose SANs
// match 127.0.0.1 and localhost, and fixture accounts in each state the
// LDAP decision must tell apart (see fixtures.go and FINDINGS.md).
//
// Nothing is installed system-wide: dscreate runs with PREFIX pointing at a
// private copy of the 389-ds data and defaults.inf (what `dscreate ds-root`
// does for non-root users), so every path of the instance — configuration,
// NSS certificate database, database, logs, LDAPI socket, pid file — lives
// under the harness directory. The only file outside it is the server's
// POSIX semaphore /dev/shm/sem.slapd-NAME.stats, which Close removes; the
// instance name is random so parallel instances do not share it.
//
// After dscreate the harness runs ns-slapd itself in the foreground (-d 0),
// so Stop, Restart, Pause and Resume act on a child process, as in slapdtest.
//
// Tests call Start(t), or share one server per test binary with NewShared.
package ds389test

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
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

// Fixed identities of the test directory.
const (
	Suffix        = "dc=example,dc=org"
	PeopleDN      = "ou=people," + Suffix
	GroupsDN      = "ou=groups," + Suffix
	AdminDN       = "cn=Directory Manager"
	AdminPassword = "Admin-Password-1" // dscreate wants at least 8 characters
	// ServiceDN may read (search, compare) every user attribute but the
	// password; anonymous clients may too (the ACI mirrors slapdtest).
	ServiceDN       = "cn=mailauthd,ou=services," + Suffix
	ServicePassword = "servicepw"
)

// Paths of the 389-ds tools; the defaults are Debian's.
var (
	NsSlapdPath  = "/usr/sbin/ns-slapd"
	DscreatePath = "/usr/sbin/dscreate"
	DsctlPath    = "/usr/sbin/dsctl"
	// DataDir and SysconfDir are the package's read-only data and default
	// configuration, copied into each instance's private prefix.
	DataDir    = "/usr/share/dirsrv"
	SysconfDir = "/etc/dirsrv"
)

// Available reports whether 389-ds-base (ns-slapd, dscreate, dsctl) is installed.
func Available() bool {
	for _, p := range []string{NsSlapdPath, DscreatePath, DsctlPath, filepath.Join(DataDir, "inf", "defaults.inf")} {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

type options struct {
	idleTimeout  int
	referrals    int
	contentSync  bool
	readyTimeout time.Duration
}

// Option changes how the server is set up.
type Option func(*options)

// WithIdleTimeout sets nsslapd-idletimeout (seconds; 0, the default, means
// never) from the start. SetIdleTimeout changes it on a running server.
func WithIdleTimeout(seconds int) Option { return func(o *options) { o.idleTimeout = seconds } }

// WithReferrals adds n smart-referral entries (objectClass referral,
// ref: ldap://127.0.0.1:1/...) under ou=people, so every subtree search of
// the people base returns n search continuation references beside its
// entries. The ref URLs point at a closed loopback port: a client that
// chases them fails fast and never leaves the machine.
func WithReferrals(n int) Option { return func(o *options) { o.referrals = n } }

// WithContentSync enables the Retro Changelog and Content Synchronization
// plugins, so the server answers RFC 4533 sync requests.
func WithContentSync() Option { return func(o *options) { o.contentSync = true } }

// WithReadyTimeout bounds the wait for ns-slapd to answer (default 60s).
func WithReadyTimeout(d time.Duration) Option { return func(o *options) { o.readyTimeout = d } }

// Server is one 389-ds instance.
type Server struct {
	Dir      string // harness directory: prefix, certificates, logs
	Instance string // instance name (slapd-NAME)
	Port     int    // ldap:// port on 127.0.0.1
	TLSPort  int    // ldaps:// port on 127.0.0.1

	opts      options
	prefix    string // PREFIX for the lib389 tools
	configDir string
	logDir    string
	pidFile   string
	socketDir string // set when the LDAPI socket had to move to a short path

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	stopped bool
	closed  bool
}

// URL is ldap://127.0.0.1:PORT.
func (s *Server) URL() string { return "ldap://127.0.0.1:" + strconv.Itoa(s.Port) }

// LDAPSURL is ldaps://127.0.0.1:PORT.
func (s *Server) LDAPSURL() string { return "ldaps://127.0.0.1:" + strconv.Itoa(s.TLSPort) }

// CAFile is the PEM file of the test CA that signed the server certificate.
func (s *Server) CAFile() string { return filepath.Join(s.Dir, testca.CAFile) }

// AdminDN and AdminPassword are the Directory Manager's credentials.
func (s *Server) AdminDN() string       { return AdminDN }
func (s *Server) AdminPassword() string { return AdminPassword }

// BaseDN is the suffix.
func (s *Server) BaseDN() string { return Suffix }

// TLSConfig trusts the test CA and verifies the name 127.0.0.1.
func (s *Server) TLSConfig() (*tls.Config, error) {
	return testca.ClientConfig(s.CAFile(), "127.0.0.1")
}

// ErrorLog returns the last part of the instance's errors log, for failure messages.
func (s *Server) ErrorLog() string {
	b, _ := os.ReadFile(filepath.Join(s.logDir, "errors"))
	if len(b) > 8<<10 {
		b = b[len(b)-8<<10:]
	}
	return string(b)
}

// AccessLog returns the instance's access log (written unbuffered): one
// line per connection, operation and result, and how each connection
// ended ("Disconnect - Cleanly Closed Connection - U1" after an unbind,
// "Disconnect - Bad Ber Tag or uncleanly closed connection - B1" for a
// close without one).
func (s *Server) AccessLog() string {
	b, _ := os.ReadFile(filepath.Join(s.logDir, "access"))
	return string(b)
}

// Launch creates an instance in dir (which must exist), starts it on free
// loopback ports and loads the fixtures, returning once it answers. The
// caller must call Close.
func Launch(dir string, opts ...Option) (*Server, error) {
	o := options{readyTimeout: 60 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, Instance: "mat" + hex.EncodeToString(rnd[:]), opts: o}
	s.prefix = filepath.Join(dir, "root")
	s.configDir = filepath.Join(s.prefix, "etc", "dirsrv", "slapd-"+s.Instance)
	s.logDir = filepath.Join(s.prefix, "var", "log", "dirsrv", "slapd-"+s.Instance)
	s.pidFile = filepath.Join(dir, "ns-slapd.pid")
	if err := s.create(); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.start(); err != nil {
		s.Close()
		return nil, err
	}
	if err := s.loadFixtures(); err != nil {
		s.Close()
		return nil, fmt.Errorf("ds389test: fixtures: %w", err)
	}
	return s, nil
}

// create makes the private prefix, runs dscreate, imports the certificate
// and edits dse.ldif while the instance is stopped.
func (s *Server) create() error {
	if err := s.makePrefix(); err != nil {
		return fmt.Errorf("ds389test: prefix: %w", err)
	}
	if err := testca.Write(s.Dir); err != nil {
		return fmt.Errorf("ds389test: certificates: %w", err)
	}
	ldapi := filepath.Join(s.prefix, "run", "slapd-"+s.Instance+".socket")
	if len(ldapi) > 100 { // sun_path holds 108 bytes
		d, err := os.MkdirTemp("", "ds389")
		if err != nil {
			return err
		}
		s.socketDir = d
		ldapi = filepath.Join(d, "s.socket")
	}
	u, err := user.Current()
	if err != nil {
		return err
	}
	g, err := user.LookupGroupId(u.Gid)
	if err != nil {
		return err
	}
	var lastErr error
	// A port picked by listening on :0 can be taken before ns-slapd binds it;
	// dscreate refuses busy ports, so retry with new ones.
	for attempt := 0; attempt < 3; attempt++ {
		if s.Port, err = freePort(); err != nil {
			return err
		}
		if s.TLSPort, err = freePort(); err != nil {
			return err
		}
		inf := fmt.Sprintf(`[general]
full_machine_name = localhost
strict_host_checking = False
start = False
systemd = False
selinux = False

[slapd]
instance_name = %s
user = %s
group = %s
port = %d
secure_port = %d
root_dn = %s
root_password = %s
self_sign_cert = False
ldapi = %s

[backend-userroot]
suffix = %s
create_suffix_entry = True
sample_entries = no
`, s.Instance, u.Username, g.Name, s.Port, s.TLSPort, AdminDN, AdminPassword, ldapi, Suffix)
		infPath := filepath.Join(s.Dir, "instance.inf")
		if err := os.WriteFile(infPath, []byte(inf), 0o600); err != nil {
			return err
		}
		out, err := s.tool(DscreatePath, "from-file", infPath)
		if err == nil {
			lastErr = nil
			break
		}
		lastErr = fmt.Errorf("ds389test: dscreate: %w\n%s", err, redact(out))
		if !bytes.Contains(out, []byte("already in use")) {
			break
		}
		os.RemoveAll(filepath.Join(s.prefix, "etc", "dirsrv", "slapd-"+s.Instance))
	}
	if lastErr != nil {
		return lastErr
	}
	if out, err := s.tool(DsctlPath, s.Instance, "tls", "import-ca", s.CAFile(), "mailauthd test CA"); err != nil {
		return fmt.Errorf("ds389test: import CA: %w\n%s", err, out)
	}
	if out, err := s.tool(DsctlPath, s.Instance, "tls", "import-server-key-cert",
		filepath.Join(s.Dir, testca.CertFile), filepath.Join(s.Dir, testca.KeyFile)); err != nil {
		return fmt.Errorf("ds389test: import server certificate: %w\n%s", err, out)
	}
	return s.editDSE()
}

// tool runs a lib389 command against the private prefix.
func (s *Server) tool(path string, args ...string) ([]byte, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), "PREFIX="+s.prefix, "INSTALL_PREFIX="+s.prefix)
	cmd.Dir = s.Dir
	return cmd.CombinedOutput()
}

// redact hides the Directory Manager password should a tool echo it.
func redact(b []byte) string { return strings.ReplaceAll(string(b), AdminPassword, "********") }

// makePrefix lays out what `dscreate ds-root` would: the package data and
// default configuration under s.prefix, and a defaults.inf whose paths all
// point there, with the system binaries and plugins.
func (s *Server) makePrefix() error {
	share := filepath.Join(s.prefix, "share", "dirsrv")
	if err := os.MkdirAll(filepath.Join(share, "inf"), 0o755); err != nil {
		return err
	}
	for _, d := range []string{"data", "schema", "mibs"} {
		if _, err := os.Stat(filepath.Join(DataDir, d)); err == nil {
			if err := os.Symlink(filepath.Join(DataDir, d), filepath.Join(share, d)); err != nil {
				return err
			}
		}
	}
	for _, d := range []string{"config", "schema"} {
		if err := copyTree(filepath.Join(SysconfDir, d), filepath.Join(s.prefix, "etc", "dirsrv", d)); err != nil {
			return err
		}
	}
	for _, d := range []string{"tmp", "run"} {
		if err := os.MkdirAll(filepath.Join(s.prefix, d), 0o755); err != nil {
			return err
		}
	}
	src, err := os.ReadFile(filepath.Join(DataDir, "inf", "defaults.inf"))
	if err != nil {
		return err
	}
	fixed := map[string]string{
		"with_systemd": "0", "with_selinux": "no",
		"prefix": s.prefix, "data_dir": filepath.Join(s.prefix, "share"),
		"bin_dir": "/usr/bin", "sbin_dir": filepath.Dir(NsSlapdPath),
		"inst_dir":          filepath.Join(s.prefix, "lib", "slapd-{instance_name}"),
		"system_schema_dir": filepath.Join(share, "schema"),
	}
	var out strings.Builder
	for _, line := range strings.SplitAfter(string(src), "\n") {
		k, v, ok := strings.Cut(line, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok || strings.HasPrefix(k, ";") || strings.HasPrefix(k, "#"):
		case fixed[k] != "":
			line = k + " = " + fixed[k] + "\n"
		case k == "lib_dir" || k == "plugin_dir":
			// the system's libraries and plugins
		case strings.HasPrefix(v, "/"):
			line = k + " = " + filepath.Join(s.prefix, v) + "\n"
		}
		out.WriteString(line)
	}
	return os.WriteFile(filepath.Join(share, "inf", "defaults.inf"), []byte(out.String()), 0o644)
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		t := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(t, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(t, b, 0o644)
	})
}

// editDSE sets, in the stopped instance's dse.ldif, what only takes effect
// at start-up: TLS on, loopback-only listeners, local password policies,
// the memberOf plugin (and the content synchronisation plugins).
func (s *Server) editDSE() error {
	path := filepath.Join(s.configDir, "dse.ldif")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	cfg := map[string]string{
		"nsslapd-security":         "on",
		"nsslapd-listenhost":       "127.0.0.1",
		"nsslapd-securelistenhost": "127.0.0.1",
		"nsslapd-pwpolicy-local":   "on",
		"nsslapd-idletimeout":      strconv.Itoa(s.opts.idleTimeout),
		// Write access and error logs at once, so a failing test can show them.
		"nsslapd-accesslog-logbuffering": "off",
	}
	entries := map[string]map[string]string{
		"cn=config": cfg,
		"cn=MemberOf Plugin,cn=plugins,cn=config": {"nsslapd-pluginEnabled": "on"},
	}
	if s.opts.contentSync {
		entries["cn=Retro Changelog Plugin,cn=plugins,cn=config"] = map[string]string{"nsslapd-pluginEnabled": "on"}
		entries["cn=Content Synchronization,cn=plugins,cn=config"] = map[string]string{"nsslapd-pluginEnabled": "on"}
	}
	out, err := replaceInLDIF(b, entries)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o600)
}

// replaceInLDIF replaces (or adds) single-valued attributes of the named
// entries of an LDIF file; it unfolds the entries it changes.
func replaceInLDIF(src []byte, entries map[string]map[string]string) ([]byte, error) {
	blocks := strings.Split(string(src), "\n\n")
	seen := map[string]bool{}
	for i, blk := range blocks {
		lines := strings.Split(strings.ReplaceAll(blk, "\n ", ""), "\n")
		if len(lines) == 0 || !strings.HasPrefix(strings.ToLower(lines[0]), "dn: ") {
			continue
		}
		dn := strings.TrimSpace(lines[0][4:])
		var attrs map[string]string
		for k, v := range entries {
			if strings.EqualFold(k, dn) {
				attrs, seen[k] = v, true
			}
		}
		if attrs == nil {
			continue
		}
		keep := lines[:1]
		for _, l := range lines[1:] {
			name, _, _ := strings.Cut(l, ":")
			drop := false
			for a := range attrs {
				if strings.EqualFold(name, a) {
					drop = true
				}
			}
			if !drop && l != "" {
				keep = append(keep, l)
			}
		}
		for a, v := range attrs {
			keep = append(keep, a+": "+v)
		}
		blocks[i] = strings.Join(keep, "\n")
	}
	for k := range entries {
		if !seen[k] {
			return nil, fmt.Errorf("ds389test: dse.ldif has no entry %q", k)
		}
	}
	return []byte(strings.Join(blocks, "\n\n")), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start runs ns-slapd in the foreground and waits until it answers.
func (s *Server) start() error {
	cmd := exec.Command(NsSlapdPath, "-D", s.configDir, "-i", s.pidFile, "-d", "0")
	out, err := os.OpenFile(filepath.Join(s.Dir, "ns-slapd.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = out, out
	// Own process group: a Ctrl-C reaches the test binary, whose cleanup
	// stops the server.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err = cmd.Start()
	out.Close()
	if err != nil {
		return fmt.Errorf("ds389test: start ns-slapd: %w", err)
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
			return fmt.Errorf("ds389test: ns-slapd exited during start-up; errors log:\n%s", s.ErrorLog())
		default:
		}
		if lastErr = peertest.PingLDAP(s.URL()); lastErr == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.Stop()
	return fmt.Errorf("ds389test: ns-slapd not ready after %v (%v); errors log:\n%s", s.opts.readyTimeout, lastErr, s.ErrorLog())
}

// Admin returns a connection bound as Directory Manager; the caller closes it.
func (s *Server) Admin() (*ldap.Conn, error) {
	c, err := ldap.DialURL(s.URL(), ldap.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}))
	if err != nil {
		return nil, err
	}
	c.SetTimeout(10 * time.Second)
	if err := c.Bind(AdminDN, AdminPassword); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Version is the server's version from the root DSE's vendorVersion
// ("389-Directory/3.1.2 B2025.123.0000" → "3.1.2"): Debian 12 ships 2.3,
// Debian 13 ships 3.1, and some behaviour differs (FINDINGS.md).
func (s *Server) Version() (string, error) {
	c, err := s.Admin()
	if err != nil {
		return "", err
	}
	defer c.Close()
	res, err := c.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 10, false,
		"(objectClass=*)", []string{"vendorVersion"}, nil))
	if err != nil {
		return "", err
	}
	if len(res.Entries) != 1 {
		return "", fmt.Errorf("ds389test: root DSE: %d entries", len(res.Entries))
	}
	return parseVendorVersion(res.Entries[0].GetAttributeValue("vendorVersion"))
}

// parseVendorVersion reads "389-Directory/2.3.1 B2023.045.0000".
func parseVendorVersion(v string) (string, error) {
	_, rest, _ := strings.Cut(v, "/")
	ver, _, _ := strings.Cut(rest, " ")
	if ver != "" && ver[0] >= '0' && ver[0] <= '9' {
		return ver, nil
	}
	return "", fmt.Errorf("ds389test: unrecognised vendorVersion %q", v)
}

// MajorVersion is the first number of Version.
func (s *Server) MajorVersion() (int, error) {
	v, err := s.Version()
	if err != nil {
		return 0, err
	}
	major, _, _ := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	if err != nil {
		return 0, fmt.Errorf("ds389test: version %q: %w", v, err)
	}
	return n, nil
}

// SetIdleTimeout changes nsslapd-idletimeout (seconds, 0 = never) on the
// running server. 389-ds applies it to connections opened afterwards.
func (s *Server) SetIdleTimeout(seconds int) error {
	c, err := s.Admin()
	if err != nil {
		return err
	}
	defer c.Close()
	m := ldap.NewModifyRequest("cn=config", nil)
	m.Replace("nsslapd-idletimeout", []string{strconv.Itoa(seconds)})
	return c.Modify(m)
}

// Stop kills ns-slapd (SIGKILL, like a crash) and waits for it to exit. The
// data stays; Restart brings the same server back on the same ports.
// Calling Stop twice is harmless.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.stopped = true
	s.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGCONT)
	cmd.Process.Kill()
	<-done
}

// Restart stops ns-slapd if it runs and starts it again (same ports, data).
func (s *Server) Restart() error {
	s.Stop()
	var err error
	for i := 0; i < 20; i++ {
		if err = s.start(); err == nil || !strings.Contains(s.ErrorLog(), "Address already in use") {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

// Pause freezes ns-slapd with SIGSTOP and returns once every thread is
// stopped: connections are accepted by the kernel but never answered.
func (s *Server) Pause() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.stopped {
		return errors.New("ds389test: ns-slapd is not running")
	}
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	if err := peertest.WaitStopped(s.cmd.Process.Pid, 5*time.Second); err != nil {
		return fmt.Errorf("ds389test: ns-slapd: %w", err)
	}
	return nil
}

// Resume continues a paused ns-slapd (SIGCONT).
func (s *Server) Resume() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.stopped {
		return errors.New("ds389test: ns-slapd is not running")
	}
	return s.cmd.Process.Signal(syscall.SIGCONT)
}

// Close stops the server and removes what it left outside Dir (the stats
// semaphore in /dev/shm, a relocated LDAPI socket directory). Dir itself
// belongs to the caller.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.mu.Unlock()
	s.Stop()
	os.Remove("/dev/shm/sem.slapd-" + s.Instance + ".stats")
	if s.socketDir != "" {
		os.RemoveAll(s.socketDir)
	}
}
