package doctor

import (
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
)

// libsasl2's compiled-in defaults (cyrus-sasl 2.1.28 as Debian builds it:
// configure --with-configdir=/etc/sasl2:/etc/sasl:<plugindir>:/usr/lib/sasl2,
// --with-saslauthd=/var/run/saslauthd; lib/checkpw.c appends "/mux").
const defaultSaslauthdPath = "/var/run/saslauthd/mux"

func multiarchTriplet() string {
	return map[string]string{
		"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu", "386": "i386-linux-gnu",
		"arm": "arm-linux-gnueabihf", "ppc64le": "powerpc64le-linux-gnu", "s390x": "s390x-linux-gnu",
		"riscv64": "riscv64-linux-gnu", "mips64le": "mips64el-linux-gnuabi64", "loong64": "loongarch64-linux-gnu",
	}[runtime.GOARCH]
}

// saslPluginDirs are where libsasl2 looks for mechanism plugins (Debian
// multiarch, then the rpm layouts).
func saslPluginDirs() []string {
	var d []string
	if t := multiarchTriplet(); t != "" {
		d = append(d, "/usr/lib/"+t+"/sasl2")
	}
	return append(d, "/usr/lib64/sasl2", "/usr/lib/sasl2")
}

// libsaslConfigPath is libsasl2's default configuration search path.
func libsaslConfigPath() []string {
	d := []string{"/etc/sasl2", "/etc/sasl"}
	if t := multiarchTriplet(); t != "" {
		d = append(d, "/usr/lib/"+t+"/sasl2")
	}
	return append(d, "/usr/lib64/sasl2", "/usr/lib/sasl2")
}

// saslOption is one "key: value" line of a libsasl2 application file
// (lib/config.c: leading blanks skipped, # comments, key up to ':').
type saslOption struct {
	Value string
	Line  int
}

func parseColonConf(data []byte) map[string]saslOption {
	out := map[string]saslOption{}
	for i, l := range strings.Split(string(data), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || l[0] == '#' {
			continue
		}
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		out[strings.TrimSpace(k)] = saslOption{Value: strings.TrimSpace(v), Line: i + 1}
	}
	return out
}

func hasWord(list, w string) bool {
	for _, f := range strings.Fields(strings.ReplaceAll(list, ",", " ")) {
		if strings.EqualFold(f, w) {
			return true
		}
	}
	return false
}

// checkPlainMechs reports a mech_list that leaves out both plaintext
// mechanisms: saslauthd can only check a password it is given.
func (c *checker) checkMechList(area, key string, opts map[string]saslOption, file string) {
	o, ok := opts[key]
	if !ok || o.Value == "" {
		return
	}
	if !hasWord(o.Value, "PLAIN") && !hasWord(o.Value, "LOGIN") {
		c.add(Finding{Severity: Critical, Area: area, Code: area + "-sasl-mechs", Path: file, Line: o.Line,
			Message: fmt.Sprintf("%s: %s offers neither PLAIN nor LOGIN; a saslauthd check needs the cleartext password, so no login reaches mailauthd", key, o.Value),
			Fix:     fmt.Sprintf("set %s: PLAIN LOGIN in %s", key, file)})
	}
}

// checkSaslPlugins reports when libsasl2's PLAIN and LOGIN plugins are
// missing (Debian: libsasl2-modules), once per run.
func (c *checker) checkSaslPlugins(area string) {
	for _, d := range saslPluginDirs() {
		for _, n := range []string{"libplain.so*", "liblogin.so*"} {
			if len(c.h.glob(filepath.Join(d, n))) > 0 {
				return
			}
		}
	}
	c.add(Finding{Severity: Critical, Area: area, Code: "sasl-plugins-missing", Path: saslPluginDirs()[0],
		Message: "libsasl2's PLAIN and LOGIN mechanism plugins are not installed (looked in " + strings.Join(saslPluginDirs(), ", ") + "): the server offers no AUTH mechanism that reaches mailauthd",
		Fix:     "apt-get install libsasl2-modules  (dnf/zypper: cyrus-sasl-plain)"})
}

// peerSocket describes a peer's connection to a saslauthd socket.
type peerSocket struct {
	Area    string
	Who     string // "Postfix smtpd (service smtp, chrooted)"
	User    string // the peer's account
	Path    string // path outside any chroot
	Setting string // the setting the path comes from, e.g. "saslauthd_path in /etc/postfix/sasl/smtpd.conf"
	File    string
	Line    int
	FixPath string // the one-line fix when the path is not served
}

// checkPeerSocket checks that p.Path is served by mailauthd, is there and
// listening, and that p.User may connect; it returns whether all is fine.
func (c *checker) checkPeerSocket(p peerSocket) bool {
	h, m := c.h, c.m
	s := m.serves(h, p.Path)
	if s == nil {
		c.add(Finding{Severity: Critical, Area: p.Area, Code: p.Area + "-socket-not-served", Path: p.File, Line: p.Line,
			Message: fmt.Sprintf("%s connects to %s (%s), but mailauthd serves %s", p.Who, p.Path, p.Setting, m.servedList()),
			Fix:     p.FixPath})
		return false
	}
	acct := h.lookupUser(p.User)
	if acct == nil {
		c.add(Finding{Severity: Warning, Area: p.Area, Code: p.Area + "-user-missing", Path: "/etc/passwd",
			Message: fmt.Sprintf("%s runs as user %s, which does not exist here: cannot check who may connect to %s", p.Who, p.User, p.Path),
			Fix:     "install the package that creates " + p.User})
		return false
	}
	st, err := h.probeSocket(p.Path)
	switch st {
	case sockMissing, sockRefused, sockNotSocket, sockOther:
		what := "does not exist"
		switch st {
		case sockRefused:
			what = "exists, but nothing listens on it"
		case sockNotSocket, sockOther:
			what = err.Error()
		}
		c.add(Finding{Severity: Critical, Area: p.Area, Code: p.Area + "-socket-missing", Path: p.Path,
			Message: fmt.Sprintf("%s connects to %s, which %s: every login fails now", p.Who, p.Path, what),
			Fix:     "systemctl enable --now mailauthd.socket mailauthd.service  (or start mailauthd serve)"})
		// Still say whether the user could connect once it is there.
		if prob := c.predictAccess(acct, s); prob != "" {
			c.add(Finding{Severity: Critical, Area: p.Area, Code: p.Area + "-socket-unreachable", Path: p.Path,
				Message: fmt.Sprintf("once created, %s (user %s) could not connect to %s: %s", p.Who, p.User, p.Path, prob),
				Fix:     c.groupFix(acct, s)})
		}
		return false
	}
	if prob := h.access(acct, p.Path, 2); prob != nil {
		c.add(Finding{Severity: Critical, Area: p.Area, Code: p.Area + "-socket-unreachable", Path: prob.Path,
			Message: fmt.Sprintf("%s runs as %s and cannot connect to %s: %s; every login fails with \"permission denied\"", p.Who, p.User, p.Path, prob),
			Fix:     prob.fixFor(acct)})
		return false
	}
	return true
}

// predictAccess says whether acct could connect to a socket that is not
// there yet, from the directories that exist and the mode and group it
// will be created with; "" when it could.
func (c *checker) predictAccess(acct *account, s *servedSocket) string {
	h := c.h
	if acct.UID == 0 {
		return ""
	}
	if prob := h.access(acct, filepath.Dir(s.Path), 1); prob != nil && prob.Exists {
		return prob.String()
	}
	mode := s.Mode
	if mode == 0 {
		mode = 0o660
	}
	if s.Group != "" {
		g := h.lookupGroup(s.Group)
		if g != nil && acct.inGroup(g.GID) {
			if mode&0o020 == 0 {
				return fmt.Sprintf("it will be created with mode %04o, no group write", mode)
			}
			return ""
		}
	}
	if mode&0o002 == 0 {
		grp := s.Group
		if grp == "" {
			grp = "the daemon's group"
		}
		return fmt.Sprintf("it will be created %s %04o and %s is not in that group", grp, mode, acct.Name)
	}
	return ""
}

func (c *checker) groupFix(acct *account, s *servedSocket) string {
	if s.Group != "" {
		return fmt.Sprintf("adduser %s %s", acct.Name, s.Group)
	}
	return "set group: and mode: \"0660\" on " + s.Path + " in listen.saslauthd"
}
