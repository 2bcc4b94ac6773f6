package pamexec

import (
	"errors"
	"time"
)

// Config is the pam: section of mailauthd.yaml.
type Config struct {
	// Timeout bounds the whole run. pam_exec waits for its child with no
	// limit (waitpid in modules/pam_exec/pam_exec.c), and the service
	// calling PAM (Dovecot's auth-worker, saslauthd, an FTP daemon) waits
	// for pam_exec: a hung LDAP server must end as a refusal quickly, not
	// as a stuck login process.
	Timeout time.Duration `yaml:"timeout"`
}

// DefaultTimeout is Config.Timeout's default.
const DefaultTimeout = 5 * time.Second

// DefaultConfig is the section before the file is applied.
func DefaultConfig() Config { return Config{Timeout: DefaultTimeout} }

// Validate checks the section.
func (c Config) Validate() error {
	if c.Timeout <= 0 || c.Timeout > time.Minute {
		return errors.New("pam.timeout must be positive and at most 1m")
	}
	return nil
}
