// Package slapdtest runs a real OpenLDAP slapd for integration tests,
// benchmarks and the demo: its own temp directory, free loopback ports, a
// generated test CA, and the fixture directory from testdata/ldap.
//
// Tests call Start(t); helper programs (make demo, make bench) call Launch.
package slapdtest

import (
	"bufio"
	"bytes"
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"

	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/mailauthd/mailauthd/internal/testca"
)

// Fixed identities of the test directory.
const (
	Suffix          = "dc=example,dc=org"
	PeopleDN        = "ou=people,dc=example,dc=org"
	AdminDN         = "cn=admin,dc=example,dc=org"
	AdminPassword   = "adminpw"
	ServiceDN       = "cn=mailauthd,ou=services,dc=example,dc=org" // search service account in users.ldif
	ServicePassword = "servicepw"
)

// SlapdPath is the slapd binary; the other tools live beside it.
var SlapdPath = "/usr/sbin/slapd"

// Available reports whether slapd and slapadd are installed.
func Available() bool {
	for _, p := range []string{SlapdPath, toolPath("slapadd")} {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

func toolPath(name string) string { return filepath.Join(filepath.Dir(SlapdPath), name) }

// TestdataDir is testdata/ldap of this repository, found from this source
// file's location so it works from any package's tests. Override with the
// env MAILAUTHD_LDAP_TESTDATA (e.g. for a binary built with -trimpath).
func TestdataDir() string {
	if d := os.Getenv("MAILAUTHD_LDAP_TESTDATA"); d != "" {
		return d
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return filepath.Join("testdata", "ldap")
	}
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata", "ldap")
}

type options struct {
	ldif            []string // files loaded in order; default users.ldif
	users           int      // generated uid=userN / passN entries
	ldaps           bool
	untrusted       bool
	noAnonymousRead bool
	unauthBind      bool
	syncProv        bool
	ppolicy         bool
	idleTimeout     int
	referrals       bool
	memberOf        bool
	certNames       *certNames
	readyTimeout    time.Duration
}

type certNames struct {
	cn  string
	dns []string
	ips []net.IP
}

// Option changes how the server is set up.
type Option func(*options)

// WithLDIF loads these LDIF files instead of testdata/ldap/users.ldif. The
// first one must create the suffix entry dc=example,dc=org.
func WithLDIF(paths ...string) Option { return func(o *options) { o.ldif = paths } }

// WithUsers adds n generated users uid=user0..user<n-1> under ou=people with
// password "pass<N>" ({SSHA}) and host: *, for benchmarks.
func WithUsers(n int) Option { return func(o *options) { o.users = n } }

// WithLDAPS also listens for ldaps:// on a second port (see LDAPSURL).
func WithLDAPS() Option { return func(o *options) { o.ldaps = true } }

// WithUntrustedCert makes slapd present a self-signed certificate that the
// test CA (CAFile) did not sign, for certificate-refusal tests.
func WithUntrustedCert() Option { return func(o *options) { o.untrusted = true } }

// WithoutAnonymousRead hides all entries from anonymous clients (they may
// still bind), so only a service account can search.
func WithoutAnonymousRead() Option { return func(o *options) { o.noAnonymousRead = true } }

// WithUnauthenticatedBind allows RFC 4513 unauthenticated binds (a DN with an
// empty password succeeds as anonymous: "allow bind_anon_dn"), the server
// setting that makes an empty password dangerous for naive clients.
func WithUnauthenticatedBind() Option { return func(o *options) { o.unauthBind = true } }

// WithSyncProv loads the syncprov overlay on the database, so the server
// offers RFC 4533 content synchronisation (refreshAndPersist searches).
func WithSyncProv() Option { return func(o *options) { o.syncProv = true } }

// WithPPolicy loads the ppolicy overlay (OpenLDAP 2.5: the module carries
// its schema) with cn=default,ou=policies as the default policy —
// pwdMaxFailure 3, pwdLockout TRUE until an administrator unlocks,
// pwdMustChange TRUE — and the accounts of testdata/ldap/ppolicy.ldif:
// uid=pplocked (pwdAccountLockedTime 000001010000Z), uid=ppmustchange
// (pwdReset TRUE), uid=ppexpired (expired, no grace), uid=ppgrace (expired,
// two grace binds) and uid=pplockable; each password is "<uid>pw". The
// default policy then applies to every other user too. ppolicy_use_lockout
// is on, so a locked account's bind says accountLocked in the response
// control. FINDINGS-ppolicy.md has what binds return.
func WithPPolicy() Option { return func(o *options) { o.ppolicy = true } }

// WithIdleTimeout sets slapd's idletimeout (seconds): connections idle that
// long are closed.
func WithIdleTimeout(seconds int) Option { return func(o *options) { o.idleTimeout = seconds } }

// WithReferrals also loads testdata/ldap/referrals.ldif: 20 referral
// objects under ou=people (cn=referral0..19), so a subtree search of the
// people base returns 20 search continuation references beside its
// entries unless it sends ManageDsaIT. Their URLs point at 127.0.0.1:1.
func WithReferrals() Option { return func(o *options) { o.referrals = true } }

// WithMemberOf loads the memberof overlay: adding a groupOfNames (over
// LDAP, not slapadd) gives each member a memberOf value naming it. It
// lists direct groups only (no nesting).
func WithMemberOf() Option { return func(o *options) { o.memberOf = true } }

// WithCertNames makes slapd's certificate (signed by the test CA) carry
// exactly this common name and these subject alternative names, for tests
// of a certificate that does not match the name dialled (none at all:
// like Samba's provisioned certificate; only DNS:localhost: like
// 389-ds's self-signed one).
func WithCertNames(cn string, dns []string, ips []net.IP) Option {
	return func(o *options) { o.certNames = &certNames{cn, dns, ips} }
}

// WithReadyTimeout bounds the wait for slapd to answer (default 15s).
func WithReadyTimeout(d time.Duration) Option { return func(o *options) { o.readyTimeout = d } }

// Server is one running slapd.
type Server struct {
	Dir  string // working directory: config, database, certificates
	Port int    // ldap:// port on 127.0.0.1
	// TLSPort is the ldaps:// port, 0 unless WithLDAPS.
	TLSPort int

	opts   options
	caFile string

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has exited
	stderr  *tailBuffer
	paused  bool
	stopped bool
}

// URL is ldap://127.0.0.1:PORT.
func (s *Server) URL() string { return "ldap://127.0.0.1:" + strconv.Itoa(s.Port) }

// LDAPSURL is ldaps://127.0.0.1:PORT, or "" without WithLDAPS.
func (s *Server) LDAPSURL() string {
	if s.TLSPort == 0 {
		return ""
	}
	return "ldaps://127.0.0.1:" + strconv.Itoa(s.TLSPort)
}

// CAFile is the PEM file of the test CA that signed slapd's certificate.
func (s *Server) CAFile() string { return s.caFile }

// AdminDN and AdminPassword are the rootdn credentials.
func (s *Server) AdminDN() string       { return AdminDN }
func (s *Server) AdminPassword() string { return AdminPassword }

// Stderr returns the last part of slapd's output, for failure messages.
func (s *Server) Stderr() string { return s.stderr.String() }

// Launch prepares dir (config, certificates, database loaded with slapadd)
// and starts slapd on free loopback ports, returning once it answers a
// RootDSE search. The caller must call Stop.
func Launch(dir string, opts ...Option) (*Server, error) {
	o := options{readyTimeout: 15 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	if len(o.ldif) == 0 {
		o.ldif = []string{filepath.Join(TestdataDir(), "users.ldif")}
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, opts: o, stderr: newTailBuffer(64 << 10)}
	if err := s.prepare(); err != nil {
		return nil, err
	}
	// A port picked by listening on :0 and closing can be taken again
	// before slapd binds it; retry with new ports a few times.
	for attempt := 0; ; attempt++ {
		if s.Port, err = freePort(); err != nil {
			return nil, err
		}
		if o.ldaps {
			if s.TLSPort, err = freePort(); err != nil {
				return nil, err
			}
		}
		err = s.start()
		if err == nil || attempt == 2 || !strings.Contains(s.stderr.String(), "Address already in use") {
			return s, err
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var confTemplate = template.Must(template.New("slapd.conf").Parse(`# generated by internal/slapdtest
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/misc.schema
include {{.Testdata}}/ldapns.schema
# Debian's packaged slapd logs nothing (olcLogLevel: none); the default,
# stats, would try syslog for every operation: with no /dev/log here, a
# failed socket connect each time, costing slapd CPU in every benchmark.
loglevel none
pidfile {{.Dir}}/slapd.pid
argsfile {{.Dir}}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
{{if .SyncProv}}moduleload syncprov
{{end}}{{if .PPolicy}}moduleload ppolicy
{{end}}{{if .MemberOf}}moduleload memberof
{{end}}{{if .IdleTimeout}}idletimeout {{.IdleTimeout}}
{{end}}TLSCACertificateFile {{.Dir}}/ca.pem
TLSCertificateFile {{.Dir}}/{{.CertName}}.pem
TLSCertificateKeyFile {{.Dir}}/{{.CertName}}.key
{{if .UnauthBind}}allow bind_anon_dn
{{end}}
database mdb
maxsize {{.MaxSize}}
suffix "` + Suffix + `"
rootdn "` + AdminDN + `"
rootpw ` + AdminPassword + `
directory {{.Dir}}/db
index objectClass eq
index uid eq
index mail eq
{{if .SyncProv}}index entryUUID,entryCSN eq
{{end}}access to dn.base=""
	by * read
access to attrs=userPassword
	by self =xw
	by anonymous auth
	by * none
access to *
	by users read
	by anonymous {{if .NoAnonymousRead}}auth{{else}}read{{end}}
	by * none
{{if .SyncProv}}overlay syncprov
{{end}}{{if .MemberOf}}overlay memberof
memberof-group-oc groupOfNames
memberof-member-ad member
memberof-memberof-ad memberOf
{{end}}{{if .PPolicy}}overlay ppolicy
ppolicy_default "cn=default,ou=policies,` + Suffix + `"
ppolicy_use_lockout
{{end}}`))

func (s *Server) prepare() error {
	o := s.opts
	if err := os.MkdirAll(filepath.Join(s.Dir, "db"), 0o700); err != nil {
		return err
	}
	s.caFile = filepath.Join(s.Dir, "ca.pem")
	if n := o.certNames; n != nil {
		if err := testca.WriteWithNames(s.Dir, n.cn, n.dns, n.ips); err != nil {
			return fmt.Errorf("slapdtest: certificates: %w", err)
		}
	} else if err := writeCertificates(s.Dir); err != nil {
		return fmt.Errorf("slapdtest: certificates: %w", err)
	}
	certName := "server"
	if o.untrusted {
		certName = "untrusted"
	}
	var conf bytes.Buffer
	err := confTemplate.Execute(&conf, map[string]any{
		"Testdata": TestdataDir(), "Dir": s.Dir, "CertName": certName,
		"UnauthBind": o.unauthBind, "NoAnonymousRead": o.noAnonymousRead,
		"SyncProv": o.syncProv, "PPolicy": o.ppolicy, "IdleTimeout": o.idleTimeout, "MemberOf": o.memberOf,
		"MaxSize": mdbMaxSize(o.users),
	})
	if err != nil {
		return err
	}
	confPath := filepath.Join(s.Dir, "slapd.conf")
	if err := os.WriteFile(confPath, conf.Bytes(), 0o600); err != nil {
		return err
	}
	ldifs := append([]string(nil), o.ldif...)
	if o.ppolicy {
		ldifs = append(ldifs, filepath.Join(TestdataDir(), "ppolicy.ldif"))
	}
	if o.referrals {
		ldifs = append(ldifs, filepath.Join(TestdataDir(), "referrals.ldif"))
	}
	if o.users > 0 {
		p := filepath.Join(s.Dir, "generated-users.ldif")
		if err := writeGeneratedUsers(p, o.users); err != nil {
			return err
		}
		ldifs = append(ldifs, p)
	}
	for _, l := range ldifs {
		// -q: quick mode, no consistency checks; the fixtures are ours.
		cmd := exec.Command(toolPath("slapadd"), "-q", "-f", confPath, "-l", l)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("slapdtest: slapadd %s: %w\n%s", l, err, out)
		}
	}
	return nil
}

// GeneratedUserPassword is the password WithUsers gives uid=user<n>.
func GeneratedUserPassword(n int) string { return "pass" + strconv.Itoa(n) }

// mdbMaxSize is the database's map size: 256 MiB for the fixtures, plus
// about 4 KiB per generated user (a 1,000,000-user directory takes ~1.6 GB
// with its indexes). It is address space, not memory: the file grows as used.
func mdbMaxSize(users int) int64 { return 256<<20 + int64(users)*4096 }

func writeGeneratedUsers(path string, n int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	b := bufio.NewWriterSize(f, 1<<20)
	salt := []byte("slapdtst")
	for i := 0; i < n; i++ {
		h := sha1.New()
		h.Write([]byte(GeneratedUserPassword(i)))
		h.Write(salt)
		ssha := base64.StdEncoding.EncodeToString(append(h.Sum(nil), salt...))
		fmt.Fprintf(b, "dn: uid=user%d,%s\nobjectClass: inetOrgPerson\nobjectClass: hostObject\n"+
			"uid: user%d\ncn: user%d\nsn: user%d\nhost: *\nuserPassword: {SSHA}%s\n\n",
			i, PeopleDN, i, i, i, ssha)
	}
	if err := b.Flush(); err != nil {
		return err
	}
	return f.Close()
}

// start runs slapd in the foreground (-d 0 keeps it attached and quiet) and
// waits until it answers.
func (s *Server) start() error {
	urls := "ldap://127.0.0.1:" + strconv.Itoa(s.Port) + "/"
	if s.TLSPort != 0 {
		urls += " ldaps://127.0.0.1:" + strconv.Itoa(s.TLSPort) + "/"
	}
	cmd := exec.Command(SlapdPath, "-d", "0", "-f", filepath.Join(s.Dir, "slapd.conf"), "-h", urls)
	cmd.Stdout = s.stderr
	cmd.Stderr = s.stderr
	// Own process group: a Ctrl-C in the terminal goes to the test binary,
	// whose cleanup stops slapd, not to slapd directly.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("slapdtest: start slapd: %w", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	s.mu.Lock()
	s.cmd, s.done, s.stopped, s.paused = cmd, done, false, false
	s.mu.Unlock()
	if err := s.waitReady(done); err != nil {
		s.Stop()
		return err
	}
	return nil
}

func (s *Server) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(s.opts.readyTimeout)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("slapdtest: slapd exited during start-up; output:\n%s", s.stderr.String())
		default:
		}
		if lastErr = peertest.PingLDAP(s.URL()); lastErr == nil {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("slapdtest: slapd not ready after %v (%v); output:\n%s", s.opts.readyTimeout, lastErr, s.stderr.String())
}

// Stop kills slapd (SIGKILL, like a crash) and waits for it to exit. The
// data stays; Restart brings the same server back on the same ports.
// Calling Stop twice is harmless.
func (s *Server) Stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.stopped = true
	s.paused = false
	s.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGCONT) // a stopped process still dies of SIGKILL, but be explicit
	cmd.Process.Kill()
	<-done
}

// Restart stops slapd if it runs and starts it again with the same ports and data.
func (s *Server) Restart() error {
	s.Stop()
	var err error
	// The kernel may keep the listening port briefly; retry for a moment.
	for i := 0; i < 20; i++ {
		if err = s.start(); err == nil || !strings.Contains(s.stderr.String(), "Address already in use") {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Pause freezes slapd with SIGSTOP: connections are accepted by the kernel
// but never answered, like a stuck server.
// Pause returns once every slapd thread is stopped (signal delivery is
// asynchronous), so no request sent afterwards is answered.
func (s *Server) Pause() error {
	if err := s.signal(syscall.SIGSTOP, true); err != nil {
		return err
	}
	s.mu.Lock()
	pid := s.cmd.Process.Pid
	s.mu.Unlock()
	if err := peertest.WaitStopped(pid, 5*time.Second); err != nil {
		return fmt.Errorf("slapdtest: slapd: %w", err)
	}
	return nil
}

// Resume continues a paused slapd (SIGCONT).
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT, false) }

func (s *Server) signal(sig syscall.Signal, paused bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.stopped {
		return errors.New("slapdtest: slapd is not running")
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		return err
	}
	s.paused = paused
	return nil
}

// TLSConfig returns a client TLS configuration trusting the test CA.
func (s *Server) TLSConfig() (*tls.Config, error) {
	pem, err := os.ReadFile(s.caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("slapdtest: no certificate in CA file")
	}
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}, nil
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

var _ io.Writer = (*tailBuffer)(nil)
