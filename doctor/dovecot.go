package doctor

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// dcNode is a section of a Dovecot configuration (the root is the file).
type dcNode struct {
	Kind, Name string // "passdb", "checkpassword"; "service", "auth"
	Settings   map[string]dcValue
	Children   []*dcNode
	File       string
	Line       int
}

type dcValue struct {
	Value string
	File  string
	Line  int
}

func newNode(kind, name, file string, line int) *dcNode {
	return &dcNode{Kind: kind, Name: name, Settings: map[string]dcValue{}, File: file, Line: line}
}

func (n *dcNode) get(k string) string { return n.Settings[k].Value }

// child returns the first child section kind [name].
func (n *dcNode) child(kind, name string) *dcNode {
	for _, c := range n.Children {
		if c.Kind == kind && c.Name == name {
			return c
		}
	}
	return nil
}

// walk visits every section below n.
func (n *dcNode) walk(f func(*dcNode)) {
	for _, c := range n.Children {
		f(c)
		c.walk(f)
	}
}

// parseDovecot reads Dovecot's configuration syntax (dovecot.conf with
// !include/!include_try, or doveconf -n output): "key = value",
// "kind [name] {", "}". include reads an included file; nil = none.
func parseDovecot(root *dcNode, data []byte, file string, include func(pattern, from string) [][2]string, depth int) {
	stack := []*dcNode{root}
	for i, raw := range strings.Split(string(data), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' {
			continue
		}
		cur := stack[len(stack)-1]
		switch {
		case strings.HasPrefix(line, "!include"):
			f := strings.Fields(line)
			if len(f) == 2 && include != nil && depth < 10 {
				for _, inc := range include(strings.Trim(f[1], `"`), file) {
					parseDovecot(cur, []byte(inc[1]), inc[0], include, depth+1)
				}
			}
		case line == "}":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}
		case strings.HasSuffix(line, "{") && !strings.Contains(line, "="):
			f := strings.Fields(strings.TrimSuffix(line, "{"))
			if len(f) == 0 {
				continue
			}
			n := newNode(f[0], strings.Trim(strings.Join(f[1:], " "), `"`), file, i+1)
			cur.Children = append(cur.Children, n)
			stack = append(stack, n)
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				continue
			}
			v = strings.TrimSpace(v)
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			cur.Settings[strings.TrimSpace(k)] = dcValue{Value: v, File: file, Line: i + 1}
		}
	}
}

// dovecotConf is what the doctor knows of Dovecot.
type dovecotConf struct {
	File    string  // dovecot.conf
	Tree    *dcNode // effective settings (doveconf -n live, the files below a root)
	Files   *dcNode // the files, for file:line
	Version string  // "2.3.19.1", "" unknown
	VerFrom string  // where the version comes from
}

var doveconfHeader = regexp.MustCompile(`^# (\d+\.\d+[0-9.]*)`)

func (c *checker) loadDovecot(ctx context.Context) (*dovecotConf, string) {
	h := c.h
	dc := &dovecotConf{File: c.opts.DovecotConfig}
	data, err := h.readFile(dc.File)
	if err != nil && !h.live {
		return nil, dc.File + " not found: Dovecot is not installed"
	}
	included := 0
	include := func(pattern, from string) [][2]string {
		if included > 1000 { // files including each other: stop, do not hang
			return nil
		}
		if !filepath.IsAbs(pattern) {
			pattern = filepath.Join(filepath.Dir(from), pattern)
		}
		var out [][2]string
		for _, p := range h.glob(pattern) {
			if d, err := h.readFile(p); err == nil {
				included++
				out = append(out, [2]string{p, string(d)})
			}
		}
		return out
	}
	dc.Files = newNode("", "", dc.File, 0)
	if data != nil {
		parseDovecot(dc.Files, data, dc.File, include, 0)
	}
	if h.live {
		bin := c.opts.Doveconf
		if bin == "" {
			bin = h.findBinary("/usr/bin/doveconf", "/usr/sbin/doveconf")
		}
		if bin == "" {
			return nil, "doveconf not found: Dovecot is not installed"
		}
		out, err := h.run(ctx, bin, "-c", dc.File, "-n")
		if err != nil {
			// 2.4's doveconf refuses a checkpassword passdb outright: say so
			// from the files rather than giving up.
			if data == nil {
				return nil, "doveconf: " + err.Error()
			}
			dc.Tree = dc.Files
			dc.VerFrom = "doveconf failed (" + strings.TrimSpace(err.Error()) + "); settings read from the files"
		} else {
			dc.Tree = newNode("", "", dc.File, 0)
			parseDovecot(dc.Tree, out, "doveconf -n", nil, 0)
			if m := doveconfHeader.FindStringSubmatch(strings.SplitN(string(out), "\n", 2)[0]); m != nil {
				dc.Version, dc.VerFrom = m[1], "doveconf -n"
			}
		}
		if dc.Version == "" {
			dbin := c.opts.Dovecot
			if dbin == "" {
				dbin = h.findBinary("/usr/sbin/dovecot")
			}
			if dbin != "" {
				if out, err := h.run(ctx, dbin, "--version"); err == nil {
					if f := strings.Fields(string(out)); len(f) > 0 {
						dc.Version, dc.VerFrom = f[0], "dovecot --version"
					}
				}
			}
		}
	} else {
		dc.Tree = dc.Files
	}
	if dc.Version == "" {
		if v := h.dpkgVersion("dovecot-core"); v != "" {
			dc.Version, dc.VerFrom = upstreamVersion(v), "dpkg: dovecot-core "+v
		}
	}
	if dc.Version == "" {
		if v := dc.Tree.get("dovecot_config_version"); v != "" {
			dc.Version, dc.VerFrom = v, "dovecot_config_version"
		}
	}
	return dc, ""
}

// upstreamVersion strips a Debian epoch and revision: 1:2.3.19.1+dfsg1-2 -> 2.3.19.1.
func upstreamVersion(v string) string {
	if _, after, ok := strings.Cut(v, ":"); ok {
		v = after
	}
	if i := strings.LastIndexByte(v, '-'); i > 0 {
		v = v[:i]
	}
	if i := strings.IndexAny(v, "+~"); i > 0 {
		v = v[:i]
	}
	return v
}

// majorMinor parses "2.3.19.1" into 2, 3.
func majorMinor(v string) (int, int, bool) {
	f := strings.SplitN(upstreamVersion(v), ".", 3)
	if len(f) < 2 {
		return 0, 0, false
	}
	a, err1 := strconv.Atoi(f[0])
	b, err2 := strconv.Atoi(strings.TrimRightFunc(f[1], func(r rune) bool { return r < '0' || r > '9' }))
	return a, b, err1 == nil && err2 == nil
}

func atLeast(v string, major, minor int) bool {
	a, b, ok := majorMinor(v)
	return ok && (a > major || a == major && b >= minor)
}

// parseSize reads a Dovecot size ("2G", "256 M", "1024k", "0"); 0 and
// "unlimited" mean no limit. The second value is false when unparsable.
func parseSize(s string) (uint64, bool) {
	s = strings.TrimSpace(strings.ToLower(s))
	if s == "unlimited" || s == "0" {
		return 0, true
	}
	num := strings.TrimRightFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	unit := strings.TrimSpace(s[len(num):])
	n, err := strconv.ParseUint(strings.TrimSpace(num), 10, 64)
	if err != nil {
		return 0, false
	}
	mult := map[string]uint64{"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "t": 1 << 40, "tb": 1 << 40}[unit]
	if mult == 0 {
		return 0, false
	}
	if n == ^uint64(0) { // doveconf's "unset" sentinel
		return ^uint64(0), true
	}
	return n * mult, true
}

// dbRef is one passdb or userdb section.
type dbRef struct {
	Node   *dcNode
	Kind   string // passdb, userdb
	Driver string
	Args   string
}

func (dc *dovecotConf) databases() []dbRef {
	var out []dbRef
	dc.Tree.walk(func(n *dcNode) {
		if n.Kind != "passdb" && n.Kind != "userdb" {
			return
		}
		d := n.get("driver")
		if d == "" {
			d = n.Name // 2.4: passdb <name> { }, the driver defaults to the name
		}
		out = append(out, dbRef{Node: n, Kind: n.Kind, Driver: d, Args: n.get("args")})
	})
	return out
}

// locate finds where a section of the effective tree is in the files.
func (dc *dovecotConf) locate(r dbRef) (string, int) {
	if r.Node.File != "doveconf -n" {
		return r.Node.File, r.Node.Line
	}
	file, line := dc.File, 0
	dc.Files.walk(func(n *dcNode) {
		if line != 0 || n.Kind != r.Kind {
			return
		}
		d := n.get("driver")
		if d == "" {
			d = n.Name
		}
		if d == r.Driver {
			file, line = n.File, n.Line
		}
	})
	return file, line
}

// setting resolves $default_internal_user and $SET:... references.
func (dc *dovecotConf) expand(v string) string {
	for _, p := range []string{"$SET:", "$"} {
		if strings.HasPrefix(v, p) {
			name := strings.TrimPrefix(v, p)
			switch name {
			case "default_internal_user":
				if u := dc.Tree.get(name); u != "" {
					return u
				}
				return "dovecot"
			default:
				return dc.Tree.get(name)
			}
		}
	}
	return v
}

// serviceUser is the account a Dovecot service runs as (Dovecot's
// defaults: auth as default_internal_user, auth-worker as root).
func (dc *dovecotConf) serviceUser(service string) (string, dcValue) {
	if s := dc.Tree.child("service", service); s != nil {
		if v, ok := s.Settings["user"]; ok && v.Value != "" {
			return dc.expand(v.Value), v
		}
	}
	if service == "auth" {
		return dc.expand("$default_internal_user"), dcValue{}
	}
	return "root", dcValue{}
}

// authVszLimit is service auth's address-space limit, inherited by every
// checkpassword child.
func (dc *dovecotConf) authVszLimit() (string, uint64, dcValue) {
	if s := dc.Tree.child("service", "auth"); s != nil {
		if v, ok := s.Settings["vsz_limit"]; ok {
			if n, ok := parseSize(v.Value); ok && n != ^uint64(0) {
				return v.Value, n, v
			}
		}
	}
	def := dc.Tree.Settings["default_vsz_limit"]
	if def.Value == "" {
		def.Value = "256M"
	}
	n, _ := parseSize(def.Value)
	return def.Value + " (default_vsz_limit)", n, def
}

// mailauthdArgs reads "mailauthd checkpassword" flags from a checkpassword
// args string (Dovecot splits on single spaces, no quoting).
type cpArgs struct {
	Program    string
	IsOurs     bool
	Config     string
	Standalone bool
}

func parseCheckpasswordArgs(args string) cpArgs {
	f := strings.Fields(args)
	var a cpArgs
	if len(f) == 0 {
		return a
	}
	a.Program = f[0]
	a.IsOurs = filepath.Base(f[0]) == "mailauthd" && len(f) > 1 && f[1] == "checkpassword"
	a.Config = DefaultConfigPath
	for i := 1; i < len(f); i++ {
		switch {
		case f[i] == "--config" || f[i] == "-config":
			if i+1 < len(f) {
				a.Config = f[i+1]
				i++
			}
		case strings.HasPrefix(f[i], "--config="), strings.HasPrefix(f[i], "-config="):
			a.Config = f[i][strings.IndexByte(f[i], '=')+1:]
		case f[i] == "--standalone" || f[i] == "-standalone":
			a.Standalone = true
		}
	}
	return a
}

// minCheckpasswordVsz: a Go program reserves about 1.2 GB of address
// space at start; 1G failed now and then under load (docs/dovecot.md).
const minCheckpasswordVsz = 2 << 30

func (c *checker) checkDovecot(ctx context.Context) {
	dc, why := c.loadDovecot(ctx)
	if dc == nil {
		c.add(Finding{Severity: Info, Area: AreaDovecot, Code: "dovecot-absent", Message: why})
		return
	}
	ver := dc.Version
	verDesc := "Dovecot " + ver
	if ver == "" {
		verDesc = "Dovecot (version unknown)"
	} else if dc.VerFrom != "" {
		verDesc += " (" + dc.VerFrom + ")"
	}
	used := false
	for _, db := range dc.databases() {
		file, line := dc.locate(db)
		switch db.Driver {
		case "checkpassword":
			a := parseCheckpasswordArgs(db.Args)
			if !a.IsOurs {
				continue
			}
			used = true
			c.checkDovecotCheckpassword(dc, db, a, file, line, verDesc)
		case "lua":
			script := ""
			for _, kv := range strings.Fields(db.Args) {
				if strings.HasPrefix(kv, "file=") {
					script = strings.TrimPrefix(kv, "file=")
				}
			}
			if v := db.Node.get("lua_file"); v != "" {
				script = v
			}
			if v := dc.Tree.get("lua_file"); script == "" && v != "" {
				script = v
			}
			if !strings.Contains(script, "mailauthd") {
				continue
			}
			used = true
			c.checkDovecotLua(dc, db, script, file, line, verDesc)
		}
	}
	if used {
		if k, v := dc.multiDomain(); k != "" {
			c.checkRealms(AreaDovecot, fmt.Sprintf("%s: %s = %s keeps mailboxes per domain", verDesc, k, v.Value), v.File, v.Line)
		}
	}
	if !used {
		c.add(Finding{Severity: Info, Area: AreaDovecot, Code: "dovecot-not-mailauthd", Path: dc.File,
			Message: verDesc + ": no passdb or userdb uses mailauthd (checkpassword or the Lua adapter)"})
	}
}

func (c *checker) checkDovecotCheckpassword(dc *dovecotConf, db dbRef, a cpArgs, file string, line int, verDesc string) {
	h := c.h
	ok := true
	if atLeast(dc.Version, 2, 4) {
		c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-checkpassword-removed", Path: file, Line: line,
			Message: fmt.Sprintf("%s uses %s { driver = checkpassword }, which Dovecot 2.4 removed: Dovecot refuses the configuration and no one can log in", verDesc, db.Kind),
			Fix:     "switch to mailauthd's Lua adapter (/usr/share/mailauthd/dovecot/mailauthd.lua, docs/dovecot.md), or keep dovecot-core at 2.3 (apt-mark hold dovecot-core)"})
		return
	}
	vszDesc, vsz, where := dc.authVszLimit()
	if vsz != 0 && vsz < minCheckpasswordVsz {
		vf, vl := where.File, where.Line
		if vf == "" || vf == "doveconf -n" {
			vf, vl = file, 0
		}
		c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-vsz-limit", Path: vf, Line: vl,
			Message: fmt.Sprintf("service auth's vsz_limit is %s; the checkpassword child inherits it and a Go program reserves ~1.2 GB of address space at start, so logins fail (\"failed to reserve page summary memory\", or now and then \"out of memory\" at 1G)", vszDesc),
			Fix:     "add to the Dovecot configuration: service auth { vsz_limit = 2G }"})
		ok = false
	}
	authUser, _ := dc.serviceUser("auth")
	acct := h.lookupUser(authUser)
	if acct == nil {
		c.add(Finding{Severity: Warning, Area: AreaDovecot, Code: "dovecot-user-missing", Path: "/etc/passwd",
			Message: fmt.Sprintf("Dovecot's auth process runs as %s, which does not exist here: the permission checks are skipped", authUser),
			Fix:     "install dovecot-core (it creates the dovecot user)"})
		return
	}
	if fi, err := h.stat(a.Program); err != nil || !fi.Mode().IsRegular() {
		c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-checkpassword-missing", Path: file, Line: line,
			Message: fmt.Sprintf("%s args name %s, which does not exist: every login is an internal failure", db.Kind, a.Program),
			Fix:     "set args = /usr/bin/mailauthd checkpassword --config " + a.Config})
		return
	} else if prob := h.access(acct, a.Program, 1); prob != nil {
		c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-checkpassword-missing", Path: prob.Path,
			Message: fmt.Sprintf("Dovecot's auth process (user %s) cannot execute %s: %s", authUser, a.Program, prob),
			Fix:     prob.fixFor(acct)})
		return
	}
	if prob := h.access(acct, a.Config, 4); prob != nil {
		c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-config-unreadable", Path: a.Config,
			Message: fmt.Sprintf("mailauthd checkpassword runs as %s (Dovecot's auth user) and cannot read %s: %s; every login is a temporary failure", authUser, a.Config, prob),
			Fix:     firstNonEmpty(configFix(prob, a.Config), prob.fixFor(acct))})
		ok = false
	}
	// The fast path asks the daemon over the control socket; only when
	// nothing is there does checkpassword decide alone (and then needs
	// the bind password).
	standalone := a.Standalone || c.m.Control == ""
	if !standalone {
		st, _ := h.probeSocket(c.m.Control)
		switch st {
		case sockListening:
			if prob := h.access(acct, c.m.Control, 2); prob != nil {
				c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-control-unreachable", Path: prob.Path,
					Message: fmt.Sprintf("mailauthd checkpassword (user %s) cannot connect to the control socket %s: %s; it does not fall back, so every login is a temporary failure", authUser, c.m.Control, prob),
					Fix:     firstNonEmpty(controlFix(c.m, prob, authUser), prob.fixFor(acct))})
				ok = false
			}
		default:
			c.add(Finding{Severity: Warning, Area: AreaDovecot, Code: "dovecot-control-missing", Path: c.m.Control,
				Message: fmt.Sprintf("the control socket %s (from %s) is not there: each checkpassword run decides alone, with its own LDAP connections", c.m.Control, c.m.ControlFrom),
				Fix:     "systemctl enable --now mailauthd-control.socket mailauthd.service"})
			standalone = true
		}
	}
	if standalone && c.m.Config != nil && c.m.Config.LDAP.Directory.BindPasswordFile != "" {
		if prob := h.access(acct, c.m.Config.LDAP.Directory.BindPasswordFile, 4); prob != nil {
			c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-bindpw-unreadable", Path: c.m.Config.LDAP.Directory.BindPasswordFile,
				Message: fmt.Sprintf("checkpassword decides alone here and runs as %s, which cannot read ldap.bind_password_file: %s; every login is a temporary failure", authUser, prob),
				Fix:     "start the daemon so checkpassword uses the control socket (systemctl enable --now mailauthd-control.socket mailauthd.service), or give " + authUser + " read access"})
			ok = false
		}
	}
	if ok {
		via := "via the daemon's control socket " + c.m.Control
		if standalone {
			via = "standalone (its own LDAP connections)"
		}
		c.add(Finding{Severity: Info, Area: AreaDovecot, Code: "dovecot-ok", Path: file, Line: line,
			Message: fmt.Sprintf("%s: %s { driver = checkpassword } runs mailauthd as %s, vsz_limit %s, %s", verDesc, db.Kind, authUser, vszDesc, via)})
	}
}

func configFix(prob *accessProblem, p string) string {
	if prob.Path == p {
		return "chmod 0644 " + p + "  (it holds no secret; the bind password has its own file)"
	}
	return ""
}

func controlFix(m *mailauthdState, prob *accessProblem, user string) string {
	if prob.Path != m.Control {
		return ""
	}
	if m.ControlUnit != nil {
		return fmt.Sprintf("systemctl edit mailauthd-control.socket: SocketGroup=%s and SocketMode=0660", user)
	}
	return fmt.Sprintf("set listen.control: {path: %s, mode: \"0660\", group: %s} in %s", m.Control, user, m.ConfigPath)
}

// luaModules are where Dovecot's Lua passdb/userdb driver lives (Debian:
// dovecot-auth-lua).
var luaModules = []string{"/usr/lib/dovecot/modules/auth/libauthdb_lua.so", "/usr/lib64/dovecot/auth/libauthdb_lua.so", "/usr/lib/dovecot/auth/libauthdb_lua.so"}

func (c *checker) checkDovecotLua(dc *dovecotConf, db dbRef, script, file string, line int, verDesc string) {
	h := c.h
	ok := true
	if _, err := h.stat(script); err != nil {
		c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-lua-script-missing", Path: file, Line: line,
			Message: fmt.Sprintf("%s { driver = lua } loads %s, which does not exist: Dovecot's auth process fails to start", db.Kind, script),
			Fix:     "install mailauthd (it ships /usr/share/mailauthd/dovecot/mailauthd.lua) or correct the path"})
		ok = false
	}
	found := false
	for _, m := range luaModules {
		if h.exists(m) {
			found = true
		}
	}
	if !found {
		c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-lua-plugin-missing", Path: luaModules[0],
			Message: "Dovecot's Lua auth driver is not installed: the lua passdb/userdb cannot load",
			Fix:     "apt-get install dovecot-auth-lua lua-socket"})
		ok = false
	}
	// blocking=yes (2.3's default) runs Lua in auth-worker; blocking=no in auth.
	svc := "auth-worker"
	if strings.Contains(db.Args, "blocking=no") {
		svc = "auth"
	}
	user, _ := dc.serviceUser(svc)
	acct := h.lookupUser(user)
	if c.m.Control == "" {
		c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-lua-control-off", Path: c.m.ConfigPath,
			Message: "the Lua adapter asks the daemon over the control socket, but listen.control.path is empty",
			Fix:     "set listen.control: {path: /run/mailauthd/control, mode: \"0660\", group: dovecot}"})
		ok = false
	} else if acct != nil {
		if st, err := h.probeSocket(c.m.Control); st != sockListening {
			c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-lua-control-missing", Path: c.m.Control,
				Message: fmt.Sprintf("the Lua adapter needs the control socket %s: %v; every login fails", c.m.Control, err),
				Fix:     "systemctl enable --now mailauthd-control.socket mailauthd.service"})
			ok = false
		} else if prob := h.access(acct, c.m.Control, 2); prob != nil {
			c.add(Finding{Severity: Critical, Area: AreaDovecot, Code: "dovecot-lua-control-unreachable", Path: prob.Path,
				Message: fmt.Sprintf("the Lua adapter runs in Dovecot's %s process as %s and cannot connect to %s: %s", svc, user, c.m.Control, prob),
				Fix:     firstNonEmpty(controlFix(c.m, prob, user), prob.fixFor(acct))})
			ok = false
		}
	}
	if ok {
		c.add(Finding{Severity: Info, Area: AreaDovecot, Code: "dovecot-ok", Path: file, Line: line,
			Message: fmt.Sprintf("%s: %s { driver = lua } loads %s in %s (user %s), control socket %s reachable", verDesc, db.Kind, script, svc, user, c.m.Control)})
	}
}
