// Package ldapprobe speaks just enough raw LDAP (RFC 4511) to record what a
// real directory puts on the wire: a simple bind's result code, diagnostic
// message and response controls with their undecoded values, and whatever a
// server sends on an idle connection before it closes it (a notice of
// disconnection, RFC 4511 §4.4.1, or nothing). The harness tests
// (ds389test, sambatest, slapdtest) use it to write their FINDINGS files;
// go-ldap's decoding of the same answers is recorded beside it.
package ldapprobe

import (
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	ber "github.com/go-asn1-ber/asn1-ber"
)

// Protocol op tags used here (RFC 4511 §4.2, §4.12).
const (
	TagBindRequest      = 0
	TagBindResponse     = 1
	TagExtendedResponse = 24
)

// NoticeOfDisconnection is the responseName of the unsolicited notification
// a server sends before it drops a connection (RFC 4511 §4.4.1).
const NoticeOfDisconnection = "1.3.6.1.4.1.1466.20036"

// Control is a control as it was on the wire.
type Control struct {
	OID      string
	Critical bool
	Value    []byte // nil when absent
}

func (c Control) String() string {
	s := c.OID
	if c.Critical {
		s += " critical"
	}
	if c.Value != nil {
		s += " value=" + hex.EncodeToString(c.Value)
		if printable(c.Value) {
			s += fmt.Sprintf(" (%q)", c.Value)
		}
	}
	return s
}

func printable(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return len(b) > 0
}

// Message is one LDAPMessage read from the server, reduced to the fields
// of an LDAPResult-bearing response.
type Message struct {
	ID           int64
	Tag          ber.Tag // protocol op, e.g. TagBindResponse
	Code         int64   // resultCode
	MatchedDN    string
	Diagnostic   string
	ResponseName string // extendedResponse [10], "" if absent
	Controls     []Control
}

func (m *Message) String() string {
	s := fmt.Sprintf("id=%d op=%d code=%d diag=%q", m.ID, m.Tag, m.Code, m.Diagnostic)
	if m.MatchedDN != "" {
		s += fmt.Sprintf(" matched=%q", m.MatchedDN)
	}
	if m.ResponseName != "" {
		s += " responseName=" + m.ResponseName
	}
	for _, c := range m.Controls {
		s += " control[" + c.String() + "]"
	}
	return s
}

// Dial opens a TCP connection to an ldap:// or ldaps:// URL (TLS with cfg).
func Dial(rawURL string, cfg *tls.Config) (net.Conn, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	switch strings.ToLower(u.Scheme) {
	case "ldap":
		return d.Dial("tcp", u.Host)
	case "ldaps":
		return tls.DialWithDialer(d, "tcp", u.Host, cfg)
	}
	return nil, fmt.Errorf("ldapprobe: unsupported URL %q", rawURL)
}

// Bind sends a simple BindRequest with message id and the given request
// controls and returns the BindResponse as it came.
func Bind(c net.Conn, id int64, dn, password string, controls ...Control) (*Message, error) {
	req := ber.Encode(ber.ClassApplication, ber.TypeConstructed, TagBindRequest, nil, "Bind Request")
	req.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, int64(3), "Version"))
	req.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, dn, "User Name"))
	req.AppendChild(ber.NewString(ber.ClassContext, ber.TypePrimitive, 0, password, "Password"))
	if err := write(c, id, req, controls); err != nil {
		return nil, err
	}
	for {
		m, err := Read(c)
		if err != nil {
			return nil, err
		}
		if m.ID == id {
			return m, nil
		}
		// An unsolicited notification (id 0) in between: report it.
		if m.ID == 0 {
			return m, nil
		}
	}
}

// Unbind sends an UnbindRequest (no answer is expected).
func Unbind(c net.Conn, id int64) error {
	return write(c, id, ber.Encode(ber.ClassApplication, ber.TypePrimitive, 2, nil, "Unbind Request"), nil)
}

func write(c net.Conn, id int64, op *ber.Packet, controls []Control) error {
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "LDAP Request")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, "MessageID"))
	p.AppendChild(op)
	if len(controls) > 0 {
		cs := ber.Encode(ber.ClassContext, ber.TypeConstructed, 0, nil, "Controls")
		for _, ctl := range controls {
			cp := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "Control")
			cp.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, ctl.OID, "Type"))
			if ctl.Critical {
				cp.AppendChild(ber.NewBoolean(ber.ClassUniversal, ber.TypePrimitive, ber.TagBoolean, true, "Criticality"))
			}
			if ctl.Value != nil {
				cp.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, string(ctl.Value), "Value"))
			}
			cs.AppendChild(cp)
		}
		p.AppendChild(cs)
	}
	_, err := c.Write(p.Bytes())
	return err
}

// Read reads one LDAPMessage. At the end of the stream it returns the
// reader's error (io.EOF for an orderly close, a reset error otherwise).
func Read(c net.Conn) (*Message, error) {
	p, err := ber.ReadPacket(c)
	if err != nil {
		return nil, err
	}
	if len(p.Children) < 2 {
		return nil, errors.New("ldapprobe: short LDAPMessage")
	}
	id, ok := p.Children[0].Value.(int64)
	if !ok {
		return nil, errors.New("ldapprobe: bad message id")
	}
	op := p.Children[1]
	m := &Message{ID: id, Tag: op.Tag}
	if len(op.Children) >= 3 {
		if v, ok := op.Children[0].Value.(int64); ok {
			m.Code = v
		}
		m.MatchedDN = octets(op.Children[1])
		m.Diagnostic = octets(op.Children[2])
		for _, ch := range op.Children[3:] {
			if ch.ClassType == ber.ClassContext && ch.Tag == 10 {
				m.ResponseName = octets(ch)
			}
		}
	}
	if len(p.Children) >= 3 {
		for _, cp := range p.Children[2].Children {
			var ctl Control
			for i, f := range cp.Children {
				switch {
				case i == 0:
					ctl.OID = octets(f)
				case f.Tag == ber.TagBoolean:
					ctl.Critical, _ = f.Value.(bool)
				case f.Tag == ber.TagOctetString:
					ctl.Value = append([]byte{}, f.Data.Bytes()...)
				}
			}
			m.Controls = append(m.Controls, ctl)
		}
	}
	return m, nil
}

func octets(p *ber.Packet) string {
	if p.Data == nil {
		return ""
	}
	return p.Data.String()
}

// Control returns the response control with this OID, or nil.
func (m *Message) Control(oid string) *Control {
	for i := range m.Controls {
		if m.Controls[i].OID == oid {
			return &m.Controls[i]
		}
	}
	return nil
}

// Idle reads from c until the server closes it or max passes, and returns
// the messages that arrived meanwhile (a notice of disconnection, say), the
// error that ended the wait (io.EOF for a FIN, a reset error, or a timeout
// net.Error when the server kept the connection) and how long that took.
func Idle(c net.Conn, max time.Duration) (msgs []*Message, end error, after time.Duration) {
	start := time.Now()
	c.SetReadDeadline(start.Add(max))
	defer c.SetReadDeadline(time.Time{})
	for {
		m, err := Read(c)
		if err != nil {
			return msgs, err, time.Since(start)
		}
		msgs = append(msgs, m)
	}
}
