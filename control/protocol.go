// Package control is mailauthd's private Unix-socket protocol between the
// daemon and its helpers: "mailauthd checkpassword", the Dovecot Lua
// script and "mailauthd pam" ask the running daemon for the decision
// (sharing its connection pool, cache and throttling instead of dialing
// LDAP once per login), and "mailauthd cache flush" empties the daemon's
// cache.
//
// Wire format: every item is a counted string (2-byte big-endian length,
// then the bytes), the framing of the Cyrus saslauthd protocol (Lua 5.4:
// string.pack(">s2", s)). It is written here rather than imported from
// package saslauthd so that the two protocols can evolve apart.
//
//	request:  magic op user password service realm client-addr
//	reply:    "MAC2" outcome cause reason dn n-fields { key value }
//
// The request's magic says what happens to the connection after the reply:
// "MAC2" (what every client before keep-alive sends, and still the Go
// Client's) is one request per connection: the server closes after its
// reply. "MACK" asks to keep the connection: the server answers and waits
// for the next request on it, so a long-lived client (the Dovecot Lua
// script in an auth-worker) connects once instead of once per login. The
// server still closes a kept connection after Server.IdleTimeout without a
// request, after Server.MaxRequestsPerConn replies, when it needs the slot
// for a new connection while this one is idle, on Shutdown once the
// connection is idle, and after any malformed request. A client therefore
// resends a request on a fresh connection when the kept one fails before
// any byte of the reply arrived (the server never read it, or read it and
// decided nothing it answered), and never after part of a reply. Replies
// are the same for both magics.
//
// op is "auth", "lookup" or "flush". outcome is "accept", "reject",
// "tempfail" (auth, lookup) or "ok", "error" (flush). cause is the
// verdict's auth.Cause name ("unknown_user", "wrong_password", "policy",
// ...; empty on accept). The fields of an accept are Dovecot's passdb and
// userdb fields, "user" first, mapped by the daemon. Counts are decimal.
//
// Clients split "name@domain" at the last '@' into user and realm
// (auth.Request.SplitRealm) before sending; client-addr is the client's IP
// as the mail server saw it ("" when unknown), logged with the decision.
// A request field longer than the server's MaxFieldSize is answered
// "reject" with cause "invalid" and the connection closed; any other
// malformed request gets no reply.
//
// The Dovecot Lua script (packaging/dovecot/mailauthd.lua) speaks this with
// luasocket: string.pack(">s2", s) per item, one send, then reads counted
// strings until n-fields pairs are in, at most MaxReplySize bytes and
// MaxFields fields, all within its timeout; anything else (wrong magic, an
// unknown outcome, a count that is not canonical decimal, EOF, bytes after
// the reply) is a broken reply and a temporary failure. It keeps one
// connection per Lua state ("MACK") and never sends "flush".
package control

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/mailauthd/mailauthd/auth"
)

// magic starts every reply and every one-request-per-connection request,
// so a client talking to the wrong socket (a saslauthd mux) fails clearly
// instead of misreading a reply.
const magic = "MAC2"

// magicKeep starts a request after which the connection stays open for
// the next one.
const magicKeep = "MACK"

// Ops.
const (
	OpAuth   = "auth"
	OpLookup = "lookup"
	OpFlush  = "flush"
)

// Limits.
const (
	// DefaultMaxFieldSize bounds each request field.
	DefaultMaxFieldSize = 1024
	// MaxReplySize bounds a whole reply; a verdict is a DN and a handful of
	// attributes.
	MaxReplySize = 64 << 10
	// MaxFields bounds the fields of a reply.
	MaxFields  = 128
	maxCounted = 0xFFFF
)

var (
	// ErrFieldTooLong means a counted string exceeds its limit.
	ErrFieldTooLong = errors.New("control: field too long")
	// ErrProtocol means the peer sent something that is not this protocol.
	ErrProtocol = errors.New("control: protocol error")
)

func appendCounted(dst []byte, s string) ([]byte, error) {
	if len(s) > maxCounted {
		return dst, fmt.Errorf("%d bytes: %w", len(s), ErrFieldTooLong)
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...), nil
}

// readCounted reads one counted string of at most max bytes, checking the
// length before allocating.
func readCounted(r io.Reader, max int) (string, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		if errors.Is(err, io.EOF) {
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	l := int(binary.BigEndian.Uint16(hdr[:]))
	if l > max {
		return "", fmt.Errorf("%d bytes > %d: %w", l, max, ErrFieldTooLong)
	}
	if l == 0 {
		return "", nil
	}
	return readBody(r, l)
}

// request is one decoded request.
type request struct {
	Op  string
	Req auth.Request
	// Magic is set once the magic was read: the peer speaks this
	// protocol, even when a later field is wrong.
	Magic bool
	// Keep: the client asked to keep the connection ("MACK").
	Keep bool
}

func appendRequest(dst []byte, op string, req auth.Request) ([]byte, error) {
	return appendRequestMagic(dst, magic, op, req)
}

// appendRequestMagic encodes a request with magic (magic or magicKeep).
func appendRequestMagic(dst []byte, m, op string, req auth.Request) ([]byte, error) {
	var err error
	for _, s := range []string{m, op, req.User, req.Password, req.Service, req.Realm, req.ClientAddr} {
		if dst, err = appendCounted(dst, s); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// readRequest reads one request from r. It reads exactly the request's
// bytes (r may hold the start of the next one) and wipes what it consumed
// from r's buffer, so no password stays there.
func readRequest(r *bufio.Reader, maxField int) (request, error) {
	var f [7]string
	keep := false
	for i := range f {
		s, err := readCountedBuf(r, maxField)
		if err != nil {
			return request{Magic: i > 0, Keep: keep}, err
		}
		f[i] = s
		if i == 0 {
			switch s {
			case magic:
			case magicKeep:
				keep = true
			default:
				return request{}, fmt.Errorf("%w: bad magic", ErrProtocol)
			}
		}
	}
	switch f[1] {
	case OpAuth, OpLookup, OpFlush:
	default:
		return request{}, fmt.Errorf("%w: unknown op %q", ErrProtocol, f[1])
	}
	return request{Op: f[1], Magic: true, Keep: keep, Req: auth.Request{User: f[2], Password: f[3], Service: f[4], Realm: f[5], ClientAddr: f[6]}}, nil
}

// readCountedBuf is readCounted from a bufio.Reader: one allocation (the
// string) instead of two, and the consumed bytes wiped from r's buffer.
func readCountedBuf(r *bufio.Reader, max int) (string, error) {
	hdr, err := r.Peek(2)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	l := int(binary.BigEndian.Uint16(hdr))
	r.Discard(2)
	if l > max {
		return "", fmt.Errorf("%d bytes > %d: %w", l, max, ErrFieldTooLong)
	}
	if l == 0 {
		return "", nil
	}
	if l > r.Size() {
		return readBody(r, l)
	}
	b, err := r.Peek(l)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	s := string(b)
	clear(b)
	r.Discard(l)
	return s, nil
}

// readBody reads l bytes that do not fit r's buffer.
func readBody(r io.Reader, l int) (string, error) {
	b := make([]byte, l)
	defer clear(b)
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			return "", io.ErrUnexpectedEOF
		}
		return "", err
	}
	return string(b), nil
}

// causes maps the names on the wire back to causes.
var causes = func() map[string]auth.Cause {
	m := map[string]auth.Cause{}
	for c := auth.CauseNone; c <= auth.CauseInternal; c++ {
		m[c.String()] = c
	}
	return m
}()

// appendVerdict encodes v with the outcome word (v's outcome, or the
// flush answer). A verdict that does not fit the limits is an error; the
// server then answers tempfail rather than a cut-down verdict.
func appendVerdict(dst []byte, outcome string, v auth.Verdict) ([]byte, error) {
	if len(v.Fields) > MaxFields {
		return dst, fmt.Errorf("%d fields > %d: %w", len(v.Fields), MaxFields, ErrFieldTooLong)
	}
	var err error
	for _, s := range []string{magic, outcome, v.Cause.String(), v.Reason, v.DN, strconv.Itoa(len(v.Fields))} {
		if dst, err = appendCounted(dst, s); err != nil {
			return dst, err
		}
	}
	for _, f := range v.Fields {
		if dst, err = appendCounted(dst, f.Key); err != nil {
			return dst, err
		}
		if dst, err = appendCounted(dst, f.Value); err != nil {
			return dst, err
		}
	}
	if len(dst) > MaxReplySize {
		return dst, fmt.Errorf("reply of %d bytes > %d: %w", len(dst), MaxReplySize, ErrFieldTooLong)
	}
	return dst, nil
}

// readVerdict decodes a reply; r must already be limited to MaxReplySize.
// It returns the outcome word as sent (for flush) and the verdict.
func readVerdict(r io.Reader) (string, auth.Verdict, error) {
	var head [6]string
	for i := range head {
		s, err := readCounted(r, maxCounted)
		if err != nil {
			return "", auth.Verdict{}, err
		}
		head[i] = s
		if i == 0 && s != magic {
			return "", auth.Verdict{}, fmt.Errorf("%w: bad magic in reply", ErrProtocol)
		}
	}
	v := auth.Verdict{Reason: head[3], DN: head[4]}
	switch head[1] {
	case "accept":
		v.Outcome = auth.Accept
	case "reject", "error":
		v.Outcome = auth.Reject
	case "tempfail":
		v.Outcome = auth.TempFail
	case "ok":
		// flush only; the outcome word tells the caller.
	default:
		return "", auth.Verdict{}, fmt.Errorf("%w: unknown outcome %q", ErrProtocol, head[1])
	}
	c, ok := causes[head[2]]
	if !ok {
		return "", auth.Verdict{}, fmt.Errorf("%w: unknown cause %q", ErrProtocol, head[2])
	}
	v.Cause = c
	n, err := parseCount(head[5], MaxFields)
	if err != nil {
		return "", auth.Verdict{}, err
	}
	if n > 0 {
		v.Fields = make([]auth.Field, 0, n)
	}
	for range n {
		k, err := readCounted(r, maxCounted)
		if err != nil {
			return "", auth.Verdict{}, err
		}
		val, err := readCounted(r, maxCounted)
		if err != nil {
			return "", auth.Verdict{}, err
		}
		v.Fields = append(v.Fields, auth.Field{Key: k, Value: val})
	}
	return head[1], v, nil
}

func parseCount(s string, max int) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > max || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("%w: bad count %q", ErrProtocol, s)
	}
	return n, nil
}
