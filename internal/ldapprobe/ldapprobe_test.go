package ldapprobe

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// A fake server reads the BindRequest and answers with a 389-ds style
// refusal carrying two controls, then a notice of disconnection.
func TestBindReadsResultAndControls(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		defer server.Close()
		req, err := ber.ReadPacket(server)
		if err != nil {
			return
		}
		id := req.Children[0].Value.(int64)
		ctlOID := string(req.Children[2].Children[0].Children[0].Data.Bytes())
		resp := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
		resp.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, ""))
		op := ber.Encode(ber.ClassApplication, ber.TypeConstructed, TagBindResponse, nil, "")
		op.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(49), ""))
		op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", ""))
		op.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "password expired!", ""))
		resp.AppendChild(op)
		cs := ber.Encode(ber.ClassContext, ber.TypeConstructed, 0, nil, "")
		for _, c := range []struct{ oid, val string }{{ctlOID, "\x30\x03\x81\x01\x00"}, {"2.16.840.1.113730.3.4.4", "0"}} {
			cp := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
			cp.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, c.oid, ""))
			cp.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, c.val, ""))
			cs.AppendChild(cp)
		}
		resp.AppendChild(cs)
		server.Write(resp.Bytes())

		notice := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "")
		notice.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(0), ""))
		ext := ber.Encode(ber.ClassApplication, ber.TypeConstructed, TagExtendedResponse, nil, "")
		ext.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, int64(52), ""))
		ext.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", ""))
		ext.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "bye", ""))
		ext.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 10, NoticeOfDisconnection, ""))
		notice.AppendChild(ext)
		server.Write(notice.Bytes())
	}()
	m, err := Bind(client, 7, "uid=x,dc=example,dc=org", "pw", Control{OID: "1.3.6.1.4.1.42.2.27.8.5.1"})
	if err != nil {
		t.Fatal(err)
	}
	if m.ID != 7 || m.Tag != TagBindResponse || m.Code != 49 || m.Diagnostic != "password expired!" {
		t.Fatalf("got %v", m)
	}
	if c := m.Control("1.3.6.1.4.1.42.2.27.8.5.1"); c == nil || !bytes.Equal(c.Value, []byte{0x30, 0x03, 0x81, 0x01, 0x00}) {
		t.Errorf("ppolicy control: %v", c)
	}
	if c := m.Control("2.16.840.1.113730.3.4.4"); c == nil || string(c.Value) != "0" {
		t.Errorf("must-change control: %v", c)
	}
	msgs, end, _ := Idle(client, 2*time.Second)
	if len(msgs) != 1 || msgs[0].ResponseName != NoticeOfDisconnection || msgs[0].Code != 52 || !errors.Is(end, io.EOF) {
		t.Errorf("idle: %v, %v; want one notice of disconnection, then EOF", msgs, end)
	}
}
