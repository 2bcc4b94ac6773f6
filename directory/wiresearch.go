package directory

// The search a login needs, on a wireConn (see wireconn.go): one
// SearchRequest (RFC 4511 4.5.1), then its SearchResultEntry and
// SearchResultReference messages up to the SearchResultDone.

import (
	"errors"
	"fmt"

	"github.com/go-ldap/ldap/v3"
)

const (
	tagSearchRequest   = 0x63 // [APPLICATION 3] constructed
	tagSearchEntry     = 0x64 // [APPLICATION 4] constructed
	tagSearchDone      = 0x65 // [APPLICATION 5] constructed
	tagSearchReference = 0x73 // [APPLICATION 19] constructed
	tagSet             = 0x31

	// maxSearchMessage bounds one entry (MaxEntrySize). A login fetches
	// a handful of attributes; an entry with a long list of hosts or
	// addresses, or a 300 KB jpegPhoto an admin listed in ldap.attributes,
	// still fits. The read buffer grows to the entry and is dropped after
	// the operation.
	maxSearchMessage = MaxEntrySize
	// maxEntries applies when a request sets no size limit (a login's
	// search always sets one).
	maxEntries = 16
)

// maxReferences and maxReferenceBytes bound the continuation references
// of one search (RFC 4511 4.5.3; one per referral object in scope, or per
// partition of an AD forest), which are skipped, not followed. Variables
// for tests only.
var (
	maxReferences     = 1024
	maxReferenceBytes = 256 << 10
)

// MaxEntrySize is the largest search result entry the wire client
// accepts (go-ldap has no limit); a bigger one fails that search with
// ErrEntryTooLarge.
const MaxEntrySize = 1 << 20

// searchRequest is what a login's search sets of a SearchRequest; the rest
// is fixed: derefAliases never, typesOnly false.
type searchRequest struct {
	base      string
	scope     int
	sizeLimit int32
	timeLimit int32
	filter    []byte // BER-encoded Filter (ldap.CompileFilter)
	// filterText is the same filter as text, for the go-ldap client.
	filterText string
	attrs      []string
}

// search sends r and collects its entries. Like go-ldap's Search, a
// result code other than success comes back as *ldap.Error together with
// the entries received (sizeLimitExceeded after two entries, say); any
// malformed or unexpected message, or more entries than the size limit
// allows, is a connection error.
func (b *wireConn) search(r *searchRequest) (*ldap.SearchResult, error) {
	if b.failed {
		return nil, errConnDead
	}
	id := b.nextID()
	b.out = appendSearchRequest(b.out[:0], id, r)
	if err := b.send("search"); err != nil {
		return nil, err
	}
	res, err := b.readSearch(id, r.sizeLimit)
	if err != nil && ldap.IsErrorWithCode(err, ldap.ErrorNetwork) {
		b.failed = true
		return nil, err
	}
	return res, err // an answer, whatever its result code: the connection stays usable
}

// readSearch reads the responses to search id. A nil error means a
// well-formed SearchResultDone with resultCode 0.
func (b *wireConn) readSearch(id, sizeLimit int32) (*ldap.SearchResult, error) {
	limit := maxEntries
	if sizeLimit > 0 {
		limit = int(sizeLimit)
	}
	res := &ldap.SearchResult{}
	refs, refBytes := 0, 0
	for {
		body, err := b.readMessage(maxSearchMessage)
		if err != nil {
			var tl *tooLargeError
			if errors.As(err, &tl) {
				// The server is fine; this entry is not for us. The rest of
				// the answer is not read: the connection goes.
				b.failed = true
				return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrEntryTooLarge, tl.size, tl.limit)
			}
			return nil, err
		}
		tag, op, _, err := parseMessage(body, id)
		if err != nil {
			return nil, err
		}
		switch tag {
		case tagSearchEntry:
			if len(res.Entries) >= limit {
				return nil, connErr("ldap: more than %d entries for a search limited to %d", len(res.Entries), limit)
			}
			e, err := parseEntry(op)
			if err != nil {
				return nil, err
			}
			res.Entries = append(res.Entries, e)
		case tagSearchReference:
			// Not followed (as Cyrus and go-ldap's Search); still checked.
			if len(op) == 0 || !allTagged(op, tagOctets) {
				return nil, errMalformed
			}
			refs++
			refBytes += len(op)
			if refs > maxReferences || refBytes > maxReferenceBytes {
				// Not a protocol error: the server is fine, this search
				// is not. The rest of the answer is not read.
				b.failed = true
				return nil, fmt.Errorf("%w: more than %d references or %d bytes of them", ErrReferences, maxReferences, maxReferenceBytes)
			}
		case tagSearchDone:
			done, err := parseResult(op, tagSearchDone)
			if err != nil {
				return nil, err
			}
			b.endOp()
			return res, done.err()
		default:
			return nil, connErr("ldap: unexpected response (tag 0x%02x) to search %d", tag, id)
		}
	}
}

// parseEntry decodes the contents of a SearchResultEntry:
//
//	SearchResultEntry ::= [APPLICATION 4] SEQUENCE { objectName LDAPDN, attributes PartialAttributeList }
//	PartialAttributeList ::= SEQUENCE OF SEQUENCE { type AttributeDescription, vals SET OF AttributeValue }
//
// The DN and every value are substrings of one copy of the message: an
// entry costs four allocations plus one per attribute, however many values
// it has. Only Values
// are filled (the access rules and the verdict's attributes read those),
// not go-ldap's duplicate ByteValues. An empty DN is refused: it is never
// a user, and a bind with an empty name is not a password check.
func parseEntry(p []byte) (*ldap.Entry, error) {
	all := string(p)
	// sub returns v, a subslice of p, as the same bytes of all: its offset
	// is how much shorter its capacity is than p's.
	sub := func(v []byte) string {
		off := cap(p) - cap(v)
		return all[off : off+len(v)]
	}
	tag, dn, rest, err := nextTLV(p)
	if err != nil || tag != tagOctets || len(dn) == 0 {
		return nil, errMalformed
	}
	tag, list, rest, err := nextTLV(rest)
	if err != nil || tag != tagSequence || len(rest) > 0 {
		return nil, errMalformed
	}
	n, ok := countTLVs(list, 0)
	if !ok {
		return nil, errMalformed
	}
	e := &ldap.Entry{DN: sub(dn), Attributes: make([]*ldap.EntryAttribute, 0, n)}
	attrs := make([]ldap.EntryAttribute, n)
	for i := 0; len(list) > 0; i++ {
		var pa []byte
		tag, pa, list, _ = nextTLV(list) // well-formed: counted above
		if tag != tagSequence {
			return nil, errMalformed
		}
		tag, typ, pa, err := nextTLV(pa)
		if err != nil || tag != tagOctets || len(typ) == 0 {
			return nil, errMalformed
		}
		tag, vals, pa, err := nextTLV(pa)
		if err != nil || tag != tagSet || len(pa) > 0 {
			return nil, errMalformed
		}
		k, ok := countTLVs(vals, tagOctets)
		if !ok {
			return nil, errMalformed
		}
		values := make([]string, 0, k)
		for len(vals) > 0 {
			var v []byte
			_, v, vals, _ = nextTLV(vals)
			values = append(values, sub(v))
		}
		attrs[i] = ldap.EntryAttribute{Name: sub(typ), Values: values}
		e.Attributes = append(e.Attributes, &attrs[i])
	}
	return e, nil
}

// appendSearchRequest appends
//
//	LDAPMessage { id, SearchRequest { baseObject, scope, derefAliases neverDerefAliases,
//	    sizeLimit, timeLimit, typesOnly FALSE, filter, attributes } }
func appendSearchRequest(dst []byte, id int32, r *searchRequest) []byte {
	attrs := 0
	for _, a := range r.attrs {
		attrs += tlvLen(len(a))
	}
	op := tlvLen(len(r.base)) + 3 + 3 + 2 + intLen(r.sizeLimit) + 2 + intLen(r.timeLimit) + 3 +
		len(r.filter) + tlvLen(attrs)
	dst = append(dst, tagSequence)
	dst = appendLen(dst, 2+intLen(id)+tlvLen(op))
	dst = appendInt(dst, id)
	dst = append(dst, tagSearchRequest)
	dst = appendLen(dst, op)
	dst = appendString(dst, tagOctets, r.base)
	dst = append(dst, tagEnumerated, 1, byte(r.scope))
	dst = append(dst, tagEnumerated, 1, byte(ldap.NeverDerefAliases))
	dst = appendInt(dst, r.sizeLimit)
	dst = appendInt(dst, r.timeLimit)
	dst = append(dst, tagBoolean, 1, 0)
	dst = append(dst, r.filter...)
	dst = append(dst, tagSequence)
	dst = appendLen(dst, attrs)
	for _, a := range r.attrs {
		dst = appendString(dst, tagOctets, a)
	}
	return dst
}
