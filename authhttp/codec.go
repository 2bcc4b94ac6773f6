// Package authhttp is the HTTP front door nginx's mail proxy asks:
// ngx_mail_auth_http_module's protocol (nginx src/mail/
// ngx_mail_auth_http_module.c). nginx sends one GET per login attempt, the
// credentials in request headers, and reads only the response headers:
// Auth-Status "OK" with Auth-Server and Auth-Port (where to proxy the
// session), or an error text that it shows the mail client.
//
// The package parses and writes that exchange (codec.go), maps a verdict to
// the answer (reply.go), and serves it (handler.go). The decision and the
// route come from the daemon (daemon.AuthHTTP): this package builds no
// authenticator, and it resolves no names itself but through the Policy the
// daemon built from the auth_http: section (policy.go).
package authhttp

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Protocol is the mail protocol nginx proxies, as its Auth-Protocol header
// names it (cscf->protocol->name).
type Protocol string

const (
	IMAP Protocol = "imap"
	POP3 Protocol = "pop3"
	SMTP Protocol = "smtp"
)

// Protocols are the protocols nginx's mail module speaks.
var Protocols = []Protocol{IMAP, POP3, SMTP}

func (p Protocol) valid() bool { return p == IMAP || p == POP3 || p == SMTP }

// Auth-Method values nginx sends (ngx_mail_auth_http_method[]): "plain" for
// USER/PASS, LOGIN, AUTH PLAIN and AUTH LOGIN; "apop" and "cram-md5" carry a
// salt and a digest instead of the password; "none" is SMTP without AUTH
// (smtp_auth none); "external" a TLS client certificate (nginx 1.21+).
const (
	MethodPlain = "plain"
)

// Request is one auth_http request as nginx sends it. User and Password are
// percent-decoded; the other values are as sent.
type Request struct {
	Method   string   // Auth-Method, lower-cased
	User     string   // Auth-User, decoded
	Password string   // Auth-Pass, decoded; never logged
	Protocol Protocol // Auth-Protocol
	Attempt  int      // Auth-Login-Attempt: 1 for the session's first login
	ClientIP string   // Client-IP: the mail client's address
	// ClientHost is Client-Host: the client's name when nginx resolved it
	// (SMTP with a resolver), otherwise absent or "[UNAVAILABLE]".
	ClientHost string
	SSL        bool   // Auth-SSL: on
	SSLVerify  string // Auth-SSL-Verify: the client certificate's verification result
	SSLSubject string // Auth-SSL-Subject
}

// Errors ParseRequest returns. A request that is not nginx's (no or an
// unknown Auth-Protocol) is ErrNotNginx: the caller answers 400. The others
// are a login nginx did send but that cannot be verified; they are answered
// like a refusal.
var (
	ErrNotNginx      = errors.New("authhttp: not an nginx auth_http request")
	ErrBadEscape     = errors.New("authhttp: malformed percent-escape")
	ErrFieldTooLong  = errors.New("authhttp: field too long")
	ErrControlByte   = errors.New("authhttp: control byte in field")
	ErrEmptyLogin    = errors.New("authhttp: empty login")
	ErrEmptyPassword = errors.New("authhttp: empty password")
	ErrBadAttempt    = errors.New("authhttp: malformed Auth-Login-Attempt")
)

// ParseRequest reads nginx's request headers. maxField bounds the decoded
// login and password (and every other value, before decoding, at three
// times that, the most percent-escaping can grow a value). On an error
// other than ErrNotNginx the returned Request still holds what could be
// read (never the password), for the log.
func ParseRequest(h http.Header, maxField int) (Request, error) {
	var r Request
	get := func(name string) (string, error) {
		v := h.Get(name)
		if len(v) > 3*maxField {
			return "", fmt.Errorf("%w: %s is %d bytes", ErrFieldTooLong, name, len(v))
		}
		return v, nil
	}
	proto, err := get("Auth-Protocol")
	if err != nil {
		return r, ErrNotNginx
	}
	r.Protocol = Protocol(strings.ToLower(proto))
	if !r.Protocol.valid() {
		return r, fmt.Errorf("%w: Auth-Protocol %q (want imap, pop3 or smtp)", ErrNotNginx, proto)
	}
	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	method, err := get("Auth-Method")
	keep(err)
	r.Method = strings.ToLower(method)
	for _, f := range []struct {
		name string
		dst  *string
	}{{"Client-IP", &r.ClientIP}, {"Client-Host", &r.ClientHost}, {"Auth-SSL-Verify", &r.SSLVerify}, {"Auth-SSL-Subject", &r.SSLSubject}} {
		v, err := get(f.name)
		keep(err)
		*f.dst = v
	}
	if v, _ := get("Auth-SSL"); strings.EqualFold(v, "on") {
		r.SSL = true
	}
	if v := h.Get("Auth-Login-Attempt"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1<<20 {
			keep(fmt.Errorf("%w: %q", ErrBadAttempt, truncate(v, 20)))
		} else {
			r.Attempt = n
		}
	}
	user, err := get("Auth-User")
	keep(err)
	if err == nil {
		r.User, err = decodeField("Auth-User", user, maxField)
		keep(err)
	}
	pass, err := get("Auth-Pass")
	keep(err)
	if err == nil {
		// The error never quotes the value: it is a password.
		r.Password, err = decodeField("Auth-Pass", pass, maxField)
		keep(err)
	}
	if len(errs) == 0 && r.Method == MethodPlain {
		switch {
		case r.User == "":
			keep(ErrEmptyLogin)
		case r.Password == "":
			keep(ErrEmptyPassword)
		}
	}
	if len(errs) > 0 {
		r.Password = ""
		return r, errs[0]
	}
	return r, nil
}

// decodeField undoes nginx's escaping and checks the result: at most max
// bytes, and no control bytes (a NUL would let "alice\x00x" be checked
// under one name by a C peer and another by us; nginx itself cannot
// receive CR or LF inside a login).
func decodeField(name, v string, max int) (string, error) {
	d, err := Unescape(v)
	if err != nil {
		return "", fmt.Errorf("%w in %s", ErrBadEscape, name)
	}
	if len(d) > max {
		return "", fmt.Errorf("%w: %s is %d bytes decoded, limit %d", ErrFieldTooLong, name, len(d), max)
	}
	for i := 0; i < len(d); i++ {
		if d[i] < 0x20 || d[i] == 0x7f {
			return "", fmt.Errorf("%w: %s", ErrControlByte, name)
		}
	}
	return d, nil
}

// needsEscape is nginx's NGX_ESCAPE_MAIL_AUTH set (ngx_escape_uri, the
// "memcached" table in src/core/ngx_string.c): space, '%' and 0x00-0x1F.
// Nothing else: '+' stays literal, and so do DEL and bytes >= 0x80.
func needsEscape(c byte) bool { return c < 0x20 || c == ' ' || c == '%' }

// Escape escapes s as nginx does for Auth-User and Auth-Pass (upper-case
// hex, like ngx_escape_uri). For tests and load generators: the daemon only
// decodes.
func Escape(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if needsEscape(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hex = "0123456789ABCDEF"
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if needsEscape(c) {
			b = append(b, '%', hex[c>>4], hex[c&15])
		} else {
			b = append(b, c)
		}
	}
	return string(b)
}

// Unescape decodes %XX sequences and nothing else: '+' is a plus, not a
// space (url.PathUnescape, not QueryUnescape). A '%' not followed by two
// hex digits is an error: nginx escapes every '%' it sends.
func Unescape(s string) (string, error) {
	if !strings.Contains(s, "%") {
		return s, nil
	}
	return url.PathUnescape(s)
}

// Response is the answer nginx reads (ngx_mail_auth_http_process_headers).
// The status line and body are ignored by nginx; only these headers count.
type Response struct {
	// Status is "OK" or the error text the client sees: after "-ERR " for
	// POP3, "<tag> NO " for IMAP, after ErrorCode for SMTP.
	Status string
	Server string // Auth-Server: an IP address (nginx does not resolve names)
	Port   int    // Auth-Port
	User   string // Auth-User: the login nginx sends to the backend; "" keeps the client's
	// Wait is Auth-Wait in seconds: nginx waits that long, shows the error
	// and lets the client try again in the same session. 0: no header, the
	// session ends after the error.
	Wait      int
	ErrorCode string // Auth-Error-Code (SMTP): "535 5.7.8"; nginx's default is "535 5.7.0"
}

// MaxResponse is the size of nginx's response buffer: the status line and
// every header must fit in it (ngx_create_temp_buf(ctx->pool, 1024)).
const MaxResponse = 1024

// ErrUnsafeValue means a response value would break nginx's header parser
// or the backend's command line: a control byte, a leading or trailing
// space, or an over-long value.
var ErrUnsafeValue = errors.New("authhttp: value not safe in a response header")

// maxValue bounds one response value, so that the whole answer stays far
// inside MaxResponse.
const maxValue = 256

// Write sets the response headers on h. It refuses values nginx could
// misread (ngx_mail_auth_http_parse_header_line ends a value at CR or LF
// and trims spaces after it); the caller answers a temporary failure then.
func (r Response) Write(h http.Header) error {
	set := func(name, v string) error {
		if err := safeValue(v); err != nil {
			return fmt.Errorf("%w: %s", err, name)
		}
		h.Set(name, v)
		return nil
	}
	if err := set("Auth-Status", r.Status); err != nil {
		return err
	}
	if r.Status == "OK" {
		if r.Server == "" || r.Port < 1 || r.Port > 65535 {
			return fmt.Errorf("%w: OK without a server and port", ErrUnsafeValue)
		}
		if err := set("Auth-Server", r.Server); err != nil {
			return err
		}
		h.Set("Auth-Port", strconv.Itoa(r.Port))
		if r.User != "" {
			if err := set("Auth-User", r.User); err != nil {
				return err
			}
		}
		return nil
	}
	if r.Wait > 0 {
		h.Set("Auth-Wait", strconv.Itoa(r.Wait))
	}
	if r.ErrorCode != "" {
		return set("Auth-Error-Code", r.ErrorCode)
	}
	return nil
}

func safeValue(v string) error {
	if v == "" || len(v) > maxValue || v[0] == ' ' || v[len(v)-1] == ' ' {
		return ErrUnsafeValue
	}
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] == 0x7f {
			return ErrUnsafeValue
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
