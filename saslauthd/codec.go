// Package saslauthd speaks the Cyrus saslauthd Unix-socket protocol, so that
// Postfix, Cyrus imapd and anything else linked against libsasl2 with
// "pwcheck_method: saslauthd" can authenticate through mailauthd unchanged.
//
// The wire format (cyrus-sasl saslauthd/ipc_unix.c, lib/checkpw.c): the client
// connects, sends login, password, service and realm as counted strings
// (2-byte big-endian length, then the bytes), optionally a fifth counted
// string with the client address (cyrus-sasl master), and reads one counted
// string back: "OK" or "NO <text>". One request per connection.
package saslauthd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mailauthd/mailauthd/auth"
)

const (
	// DefaultMaxFieldSize is the default limit for each request field. Cyrus
	// allows 256 bytes; long passphrases and long federated logins need more.
	DefaultMaxFieldSize = 1024
	// MaxFieldSizeLimit is what a 2-byte length prefix can express.
	MaxFieldSizeLimit = 0xFFFF
	// DefaultClientAddrWait is how long ReadRequest waits for the optional
	// fifth field when it is not already buffered: not at all. libsasl2 sends
	// the whole request in one write, so the field is either there already
	// or absent, and released libsasl2 (four fields) must not pay a wait on
	// every login. Set a positive wait only for a sender that splits writes.
	DefaultClientAddrWait = 0
	// MaxReplyText bounds the text after "NO ". libsasl2 truncates replies at
	// 1023 bytes and testsaslauthd overflows its buffer on a 1024-byte reply;
	// a reason never needs more than a line.
	MaxReplyText = 200
	// MaxReplySize is the largest reply Client accepts.
	MaxReplySize = 1023
)

var (
	// ErrFieldTooLong means a field's length prefix exceeds the limit. Nothing
	// was allocated for it.
	ErrFieldTooLong = errors.New("saslauthd: field too long")
	// ErrTruncated means the peer closed the connection inside a frame.
	ErrTruncated = errors.New("saslauthd: truncated request")
	// ErrNoRequest means the peer closed the connection before sending anything.
	ErrNoRequest = errors.New("saslauthd: connection closed without a request")
	// ErrNULByte means a field contains a NUL byte. C peers (PAM, Cyrus) would
	// see only the part before it, so "alice\x00x" could be checked under one
	// name and authenticated as another: refused outright.
	ErrNULByte = errors.New("saslauthd: NUL byte in field")
	// ErrEmptyLogin and ErrEmptyPassword reject a request before any
	// authenticator runs, as Cyrus does. ReadRequest returns the other fields
	// with them so the refusal can be logged.
	ErrEmptyLogin    = errors.New("saslauthd: empty login")
	ErrEmptyPassword = errors.New("saslauthd: empty password")
)

// fieldNames name the request fields in errors, in wire order.
var fieldNames = [5]string{"login", "password", "service", "realm", "client address"}

// ReadOptions tunes ReadRequest. The zero value gives the defaults.
type ReadOptions struct {
	// MaxFieldSize limits each field (default DefaultMaxFieldSize, at most
	// MaxFieldSizeLimit).
	MaxFieldSize int
	// ClientAddrWait is how long to wait for the optional fifth field when it
	// is not already buffered. Zero or negative (the default): take it only
	// if already buffered. Waiting needs a reader with
	// SetReadDeadline (a net.Conn); other readers only ever get buffered bytes.
	ClientAddrWait time.Duration
	// Deadline is the read deadline in force for the whole request; it is
	// restored after the short wait for the fifth field. Zero means none.
	Deadline time.Time
}

func (o ReadOptions) maxField() int {
	switch {
	case o.MaxFieldSize <= 0:
		return DefaultMaxFieldSize
	case o.MaxFieldSize > MaxFieldSizeLimit:
		return MaxFieldSizeLimit
	}
	return o.MaxFieldSize
}

func (o ReadOptions) addrWait() time.Duration {
	if o.ClientAddrWait <= 0 {
		return -1
	}
	return o.ClientAddrWait
}

// readDeadliner is the part of net.Conn the fifth-field wait needs.
type readDeadliner interface {
	SetReadDeadline(time.Time) error
}

// requestBufs recycles request buffers of the default size, so the server's
// hot path allocates only the strings it hands to the authenticator.
var requestBufs = sync.Pool{New: func() any {
	b := make([]byte, requestBufSize(DefaultMaxFieldSize))
	return &b
}}

// requestBufSize holds a maximal five-field request, so one large read
// usually takes the whole request, fifth field included.
func requestBufSize(maxField int) int { return 5 * (2 + maxField) }

func getRequestBuf(maxField int) *[]byte {
	if maxField == DefaultMaxFieldSize {
		return requestBufs.Get().(*[]byte)
	}
	b := make([]byte, requestBufSize(maxField))
	return &b
}

func putRequestBuf(bp *[]byte) {
	// The buffer held a password: wipe it before anyone else can see it.
	clear(*bp)
	if len(*bp) == requestBufSize(DefaultMaxFieldSize) {
		requestBufs.Put(bp)
	}
}

// frameReader parses counted strings out of one fixed buffer.
type frameReader struct {
	src io.Reader
	buf []byte
	n   int // bytes read into buf
	off int // bytes parsed
}

// fill reads until k unparsed bytes are buffered. atStart tells whether a
// clean EOF here means "no request" rather than a truncated one.
func (f *frameReader) fill(k int, atStart bool) error {
	for f.n-f.off < k {
		m, err := f.src.Read(f.buf[f.n:])
		f.n += m
		if f.n-f.off >= k {
			return nil
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if atStart && f.n == 0 {
					return ErrNoRequest
				}
				return ErrTruncated
			}
			return err
		}
		if m == 0 {
			// A reader that returns 0, nil forever would spin us: give up.
			return io.ErrNoProgress
		}
	}
	return nil
}

// field parses the counted string at f.off and returns its bounds.
func (f *frameReader) field(i, maxField int) (start, end int, err error) {
	if err := f.fill(2, i == 0); err != nil {
		return 0, 0, fmt.Errorf("%s length: %w", fieldNames[i], err)
	}
	l := int(binary.BigEndian.Uint16(f.buf[f.off:]))
	if l > maxField {
		return 0, 0, fmt.Errorf("%s: %d bytes > %d: %w", fieldNames[i], l, maxField, ErrFieldTooLong)
	}
	f.off += 2
	if err := f.fill(l, false); err != nil {
		return 0, 0, fmt.Errorf("%s: %w", fieldNames[i], err)
	}
	start, end = f.off, f.off+l
	f.off = end
	for _, c := range f.buf[start:end] {
		if c == 0 {
			return 0, 0, fmt.Errorf("%s: %w", fieldNames[i], ErrNULByte)
		}
	}
	return start, end, nil
}

// clientAddrPresent reports whether a fifth field starts: bytes already
// buffered, or arriving within wait. Timeout or EOF here means "absent".
func (f *frameReader) clientAddrPresent(wait time.Duration, deadline time.Time) (bool, error) {
	if f.n > f.off {
		return true, nil
	}
	dl, ok := f.src.(readDeadliner)
	if wait < 0 || !ok {
		return false, nil
	}
	until := time.Now().Add(wait)
	if !deadline.IsZero() && deadline.Before(until) {
		until = deadline
	}
	if err := dl.SetReadDeadline(until); err != nil {
		// Cannot bound the wait (the connection is closing): never block for
		// an optional field.
		return false, nil
	}
	m, err := f.src.Read(f.buf[f.n:])
	f.n += m
	// The rest of the field, if it started, gets the whole request's time.
	rerr := dl.SetReadDeadline(deadline)
	if m > 0 {
		return true, rerr
	}
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) {
		return false, nil
	}
	return false, err
}

// ReadRequest reads one request: login, password, service, realm and the
// optional client address. It never allocates from an untrusted length: a
// length over the limit fails before its body is read. Only the first bytes
// of r belonging to the request are consumed, except that a single read may
// take more into an internal buffer (harmless: one request per connection).
//
// Errors: ErrFieldTooLong, ErrTruncated, ErrNoRequest, ErrNULByte (all
// wrapped, use errors.Is), read errors from r, and ErrEmptyLogin or
// ErrEmptyPassword, which come with the parsed request for logging.
func ReadRequest(r io.Reader, opt ReadOptions) (auth.Request, error) {
	maxField := opt.maxField()
	bp := getRequestBuf(maxField)
	defer putRequestBuf(bp)
	f := frameReader{src: r, buf: *bp}

	var bounds [5][2]int
	for i := range 4 {
		s, e, err := f.field(i, maxField)
		if err != nil {
			return auth.Request{}, err
		}
		bounds[i] = [2]int{s, e}
	}
	nfields := 4
	present, err := f.clientAddrPresent(opt.addrWait(), opt.Deadline)
	if err != nil {
		return auth.Request{}, fmt.Errorf("%s: %w", fieldNames[4], err)
	}
	if present {
		s, e, err := f.field(4, maxField)
		if err != nil {
			return auth.Request{}, err
		}
		bounds[4] = [2]int{s, e}
		nfields = 5
	}

	// Two allocations: the password on its own, so that an authenticator
	// keeping req.User (a cache, a log buffer) never keeps the password's
	// memory alive with it; everything else in one string.
	pw := bounds[1]
	password := string(f.buf[pw[0]:pw[1]])
	var rest strings.Builder
	rest.Grow(f.off - (pw[1] - pw[0]))
	var idx [5][2]int
	for i := range nfields {
		if i == 1 {
			continue
		}
		idx[i][0] = rest.Len()
		rest.Write(f.buf[bounds[i][0]:bounds[i][1]])
		idx[i][1] = rest.Len()
	}
	all := rest.String()
	req := auth.Request{
		User:       all[idx[0][0]:idx[0][1]],
		Password:   password,
		Service:    all[idx[2][0]:idx[2][1]],
		Realm:      all[idx[3][0]:idx[3][1]],
		ClientAddr: all[idx[4][0]:idx[4][1]],
	}
	switch {
	case req.User == "":
		req.Password = ""
		return req, ErrEmptyLogin
	case req.Password == "":
		return req, ErrEmptyPassword
	}
	return req, nil
}

// ReadCounted reads one counted string of at most max bytes. It checks the
// length before allocating. A clean EOF before the length is io.EOF; EOF
// inside the frame is ErrTruncated.
func ReadCounted(r io.Reader, max int) (string, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return "", ErrTruncated
		}
		return "", err
	}
	l := int(binary.BigEndian.Uint16(hdr[:]))
	if l > max {
		return "", fmt.Errorf("%d bytes > %d: %w", l, max, ErrFieldTooLong)
	}
	b := make([]byte, l)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return "", ErrTruncated
		}
		return "", err
	}
	return string(b), nil
}

// AppendCounted appends s as a counted string.
func AppendCounted(dst []byte, s string) ([]byte, error) {
	if len(s) > MaxFieldSizeLimit {
		return dst, fmt.Errorf("%d bytes > %d: %w", len(s), MaxFieldSizeLimit, ErrFieldTooLong)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...), nil
}

// WriteCounted writes s as one counted string in a single Write, so a
// peer reading header and body separately never sees half a frame.
func WriteCounted(w io.Writer, s string) error {
	b, err := AppendCounted(make([]byte, 0, 2+len(s)), s)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// AppendRequest appends req in wire order; ClientAddr is sent as the fifth
// field only when set, so released Cyrus servers still understand it.
func AppendRequest(dst []byte, req auth.Request) ([]byte, error) {
	fields := [5]string{req.User, req.Password, req.Service, req.Realm, req.ClientAddr}
	n := 4
	if req.ClientAddr != "" {
		n = 5
	}
	var err error
	for i, s := range fields[:n] {
		if dst, err = AppendCounted(dst, s); err != nil {
			return dst, fmt.Errorf("%s: %w", fieldNames[i], err)
		}
	}
	return dst, nil
}

// AppendReply appends the counted reply: "OK", or "NO" followed by the
// sanitized text. The text is cut to MaxReplyText bytes and every byte
// outside printable ASCII becomes '?', so nothing a directory or an error
// message contains can forge protocol or log lines at the peer.
func AppendReply(dst []byte, ok bool, text string) []byte {
	if ok {
		return append(dst, 0, 2, 'O', 'K')
	}
	if len(text) > MaxReplyText {
		text = text[:MaxReplyText]
	}
	n := 2
	if text != "" {
		n += 1 + len(text)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(n))
	dst = append(dst, 'N', 'O')
	if text == "" {
		return dst
	}
	dst = append(dst, ' ')
	for i := 0; i < len(text); i++ {
		c := text[i]
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		dst = append(dst, c)
	}
	return dst
}

var replyBufs = sync.Pool{New: func() any {
	b := make([]byte, 0, 2+3+MaxReplyText)
	return &b
}}

// WriteReply writes one reply in a single Write (see AppendReply).
func WriteReply(w io.Writer, ok bool, text string) error {
	bp := replyBufs.Get().(*[]byte)
	b := AppendReply((*bp)[:0], ok, text)
	_, err := w.Write(b)
	*bp = b[:0]
	replyBufs.Put(bp)
	return err
}

// ParseReply interprets a reply body as libsasl2 does: only the first two
// bytes decide. The text is what follows "OK"/"NO" and one space.
func ParseReply(body string) (ok bool, text string, err error) {
	if len(body) < 2 {
		return false, "", fmt.Errorf("saslauthd: reply %q too short", body)
	}
	switch body[:2] {
	case "OK":
		ok = true
	case "NO":
	default:
		return false, "", fmt.Errorf("saslauthd: reply starts with %q, want OK or NO", body[:2])
	}
	text = body[2:]
	if len(text) > 0 && text[0] == ' ' {
		text = text[1:]
	}
	return ok, text, nil
}
