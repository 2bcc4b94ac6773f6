package ldapauth

import "time"

// Config is the search part of the ldap: section; the transport part
// (URLs, TLS, service account, timeouts, pool) is directory.Config.
type Config struct {
	Base         string `yaml:"base"`          // search base; may hold filter tokens (%d, %r, ...), DN-escaped
	Scope        string `yaml:"scope"`         // sub | one | base
	Filter       string `yaml:"filter"`        // default (uid=%u); tokens %u %U %d %1-%9 %r %R %s %% (Cyrus lak.c), values filter-escaped; must use %u or %U
	DefaultRealm string `yaml:"default_realm"` // used for %r when the request has no realm; a served realm
	// CanonicalUser is the name the entry is known by, handed to the mail
	// store (Dovecot's user=): %{ATTR} (the entry's value), %u %U %d %r %R.
	// Default: the attribute the filter matches the login against, plus
	// "@realm" when the login had one, e.g. %{uid}%R for (uid=%u).
	CanonicalUser string `yaml:"canonical_user"`
	// Attributes are extra attributes fetched with the user (e.g. for Dovecot
	// field mapping). They come back in Verdict.Attributes.
	Attributes []string `yaml:"attributes"`
	// MirrorRefresh > 0 keeps a local copy of the user entries (DN and the
	// attributes above), reloaded this often, so that a login is one bind
	// instead of a search and a bind; package mirror says when it falls
	// back to the search. 0 (default) = off; at least 10s.
	MirrorRefresh time.Duration `yaml:"mirror_refresh"`
}

// AccessConfig is the access policy applied after a good password (YAML key "access").
type AccessConfig struct {
	// Hostnames are this machine's names for host-attribute matching. Empty:
	// os.Hostname() and its FQDN.
	Hostnames []string `yaml:"hostnames"`
	// HostAttribute is the attribute listing hosts the account may use.
	// "" turns host filtering off. Default "host".
	HostAttribute string `yaml:"host_attribute"`
	// ServiceAttribute (e.g. authorizedService) is matched against the
	// request's service with the same rules; "" (default) = off.
	ServiceAttribute string `yaml:"service_attribute"`
	// AllowMissingHost accepts accounts without any host value. Off by default:
	// a missing attribute denies, as SSSD and pam_ldap do.
	AllowMissingHost bool `yaml:"allow_missing_host"`
	// Realms are the domains this host serves for realm-blind searches: a
	// login name@domain (or a client-sent realm) whose domain is neither
	// part of the search, nor the entry's (RealmAttribute), nor listed here
	// is refused.
	Realms []string `yaml:"realms"`
	// RealmAttribute names the entry's domain attribute (e.g. mail, whose
	// part after '@' counts, or associatedDomain); "" = none.
	RealmAttribute string `yaml:"realm_attribute"`
	// Filters are extra LDAP filters that must each return the user's entry
	// (searched with the user's DN as base, scope base). Tokens as Filter plus
	// %h (this host's first name) and %D (user DN).
	Filters []string `yaml:"filters"`
}
