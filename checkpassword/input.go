package checkpassword

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/mailauthd/mailauthd/auth"
)

// MaxInput is the checkpassword interface's limit on fd 3 (Dovecot's
// CHECKPASSWORD_MAX_REQUEST_LEN): user, password, timestamp and their NULs.
const MaxInput = 512

var (
	// ErrInputTooLong means fd 3 carried more than MaxInput bytes.
	ErrInputTooLong = errors.New("checkpassword: more than 512 bytes on fd 3")
	// ErrMalformedInput means fd 3 was not user\0password\0timestamp\0.
	ErrMalformedInput = errors.New("checkpassword: malformed input on fd 3")
)

// Input is what Dovecot writes to fd 3.
type Input struct {
	User     string
	Password string // empty for lookups
}

// ReadInput reads fd 3 to EOF, at most MaxInput bytes, and parses it. The
// buffer that held the password is wiped before returning.
func ReadInput(r io.Reader) (Input, error) {
	var buf [MaxInput + 1]byte
	defer clear(buf[:])
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return Input{}, fmt.Errorf("checkpassword: reading fd 3: %w", err)
		}
		if m == 0 {
			return Input{}, fmt.Errorf("checkpassword: reading fd 3: %w", io.ErrNoProgress)
		}
	}
	if n > MaxInput {
		return Input{}, ErrInputTooLong
	}
	return ParseInput(buf[:n])
}

// ParseInput parses "user\0password\0timestamp\0" (the timestamp is empty
// from Dovecot; anything after the third NUL is allowed by the interface
// and ignored). The user must not be empty; the password may be (lookups).
func ParseInput(b []byte) (Input, error) {
	if len(b) > MaxInput {
		return Input{}, ErrInputTooLong
	}
	user, rest, ok := bytes.Cut(b, []byte{0})
	if !ok {
		return Input{}, fmt.Errorf("%w: no NUL after the user", ErrMalformedInput)
	}
	pw, rest, ok := bytes.Cut(rest, []byte{0})
	if !ok {
		return Input{}, fmt.Errorf("%w: no NUL after the password", ErrMalformedInput)
	}
	if bytes.IndexByte(rest, 0) < 0 {
		return Input{}, fmt.Errorf("%w: no NUL after the timestamp", ErrMalformedInput)
	}
	if len(user) == 0 {
		return Input{}, fmt.Errorf("%w: empty user", ErrMalformedInput)
	}
	return Input{User: string(user), Password: string(pw)}, nil
}

// Mode is what Dovecot asks for.
type Mode int

const (
	// ModeAuthenticate: passdb verify_plain, the password must be checked.
	ModeAuthenticate Mode = iota
	// ModeLookup: AUTHORIZED=1, a userdb lookup or a passdb lookup without
	// a password (doveadm auth lookup, credentials lookups).
	ModeLookup
)

func (m Mode) String() string {
	if m == ModeLookup {
		return "lookup"
	}
	return "auth"
}

// Env is what the environment Dovecot sets tells us.
type Env struct {
	Mode Mode
	// CredentialsLookup: a passdb asked for a password hash (CRAM-MD5 etc.),
	// which mailauthd cannot give; the reply carries no password and
	// Dovecot fails the login with "scheme not available".
	CredentialsLookup bool
	Scheme            string
	Service           string
	RemoteIP          string
	LocalIP           string
	MasterUser        string
}

// maxEnvValue bounds every environment value we use; Dovecot's are short.
const maxEnvValue = 256

// ParseEnv reads Dovecot's variables through getenv (os.Getenv in the
// command). Values that cannot come from Dovecot are errors, so a broken
// setup fails loudly (exit 111) instead of deciding with wrong context.
func ParseEnv(getenv func(string) string) (Env, error) {
	var e Env
	switch a := getenv("AUTHORIZED"); a {
	case "":
		e.Mode = ModeAuthenticate
	case "1", "2":
		// 2 is what a checkpassword program sets for checkpassword-reply;
		// if it reaches us it still means "no password, look up".
		e.Mode = ModeLookup
	default:
		return Env{}, fmt.Errorf("checkpassword: AUTHORIZED=%q, want unset, 1 or 2", a)
	}
	e.CredentialsLookup = getenv("CREDENTIALS_LOOKUP") == "1"
	e.Scheme = getenv("SCHEME")
	e.MasterUser = getenv("MASTER_USER")
	e.Service = firstNonEmpty(getenv("SERVICE"), getenv("AUTH_SERVICE"))
	if err := checkToken("SERVICE", e.Service); err != nil {
		return Env{}, err
	}
	var err error
	if e.RemoteIP, err = envIP("remote", getenv("TCPREMOTEIP"), getenv("REMOTE_IP"), getenv("AUTH_RIP")); err != nil {
		return Env{}, err
	}
	if e.LocalIP, err = envIP("local", getenv("TCPLOCALIP"), getenv("LOCAL_IP"), getenv("AUTH_LIP")); err != nil {
		return Env{}, err
	}
	for _, v := range []string{e.Scheme, e.MasterUser} {
		if len(v) > maxEnvValue {
			return Env{}, fmt.Errorf("checkpassword: environment value longer than %d bytes", maxEnvValue)
		}
	}
	return e, nil
}

// Request builds the auth.Request for in: the user split at the last '@'
// like libsasl2 does, Dovecot's service and the client's IP.
func (e Env) Request(in Input) auth.Request {
	return auth.Request{
		User:       in.User,
		Password:   in.Password,
		Service:    e.Service,
		ClientAddr: e.RemoteIP,
	}.SplitRealm()
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// checkToken accepts a service name as Dovecot has them (imap, pop3,
// submission, lmtp, doveadm, ...).
func checkToken(name, v string) error {
	if len(v) > 64 {
		return fmt.Errorf("checkpassword: %s longer than 64 bytes", name)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("checkpassword: %s=%q holds byte %q", name, v, c)
		}
	}
	return nil
}

// envIP takes the first set variable; it must be an IP address.
func envIP(which string, vals ...string) (string, error) {
	v := firstNonEmpty(vals...)
	if v == "" {
		return "", nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || strings.ContainsAny(v, "%") {
		return "", fmt.Errorf("checkpassword: %s IP %q is not an IP address", which, v)
	}
	return a.String(), nil
}
