package pamcheck

import (
	"fmt"
	"runtime"
	"strings"
)

// DefaultServices are the PAM services mail software uses.
var DefaultServices = []string{
	"imap", "imaps", "pop3", "pop", "smtp", "smtps", "sieve", "dovecot", "cyrus", "submission",
}

// DefaultStateDir holds the snapshot and the private copies.
const DefaultStateDir = "/var/lib/mailauthd/pamcheck"

// DefaultConfDirs is libpam's lookup order: admin, distribution, vendor (openSUSE).
var DefaultConfDirs = []string{"/etc/pam.d", "/usr/lib/pam.d", "/usr/etc/pam.d"}

// Config is the pamcheck: section of mailauthd.yaml.
type Config struct {
	// Services to watch; "other" and every included file are always added.
	Services []string `yaml:"services"`
	StateDir string   `yaml:"state_dir"`
	// ConfDirs overrides libpam's lookup order (rarely needed).
	ConfDirs []string `yaml:"conf_dirs"`
	// ModuleDirs is where relative module names are looked up, first hit wins.
	ModuleDirs []string `yaml:"module_dirs"`
	Rules      []Rule   `yaml:"rules"`
}

// Rule states what a service must look like, so a system without a snapshot
// (a fresh install) can still be checked.
type Rule struct {
	Service string `yaml:"service"`
	// Type is the module type the modules must appear in (default auth).
	Type string `yaml:"type"`
	// RequireAnyModule: at least one of these modules (e.g. pam_sss.so,
	// pam_ldap.so) must be on a line of that type whose .so exists.
	RequireAnyModule []string `yaml:"require_any_module"`
	// ForbidModules must not be used in that type (e.g. pam_permit.so).
	ForbidModules []string `yaml:"forbid_modules"`
	// RequireMailauthd: that type's stack must run "mailauthd pam" through
	// pam_exec.so (mailauthd's PAM front door).
	RequireMailauthd bool `yaml:"require_mailauthd"`
}

// DefaultModuleDirs derives the module search list for this architecture:
// Debian multiarch first, then the lib64 and lib layouts of rpm distributions.
func DefaultModuleDirs() []string {
	triplet := map[string]string{
		"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu", "386": "i386-linux-gnu",
		"arm": "arm-linux-gnueabihf", "ppc64le": "powerpc64le-linux-gnu", "s390x": "s390x-linux-gnu",
		"riscv64": "riscv64-linux-gnu", "mips64le": "mips64el-linux-gnuabi64", "loong64": "loongarch64-linux-gnu",
	}[runtime.GOARCH]
	var dirs []string
	if triplet != "" {
		dirs = append(dirs, "/lib/"+triplet+"/security", "/usr/lib/"+triplet+"/security")
	}
	return append(dirs, "/lib/security", "/lib64/security", "/usr/lib64/security", "/usr/lib/security")
}

// WithDefaults fills unset fields: the section's defaults, applied by the
// configuration reader after decoding.
func (c Config) WithDefaults() Config {
	if len(c.Services) == 0 {
		c.Services = append([]string(nil), DefaultServices...)
	}
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if len(c.ConfDirs) == 0 {
		c.ConfDirs = append([]string(nil), DefaultConfDirs...)
	}
	if len(c.ModuleDirs) == 0 {
		c.ModuleDirs = DefaultModuleDirs()
	}
	for i := range c.Rules {
		if c.Rules[i].Type == "" {
			c.Rules[i].Type = TypeAuth
		}
	}
	return c
}

// Validate rejects settings that would make the checker look at the wrong thing.
func (c Config) Validate() error {
	for _, s := range c.Services {
		if !validServiceName(s) {
			return fmt.Errorf("pamcheck.services: invalid service name %q", s)
		}
	}
	for _, d := range append(append([]string{}, c.ConfDirs...), c.ModuleDirs...) {
		if !strings.HasPrefix(d, "/") {
			return fmt.Errorf("pamcheck: directory %q must be absolute", d)
		}
	}
	if c.StateDir != "" && !strings.HasPrefix(c.StateDir, "/") {
		return fmt.Errorf("pamcheck.state_dir %q must be absolute", c.StateDir)
	}
	for i, r := range c.Rules {
		if !validServiceName(r.Service) {
			return fmt.Errorf("pamcheck.rules[%d]: invalid service %q", i, r.Service)
		}
		switch r.Type {
		case "", TypeAuth, TypeAccount, TypeSession, TypePassword:
		default:
			return fmt.Errorf("pamcheck.rules[%d]: unknown type %q", i, r.Type)
		}
		if len(r.RequireAnyModule) == 0 && len(r.ForbidModules) == 0 && !r.RequireMailauthd {
			return fmt.Errorf("pamcheck.rules[%d]: rule for %q checks nothing (set require_any_module, forbid_modules or require_mailauthd)", i, r.Service)
		}
	}
	return nil
}

func validServiceName(s string) bool {
	return s != "" && s != "." && s != ".." && len(s) <= 255 && !strings.ContainsAny(s, "/\x00 \t\n")
}
