package directory

// What a bind's response controls say about the account: the password
// policy response control (draft-behera-ldap-password-policy, requested on
// every user bind; OpenLDAP ppolicy and 389-ds answer it) and 389-ds's
// Netscape password controls. Active Directory and Samba send none: their
// account states are in the bind's diagnostic message (package ldapauth
// reads those).

import (
	"strconv"

	"github.com/go-ldap/ldap/v3"
)

// Control OIDs.
const (
	// OIDPasswordPolicy is the password policy request and response control.
	OIDPasswordPolicy = "1.3.6.1.4.1.42.2.27.8.5.1"
	// OIDPasswordExpired (Netscape, 389-ds): the password has expired, or
	// must be changed after an administrator's reset (on a bind that
	// succeeded).
	OIDPasswordExpired = "2.16.840.1.113730.3.4.4"
	// OIDPasswordExpiring (Netscape, 389-ds): seconds until the password
	// expires, as decimal text.
	OIDPasswordExpiring = "2.16.840.1.113730.3.4.5"
)

// PolicyError is the error of a password policy response, shifted so that
// the zero value means "no error said".
type PolicyError uint8

const (
	PolicyNoError          PolicyError = iota // no response control, or one without an error
	PolicyPasswordExpired                     // passwordExpired (0)
	PolicyAccountLocked                       // accountLocked (1)
	PolicyChangeAfterReset                    // changeAfterReset (2): must change the password before anything else
	PolicyOtherError                          // 3..8: password modify errors, not expected on a bind
)

func (e PolicyError) String() string {
	switch e {
	case PolicyNoError:
		return "none"
	case PolicyPasswordExpired:
		return "passwordExpired"
	case PolicyAccountLocked:
		return "accountLocked"
	case PolicyChangeAfterReset:
		return "changeAfterReset"
	}
	return "other"
}

// Policy is what the response controls of a bind said. The zero value
// says nothing.
type Policy struct {
	Error PolicyError
	// ExpiresIn > 0: seconds until the password expires (ppolicy
	// timeBeforeExpiration, or 2.16.840.1.113730.3.4.5).
	ExpiresIn int64
	// Grace: the password has expired and this bind used a grace
	// authentication; GraceLeft more are allowed.
	Grace     bool
	GraceLeft int64
	// NetscapeExpired: 2.16.840.1.113730.3.4.4 came with the answer.
	NetscapeExpired bool
}

// String is a short description for logs and --explain ("" when nothing
// was said).
func (p Policy) String() string {
	s := ""
	add := func(x string) {
		if s != "" {
			s += ", "
		}
		s += x
	}
	if p.Error != PolicyNoError {
		add("ppolicy error " + p.Error.String())
	}
	if p.Grace {
		add("grace login, " + strconv.FormatInt(p.GraceLeft, 10) + " left")
	}
	if p.ExpiresIn > 0 {
		add("password expires in " + strconv.FormatInt(p.ExpiresIn, 10) + "s")
	}
	if p.NetscapeExpired {
		add("password expired control (2.16.840.1.113730.3.4.4)")
	}
	return s
}

// maxPolicyInt bounds the INTEGERs of the ppolicy response (0..maxInt,
// RFC 4511's maxInt).
const maxPolicyInt = 1<<31 - 1

// parsePolicy reads the password controls out of a well-formed Controls
// list (validControls passed); other controls are ignored. A malformed
// value of a control it knows is an error: the answer is refused rather
// than half-read.
//
//	PasswordPolicyResponseValue ::= SEQUENCE {
//	    warning [0] CHOICE { timeBeforeExpiration [0] INTEGER (0 .. maxInt),
//	                         graceAuthNsRemaining [1] INTEGER (0 .. maxInt) } OPTIONAL,
//	    error   [1] ENUMERATED { passwordExpired (0), accountLocked (1), changeAfterReset (2), ... } OPTIONAL }
func parsePolicy(controls []byte) (Policy, error) {
	var p Policy
	for len(controls) > 0 {
		_, c, rest, _ := nextTLV(controls) // well-formed: validControls
		controls = rest
		_, oid, c, _ := nextTLV(c)
		if len(c) > 0 && c[0] == tagBoolean {
			_, _, c, _ = nextTLV(c)
		}
		var value []byte
		hasValue := len(c) > 0
		if hasValue {
			_, value, _, _ = nextTLV(c)
		}
		switch string(oid) {
		case OIDPasswordPolicy:
			if !hasValue || parsePPolicyValue(value, &p) != nil {
				return Policy{}, errMalformed
			}
		case OIDPasswordExpired:
			// 389-ds sends "0"; the value carries nothing else.
			if hasValue && !decimal(value) {
				return Policy{}, errMalformed
			}
			p.NetscapeExpired = true
		case OIDPasswordExpiring:
			if !hasValue || !decimal(value) {
				return Policy{}, errMalformed
			}
			n, _ := strconv.ParseInt(string(value), 10, 64)
			if n > 0 && (p.ExpiresIn == 0 || n < p.ExpiresIn) {
				p.ExpiresIn = n
			}
		}
	}
	return p, nil
}

// decimal reports 1 to 10 ASCII digits.
func decimal(v []byte) bool {
	if len(v) == 0 || len(v) > 10 {
		return false
	}
	for _, c := range v {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

func parsePPolicyValue(v []byte, p *Policy) error {
	tag, seq, rest, err := nextTLV(v)
	if err != nil || tag != tagSequence || len(rest) > 0 {
		return errMalformed
	}
	if len(seq) > 0 && seq[0] == 0xa0 { // warning [0] constructed
		_, w, r, err := nextTLV(seq)
		if err != nil {
			return errMalformed
		}
		seq = r
		tag, iv, r, err := nextTLV(w)
		if err != nil || len(r) > 0 {
			return errMalformed
		}
		n, ok := policyInt(iv)
		if !ok {
			return errMalformed
		}
		switch tag {
		case 0x80: // timeBeforeExpiration
			if n > 0 && (p.ExpiresIn == 0 || n < p.ExpiresIn) {
				p.ExpiresIn = n
			}
		case 0x81: // graceAuthNsRemaining
			p.Grace, p.GraceLeft = true, n
		default:
			return errMalformed
		}
	}
	if len(seq) > 0 {
		tag, ev, r, err := nextTLV(seq)
		if err != nil || tag != 0x81 || len(r) > 0 {
			return errMalformed
		}
		n, ok := policyInt(ev)
		if !ok || n > 8 { // the draft's enumeration ends at passwordInHistory (8)
			return errMalformed
		}
		switch n {
		case 0:
			p.Error = PolicyPasswordExpired
		case 1:
			p.Error = PolicyAccountLocked
		case 2:
			p.Error = PolicyChangeAfterReset
		default:
			p.Error = PolicyOtherError
		}
	}
	return nil
}

// policyInt decodes a non-negative INTEGER of at most maxInt; a leading
// zero byte (389-ds pads 8640000 to 00 83 d6 00) is fine.
func policyInt(v []byte) (int64, bool) {
	n, ok := nonNegInt(v)
	if !ok || n > maxPolicyInt {
		return 0, false
	}
	return int64(n), true
}

// policyFromGoLDAP is the same reading of go-ldap's decoded controls.
func policyFromGoLDAP(cs []ldap.Control) Policy {
	var p Policy
	for _, c := range cs {
		switch c := c.(type) {
		case *ldap.ControlBeheraPasswordPolicy:
			switch {
			case c.Error < 0:
			case c.Error == 0:
				p.Error = PolicyPasswordExpired
			case c.Error == 1:
				p.Error = PolicyAccountLocked
			case c.Error == 2:
				p.Error = PolicyChangeAfterReset
			default:
				p.Error = PolicyOtherError
			}
			if c.Expire > 0 && (p.ExpiresIn == 0 || c.Expire < p.ExpiresIn) {
				p.ExpiresIn = c.Expire
			}
			if c.Grace >= 0 {
				p.Grace, p.GraceLeft = true, c.Grace
			}
		case *ldap.ControlVChuPasswordMustChange:
			p.NetscapeExpired = true
		case *ldap.ControlVChuPasswordWarning:
			if c.Expire > 0 && (p.ExpiresIn == 0 || c.Expire < p.ExpiresIn) {
				p.ExpiresIn = c.Expire
			}
		}
	}
	return p
}
