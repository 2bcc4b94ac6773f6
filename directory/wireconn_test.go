package directory

import (
	"bytes"
	"encoding/hex"
	"net"
	"strings"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
)

// berBindRequest is the BindRequest as go-ldap builds it (bind.go), with
// the password policy request control (control.go) when policy is set.
func berBindRequest(id int32, dn, pw string, policy bool) []byte {
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "LDAP Request")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(id), "MessageID"))
	r := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationBindRequest, nil, "Bind Request")
	r.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, 3, "Version"))
	r.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, "User Name"))
	r.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, pw, "Password"))
	p.AppendChild(r)
	if policy {
		cs := ber.Encode(ber.ClassContext, ber.TypeConstructed, 0, nil, "Controls")
		cs.AppendChild(ldap.NewControlBeheraPasswordPolicy().Encode())
		p.AppendChild(cs)
	}
	return p.Bytes()
}

func TestAppendBindRequestMatchesGoLDAP(t *testing.T) {
	ids := []int32{1, 2, 127, 128, 255, 256, 32767, 32768, 1 << 23, 1<<31 - 1}
	sizes := []int{0, 1, 50, 110, 127, 128, 200, 255, 256, 4096, 65535, 65536, 70000}
	for _, policy := range []bool{false, true} {
		for _, id := range ids {
			for _, n := range sizes {
				dn := "uid=" + strings.Repeat("d", n) + ",dc=example,dc=org"
				pw := strings.Repeat("p", n)
				got := appendBindRequest(nil, id, dn, pw, policy)
				want := berBindRequest(id, dn, pw, policy)
				if !bytes.Equal(got, want) {
					t.Fatalf("policy %v id %d size %d:\n got %x\nwant %x", policy, id, n, got[:min(len(got), 40)], want[:min(len(want), 40)])
				}
			}
		}
	}
	// And two checked by hand (RFC 4511 4.2; 4.1.11 for the control).
	got := hex.EncodeToString(appendBindRequest(nil, 2, "cn=a", "pw", false))
	want := "3012" + "020102" + "600d" + "020103" + "0404636e3d61" + "80027077"
	if got != want {
		t.Errorf("bind request %s, want %s", got, want)
	}
	got = hex.EncodeToString(appendBindRequest(nil, 2, "cn=a", "pw", true))
	want = "3031" + "020102" + "600d" + "020103" + "0404636e3d61" + "80027077" +
		"a01d" + "301b" + "0419" + hex.EncodeToString([]byte(OIDPasswordPolicy))
	if got != want {
		t.Errorf("bind request with the policy control %s, want %s", got, want)
	}
}

func TestAppendStartTLSRequest(t *testing.T) {
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "LDAP Request")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(1), "MessageID"))
	r := ber.Encode(ber.ClassApplication, ber.TypeConstructed, ldap.ApplicationExtendedRequest, nil, "Start TLS")
	r.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, oidStartTLS, "TLS Extended Command"))
	p.AppendChild(r)
	if got := appendStartTLSRequest(nil, 1); !bytes.Equal(got, p.Bytes()) {
		t.Errorf("StartTLS request %x, want %x", got, p.Bytes())
	}
}

// msg builds an LDAPMessage from hex parts of its contents.
func msg(parts ...string) []byte {
	body, err := hex.DecodeString(strings.Join(parts, ""))
	if err != nil {
		panic(err)
	}
	out := []byte{tagSequence}
	out = appendLen(out, len(body))
	return append(out, body...)
}

func hexTLV(tag byte, content string) string {
	b, err := hex.DecodeString(content)
	if err != nil {
		panic(err)
	}
	out := appendLen([]byte{tag}, len(b))
	return hex.EncodeToString(append(out, b...))
}

// bindResp is the contents of a BindResponse with result code code.
func bindResp(code string, extra ...string) string {
	return hexTLV(tagBindResponse, "0a01"+code+"0400"+"0400"+strings.Join(extra, ""))
}

const id7 = "020107" // messageID 7

// nonMinimal re-encodes a short-form message length in the 4-byte long form.
func nonMinimal(m []byte) []byte {
	return append([]byte{tagSequence, 0x84, 0, 0, 0, m[1]}, m[2:]...)
}

func readBind(data []byte, id int32) (*wireConn, error) {
	b := &wireConn{rd: bytes.NewReader(data)}
	res, err := b.readResponse(id, tagBindResponse)
	if err != nil {
		return b, err
	}
	return b, res.err()
}

func TestReadBindResponse(t *testing.T) {
	noticeOfDisconnection := hexTLV(tagExtendedResponse, "0a0134"+"0400"+"040873687574646f776e"+
		hex.EncodeToString(append([]byte{tagResponseName, 22}, "1.3.6.1.4.1.1466.20036"...)))
	long := func(n int) []byte { // a success with a diagnosticMessage of n bytes, long-form lengths
		diag := strings.Repeat("61", n)
		return msg(id7, hexTLV(tagBindResponse, "0a0100"+"0400"+hexTLV(tagOctets, diag)))
	}
	tests := []struct {
		name string
		data []byte
		code int  // result code for a well-formed answer
		conn bool // a connection error (conn dead) instead
	}{
		{"success", msg(id7, bindResp("00")), 0, false},
		{"success, long-form lengths", long(300), 0, false},
		{"success, non-minimal length", nonMinimal(msg(id7, bindResp("00"))), 0, false},
		{"success with controls", msg(id7, bindResp("00"), hexTLV(tagControls, hexTLV(tagSequence, "0403312e32"))), 0, false},
		{"success with serverSaslCreds", msg(id7, bindResp("00", "8700")), 0, false},
		{"invalid credentials", msg(id7, bindResp("31")), 49, false},
		{"unwilling to perform", msg(id7, bindResp("35")), 53, false},
		{"constraint violation", msg(id7, bindResp("13")), 19, false},
		{"busy", msg(id7, bindResp("33")), 51, false},
		{"referral", msg(id7, bindResp("0a", hexTLV(tagReferral, "04066c6461703a2f"))), 10, false},
		{"two-byte result code", msg(id7, hexTLV(tagBindResponse, "0a020031"+"0400"+"0400")), 49, false},

		{"empty", nil, 0, true},
		{"one byte", []byte{0x30}, 0, true},
		{"truncated header", []byte{0x30, 0x82, 0x01}, 0, true},
		{"truncated body", msg(id7, bindResp("00"))[:10], 0, true},
		{"not a sequence", append([]byte{0x31}, msg(id7, bindResp("00"))[1:]...), 0, true},
		{"indefinite length", append([]byte{0x30, 0x80}, append(msg(id7, bindResp("00"))[2:], 0, 0)...), 0, true},
		{"oversized length", []byte{0x30, 0x83, 0x01, 0x00, 0x01}, 0, true},
		{"huge length", []byte{0x30, 0x84, 0xff, 0xff, 0xff, 0xff}, 0, true},
		{"five length bytes", []byte{0x30, 0x85, 0, 0, 0, 0, 0x0e}, 0, true},
		{"wrong message ID", msg("020108", bindResp("00")), 0, true},
		{"negative message ID", msg("0201f9", bindResp("00")), 0, true},
		{"message ID too long", msg("02050000000007", bindResp("00")), 0, true},
		{"empty message ID", msg("0200", bindResp("00")), 0, true},
		{"message ID not an integer", msg("0a0107", bindResp("00")), 0, true},
		{"search done instead of bind response", msg(id7, hexTLV(0x65, "0a0100"+"0400"+"0400")), 0, true},
		{"extended response instead of bind response", msg(id7, hexTLV(tagExtendedResponse, "0a0100"+"0400"+"0400")), 0, true},
		{"primitive bind response", msg(id7, hexTLV(0x41, "0a0100"+"0400"+"0400")), 0, true},
		{"result code as integer", msg(id7, hexTLV(tagBindResponse, "020100"+"0400"+"0400")), 0, true},
		{"negative result code", msg(id7, bindResp("ff")), 0, true},
		{"result code 200", msg(id7, hexTLV(tagBindResponse, "0a0200c8"+"0400"+"0400")), 0, true},
		{"result code only", msg(id7, hexTLV(tagBindResponse, "0a0100")), 0, true},
		{"matchedDN missing", msg(id7, hexTLV(tagBindResponse, "0a0100"+"0400")), 0, true},
		{"matchedDN not a string", msg(id7, hexTLV(tagBindResponse, "0a0100"+"0a00"+"0400")), 0, true},
		{"junk after LDAPResult", msg(id7, bindResp("00", "0400")), 0, true},
		{"junk bytes after LDAPResult", msg(id7, bindResp("00", "ff")), 0, true},
		{"serverSaslCreds twice", msg(id7, bindResp("00", "8700", "8700")), 0, true},
		{"referral after serverSaslCreds", msg(id7, bindResp("00", "8700", hexTLV(tagReferral, "0400"))), 0, true},
		{"empty referral", msg(id7, bindResp("0a", hexTLV(tagReferral, ""))), 0, true},
		{"junk after protocolOp", msg(id7, bindResp("00"), "0400"), 0, true},
		{"junk after controls", msg(id7, bindResp("00"), hexTLV(tagControls, ""), "0400"), 0, true},
		{"inner length past the message", msg(id7, "610c0a0100"), 0, true},
		{"inner indefinite length", msg(id7, "61800a010004000400"+"0000"), 0, true},
		{"inner high tag number", msg(id7, "7f01070a010004000400"), 0, true},
		{"notice of disconnection", msg("020100", noticeOfDisconnection), 0, true},
		{"unsolicited success with ID 0", msg("020100", bindResp("00")), 0, true},
	}
	for _, tt := range tests {
		b, err := readBind(tt.data, 7)
		if tt.conn {
			if err == nil || !ldap.IsErrorWithCode(err, ldap.ErrorNetwork) {
				t.Errorf("%s: err = %v, want a connection error", tt.name, err)
			}
			continue
		}
		switch {
		case tt.code == 0 && err != nil:
			t.Errorf("%s: err = %v, want success", tt.name, err)
		case tt.code != 0 && !ldap.IsErrorWithCode(err, uint16(tt.code)):
			t.Errorf("%s: err = %v, want result %d", tt.name, err, tt.code)
		case b.failed:
			t.Errorf("%s: connection marked dead after a well-formed answer", tt.name)
		}
	}
}

func TestReadResponseExtraBytesRetireConnection(t *testing.T) {
	data := append(msg(id7, bindResp("00")), msg("020100", bindResp("34"))...)
	b, err := readBind(data, 7)
	if err != nil {
		t.Fatal(err)
	}
	if !b.failed {
		t.Error("bytes after the answer: connection still reusable")
	}
}

func TestStartTLSResponse(t *testing.T) {
	name := hex.EncodeToString(append([]byte{tagResponseName, 22}, oidStartTLS...))
	tests := []struct {
		name string
		data []byte
		ok   bool
	}{
		{"success", msg("020101", hexTLV(tagExtendedResponse, "0a0100"+"0400"+"0400")), true},
		{"success with name", msg("020101", hexTLV(tagExtendedResponse, "0a0100"+"0400"+"0400"+name)), true},
		{"success with name and value", msg("020101", hexTLV(tagExtendedResponse, "0a0100"+"0400"+"0400"+name+"8b00")), true},
		{"value before name", msg("020101", hexTLV(tagExtendedResponse, "0a0100"+"0400"+"0400"+"8b00"+name)), false},
		{"bind response", msg("020101", bindResp("00")), false},
		{"protocol error", msg("020101", hexTLV(tagExtendedResponse, "0a0102"+"0400"+"0400")), false},
	}
	for _, tt := range tests {
		b := &wireConn{rd: bytes.NewReader(tt.data)}
		res, err := b.readResponse(1, tagExtendedResponse)
		if err == nil {
			err = res.err()
		}
		if (err == nil) != tt.ok {
			t.Errorf("%s: err = %v", tt.name, err)
		}
	}
}

// fakeServer answers one request on a pipe with reply (nil: no answer).
func fakeServer(t *testing.T, reply []byte) *wireConn {
	t.Helper()
	client, server := net.Pipe()
	t.Cleanup(func() { client.Close(); server.Close() })
	go func() {
		buf := make([]byte, 4096)
		if _, err := server.Read(buf); err != nil {
			return
		}
		if reply != nil {
			server.Write(reply)
		}
	}()
	b := newWireConn(client, client)
	b.id = 6 // the next request is message 7
	return b
}

func TestBindOverConnection(t *testing.T) {
	b := fakeServer(t, msg(id7, bindResp("31")))
	b.nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.bind("cn=a", "pw", false); !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) || b.failed {
		t.Errorf("invalid credentials: err %v dead %v", err, b.failed)
	}

	b = fakeServer(t, msg("020100", bindResp("34")))
	b.nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.bind("cn=a", "pw", false); !ldap.IsErrorWithCode(err, ldap.ErrorNetwork) || !b.failed {
		t.Errorf("notice of disconnection: err %v dead %v", err, b.failed)
	}
	if _, err := b.bind("cn=a", "pw", false); !ldap.IsErrorWithCode(err, ldap.ErrorNetwork) {
		t.Errorf("dead connection reused: %v", err)
	}

	b = fakeServer(t, nil) // never answers
	b.nc.SetDeadline(time.Now().Add(100 * time.Millisecond))
	_, err := b.bind("cn=a", "pw", false)
	if !ldap.IsErrorWithCode(err, ldap.ErrorNetwork) || !b.failed || !strings.Contains(err.Error(), "i/o timeout") {
		t.Errorf("no answer: err %v dead %v", err, b.failed)
	}
	if strings.Contains(err.Error(), "pw") {
		t.Errorf("error shows the password: %v", err)
	}

	b = fakeServer(t, nil)
	if _, err := b.bind("cn=a", "", false); !ldap.IsErrorWithCode(err, ldap.ErrorEmptyPassword) {
		t.Errorf("empty password: %v", err)
	}
}

func TestBindClearsPasswordFromBuffer(t *testing.T) {
	b := fakeServer(t, msg(id7, bindResp("00")))
	b.nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := b.bind("cn=a", "sekrit-password", false); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b.out[:cap(b.out)], []byte("sekrit-password")) || bytes.Contains(b.in[:cap(b.in)], []byte("sekrit-password")) {
		t.Error("password left in the connection's buffer")
	}
}

func TestMessageIDWraps(t *testing.T) {
	b := &wireConn{id: 1<<31 - 1}
	if id := b.nextID(); id != 1 {
		t.Errorf("after 2^31-1: %d", id)
	}
}

// FuzzReadBindResponse: the parser never panics, and it reports success
// only for a well-formed BindResponse to this messageID with resultCode 0,
// as an independent BER decoder (go-asn1-ber) reads the same bytes.
func FuzzReadBindResponse(f *testing.F) {
	f.Add(msg(id7, bindResp("00")), int32(7))
	f.Add(msg(id7, bindResp("31")), int32(7))
	f.Add(msg(id7, bindResp("00"), hexTLV(tagControls, hexTLV(tagSequence, "0403312e32"))), int32(7))
	f.Add(msg("020100", bindResp("00")), int32(7))
	f.Add(nonMinimal(msg(id7, bindResp("00"))), int32(7))
	f.Add(msg("02020080", bindResp("00", "8700")), int32(128))
	f.Add(msg(id7, bindResp("31"), hexTLV(tagControls, ctrl(OIDPasswordPolicy, false, "308400000003810101"))), int32(7))
	f.Add(msg(id7, bindResp("00"), hexTLV(tagControls, ctrl(OIDPasswordPolicy, false, "3005a003810101")+ctrl(OIDPasswordExpired, false, ascii("0")))), int32(7))
	f.Fuzz(func(t *testing.T, data []byte, id int32) {
		if id <= 0 {
			id = 1
		}
		b := &wireConn{rd: bytes.NewReader(data)}
		res, err := b.readResponse(id, tagBindResponse)
		if err != nil {
			if !ldap.IsErrorWithCode(err, ldap.ErrorNetwork) {
				t.Fatalf("parse failure is not a connection error: %v", err)
			}
			return
		}
		if res.code != 0 {
			if res.code < 1 || res.code >= int(ldap.ErrorNetwork) {
				t.Fatalf("result code %d", res.code)
			}
			return
		}
		// Success claimed: check it with asn1-ber.
		p, perr := ber.DecodePacketErr(data)
		if perr != nil {
			t.Fatalf("success for bytes asn1-ber cannot decode: %v (%x)", perr, data)
		}
		if p.ClassType != ber.ClassUniversal || p.TagType != ber.TypeConstructed || p.Tag != ber.TagSequence || len(p.Children) < 2 || len(p.Children) > 3 {
			t.Fatalf("success for a non-LDAPMessage: %x", data)
		}
		if got, ok := p.Children[0].Value.(int64); !ok || p.Children[0].Tag != ber.TagInteger || got != int64(id) {
			t.Fatalf("success for message ID %v, want %d: %x", p.Children[0].Value, id, data)
		}
		op := p.Children[1]
		if op.ClassType != ber.ClassApplication || op.TagType != ber.TypeConstructed || op.Tag != ldap.ApplicationBindResponse || len(op.Children) < 3 {
			t.Fatalf("success for a non-BindResponse: %x", data)
		}
		rc := op.Children[0]
		if rc.Tag != ber.TagEnumerated || rc.ClassType != ber.ClassUniversal {
			t.Fatalf("success without an ENUMERATED result code: %x", data)
		}
		if v, err := ber.ParseInt64(rc.Data.Bytes()); err != nil || v != 0 {
			t.Fatalf("success for result code %d (%v): %x", v, err, data)
		}
	})
}
