package doctor

import (
	"bufio"
	"context"
	"fmt"
	"path/filepath"
	"strings"
)

// postfixParams are the main.cf parameters the doctor reads, with
// Postfix's defaults (postconf -d on Debian 12).
var postfixParams = map[string]string{
	"config_directory":       "/etc/postfix",
	"queue_directory":        "/var/spool/postfix",
	"daemon_directory":       "/usr/lib/postfix/sbin",
	"mail_owner":             "postfix",
	"mail_version":           "",
	"smtpd_sasl_auth_enable": "no",
	"smtpd_sasl_type":        "cyrus",
	"smtpd_sasl_path":        "smtpd",
	"cyrus_sasl_config_path": "",
}

// postfixConf is Postfix's configuration as the doctor sees it.
type postfixConf struct {
	ConfigDir string
	MainCF    string // main.cf path
	MasterCF  string
	Params    map[string]string // expanded
	Lines     map[string]int    // main.cf line of a parameter (root mode)
	Master    []masterEntry
	Source    string // "postconf" or "files"
}

type masterEntry struct {
	Service, Type, Chroot, Command string
	Opts                           map[string]string // -o name=value
	Line                           int
}

// parseMainCF reads main.cf syntax: name = value, continuation lines
// start with whitespace, # comments.
func parseMainCF(data []byte) (map[string]string, map[string]int) {
	vals, lines := map[string]string{}, map[string]int{}
	var cur string
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	n := 0
	for sc.Scan() {
		n++
		raw := sc.Text()
		t := strings.TrimSpace(raw)
		if t == "" || t[0] == '#' {
			continue
		}
		if raw[0] == ' ' || raw[0] == '\t' {
			if cur != "" {
				vals[cur] = strings.TrimSpace(vals[cur] + " " + t)
			}
			continue
		}
		k, v, ok := strings.Cut(t, "=")
		if !ok {
			cur = ""
			continue
		}
		cur = strings.TrimSpace(k)
		vals[cur] = strings.TrimSpace(v)
		lines[cur] = n
	}
	return vals, lines
}

// maxExpansion bounds an expanded value (Postfix values are short).
const maxExpansion = 64 << 10

// expandPostfix replaces $name, ${name} and $(name) with their values.
func expandPostfix(v string, vals map[string]string, depth int) string {
	if depth > 10 || !strings.Contains(v, "$") {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if b.Len() > maxExpansion { // $a$a$a... nested ten deep: stop, do not hang
			break
		}
		if v[i] != '$' || i+1 == len(v) {
			b.WriteByte(v[i])
			continue
		}
		j := i + 1
		var name string
		if v[j] == '{' || v[j] == '(' {
			end := map[byte]byte{'{': '}', '(': ')'}[v[j]]
			k := strings.IndexByte(v[j:], end)
			if k < 0 {
				b.WriteString(v[i:])
				break
			}
			name = v[j+1 : j+k]
			i = j + k
			name, _, _ = strings.Cut(name, ":") // ${name?value} forms are not needed here
		} else {
			k := j
			for k < len(v) && (v[k] == '_' || v[k] >= 'a' && v[k] <= 'z' || v[k] >= 'A' && v[k] <= 'Z' || v[k] >= '0' && v[k] <= '9') {
				k++
			}
			name = v[j:k]
			i = k - 1
		}
		b.WriteString(expandPostfix(vals[name], vals, depth+1))
	}
	return b.String()
}

// parseMasterCF reads master.cf (or postconf -M output): one service per
// logical line, continuation lines start with whitespace.
func parseMasterCF(data []byte) []masterEntry {
	var out []masterEntry
	var cur []string
	var curLine int
	flush := func() {
		f := cur
		cur = nil
		if len(f) < 8 {
			return
		}
		e := masterEntry{Service: f[0], Type: f[1], Chroot: f[4], Command: f[7], Opts: map[string]string{}, Line: curLine}
		for i := 8; i < len(f); i++ {
			switch {
			case f[i] == "-o" && i+1 < len(f):
				i++
				k, v, _ := strings.Cut(f[i], "=")
				e.Opts[k] = v
			case strings.HasPrefix(f[i], "-o") && len(f[i]) > 2:
				k, v, _ := strings.Cut(f[i][2:], "=")
				e.Opts[k] = v
			}
		}
		out = append(out, e)
	}
	for n, raw := range strings.Split(string(data), "\n") {
		t := strings.TrimSpace(raw)
		if t == "" || t[0] == '#' {
			continue
		}
		if raw[0] == ' ' || raw[0] == '\t' {
			cur = append(cur, strings.Fields(t)...)
			continue
		}
		flush()
		cur, curLine = strings.Fields(t), n+1
	}
	flush()
	return out
}

// loadPostfix returns nil when Postfix is not installed or not configured
// (the reason is in the second value).
func (c *checker) loadPostfix(ctx context.Context) (*postfixConf, string) {
	h := c.h
	pc := &postfixConf{Params: map[string]string{}, Lines: map[string]int{}}
	if h.live {
		bin := c.opts.Postconf
		if bin == "" {
			bin = h.findBinary("/usr/sbin/postconf", "/usr/bin/postconf")
		}
		if bin == "" {
			return nil, "postconf not found: Postfix is not installed"
		}
		var cargs []string
		if c.opts.PostfixConfig != "" {
			cargs = []string{"-c", c.opts.PostfixConfig}
		}
		names := make([]string, 0, len(postfixParams))
		for k := range postfixParams {
			names = append(names, k)
		}
		out, err := h.run(ctx, bin, append(append(cargs, "-x"), names...)...)
		if err != nil {
			return nil, "Postfix is not configured: " + err.Error()
		}
		vals, _ := parseMainCF(out)
		pc.Params = vals
		mout, err := h.run(ctx, bin, append(cargs, "-M")...)
		if err != nil {
			return nil, "postconf -M: " + err.Error()
		}
		pc.Master = parseMasterCF(mout)
		pc.ConfigDir = pc.Params["config_directory"]
		pc.Source = "postconf"
	} else {
		dir := c.opts.PostfixConfig
		if dir == "" {
			dir = "/etc/postfix"
		}
		main := filepath.Join(dir, "main.cf")
		data, err := h.readFile(main)
		if err != nil {
			return nil, main + " not found: Postfix is not configured"
		}
		vals, lines := parseMainCF(data)
		all := map[string]string{}
		for k, v := range postfixParams {
			all[k] = v
		}
		for k, v := range vals {
			all[k] = v
		}
		all["config_directory"] = dir
		for k := range postfixParams {
			pc.Params[k] = expandPostfix(all[k], all, 0)
		}
		pc.Lines = lines
		mdata, _ := h.readFile(filepath.Join(dir, "master.cf"))
		pc.Master = parseMasterCF(mdata)
		for i := range pc.Master {
			for k, v := range pc.Master[i].Opts {
				pc.Master[i].Opts[k] = expandPostfix(v, all, 0)
			}
		}
		pc.ConfigDir = dir
		pc.Source = "files"
	}
	pc.MainCF = filepath.Join(pc.ConfigDir, "main.cf")
	pc.MasterCF = filepath.Join(pc.ConfigDir, "master.cf")
	return pc, ""
}

func (pc *postfixConf) param(e *masterEntry, name string) string {
	if e != nil {
		if v, ok := e.Opts[name]; ok {
			return v
		}
	}
	return pc.Params[name]
}

// saslSearchPath is where this Postfix's libsasl2 looks for <name>.conf,
// and whether that comes from Debian's compiled-in callback.
//
// Debian 12's postfix (debian/patches/07_sasl_config.diff) registers a
// SASL_CB_GETCONFPATH callback returning "<config_directory>/sasl:/usr/lib/sasl";
// libsasl2 (lib/common.c _sasl_find_getconfpath_callback) prefers an
// application's callback, so cyrus_sasl_config_path (sasl_set_path) is
// ignored there. Without the patch (Debian 13, upstream builds) Postfix
// calls sasl_set_path with cyrus_sasl_config_path when it is set, and
// libsasl2 otherwise uses its own default (/etc/sasl2, ...). The patch is
// recognised by its string in the smtpd binary.
func (c *checker) saslSearchPath(pc *postfixConf) (dirs []string, debianCallback bool) {
	smtpd := filepath.Join(pc.Params["daemon_directory"], "smtpd")
	if c.h.fileContains(smtpd, "sasl:/usr/lib/sasl") {
		return []string{filepath.Join(pc.ConfigDir, "sasl"), "/usr/lib/sasl"}, true
	}
	if p := pc.Params["cyrus_sasl_config_path"]; p != "" {
		return strings.Split(p, ":"), false
	}
	return libsaslConfigPath(), false
}

func (c *checker) checkPostfix(ctx context.Context) {
	pc, why := c.loadPostfix(ctx)
	if pc == nil {
		c.add(Finding{Severity: Info, Area: AreaPostfix, Code: "postfix-absent", Message: why})
		return
	}
	type key struct{ chroot, path, typ string }
	done := map[key]bool{}
	any := false
	for i := range pc.Master {
		e := &pc.Master[i]
		if e.Command != "smtpd" || !isYes(pc.param(e, "smtpd_sasl_auth_enable")) {
			continue
		}
		any = true
		chroot := e.Chroot == "y"
		k := key{fmt.Sprint(chroot), pc.param(e, "smtpd_sasl_path"), pc.param(e, "smtpd_sasl_type")}
		if done[k] {
			continue
		}
		done[k] = true
		c.checkPostfixService(pc, e, chroot)
	}
	if !any {
		c.add(Finding{Severity: Info, Area: AreaPostfix, Code: "postfix-no-sasl", Path: pc.MainCF,
			Message: "no smtpd service has smtpd_sasl_auth_enable = yes: Postfix offers no SMTP AUTH",
			Fix:     "postconf -e smtpd_sasl_auth_enable=yes  (or -o smtpd_sasl_auth_enable=yes on the submission service in master.cf)"})
	}
}

func isYes(v string) bool {
	v = strings.ToLower(strings.TrimSpace(v))
	return v == "yes" || v == "true" || v == "1"
}

func (c *checker) checkPostfixService(pc *postfixConf, e *masterEntry, chroot bool) {
	h := c.h
	who := fmt.Sprintf("Postfix smtpd (master.cf service %s", e.Service)
	if chroot {
		who += ", chrooted to " + pc.Params["queue_directory"]
	}
	who += ")"
	if typ := pc.param(e, "smtpd_sasl_type"); typ != "cyrus" {
		c.add(Finding{Severity: Info, Area: AreaPostfix, Code: "postfix-dovecot-sasl", Path: pc.MainCF,
			Message: fmt.Sprintf("%s uses smtpd_sasl_type = %s (smtpd_sasl_path = %s): Postfix asks Dovecot, so the Dovecot checks below apply", who, typ, pc.param(e, "smtpd_sasl_path"))})
		return
	}
	name := pc.param(e, "smtpd_sasl_path") + ".conf"
	dirs, debianCB := c.saslSearchPath(pc)
	var file string
	for _, d := range dirs {
		if p := filepath.Join(d, name); h.exists(p) {
			file = p
			break
		}
	}
	patched := filepath.Join(pc.ConfigDir, "sasl", name)
	cfgPath := pc.Params["cyrus_sasl_config_path"]
	switch {
	case file == "" && !debianCB && cfgPath == "" && h.exists(patched):
		c.add(Finding{Severity: Critical, Area: AreaPostfix, Code: "postfix-sasl-path", Path: pc.MainCF, Line: pc.Lines["cyrus_sasl_config_path"],
			Message: fmt.Sprintf("this Postfix has no SASL path compiled in (Debian 13 and upstream builds): libsasl2 looks for %s in %s, so %s is never read and %s offers no working AUTH",
				name, strings.Join(dirs, ":"), patched, who),
			Fix: "postconf -e cyrus_sasl_config_path=" + filepath.Join(pc.ConfigDir, "sasl") + " && postfix reload"})
		return
	case file == "":
		c.add(Finding{Severity: Critical, Area: AreaPostfix, Code: "postfix-sasl-config-missing", Path: filepath.Join(dirs[0], name),
			Message: fmt.Sprintf("%s has SMTP AUTH on, but libsasl2 finds no %s in %s", who, name, strings.Join(dirs, ":")),
			Fix:     fmt.Sprintf("printf 'pwcheck_method: saslauthd\\nmech_list: PLAIN LOGIN\\n' > %s", filepath.Join(dirs[0], name))})
		return
	}
	if debianCB && cfgPath == "" && strings.HasPrefix(file, filepath.Join(pc.ConfigDir, "sasl")+"/") {
		c.add(Finding{Severity: Info, Area: AreaPostfix, Code: "postfix-sasl-path-upgrade", Path: pc.MainCF,
			Message: fmt.Sprintf("%s is found through Debian 12's compiled-in path; Debian 13's Postfix no longer has it and would read %s instead", file, strings.Join(libsaslConfigPath()[:2], ", ")),
			Fix:     "postconf -e cyrus_sasl_config_path=" + filepath.Join(pc.ConfigDir, "sasl") + "  (harmless now, needed after the upgrade)"})
	}
	if debianCB && cfgPath != "" && cfgPath != filepath.Join(pc.ConfigDir, "sasl") {
		c.add(Finding{Severity: Warning, Area: AreaPostfix, Code: "postfix-sasl-path-ignored", Path: pc.MainCF, Line: pc.Lines["cyrus_sasl_config_path"],
			Message: fmt.Sprintf("cyrus_sasl_config_path = %s is ignored by this Postfix (Debian's compiled-in path wins, it reads %s); after an upgrade to Debian 13 it takes effect and a different file is read", cfgPath, file),
			Fix:     "postconf -e cyrus_sasl_config_path=" + filepath.Join(pc.ConfigDir, "sasl")})
	}
	data, err := h.readFile(file)
	if err != nil {
		c.add(Finding{Severity: Critical, Area: AreaPostfix, Code: "postfix-sasl-config-missing", Path: file,
			Message: fmt.Sprintf("cannot read %s: %v", file, err), Fix: "chmod 0644 " + file})
		return
	}
	opts := parseColonConf(data)
	pw := opts["pwcheck_method"]
	if !hasWord(pw.Value, "saslauthd") {
		c.add(Finding{Severity: Warning, Area: AreaPostfix, Code: "postfix-not-saslauthd", Path: file, Line: pw.Line,
			Message: fmt.Sprintf("%s has pwcheck_method: %q, so %s never asks mailauthd", file, pw.Value, who),
			Fix:     "set pwcheck_method: saslauthd in " + file})
		return
	}
	c.checkMechList(AreaPostfix, "mech_list", opts, file)
	c.checkSaslPlugins(AreaPostfix)
	sp, ok := opts["saslauthd_path"]
	inside := sp.Value
	setting := "saslauthd_path in " + file
	if !ok || inside == "" {
		inside = defaultSaslauthdPath
		setting = "libsasl2's default, no saslauthd_path in " + file
	}
	outside := inside
	if chroot {
		outside = filepath.Join(pc.Params["queue_directory"], inside)
		setting += ", inside the chroot"
	}
	var fix string
	switch {
	case chroot && c.m.serves(h, inside) != nil:
		fix = fmt.Sprintf("smtpd is chrooted, so %s means %s: serve that path too (listen.saslauthd / ListenStream=%s), or set the chroot column of %s in %s to n",
			inside, outside, outside, e.Service, pc.MasterCF)
	case chroot:
		fix = fmt.Sprintf("add %s to mailauthd's sockets (ListenStream=%s in mailauthd.socket, or listen.saslauthd)", outside, outside)
	case len(c.m.Served) > 0:
		fix = fmt.Sprintf("set saslauthd_path: %s in %s", c.m.Served[0].Path, file)
	default:
		fix = "configure a listen.saslauthd socket in mailauthd.yaml"
	}
	ok = c.checkPeerSocket(peerSocket{Area: AreaPostfix, Who: who, User: pc.Params["mail_owner"], Path: outside,
		Setting: setting, File: file, Line: sp.Line, FixPath: fix})
	if ok {
		c.add(Finding{Severity: Info, Area: AreaPostfix, Code: "postfix-ok", Path: file,
			Message: fmt.Sprintf("%s: %s → pwcheck_method saslauthd → %s, served by mailauthd, %s may connect", who, file, outside, pc.Params["mail_owner"])})
	}
}
