// Package doctor checks the whole mail-authentication wiring of a host:
// mailauthd's own configuration and LDAP servers, the Postfix, Cyrus imapd
// and Dovecot configurations that point at it, the sockets between them
// (does the path the peer connects to exist, is it served by mailauthd, may
// the peer's user connect), the PAM files pamcheck watches, and, from a
// package manager's hook, whether a pending transaction would break any of
// it. Every finding names the file, what is wrong and the one-line fix
// (docs/doctor.md lists them).
//
// Severities and exit codes are pamcheck's: info (0), warning (1),
// critical (2). Every path is taken below Options.Root, so a fixture tree or
// a mounted system can be checked; with a root other than "/" no peer
// binary (postconf, doveconf) is run and their files are read instead.
package doctor

import (
	"context"
	"sort"
	"time"

	"github.com/mailauthd/mailauthd/pamcheck"
)

// Severity is pamcheck's, so both commands grade alike.
type Severity = pamcheck.Severity

// Severities.
const (
	Info     = pamcheck.Info
	Warning  = pamcheck.Warning
	Critical = pamcheck.Critical
)

// Areas: which part of the wiring a finding is about.
const (
	AreaMailauthd = "mailauthd"
	AreaLDAP      = "ldap"
	AreaPostfix   = "postfix"
	AreaCyrus     = "cyrus"
	AreaDovecot   = "dovecot"
	AreaPAM       = "pam"
	AreaUpgrade   = "upgrade"
)

// AllAreas in the order they are checked.
var AllAreas = []string{AreaMailauthd, AreaLDAP, AreaPostfix, AreaCyrus, AreaDovecot, AreaPAM}

// Finding is one fact about the wiring: a problem with its fix, or (Info)
// what was checked and found fine.
type Finding struct {
	Severity Severity `json:"severity"`
	Area     string   `json:"area"`
	Code     string   `json:"code"`
	Path     string   `json:"path,omitempty"`
	Line     int      `json:"line,omitempty"`
	Message  string   `json:"message"`
	Fix      string   `json:"fix,omitempty"`
}

// Options say what to check and where.
type Options struct {
	// Root is the tree every path is below; "" or "/" is this host.
	Root string
	// Config is mailauthd's configuration (system path). Default
	// /etc/mailauthd/mailauthd.yaml.
	Config string
	// SaslauthdConf, when set, takes the LDAP settings from a Cyrus
	// saslauthd.conf, as "mailauthd serve --saslauthd-conf" does.
	SaslauthdConf string
	// PostfixConfig is Postfix's config_directory (postconf -c). Default:
	// what postconf says, or /etc/postfix below a root.
	PostfixConfig string
	// DovecotConfig is dovecot.conf (doveconf -c). Default
	// /etc/dovecot/dovecot.conf.
	DovecotConfig string
	// CyrusConfig is imapd.conf. Default /etc/imapd.conf.
	CyrusConfig string
	// Areas limits the checks (nil: all of AllAreas).
	Areas map[string]bool
	// NoSystemd ignores installed systemd units: the sockets are the
	// configuration's listen.* (a daemon started by hand or in a container).
	NoSystemd bool
	// Offline skips every network connection (the LDAP probes).
	Offline bool
	// Timeout bounds each LDAP step (dial, TLS, bind, search); 0 takes
	// ldap.timeout from the configuration.
	Timeout time.Duration
	// Postconf, Doveconf and Dovecot are the peer binaries for a live
	// check; "" finds them in the usual places.
	Postconf, Doveconf, Dovecot string
}

// DefaultConfigPath is mailauthd's configuration file.
const DefaultConfigPath = "/etc/mailauthd/mailauthd.yaml"

func (o Options) want(area string) bool { return o.Areas == nil || o.Areas[area] }

func (o Options) withDefaults() Options {
	if o.Config == "" {
		o.Config = DefaultConfigPath
	}
	if o.DovecotConfig == "" {
		o.DovecotConfig = "/etc/dovecot/dovecot.conf"
	}
	if o.CyrusConfig == "" {
		o.CyrusConfig = "/etc/imapd.conf"
	}
	return o
}

// Report is the result of one run.
type Report struct {
	Findings []Finding `json:"findings"`
}

// Worst is the highest severity, or -1 with no findings.
func (r *Report) Worst() Severity {
	w := Severity(-1)
	for _, f := range r.Findings {
		if f.Severity > w {
			w = f.Severity
		}
	}
	return w
}

// Has reports whether a finding with code is present.
func (r *Report) Has(code string) bool { return r.Find(code) != nil }

// Find returns the first finding with code, or nil.
func (r *Report) Find(code string) *Finding {
	for i := range r.Findings {
		if r.Findings[i].Code == code {
			return &r.Findings[i]
		}
	}
	return nil
}

// checker collects the findings of one run.
type checker struct {
	opts Options
	h    *host
	out  []Finding

	m *mailauthdState // what mailauthd serves, from its configuration and units
}

func (c *checker) add(f Finding) { c.out = append(c.out, f) }

// Run checks the host and returns every finding, most severe first (the
// order within a severity is the order of the checks).
func Run(ctx context.Context, opts Options) *Report {
	opts = opts.withDefaults()
	c := &checker{opts: opts, h: newHost(opts.Root)}
	c.m = c.loadMailauthd()
	if opts.want(AreaMailauthd) {
		c.checkMailauthd()
	}
	if opts.want(AreaLDAP) {
		c.checkLDAP(ctx)
	}
	if opts.want(AreaPostfix) {
		c.checkPostfix(ctx)
	}
	if opts.want(AreaCyrus) {
		c.checkCyrus()
	}
	if opts.want(AreaDovecot) {
		c.checkDovecot(ctx)
	}
	if opts.want(AreaPAM) {
		c.checkPAM()
	}
	return c.report()
}

func (c *checker) report() *Report {
	out := append([]Finding(nil), c.out...)
	sort.SliceStable(out, func(i, j int) bool { return out[i].Severity > out[j].Severity })
	return &Report{Findings: out}
}
