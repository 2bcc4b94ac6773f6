package directory

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

var clients = []string{ClientWire, ClientGoLDAP}

func newDir(t testing.TB, edit func(*Config)) *Directory {
	t.Helper()
	cfg := DefaultConfig()
	cfg.Timeout = 2 * time.Second
	if edit != nil {
		edit(&cfg)
	}
	d, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// transport is one way to reach slapd, as a configuration edit.
type transport struct {
	name string
	edit func(*Config)
}

// transports are plain LDAP, ldaps:// and StartTLS to s (started WithLDAPS),
// searching anonymously and as a service account, with each client.
func transports(s *slapdtest.Server) []transport {
	var out []transport
	for _, cl := range clients {
		for _, tc := range []transport{
			{"plain", func(c *Config) { c.URLs = []string{s.URL()} }},
			{"ldaps", func(c *Config) { c.URLs, c.CAFile = []string{s.LDAPSURL()}, s.CAFile() }},
			{"starttls", func(c *Config) { c.URLs, c.CAFile, c.StartTLS = []string{s.URL()}, s.CAFile(), true }},
			{"starttls, service account", func(c *Config) {
				c.URLs, c.CAFile, c.StartTLS = []string{s.URL()}, s.CAFile(), true
				c.BindDN, c.BindPassword = slapdtest.ServiceDN, slapdtest.ServicePassword
			}},
		} {
			edit := tc.edit
			out = append(out, transport{cl + "/" + tc.name, func(c *Config) { c.Client = cl; edit(c) }})
		}
	}
	return out
}

func userSearch(uid string) *SearchRequest {
	return &SearchRequest{Base: slapdtest.PeopleDN, Scope: ldap.ScopeWholeSubtree, SizeLimit: 2,
		Filter: "(uid=" + ldap.EscapeFilter(uid) + ")", Attributes: []string{"host", "uid"}}
}

// TestCases is the same case table through both clients and every
// transport: what a login's search and bind see.
func TestCases(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithLDAPS())
	ctx := context.Background()
	for _, tr := range transports(s) {
		t.Run(tr.name, func(t *testing.T) {
			d := newDir(t, tr.edit)
			res, srv, err := d.Search(ctx, userSearch("alice"))
			if err != nil || len(res.Entries) != 1 || res.Entries[0].DN != "uid=alice,"+slapdtest.PeopleDN {
				t.Fatalf("search alice: %v %+v", err, res)
			}
			if srv == "" {
				t.Error("no server named for the search")
			}
			if got := res.Entries[0].GetAttributeValues("host"); len(got) != 1 || got[0] != "mail.example.org" {
				t.Errorf("alice's host = %v", got)
			}
			if res, _, err := d.Search(ctx, userSearch("mallory")); err != nil || len(res.Entries) != 0 {
				t.Errorf("search unknown: %v %+v", err, res)
			}
			res, _, err = d.Search(ctx, &SearchRequest{Base: slapdtest.PeopleDN, Scope: ldap.ScopeWholeSubtree,
				SizeLimit: 1, Filter: "(uid=twin)", Attributes: []string{"1.1"}})
			if !ldap.IsErrorWithCode(err, ldap.LDAPResultSizeLimitExceeded) || res == nil || len(res.Entries) != 1 {
				t.Errorf("size limit: %v %+v", err, res)
			}
			if _, _, err := d.Search(ctx, &SearchRequest{Base: "ou=nowhere," + slapdtest.Suffix, Scope: ldap.ScopeWholeSubtree,
				SizeLimit: 2, Filter: "(uid=alice)"}); !ldap.IsErrorWithCode(err, ldap.LDAPResultNoSuchObject) {
				t.Errorf("missing base: %v", err)
			}
			for i := range 3 { // wrong and right, interleaved, on the same connection
				if _, err := d.Bind(ctx, "uid=alice,"+slapdtest.PeopleDN, "nope"+strconv.Itoa(i)); !ldap.IsErrorWithCode(err, ldap.LDAPResultInvalidCredentials) {
					t.Errorf("wrong password: %v", err)
				}
				if _, err := d.Bind(ctx, "uid=alice,"+slapdtest.PeopleDN, "alicepw"); err != nil {
					t.Errorf("right password: %v", err)
				}
			}
			if _, err := d.Bind(ctx, "uid=alice,"+slapdtest.PeopleDN, ""); !ldap.IsErrorWithCode(err, ldap.ErrorEmptyPassword) {
				t.Errorf("empty password: %v", err)
			}
			if n := len(d.bind.idle); n != 1 {
				t.Errorf("%d idle bind connections after sequential binds, want 1 (reuse)", n)
			}
			if n := len(d.search.idle); n != 1 {
				t.Errorf("%d idle search connections after sequential searches, want 1 (reuse)", n)
			}
		})
	}
}

// TestServiceBindRefused: a wrong service password is ErrServiceBind, a
// configuration error, not an outage.
func TestServiceBindRefused(t *testing.T) {
	s := slapdtest.Start(t)
	for _, cl := range clients {
		d := newDir(t, func(c *Config) {
			c.URLs, c.Client = []string{s.URL()}, cl
			c.BindDN, c.BindPassword = slapdtest.ServiceDN, "wrong"
		})
		if _, _, err := d.Search(context.Background(), userSearch("alice")); !errors.Is(err, ErrServiceBind) {
			t.Errorf("%s: %v, want ErrServiceBind", cl, err)
		}
	}
}

// TestCertificateRefused: a certificate the CA did not sign is a
// certificate error, told apart with IsCertificate.
func TestCertificateRefused(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithLDAPS())
	for _, tr := range []transport{
		{"ldaps", func(c *Config) { c.URLs = []string{s.LDAPSURL()} }},
		{"starttls", func(c *Config) { c.URLs, c.StartTLS = []string{s.URL()}, true }},
	} {
		for _, cl := range clients {
			d := newDir(t, func(c *Config) { tr.edit(c); c.Client = cl })
			if _, _, err := d.Search(context.Background(), userSearch("alice")); !IsCertificate(err) {
				t.Errorf("%s/%s: %v, want a certificate error", cl, tr.name, err)
			}
		}
	}
}

// TestPoolKeepsConnectionsAbovePoolSize: connections opened during a burst
// wider than pool_size stay for reuse. Closing them made every request above
// pool_size dial, bind the service account and close again under sustained
// load.
func TestPoolKeepsConnectionsAbovePoolSize(t *testing.T) {
	s := slapdtest.Start(t)
	d := newDir(t, func(c *Config) {
		c.URLs = []string{s.URL()}
		c.BindDN, c.BindPassword = slapdtest.ServiceDN, slapdtest.ServicePassword
		c.PoolSize, c.MaxConns = 2, 8
	})
	for _, p := range []*pool{d.search, d.bind} {
		var held []*conn
		for range d.cfg.MaxConns {
			c, err := p.get(context.Background(), false, nil)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		for _, c := range held {
			p.put(c)
		}
		if n := len(p.idle); n != d.cfg.MaxConns {
			t.Fatalf("%s pool: %d of %d healthy connections kept after the burst", p.role, n, d.cfg.MaxConns)
		}
		// And they are reused: taking them again dials nothing new.
		for range d.cfg.MaxConns {
			c, err := p.get(context.Background(), false, nil)
			if err != nil {
				t.Fatal(err)
			}
			if !c.reused {
				t.Fatalf("%s pool: a new connection was dialed while idle ones were kept", p.role)
			}
			defer p.put(c)
		}
	}
}

// TestStaleConnsAfterRestart: after slapd restarts, every idle search and
// bind connection is stale; an operation must not run into one after
// another.
func TestStaleConnsAfterRestart(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithLDAPS())
	for _, tr := range transports(s) {
		t.Run(tr.name, func(t *testing.T) {
			d := newDir(t, func(c *Config) { tr.edit(c); c.PoolSize, c.MaxConns = 4, 4 })
			ctx := context.Background()
			var held []*conn
			for _, p := range []*pool{d.bind, d.search} {
				var mine []*conn
				for range 4 {
					c, err := p.get(ctx, false, nil)
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
			if _, _, err := d.Search(ctx, userSearch("alice")); err != nil {
				t.Fatalf("search after restart: %v", err)
			}
			if _, err := d.Bind(ctx, "uid=alice,"+slapdtest.PeopleDN, "alicepw"); err != nil {
				t.Fatalf("bind after restart: %v", err)
			}
			for _, c := range held {
				if !c.cl.dead() {
					t.Error("a stale connection was not closed")
				}
			}
		})
	}
}

// TestBigEntry: an entry far larger than the read buffer (2,000 host
// values, ~50 KB) comes through whole, over every transport and client
// (several TLS records), and the wire client does not keep the big buffer.
func TestBigEntry(t *testing.T) {
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
	for _, tr := range transports(s) {
		t.Run(tr.name, func(t *testing.T) {
			d := newDir(t, func(c *Config) { tr.edit(c); c.PoolSize, c.MaxConns = 1, 1 })
			for range 3 { // the same connection each time
				res, _, err := d.Search(context.Background(), userSearch("wide"))
				if err != nil || len(res.Entries) != 1 {
					t.Fatalf("%v %+v", err, res)
				}
				if got := len(res.Entries[0].GetAttributeValues("host")); got != len(hosts) {
					t.Fatalf("%d host values, want %d", got, len(hosts))
				}
			}
			c := <-d.search.idle
			d.search.idle <- c
			if wc, ok := c.cl.(*wireConn); ok && (wc.failed || cap(wc.in) > keepReadBuf) {
				t.Errorf("after a big entry: failed %v, read buffer %d bytes kept", wc.failed, cap(wc.in))
			}
		})
	}
}

// TestTimeoutIsTyped: a stuck server ends in ErrTimeout, within the bound.
func TestTimeoutIsTyped(t *testing.T) {
	s := slapdtest.Start(t)
	for _, cl := range clients {
		d := newDir(t, func(c *Config) { c.URLs, c.Client, c.Timeout = []string{s.URL()}, cl, 300*time.Millisecond })
		if _, _, err := d.Search(context.Background(), userSearch("alice")); err != nil {
			t.Fatal(err)
		}
		if err := s.Pause(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, _, err := d.Search(context.Background(), userSearch("alice"))
		if !errors.Is(err, ErrTimeout) {
			t.Errorf("%s: stuck server: %v, want ErrTimeout", cl, err)
		}
		if el := time.Since(start); el > 5*time.Second {
			t.Errorf("%s: stuck server answered after %v", cl, el)
		}
		if err := s.Resume(); err != nil {
			t.Fatal(err)
		}
	}
}
