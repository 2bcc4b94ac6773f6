package pamcheck

import (
	"errors"
	"strings"
)

// Return codes libpam knows, in PAM_* numbering; the last one is "default".
var returnNames = [...]string{
	"success", "open_err", "symbol_err", "service_err", "system_err", "buf_err",
	"perm_denied", "auth_err", "cred_insufficient", "authinfo_unavail",
	"user_unknown", "maxtries", "new_authtok_reqd", "acct_expired", "session_err",
	"cred_unavail", "cred_expired", "cred_err", "no_module_data", "conv_err",
	"authtok_err", "authtok_recover_err", "authtok_lock_busy",
	"authtok_disable_aging", "try_again", "ignore", "abort", "authtok_expired",
	"module_unknown", "bad_item", "conv_again", "incomplete", "default",
}

const (
	numReturns      = len(returnNames) - 1 // _PAM_RETURN_VALUES
	retSuccess      = 0
	retPermDenied   = 6
	retNewAuthtok   = 12
	retIgnore       = 25
	retModuleUnknow = 28
)

// Actions, with libpam's values: jumps are positive.
const (
	actIgnore = 0
	actOK     = -1
	actDone   = -2
	actBad    = -3
	actDie    = -4
	actReset  = -5
	actUndef  = -6
)

var actionNames = [...]string{"ignore", "ok", "done", "bad", "die", "reset"}

type actions [numReturns]int

func (a *actions) setDefault(act int) {
	for i := range a {
		if a[i] == actUndef {
			a[i] = act
		}
	}
}

func undefActions() actions {
	var a actions
	for i := range a {
		a[i] = actUndef
	}
	return a
}

// simpleActions is what _pam_parse_conf_file sets for the keyword controls.
func simpleActions(ctl string) actions {
	a := undefActions()
	switch ctl {
	case "required":
		a[retSuccess], a[retNewAuthtok], a[retIgnore] = actOK, actOK, actIgnore
		a.setDefault(actBad)
	case "requisite":
		a[retSuccess], a[retNewAuthtok], a[retIgnore] = actOK, actOK, actIgnore
		a.setDefault(actDie)
	case "optional":
		a[retSuccess], a[retNewAuthtok] = actOK, actOK
		a.setDefault(actIgnore)
	case "sufficient":
		a[retSuccess], a[retNewAuthtok] = actDone, actDone
		a.setDefault(actIgnore)
	}
	return a
}

// parseControl follows _pam_parse_control: "value=action" pairs, values and
// actions matched by prefix in libpam's table order, jumps are positive
// numbers, unset values default to bad. Any syntax error makes every value bad.
func parseControl(tok string) (actions, error) {
	a := undefActions()
	fail := func(msg string) (actions, error) {
		for i := range a {
			a[i] = actBad
		}
		return a, errors.New(msg)
	}
	for {
		tok = strings.TrimLeft(tok, " \t\n\v\f\r")
		if tok == "" {
			break
		}
		ret := -1
		for i, name := range returnNames {
			if strings.HasPrefix(tok, name) {
				ret = i
				tok = tok[len(name):]
				break
			}
		}
		if ret < 0 || tok == "" {
			return fail("expecting return value")
		}
		tok = strings.TrimLeft(tok, " \t\n\v\f\r")
		if tok == "" || tok[0] != '=' {
			return fail("expecting '='")
		}
		tok = strings.TrimLeft(tok[1:], " \t\n\v\f\r")
		if tok == "" {
			return fail("expecting action")
		}
		act := 1
		for i, name := range actionNames {
			if strings.HasPrefix(tok, name) {
				act = -i
				tok = tok[len(name):]
				break
			}
		}
		if act > 0 {
			if tok[0] < '0' || tok[0] > '9' {
				return fail("expecting jump number")
			}
			act = 0
			for tok != "" && tok[0] >= '0' && tok[0] <= '9' {
				if act < 1<<20 {
					act = act*10 + int(tok[0]-'0')
				}
				tok = tok[1:]
			}
			if act == 0 {
				return fail("expecting non-zero")
			}
		}
		if ret == numReturns {
			a.setDefault(act)
		} else {
			a[ret] = act
		}
	}
	a.setDefault(actBad)
	return a, nil
}

func actionName(act int) string {
	if act > 0 {
		return "jump"
	}
	if -act < len(actionNames) {
		return actionNames[-act]
	}
	return "undef"
}

// OnModuleUnknown is what the line's control does when its module cannot be
// loaded (libpam dispatches PAM_MODULE_UNKNOWN for a faulty module).
func (l Line) OnModuleUnknown() string { return actionName(l.actions[retModuleUnknow]) }

// OnSuccess is what the line's control does when its module succeeds.
func (l Line) OnSuccess() string { return actionName(l.actions[retSuccess]) }
