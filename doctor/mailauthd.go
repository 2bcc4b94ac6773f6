package doctor

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/mailauthd/mailauthd/config"
)

// loadConfig is the doctor's one use of package config: the file is read
// exactly as "mailauthd serve" reads it. Paths below a root are mapped
// here and nowhere else.
func loadConfig(h *host, path, saslauthdConf string) (*config.File, error) {
	sc := ""
	if saslauthdConf != "" {
		sc = h.real(saslauthdConf)
	}
	return config.Load(h.real(path), sc)
}

// mailauthdState is what the doctor learned about mailauthd itself; the
// peer checks compare against it.
type mailauthdState struct {
	ConfigPath string
	Config     *config.File // nil when it did not load
	ConfigErr  error

	// Served are the saslauthd-protocol sockets: mailauthd.socket's when
	// that unit is installed (systemd then passes them in and the
	// configuration's listen.saslauthd is ignored), else the configuration's.
	Served []servedSocket
	// Control is the private socket ("" = off).
	Control     string
	ControlFrom string

	ServiceUnit, SocketUnit, ControlUnit *unitFile
	// User is the account the daemon runs as (the unit's User=), nil if
	// it does not exist.
	UserName string
	User     *account

	// Listen/ldap settings the checks need, defaults when the
	// configuration did not load.
	Listen config.Listen
}

func (c *checker) loadMailauthd() *mailauthdState {
	h := c.h
	m := &mailauthdState{ConfigPath: c.opts.Config}
	m.Config, m.ConfigErr = loadConfig(h, c.opts.Config, c.opts.SaslauthdConf)
	if m.Config != nil {
		m.Listen = m.Config.Listen
	} else {
		m.Listen = config.Default().Listen
	}
	if !c.opts.NoSystemd {
		m.ServiceUnit = h.loadUnit("mailauthd.service")
		m.SocketUnit = h.loadUnit("mailauthd.socket")
		m.ControlUnit = h.loadUnit("mailauthd-control.socket")
	}
	if m.SocketUnit != nil {
		mode := fs.FileMode(0o666) // systemd's SocketMode default
		if kv, ok := m.SocketUnit.get("Socket", "SocketMode"); ok {
			if v, err := strconv.ParseUint(kv.Value, 8, 32); err == nil {
				mode = fs.FileMode(v)
			}
		}
		grp := ""
		if kv, ok := m.SocketUnit.get("Socket", "SocketGroup"); ok {
			grp = kv.Value
		}
		for _, kv := range socketUnitPaths(m.SocketUnit) {
			m.Served = append(m.Served, servedSocket{Path: kv.Value, Canon: h.canonical(kv.Value), From: kv.File, Mode: mode, Group: grp})
		}
	} else {
		from := c.opts.Config
		if m.Config == nil {
			from = "mailauthd's default, the configuration did not load"
		}
		for _, s := range m.Listen.Saslauthd {
			mode, _ := s.FileMode()
			m.Served = append(m.Served, servedSocket{Path: s.Path, Canon: h.canonical(s.Path), From: from, Mode: mode, Group: s.Group})
		}
	}
	if m.ControlUnit != nil {
		if ps := socketUnitPaths(m.ControlUnit); len(ps) > 0 {
			m.Control, m.ControlFrom = ps[0].Value, ps[0].File
		}
	} else {
		m.Control, m.ControlFrom = m.Listen.Control.Path, c.opts.Config
		if m.Config == nil {
			m.ControlFrom = "mailauthd's default"
		}
	}
	m.UserName = "mailauthd"
	if m.ServiceUnit != nil {
		if kv, ok := m.ServiceUnit.get("Service", "User"); ok {
			m.UserName = kv.Value
		} else {
			m.UserName = "root"
		}
	}
	m.User = h.lookupUser(m.UserName)
	return m
}

// serves returns the served socket a peer's path leads to, or nil.
func (m *mailauthdState) serves(h *host, path string) *servedSocket {
	canon := h.canonical(path)
	for i := range m.Served {
		if m.Served[i].Canon == canon || m.Served[i].Path == path {
			return &m.Served[i]
		}
	}
	return nil
}

func (m *mailauthdState) servedList() string {
	if len(m.Served) == 0 {
		return "no saslauthd socket at all"
	}
	ps := make([]string, len(m.Served))
	for i, s := range m.Served {
		ps[i] = s.Path
	}
	l := strings.Join(ps, ", ")
	if m.SocketUnit == nil && m.Config == nil {
		l += " (its default: the configuration did not load)"
	}
	return l
}

// placeholderMarks are the sample configuration's made-up names.
var placeholderMarks = []string{"example.org", "example.com", "example.net", "dc=example,"}

func isPlaceholder(s string) bool {
	l := strings.ToLower(s)
	for _, m := range placeholderMarks {
		if strings.Contains(l, m) {
			return true
		}
	}
	return false
}

// isLoopbackHost: a literal loopback address or localhost. Names are not
// resolved: a name is assumed to be remote.
func isLoopbackHost(hostname string) bool {
	if hostname == "" || strings.EqualFold(hostname, "localhost") || strings.HasSuffix(strings.ToLower(hostname), ".localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(hostname, "[]"))
	return ip != nil && ip.IsLoopback()
}

func (c *checker) checkMailauthd() {
	h, m := c.h, c.m
	cfgPath := m.ConfigPath
	switch {
	case errors.Is(m.ConfigErr, fs.ErrNotExist):
		c.add(Finding{Severity: Critical, Area: AreaMailauthd, Code: "config-missing", Path: cfgPath,
			Message: cfgPath + " does not exist: mailauthd serve and mailauthd checkpassword refuse to start without it",
			Fix:     "install the annotated sample (packaging/mailauthd.yaml) as " + cfgPath + " and set ldap.urls and ldap.base"})
	case m.ConfigErr != nil:
		c.add(Finding{Severity: Critical, Area: AreaMailauthd, Code: "config-invalid", Path: cfgPath,
			Message: "configuration refused: " + strings.TrimPrefix(m.ConfigErr.Error(), h.real(cfgPath)+": "),
			Fix:     "correct the named key, then: mailauthd serve --check --config " + cfgPath})
	default:
		c.add(Finding{Severity: Info, Area: AreaMailauthd, Code: "config-ok", Path: cfgPath, Message: "configuration loads"})
	}
	if cfg := m.Config; cfg != nil {
		c.checkPlaceholders(cfg)
		for _, u := range cfg.LDAP.Directory.URLs {
			pu, err := url.Parse(u)
			if err != nil {
				continue
			}
			if strings.EqualFold(pu.Scheme, "ldap") && !cfg.LDAP.Directory.StartTLS && !isLoopbackHost(pu.Hostname()) {
				c.add(Finding{Severity: Warning, Area: AreaMailauthd, Code: "cleartext-ldap", Path: cfgPath,
					Message: fmt.Sprintf("ldap.urls has %s without ldap.start_tls: every user's password crosses the network in cleartext (bind as the user)", u),
					Fix:     fmt.Sprintf("set ldap.start_tls: true, or use ldaps://%s", pu.Hostname())})
			}
		}
		if cfg.LDAP.Directory.InsecureSkipTLS {
			c.add(Finding{Severity: Warning, Area: AreaMailauthd, Code: "tls-verify-off", Path: cfgPath,
				Message: "ldap.tls_insecure_skip_verify is true: anyone between this host and LDAP can read passwords",
				Fix:     "remove ldap.tls_insecure_skip_verify and set ldap.ca_file to the CA that signed the server's certificate"})
		}
		c.checkBindPassword(cfg)
	}
	c.checkUnits()
	for _, s := range m.Served {
		c.checkServedSocket(s)
	}
}

func (c *checker) checkPlaceholders(cfg *config.File) {
	var hits []string
	for _, u := range cfg.LDAP.Directory.URLs {
		if isPlaceholder(u) {
			hits = append(hits, "ldap.urls "+u)
		}
	}
	if isPlaceholder(cfg.LDAP.Search.Base) {
		hits = append(hits, "ldap.base "+cfg.LDAP.Search.Base)
	}
	if isPlaceholder(cfg.LDAP.Directory.BindDN) {
		hits = append(hits, "ldap.bind_dn "+cfg.LDAP.Directory.BindDN)
	}
	for _, n := range cfg.Access.Hostnames {
		if isPlaceholder(n) {
			hits = append(hits, "access.hostnames "+n)
		}
	}
	if len(hits) > 0 {
		c.add(Finding{Severity: Warning, Area: AreaMailauthd, Code: "placeholder", Path: c.m.ConfigPath,
			Message: "values from the shipped sample are still there: " + strings.Join(hits, "; "),
			Fix:     "replace them with your directory's names (e.g. ldap.base: ou=people,dc=yourdomain,dc=tld)"})
	}
}

// sandboxHides says whether the service's sandbox hides a path from the
// daemon (ProtectHome=, PrivateTmp=), or "".
func (m *mailauthdState) sandboxHides(p string) string {
	if m.ServiceUnit == nil {
		return ""
	}
	under := func(dirs ...string) bool {
		for _, d := range dirs {
			if p == d || strings.HasPrefix(p, d+"/") {
				return true
			}
		}
		return false
	}
	if kv, ok := m.ServiceUnit.get("Service", "ProtectHome"); ok && kv.Value != "no" && kv.Value != "false" && kv.Value != "read-only" {
		if under("/home", "/root", "/run/user") {
			return fmt.Sprintf("%s has ProtectHome=%s, so the daemon sees an empty /home, /root and /run/user", m.ServiceUnit.Path, kv.Value)
		}
	}
	if kv, ok := m.ServiceUnit.get("Service", "PrivateTmp"); ok && (kv.Value == "yes" || kv.Value == "true") {
		if under("/tmp", "/var/tmp") {
			return fmt.Sprintf("%s has PrivateTmp=yes, so the daemon has its own empty /tmp and /var/tmp", m.ServiceUnit.Path)
		}
	}
	return ""
}

func (c *checker) checkBindPassword(cfg *config.File) {
	h, m := c.h, c.m
	p := cfg.LDAP.Directory.BindPasswordFile
	if p == "" {
		return
	}
	fi, err := h.stat(p)
	if err != nil {
		c.add(Finding{Severity: Critical, Area: AreaMailauthd, Code: "bindpw-missing", Path: p,
			Message: fmt.Sprintf("ldap.bind_password_file %s: %v: mailauthd cannot start", p, errors.Unwrap(err)),
			Fix:     fmt.Sprintf("install -m 0640 -g %s /dev/stdin %s  (type the service account's password, then Ctrl-D)", m.UserName, p)})
		return
	}
	if why := m.sandboxHides(p); why != "" {
		c.add(Finding{Severity: Critical, Area: AreaMailauthd, Code: "bindpw-hidden-by-sandbox", Path: p,
			Message: fmt.Sprintf("ldap.bind_password_file %s is invisible to the service: %s", p, why),
			Fix:     fmt.Sprintf("move it to /etc/mailauthd/private/ (root:%s 0750) and point ldap.bind_password_file there", m.UserName)})
	}
	switch {
	case m.User == nil && m.ServiceUnit != nil:
		// checkUnits reports the unit's missing user.
	case m.User == nil:
		c.add(Finding{Severity: Critical, Area: AreaMailauthd, Code: "daemon-user-missing", Path: "/etc/passwd",
			Message: fmt.Sprintf("the daemon's user %s does not exist", m.UserName),
			Fix:     "systemd-sysusers mailauthd.conf  (or: adduser --system --group --no-create-home mailauthd)"})
	default:
		prob := h.access(m.User, p, 4)
		if prob == nil {
			break
		}
		c.add(Finding{Severity: Critical, Area: AreaMailauthd, Code: "bindpw-unreadable", Path: p,
			Message: fmt.Sprintf("the daemon runs as %s and cannot read ldap.bind_password_file %s: %s; mailauthd cannot start", m.UserName, p, prob),
			Fix:     firstNonEmpty(bindpwFix(prob, m.UserName, p), prob.fixFor(m.User))})
	}
	if fi.Mode().Perm()&0o004 != 0 {
		c.add(Finding{Severity: Warning, Area: AreaMailauthd, Code: "bindpw-world-readable", Path: p,
			Message: fmt.Sprintf("ldap.bind_password_file %s is %s: every local user can read the LDAP service account's password", p, h.describe(fi)),
			Fix:     fmt.Sprintf("chgrp %s %s && chmod 0640 %s", m.UserName, p, p)})
	}
}

func bindpwFix(prob *accessProblem, user, p string) string {
	if prob.Path == p {
		return fmt.Sprintf("chgrp %s %s && chmod 0640 %s", user, p, p)
	}
	return ""
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// checkUnits looks at the installed systemd units for settings that break
// the sockets' permissions.
func (c *checker) checkUnits() {
	h, m := c.h, c.m
	if m.ServiceUnit != nil {
		if kv, ok := m.ServiceUnit.get("Service", "RuntimeDirectory"); ok && kv.Value != "" {
			for _, rd := range strings.Fields(kv.Value) {
				dir := filepath.Join("/run", rd)
				var hit []string
				for _, u := range []*unitFile{m.SocketUnit, m.ControlUnit} {
					if u == nil {
						continue
					}
					for _, s := range socketUnitPaths(u) {
						if strings.HasPrefix(h.canonical(s.Value), dir+"/") {
							hit = append(hit, s.Value)
						}
					}
				}
				if len(hit) > 0 {
					c.add(Finding{Severity: Critical, Area: AreaMailauthd, Code: "runtime-directory-chown", Path: kv.File, Line: kv.Line,
						Message: fmt.Sprintf("RuntimeDirectory=%s: at every service start systemd chowns %s to %s (mode %s), so the socket units' %s become unreachable for Postfix, Cyrus and Dovecot (permission denied)",
							rd, dir, m.UserName, runtimeDirMode(m.ServiceUnit), strings.Join(hit, ", ")),
						Fix: fmt.Sprintf("delete the RuntimeDirectory= lines from %s (socket activation needs none; the socket units create %s), then: systemctl daemon-reload && systemctl restart mailauthd.socket mailauthd.service", kv.File, dir)})
				}
			}
		}
		if m.User == nil {
			c.add(Finding{Severity: Critical, Area: AreaMailauthd, Code: "daemon-user-missing", Path: m.ServiceUnit.Path,
				Message: fmt.Sprintf("%s runs the daemon as User=%s, which does not exist: the service cannot start", m.ServiceUnit.Path, m.UserName),
				Fix:     "systemd-sysusers mailauthd.conf  (or: adduser --system --group --no-create-home mailauthd)"})
		}
	}
	for _, u := range []*unitFile{m.SocketUnit, m.ControlUnit} {
		if u == nil {
			continue
		}
		if kv, ok := u.get("Socket", "SocketGroup"); ok && kv.Value != "" && h.lookupGroup(kv.Value) == nil {
			c.add(Finding{Severity: Critical, Area: AreaMailauthd, Code: "socket-group-missing", Path: kv.File, Line: kv.Line,
				Message: fmt.Sprintf("SocketGroup=%s: no such group, so %s fails to start and no socket is created", kv.Value, filepath.Base(u.Path)),
				Fix:     fmt.Sprintf("addgroup --system %s  (or set SocketGroup= in systemctl edit %s)", kv.Value, filepath.Base(u.Path))})
		}
	}
	if m.SocketUnit != nil && m.Config != nil {
		for _, s := range m.Config.Listen.Saslauthd {
			if m.serves(h, s.Path) == nil {
				c.add(Finding{Severity: Warning, Area: AreaMailauthd, Code: "listen-ignored", Path: m.ConfigPath,
					Message: fmt.Sprintf("listen.saslauthd has %s, but under systemd the sockets come from %s (%s): that path is not served", s.Path, m.SocketUnit.Path, m.servedList()),
					Fix:     fmt.Sprintf("systemctl edit mailauthd.socket and add ListenStream=%s", s.Path)})
			}
		}
	}
}

func runtimeDirMode(u *unitFile) string {
	if kv, ok := u.get("Service", "RuntimeDirectoryMode"); ok {
		return kv.Value
	}
	return "0755"
}

func (c *checker) checkServedSocket(s servedSocket) {
	st, err := c.h.probeSocket(s.Path)
	switch st {
	case sockListening:
		c.add(Finding{Severity: Info, Area: AreaMailauthd, Code: "socket-listening", Path: s.Path, Message: "saslauthd socket " + s.Path + " accepts connections"})
	case sockMissing, sockRefused:
		what := "does not exist"
		if st == sockRefused {
			what = "exists but nothing listens on it (a stale socket)"
		}
		c.add(Finding{Severity: Warning, Area: AreaMailauthd, Code: "socket-not-listening", Path: s.Path,
			Message: fmt.Sprintf("saslauthd socket %s (from %s) %s: mailauthd is not running", s.Path, s.From, what),
			Fix:     "systemctl enable --now mailauthd.socket mailauthd.service"})
	case sockNotSocket:
		c.add(Finding{Severity: Critical, Area: AreaMailauthd, Code: "socket-not-socket", Path: s.Path,
			Message: err.Error() + ": mailauthd cannot listen there",
			Fix:     "rm " + s.Path + " && systemctl restart mailauthd.socket"})
	default:
		c.add(Finding{Severity: Warning, Area: AreaMailauthd, Code: "socket-not-listening", Path: s.Path,
			Message: fmt.Sprintf("saslauthd socket %s: %v", s.Path, err), Fix: "systemctl status mailauthd.socket"})
	}
}
