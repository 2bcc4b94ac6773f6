package directory

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
)

// berSearchRequest is the SearchRequest as go-ldap builds it (search.go).
func berSearchRequest(t *testing.T, id int32, r *searchRequest, filter string) []byte {
	t.Helper()
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "LDAP Request")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(id), "MessageID"))
	s := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationSearchRequest, nil, "Search Request")
	s.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, r.base, "Base DN"))
	s.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, uint64(r.scope), "Scope"))
	s.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, uint64(ldap.NeverDerefAliases), "Deref Aliases"))
	s.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, uint64(r.sizeLimit), "Size Limit"))
	s.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, uint64(r.timeLimit), "Time Limit"))
	s.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, false, "Types Only"))
	f, err := ldap.CompileFilter(filter)
	if err != nil {
		t.Fatal(err)
	}
	s.AppendChild(f)
	attrs := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "Attributes")
	for _, a := range r.attrs {
		attrs.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, a, "Attribute"))
	}
	s.AppendChild(attrs)
	p.AppendChild(s)
	return p.Bytes()
}

func TestAppendSearchRequestMatchesGoLDAP(t *testing.T) {
	filters := []string{"(uid=alice)", "(&(uid=a\\2ab)(objectClass=posixAccount))", "(|(mail=" + strings.Repeat("m", 300) + ")(uid=x))"}
	attrSets := [][]string{nil, {"1.1"}, {"host", "authorizedService", "mail"}, {strings.Repeat("a", 200)}}
	for _, id := range []int32{1, 127, 128, 1<<31 - 1} {
		for _, base := range []string{"", "ou=people,dc=example,dc=org", strings.Repeat("o", 130)} {
			for _, limit := range []int32{0, 1, 2, 128, 300} {
				for _, f := range filters {
					for _, attrs := range attrSets {
						fp, err := ldap.CompileFilter(f)
						if err != nil {
							t.Fatal(err)
						}
						r := &searchRequest{base: base, scope: ldap.ScopeWholeSubtree, sizeLimit: limit, timeLimit: limit, filter: fp.Bytes(), attrs: attrs}
						got := appendSearchRequest(nil, id, r)
						want := berSearchRequest(t, id, r, f)
						if !bytes.Equal(got, want) {
							t.Fatalf("id %d base %q limit %d filter %s attrs %v:\n got %x\nwant %x", id, base, limit, f, attrs, got, want)
						}
					}
				}
			}
		}
	}
}

// Hex builders for search responses to message 7.
func entryMsg(dn string, attrs ...string) []byte {
	return msg(id7, hexTLV(tagSearchEntry, hexTLV(tagOctets, hex.EncodeToString([]byte(dn)))+hexTLV(tagSequence, strings.Join(attrs, ""))))
}

func attr(name string, vals ...string) string {
	v := ""
	for _, s := range vals {
		v += hexTLV(tagOctets, hex.EncodeToString([]byte(s)))
	}
	return hexTLV(tagSequence, hexTLV(tagOctets, hex.EncodeToString([]byte(name)))+hexTLV(tagSet, v))
}

func doneMsg(code string, extra ...string) []byte {
	return msg(id7, hexTLV(tagSearchDone, "0a01"+code+"0400"+"0400"+strings.Join(extra, "")))
}

func refMsg(urls ...string) []byte {
	v := ""
	for _, u := range urls {
		v += hexTLV(tagOctets, hex.EncodeToString([]byte(u)))
	}
	return msg(id7, hexTLV(tagSearchReference, v))
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func readSearchBytes(r io.Reader, limit int32) (*wireConn, *ldap.SearchResult, error) {
	b := &wireConn{rd: r}
	res, err := b.readSearch(7, limit)
	if err != nil && ldap.IsErrorWithCode(err, ldap.ErrorNetwork) {
		b.failed = true // as search does
	}
	return b, res, err
}

type entryWant struct {
	dn    string
	attrs map[string][]string
}

func entriesOf(res *ldap.SearchResult) []entryWant {
	if res == nil {
		return nil
	}
	var out []entryWant
	for _, e := range res.Entries {
		w := entryWant{dn: e.DN, attrs: map[string][]string{}}
		for _, a := range e.Attributes {
			w.attrs[a.Name] = a.Values
		}
		out = append(out, w)
	}
	return out
}

func TestReadSearch(t *testing.T) {
	alice := entryMsg("uid=alice,ou=people,dc=example,dc=org", attr("host", "mail.example.org", "!imap.example.org"), attr("mail", "alice@example.org"))
	aliceWant := entryWant{"uid=alice,ou=people,dc=example,dc=org", map[string][]string{
		"host": {"mail.example.org", "!imap.example.org"}, "mail": {"alice@example.org"}}}
	bob := entryMsg("uid=bob,ou=people,dc=example,dc=org")
	bobWant := entryWant{"uid=bob,ou=people,dc=example,dc=org", map[string][]string{}}
	big := entryMsg("uid=big,dc=org", attr("host", strings.Repeat("h", 70000)))
	tests := []struct {
		name    string
		data    []byte
		limit   int32
		entries []entryWant
		code    int   // LDAP result code of an answer
		conn    bool  // a connection error instead
		is      error // or this error, the connection dropped but the server not at fault
	}{
		{"one entry", cat(alice, doneMsg("00")), 2, []entryWant{aliceWant}, 0, false, nil},
		{"no attributes", cat(bob, doneMsg("00")), 2, []entryWant{bobWant}, 0, false, nil},
		{"no entry", doneMsg("00"), 2, nil, 0, false, nil},
		{"no such object", doneMsg("20"), 2, nil, 32, false, nil},
		{"two entries, size limit exceeded", cat(alice, bob, doneMsg("04")), 2, []entryWant{aliceWant, bobWant}, 4, false, nil},
		{"entry with controls", cat(msg(id7, hexTLV(tagSearchEntry, hexTLV(tagOctets, "613d62")+"3000"), hexTLV(tagControls, hexTLV(tagSequence, "0403312e32"))), doneMsg("00")),
			2, []entryWant{{"a=b", map[string][]string{}}}, 0, false, nil},
		{"attribute without values", cat(entryMsg("a=b", hexTLV(tagSequence, hexTLV(tagOctets, "68")+"3100")), doneMsg("00")),
			2, []entryWant{{"a=b", map[string][]string{"h": {}}}}, 0, false, nil},
		{"reference ignored", cat(refMsg("ldap://other/"), alice, doneMsg("00")), 2, []entryWant{aliceWant}, 0, false, nil},
		{"done with referral", cat(doneMsg("0a", hexTLV(tagReferral, hexTLV(tagOctets, "6c")))), 2, nil, 10, false, nil},
		{"entry over 64 KiB", cat(big, doneMsg("00")), 2, []entryWant{{"uid=big,dc=org", map[string][]string{"host": {strings.Repeat("h", 70000)}}}}, 0, false, nil},

		{"more entries than the size limit", cat(alice, bob, doneMsg("00")), 1, nil, 0, true, nil},
		{"no done", alice, 2, nil, 0, true, nil},
		{"nothing", nil, 2, nil, 0, true, nil},
		{"empty DN", cat(entryMsg(""), doneMsg("00")), 2, nil, 0, true, nil},
		{"empty attribute type", cat(entryMsg("a=b", attr("", "x")), doneMsg("00")), 2, nil, 0, true, nil},
		{"value not an octet string", cat(entryMsg("a=b", hexTLV(tagSequence, hexTLV(tagOctets, "68")+hexTLV(tagSet, "020101"))), doneMsg("00")), 2, nil, 0, true, nil},
		{"vals not a set", cat(entryMsg("a=b", hexTLV(tagSequence, hexTLV(tagOctets, "68")+hexTLV(tagSequence, ""))), doneMsg("00")), 2, nil, 0, true, nil},
		{"attribute list not a sequence", cat(msg(id7, hexTLV(tagSearchEntry, hexTLV(tagOctets, "613d62")+"3100")), doneMsg("00")), 2, nil, 0, true, nil},
		{"bytes after the attribute list", cat(msg(id7, hexTLV(tagSearchEntry, hexTLV(tagOctets, "613d62")+"3000"+"0400")), doneMsg("00")), 2, nil, 0, true, nil},
		{"truncated entry", cat(msg(id7, hexTLV(tagSearchEntry, hexTLV(tagOctets, "613d62")+"3005")), doneMsg("00")), 2, nil, 0, true, nil},
		{"empty reference", cat(refMsg(), doneMsg("00")), 2, nil, 0, true, nil},
		{"20 references skipped", cat(bytes.Repeat(refMsg("ldap://127.0.0.1:1/cn=referral,dc=elsewhere"), 20), alice, doneMsg("00")), 2, []entryWant{aliceWant}, 0, false, nil},
		{"as many references as allowed", cat(bytes.Repeat(refMsg("ldap://x/"), maxReferences), doneMsg("00")), 2, nil, 0, false, nil},
		{"too many references", cat(bytes.Repeat(refMsg("ldap://x/"), maxReferences+1), doneMsg("00")), 2, nil, 0, false, ErrReferences},
		{"too many bytes of references", cat(bytes.Repeat(refMsg(strings.Repeat("u", 60000)), 5), doneMsg("00")), 2, nil, 0, false, ErrReferences},
		{"other message ID", cat(msg("020108", hexTLV(tagSearchDone, "0a0100"+"0400"+"0400"))), 2, nil, 0, true, nil},
		{"notice of disconnection", msg("020100", hexTLV(tagExtendedResponse, "0a0134"+"0400"+"0400")), 2, nil, 0, true, nil},
		{"bind response", msg(id7, bindResp("00")), 2, nil, 0, true, nil},
		{"done with SASL creds", doneMsg("00", "8700"), 2, nil, 0, true, nil},
		{"entry of 300 KB", cat(entryMsg("a=b", attr("jpegPhoto", strings.Repeat("x", 300000))), doneMsg("00")), 2,
			[]entryWant{{"a=b", map[string][]string{"jpegPhoto": {strings.Repeat("x", 300000)}}}}, 0, false, nil},
		{"entry over the limit", cat(entryMsg("a=b", attr("h", strings.Repeat("x", maxSearchMessage))), doneMsg("00")), 2, nil, 0, false, ErrEntryTooLarge},
	}
	readers := map[string]func([]byte) io.Reader{
		"whole":    func(p []byte) io.Reader { return bytes.NewReader(p) },
		"one byte": func(p []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(p)) },
	}
	for rname, mk := range readers {
		for _, tt := range tests {
			b, res, err := readSearchBytes(mk(tt.data), tt.limit)
			if tt.is != nil {
				if !errors.Is(err, tt.is) || IsConnection(err) || !b.failed {
					t.Errorf("%s, %s: err %v dead %v, want %v (not a connection error) and the connection dropped", rname, tt.name, err, b.failed, tt.is)
				}
				continue
			}
			if tt.conn {
				if !ldap.IsErrorWithCode(err, ldap.ErrorNetwork) || !b.failed {
					t.Errorf("%s, %s: err %v dead %v, want a connection error", rname, tt.name, err, b.failed)
				}
				continue
			}
			switch {
			case tt.code == 0 && err != nil:
				t.Errorf("%s, %s: %v", rname, tt.name, err)
			case tt.code != 0 && !ldap.IsErrorWithCode(err, uint16(tt.code)):
				t.Errorf("%s, %s: err %v, want result %d", rname, tt.name, err, tt.code)
			case b.failed:
				t.Errorf("%s, %s: connection dead after a well-formed answer", rname, tt.name)
			}
			if got := entriesOf(res); !reflect.DeepEqual(got, tt.entries) {
				t.Errorf("%s, %s: entries %+v, want %+v", rname, tt.name, got, tt.entries)
			}
		}
	}
}

func TestReadSearchBytesAfterDoneRetireConnection(t *testing.T) {
	data := cat(doneMsg("00"), msg("020100", hexTLV(tagExtendedResponse, "0a0134"+"0400"+"0400")))
	b, _, err := readSearchBytes(bytes.NewReader(data), 2)
	if err != nil {
		t.Fatal(err)
	}
	if !b.failed {
		t.Error("bytes after the answer: connection still reusable")
	}
}

// TestSearchOverConnection: a search and a bind in turn on one connection,
// the server's answers arriving in one write; and a server that never
// answers a search.
func TestSearchOverConnection(t *testing.T) {
	fp, _ := ldap.CompileFilter("(uid=alice)")
	r := &searchRequest{base: "dc=org", scope: ldap.ScopeWholeSubtree, sizeLimit: 2, timeLimit: 5, filter: fp.Bytes(), attrs: []string{"host"}}
	b := fakeServer(t, cat(entryMsg("uid=alice,dc=org", attr("host", "*")), doneMsg("00")))
	b.nc.SetDeadline(time.Now().Add(5 * time.Second))
	res, err := b.search(r)
	if err != nil || len(res.Entries) != 1 || res.Entries[0].GetAttributeValue("host") != "*" || b.failed {
		t.Fatalf("search: %v %+v dead %v", err, entriesOf(res), b.failed)
	}

	// Result codes are answers: the entries come back and the connection stays usable.
	b = fakeServer(t, cat(entryMsg("uid=a,dc=org"), entryMsg("uid=b,dc=org"), doneMsg("04")))
	b.nc.SetDeadline(time.Now().Add(5 * time.Second))
	res, err = b.search(r)
	if !ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) || res == nil || len(res.Entries) != 2 || b.failed {
		t.Errorf("size limit exceeded: %v %+v dead %v", err, entriesOf(res), b.failed)
	}
	b = fakeServer(t, doneMsg("20"))
	b.nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.search(r); !ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) || b.failed {
		t.Errorf("no such object: %v dead %v", err, b.failed)
	}

	b = fakeServer(t, nil)
	b.nc.SetDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := b.search(r); !ldap.IsErrorWithCode(err, ldap.ErrorNetwork) || !b.failed || !strings.Contains(err.Error(), "i/o timeout") {
		t.Errorf("no answer: err %v dead %v", err, b.failed)
	}
	if _, err := b.search(r); !errors.Is(err, errConnDead) {
		t.Errorf("dead connection reused: %v", err)
	}
}

// FuzzReadSearch: the reader never panics or loops, fails only with
// connection errors, the server's result code or one of its bounds (too
// many references, an entry too large), and every entry it
// returns is what an independent BER decoder (go-asn1-ber) reads in the
// same bytes.
func FuzzReadSearch(f *testing.F) {
	f.Add(cat(entryMsg("uid=a,dc=org", attr("host", "x", "y")), doneMsg("00")), int32(2))
	f.Add(cat(entryMsg("a=b"), entryMsg("c=d"), doneMsg("04")), int32(2))
	f.Add(cat(refMsg("ldap://x/"), doneMsg("00")), int32(0))
	f.Add(doneMsg("20"), int32(1))
	f.Add(cat(bytes.Repeat(refMsg("ldap://127.0.0.1:1/cn=r,dc=x"), 20), entryMsg("a=b"), doneMsg("00")), int32(2))
	f.Fuzz(func(t *testing.T, data []byte, limit int32) {
		if limit < 0 {
			limit = 0
		}
		b, res, err := readSearchBytes(bytes.NewReader(data), limit)
		if errors.Is(err, ErrReferences) || errors.Is(err, ErrEntryTooLarge) {
			if !b.failed || res != nil {
				t.Fatalf("bound hit: connection kept or entries returned")
			}
			return
		}
		var le *ldap.Error
		if err != nil && !errors.As(err, &le) {
			t.Fatalf("error is not an *ldap.Error: %v", err)
		}
		if err != nil && le.ResultCode == ldap.ErrorNetwork {
			return
		}
		// An answer: the entries must be the SearchResultEntry messages in data.
		var want []entryWant
		for rd := bytes.NewReader(data); ; {
			p, perr := ber.ReadPacket(rd)
			if perr != nil {
				t.Fatalf("answer from bytes asn1-ber cannot decode: %v", perr)
			}
			if len(p.Children) < 2 {
				t.Fatalf("answer from a message without protocolOp")
			}
			op := p.Children[1]
			if op.ClassType == ber.ClassApplication && op.Tag == ldap.ApplicationSearchResultDone {
				break // what follows is not part of the answer
			}
			if op.ClassType != ber.ClassApplication || op.Tag != ldap.ApplicationSearchResultEntry {
				continue
			}
			if len(op.Children) != 2 {
				t.Fatalf("entry with %d parts accepted", len(op.Children))
			}
			w := entryWant{dn: string(op.Children[0].Data.Bytes()), attrs: map[string][]string{}}
			for _, a := range op.Children[1].Children {
				vals := []string{}
				for _, v := range a.Children[1].Children {
					vals = append(vals, string(v.Data.Bytes()))
				}
				w.attrs[string(a.Children[0].Data.Bytes())] = vals
			}
			want = append(want, w)
		}
		got := entriesOf(res)
		// Equal up to attribute names given twice (the map keeps the last).
		if len(got) != len(want) {
			t.Fatalf("%d entries, asn1-ber finds %d", len(got), len(want))
		}
		for i := range got {
			if got[i].dn != want[i].dn || len(got[i].attrs) != len(want[i].attrs) {
				t.Fatalf("entry %d: %+v, asn1-ber reads %+v", i, got[i], want[i])
			}
			for k, v := range want[i].attrs {
				if !reflect.DeepEqual(got[i].attrs[k], v) {
					t.Fatalf("entry %d attribute %q: %q, asn1-ber reads %q", i, k, got[i].attrs[k], v)
				}
			}
		}
	})
}
