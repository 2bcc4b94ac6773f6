package checkpassword

import (
	"errors"
	"time"
)

// Config is the checkpassword: section. The fields Dovecot gets are
// mapped by the daemon (the dovecot: section, package dovecot).
type Config struct {
	// Timeout bounds the whole run: Dovecot sets none and forks one child per
	// login, so a hung LDAP server must turn into exit 111 quickly.
	Timeout time.Duration `yaml:"timeout"`
}

// DefaultTimeout is Config.Timeout's default.
const DefaultTimeout = 5 * time.Second

// Validate checks the section.
func (c Config) Validate() error {
	if c.Timeout <= 0 {
		return errors.New("checkpassword.timeout must be positive")
	}
	return nil
}
