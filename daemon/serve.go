package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"

	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/control"
	"github.com/mailauthd/mailauthd/saslauthd"
)

// Listeners are the sockets the front doors serve.
type Listeners struct {
	Saslauthd []net.Listener
	Control   net.Listener // nil: off
}

// Close closes every listener (for an error path before Serve).
func (ls Listeners) Close() {
	for _, l := range ls.Saslauthd {
		l.Close()
	}
	if ls.Control != nil {
		ls.Control.Close()
	}
}

// OpenListeners takes the sockets systemd passed (FileDescriptorName=
// saslauthd or control) when it passed any, otherwise creates those cfg
// names.
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
			if name == "control" {
				ls.Control = x
			} else {
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
	return ls, nil
}

// Servers are the front doors serving a Daemon.
type Servers struct {
	sasl    *saslauthd.Server
	control *control.Server
	wg      sync.WaitGroup
	errc    chan error
}

// Serve starts the front doors on ls with the limits of the configuration
// in effect (server: and listen: changes need a restart). Each front door
// asks d, so a Reload applies to every one at once.
func (d *Daemon) Serve(ls Listeners) *Servers {
	cfg := d.Config().Server
	s := &Servers{errc: make(chan error, len(ls.Saslauthd)+1)}
	s.sasl = &saslauthd.Server{
		Authenticator:     d,
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
	return s
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
	s.wg.Wait()
	return err
}
