package doctor

import (
	"fmt"
)

// cyrusUser is the account Cyrus imapd's master and services run as
// (Debian's cyrus-common).
const cyrusUser = "cyrus"

// checkCyrus reads imapd.conf (the same "key: value" syntax as libsasl2;
// Cyrus hands every sasl_* option to libsasl2 without the prefix).
func (c *checker) checkCyrus() {
	h := c.h
	file := c.opts.CyrusConfig
	data, err := h.readFile(file)
	if err != nil {
		c.add(Finding{Severity: Info, Area: AreaCyrus, Code: "cyrus-absent", Message: file + " not found: Cyrus imapd is not installed"})
		return
	}
	opts := parseColonConf(data)
	pw, ok := opts["sasl_pwcheck_method"]
	if !ok || !hasWord(pw.Value, "saslauthd") {
		v := pw.Value
		if !ok {
			v = "auxprop (the default)"
		}
		c.add(Finding{Severity: Warning, Area: AreaCyrus, Code: "cyrus-not-saslauthd", Path: file, Line: pw.Line,
			Message: fmt.Sprintf("sasl_pwcheck_method is %s, so Cyrus imapd never asks mailauthd", v),
			Fix:     "set sasl_pwcheck_method: saslauthd in " + file})
		return
	}
	c.checkMechList(AreaCyrus, "sasl_mech_list", opts, file)
	if vd, ok := opts["virtdomains"]; ok && cyrusVirtdomains(vd.Value) {
		c.checkRealms(AreaCyrus, "Cyrus imapd has virtdomains: "+vd.Value+" (mailboxes per domain, logins as name@domain)", file, vd.Line)
	}
	c.checkSaslPlugins(AreaCyrus)
	sp, ok := opts["sasl_saslauthd_path"]
	path := sp.Value
	setting := "sasl_saslauthd_path in " + file
	if !ok || path == "" {
		path = defaultSaslauthdPath
		setting = "libsasl2's default, no sasl_saslauthd_path in " + file
	}
	fix := "configure a listen.saslauthd socket in mailauthd.yaml"
	if len(c.m.Served) > 0 {
		fix = fmt.Sprintf("set sasl_saslauthd_path: %s in %s", c.m.Served[0].Path, file)
	}
	who := "Cyrus imapd"
	if c.checkPeerSocket(peerSocket{Area: AreaCyrus, Who: who, User: cyrusUser, Path: path, Setting: setting, File: file, Line: sp.Line, FixPath: fix}) {
		c.add(Finding{Severity: Info, Area: AreaCyrus, Code: "cyrus-ok", Path: file,
			Message: fmt.Sprintf("%s: sasl_pwcheck_method saslauthd → %s, served by mailauthd, %s may connect", who, path, cyrusUser)})
	}
}
