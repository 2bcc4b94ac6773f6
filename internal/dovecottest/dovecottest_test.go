package dovecottest

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var versions = []Version{Version23, Version24}

// One shared instance per version for TestShared, stopped after m.Run.
var shared = map[Version]*Shared{
	Version23: {Version: Version23, Setup: luaOKSetup(Version23)},
	Version24: {Version: Version24, Setup: luaOKSetup(Version24)},
}

func TestMain(m *testing.M) {
	code := m.Run()
	for _, s := range shared {
		s.Close()
	}
	os.Exit(code)
}

// luaOKConfig is the passdb and userdb blocks that run testdata/lua-ok.lua,
// in v's syntax.
func luaOKConfig(v Version, script Path) string {
	if v == Version23 {
		return fmt.Sprintf(`passdb {
  driver = lua
  args = file=%[1]s blocking=yes
}
userdb {
  driver = lua
  args = file=%[1]s blocking=yes
}`, script.Dovecot)
	}
	return fmt.Sprintf(`passdb lua {
  driver = lua
  lua_file = %[1]s
  lua_settings {
    greeting = hello
  }
}
userdb lua {
  driver = lua
  lua_file = %[1]s
}`, script.Dovecot)
}

func luaOKSetup(v Version) func(Dir) (Config, error) {
	return func(dir Dir) (Config, error) {
		script, err := dir.CopyFile(filepath.Join("testdata", "lua-ok.lua"), "lua-ok.lua")
		if err != nil {
			return Config{}, err
		}
		return Config{PassdbUserdb: luaOKConfig(v, script), AuthDebug: true}, nil
	}
}

// TestLua runs testdata/lua-ok.lua as passdb and userdb on each version and
// pins down what each version makes of the script's answers.
func TestLua(t *testing.T) {
	for _, v := range versions {
		t.Run(v.String(), func(t *testing.T) {
			t.Parallel()
			dir := TempDir(t, v)
			cfg, err := luaOKSetup(v)(dir)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			d := Start(t, v, cfg)
			started := time.Since(start)
			if _, _, err := d.AuthLookup("lua-ok"); err != nil {
				t.Fatal(err)
			}
			t.Logf("Dovecot %s: master up in %s, first lookup answered after %s", v, started.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))

			accepted := map[string]string{"user": "lua-ok", "proxy": "", "host": "192.0.2.1"}
			if v == Version24 {
				// 2.4 prints proxy=y; 2.3 prints a yes-field bare. 2.4
				// also hands the script its lua_settings.
				accepted = map[string]string{"user": "lua-ok", "proxy": "y", "host": "192.0.2.1", "greeting": "hello"}
			}
			type check struct {
				name   string
				run    func() (Result, map[string]string, error)
				want   Result
				fields map[string]string // exactly these, when not nil
			}
			auth := func(user, pw string) func() (Result, map[string]string, error) {
				return func() (Result, map[string]string, error) {
					return d.AuthTest(user, pw, map[string]string{"service": "imap", "rip": "192.0.2.7"})
				}
			}
			checks := []check{
				{"accepted with fields", auth("lua-ok", "pw"), OK, accepted},
				{"wrong password", auth("lua-ok", "nope"), Failed, map[string]string{"user": "lua-ok"}},
				{"unknown user looks like a wrong password", auth("nobody", "pw"), Failed, map[string]string{"user": "nobody"}},
				{"internal failure", auth("lua-tempfail", "pw"), TempFail, nil},
				{"mismatch with a table", auth("lua-mismatch-table", "pw"), byVersion(v, Failed, TempFail), nil},
				{"success with a string", auth("lua-ok-string", "pw"), byVersion(v, OK, TempFail), nil},
				{"success with nothing else", auth("lua-ok-nil", "pw"), byVersion(v, TempFail, OK), nil},
				{"mismatch with nothing else", auth("lua-mismatch-nil", "pw"), byVersion(v, TempFail, Failed), nil},
				{"numbers and booleans", auth("lua-ok-types", "pw"), OK,
					// 2.3 turns nologin=false into a bare nologin flag: on.
					map[string]string{"user": "lua-ok-types", "port": "143", "nologin": byVersion(v, "", "no"), "proxy": byVersion(v, "", "yes")}},
				{"passdb lookup", func() (Result, map[string]string, error) { return d.AuthLookup("lua-ok") }, OK,
					map[string]string{"user": "lua-ok", "proxy": "y", "host": "192.0.2.1"}},
				{"passdb lookup unknown", func() (Result, map[string]string, error) { return d.AuthLookup("nobody") }, UserUnknown, nil},
				{"passdb lookup tempfail", func() (Result, map[string]string, error) { return d.AuthLookup("lua-tempfail") }, TempFail, nil},
				{"userdb", func() (Result, map[string]string, error) { return d.User("lua-ok") }, OK, nil},
				{"userdb unknown", func() (Result, map[string]string, error) { return d.User("nobody") }, UserUnknown, nil},
				{"userdb tempfail", func() (Result, map[string]string, error) { return d.User("lua-tempfail") }, TempFail, nil},
			}
			for _, c := range checks {
				got, fields, err := c.run()
				if err != nil {
					t.Errorf("%s: %v", c.name, err)
					continue
				}
				if got != c.want {
					t.Errorf("%s: %s, want %s (fields %v)", c.name, got, c.want, fields)
				}
				if c.fields != nil && fmt.Sprint(fields) != fmt.Sprint(c.fields) {
					t.Errorf("%s: fields %v, want %v", c.name, fields, c.fields)
				}
			}
			if _, fields, _ := d.User("lua-ok"); fields["uid"] != "5000" || fields["home"] != "/var/vmail/lua-ok" {
				t.Errorf("userdb fields %v, want uid 5000 and home /var/vmail/lua-ok", fields)
			}

			log := d.Log()
			wantLog := []string{"Dovecot v" + v.String() + ".", "auth-worker"}
			if v == Version24 {
				wantLog = append(wantLog,
					"auth_password_verify invalid error return value (expected nil or string, got table)",
					"auth_password_verify invalid return value (expected nil or table, got string)")
			}
			for _, s := range wantLog {
				if !strings.Contains(log, s) {
					t.Errorf("log lacks %q:\n%s", s, log)
				}
			}
		})
	}
}

// byVersion is a23 on Dovecot 2.3, a24 on 2.4.
func byVersion[T any](v Version, a23, a24 T) T {
	if v == Version23 {
		return a23
	}
	return a24
}

// TestDoveadmExitCodes pins the raw exit codes the Result mapping relies on.
func TestDoveadmExitCodes(t *testing.T) {
	for _, v := range versions {
		t.Run(v.String(), func(t *testing.T) {
			d := shared[v].Get(t)
			tempfail := 77 // 2.3: auth failed, with code=temp_fail
			if v == Version24 {
				tempfail = 75
			}
			for _, c := range []struct {
				args []string
				want int
			}{
				{[]string{"auth", "test", "-x", "no-penalty", "lua-ok", "pw"}, 0},
				{[]string{"auth", "test", "-x", "no-penalty", "lua-ok", "nope"}, 77},
				{[]string{"auth", "test", "-x", "no-penalty", "nobody", "pw"}, 77},
				{[]string{"auth", "test", "-x", "no-penalty", "lua-tempfail", "pw"}, tempfail},
				{[]string{"auth", "lookup", "lua-ok"}, 0},
				{[]string{"auth", "lookup", "nobody"}, 67},
				{[]string{"auth", "lookup", "lua-tempfail"}, 75},
				{[]string{"user", "lua-ok"}, 0},
				{[]string{"user", "nobody"}, 67},
				{[]string{"user", "lua-tempfail"}, 75},
			} {
				exit, out, errOut, err := d.Doveadm(c.args...)
				if err != nil {
					t.Fatal(err)
				}
				if exit != c.want {
					t.Errorf("doveadm %s: exit %d, want %d\n%s%s", strings.Join(c.args, " "), exit, c.want, out, errOut)
				}
			}
		})
	}
}

// TestShared: tests of one binary get the same instance.
func TestShared(t *testing.T) {
	for _, v := range versions {
		t.Run(v.String(), func(t *testing.T) {
			a, b := shared[v].Get(t), shared[v].Get(t)
			if a != b {
				t.Fatal("two instances")
			}
			if r, _, err := a.AuthTest("lua-ok", "pw", nil); err != nil || r != OK {
				t.Fatalf("auth test: %s, %v", r, err)
			}
		})
	}
}

// peerServer answers testdata/unix-socket.lua: "OK" for sock-ok, "NO"
// otherwise, and records the peer uid of each connection.
type peerServer struct {
	mu   sync.Mutex
	uids []int
}

func (p *peerServer) serve(l *net.UnixListener) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if raw, err := c.SyscallConn(); err == nil {
				raw.Control(func(fd uintptr) {
					if cred, err := syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED); err == nil {
						p.mu.Lock()
						p.uids = append(p.uids, int(cred.Uid))
						p.mu.Unlock()
					}
				})
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			if strings.TrimSpace(line) == "sock-ok" {
				c.Write([]byte("OK\n"))
			} else {
				c.Write([]byte("NO\n"))
			}
		}()
	}
}

func (p *peerServer) lastUID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.uids) == 0 {
		return -1
	}
	return p.uids[len(p.uids)-1]
}

// TestLuaUnixSocket: luasocket's socket.unix reaches a socket the test
// listens on, placed with Dir.Path so Dovecot (chrooted for 2.4) finds it;
// in worker mode (the default) as root, in the auth process as the dovecot
// user, who needs the socket opened to it.
func TestLuaUnixSocket(t *testing.T) {
	for _, v := range versions {
		for _, worker := range []bool{true, false} {
			name := v.String() + "/auth-worker"
			if !worker {
				name = v.String() + "/auth-process"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				dir := TempDir(t, v)
				sock := dir.Path("s")
				l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock.Host, Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				defer l.Close()
				if err := os.Chmod(sock.Host, 0o600); err != nil {
					t.Fatal(err)
				}
				srv := &peerServer{}
				go srv.serve(l)

				src, err := os.ReadFile(filepath.Join("testdata", "unix-socket.lua"))
				if err != nil {
					t.Fatal(err)
				}
				if v == Version23 {
					src = []byte(strings.ReplaceAll(string(src), "@SOCKET@", sock.Dovecot))
				}
				script, err := dir.WriteFile("unix-socket.lua", src, 0o644)
				if err != nil {
					t.Fatal(err)
				}
				var passdb string
				if v == Version23 {
					blocking := map[bool]string{true: "yes", false: "no"}[worker]
					passdb = fmt.Sprintf("passdb {\n  driver = lua\n  args = file=%s blocking=%s\n}\n", script.Dovecot, blocking)
				} else {
					useWorker := map[bool]string{true: "yes", false: "no"}[worker]
					passdb = fmt.Sprintf("passdb lua {\n  driver = lua\n  lua_file = %s\n  use_worker = %s\n  lua_settings {\n    socket = %s\n  }\n}\n",
						script.Dovecot, useWorker, sock.Dovecot)
				}
				userdb := "userdb {\n  driver = static\n  args = uid=5000 gid=5000 home=/tmp\n}\n"
				if v == Version24 {
					userdb = "userdb static {\n  driver = static\n  fields {\n    uid = 5000\n    gid = 5000\n    home = /tmp\n  }\n}\n"
				}
				d := Start(t, v, Config{PassdbUserdb: passdb + userdb})

				uid, gid, err := dir.LookupUser("dovecot")
				if err != nil {
					t.Fatal(err)
				}
				r, fields, err := d.AuthTest("sock-ok", "x", nil)
				if err != nil {
					t.Fatal(err)
				}
				if worker {
					if r != OK || fields["via"] != "socket" || srv.lastUID() != 0 {
						t.Fatalf("worker, socket 0600 root: %s %v, peer uid %d; want ok via socket from uid 0\n%s", r, fields, srv.lastUID(), d.Log())
					}
				} else {
					if r != TempFail || !logShows(d, "permission denied") {
						t.Fatalf("auth process, socket 0600 root: %s %v; want tempfail, permission denied\n%s", r, fields, d.Log())
					}
					// Opened to Dovecot's own dovecot user (the root's ids
					// for 2.4, not the host's), it connects.
					if err := os.Chown(sock.Host, uid, gid); err != nil {
						t.Fatal(err)
					}
					r, fields, err = d.AuthTest("sock-ok", "x", nil)
					if err != nil {
						t.Fatal(err)
					}
					if r != OK || srv.lastUID() != uid {
						t.Fatalf("auth process, socket owned by dovecot (%d): %s %v, peer uid %d\n%s", uid, r, fields, srv.lastUID(), d.Log())
					}
				}
				if r, _, err := d.AuthTest("sock-no", "x", nil); err != nil || r != Failed {
					t.Errorf("refused by the socket: %s, %v; want failed", r, err)
				}
			})
		}
	}
}

// logShows waits a little for s in Dovecot's log: the log process writes
// what the auth process sends it on its own time, which under load can be
// after doveadm has its answer.
func logShows(d *Dovecot, s string) bool {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if strings.Contains(d.Log(), s) {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// TestLaunchBadConfig: a configuration Dovecot refuses fails Launch at once,
// with Dovecot's own complaint, and leaves nothing running.
func TestLaunchBadConfig(t *testing.T) {
	for _, v := range versions {
		t.Run(v.String(), func(t *testing.T) {
			TempDir(t, v) // skip rules
			start := time.Now()
			d, err := Launch(v, Config{PassdbUserdb: "no_such_setting = 1\n"})
			if err == nil {
				d.Stop()
				t.Fatal("Launch accepted an unknown setting")
			}
			if !strings.Contains(err.Error(), "no_such_setting") {
				t.Errorf("error does not name the setting: %v", err)
			}
			if time.Since(start) > startTimeout/2 {
				t.Errorf("Launch took %s to fail", time.Since(start))
			}
		})
	}
}
