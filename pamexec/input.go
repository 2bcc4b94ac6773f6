package pamexec

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/mailauthd/mailauthd/auth"
)

// MaxAuthtok is the longest password pam_exec hands over. It copies
// PAM_AUTHTOK into a PAM_MAX_RESP_SIZE (512) buffer with strncpy(...,
// 511), then writes strlen() bytes to the child's stdin: no NUL, no
// newline, then closes the pipe. A longer password arrives silently cut to
// 511 bytes.
const MaxAuthtok = 511

var (
	// ErrAuthtokTooLong: MaxAuthtok bytes or more on stdin. A password
	// pam_exec may have cut cannot be checked exactly (the directory could
	// accept a prefix of what the user typed), so it is refused.
	ErrAuthtokTooLong = errors.New("pam: password of 511 bytes or more (pam_exec cuts it there; it cannot be checked exactly)")
	// ErrAuthtokNUL: a NUL byte on stdin, which pam_exec (strlen) never writes.
	ErrAuthtokNUL = errors.New("pam: NUL byte in the password on stdin")
)

// ReadAuthtok reads the password exactly as pam_exec's expose_authtok
// writes it: every byte up to EOF, nothing stripped (a trailing newline
// would be part of the password; pam_exec never adds one). It reads at
// most MaxAuthtok+1 bytes. An empty stdin gives "" (pam_exec without
// expose_authtok gives the child an empty pipe). The buffer that held the
// password is wiped before returning.
func ReadAuthtok(r io.Reader) (string, error) {
	var buf [MaxAuthtok + 1]byte
	defer clear(buf[:])
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", fmt.Errorf("pam: reading the password from stdin: %w", err)
		}
		if m == 0 {
			return "", fmt.Errorf("pam: reading the password from stdin: %w", io.ErrNoProgress)
		}
	}
	return parseAuthtok(buf[:n])
}

func parseAuthtok(b []byte) (string, error) {
	if len(b) >= MaxAuthtok {
		return "", ErrAuthtokTooLong
	}
	if bytes.IndexByte(b, 0) >= 0 {
		return "", ErrAuthtokNUL
	}
	return string(b), nil
}

// Mode is what the PAM stack asks for, from PAM_TYPE.
type Mode int

const (
	// ModeAuth: PAM_TYPE=auth, pam_authenticate; the password is on stdin.
	ModeAuth Mode = iota
	// ModeAccount: PAM_TYPE=account, pam_acct_mgmt; the user's host and
	// service rules without a password.
	ModeAccount
)

func (m Mode) String() string {
	if m == ModeAccount {
		return "account"
	}
	return "auth"
}

// Env is what pam_exec puts in the child's environment (besides the
// application's pam_getenvlist): PAM_TYPE, PAM_USER, PAM_SERVICE,
// PAM_RHOST, PAM_RUSER, PAM_TTY, each only when the item is set.
type Env struct {
	Mode    Mode
	User    string // PAM_USER
	Service string // PAM_SERVICE, the pam.d file's name
	RHost   string // PAM_RHOST: an IP (Dovecot) or a host name (sshd), may be empty
	TTY     string // PAM_TTY (Dovecot sets "dovecot"), for the log
}

// Limits on what the environment may carry. Longer values cannot come
// from a sane PAM application.
const (
	MaxUser    = 256 // Cyrus saslauthd's own limit on a login
	maxService = 64
	maxRHost   = 255 // a DNS name
)

// ErrSetup marks an environment the administrator is responsible for
// (not run by pam_exec, an unsupported PAM_TYPE, a bad service name): the
// run gives up as a temporary failure. Values the client controls (the
// user name, the remote host) that cannot be right are a refusal instead.
var ErrSetup = errors.New("pam: setup")

// ErrInvalid marks a user or remote host value that cannot be checked.
var ErrInvalid = errors.New("pam: invalid request")

// ParseEnv reads pam_exec's variables through getenv. service, when not
// empty (--service), replaces PAM_SERVICE as the service the decision
// sees; account is --account, which insists on PAM_TYPE=account so that a
// line copied into an auth stack can never skip the password.
func ParseEnv(getenv func(string) string, service string, account bool) (Env, error) {
	var e Env
	switch t := getenv("PAM_TYPE"); t {
	case "auth":
		e.Mode = ModeAuth
	case "account":
		e.Mode = ModeAccount
	case "":
		return Env{}, fmt.Errorf("%w: PAM_TYPE is not set: run by pam_exec.so (auth or account), not by hand", ErrSetup)
	default:
		return Env{}, fmt.Errorf("%w: PAM_TYPE=%q: mailauthd pam answers auth and account lines only", ErrSetup, clip(t))
	}
	if account && e.Mode != ModeAccount {
		return Env{}, fmt.Errorf("%w: --account run with PAM_TYPE=%s: it would skip the password; use it on account lines only", ErrSetup, e.Mode)
	}
	e.Service = getenv("PAM_SERVICE")
	if service != "" {
		e.Service = service
	}
	if err := checkService(e.Service); err != nil {
		return Env{}, err
	}
	e.TTY = clip(getenv("PAM_TTY"))
	e.User = getenv("PAM_USER")
	e.RHost = getenv("PAM_RHOST")
	if err := checkText("PAM_USER", e.User, MaxUser, false); err != nil {
		return e, err
	}
	if e.User == "" {
		return e, fmt.Errorf("%w: PAM_USER is empty", ErrInvalid)
	}
	if err := checkText("PAM_RHOST", e.RHost, maxRHost, true); err != nil {
		return e, err
	}
	return e, nil
}

// Request builds the decision's request: the user split at the last '@'
// as libsasl2 does for the saslauthd socket, so "alice@example.org" gets
// the same answer through PAM as through Postfix.
func (e Env) Request(password string) auth.Request {
	return auth.Request{
		User:       e.User,
		Password:   password,
		Service:    e.Service,
		ClientAddr: e.RHost,
	}.SplitRealm()
}

// checkService accepts a pam.d file name as the service: letters, digits
// and - _ . + @, at most 64 bytes.
func checkService(v string) error {
	if v == "" {
		return fmt.Errorf("%w: PAM_SERVICE is not set (and no --service)", ErrSetup)
	}
	if len(v) > maxService {
		return fmt.Errorf("%w: service longer than %d bytes", ErrSetup, maxService)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("-_.+@", c) >= 0) {
			return fmt.Errorf("%w: service %q holds byte %q", ErrSetup, clip(v), c)
		}
	}
	return nil
}

// checkText refuses control bytes (a forged log line, a field separator)
// and over-long values. Spaces are refused in host names only.
func checkText(name, v string, max int, noSpace bool) error {
	if len(v) > max {
		return fmt.Errorf("%w: %s longer than %d bytes", ErrInvalid, name, max)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < 0x20 || c == 0x7f || (noSpace && c == ' ') {
			return fmt.Errorf("%w: %s holds byte %q", ErrInvalid, name, c)
		}
	}
	return nil
}

// clip shortens a value for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
