package checkpassword

import "time"

// Config is the Dovecot checkpassword part of the configuration (YAML key
// "checkpassword").
type Config struct {
	// Timeout bounds the whole run: Dovecot sets none and forks one child per
	// login, so a hung LDAP server must turn into exit 111 quickly. Default 5s.
	Timeout time.Duration `yaml:"timeout"`
	// Fields maps a Dovecot field (userdb_home, userdb_uid, host, proxy...) to
	// the LDAP attribute whose first value it takes.
	Fields map[string]string `yaml:"fields"`
	// Defaults gives static values for fields the directory does not hold,
	// with tokens %u (full user), %n (local part), %d (domain), e.g.
	// userdb_home: /var/vmail/%d/%n.
	Defaults map[string]string `yaml:"defaults"`
}
