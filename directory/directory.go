// Package directory is mailauthd's LDAP transport: pooled connections to a
// list of servers tried in order, TLS (ldaps:// or StartTLS), the optional
// service-account bind on search connections, and a deadline on every dial
// and every operation. It binds and searches; what a login means is
// package ldapauth's business.
//
// Two clients speak LDAP over the same dial path: "wire" (default), a small
// synchronous client for the three operations a login needs (wireconn.go),
// and "go-ldap" (github.com/go-ldap/ldap/v3), the general client, kept so
// the two can be compared on the same cases and an admin can switch if a
// directory misbehaves with the fast one. The mirror's long searches (paged,
// RFC 4533) always use go-ldap (DialGoLDAP).
package directory

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/mailauthd/mailauthd/auth"
)

// Defaults for zero Config fields.
const (
	DefaultTimeout  = 5 * time.Second
	DefaultPoolSize = 8
	// ClientWire and ClientGoLDAP name the two clients (Config.Client).
	ClientWire   = "wire"
	ClientGoLDAP = "go-ldap"
)

// Config is the transport part of the ldap: section.
type Config struct {
	URLs            []string `yaml:"urls"`                     // tried in order; failover on connection failures
	StartTLS        bool     `yaml:"start_tls"`                // upgrade ldap:// connections; a refused certificate = no connection
	CAFile          string   `yaml:"ca_file"`                  // PEM bundle; empty = system roots
	InsecureSkipTLS bool     `yaml:"tls_insecure_skip_verify"` // off by default; logged loudly when on
	BindDN          string   `yaml:"bind_dn"`                  // empty = anonymous search
	// BindPassword is read from BindPasswordFile by New, or comes from a
	// saslauthd.conf's ldap_bind_pw.
	BindPassword     string        `yaml:"-"`
	BindPasswordFile string        `yaml:"bind_password_file"` // first line, trailing newline stripped
	Timeout          time.Duration `yaml:"timeout"`            // every dial and operation; default 5s
	PoolSize         int           `yaml:"pool_size"`          // default 8; sets max_conns' default (4×)
	MaxConns         int           `yaml:"max_conns"`          // connections in use at once per role
	Client           string        `yaml:"client"`             // "wire" (default) or "go-ldap"
}

// DefaultConfig is what a configuration file starts from.
func DefaultConfig() Config {
	return Config{Timeout: DefaultTimeout, PoolSize: DefaultPoolSize, Client: ClientWire}
}

// Errors a caller tells apart with errors.Is. A result the server sent comes
// back as *ldap.Error with its result code; a failed connection as
// *ldap.Error with code ldap.ErrorNetwork (see IsConnection).
var (
	// ErrBusy: every connection of the role was in use for the whole wait.
	ErrBusy = errors.New("all LDAP connections busy")
	// ErrClosed: the Directory was closed (a reload replaced it, or shutdown).
	ErrClosed = errors.New("directory closed")
	// ErrServiceBind: the service account's bind was refused, a
	// configuration problem rather than an outage.
	ErrServiceBind = errors.New("service account bind refused")
	// ErrTimeout: the operation's deadline (ldap.timeout or the caller's)
	// passed before the server answered.
	ErrTimeout = errors.New("timed out")
	// ErrReferences: a search returned more continuation references than
	// the wire client skips (see maxReferences). Not a protocol error:
	// the server is not marked down.
	ErrReferences = errors.New("too many continuation references")
	// ErrEntryTooLarge: a search result entry is larger than MaxEntrySize
	// (ldap.attributes asks for something photo-sized). The server is not
	// marked down.
	ErrEntryTooLarge = errors.New("entry too large")
)

// IsConnection reports a failed connection (refused, reset, malformed
// answer), as opposed to a result the server sent.
func IsConnection(err error) bool { return ldap.IsErrorWithCode(err, ldap.ErrorNetwork) }

// IsCertificate reports that TLS failed because the server's certificate
// was refused (unknown authority, wrong name, expired).
func IsCertificate(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci)
}

// Observer sees the outcome of every bind and search (for metrics): the
// operation ("bind", "search"), the server that answered or failed ("" if
// none was reached), how long it took and its error.
type Observer func(op, server string, took time.Duration, err error)

// WithObserver reports every operation to o.
func WithObserver(o Observer) Option { return func(d *Directory) { d.observe = o } }

// CertificateProblem says why the server's certificate was refused, with
// the detail an admin needs to fix it: for a name mismatch the names the
// certificate is valid for and the one dialled ("certificate is valid for
// localhost, not 127.0.0.1"). "" when err is no certificate error.
func CertificateProblem(err error) string {
	var he x509.HostnameError
	var ua x509.UnknownAuthorityError
	var ci x509.CertificateInvalidError
	var cv *tls.CertificateVerificationError
	switch {
	case errors.As(err, &he):
		return hostnameProblem(he)
	case errors.As(err, &ua):
		issuer := ""
		if ua.Cert != nil {
			issuer = fmt.Sprintf(" (issuer %q)", ua.Cert.Issuer.String())
		}
		return "certificate signed by an unknown authority" + issuer + ": ldap.ca_file must hold the CA that issued it"
	case errors.As(err, &ci):
		if ci.Reason == x509.Expired {
			return "certificate expired or not yet valid: " + strings.TrimPrefix(ci.Error(), "x509: ")
		}
		return strings.TrimPrefix(ci.Error(), "x509: ")
	case errors.As(err, &cv):
		return strings.TrimPrefix(cv.Err.Error(), "x509: ")
	}
	return ""
}

// hostnameProblem names what the certificate is valid for and what was
// dialled. Go, like every current TLS client, ignores the subject's common
// name: only subject alternative names count.
func hostnameProblem(he x509.HostnameError) string {
	var names []string
	if he.Certificate != nil {
		names = append(names, he.Certificate.DNSNames...)
		for _, ip := range he.Certificate.IPAddresses {
			names = append(names, ip.String())
		}
	}
	if len(names) == 0 {
		cn := ""
		if he.Certificate != nil && he.Certificate.Subject.CommonName != "" {
			cn = fmt.Sprintf(", only the common name %q, which TLS clients ignore", he.Certificate.Subject.CommonName)
		}
		return fmt.Sprintf("certificate has no subject alternative name%s: not valid for %s", cn, he.Host)
	}
	return fmt.Sprintf("certificate is valid for %s, not %s", strings.Join(names, ", "), he.Host)
}

// Reason names the kind of a transport failure in a few words, for a
// TempFail's reason ("timeout", "server certificate not trusted: ...").
func Reason(err error) string {
	var le *ldap.Error
	switch {
	case errors.Is(err, ErrBusy):
		return "all connections busy"
	case errors.Is(err, ErrClosed):
		return "shutting down"
	case errors.Is(err, ErrServiceBind):
		return "service account bind refused"
	case errors.Is(err, ErrReferences):
		return "too many continuation references in the search result"
	case errors.Is(err, ErrEntryTooLarge):
		return fmt.Sprintf("user entry larger than %d KiB (a photo-sized attribute in ldap.attributes?)", MaxEntrySize>>10)
	case IsCertificate(err):
		return "server certificate not trusted: " + CertificateProblem(err)
	case errors.Is(err, ErrTimeout), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return "timeout"
	case errors.As(err, &le) && le.ResultCode == ldap.LDAPResultStrongAuthRequired:
		return "result 8 (strongerAuthRequired: the server wants TLS; use ldaps:// or start_tls)"
	case errors.As(err, &le) && le.ResultCode < ldap.ErrorNetwork:
		return "result " + strconv.Itoa(int(le.ResultCode))
	}
	return "connection failed"
}

// Directory is safe for concurrent use.
type Directory struct {
	observe      Observer
	cfg          Config
	log          *slog.Logger
	servers      []*server
	search, bind *pool
	shared       *Shared
	budget       *budget
	closed       atomic.Bool
	retired      atomic.Bool   // pool nothing more: a reload replaced this Directory
	quit         chan struct{} // closed by Close: stops the probes
	closeOnce    sync.Once
	stats        struct{ staleIdle, staleRetries, failovers atomic.Int64 }
}

// Stats counts how the pool dealt with failed connections.
type Stats struct {
	// StaleIdle: idle connections found closed by the server (idle
	// timeout, restart) before use, and replaced.
	StaleIdle int64
	// StaleRetries: operations whose pooled connection failed, retried on
	// a fresh connection.
	StaleRetries int64
	// Failovers: operations retried on another server after one failed
	// inside the request.
	Failovers int64
}

// Stats returns the counts since New.
func (d *Directory) Stats() Stats {
	return Stats{d.stats.staleIdle.Load(), d.stats.staleRetries.Load(), d.stats.failovers.Load()}
}

// New checks cfg and reads the bind password file. It does not contact
// LDAP: the daemon starts while LDAP is down and answers TempFail until it
// is back.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Directory, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Directory{log: log, quit: make(chan struct{})}
	for _, o := range opts {
		o(d)
	}
	own := d.shared == nil
	if own {
		d.shared = NewShared()
	}
	if err := d.configure(&cfg); err != nil {
		return nil, err
	}
	limit := 0 // a Directory of its own: no cap beyond max_conns per role
	if !own {
		// Shared with other configurations: twice what one may hold.
		limit = 2 * 2 * cfg.MaxConns
	}
	d.cfg = cfg
	if cfg.BindPasswordFile != "" {
		if p := auth.SecretFileProblem(cfg.BindPasswordFile); p != "" {
			log.Warn("ldap.bind_password_file: " + p)
		}
	}
	if cfg.InsecureSkipTLS {
		log.Warn("LDAP TLS certificate verification is OFF (tls_insecure_skip_verify): anyone on the path can impersonate the directory")
	}
	d.search = newPool(d, roleSearch)
	d.bind = newPool(d, roleBind)
	d.budget = &d.shared.budget
	d.budget.register(d, limit)
	return d, nil
}

func (d *Directory) configure(cfg *Config) error {
	if len(cfg.URLs) == 0 {
		return errors.New("ldap.urls: at least one ldap:// or ldaps:// URL is required")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Timeout < 0 || cfg.Timeout > 5*time.Minute {
		return fmt.Errorf("ldap.timeout: %v is out of range (0 < timeout <= 5m)", cfg.Timeout)
	}
	if cfg.PoolSize == 0 {
		cfg.PoolSize = DefaultPoolSize
	}
	if cfg.PoolSize < 0 || cfg.PoolSize > 1024 {
		return fmt.Errorf("ldap.pool_size: %d is out of range (1..1024)", cfg.PoolSize)
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 4 * cfg.PoolSize
	}
	if cfg.MaxConns < cfg.PoolSize || cfg.MaxConns > 4096 {
		return fmt.Errorf("ldap.max_conns: %d is out of range (pool_size..4096)", cfg.MaxConns)
	}
	switch cfg.Client {
	case "":
		cfg.Client = ClientWire
	case ClientWire, ClientGoLDAP:
	default:
		return fmt.Errorf("ldap.client: %q is not %q or %q", cfg.Client, ClientWire, ClientGoLDAP)
	}

	var roots *x509.CertPool
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return fmt.Errorf("ldap.ca_file: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("ldap.ca_file: %s holds no PEM certificate", cfg.CAFile)
		}
	}
	for _, raw := range cfg.URLs {
		s, err := parseServer(raw, cfg, roots, d.shared)
		if err != nil {
			return err
		}
		d.servers = append(d.servers, s)
	}

	if cfg.BindPasswordFile != "" {
		if cfg.BindPassword != "" {
			return errors.New("ldap.bind_password_file: a bind password is also given; keep one")
		}
		pw, err := auth.ReadPasswordFile(cfg.BindPasswordFile)
		if err != nil {
			return fmt.Errorf("ldap.bind_password_file: %w", err)
		}
		cfg.BindPassword = pw
	}
	if cfg.BindDN != "" {
		if _, err := ldap.ParseDN(cfg.BindDN); err != nil {
			return fmt.Errorf("ldap.bind_dn: %w", err)
		}
		if cfg.BindPassword == "" {
			// An empty password would be an unauthenticated bind (RFC 4513):
			// anonymous access while the admin believes a service account is used.
			return errors.New("ldap.bind_dn is set but the bind password is empty (bind_password_file)")
		}
	} else if cfg.BindPassword != "" {
		return errors.New("ldap: a bind password is given without ldap.bind_dn")
	}
	return nil
}

func parseServer(raw string, cfg *Config, roots *x509.CertPool, sh *Shared) (*server, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("ldap.urls: %q: %w", raw, err)
	}
	s := &server{url: raw, h: sh.healthOf(raw)}
	port := ""
	switch strings.ToLower(u.Scheme) {
	case "ldap":
		port = "389"
	case "ldaps":
		port, s.ldaps = "636", true
		if cfg.StartTLS {
			return nil, fmt.Errorf("ldap.urls: %q is ldaps:// but start_tls is on; use one or the other", raw)
		}
	default:
		return nil, fmt.Errorf("ldap.urls: %q: scheme must be ldap:// or ldaps://", raw)
	}
	if u.Hostname() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return nil, fmt.Errorf("ldap.urls: %q: want scheme://host[:port] only", raw)
	}
	if u.Port() != "" {
		port = u.Port()
	}
	s.addr = net.JoinHostPort(u.Hostname(), port)
	if s.ldaps || cfg.StartTLS {
		s.tls = &tls.Config{
			ServerName:         u.Hostname(),
			RootCAs:            roots,
			MinVersion:         tls.VersionTLS12,
			InsecureSkipVerify: cfg.InsecureSkipTLS,
		}
	}
	return s, nil
}

// Identity says how searches are made, for --explain and doctor.
func (d *Directory) Identity() string {
	if d.cfg.BindDN == "" {
		return "anonymously"
	}
	return "as " + d.cfg.BindDN
}

// Timeout is the bound on each operation (ldap.timeout).
func (d *Directory) Timeout() time.Duration { return d.cfg.Timeout }

// Close closes the idle connections (politely, with an UnbindRequest);
// operations after Close fail with ErrClosed. Connections in use are
// closed when their operation returns.
func (d *Directory) Close() error {
	d.closed.Store(true)
	d.closeOnce.Do(func() { close(d.quit) })
	d.search.drain()
	d.bind.drain()
	d.budget.unregister(d)
	return nil
}

// SearchRequest is what a login's search sets; the rest is fixed:
// derefAliases never, typesOnly false, a server-side time limit from the
// timeout.
type SearchRequest struct {
	Base       string
	Scope      int // ldap.ScopeWholeSubtree, ScopeSingleLevel, ScopeBaseObject
	SizeLimit  int32
	Filter     string // compiled by the Directory; templates are checked at start
	Attributes []string
}

// Search runs r on a search connection (bound as the service account, or
// anonymous). Like go-ldap's Search, a result code other than success comes
// back as *ldap.Error together with the entries received; server is the URL
// of the server that answered.
func (d *Directory) Search(ctx context.Context, r *SearchRequest) (res *ldap.SearchResult, server string, err error) {
	f, err := ldap.CompileFilter(r.Filter)
	if err != nil {
		return nil, "", err
	}
	sr := searchRequest{base: r.Base, scope: r.Scope, sizeLimit: r.SizeLimit, timeLimit: d.timeLimit(),
		filter: f.Bytes(), filterText: r.Filter, attrs: r.Attributes}
	start := time.Now()
	srv, err := d.do(ctx, d.search, func(c *conn) error {
		var err error
		res, err = c.cl.search(&sr)
		return err
	})
	if d.observe != nil {
		d.observe("search", srv, time.Since(start), err)
	}
	return res, srv, err
}

// BindResult is a bind's answer besides its result code.
type BindResult struct {
	Server string // URL of the server that answered
	// Policy is what the response controls said about the account (the
	// password policy response, 389-ds's password controls), whether the
	// bind succeeded or not.
	Policy Policy
}

// Bind checks a password with a simple bind as dn on a bind-role
// connection, asking for the password policy response control
// (1.3.6.1.4.1.42.2.27.8.5.1, not critical: servers without password
// policy ignore it). A nil error means the server answered success; the
// result's Policy may still say the password must be changed. An empty
// password is refused without any traffic (RFC 4513 would make it an
// unauthenticated bind).
func (d *Directory) Bind(ctx context.Context, dn, password string) (BindResult, error) {
	if password == "" {
		return BindResult{}, ldap.NewError(ldap.ErrorEmptyPassword, errors.New("ldap: empty password not allowed by the client"))
	}
	start := time.Now()
	var pol Policy
	srv, err := d.do(ctx, d.bind, func(c *conn) error {
		var err error
		pol, err = c.cl.bind(dn, password, true)
		return err
	})
	if d.observe != nil {
		d.observe("bind", srv, time.Since(start), err)
	}
	return BindResult{Server: srv, Policy: pol}, err
}

// timeLimit is the server-side search time limit in whole seconds (>= 1).
func (d *Directory) timeLimit() int32 {
	return int32(max(1, (d.cfg.Timeout+time.Second-1)/time.Second))
}

// DialGoLDAP connects a go-ldap client, bound as the service account, to
// the first server that answers (in the order logins use), over the same
// dial path as every other connection. It is the mirror's connection: its
// paged and RFC 4533 searches need go-ldap's asynchronous reader, and it is
// not from the pool (a refresh is long and would hold a slot). ctx's
// deadline, if any, bounds the connection's whole life; cancelling ctx ends
// it at once. release closes it.
func (d *Directory) DialGoLDAP(ctx context.Context) (*ldap.Conn, func(), error) {
	if d.closed.Load() {
		return nil, nil, ErrClosed
	}
	var c *conn
	err := d.eachServer(ctx, "mirror", nil, func(s *server, deadline time.Time) error {
		var err error
		c, err = d.dialServer(ctx, s, deadline, roleSearch, ClientGoLDAP)
		return err
	})
	if err != nil {
		return nil, nil, timeoutErr(ctx, err)
	}
	g := c.cl.(*goLDAPConn)
	if dl, ok := ctx.Deadline(); ok {
		c.nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(longAgo) })
	return g.lc, func() { stop(); g.close() }, nil
}

// Retire is the first half of a reload's clean-up: idle connections are
// closed at once and connections still in use are closed, not pooled, when
// their operation ends, so an old configuration holds no more connections
// than it has requests in flight. Operations keep working until Close.
func (d *Directory) Retire() {
	d.retired.Store(true)
	d.search.drain()
	d.bind.drain()
}

// PoolStats is one role's pool now: connections in use and idle, and how
// many operations had to wait for a free one since New.
type PoolStats struct {
	InUse, Idle int
	Waits       uint64
}

// Pools reports the search and bind pools.
func (d *Directory) Pools() (search, bind PoolStats) {
	return d.search.stats(), d.bind.stats()
}

// Ping reads the root DSE from each server, on a connection of its own
// (dialled as a login's would be, service bind included), so a health
// check sees every server, not only the one the pool happens to use. A
// server that answers with any LDAP result is up.
func (d *Directory) Ping(ctx context.Context) map[string]error {
	out := make(map[string]error, len(d.servers))
	// A filter no entry matches: the answer is a bare SearchResultDone
	// (the root DSE's empty DN is never a user entry to the wire client).
	req := searchRequest{scope: ldap.ScopeBaseObject, sizeLimit: 1, timeLimit: d.timeLimit(),
		filterText: "(!(objectClass=*))", attrs: []string{"1.1"}}
	f, _ := ldap.CompileFilter(req.filterText)
	req.filter = f.Bytes()
	for _, s := range d.servers {
		deadline := time.Now().Add(d.cfg.Timeout)
		if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
			deadline = dl
		}
		c, err := d.dialServer(ctx, s, deadline, roleSearch, d.cfg.Client)
		if err == nil {
			_, err = d.run(ctx, c, deadline, func(c *conn) error {
				_, err := c.cl.search(&req)
				if err != nil && !IsConnection(err) {
					err = nil // an LDAP answer: the server is up
				}
				return err
			})
			c.cl.close()
		}
		out[s.url] = timeoutErr(ctx, err)
	}
	return out
}
