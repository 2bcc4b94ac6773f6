package daemon

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"

	"github.com/mailauthd/mailauthd/authhttp"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/control"
	"github.com/mailauthd/mailauthd/saslauthd"
)

// Listeners are the sockets the front doors serve.
type Listeners struct {
	Saslauthd []net.Listener
	Control   net.Listener // nil: off
	HTTP      []net.Listener
}

// Close closes every listener (for an error path before Serve).
func (ls Listeners) Close() {
	for _, l := range ls.Saslauthd {
		l.Close()
	}
	if ls.Control != nil {
		ls.Control.Close()
	}
	for _, l := range ls.HTTP {
		l.Close()
	}
}

// Running is a daemon serving its front doors: what "mailauthd serve"
// runs between its start and a signal.
type Running struct {
	*Daemon
	Servers *Servers
}

// Start builds the daemon from cfg (New), opens the listeners
// (OpenListeners) and serves them.
func Start(cfg *config.File, opts Options) (*Running, error) {
	d, err := New(cfg, opts)
	if err != nil {
		return nil, err
	}
	ls, err := OpenListeners(cfg)
	if err != nil {
		d.Close()
		return nil, err
	}
	return &Running{Daemon: d, Servers: d.Serve(ls)}, nil
}

// Stop shuts the front doors down, giving requests in flight until ctx
// ends, then closes the daemon.
func (r *Running) Stop(ctx context.Context) error {
	err := r.Servers.Shutdown(ctx)
	r.Daemon.Close()
	return err
}

// OpenListeners takes the sockets systemd passed (FileDescriptorName=
// saslauthd, control or http) when it passed any, otherwise creates those
// cfg names.
func OpenListeners(cfg *config.File) (Listeners, error) {
	var ls Listeners
	byName, err := activation.ListenersWithNames()
	if err != nil {
		return ls, fmt.Errorf("systemd socket activation: %w", err)
	}
	for name, l := range byName {
		for _, x := range l {
			if x == nil {
				continue
			}
			switch name {
			case "control":
				ls.Control = x
			case "http":
				ls.HTTP = append(ls.HTTP, x)
			default:
				ls.Saslauthd = append(ls.Saslauthd, x)
			}
		}
	}
	if len(byName) > 0 {
		return ls, nil
	}
	for _, s := range cfg.Listen.Saslauthd {
		mode, _ := s.FileMode() // validated at load
		l, err := saslauthd.Listen(s.Path, mode, s.Group)
		if err != nil {
			ls.Close()
			return Listeners{}, err
		}
		ls.Saslauthd = append(ls.Saslauthd, l)
	}
	if s := cfg.Listen.Control; s.Path != "" {
		mode, _ := s.FileMode()
		l, err := saslauthd.Listen(s.Path, mode, s.Group)
		if err != nil {
			ls.Close()
			return Listeners{}, err
		}
		ls.Control = l
	}
	for _, h := range cfg.Listen.HTTP {
		l, err := listenHTTP(h)
		if err != nil {
			ls.Close()
			return Listeners{}, err
		}
		ls.HTTP = append(ls.HTTP, l)
	}
	return ls, nil
}

// listenHTTP opens one listen.http entry: a Unix socket with the same
// care as the saslauthd sockets (mode and group set before it appears, a
// stale one replaced, a live one refused), or a TCP address that
// config.Validate has checked is loopback (or explicitly allowed).
func listenHTTP(h config.HTTPSocket) (net.Listener, error) {
	if h.Path != "" {
		mode, _ := h.Socket().FileMode() // validated at load
		return saslauthd.Listen(h.Path, mode, h.Group)
	}
	if err := h.CheckAddress(); err != nil { // also when cfg was not validated
		return nil, fmt.Errorf("listen.http: %w", err)
	}
	l, err := net.Listen("tcp", h.Address)
	if err != nil {
		return nil, fmt.Errorf("listen.http: %w", err)
	}
	return l, nil
}

// Servers are the front doors serving a Daemon.
type Servers struct {
	sasl    *saslauthd.Server
	control *control.Server
	http    *http.Server
	mux     *http.ServeMux
	wg      sync.WaitGroup
	errc    chan error
}

// Serve starts the front doors on ls with the limits of the configuration
// in effect (server: and listen: changes need a restart). Each front door
// asks d, so a Reload applies to every one at once.
func (d *Daemon) Serve(ls Listeners) *Servers {
	cfg := d.Config().Server
	s := &Servers{errc: make(chan error, len(ls.Saslauthd)+len(ls.HTTP)+1)}
	s.sasl = &saslauthd.Server{
		Authenticator:     d.Door("saslauthd"),
		Logger:            d.log,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.IOTimeout,
		RequestTimeout:    cfg.RequestTimeout,
		MaxConns:          cfg.MaxConnections,
		MaxPending:        cfg.MaxPending,
		MaxPendingPerPeer: cfg.MaxPendingPerPeer,
		MaxFieldSize:      cfg.MaxFieldSize,
		ClientAddrWait:    cfg.ClientAddrWait,
		ReplyReasons:      cfg.ReplyReasons,
	}
	for _, l := range ls.Saslauthd {
		s.run(d, l, "saslauthd", s.sasl.Serve, saslauthd.ErrServerClosed)
	}
	if ls.Control != nil {
		s.control = &control.Server{
			Backend:        d.WithFields(),
			Logger:         d.log,
			MaxConnections: cfg.MaxConnections,
			RequestTimeout: cfg.RequestTimeout,
			IOTimeout:      cfg.IOTimeout,
			MaxFieldSize:   cfg.MaxFieldSize,
		}
		s.run(d, ls.Control, "control", s.control.Serve, control.ErrServerClosed)
	}
	if len(ls.HTTP) > 0 {
		s.mux = d.httpMux()
		s.http = newHTTPServer(s.mux, cfg, d)
		for _, l := range ls.HTTP {
			s.run(d, limitListener(l, cfg.MaxConnections), "http", s.http.Serve, http.ErrServerClosed)
		}
	}
	return s
}

// httpMux is what the HTTP listeners serve. Endpoints that are not a
// front door (metrics, health) are registered here too.
func (d *Daemon) httpMux() *http.ServeMux {
	mux := http.NewServeMux()
	if a := d.Config().AuthHTTP; a.Enabled() {
		cfg := d.Config().Server
		mux.Handle(a.Path, &authhttp.Handler{
			Backend:        d.AuthHTTP(),
			Logger:         d.log,
			RequestTimeout: cfg.RequestTimeout,
			MaxFieldSize:   cfg.MaxFieldSize,
		})
	}
	if h := d.MetricsHandler(); h != nil {
		mux.Handle("GET /metrics", h)
	}
	mux.HandleFunc("GET /healthz", d.serveHealth)
	return mux
}

// HTTPMux is the HTTP listeners' ServeMux (nil when none is open), for
// handlers registered after Serve.
func (s *Servers) HTTPMux() *http.ServeMux { return s.mux }

// newHTTPServer applies the server: limits to HTTP: a request's headers
// must arrive within io_timeout and fit a few fields' worth (nginx's
// auth_http request is one small header block), the whole request and the
// answer within request_timeout plus io_timeout, and an idle keep-alive
// connection is closed after io_timeout. nginx sends HTTP/1.0 and closes
// after the answer; other clients may keep HTTP/1.1 connections alive.
func newHTTPServer(h http.Handler, cfg config.Server, d *Daemon) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.IOTimeout,
		ReadTimeout:       cfg.IOTimeout,
		WriteTimeout:      cfg.RequestTimeout + cfg.IOTimeout,
		IdleTimeout:       cfg.IOTimeout,
		MaxHeaderBytes:    maxHTTPHeader(cfg.MaxFieldSize),
		ErrorLog:          slogErrorLog(d),
	}
}

// maxHTTPHeader bounds a request's header block: the login and the
// password escaped (at most three bytes each) plus nginx's other headers.
// net/http adds 4 KiB of slack of its own.
func maxHTTPHeader(field int) int { return 2*3*field + 4096 }

// limitListener caps the connections open at once (server.max_connections):
// Accept waits for a free slot, so further connections wait in the kernel
// backlog as they do on the saslauthd sockets.
func limitListener(l net.Listener, n int) net.Listener {
	if n <= 0 {
		n = 256
	}
	return &capListener{Listener: l, sem: make(chan struct{}, n), done: make(chan struct{})}
}

type capListener struct {
	net.Listener
	sem       chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func (l *capListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &capConn{Conn: c, release: func() { <-l.sem }}, nil
}

func (l *capListener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.Listener.Close()
}

type capConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *capConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

func (s *Servers) run(d *Daemon, l net.Listener, protocol string, serve func(net.Listener) error, closed error) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		d.log.Info("listening", "socket", l.Addr().String(), "protocol", protocol)
		if err := serve(l); err != nil && !errors.Is(err, closed) {
			s.errc <- fmt.Errorf("%s socket %s: %w", protocol, l.Addr(), err)
		}
	}()
}

// Err delivers a listener's failure (the daemon should stop).
func (s *Servers) Err() <-chan error { return s.errc }

// Shutdown stops accepting and lets requests in flight finish until ctx
// ends; then they are answered "try later" and closed.
func (s *Servers) Shutdown(ctx context.Context) error {
	err := s.sasl.Shutdown(ctx)
	if s.control != nil {
		err = errors.Join(err, s.control.Shutdown(ctx))
	}
	if s.http != nil {
		if herr := s.http.Shutdown(ctx); herr != nil {
			s.http.Close()
			err = errors.Join(err, herr)
		}
	}
	s.wg.Wait()
	return err
}

// slogErrorLog routes net/http's own complaints (a client that sent
// garbage, a handler panic) to the daemon's log at warning level.
func slogErrorLog(d *Daemon) *log.Logger {
	return slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)
}
