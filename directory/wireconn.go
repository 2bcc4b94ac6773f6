package directory

// A small synchronous LDAPv3 client for the connections a login uses: a
// simple BindRequest (RFC 4511 4.2), StartTLS (4.14) and a SearchRequest
// (4.5, wiresearch.go), one request and its responses at a time on the
// caller's goroutine. go-ldap's connection runs every operation across
// three goroutines and builds a BER tree per packet; for the two
// operations a login needs that was most of the client-side cost
// (docs/benchmarks.md). go-ldap still serves the mirror's long-running
// searches (paged and RFC 4533), which are not per login.
//
// Everything that is not exactly the expected response fails closed: a
// malformed, truncated, oversized or unexpected message, an unsolicited
// notification (messageID 0) or any read/write error makes the connection
// dead (closed, never reused) and the error an ldap.ErrorNetwork, which the
// pool treats as a connection failure (TempFail, one retry on a fresh
// connection when the failed one came from the idle pool). Result codes
// come back as *ldap.Error with the server's code, as go-ldap reports them,
// so the decision logic is the same for both clients.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/go-ldap/ldap/v3"
)

const (
	// maxResponseMessage bounds one response message. A BindResponse or
	// ExtendedResponse from a real server is tens of bytes; a long
	// diagnostic message or a referral list still fits easily.
	maxResponseMessage = 64 << 10
	// minReadBuf is the size of the first read buffer; keepReadBuf the
	// largest kept between operations (a rare big entry is not kept).
	minReadBuf  = 512
	keepReadBuf = 4096

	oidStartTLS = "1.3.6.1.4.1.1466.20037"

	// unbindTimeout bounds the courtesy UnbindRequest before a close.
	unbindTimeout = 100 * time.Millisecond

	tagBoolean    = 0x01
	tagInteger    = 0x02
	tagOctets     = 0x04
	tagEnumerated = 0x0a
	tagSequence   = 0x30

	tagBindRequest      = 0x60 // [APPLICATION 0] constructed
	tagUnbindRequest    = 0x42 // [APPLICATION 2] primitive, NULL
	tagBindResponse     = 0x61 // [APPLICATION 1] constructed
	tagExtendedRequest  = 0x77 // [APPLICATION 23] constructed
	tagExtendedResponse = 0x78 // [APPLICATION 24] constructed
	tagSimpleAuth       = 0x80 // [0] primitive, in BindRequest
	tagControls         = 0xa0 // [0] constructed, in LDAPMessage
	tagReferral         = 0xa3 // [3] constructed, in LDAPResult
	tagSASLCreds        = 0x87 // [7] primitive, in BindResponse
	tagRequestName      = 0x80 // [0] primitive, in ExtendedRequest
	tagResponseName     = 0x8a // [10] primitive, in ExtendedResponse
	tagResponseValue    = 0x8b // [11] primitive, in ExtendedResponse
)

// wireConn is one pooled connection. It is used by one goroutine at a
// time (the pool hands it out); the caller sets the deadline on nc.
type wireConn struct {
	nc     net.Conn  // the connection requests go over (TLS after ldaps:// or StartTLS)
	raw    net.Conn  // the TCP connection under any TLS, for the idle check
	rd     io.Reader // where responses are read from: nc
	id     int32     // last messageID sent
	failed bool      // a failure left it unusable: close, never reuse
	out    []byte    // the request being sent, cleared once written (a bind's holds a password)
	in     []byte    // bytes received; in[next:] are not consumed yet
	next   int
	peek   func() bool // idleOK's socket check, made on first use
}

// newWireConn wraps nc, the connection requests go over; raw is the TCP
// connection under it (nc itself without TLS). The idle check must look at
// raw: a *tls.Conn cannot be peeked at without reading a record.
func newWireConn(nc, raw net.Conn) *wireConn {
	return &wireConn{nc: nc, raw: raw, rd: nc}
}

func (b *wireConn) dead() bool { return b.failed }

// close ends the connection: an UnbindRequest first when it is healthy
// (RFC 4511 4.3; servers such as 389-ds log an abrupt close as an error),
// bounded by a short deadline, then the close.
func (b *wireConn) close() {
	if !b.failed {
		b.nc.SetWriteDeadline(time.Now().Add(unbindTimeout))
		b.out = appendUnbindRequest(b.out[:0], b.nextID())
		b.nc.Write(b.out)
	}
	b.failed = true
	b.nc.Close()
}

func (b *wireConn) nextID() int32 {
	b.id++
	if b.id <= 0 { // wrapped: messageID is 1..2^31-1 (0 is for notifications)
		b.id = 1
	}
	return b.id
}

// connErr is a failure of the connection, not an answer from the server.
func connErr(format string, args ...any) error {
	return ldap.NewError(ldap.ErrorNetwork, fmt.Errorf(format, args...))
}

var errConnDead = connErr("ldap: connection already failed")

// bind performs a simple bind as dn with password pw. nil means the server
// answered success (resultCode 0) to exactly this request.
func (b *wireConn) bind(dn, pw string) error {
	if b.failed {
		return errConnDead
	}
	if pw == "" { // RFC 4513 unauthenticated bind: never (the callers check too)
		return ldap.NewError(ldap.ErrorEmptyPassword, errors.New("ldap: empty password not allowed by the client"))
	}
	id := b.nextID()
	b.out = appendBindRequest(b.out[:0], id, dn, pw)
	if err := b.send("bind"); err != nil {
		return err
	}
	res, err := b.readResponse(id, tagBindResponse)
	if err != nil {
		b.failed = true
		return err
	}
	return res.err()
}

// send writes the request built in b.out in one write, then clears b.out
// (a bind's holds the password).
func (b *wireConn) send(what string) error {
	_, err := b.nc.Write(b.out)
	clear(b.out)
	if err != nil {
		b.failed = true
		return connErr("ldap: sending %s request: %w", what, err)
	}
	return nil
}

// startTLS upgrades the connection with the StartTLS extended operation
// and a TLS handshake with cfg (server name, roots and verification as
// configured). The caller's deadline on nc bounds both.
func (b *wireConn) startTLS(ctx context.Context, cfg *tls.Config) error {
	if b.failed {
		return errConnDead
	}
	id := b.nextID()
	b.out = appendStartTLSRequest(b.out[:0], id)
	if err := b.send("StartTLS"); err != nil {
		return err
	}
	res, err := b.readResponse(id, tagExtendedResponse)
	if err != nil {
		b.failed = true
		return err
	}
	if err := res.err(); err != nil {
		b.failed = true
		return err
	}
	if res.name != nil && string(res.name) != oidStartTLS {
		b.failed = true
		return connErr("ldap: StartTLS answered with responseName %q", res.name)
	}
	if res.extra {
		// Nothing may come between the response and the handshake.
		b.failed = true
		return connErr("ldap: data after the StartTLS response")
	}
	tc := tls.Client(b.nc, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		b.failed = true
		return connErr("ldap: TLS handshake failed: %w", err)
	}
	b.nc, b.rd = tc, tc
	return nil
}

// ldapResult is the part of an LDAPResult the client acts on.
type ldapResult struct {
	code    int
	matched string
	diag    string
	name    []byte // ExtendedResponse responseName, nil if absent
	extra   bool   // more bytes followed the message in the same read
}

func (r *ldapResult) err() error {
	if r.code == 0 {
		return nil
	}
	return &ldap.Error{ResultCode: uint16(r.code), MatchedDN: r.matched, Err: errors.New(r.diag)}
}

// readResponse reads one LDAPMessage and decodes it as the response op
// (tagBindResponse or tagExtendedResponse) to request id. A nil error means
// a well-formed response to that request; its resultCode may be anything
// in 0..199. Any other outcome is a connection error.
func (b *wireConn) readResponse(id int32, op byte) (ldapResult, error) {
	body, err := b.readMessage(maxResponseMessage)
	if err != nil {
		return ldapResult{}, err
	}
	res, err := parseResponse(body, id, op)
	res.extra = b.endOp()
	return res, err
}

// endOp ends an operation. Bytes received beyond its last response were
// not asked for (probably an unsolicited notification right behind the
// answer): the answer stands, the connection is not reused. A buffer grown
// for a big message is dropped.
func (b *wireConn) endOp() (extra bool) {
	if b.next < len(b.in) {
		extra = true
		b.failed = true
	}
	b.in, b.next = b.in[:0], 0
	if cap(b.in) > keepReadBuf {
		b.in = nil
	}
	return extra
}

// readMessage returns the contents of the next LDAPMessage (a SEQUENCE
// with a definite length of at most limit), reading as needed. Several
// responses to a search may arrive in one read: the bytes after a message
// stay buffered for the next call. The returned slice is valid until then.
func (b *wireConn) readMessage(limit int) ([]byte, error) {
	for empty := 0; ; {
		avail := b.in[b.next:]
		hdr, size, err := messageHeader(avail, limit)
		if err == nil && len(avail) >= hdr+size {
			b.next += hdr + size
			return avail[hdr : hdr+size], nil
		}
		if err != nil && err != errShortHeader {
			return nil, err
		}
		// Move the partial message to the front; grow when it cannot fit.
		need := minReadBuf
		if err == nil {
			need = max(need, hdr+size)
		}
		if cap(b.in) < need {
			nb := make([]byte, len(avail), need)
			copy(nb, avail)
			b.in = nb
		} else {
			b.in = b.in[:copy(b.in[:cap(b.in)], avail)]
		}
		b.next = 0
		n, rerr := b.rd.Read(b.in[len(b.in):cap(b.in)])
		b.in = b.in[:len(b.in)+n]
		if rerr != nil {
			return nil, connErr("ldap: reading response: %w", rerr)
		}
		if n == 0 {
			if empty++; empty > 100 {
				return nil, connErr("ldap: reading response: %w", io.ErrNoProgress)
			}
		}
	}
}

var errShortHeader = errors.New("short header")

// messageHeader parses the tag and length of an LDAPMessage at the start of
// p: the length of the header and of the contents, at most limit.
func messageHeader(p []byte, limit int) (hdr, size int, err error) {
	if len(p) < 2 {
		return 0, 0, errShortHeader
	}
	if p[0] != tagSequence {
		return 0, 0, connErr("ldap: response is not an LDAPMessage (tag 0x%02x)", p[0])
	}
	l := int(p[1])
	if l < 0x80 {
		return 2, l, nil
	}
	k := l & 0x7f
	switch {
	case k == 0:
		return 0, 0, connErr("ldap: indefinite length in response")
	case k > 4:
		return 0, 0, connErr("ldap: response length too large")
	case len(p) < 2+k:
		return 0, 0, errShortHeader
	}
	size = 0
	for _, c := range p[2 : 2+k] {
		size = size<<8 | int(c)
	}
	if size > limit {
		return 0, 0, connErr("ldap: response of %d bytes exceeds %d", size, limit)
	}
	return 2 + k, size, nil
}

// nextTLV splits the first element off p: its tag, its contents and what
// follows. Only single-byte tags and definite lengths inside p are
// accepted.
func nextTLV(p []byte) (tag byte, val, rest []byte, err error) {
	if len(p) < 2 {
		return 0, nil, nil, errMalformed
	}
	tag = p[0]
	if tag&0x1f == 0x1f {
		return 0, nil, nil, errMalformed // high tag numbers: none in LDAP
	}
	l, i := uint64(p[1]), 2
	if l >= 0x80 {
		k := int(l & 0x7f)
		if k == 0 || k > 4 || len(p) < 2+k {
			return 0, nil, nil, errMalformed // indefinite, too long or truncated
		}
		l = 0
		for _, c := range p[2 : 2+k] {
			l = l<<8 | uint64(c)
		}
		i = 2 + k
	}
	if l > uint64(len(p)-i) {
		return 0, nil, nil, errMalformed
	}
	return tag, p[i : i+int(l)], p[i+int(l):], nil
}

var errMalformed = connErr("ldap: malformed response")

// nonNegInt decodes a BER INTEGER or ENUMERATED of 1 to 4 bytes that is
// >= 0; ok is false for anything else.
func nonNegInt(v []byte) (n int, ok bool) {
	if len(v) == 0 || len(v) > 4 || v[0]&0x80 != 0 {
		return 0, false
	}
	for _, c := range v {
		n = n<<8 | int(c)
	}
	return n, true
}

// parseResponse decodes the contents of an LDAPMessage:
//
//	LDAPMessage ::= SEQUENCE { messageID, protocolOp, controls [0] OPTIONAL }
//	BindResponse ::= [APPLICATION 1] SEQUENCE { COMPONENTS OF LDAPResult, serverSaslCreds [7] OPTIONAL }
//	ExtendedResponse ::= [APPLICATION 24] SEQUENCE { COMPONENTS OF LDAPResult, responseName [10] OPTIONAL, responseValue [11] OPTIONAL }
//	LDAPResult ::= resultCode ENUMERATED, matchedDN OCTET STRING, diagnosticMessage OCTET STRING, referral [3] OPTIONAL
//
// It accepts only that shape, for request id and operation op; elements
// the grammar does not have are refused rather than skipped.
func parseResponse(body []byte, id int32, op byte) (ldapResult, error) {
	tag, opv, err := parseMessage(body, id)
	if err != nil {
		return ldapResult{}, err
	}
	if tag != op {
		return ldapResult{}, connErr("ldap: unexpected response (tag 0x%02x) to message %d", tag, id)
	}
	return parseResult(opv, op)
}

// parseMessage checks that an LDAPMessage answers request id, with
// well-formed controls (none acted on), and returns its protocolOp's tag
// and contents.
func parseMessage(body []byte, id int32) (tag byte, op []byte, err error) {
	tag, v, rest, err := nextTLV(body)
	if err != nil || tag != tagInteger {
		return 0, nil, errMalformed
	}
	gotID, ok := nonNegInt(v)
	if !ok {
		return 0, nil, errMalformed
	}
	tag, op, rest, err = nextTLV(rest)
	if err != nil {
		return 0, nil, errMalformed
	}
	if gotID == 0 {
		// An unsolicited notification, such as the notice of disconnection
		// (RFC 4511 4.4.1): the server is dropping this connection.
		msg := "unsolicited notification"
		if tag == tagExtendedResponse {
			if r, err := parseResult(op, tagExtendedResponse); err == nil {
				msg = fmt.Sprintf("%s %s: result %d %q", msg, r.name, r.code, r.diag)
			}
		}
		return 0, nil, connErr("ldap: %s", msg)
	}
	if gotID != int(id) {
		return 0, nil, connErr("ldap: response to message %d, expected %d", gotID, id)
	}
	if len(rest) > 0 {
		ctag, v, rest, err := nextTLV(rest)
		if err != nil || ctag != tagControls || len(rest) > 0 || !validControls(v) {
			return 0, nil, errMalformed
		}
	}
	return tag, op, nil
}

func parseResult(p []byte, op byte) (ldapResult, error) {
	var res ldapResult
	tag, v, p, err := nextTLV(p)
	if err != nil || tag != tagEnumerated {
		return res, errMalformed
	}
	code, ok := nonNegInt(v)
	if !ok {
		return res, errMalformed
	}
	if code >= int(ldap.ErrorNetwork) {
		// Not an LDAP result code; go-ldap uses 200 and up for its own errors.
		return res, connErr("ldap: result code %d out of range", code)
	}
	res.code = code
	tag, v, p, err = nextTLV(p)
	if err != nil || tag != tagOctets {
		return res, errMalformed
	}
	res.matched = string(v)
	tag, v, p, err = nextTLV(p)
	if err != nil || tag != tagOctets {
		return res, errMalformed
	}
	res.diag = string(v)
	// The optional trailing elements, each at most once and in order.
	var order []byte
	switch op {
	case tagBindResponse:
		order = []byte{tagReferral, tagSASLCreds}
	case tagExtendedResponse:
		order = []byte{tagReferral, tagResponseName, tagResponseValue}
	default: // SearchResultDone: just an LDAPResult
		order = []byte{tagReferral}
	}
	for len(p) > 0 {
		tag, v, p, err = nextTLV(p)
		if err != nil {
			return res, errMalformed
		}
		for len(order) > 0 && order[0] != tag {
			order = order[1:]
		}
		if len(order) == 0 {
			return res, errMalformed
		}
		order = order[1:]
		switch tag {
		case tagReferral:
			if len(v) == 0 || !allTagged(v, tagOctets) {
				return res, errMalformed
			}
		case tagResponseName:
			res.name = v
		}
	}
	return res, nil
}

// validControls checks a Controls list without acting on any control:
//
//	Control ::= SEQUENCE { controlType OCTET STRING, criticality BOOLEAN DEFAULT FALSE, controlValue OCTET STRING OPTIONAL }
func validControls(p []byte) bool {
	for len(p) > 0 {
		tag, c, rest, err := nextTLV(p)
		if err != nil || tag != tagSequence {
			return false
		}
		p = rest
		tag, _, c, err = nextTLV(c)
		if err != nil || tag != tagOctets {
			return false
		}
		if len(c) > 0 && c[0] == tagBoolean {
			var v []byte
			if _, v, c, err = nextTLV(c); err != nil || len(v) != 1 {
				return false
			}
		}
		if len(c) > 0 {
			if tag, _, c, err = nextTLV(c); err != nil || tag != tagOctets || len(c) > 0 {
				return false
			}
		}
	}
	return true
}

// allTagged reports that p is a sequence of well-formed elements, each with tag.
func allTagged(p []byte, tag byte) bool {
	_, ok := countTLVs(p, tag)
	return ok
}

// countTLVs counts the elements of p, which must all be well-formed and,
// unless tag is 0, carry tag.
func countTLVs(p []byte, tag byte) (n int, ok bool) {
	for ; len(p) > 0; n++ {
		t, _, rest, err := nextTLV(p)
		if err != nil || (tag != 0 && t != tag) {
			return 0, false
		}
		p = rest
	}
	return n, true
}

// Encoding. Lengths are definite and minimal; the message is built into
// one buffer so that it goes out in one write.

func lenLen(n int) int {
	switch {
	case n < 0x80:
		return 1
	case n <= 0xff:
		return 2
	case n <= 0xffff:
		return 3
	case n <= 0xffffff:
		return 4
	}
	return 5
}

func tlvLen(n int) int { return 1 + lenLen(n) + n }

func appendLen(dst []byte, n int) []byte {
	switch {
	case n < 0x80:
		return append(dst, byte(n))
	case n <= 0xff:
		return append(dst, 0x81, byte(n))
	case n <= 0xffff:
		return append(dst, 0x82, byte(n>>8), byte(n))
	case n <= 0xffffff:
		return append(dst, 0x83, byte(n>>16), byte(n>>8), byte(n))
	}
	return append(dst, 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// intLen is the length of the minimal BER encoding of v >= 0.
func intLen(v int32) int {
	n := 1
	for x := v; x > 0x7f; x >>= 8 {
		n++
	}
	return n
}

func appendInt(dst []byte, v int32) []byte {
	n := intLen(v)
	dst = append(dst, tagInteger, byte(n))
	for i := n - 1; i >= 0; i-- {
		dst = append(dst, byte(uint64(v)>>(8*i)))
	}
	return dst
}

func appendString(dst []byte, tag byte, s string) []byte {
	dst = append(dst, tag)
	dst = appendLen(dst, len(s))
	return append(dst, s...)
}

// appendBindRequest appends
//
//	LDAPMessage { id, BindRequest { version 3, name dn, authentication simple pw } }
func appendBindRequest(dst []byte, id int32, dn, pw string) []byte {
	op := 3 + tlvLen(len(dn)) + tlvLen(len(pw))
	dst = append(dst, tagSequence)
	dst = appendLen(dst, 2+intLen(id)+tlvLen(op))
	dst = appendInt(dst, id)
	dst = append(dst, tagBindRequest)
	dst = appendLen(dst, op)
	dst = append(dst, tagInteger, 1, 3)
	dst = appendString(dst, tagOctets, dn)
	return appendString(dst, tagSimpleAuth, pw)
}

// appendUnbindRequest appends
//
//	LDAPMessage { id, UnbindRequest }
func appendUnbindRequest(dst []byte, id int32) []byte {
	dst = append(dst, tagSequence)
	dst = appendLen(dst, 2+intLen(id)+2)
	dst = appendInt(dst, id)
	return append(dst, tagUnbindRequest, 0)
}

// appendStartTLSRequest appends
//
//	LDAPMessage { id, ExtendedRequest { requestName 1.3.6.1.4.1.1466.20037 } }
func appendStartTLSRequest(dst []byte, id int32) []byte {
	op := tlvLen(len(oidStartTLS))
	dst = append(dst, tagSequence)
	dst = appendLen(dst, 2+intLen(id)+tlvLen(op))
	dst = appendInt(dst, id)
	dst = append(dst, tagExtendedRequest)
	dst = appendLen(dst, op)
	return appendString(dst, tagRequestName, oidStartTLS)
}
