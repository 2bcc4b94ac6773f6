package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/authhttp"
	"github.com/mailauthd/mailauthd/config"
)

// hostsResolver resolves from a map, like /etc/hosts; anything else fails.
type hostsResolver map[string]string

func (h hostsResolver) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	if a, ok := h[host]; ok {
		return []netip.Addr{netip.MustParseAddr(a)}, nil
	}
	return nil, errors.New("no such host")
}

func authHTTPConfig() *config.File {
	cfg := slapdConfig(nowhere)
	cfg.AuthHTTP.Backends = map[authhttp.Protocol]authhttp.Upstream{
		authhttp.IMAP: {Server: "127.0.0.1", Port: 143},
		authhttp.SMTP: {Server: "127.0.0.1", Port: 25},
	}
	cfg.AuthHTTP.ServerAttribute = "mailHost"
	return cfg
}

// TestAuthHTTPRoutes: the daemon routes an accept from the attribute the
// search fetched, resolving a name; a route it cannot make is a TempFail,
// and a refusal passes through untouched.
func TestAuthHTTPRoutes(t *testing.T) {
	cfg := authHTTPConfig()
	d, err := New(cfg, Options{Logger: slog.New(slog.DiscardHandler), Resolver: hostsResolver{"imap2.example.org": "127.0.0.2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	var mailHost []string
	g := d.cur.Load()
	g.front = auth.AuthenticatorFunc(func(_ context.Context, req auth.Request) auth.Verdict {
		if req.Password != "pw" {
			return auth.Rejected(auth.CauseWrongPassword, "wrong password")
		}
		return auth.Accepted("uid=alice", map[string][]string{"mailhost": mailHost})
	})
	tests := []struct {
		mailHost []string
		service  string
		pass     string
		outcome  auth.Outcome
		route    string
	}{
		{nil, "imap", "pw", auth.Accept, "127.0.0.1:143"},
		{[]string{"127.0.0.2"}, "imap", "pw", auth.Accept, "127.0.0.2:143"},
		{[]string{"imap2.example.org"}, "smtp", "pw", auth.Accept, "127.0.0.2:25"},
		{[]string{"nowhere.example.org"}, "imap", "pw", auth.TempFail, ""},
		{[]string{"127.0.0.2", "127.0.0.3"}, "imap", "pw", auth.TempFail, ""},
		{nil, "pop", "pw", auth.TempFail, ""}, // no pop3 backend
		{nil, "imap", "bad", auth.Reject, ""},
	}
	for _, tc := range tests {
		mailHost = tc.mailHost
		v := d.AuthHTTP().Authenticate(context.Background(), auth.Request{User: "alice", Password: tc.pass, Service: tc.service})
		route := ""
		if len(v.Fields) >= 2 {
			route = v.Fields[0].Value + ":" + v.Fields[1].Value
		}
		if v.Outcome != tc.outcome || route != tc.route {
			t.Errorf("mailHost %v %s: %v %q (%s), want %v %q", tc.mailHost, tc.service, v.Outcome, route, v.Reason, tc.outcome, tc.route)
		}
	}
	if p := d.AuthHTTP().Policy(); p == nil || p.Config().ServerAttribute != "mailHost" {
		t.Errorf("Policy() = %v", p)
	}
}

// nginxGet sends one auth_http request over c as nginx does and returns
// the response.
func nginxGet(t *testing.T, c net.Conn, user, pass string) *http.Response {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(c, "GET /auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\nAuth-User: %s\r\nAuth-Pass: %s\r\n"+
		"Auth-Protocol: imap\r\nAuth-Login-Attempt: 1\r\nClient-IP: 192.0.2.9\r\n\r\n", authhttp.Escape(user), authhttp.Escape(pass))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestServeHTTP: listen.http opens a Unix socket and a loopback port,
// Serve answers auth_http on both, max_connections caps the connections,
// and Shutdown closes the listeners and removes the socket.
func TestServeHTTP(t *testing.T) {
	cfg := authHTTPConfig()
	sock := filepath.Join(t.TempDir(), "http")
	cfg.Listen.Saslauthd = nil
	cfg.Listen.Control = config.Socket{}
	cfg.Listen.HTTP = []config.HTTPSocket{{Path: sock, Mode: "0600"}, {Address: "127.0.0.1:0"}}
	cfg.Server.MaxConnections = 1
	if err := cfg.Validate(); err == nil {
		t.Fatal("port 0 validated") // the test uses it to get a free port: OpenListeners does not validate
	}
	d := newDaemon(t, cfg)
	d.cur.Load().front = auth.AuthenticatorFunc(func(_ context.Context, req auth.Request) auth.Verdict {
		if req.Password == "pass word%" && req.ClientAddr == "192.0.2.9" && req.Service == "imap" {
			return auth.Accepted("uid=alice", nil)
		}
		return auth.Rejected(auth.CauseWrongPassword, "wrong password")
	})
	ls, err := OpenListeners(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(ls.HTTP) != 2 {
		t.Fatalf("%d HTTP listeners", len(ls.HTTP))
	}
	srv := d.Serve(ls)
	if srv.HTTPMux() == nil {
		t.Fatal("no mux")
	}
	tcp := ls.HTTP[1].Addr().String()
	for _, addr := range []struct{ network, addr string }{{"unix", sock}, {"tcp", tcp}} {
		c, err := net.Dial(addr.network, addr.addr)
		if err != nil {
			t.Fatal(err)
		}
		resp := nginxGet(t, c, "alice", "pass word%")
		c.Close()
		if resp.StatusCode != 200 || resp.Header.Get("Auth-Status") != "OK" || resp.Header.Get("Auth-Server") != "127.0.0.1" ||
			resp.Header.Get("Auth-Port") != "143" {
			t.Errorf("%s: %s %v", addr.network, resp.Status, resp.Header)
		}
		c, _ = net.Dial(addr.network, addr.addr)
		if resp := nginxGet(t, c, "alice", "wrong"); resp.Header.Get("Auth-Status") != authhttp.TextRefused {
			t.Errorf("%s wrong password: %v", addr.network, resp.Header)
		}
		c.Close()
	}

	// max_connections 1: while one connection is open, the next waits in
	// the backlog and is served once the first closes.
	hold, err := net.Dial("tcp", tcp)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan *http.Response, 1)
	go func() {
		c, err := net.Dial("tcp", tcp)
		if err != nil {
			done <- nil
			return
		}
		defer c.Close()
		done <- nginxGet(t, c, "alice", "pass word%")
	}()
	select {
	case <-done:
		t.Error("a second connection was served while max_connections (1) was taken")
	case <-time.After(150 * time.Millisecond):
	}
	hold.Close()
	select {
	case resp := <-done:
		if resp == nil || resp.Header.Get("Auth-Status") != "OK" {
			t.Errorf("queued request: %v", resp)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("queued connection never served")
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if c, err := net.Dial("tcp", tcp); err == nil {
		c.Close()
		t.Error("TCP listener still accepting after Shutdown")
	}
}

func TestListenHTTPRefusesPublicAddress(t *testing.T) {
	for _, h := range []config.HTTPSocket{{Address: "0.0.0.0:0"}, {Address: ":0"}, {Address: "localhost:0"}} {
		if l, err := listenHTTP(h); err == nil || !strings.Contains(err.Error(), "listen.http") {
			if l != nil {
				l.Close()
			}
			t.Errorf("%q: %v, want a refusal", h.Address, err)
		}
	}
}
