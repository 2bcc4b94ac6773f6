package main

import (
	"bufio"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mailauthd/mailauthd/internal/dovecottest"
)

// runDovecot starts a Dovecot 2.3 (internal/dovecottest) whose passdb is
// one of the benchmark's contenders, writes "AUTH-CLIENT-SOCKET PGID" to
// the ready file, and stops it on SIGTERM or SIGINT:
//
//	ldap                 Dovecot's own LDAP passdb (dovecot-ldap), auth_bind = yes
//	checkpassword        passdb checkpassword running "mailauthd checkpassword"
//	lua                  packaging/dovecot/mailauthd.lua asking a daemon
//	lua-noop             a Lua passdb that accepts every login at once (the floor)
//
// auth_failure_delay is 0 and the auth cache off (the harness's defaults).
func runDovecot(args []string) error {
	fs := flag.NewFlagSet("dovecot", flag.ExitOnError)
	kind := fs.String("kind", "", "ldap | checkpassword | lua | lua-noop")
	ready := fs.String("ready", "", "file to write the auth-client socket and the process group to")
	url := fs.String("url", "", "ldap: ldap:// URL")
	base := fs.String("base", "ou=people,dc=example,dc=org", "ldap: search base")
	bindDN := fs.String("binddn", "", "ldap: service account DN")
	bindPW := fs.String("bindpw", "", "ldap: service account password")
	bin := fs.String("bin", "", "checkpassword: the mailauthd binary")
	config := fs.String("config", "", "checkpassword: mailauthd.yaml")
	standalone := fs.Bool("standalone", false, "checkpassword: never ask the daemon")
	script := fs.String("script", "packaging/dovecot/mailauthd.lua", "lua: the script")
	socket := fs.String("socket", "", "lua: the daemon's control socket")
	fs.Parse(args)
	if *ready == "" {
		return errors.New("dovecot: -ready is required")
	}
	dir, err := dovecottest.NewDir(dovecottest.Version23)
	if err != nil {
		return err
	}
	defer dir.Remove()
	cfg := dovecottest.Config{Dir: dir}
	const userdb = "userdb {\n  driver = static\n  args = uid=5000 gid=5000 home=/var/vmail/%u\n}\n"
	switch *kind {
	case "ldap":
		ext, err := dir.WriteFile("dovecot-ldap.conf.ext", fmt.Appendf(nil,
			"uris = %s\ndn = %s\ndnpass = %s\nauth_bind = yes\nbase = %s\nscope = subtree\npass_filter = (uid=%%u)\npass_attrs = uid=user\n",
			*url, *bindDN, *bindPW, *base), 0o600)
		if err != nil {
			return err
		}
		cfg.PassdbUserdb = "passdb {\n  driver = ldap\n  args = " + ext.Dovecot + "\n}\n" + userdb
	case "checkpassword":
		flags := ""
		if *standalone {
			flags = " --standalone"
		}
		cfg.PassdbUserdb = fmt.Sprintf("passdb {\n  driver = checkpassword\n  args = %s checkpassword%s --config %s\n}\n%s", *bin, flags, *config, userdb)
		// As docs/dovecot.md says: a Go program needs more address space
		// than Dovecot's default 256M limit.
		cfg.Extra = "service auth {\n  vsz_limit = 2G\n}\n"
	case "lua-noop":
		// The floor of any Lua passdb: Dovecot's auth process, its
		// auth-worker and a Lua call that accepts at once.
		s, err := dir.WriteFile("noop.lua", []byte(noopLua), 0o644)
		if err != nil {
			return err
		}
		cfg.PassdbUserdb = "passdb {\n  driver = lua\n  args = file=" + s.Dovecot + " blocking=yes\n}\n" + userdb
	case "lua":
		s, err := dir.CopyFile(*script, "mailauthd.lua")
		if err != nil {
			return err
		}
		cfg.PassdbUserdb = "passdb {\n  driver = lua\n  args = file=" + s.Dovecot + " blocking=yes\n}\n" + userdb
		cfg.Extra = "import_environment = $import_environment MAILAUTHD_SOCKET=" + *socket + "\n"
	default:
		return fmt.Errorf("dovecot: unknown -kind %q", *kind)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	d, err := dovecottest.Launch(dovecottest.Version23, cfg)
	if err != nil {
		return err
	}
	defer d.Stop()
	if err := os.WriteFile(*ready, fmt.Appendf(nil, "%s %d\n", d.Dir.Path("run", "auth-client").Host, d.PGID()), 0o600); err != nil {
		return err
	}
	<-sig
	return nil
}

// noopLua accepts every login without asking anyone: a reference row only.
const noopLua = `function auth_password_verify(req, password)
  return dovecot.auth.PASSDB_RESULT_OK, {user = req.user}
end
`

// dovecotDoer is a login process's connection to Dovecot's auth-client
// socket (src/lib-auth/auth-client-connection.c): one handshake, then one
// AUTH PLAIN at a time on the persistent connection.
type dovecotDoer struct {
	conn    net.Conn
	r       *bufio.Reader
	service string
	timeout time.Duration
	id      int
}

func newDovecotDoer(path, service string, cpid int, timeout time.Duration) (*dovecotDoer, error) {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return nil, err
	}
	d := &dovecotDoer{conn: c, r: bufio.NewReader(c), service: service, timeout: timeout}
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "VERSION\t1\t2\nCPID\t%d\n", cpid); err != nil {
		c.Close()
		return nil, err
	}
	for {
		line, err := d.r.ReadString('\n')
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("auth-client handshake: %w", err)
		}
		if line == "DONE\n" {
			return d, nil
		}
	}
}

func (d *dovecotDoer) do(user, pw string) (bool, error) {
	d.id++
	resp := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pw))
	d.conn.SetDeadline(time.Now().Add(d.timeout))
	if _, err := fmt.Fprintf(d.conn, "AUTH\t%d\tPLAIN\tservice=%s\tresp=%s\n", d.id, d.service, resp); err != nil {
		return false, err
	}
	line, err := d.r.ReadString('\n')
	if err != nil {
		return false, fmt.Errorf("auth-client reply: %w", err)
	}
	word, rest, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "\t")
	id, _, _ := strings.Cut(rest, "\t")
	if id != strconv.Itoa(d.id) {
		return false, fmt.Errorf("auth-client reply for id %q, want %d: %q", id, d.id, line)
	}
	switch word {
	case "OK":
		return true, nil
	case "FAIL":
		if strings.Contains(line, "\ttemp\t") || strings.HasSuffix(line, "\ttemp\n") || strings.Contains(line, "code=temp_fail") {
			return false, fmt.Errorf("temporary failure: %q", strings.TrimSpace(line))
		}
		return false, nil
	}
	return false, fmt.Errorf("auth-client reply %q", strings.TrimSpace(line))
}

func (d *dovecotDoer) close() { d.conn.Close() }

// pgroupTicks sums utime+stime and the reaped children's cutime+cstime of
// every process in process group pgid: Dovecot's master and its services,
// and through cutime/cstime the checkpassword programs they ran.
func pgroupTicks(pgid int) int64 {
	if pgid <= 0 {
		return 0
	}
	stats, _ := os.ReadDir("/proc")
	var total int64
	for _, e := range stats {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(data), ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(data[i+1:]))
		if len(f) < 15 || f[2] != strconv.Itoa(pgid) {
			continue
		}
		for _, k := range []int{11, 12, 13, 14} {
			n, _ := strconv.ParseInt(f[k], 10, 64)
			total += n
		}
	}
	return total
}
