// Package config reads mailauthd's YAML configuration, every section in one
// decode, and, for migrating admins, the LDAP settings of a Cyrus
// /etc/saslauthd.conf. Each package owns its section's type and defaults;
// this one composes them, and Validate checks every section without
// changing anything. It reads no secret: the bind password file is read by
// the directory when the daemon is built.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/mailauthd/mailauthd/authhttp"
	"github.com/mailauthd/mailauthd/cache"
	"github.com/mailauthd/mailauthd/checkpassword"
	"github.com/mailauthd/mailauthd/directory"
	"github.com/mailauthd/mailauthd/dovecot"
	"github.com/mailauthd/mailauthd/ldapauth"
	"github.com/mailauthd/mailauthd/pamcheck"
	"github.com/mailauthd/mailauthd/pamexec"
	"github.com/mailauthd/mailauthd/saslauthd"
	"github.com/mailauthd/mailauthd/throttle"
)

// DefaultPath is where every command looks without --config.
const DefaultPath = "/etc/mailauthd/mailauthd.yaml"

// maxFileSize bounds what we read: a configuration is a few KiB; anything
// larger is a mistake (a log file passed by accident), not a config.
const maxFileSize = 1 << 20

// File is the whole configuration file.
type File struct {
	Listen        Listen                `yaml:"listen"`
	Server        Server                `yaml:"server"`
	LDAP          LDAP                  `yaml:"ldap"`
	Access        ldapauth.AccessConfig `yaml:"access"`
	Cache         cache.Config          `yaml:"cache"`
	Throttle      throttle.Config       `yaml:"throttle"`
	Dovecot       dovecot.Mapping       `yaml:"dovecot"`
	Checkpassword checkpassword.Config  `yaml:"checkpassword"`
	AuthHTTP      authhttp.Config       `yaml:"auth_http"`
	Pamcheck      pamcheck.Config       `yaml:"pamcheck"`
	Doctor        Doctor                `yaml:"doctor"`
	PAM           pamexec.Config        `yaml:"pam"`
	Log           Log                   `yaml:"log"`

	// ldapSet records that the YAML document had an ldap: section, which
	// must not be mixed with a saslauthd.conf.
	ldapSet bool

	// Warnings lists settings that were accepted but not honoured (from a
	// saslauthd.conf); serve logs each one at startup.
	Warnings []string `yaml:"-"`
}

// LDAP is the ldap: section: one section for the admin, two halves for the
// code (the transport and the search).
type LDAP struct {
	Directory directory.Config `yaml:",inline"`
	Search    ldapauth.Config  `yaml:",inline"`
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
	// HTTP listeners serve nginx's mail auth_http (auth_http: section) and
	// the daemon's other HTTP endpoints. None by default.
	HTTP []HTTPSocket `yaml:"http"`
}

// HTTPSocket is one HTTP listener: a Unix socket (Path, Mode, Group) or a
// TCP address (Address, "127.0.0.1:8080"). A TCP address must be loopback:
// whoever reaches the listener can test passwords, and nginx's request
// carries them in clear text.
type HTTPSocket struct {
	Path    string `yaml:"path"`
	Mode    string `yaml:"mode"`
	Group   string `yaml:"group"`
	Address string `yaml:"address"`
	// DangerouslyAllowNonLoopback serves Address even when it is not a
	// loopback address. Only for a private network where nothing but nginx
	// can connect; prefer a Unix socket or loopback.
	DangerouslyAllowNonLoopback bool `yaml:"dangerously_allow_non_loopback"`
}

// Socket is the Unix socket part of h.
func (h HTTPSocket) Socket() Socket { return Socket{Path: h.Path, Mode: h.Mode, Group: h.Group} }

// CheckAddress validates Address: an IP literal and a port (0, a free
// one, only outside a configuration file: Validate refuses it), loopback
// unless DangerouslyAllowNonLoopback. A host name is refused: it could
// resolve to anything.
func (h HTTPSocket) CheckAddress() error {
	host, port, err := net.SplitHostPort(h.Address)
	if err != nil {
		return fmt.Errorf("address %q: %v", h.Address, err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("address %q: port must be 1..65535", h.Address)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return fmt.Errorf("address %q: the host must be an IP address like 127.0.0.1 or ::1, not a name or empty", h.Address)
	}
	if !ip.Unmap().IsLoopback() && !h.DangerouslyAllowNonLoopback {
		return fmt.Errorf("address %q is not a loopback address: anyone reaching it could test passwords; "+
			"use a Unix socket or 127.0.0.1, or set dangerously_allow_non_loopback: true", h.Address)
	}
	return nil
}

// Server holds the limits of the socket front doors.
type Server struct {
	MaxConnections int           `yaml:"max_connections"` // requests decided at once; default 256
	RequestTimeout time.Duration `yaml:"request_timeout"` // whole request incl. LDAP; default 10s
	IOTimeout      time.Duration `yaml:"io_timeout"`      // each reply write (control socket: each read too); default 5s
	// ReadTimeout bounds reading a saslauthd request from accept: libsasl2
	// sends it in one write, so a client that stalls is gone after this.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// MaxPending bounds the saslauthd connections being read or waiting for
	// a decision slot; MaxPendingPerPeer the share of one local uid.
	MaxPending        int `yaml:"max_pending"`
	MaxPendingPerPeer int `yaml:"max_pending_per_peer"`
	// ReplyReasons sends the decision's reason to saslauthd clients
	// ("NO wrong password") instead of one text for every refusal. Labs only.
	ReplyReasons bool `yaml:"reply_reasons"`
	MaxFieldSize int  `yaml:"max_field_size"` // bytes per protocol field; default 1024
	// ClientAddrWait waits for the optional fifth saslauthd field (client
	// address) when it did not come with the request. Default 0: no wait.
	ClientAddrWait time.Duration `yaml:"client_addr_wait"`
}

// Doctor is the doctor: section.
type Doctor struct {
	// Upgrades is what the package-manager hooks do when "mailauthd doctor
	// --upgrade" finds a transaction that would break mail authentication
	// (dovecot-core 2.3 -> 2.4 with checkpassword): warn, or refuse it.
	Upgrades string `yaml:"upgrades"`
}

// Values of Doctor.Upgrades.
const (
	UpgradesWarn   = "warn"
	UpgradesRefuse = "refuse"
)

// Log configures log/slog output (stderr, so journald picks it up).
type Log struct {
	Format string `yaml:"format"` // text | json
	Level  string `yaml:"level"`  // debug | info | warn | error
}

// NewLogger returns the logger the section describes, writing to w. level
// overrides Level when set (the daemon's, which a reload changes). A
// helper another program logs for (Dovecot's log pipe, pam_exec's log
// file, syslog) passes timestamps false: those add their own.
func (l Log) NewLogger(w io.Writer, level slog.Leveler, timestamps bool) *slog.Logger {
	if level == nil {
		var lv slog.Level // info when Level is empty or unknown (Validate refuses unknown)
		lv.UnmarshalText([]byte(l.Level))
		level = lv
	}
	opts := &slog.HandlerOptions{Level: level}
	if !timestamps {
		opts.ReplaceAttr = dropTime
	}
	if l.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func dropTime(groups []string, a slog.Attr) slog.Attr {
	if a.Key == slog.TimeKey && len(groups) == 0 {
		return slog.Attr{}
	}
	return a
}

// Default is the configuration before the file is applied: keys the file
// leaves out keep these values, each section's from its own package.
func Default() *File {
	return &File{
		Listen: Listen{
			Saslauthd: []Socket{{Path: "/run/mailauthd/mux", Mode: "0660"}},
			Control:   Socket{Path: "/run/mailauthd/control", Mode: "0600"},
		},
		Server: Server{
			MaxConnections: saslauthd.DefaultMaxConns,
			RequestTimeout: saslauthd.DefaultRequestTimeout,
			IOTimeout:      saslauthd.DefaultWriteTimeout,
			ReadTimeout:    saslauthd.DefaultReadTimeout,
			MaxPending:     saslauthd.DefaultMaxPending,
			MaxFieldSize:   saslauthd.DefaultMaxFieldSize,
		},
		LDAP:          LDAP{Directory: directory.DefaultConfig(), Search: ldapauth.DefaultConfig()},
		Access:        ldapauth.DefaultAccessConfig(),
		Throttle:      throttle.DefaultConfig(),
		Checkpassword: checkpassword.Config{Timeout: checkpassword.DefaultTimeout},
		Doctor:        Doctor{Upgrades: UpgradesWarn},
		AuthHTTP:      authhttp.DefaultConfig(),
		PAM:           pamexec.DefaultConfig(),
		Log:           Log{Format: "text", Level: "info"},
	}
}

// Load reads the YAML file at path ("" = built-in defaults only) and, when
// saslauthdConf is set, takes the LDAP settings from that Cyrus
// saslauthd.conf instead, so a migrating admin changes nothing.
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
	return f, nil
}

// Find loads the configuration as every command does: path from --config
// (explicit tells whether the flag was given). Without an explicit
// --config, a missing default file means the built-in defaults: a
// saslauthd.conf may supply the LDAP part, and commands that only need a
// socket path (cache flush) work on a host without a file.
func Find(path string, explicit bool, saslauthdConf string) (*File, error) {
	if !explicit {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			path = ""
		}
	}
	return Load(path, saslauthdConf)
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
// the files the configuration names (password files).
func Parse(data []byte) (*File, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, cleanYAMLError(err)
	}
	zeroDurations(&doc, reflect.TypeFor[File]())
	norm, err := yaml.Marshal(&doc)
	if err != nil {
		return nil, cleanYAMLError(err)
	}
	if len(doc.Content) == 0 {
		norm = nil // an empty file
	}
	f := Default()
	dec := yaml.NewDecoder(bytes.NewReader(norm))
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
	multi := yaml.NewDecoder(bytes.NewReader(data))
	var first, extra yaml.Node
	if err := multi.Decode(&first); err == nil {
		if err := multi.Decode(&extra); !errors.Is(err, io.EOF) {
			return nil, errors.New("more than one YAML document; mailauthd reads exactly one")
		}
	}
	f.Pamcheck = f.Pamcheck.WithDefaults()
	if err := f.Validate(); err != nil {
		return nil, err
	}
	return f, nil
}

// zeroDurations rewrites a bare 0 given for a time.Duration key to "0s", so
// "mirror_refresh: 0" means off, as the documentation says, instead of a
// type error (YAML reads 0 as an integer; time.Duration wants a string).
// It walks the document beside the Go type it will be decoded into.
func zeroDurations(n *yaml.Node, t reflect.Type) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			zeroDurations(c, t)
		}
	case yaml.SequenceNode:
		if t.Kind() == reflect.Slice {
			for _, c := range n.Content {
				zeroDurations(c, t.Elem())
			}
		}
	case yaml.MappingNode:
		if t.Kind() != reflect.Struct {
			return
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			ft, ok := fields[n.Content[i].Value]
			if !ok {
				continue
			}
			v := n.Content[i+1]
			if ft == reflect.TypeFor[time.Duration]() && v.Kind == yaml.ScalarNode && v.Tag == "!!int" && v.Value == "0" {
				v.Tag, v.Value = "!!str", "0s"
				continue
			}
			zeroDurations(v, ft)
		}
	}
}

// yamlFields maps the YAML keys of struct t to their field types, looking
// into ",inline" fields.
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if opts == "inline" {
			for k, v := range yamlFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out[name] = f.Type
	}
	return out
}

func cleanYAMLError(err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		msgs := make([]string, 0, len(te.Errors))
		for _, e := range te.Errors {
			if m := unknownField.FindStringSubmatch(e); m != nil {
				e = fmt.Sprintf("line %s: unknown key %q (in %s)", m[1], m[2], section(m[3]))
				if moved, ok := movedKeys[section(m[3])+"."+m[2]]; ok {
					e += "; it moved to " + moved
				}
			}
			msgs = append(msgs, e)
		}
		return errors.New(strings.Join(msgs, "; "))
	}
	return fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "yaml: "))
}

// movedKeys are keys of earlier versions, with where they went.
var movedKeys = map[string]string{
	"checkpassword.fields":   "dovecot.fields (one mapping for checkpassword and Lua)",
	"checkpassword.defaults": "dovecot.defaults (one mapping for checkpassword and Lua)",
}

// section names a Go type the way the admin knows it: the YAML section.
func section(goType string) string {
	switch goType {
	case "config.File":
		return "top level"
	case "config.LDAP":
		return "ldap"
	case "ldapauth.AccessConfig":
		return "access"
	case "dovecot.Mapping":
		return "dovecot"
	case "pamcheck.Config":
		return "pamcheck"
	case "config.Doctor":
		return "doctor"
	case "throttle.Config":
		return "throttle"
	case "throttle.Limit":
		return "throttle.account/client"
	case "throttle.RedisConfig":
		return "throttle.redis"
	case "pamcheck.Rule":
		return "pamcheck.rules"
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
	case "config.HTTPSocket":
		return "listen.http"
	case "authhttp.Config":
		return "auth_http"
	case "authhttp.Upstream":
		return "auth_http.backends"
	case "pamexec.Config":
		return "pam"
	}
	return goType
}

// Validate checks every section as far as it can without touching the
// network or reading secrets; it changes nothing. The directory and the
// decision check their sections again, more deeply, when the daemon is
// built (serve --check does that too).
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
	for i, h := range f.Listen.HTTP {
		switch {
		case (h.Path == "") == (h.Address == ""):
			bad("listen.http[%d]: set exactly one of path (Unix socket) and address (loopback TCP)", i)
		case h.Path != "":
			if !strings.HasPrefix(h.Path, "/") {
				bad("listen.http[%d]: socket path %q must be absolute", i, h.Path)
			}
			if seen[h.Path] {
				bad("listen: socket path %q used twice", h.Path)
			}
			seen[h.Path] = true
			if _, err := h.Socket().FileMode(); err != nil {
				bad("listen.http[%d]: %v", i, err)
			}
			if h.DangerouslyAllowNonLoopback {
				bad("listen.http[%d]: dangerously_allow_non_loopback is for an address, not a socket path", i)
			}
		default:
			if h.Mode != "" || h.Group != "" {
				bad("listen.http[%d]: mode and group are for a socket path, not an address", i)
			}
			if err := h.CheckAddress(); err != nil {
				bad("listen.http[%d]: %v", i, err)
			} else if strings.HasSuffix(h.Address, ":0") {
				bad("listen.http[%d]: address %q: port must be 1..65535", i, h.Address)
			}
		}
	}
	if f.Server.MaxConnections < 1 || f.Server.MaxConnections > 65536 {
		bad("server.max_connections must be 1..65536, not %d", f.Server.MaxConnections)
	}
	if f.Server.RequestTimeout <= 0 || f.Server.IOTimeout <= 0 || f.Server.ReadTimeout <= 0 {
		bad("server.request_timeout, server.io_timeout and server.read_timeout must be positive")
	}
	if f.Server.MaxPending < f.Server.MaxConnections || f.Server.MaxPending > 1<<20 {
		bad("server.max_pending must be max_connections..1048576, not %d", f.Server.MaxPending)
	}
	if f.Server.MaxPendingPerPeer < -1 || f.Server.MaxPendingPerPeer > f.Server.MaxPending {
		bad("server.max_pending_per_peer must be -1 (off), 0 (a quarter of max_pending) or up to max_pending, not %d", f.Server.MaxPendingPerPeer)
	}
	if f.Server.MaxFieldSize < 256 || f.Server.MaxFieldSize > 65535 {
		bad("server.max_field_size must be 256..65535 (a counted string's limit), not %d", f.Server.MaxFieldSize)
	}
	if f.Server.ClientAddrWait < 0 || f.Server.ClientAddrWait > time.Second {
		bad("server.client_addr_wait must be 0..1s, not %s", f.Server.ClientAddrWait)
	}
	if f.LDAP.Directory.Timeout <= 0 {
		bad("ldap.timeout must be positive")
	}
	if f.LDAP.Directory.BindPasswordFile != "" && f.LDAP.Directory.BindDN == "" {
		bad("ldap.bind_password_file is set but ldap.bind_dn is empty")
	}
	if f.LDAP.Search.MirrorRefresh < 0 {
		bad("ldap.mirror_refresh must not be negative")
	}
	if f.Cache.TTL < 0 || f.Cache.Size < 0 {
		bad("cache.ttl and cache.size must not be negative")
	}
	for _, err := range []error{f.Dovecot.Validate(), f.Checkpassword.Validate(), f.Pamcheck.Validate(), f.Throttle.Validate(),
		f.AuthHTTP.Validate(), f.PAM.Validate()} {
		if err != nil {
			bad("%v", err)
		}
	}
	switch f.Doctor.Upgrades {
	case UpgradesWarn, UpgradesRefuse:
	default:
		bad("doctor.upgrades must be %s or %s, not %q", UpgradesWarn, UpgradesRefuse, f.Doctor.Upgrades)
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
