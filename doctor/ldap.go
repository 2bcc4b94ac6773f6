package doctor

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/mailauthd/mailauthd/config"
)

// ldapProbe is what one URL's check found.
type ldapProbe struct {
	URL   string
	Steps []string // "dial 1.2ms", in order
	// On failure: the step, the finding code, message and fix.
	FailStep string
	Code     string
	Message  string
	Fix      string
}

func (p *ldapProbe) ok() bool { return p.Code == "" }

func (p *ldapProbe) fail(step, code, msg, fix string) *ldapProbe {
	p.FailStep, p.Code, p.Message, p.Fix = step, code, msg, fix
	return p
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d.Microseconds())/1000)
}

func (c *checker) checkLDAP(ctx context.Context) {
	cfg := c.m.Config
	if cfg == nil {
		return // the configuration finding says why
	}
	path := c.m.ConfigPath
	if len(cfg.LDAP.Directory.URLs) == 0 {
		c.add(Finding{Severity: Critical, Area: AreaLDAP, Code: "ldap-no-urls", Path: path,
			Message: "ldap.urls is empty: no login can succeed", Fix: "set ldap.urls: [ldaps://ldap.yourdomain.tld]"})
		return
	}
	if c.opts.Offline {
		c.add(Finding{Severity: Info, Area: AreaLDAP, Code: "ldap-skipped", Path: path, Message: "LDAP servers not contacted (--offline)"})
		return
	}
	timeout := c.opts.Timeout
	if timeout <= 0 {
		timeout = cfg.LDAP.Directory.Timeout
	}
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	password, pwErr := c.bindPassword(cfg)
	var probes []*ldapProbe
	good := 0
	for _, u := range cfg.LDAP.Directory.URLs {
		p := c.probeLDAP(ctx, u, cfg, password, pwErr, timeout)
		probes = append(probes, p)
		if p.ok() {
			good++
		}
	}
	for _, p := range probes {
		if p.ok() {
			c.add(Finding{Severity: Info, Area: AreaLDAP, Code: "ldap-ok", Path: path,
				Message: p.URL + ": " + strings.Join(p.Steps, ", ")})
			continue
		}
		sev := Critical
		msg := p.Message
		if good > 0 {
			sev = Warning
			msg += " (the other servers in ldap.urls answer, so logins still work through failover)"
		} else if len(probes) > 1 {
			msg += " (no server in ldap.urls works: every login fails)"
		} else {
			msg += ": every login fails"
		}
		if len(p.Steps) > 0 {
			msg += "; before that: " + strings.Join(p.Steps, ", ")
		}
		c.add(Finding{Severity: sev, Area: AreaLDAP, Code: p.Code, Path: path, Message: p.URL + ": " + msg, Fix: p.Fix})
	}
}

// bindPassword is the service account's password as the daemon would
// read it (first line of the file), read with the doctor's rights.
func (c *checker) bindPassword(cfg *config.File) (string, error) {
	if cfg.LDAP.Directory.BindDN == "" {
		return "", nil
	}
	if cfg.LDAP.Directory.BindPasswordFile == "" {
		return cfg.LDAP.Directory.BindPassword, nil
	}
	data, err := c.h.readFile(cfg.LDAP.Directory.BindPasswordFile)
	if err != nil {
		return "", err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSuffix(line, "\r"), nil
}

// tlsCheck verifies the server's certificate itself so the finding can say
// exactly what is wrong (crypto/tls's errors are terse).
type tlsCheck struct {
	roots    *x509.CertPool
	name     string // host from the URL
	insecure bool
	err      error // what VerifyConnection found
	code     string
	fix      string
}

func (t *tlsCheck) config() *tls.Config {
	return &tls.Config{
		InsecureSkipVerify: true, // verified below, with messages
		ServerName:         t.name,
		MinVersion:         tls.VersionTLS12,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if t.insecure {
				return nil
			}
			if len(cs.PeerCertificates) == 0 {
				return t.set("ldap-tls-failed", errors.New("the server sent no certificate"), "")
			}
			leaf := cs.PeerCertificates[0]
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := leaf.Verify(x509.VerifyOptions{Roots: t.roots, Intermediates: inter})
			var ua x509.UnknownAuthorityError
			var ci x509.CertificateInvalidError
			switch {
			case errors.As(err, &ua):
				return t.set("ldap-cert-untrusted", fmt.Errorf("certificate (subject %s) is signed by %s, which is not a trusted CA", leaf.Subject, leaf.Issuer),
					"set ldap.ca_file to the PEM file of the CA that issued it ("+leaf.Issuer.String()+")")
			case errors.As(err, &ci) && ci.Reason == x509.Expired:
				return t.set("ldap-cert-expired", fmt.Errorf("certificate is not valid now: valid from %s to %s", leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339)),
					"renew the LDAP server's certificate")
			case err != nil:
				return t.set("ldap-cert-untrusted", fmt.Errorf("certificate does not verify: %v", err), "set ldap.ca_file to the CA that issued the server's certificate")
			}
			if err := leaf.VerifyHostname(t.name); err != nil {
				return t.set("ldap-cert-name", fmt.Errorf("certificate is valid for %s, not %s", certNames(leaf), t.name),
					fmt.Sprintf("use a name the certificate has in ldap.urls (e.g. %s), or reissue it with %s in its subjectAltName", firstName(leaf), t.name))
			}
			return nil
		},
	}
}

func (t *tlsCheck) set(code string, err error, fix string) error {
	t.code, t.err, t.fix = code, err, fix
	return err
}

func certNames(c *x509.Certificate) string {
	var n []string
	n = append(n, c.DNSNames...)
	for _, ip := range c.IPAddresses {
		n = append(n, ip.String())
	}
	if len(n) == 0 {
		return "no name at all (it has no subjectAltName; the CN " + c.Subject.CommonName + " is not used for names)"
	}
	return strings.Join(n, ", ")
}

func firstName(c *x509.Certificate) string {
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	if len(c.IPAddresses) > 0 {
		return c.IPAddresses[0].String()
	}
	return "a name in its subjectAltName"
}

func (c *checker) probeLDAP(ctx context.Context, raw string, cfg *config.File, password string, pwErr error, timeout time.Duration) *ldapProbe {
	p := &ldapProbe{URL: raw}
	u, err := url.Parse(raw)
	if err != nil {
		return p.fail("url", "ldap-bad-url", fmt.Sprintf("not a URL: %v", err), "write it as ldap://host[:port] or ldaps://host[:port]")
	}
	scheme := strings.ToLower(u.Scheme)
	var network, addr string
	switch scheme {
	case "ldap", "ldaps":
		port := u.Port()
		if port == "" {
			port = map[string]string{"ldap": "389", "ldaps": "636"}[scheme]
		}
		network, addr = "tcp", net.JoinHostPort(u.Hostname(), port)
	case "ldapi":
		sock, _ := url.PathUnescape(u.Host)
		if sock == "" {
			sock = "/var/run/slapd/ldapi"
		}
		network, addr = "unix", c.h.real(sock)
	default:
		return p.fail("url", "ldap-bad-url", "unknown scheme "+u.Scheme, "use ldap://, ldaps:// or ldapi://")
	}

	tc := &tlsCheck{name: u.Hostname(), insecure: cfg.LDAP.Directory.InsecureSkipTLS}
	if scheme == "ldaps" || (scheme == "ldap" && cfg.LDAP.Directory.StartTLS) {
		if cfg.LDAP.Directory.CAFile != "" {
			pem, err := c.h.readFile(cfg.LDAP.Directory.CAFile)
			if err != nil {
				return p.fail("tls", "ldap-ca-file", fmt.Sprintf("ldap.ca_file %s: %v", cfg.LDAP.Directory.CAFile, errors.Unwrap(err)), "point ldap.ca_file at the PEM file of your LDAP servers' CA")
			}
			tc.roots = x509.NewCertPool()
			if !tc.roots.AppendCertsFromPEM(pem) {
				return p.fail("tls", "ldap-ca-file", fmt.Sprintf("ldap.ca_file %s holds no PEM certificate", cfg.LDAP.Directory.CAFile), "point ldap.ca_file at a PEM file (-----BEGIN CERTIFICATE-----)")
			}
		}
	}

	step := func() (context.Context, context.CancelFunc, time.Time) {
		sctx, cancel := context.WithTimeout(ctx, timeout)
		return sctx, cancel, time.Now()
	}
	timedOut := func(err error) bool {
		var ne net.Error
		return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) ||
			(err != nil && (strings.Contains(err.Error(), "timeout") || strings.Contains(err.Error(), "timed out")))
	}

	// 1. dial
	sctx, cancel, t0 := step()
	raw0, err := (&net.Dialer{}).DialContext(sctx, network, addr)
	cancel()
	if err != nil {
		if timedOut(err) {
			return p.fail("dial", "ldap-timeout", fmt.Sprintf("connect to %s timed out after %s", addr, timeout), "check the address, the firewall and that the server runs")
		}
		return p.fail("dial", "ldap-dial-failed", fmt.Sprintf("cannot connect to %s: %v", addr, unwrapNet(err)), "check the address and that the LDAP server runs and listens there")
	}
	p.Steps = append(p.Steps, "connect "+ms(time.Since(t0)))
	conn := raw0
	defer func() { conn.Close() }()

	// 2. TLS for ldaps://
	isTLS := false
	if scheme == "ldaps" {
		sctx, cancel, t0 := step()
		tconn := tls.Client(conn, tc.config())
		err := tconn.HandshakeContext(sctx)
		cancel()
		if err != nil {
			return p.failTLS(tc, err, timeout, "TLS handshake")
		}
		conn = tconn
		isTLS = true
		p.Steps = append(p.Steps, "TLS "+ms(time.Since(t0)))
	}

	l := ldap.NewConn(conn, isTLS)
	l.Start()
	l.SetTimeout(timeout)
	defer l.Close()
	deadline := func() { raw0.SetDeadline(time.Now().Add(timeout)) }

	// 3. StartTLS
	if scheme == "ldap" && cfg.LDAP.Directory.StartTLS {
		deadline()
		t0 := time.Now()
		if err := l.StartTLS(tc.config()); err != nil {
			if tc.err != nil || strings.Contains(err.Error(), "handshake") {
				return p.failTLS(tc, err, timeout, "StartTLS")
			}
			if timedOut(err) {
				return p.fail("starttls", "ldap-timeout", fmt.Sprintf("StartTLS got no answer within %s", timeout), "check the server's load and network")
			}
			return p.fail("starttls", "ldap-starttls-refused", fmt.Sprintf("StartTLS refused: %v", ldapErr(err)), "enable TLS on the server (olcTLSCertificateFile, ...) or use ldaps://")
		}
		p.Steps = append(p.Steps, "StartTLS "+ms(time.Since(t0)))
	}

	// 4. service bind
	if cfg.LDAP.Directory.BindDN != "" {
		if pwErr != nil {
			p.Steps = append(p.Steps, "bind skipped (password file unreadable: "+pwErr.Error()+")")
		} else {
			deadline()
			t0 := time.Now()
			if err := l.Bind(cfg.LDAP.Directory.BindDN, password); err != nil {
				if timedOut(err) {
					return p.fail("bind", "ldap-timeout", fmt.Sprintf("bind as %s got no answer within %s", cfg.LDAP.Directory.BindDN, timeout), "check the server's load")
				}
				fix := "check ldap.bind_dn and the password in " + cfg.LDAP.Directory.BindPasswordFile
				if ldap.IsErrorWithCode(err, ldap.LDAPResultConfidentialityRequired) || ldap.IsErrorWithCode(err, ldap.LDAPResultStrongAuthRequired) {
					fix = "the server wants TLS for binds: set ldap.start_tls: true or use ldaps://"
				}
				return p.fail("bind", "ldap-bind-failed", fmt.Sprintf("service bind as %s failed: %v", cfg.LDAP.Directory.BindDN, ldapErr(err)), fix)
			}
			p.Steps = append(p.Steps, "bind as "+cfg.LDAP.Directory.BindDN+" "+ms(time.Since(t0)))
		}
	}

	// 5. search base
	base := cfg.LDAP.Search.Base
	switch {
	case base == "":
		p.Steps = append(p.Steps, "no ldap.base")
	case strings.Contains(base, "%"):
		p.Steps = append(p.Steps, "base has tokens, not searched")
	default:
		deadline()
		t0 := time.Now()
		req := ldap.NewSearchRequest(base, ldap.ScopeBaseObject, ldap.NeverDerefAliases, 1, int(timeout/time.Second)+1, false, "(objectClass=*)", []string{"1.1"}, nil)
		_, err := l.Search(req)
		if err != nil {
			if ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
				return p.fail("base", "ldap-base-missing", fmt.Sprintf("ldap.base %s does not exist on this server", base), "set ldap.base to the DN above your users (ldapsearch -x -s base -b '' namingContexts shows the suffix)")
			}
			if timedOut(err) {
				return p.fail("base", "ldap-timeout", fmt.Sprintf("search of ldap.base got no answer within %s", timeout), "check the server's load and indexes")
			}
			return p.fail("base", "ldap-search-failed", fmt.Sprintf("reading ldap.base %s failed: %v", base, ldapErr(err)), "check the service account's read rights on "+base)
		}
		p.Steps = append(p.Steps, "base "+base+" exists "+ms(time.Since(t0)))
	}
	deadline()
	l.Unbind()
	return p
}

func (p *ldapProbe) failTLS(tc *tlsCheck, err error, timeout time.Duration, what string) *ldapProbe {
	if tc.err != nil {
		return p.fail("tls", tc.code, what+": "+tc.err.Error(), tc.fix)
	}
	if errors.Is(err, context.DeadlineExceeded) || os.IsTimeout(err) {
		return p.fail("tls", "ldap-timeout", fmt.Sprintf("%s did not finish within %s", what, timeout), "check that the port speaks TLS (ldaps:// is usually 636)")
	}
	return p.fail("tls", "ldap-tls-failed", fmt.Sprintf("%s failed: %v", what, err), "check that the port speaks TLS (ldaps:// is usually 636, StartTLS on 389)")
}

func unwrapNet(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		var se *os.SyscallError
		if errors.As(oe.Err, &se) {
			return se.Err
		}
		return oe.Err
	}
	return err
}

func ldapErr(err error) string {
	var le *ldap.Error
	if errors.As(err, &le) {
		s := ldap.LDAPResultCodeMap[le.ResultCode]
		if le.Err != nil {
			s += ": " + le.Err.Error()
		}
		return s
	}
	return err.Error()
}
