package directory

import (
	"bytes"
	"encoding/hex"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
	"github.com/go-ldap/ldap/v3"
)

// ctrl is the hex of a Control; value "-" means none.
func ctrl(oid string, critical bool, value string) string {
	c := hexTLV(tagOctets, hex.EncodeToString([]byte(oid)))
	if critical {
		c += "0101ff"
	}
	if value != "-" {
		c += hexTLV(tagOctets, value)
	}
	return hexTLV(tagSequence, c)
}

func ascii(s string) string { return hex.EncodeToString([]byte(s)) }

// TestParsePolicy: the values are what 389-ds 2.3 and OpenLDAP 2.5 sent
// (internal/ds389test/FINDINGS.md, internal/slapdtest/FINDINGS-ppolicy.md).
func TestParsePolicy(t *testing.T) {
	tests := []struct {
		name     string
		controls string
		want     Policy
		bad      bool
	}{
		{"no controls", "", Policy{}, false},
		{"slapd: empty response", ctrl(OIDPasswordPolicy, false, "3000"), Policy{}, false},
		{"slapd: locked", ctrl(OIDPasswordPolicy, false, "3003810101"), Policy{Error: PolicyAccountLocked}, false},
		{"slapd: must change", ctrl(OIDPasswordPolicy, false, "3003810102"), Policy{Error: PolicyChangeAfterReset}, false},
		{"slapd: expired", ctrl(OIDPasswordPolicy, false, "3003810100"), Policy{Error: PolicyPasswordExpired}, false},
		{"slapd: grace 1 left", ctrl(OIDPasswordPolicy, false, "3005a003810101"), Policy{Grace: true, GraceLeft: 1}, false},
		{"slapd: grace 0 left", ctrl(OIDPasswordPolicy, false, "3005a003810100"), Policy{Grace: true}, false},
		{"389-ds: locked, long-form lengths", ctrl(OIDPasswordPolicy, false, "308400000003810101"), Policy{Error: PolicyAccountLocked}, false},
		{"389-ds: must change", ctrl(OIDPasswordPolicy, false, "308400000003810102") + ctrl(OIDPasswordExpired, false, ascii("0")),
			Policy{Error: PolicyChangeAfterReset, NetscapeExpired: true}, false},
		{"389-ds: expiring", ctrl(OIDPasswordPolicy, false, "30840000000ca0840000000680040083d600") + ctrl(OIDPasswordExpiring, false, ascii("8640000")),
			Policy{ExpiresIn: 8640000}, false},
		{"389-ds: expired without the request", ctrl(OIDPasswordExpired, false, ascii("0")), Policy{NetscapeExpired: true}, false},
		{"warning and error", ctrl(OIDPasswordPolicy, false, "3008a003800105810103"), Policy{ExpiresIn: 5, Error: PolicyOtherError}, false},
		{"critical flag", ctrl(OIDPasswordPolicy, true, "3003810101"), Policy{Error: PolicyAccountLocked}, false},
		{"other controls ignored", ctrl("1.2.3", false, "ffff") + ctrl("1.2.4", true, "-"), Policy{}, false},
		{"3.4.4 without value", ctrl(OIDPasswordExpired, false, "-"), Policy{NetscapeExpired: true}, false},

		{"ppolicy without value", ctrl(OIDPasswordPolicy, false, "-"), Policy{}, true},
		{"ppolicy value not a sequence", ctrl(OIDPasswordPolicy, false, "3103810101"), Policy{}, true},
		{"ppolicy bytes after the sequence", ctrl(OIDPasswordPolicy, false, "30000000"), Policy{}, true},
		{"ppolicy error twice", ctrl(OIDPasswordPolicy, false, "3006810101810102"), Policy{}, true},
		{"ppolicy error before warning", ctrl(OIDPasswordPolicy, false, "3008810101a0038001ff"), Policy{}, true},
		{"ppolicy error with wrong tag", ctrl(OIDPasswordPolicy, false, "3003800101"), Policy{}, true},
		{"ppolicy negative error", ctrl(OIDPasswordPolicy, false, "30038101ff"), Policy{}, true},
		{"ppolicy empty error", ctrl(OIDPasswordPolicy, false, "30028100"), Policy{}, true},
		{"ppolicy warning with two choices", ctrl(OIDPasswordPolicy, false, "3008a006800101810101"), Policy{}, true},
		{"ppolicy warning of unknown kind", ctrl(OIDPasswordPolicy, false, "3005a003820101"), Policy{}, true},
		{"ppolicy warning too big", ctrl(OIDPasswordPolicy, false, "3009a00780050100000000"), Policy{}, true},
		{"ppolicy truncated", ctrl(OIDPasswordPolicy, false, "30058101"), Policy{}, true},
		{"3.4.5 without value", ctrl(OIDPasswordExpiring, false, "-"), Policy{}, true},
		{"3.4.5 not a number", ctrl(OIDPasswordExpiring, false, ascii("soon")), Policy{}, true},
		{"3.4.5 too long", ctrl(OIDPasswordExpiring, false, ascii("12345678901")), Policy{}, true},
		{"3.4.4 junk", ctrl(OIDPasswordExpired, false, ascii("yes")), Policy{}, true},
	}
	for _, tt := range tests {
		c, err := hex.DecodeString(tt.controls)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if !validControls(c) {
			t.Fatalf("%s: the test's controls are not well-formed", tt.name)
		}
		got, err := parsePolicy(c)
		if tt.bad {
			if err == nil {
				t.Errorf("%s: accepted as %+v", tt.name, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: %+v %v, want %+v", tt.name, got, err, tt.want)
		}
		// go-ldap reads the same.
		if len(c) > 0 {
			if g := goLDAPPolicy(t, c); g != tt.want {
				t.Errorf("%s: go-ldap reads %+v, the wire client %+v", tt.name, g, tt.want)
			}
		}
	}
}

// goLDAPPolicy decodes controls (the contents of [0]) with go-ldap.
func goLDAPPolicy(t *testing.T, controls []byte) Policy {
	t.Helper()
	var cs []ldap.Control
	for len(controls) > 0 {
		_, _, rest, err := nextTLV(controls)
		if err != nil {
			t.Fatal(err)
		}
		p, err := ber.DecodePacketErr(controls[:len(controls)-len(rest)])
		if err != nil {
			t.Fatal(err)
		}
		c, err := ldap.DecodeControl(p)
		if err != nil {
			t.Fatalf("go-ldap: %v", err)
		}
		cs = append(cs, c)
		controls = rest
	}
	return policyFromGoLDAP(cs)
}

// TestBindResponsePolicy: the controls of a BindResponse come back with
// its result, success or not; malformed password controls make the answer
// malformed.
func TestBindResponsePolicy(t *testing.T) {
	locked := hexTLV(tagControls, ctrl(OIDPasswordPolicy, false, "3003810101"))
	b := &wireConn{rd: bytes.NewReader(msg(id7, bindResp("31"), locked))}
	res, err := b.readResponse(7, tagBindResponse)
	if err != nil || res.code != 49 || res.policy.Error != PolicyAccountLocked {
		t.Errorf("locked: %+v %v", res, err)
	}
	reset := hexTLV(tagControls, ctrl(OIDPasswordPolicy, false, "3003810102"))
	b = &wireConn{rd: bytes.NewReader(msg(id7, bindResp("00"), reset))}
	if res, err := b.readResponse(7, tagBindResponse); err != nil || res.code != 0 || res.policy.Error != PolicyChangeAfterReset {
		t.Errorf("must change: %+v %v", res, err)
	}
	bad := hexTLV(tagControls, ctrl(OIDPasswordPolicy, false, "3103810101"))
	b = &wireConn{rd: bytes.NewReader(msg(id7, bindResp("00"), bad))}
	if _, err := b.readResponse(7, tagBindResponse); !ldap.IsErrorWithCode(err, ldap.ErrorNetwork) {
		t.Errorf("malformed policy value: %v, want a connection error", err)
	}
}

// FuzzParsePolicy: never panics, and what the wire client accepts go-ldap
// reads the same way.
func FuzzParsePolicy(f *testing.F) {
	for _, v := range []string{"3000", "3003810101", "308400000003810101", "30840000000ca0840000000680040083d600", "3005a003810101"} {
		b, _ := hex.DecodeString(v)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, value []byte) {
		c, _ := hex.DecodeString(ctrl(OIDPasswordPolicy, false, hex.EncodeToString(value)))
		got, err := parsePolicy(c)
		if err != nil {
			return
		}
		p, derr := ber.DecodePacketErr(c)
		if derr != nil {
			return
		}
		dc, derr := ldap.DecodeControl(p)
		if derr != nil {
			t.Fatalf("wire client accepted %x (%+v), go-ldap: %v", value, got, derr)
		}
		if g := policyFromGoLDAP([]ldap.Control{dc}); g != got {
			t.Fatalf("%x: wire client %+v, go-ldap %+v", value, got, g)
		}
	})
}
