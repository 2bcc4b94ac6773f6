package doctor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// Change is one package of a pending transaction.
type Change struct {
	Package string
	Old     string // installed version, "" when not installed
	New     string // version after the transaction, "" when removed
}

func (ch Change) String() string {
	o, n := ch.Old, ch.New
	if o == "" {
		o = "(none)"
	}
	if n == "" {
		n = "(removed)"
	}
	return ch.Package + " " + o + " → " + n
}

// ParseAptHook reads what apt sends a DPkg::Pre-Install-Pkgs hook whose
// DPkg::Tools::Options::<cmd>::Version is 2 or 3 (apt-pkg/deb/dpkgpm.cc,
// SendPkgsInfo): "VERSION 3", apt's configuration as key=value lines, an
// empty line, then one line per dpkg action:
//
//	v3: name old-ver old-arch old-multiarch op new-ver new-arch new-multiarch action
//	v2: name old-ver op new-ver action
//
// where a missing version is "-" (v3: "- - none"), op is <, >, = (or >
// with "-" for a removal), and action is a .deb path, **CONFIGURE** or
// **REMOVE**. A package can appear twice (unpack, then configure); the
// changes are merged per package.
func ParseAptHook(r io.Reader) ([]Change, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	if !sc.Scan() {
		return nil, errors.New("empty input: is DPkg::Tools::Options::<hook>::Version set to 3?")
	}
	first := sc.Text()
	var ver int
	if _, err := fmt.Sscanf(first, "VERSION %d", &ver); err != nil || (ver != 2 && ver != 3) {
		return nil, fmt.Errorf("first line %q: want VERSION 2 or 3 (set DPkg::Tools::Options::<hook>::Version \"3\")", first)
	}
	for sc.Scan() { // apt's configuration, up to the empty line
		if sc.Text() == "" {
			break
		}
	}
	var out []Change
	idx := map[string]int{}
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		var ch Change
		switch {
		case ver == 3 && len(f) == 9:
			ch = Change{Package: f[0], Old: dash(f[1]), New: dash(f[5])}
		case ver == 2 && len(f) == 5:
			ch = Change{Package: f[0], Old: dash(f[1]), New: dash(f[3])}
		default:
			return nil, fmt.Errorf("unexpected line for version %d: %q", ver, sc.Text())
		}
		if f[len(f)-1] == "**REMOVE**" {
			ch.New = ""
		}
		if i, ok := idx[ch.Package]; ok {
			if ch.Old != "" {
				out[i].Old = ch.Old
			}
			out[i].New = ch.New
			continue
		}
		idx[ch.Package] = len(out)
		out = append(out, ch)
	}
	return out, sc.Err()
}

func dash(s string) string {
	if s == "-" {
		return ""
	}
	return s
}

// ParseChangeList reads "name old-version new-version" lines ("-" for
// none), the format the other package managers' hooks produce.
func ParseChangeList(r io.Reader) ([]Change, error) {
	sc := bufio.NewScanner(r)
	var out []Change
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 3 {
			return nil, fmt.Errorf("want 'name old new', got %q", sc.Text())
		}
		out = append(out, Change{Package: f[0], Old: dash(f[1]), New: dash(f[2])})
	}
	return out, sc.Err()
}

// dovecotPackages are the names Dovecot's core ships under.
var dovecotPackages = map[string]bool{"dovecot-core": true, "dovecot": true}

// CheckUpgrade reports what the pending transaction would break, judged
// against the host's configuration now (before it runs).
func CheckUpgrade(ctx context.Context, opts Options, changes []Change) *Report {
	opts = opts.withDefaults()
	c := &checker{opts: opts, h: newHost(opts.Root)}
	c.m = c.loadMailauthd()
	byName := map[string]Change{}
	for _, ch := range changes {
		byName[ch.Package] = ch
	}
	var dc *dovecotConf
	var pc *postfixConf
	if opts.want(AreaDovecot) {
		dc, _ = c.loadDovecot(ctx)
	}
	if opts.want(AreaPostfix) {
		pc, _ = c.loadPostfix(ctx)
	}

	// Dovecot 2.3 -> 2.4: checkpassword is gone, the configuration syntax changed.
	for name := range dovecotPackages {
		ch, ok := byName[name]
		if !ok || ch.New == "" || !atLeast(ch.New, 2, 4) || (ch.Old != "" && atLeast(ch.Old, 2, 4)) {
			continue
		}
		if dc == nil {
			continue
		}
		cp := false
		for _, db := range dc.databases() {
			if db.Driver == "checkpassword" && parseCheckpasswordArgs(db.Args).IsOurs {
				file, line := dc.locate(db)
				cp = true
				c.add(Finding{Severity: Critical, Area: AreaUpgrade, Code: "upgrade-dovecot-checkpassword", Path: file, Line: line,
					Message: fmt.Sprintf("%s: Dovecot 2.4 removed the checkpassword driver that this %s uses; after the upgrade Dovecot refuses its configuration and no one can log in to IMAP/POP3", ch, db.Kind),
					Fix:     "apt-mark hold " + name + "  (then move to mailauthd's Lua adapter, docs/dovecot.md, before upgrading)"})
			}
		}
		if !cp && dc.Tree.get("dovecot_config_version") == "" {
			c.add(Finding{Severity: Warning, Area: AreaUpgrade, Code: "upgrade-dovecot-config", Path: dc.File,
				Message: fmt.Sprintf("%s: Dovecot 2.4 does not read a 2.3 configuration (no dovecot_config_version in %s)", ch, dc.File),
				Fix:     "apt-mark hold " + name + " until the configuration is converted (doc.dovecot.org: upgrading 2.3 to 2.4)"})
		}
	}

	// Postfix losing Debian's compiled-in SASL path.
	if ch, ok := byName["postfix"]; ok && ch.New != "" && pc != nil && atLeast(ch.New, 3, 9) && (ch.Old == "" || !atLeast(ch.Old, 3, 9)) {
		dirs, debianCB := c.saslSearchPath(pc)
		if debianCB && pc.Params["cyrus_sasl_config_path"] == "" {
			saslDir := filepath.Join(pc.ConfigDir, "sasl")
			for _, e := range pc.Master {
				if e.Command != "smtpd" || !isYes(pc.param(&e, "smtpd_sasl_auth_enable")) || pc.param(&e, "smtpd_sasl_type") != "cyrus" {
					continue
				}
				name := pc.param(&e, "smtpd_sasl_path") + ".conf"
				if !c.h.exists(filepath.Join(saslDir, name)) {
					continue
				}
				inDefault := false
				for _, d := range libsaslConfigPath() {
					if c.h.exists(filepath.Join(d, name)) {
						inDefault = true
					}
				}
				if !inDefault {
					c.add(Finding{Severity: Critical, Area: AreaUpgrade, Code: "upgrade-postfix-sasl-path", Path: pc.MainCF,
						Message: fmt.Sprintf("%s: Debian 13's Postfix no longer has %s compiled in; libsasl2 would look in %s and find no %s, so SMTP AUTH stops working", ch, dirs[0], strings.Join(libsaslConfigPath()[:2], ", "), name),
						Fix:     "postconf -e cyrus_sasl_config_path=" + saslDir + "  (before the upgrade; harmless on the current version)"})
					break
				}
			}
		}
	}

	// Removals that take a working piece away.
	saslUsers := c.saslauthdUsers(pc)
	luaUsed := false
	if dc != nil {
		for _, db := range dc.databases() {
			if db.Driver == "lua" && (strings.Contains(db.Args, "mailauthd") || strings.Contains(db.Node.get("lua_file"), "mailauthd")) {
				luaUsed = true
			}
		}
	}
	for _, ch := range changes {
		if ch.New != "" {
			continue
		}
		switch {
		case ch.Package == "libsasl2-modules" && len(saslUsers) > 0:
			c.add(Finding{Severity: Critical, Area: AreaUpgrade, Code: "upgrade-sasl-plugins-removed", Path: saslPluginDirs()[0],
				Message: fmt.Sprintf("%s: the PLAIN and LOGIN mechanisms go with it, and %s authenticate through them", ch, strings.Join(saslUsers, " and ")),
				Fix:     "keep libsasl2-modules installed (apt-mark manual libsasl2-modules)"})
		case (ch.Package == "dovecot-auth-lua" || ch.Package == "lua-socket") && luaUsed:
			c.add(Finding{Severity: Critical, Area: AreaUpgrade, Code: "upgrade-lua-removed", Path: dc.File,
				Message: fmt.Sprintf("%s: Dovecot's passdb uses mailauthd's Lua adapter, which needs it", ch),
				Fix:     "keep " + ch.Package + " installed"})
		case ch.Package == "mailauthd" && (len(saslUsers) > 0 || luaUsed):
			c.add(Finding{Severity: Warning, Area: AreaUpgrade, Code: "upgrade-mailauthd-removed", Path: c.m.ConfigPath,
				Message: fmt.Sprintf("%s: mail servers still point at it", ch),
				Fix:     "point Postfix/Cyrus/Dovecot elsewhere first"})
		}
	}
	return c.report()
}

// saslauthdUsers names the peers whose libsasl2 uses saslauthd.
func (c *checker) saslauthdUsers(pc *postfixConf) []string {
	var out []string
	if pc != nil {
		for _, e := range pc.Master {
			if e.Command == "smtpd" && isYes(pc.param(&e, "smtpd_sasl_auth_enable")) && pc.param(&e, "smtpd_sasl_type") == "cyrus" {
				out = append(out, "Postfix")
				break
			}
		}
	}
	if data, err := c.h.readFile(c.opts.CyrusConfig); err == nil {
		if hasWord(parseColonConf(data)["sasl_pwcheck_method"].Value, "saslauthd") {
			out = append(out, "Cyrus imapd")
		}
	}
	return out
}
