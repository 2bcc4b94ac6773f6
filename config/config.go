// Package config loads mailauthd's YAML configuration and, for migrating
// admins, the LDAP settings of a Cyrus /etc/saslauthd.conf.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/mailauthd/mailauthd/cache"
	"github.com/mailauthd/mailauthd/checkpassword"
	"github.com/mailauthd/mailauthd/ldapauth"
)

// DefaultPath is where serve, test and checkpassword look without --config.
const DefaultPath = "/etc/mailauthd/mailauthd.yaml"

// maxFileSize bounds what we read: a configuration is a few KiB; anything
// larger is a mistake (a log file passed by accident), not a config.
const maxFileSize = 1 << 20

// File is the whole configuration file.
type File struct {
	Listen        Listen                `yaml:"listen"`
	Server        Server                `yaml:"server"`
	LDAP          ldapauth.Config       `yaml:"ldap"`
	Access        ldapauth.AccessConfig `yaml:"access"`
	Cache         cache.Config          `yaml:"cache"`
	Checkpassword checkpassword.Config  `yaml:"checkpassword"`
	Log           Log                   `yaml:"log"`
	// Pamcheck belongs to the pamcheck command, which decodes and validates
	// it itself; here it only has to be a known key.
	Pamcheck yaml.Node `yaml:"pamcheck"`

	// ldapSet records that the YAML document had an ldap: section, which
	// must not be mixed with a saslauthd.conf.
	ldapSet bool

	// Warnings lists settings that were accepted but not honoured (from a
	// saslauthd.conf); serve logs each one at startup.
	Warnings []string `yaml:"-"`
}

// Socket is one Unix socket to listen on.
type Socket struct {
	Path  string `yaml:"path"`
	Mode  string `yaml:"mode"`  // octal, e.g. "0660"
	Group string `yaml:"group"` // name or numeric gid; "" keeps the daemon's group
}

// FileMode parses Mode.
func (s Socket) FileMode() (os.FileMode, error) {
	if s.Mode == "" {
		return 0o660, nil
	}
	m, err := strconv.ParseUint(s.Mode, 8, 32)
	if err != nil || m > 0o777 {
		return 0, fmt.Errorf("socket %s: mode %q is not an octal permission like \"0660\"", s.Path, s.Mode)
	}
	return os.FileMode(m), nil
}

// Listen says where the daemon accepts requests.
type Listen struct {
	// Saslauthd sockets speak the Cyrus saslauthd protocol (Postfix, Cyrus,
	// testsaslauthd). Several: e.g. /run/mailauthd/mux and Postfix's chroot path.
	Saslauthd []Socket `yaml:"saslauthd"`
	// Control is the daemon's private socket: the checkpassword fast path and
	// "mailauthd cache flush". Path "" turns it off.
	Control Socket `yaml:"control"`
}

// Server holds the limits of the socket front doors.
type Server struct {
	MaxConnections int           `yaml:"max_connections"` // concurrent requests served; default 256
	RequestTimeout time.Duration `yaml:"request_timeout"` // whole request incl. LDAP; default 10s
	IOTimeout      time.Duration `yaml:"io_timeout"`      // each socket read/write; default 5s
	MaxFieldSize   int           `yaml:"max_field_size"`  // bytes per protocol field; default 1024
	// ClientAddrWait waits for the optional fifth saslauthd field (client
	// address) when it did not come with the request. Default 0: no wait.
	ClientAddrWait time.Duration `yaml:"client_addr_wait"`
}

// Log configures log/slog output (stderr, so journald picks it up).
type Log struct {
	Format string `yaml:"format"` // text | json
	Level  string `yaml:"level"`  // debug | info | warn | error
}

// Default is the configuration before the file is applied: keys the file
// leaves out keep these values.
func Default() *File {
	return &File{
		Listen: Listen{
			Saslauthd: []Socket{{Path: "/run/mailauthd/mux", Mode: "0660"}},
			Control:   Socket{Path: "/run/mailauthd/control", Mode: "0600"},
		},
		Server:        Server{MaxConnections: 256, RequestTimeout: 10 * time.Second, IOTimeout: 5 * time.Second, MaxFieldSize: 1024},
		LDAP:          ldapauth.DefaultConfig(),
		Access:        ldapauth.DefaultAccessConfig(),
		Checkpassword: checkpassword.Config{Timeout: 5 * time.Second},
		Log:           Log{Format: "text", Level: "info"},
	}
}

// Load reads the YAML file at path ("" = built-in defaults only) and, when
// saslauthdConf is set, takes the LDAP settings from that Cyrus
// saslauthd.conf instead, so a migrating admin changes nothing. The
// service account's password file is read by ldapauth.New.
func Load(path, saslauthdConf string) (*File, error) {
	f := Default()
	if path != "" {
		data, err := readBounded(path)
		if err != nil {
			return nil, err
		}
		if f, err = Parse(data); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	}
	if saslauthdConf != "" {
		if err := f.LoadSaslauthdConf(saslauthdConf); err != nil {
			return nil, err
		}
	}
	// The attributes Dovecot fields are mapped from come with the user's
	// search, so a checkpassword lookup costs no second query.
	f.LDAP.Attributes = f.Checkpassword.MergeAttributes(f.LDAP.Attributes)
	return f, nil
}

func readBounded(path string) ([]byte, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s: larger than %d bytes; not a configuration file", path, maxFileSize)
	}
	return data, nil
}

var unknownField = regexp.MustCompile(`line (\d+): field (\S+) not found in type (\S+)`)

// Parse decodes and validates a configuration document. It does not read
// the files the configuration names (password files); Load does.
func Parse(data []byte) (*File, error) {
	f := Default()
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(f); err != nil && !errors.Is(err, io.EOF) {
		return nil, cleanYAMLError(err)
	}
	var top struct {
		LDAP *yaml.Node `yaml:"ldap"`
	}
	if err := yaml.Unmarshal(data, &top); err == nil && top.LDAP != nil {
		f.ldapSet = true
	}
	// A second document is almost certainly a paste error; refuse it.
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document; mailauthd reads exactly one")
	}
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return f, nil
}

func cleanYAMLError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msgs := make([]string, 0, len(te.Errors))
		for _, e := range te.Errors {
			if m := unknownField.FindStringSubmatch(e); m != nil {
				e = fmt.Sprintf("line %s: unknown key %q (in %s)", m[1], m[2], section(m[3]))
			}
			msgs = append(msgs, e)
		}
		return errors.New(strings.Join(msgs, "; "))
	}
	return fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "yaml: "))
}

// section names a Go type the way the admin knows it: the YAML section.
func section(goType string) string {
	switch goType {
	case "config.File":
		return "top level"
	case "ldapauth.Config":
		return "ldap"
	case "ldapauth.AccessConfig":
		return "access"
	case "config.Listen":
		return "listen"
	case "config.Socket":
		return "listen socket"
	case "config.Server":
		return "server"
	case "config.Log":
		return "log"
	case "cache.Config":
		return "cache"
	case "checkpassword.Config":
		return "checkpassword"
	}
	return goType
}

// Validate checks what can be checked without touching the network. The
// LDAP settings are checked again, more deeply, by ldapauth.New.
func (f *File) Validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }

	seen := map[string]bool{}
	for _, s := range append(append([]Socket(nil), f.Listen.Saslauthd...), f.Listen.Control) {
		if s.Path == "" {
			continue
		}
		if !strings.HasPrefix(s.Path, "/") {
			bad("listen: socket path %q must be absolute", s.Path)
		}
		if seen[s.Path] {
			bad("listen: socket path %q used twice", s.Path)
		}
		seen[s.Path] = true
		if _, err := s.FileMode(); err != nil {
			bad("listen: %v", err)
		}
	}
	for i, s := range f.Listen.Saslauthd {
		if s.Path == "" {
			bad("listen.saslauthd[%d]: path is empty", i)
		}
	}
	if f.Server.MaxConnections < 1 || f.Server.MaxConnections > 65536 {
		bad("server.max_connections must be 1..65536, not %d", f.Server.MaxConnections)
	}
	if f.Server.RequestTimeout <= 0 || f.Server.IOTimeout <= 0 {
		bad("server.request_timeout and server.io_timeout must be positive")
	}
	if f.Server.MaxFieldSize < 256 || f.Server.MaxFieldSize > 65535 {
		bad("server.max_field_size must be 256..65535 (a counted string's limit), not %d", f.Server.MaxFieldSize)
	}
	if f.Server.ClientAddrWait < 0 || f.Server.ClientAddrWait > time.Second {
		bad("server.client_addr_wait must be 0..1s, not %s", f.Server.ClientAddrWait)
	}
	if f.LDAP.Timeout <= 0 {
		bad("ldap.timeout must be positive")
	}
	if f.LDAP.BindPasswordFile != "" && f.LDAP.BindDN == "" {
		bad("ldap.bind_password_file is set but ldap.bind_dn is empty")
	}
	if f.Cache.TTL < 0 || f.Cache.Size < 0 {
		bad("cache.ttl and cache.size must not be negative")
	}
	if f.Cache.TTL > 0 && f.Cache.Size == 0 {
		f.Cache.Size = 10000
	}
	if err := f.Checkpassword.Validate(); err != nil {
		bad("%v", err)
	}
	switch f.Log.Format {
	case "text", "json":
	default:
		bad("log.format must be text or json, not %q", f.Log.Format)
	}
	switch f.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		bad("log.level must be debug, info, warn or error, not %q", f.Log.Level)
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}
