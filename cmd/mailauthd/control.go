package main

import (
	"context"
	"errors"
	"log/slog"
	"net"

	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/control"
)

// startControl serves the daemon's private control socket: the
// checkpassword fast path (auth, lookup) and "mailauthd cache flush". It
// shares the daemon's backend, so its connection pool and cache.
func startControl(d *daemon, cfg *config.File, l net.Listener, log *slog.Logger) (stop func(context.Context)) {
	if l == nil {
		return func(context.Context) {}
	}
	srv := &control.Server{
		Backend:        d,
		Logger:         log,
		MaxConnections: cfg.Server.MaxConnections,
		RequestTimeout: cfg.Server.RequestTimeout,
		IOTimeout:      cfg.Server.IOTimeout,
		MaxFieldSize:   cfg.Server.MaxFieldSize,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		log.Info("listening", "socket", l.Addr().String(), "protocol", "control")
		if err := srv.Serve(l); err != nil && !errors.Is(err, control.ErrServerClosed) {
			log.Error("control socket failed", "err", err)
		}
	}()
	return func(ctx context.Context) {
		if err := srv.Shutdown(ctx); err != nil {
			log.Warn("control shutdown did not drain", "err", err)
		}
		<-done
	}
}
