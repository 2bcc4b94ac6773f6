package ldapauth

import (
	"errors"
	"testing"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/directory"
)

// ResetBaseErrorLimit lets a test see the next missing-base error line.
func ResetBaseErrorLimit() { lastBaseError.Store(0) }

func ldapErr(code uint16, diag string) error {
	return &ldap.Error{ResultCode: code, Err: errors.New(diag)}
}

func ad(code string) error {
	return ldapErr(ldap.LDAPResultInvalidCredentials, "80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data "+code+", v1db1")
}

// TestClassifyBind is the account-state table as a spec: each directory's
// answer and the decision it becomes (the wire facts: FINDINGS files of
// internal/ds389test, internal/sambatest, internal/slapdtest).
func TestClassifyBind(t *testing.T) {
	locked := directory.Policy{Error: directory.PolicyAccountLocked}
	tests := []struct {
		name   string
		err    error
		pol    directory.Policy
		kind   bindKind
		reason string
		right  bool
	}{
		{"success", nil, directory.Policy{}, bindOK, "", true},
		{"success, expiring soon", nil, directory.Policy{ExpiresIn: 8640000}, bindOK, "", true},
		{"success, grace login", nil, directory.Policy{Grace: true, GraceLeft: 1}, bindOK, "", true},
		{"slapd/389-ds: success + changeAfterReset", nil, directory.Policy{Error: directory.PolicyChangeAfterReset}, bindAccount, ReasonMustChange, true},
		{"389-ds: success + 2.16.840.1.113730.3.4.4", nil, directory.Policy{NetscapeExpired: true}, bindAccount, ReasonMustChange, true},
		{"success + accountLocked", nil, locked, bindAccount, ReasonLocked, true},
		{"plain wrong password", ldapErr(49, ""), directory.Policy{}, bindWrongPassword, "", false},
		{"slapd: 49 + accountLocked", ldapErr(49, ""), locked, bindAccount, ReasonLocked, false},
		{"slapd: 49 + passwordExpired", ldapErr(49, ""), directory.Policy{Error: directory.PolicyPasswordExpired}, bindAccount, ReasonPwExpired, true},
		{"389-ds: 49 password expired!", ldapErr(49, "password expired!"), directory.Policy{NetscapeExpired: true}, bindAccount, ReasonPwExpired, true},
		{"389-ds: 53 inactivated", ldapErr(53, "Account inactivated. Contact system administrator."), directory.Policy{}, bindAccount, ReasonDisabled, false},
		{"389-ds: 53 inactivated + accountLocked", ldapErr(53, "Account inactivated. Contact system administrator."), locked, bindAccount, ReasonDisabled, false},
		{"53 otherwise", ldapErr(53, "no"), directory.Policy{}, bindAccount, ReasonRefused, false},
		{"389-ds: 19 retry limit", ldapErr(19, "Exceed password retry limit. Please try later."), directory.Policy{}, bindAccount, ReasonLocked, false},
		{"19 + accountLocked", ldapErr(19, ""), locked, bindAccount, ReasonLocked, false},
		{"19 otherwise", ldapErr(19, "x"), directory.Policy{}, bindAccount, ReasonRefused, false},
		{"AD 52e", ad("52e"), directory.Policy{}, bindWrongPassword, "", false},
		{"AD 525", ad("525"), directory.Policy{}, bindWrongPassword, "", false},
		{"AD 530", ad("530"), directory.Policy{}, bindAccount, ReasonLogonHours, true},
		{"AD 531", ad("531"), directory.Policy{}, bindAccount, ReasonWorkstation, true},
		{"AD 532", ad("532"), directory.Policy{}, bindAccount, ReasonPwExpired, true},
		{"AD 533", ad("533"), directory.Policy{}, bindAccount, ReasonDisabled, true},
		{"AD 701", ad("701"), directory.Policy{}, bindAccount, ReasonAccountExpired, true},
		{"AD 773", ad("773"), directory.Policy{}, bindAccount, ReasonMustChange, true},
		{"AD 775", ad("775"), directory.Policy{}, bindAccount, ReasonLocked, false},
		{"AD unknown code", ad("999"), directory.Policy{}, bindWrongPassword, "", false},
		{"strongerAuthRequired", ldapErr(8, "BindSimple: Transport encryption required."), directory.Policy{}, bindUnavailable, "", false},
		{"busy", ldapErr(51, ""), directory.Policy{}, bindUnavailable, "", false},
		{"connection", ldap.NewError(ldap.ErrorNetwork, errors.New("EOF")), directory.Policy{}, bindUnavailable, "", false},
		{"timeout", directory.ErrTimeout, directory.Policy{}, bindUnavailable, "", false},
	}
	for _, tt := range tests {
		got := classifyBind(tt.err, tt.pol)
		if got.kind != tt.kind || got.reason != tt.reason || (tt.kind == bindAccount && got.passwordRight != tt.right) {
			t.Errorf("%s: %+v, want kind %d reason %q password right %v", tt.name, got, tt.kind, tt.reason, tt.right)
		}
	}
}

func TestADDataCode(t *testing.T) {
	for diag, want := range map[string]string{
		"80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 775, v1db1": "775",
		"80090308: LdapErr: DSID-0C09044E, comment: AcceptSecurityContext error, data 52e, v4563": "52e",
		"data 52E, v1":  "52e",
		"":              "",
		"metadata 775x": "",
		"data , v1":     "",
	} {
		if got := adDataCode(diag); got != want {
			t.Errorf("%q: %q, want %q", diag, got, want)
		}
	}
}

func TestFixedSuffix(t *testing.T) {
	for tmpl, want := range map[string]string{
		"ou=people,dc=example,dc=org":         "ou=people,dc=example,dc=org",
		"ou=%d,dc=example,dc=org":             "dc=example,dc=org",
		"uid=%U,ou=people,dc=example,dc=org":  "ou=people,dc=example,dc=org",
		"dc=%2,dc=%1":                         "",
		`ou=a\,%d,ou=b,dc=org`:                "ou=b,dc=org",
		"ou=people,o=%r,ou=hosting,dc=x,dc=y": "ou=hosting,dc=x,dc=y",
	} {
		if got := fixedSuffix(tmpl); got != want {
			t.Errorf("%q: %q, want %q", tmpl, got, want)
		}
	}
}
