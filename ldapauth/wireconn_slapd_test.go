package ldapauth

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

func bindTestAuth(t *testing.T, url string, edit func(*Config)) *Authenticator {
	t.Helper()
	cfg := DefaultConfig()
	cfg.URLs = []string{url}
	cfg.Base = slapdtest.PeopleDN
	cfg.Timeout = 2 * time.Second
	cfg.PoolSize, cfg.MaxConns = 1, 1
	if edit != nil {
		edit(&cfg)
	}
	access := DefaultAccessConfig()
	access.Hostnames = []string{"mail.example.org"}
	a, err := New(cfg, access, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// transport is one way to reach slapd, as a configuration edit.
type transport struct {
	name string
	url  string
	edit func(*Config)
}

// transports are plain LDAP, ldaps:// and StartTLS to s (started WithLDAPS).
func transports(s *slapdtest.Server) []transport {
	return []transport{
		{"plain", s.URL(), nil},
		{"ldaps", s.LDAPSURL(), func(c *Config) { c.CAFile = s.CAFile() }},
		{"starttls", s.URL(), func(c *Config) { c.CAFile, c.StartTLS = s.CAFile(), true }},
	}
}

// idleConn returns pool p's one idle connection, leaving it there.
func idleConn(t *testing.T, p *pool) *conn {
	t.Helper()
	if n := len(p.idle); n != 1 {
		t.Fatalf("%d idle %s connections, want 1", n, p.role)
	}
	c := <-p.idle
	p.idle <- c
	return c
}

// TestWireConnsReusedAcrossLogins: one search and one bind connection
// serve many logins, right and wrong passwords interleaved; a refused bind
// leaves the connection usable, and the next right password on it is
// accepted. Plain, ldaps:// and StartTLS alike, searching anonymously or as
// a service account.
func TestWireConnsReusedAcrossLogins(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithLDAPS())
	for _, tc := range append(transports(s),
		transport{"service account", s.URL(), func(c *Config) { c.BindDN, c.BindPassword = slapdtest.AdminDN, slapdtest.AdminPassword }},
		transport{"service account, starttls", s.URL(), func(c *Config) {
			c.BindDN, c.BindPassword = slapdtest.AdminDN, slapdtest.AdminPassword
			c.CAFile, c.StartTLS = s.CAFile(), true
		}},
	) {
		t.Run(tc.name, func(t *testing.T) {
			a := bindTestAuth(t, tc.url, tc.edit)
			ctx := context.Background()
			right := auth.Request{User: "alice", Password: "alicepw"}
			wrong := auth.Request{User: "alice", Password: "alicepw2"}
			if v := a.Authenticate(ctx, right); v.Outcome != auth.Accept {
				t.Fatalf("first login: %v %q", v.Outcome, v.Reason)
			}
			first, search := idleConn(t, a.bind), idleConn(t, a.search)
			startID, searchID := first.wc.id, search.wc.id
			const n = 40
			for i := range n {
				req, want := right, auth.Accept
				if i%3 != 2 { // wrong, wrong, right, ...: every right one follows a refused bind
					req, want = wrong, auth.Reject
				}
				if v := a.Authenticate(ctx, req); v.Outcome != want {
					t.Fatalf("login %d: %v %q, want %v", i, v.Outcome, v.Reason, want)
				}
				if c := idleConn(t, a.bind); c != first {
					t.Fatalf("login %d: the bind connection was replaced", i)
				}
				if c := idleConn(t, a.search); c != search {
					t.Fatalf("login %d: the search connection was replaced", i)
				}
			}
			if got := first.wc.id - startID; got != n {
				t.Errorf("%d binds on the pooled connection, want %d", got, n)
			}
			if got := search.wc.id - searchID; got != n {
				t.Errorf("%d searches on the pooled connection, want %d", got, n)
			}
			// Answers that are not success leave the connection in use too.
			if v := a.Authenticate(ctx, auth.Request{User: "twin", Password: "twinpw"}); v.Reason != reasonAmbiguous {
				t.Errorf("twin: %v %q", v.Outcome, v.Reason)
			}
			if _, _, err := a.searchLDAP(ctx, "ou=nowhere,"+slapdtest.Suffix, ldap.ScopeWholeSubtree, 2, "(uid=alice)", noAttributes); !ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
				t.Errorf("search under a missing base: %v", err)
			}
			if c := idleConn(t, a.search); c != search || search.wc.dead {
				t.Error("the search connection was replaced after an ambiguous login or noSuchObject")
			}
		})
	}
}

// TestStaleConnsAfterRestart: after slapd restarts, every idle search and
// bind connection is stale; a login must not run into one after another (go-ldap
// noticed the close in its reader goroutine; wireConn peeks at the socket).
func TestStaleConnsAfterRestart(t *testing.T) {
	s := slapdtest.Start(t)
	a := bindTestAuth(t, s.URL(), func(c *Config) { c.PoolSize, c.MaxConns = 4, 4 })
	ctx := context.Background()
	var held []*conn
	for _, p := range []*pool{a.bind, a.search} {
		var mine []*conn
		for range 4 {
			c, err := p.get(ctx)
			if err != nil {
				t.Fatal(err)
			}
			mine = append(mine, c)
		}
		for _, c := range mine {
			p.put(c)
		}
		held = append(held, mine...)
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the close reach our sockets
	if v := a.Authenticate(ctx, auth.Request{User: "alice", Password: "alicepw"}); v.Outcome != auth.Accept {
		t.Fatalf("after restart: %v %q", v.Outcome, v.Reason)
	}
	if v := a.Authenticate(ctx, auth.Request{User: "alice", Password: "nope"}); v.Outcome != auth.Reject {
		t.Fatalf("after restart, wrong password: %v %q", v.Outcome, v.Reason)
	}
	for _, c := range held {
		if !c.wc.dead {
			t.Error("a stale connection was not closed")
		}
	}
}

// TestBigEntryOverWire: an entry far larger than the read buffer (2,000
// host values, ~50 KB) comes through whole from a real slapd, over plain
// TCP, ldaps:// and StartTLS (several TLS records): the host rule sees the one value
// that allows this host, which is the last one.
func TestBigEntryOverWire(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithLDAPS())
	lc, err := ldap.DialURL(s.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	if err := lc.Bind(slapdtest.AdminDN, slapdtest.AdminPassword); err != nil {
		t.Fatal(err)
	}
	hosts := make([]string, 0, 2001)
	for i := range 2000 {
		hosts = append(hosts, "denied-host-"+strconv.Itoa(i)+".example.org")
	}
	hosts = append(hosts, "mail.example.org")
	add := ldap.NewAddRequest("uid=wide,"+slapdtest.PeopleDN, nil)
	add.Attribute("objectClass", []string{"inetOrgPerson", "hostObject"})
	add.Attribute("uid", []string{"wide"})
	add.Attribute("cn", []string{"Wide"})
	add.Attribute("sn", []string{"Wide"})
	add.Attribute("userPassword", []string{"widepw"})
	add.Attribute("host", hosts)
	if err := lc.Add(add); err != nil {
		t.Fatal(err)
	}
	for _, tc := range transports(s) {
		t.Run(tc.name, func(t *testing.T) {
			a := bindTestAuth(t, tc.url, tc.edit)
			for range 3 { // the same connection each time
				v := a.Authenticate(context.Background(), auth.Request{User: "wide", Password: "widepw"})
				if v.Outcome != auth.Accept {
					t.Fatalf("%v %q", v.Outcome, v.Reason)
				}
				if got := len(v.Attributes["host"]); got != len(hosts) {
					t.Fatalf("%d host values, want %d", got, len(hosts))
				}
			}
			if c := idleConn(t, a.search); c.wc.dead || cap(c.wc.in) > keepReadBuf {
				t.Errorf("after a big entry: dead %v, read buffer %d bytes kept", c.wc.dead, cap(c.wc.in))
			}
		})
	}
}
