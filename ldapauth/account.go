package ldapauth

// Account states: what a user bind's answer says beyond "right" or "wrong
// password". Three dialects (the wire facts are in internal/ds389test,
// internal/sambatest and internal/slapdtest's FINDINGS files):
//
//   - Active Directory and Samba refuse with invalidCredentials (49) and
//     say why in the diagnostic message, "... data NNN, ...": 52e is a
//     wrong password (Samba also for an unknown name), 530 logon hours,
//     531 workstation, 532 password expired, 533 disabled, 701 account
//     expired, 773 must change the password, 775 locked out. They check the
//     password first: every state but 775 is only said to the right
//     password. 775 is said to right and wrong passwords alike.
//   - 389-ds: nsAccountLock gives unwillingToPerform (53) "Account
//     inactivated", a lockout constraintViolation (19) "Exceed password
//     retry limit" (both before the password is checked); an expired
//     password 49 "password expired!"; a password that must be changed
//     after a reset is ACCEPTED, with the Netscape control
//     2.16.840.1.113730.3.4.4 and, when asked, the ppolicy error
//     changeAfterReset.
//   - OpenLDAP ppolicy: every refusal is a bare 49; only the password
//     policy response control (requested on every user bind) says locked
//     or expired; a reset password is accepted with changeAfterReset.
//
// Each state is a Reject with Cause Account and a reason for the admin's
// log, never a TempFail: a temporary failure makes Dovecot and Postfix
// retry a user who is refused for good, and none of these says anything
// about the server's health. "Must change the password" is refused on
// every directory, as Active Directory does: a mail client cannot change
// it, and on 389-ds and OpenLDAP the session such a bind opens is
// restricted to the password change anyway. A refused client learns
// nothing from any of this: the front doors send it their usual failure;
// the reason goes to the log. (775 is answered to any password, so
// "account locked" does not even tell the admin the password was right.)

import (
	"errors"
	"strings"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/directory"
)

// The reasons of account-state refusals.
const (
	ReasonDisabled       = "account disabled"
	ReasonLocked         = "account locked"
	ReasonAccountExpired = "account expired"
	ReasonPwExpired      = "password expired"
	ReasonMustChange     = "password must be changed"
	ReasonLogonHours     = "logon hours restriction"
	ReasonWorkstation    = "workstation restriction"
	ReasonRefused        = "account refused by the directory"
)

// bindKind is how a user bind ended.
type bindKind int

const (
	bindOK            bindKind = iota // password right, no state in the way
	bindWrongPassword                 // plain invalid credentials
	bindAccount                       // an account state refuses the login
	bindUnavailable                   // no answer, or an answer that is not about the account: TempFail
)

// bindAnswer is a user bind read as a decision.
type bindAnswer struct {
	kind   bindKind
	reason string // for bindAccount: one of the Reason* constants
	// detail names the evidence, for the debug log and --explain
	// ("AD data 775", "ppolicy changeAfterReset", ...).
	detail string
	// passwordRight: the answer proves the password was right (the
	// directory checks it before this state).
	passwordRight bool
}

// adData maps Active Directory's "data NNN" sub-codes of invalidCredentials.
var adData = map[string]struct {
	reason        string
	passwordRight bool
}{
	"530": {ReasonLogonHours, true},
	"531": {ReasonWorkstation, true},
	"532": {ReasonPwExpired, true},
	"533": {ReasonDisabled, true},
	"701": {ReasonAccountExpired, true},
	"773": {ReasonMustChange, true},
	"775": {ReasonLocked, false},
}

// adDataCode returns NNN of "..., data NNN, ..." in an AD diagnostic, or "".
func adDataCode(diag string) string {
	i := strings.Index(diag, "data ")
	if i < 0 {
		return ""
	}
	rest := diag[i+len("data "):]
	n := 0
	for n < len(rest) && n < 8 && (rest[n] >= '0' && rest[n] <= '9' || rest[n] >= 'a' && rest[n] <= 'f' || rest[n] >= 'A' && rest[n] <= 'F') {
		n++
	}
	if n == 0 || (n < len(rest) && rest[n] != ',' && rest[n] != ' ') {
		return ""
	}
	return strings.ToLower(rest[:n])
}

// classifyBind reads a user bind's answer: its error (nil for success,
// *ldap.Error with the server's result code, or a transport error) and
// the password policy its response controls carried.
func classifyBind(err error, pol directory.Policy) bindAnswer {
	account := func(reason, detail string, right bool) bindAnswer {
		return bindAnswer{kind: bindAccount, reason: reason, detail: detail, passwordRight: right}
	}
	if err == nil {
		switch pol.Error {
		case directory.PolicyChangeAfterReset:
			return account(ReasonMustChange, "ppolicy changeAfterReset on a successful bind", true)
		case directory.PolicyPasswordExpired:
			return account(ReasonPwExpired, "ppolicy passwordExpired on a successful bind", true)
		case directory.PolicyAccountLocked:
			return account(ReasonLocked, "ppolicy accountLocked on a successful bind", true)
		case directory.PolicyOtherError:
			return account(ReasonRefused, "ppolicy error on a successful bind", true)
		}
		if pol.NetscapeExpired {
			// 389-ds after an administrator's reset (passwordMustChange).
			return account(ReasonMustChange, "password expired control 2.16.840.1.113730.3.4.4 on a successful bind", true)
		}
		return bindAnswer{kind: bindOK, detail: pol.String(), passwordRight: true}
	}
	var le *ldap.Error
	if !errors.As(err, &le) || le.ResultCode >= ldap.ErrorNetwork {
		return bindAnswer{kind: bindUnavailable, detail: err.Error()}
	}
	diag := ""
	if le.Err != nil {
		diag = le.Err.Error()
	}
	switch le.ResultCode {
	case ldap.LDAPResultInvalidCredentials:
		switch pol.Error {
		case directory.PolicyAccountLocked:
			return account(ReasonLocked, "ppolicy accountLocked", false)
		case directory.PolicyPasswordExpired:
			return account(ReasonPwExpired, "ppolicy passwordExpired", true)
		case directory.PolicyChangeAfterReset:
			return account(ReasonMustChange, "ppolicy changeAfterReset", true)
		}
		if code := adDataCode(diag); code != "" {
			if s, ok := adData[code]; ok {
				return account(s.reason, "AD data "+code, s.passwordRight)
			}
			// 52e (wrong password; Samba also for an unknown name), 525
			// (no such user: the entry went away since the search), or
			// a code this table does not know.
			return bindAnswer{kind: bindWrongPassword, detail: "invalid credentials (AD data " + code + ")"}
		}
		if strings.Contains(strings.ToLower(diag), "password expired") || pol.NetscapeExpired {
			// 389-ds: "password expired!" and 2.16.840.1.113730.3.4.4,
			// only for the right password.
			return account(ReasonPwExpired, "389-ds: "+quoteDiag(diag, "password expired control"), true)
		}
		return bindAnswer{kind: bindWrongPassword, detail: "invalid credentials"}
	case ldap.LDAPResultUnwillingToPerform:
		// 389-ds nsAccountLock: "Account inactivated. Contact system
		// administrator." (with the ppolicy request also accountLocked).
		if strings.Contains(strings.ToLower(diag), "inactivated") {
			return account(ReasonDisabled, "unwillingToPerform "+quoteDiag(diag, ""), false)
		}
		if pol.Error == directory.PolicyAccountLocked {
			return account(ReasonLocked, "unwillingToPerform, ppolicy accountLocked", false)
		}
		return account(ReasonRefused, "unwillingToPerform "+quoteDiag(diag, ""), false)
	case ldap.LDAPResultConstraintViolation:
		// 389-ds lockout: "Exceed password retry limit. Please try later."
		if pol.Error == directory.PolicyAccountLocked || strings.Contains(strings.ToLower(diag), "retry limit") {
			return account(ReasonLocked, "constraintViolation "+quoteDiag(diag, "ppolicy accountLocked"), false)
		}
		return account(ReasonRefused, "constraintViolation "+quoteDiag(diag, ""), false)
	}
	return bindAnswer{kind: bindUnavailable, detail: err.Error()}
}

func quoteDiag(diag, otherwise string) string {
	if diag == "" {
		return otherwise
	}
	if len(diag) > 120 {
		diag = diag[:120]
	}
	return `"` + diag + `"`
}

// checkBind turns a user bind's answer into the next step: ok means the
// password is right and nothing in the account's state refuses the login
// (the access rules come next); otherwise v is the verdict.
func (a *Authenticator) checkBind(br directory.BindResult, err error, dn string, ex *explainer, d *decision) (v auth.Verdict, ok bool) {
	ans := classifyBind(err, br.Policy)
	switch ans.kind {
	case bindOK:
		if ans.detail != "" {
			if ex != nil {
				ex.step("password: ok (bind as user on %s; %s)", br.Server, ans.detail)
			}
			d.detail = "password ok; " + ans.detail
		} else {
			if ex != nil {
				ex.step("password: ok (bind as user on %s)", br.Server)
			}
		}
		return auth.Verdict{}, true
	case bindWrongPassword:
		d.detail = ans.detail
		if ex != nil {
			ex.step("password: wrong (bind as %s: %s)", dn, ans.detail)
		}
		return auth.Rejected(auth.CauseWrongPassword, "wrong password"), false
	case bindAccount:
		d.detail = "account: " + ans.reason + " (" + ans.detail + ")"
		if ans.passwordRight {
			if ex != nil {
				ex.step("password: right, but the directory refuses the account: %s (bind as %s: %s)", ans.reason, dn, ans.detail)
			}
		} else {
			if ex != nil {
				ex.step("password: not checked, the directory refuses the account: %s (bind as %s: %s)", ans.reason, dn, ans.detail)
			}
		}
		return auth.Rejected(auth.CauseAccount, ans.reason), false
	}
	d.detail = "bind: " + ans.detail
	if ex != nil {
		ex.step("password: could not check (bind failed: %v)", err)
	}
	return unavailable(err), false
}
