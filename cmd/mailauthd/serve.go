package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/cache"
	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/ldapauth"
	"github.com/mailauthd/mailauthd/saslauthd"
)

func init() {
	register("serve", "run the daemon (saslauthd socket front door)", cmdServe)
}

// configFlags are the flags every command that reads the configuration takes.
type configFlags struct {
	path, saslauthdConf string
}

func (c *configFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.path, "config", config.DefaultPath, "YAML configuration `file`")
	fs.StringVar(&c.saslauthdConf, "saslauthd-conf", "", "take the LDAP settings from a Cyrus saslauthd.conf `file`")
}

// load reads the configuration. Without an explicit --config, a missing
// default file is fine when a saslauthd.conf supplies the LDAP part.
func (c *configFlags) load(fs *flag.FlagSet) (*config.File, error) {
	path := c.path
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	if !explicit && c.saslauthdConf != "" {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			path = ""
		}
	}
	return config.Load(path, c.saslauthdConf)
}

func newLogger(w io.Writer, c config.Log, level *slog.LevelVar) *slog.Logger {
	setLevel(level, c.Level)
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func setLevel(level *slog.LevelVar, name string) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(name)); err == nil {
		level.Set(l)
	}
}

// backend is everything built from one configuration. A reload builds a new
// one and swaps it in; requests already running finish on the old one.
type backend struct {
	cfg   *config.File
	ldap  *ldapauth.Authenticator
	cache *cache.Cache // nil when the cache is off
	front auth.Authenticator
}

func newBackend(cfg *config.File, log *slog.Logger) (*backend, error) {
	l, err := ldapauth.New(cfg.LDAP, cfg.Access, log)
	if err != nil {
		return nil, err
	}
	b := &backend{cfg: cfg, ldap: l, front: l}
	if cfg.Cache.TTL > 0 {
		b.cache = cache.New(cfg.Cache, l)
		b.front = b.cache
	}
	return b, nil
}

// daemon is the Authenticator every front door calls. It forwards to the
// current backend, so SIGHUP can replace the backend without dropping a
// request.
type daemon struct {
	cur atomic.Pointer[backend]
	log *slog.Logger
}

func (d *daemon) Authenticate(ctx context.Context, req auth.Request) auth.Verdict {
	return d.cur.Load().front.Authenticate(ctx, req)
}

func (d *daemon) Lookup(ctx context.Context, req auth.Request) auth.Verdict {
	return d.cur.Load().ldap.Lookup(ctx, req)
}

// Flush empties the credential cache (SIGUSR1, "mailauthd cache flush").
func (d *daemon) Flush() {
	if c := d.cur.Load().cache; c != nil {
		n := c.Len()
		c.Flush()
		d.log.Info("credential cache flushed", "entries", n)
	}
}

// swap installs b and closes the previous backend once requests that may
// still use it have had their whole deadline to finish.
func (d *daemon) swap(b *backend, grace time.Duration) {
	old := d.cur.Swap(b)
	if old != nil {
		time.AfterFunc(grace, func() { old.ldap.Close() })
	}
}

func cmdServe(args []string, _, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cf configFlags
	cf.register(fs)
	checkOnly := fs.Bool("check", false, "validate the configuration and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := cf.load(fs)
	if err != nil {
		fmt.Fprintf(stderr, "mailauthd: configuration: %v\n", err)
		return 1
	}
	level := new(slog.LevelVar)
	log := newLogger(stderr, cfg.Log, level)
	for _, w := range cfg.Warnings {
		log.Warn("setting not honoured", "detail", w)
	}
	b, err := newBackend(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "mailauthd: configuration: %v\n", err)
		return 1
	}
	if *checkOnly {
		b.ldap.Close()
		fmt.Fprintln(stderr, "mailauthd: configuration ok")
		return 0
	}
	d := &daemon{log: log}
	d.swap(b, 0)

	srv := &saslauthd.Server{
		Authenticator:  d,
		Logger:         log,
		ReadTimeout:    cfg.Server.IOTimeout,
		WriteTimeout:   cfg.Server.IOTimeout,
		RequestTimeout: cfg.Server.RequestTimeout,
		MaxConns:       cfg.Server.MaxConnections,
		MaxFieldSize:   cfg.Server.MaxFieldSize,
		ClientAddrWait: cfg.Server.ClientAddrWait,
	}
	listeners, err := openListeners(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "mailauthd: %v\n", err)
		return 1
	}
	var wg sync.WaitGroup
	serveErr := make(chan error, len(listeners.saslauthd))
	for _, l := range listeners.saslauthd {
		wg.Add(1)
		go func(l net.Listener) {
			defer wg.Done()
			log.Info("listening", "socket", l.Addr().String(), "protocol", "saslauthd")
			if err := srv.Serve(l); err != nil && !errors.Is(err, saslauthd.ErrServerClosed) {
				serveErr <- fmt.Errorf("%s: %w", l.Addr(), err)
			}
		}(l)
	}
	stopControl := startControl(d, cfg, listeners.control, log)

	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	sddaemon.SdNotify(false, sddaemon.SdNotifyReady)
	stopWatchdog := startWatchdog(log)
	defer stopWatchdog()
	log.Info("mailauthd started", "version", version, "ldap", cfg.LDAP.URLs, "cache", cfg.Cache.TTL > 0)

	code := 0
loop:
	for {
		select {
		case s := <-sig:
			switch s {
			case syscall.SIGHUP:
				sddaemon.SdNotify(false, sddaemon.SdNotifyReloading)
				reload(d, &cf, fs, level, log)
				sddaemon.SdNotify(false, sddaemon.SdNotifyReady)
			case syscall.SIGUSR1:
				d.Flush()
			default:
				log.Info("shutting down", "signal", s.String())
				break loop
			}
		case err := <-serveErr:
			log.Error("listener failed", "err", err)
			code = 1
			break loop
		}
	}
	sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
	// In-flight requests get their whole deadline to finish, then we go.
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Server.RequestTimeout+cfg.Server.IOTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("shutdown did not drain", "err", err)
	}
	stopControl(ctx)
	wg.Wait()
	d.cur.Load().ldap.Close()
	log.Info("mailauthd stopped")
	return code
}

// reload re-reads the configuration; a bad one is logged and the running
// configuration stays. Socket settings need a restart: the sockets may sit
// in a chroot the daemon can no longer reach after dropping privileges.
func reload(d *daemon, cf *configFlags, fs *flag.FlagSet, level *slog.LevelVar, log *slog.Logger) {
	cfg, err := cf.load(fs)
	if err != nil {
		log.Error("reload refused, keeping the running configuration", "err", err)
		return
	}
	for _, w := range cfg.Warnings {
		log.Warn("setting not honoured", "detail", w)
	}
	b, err := newBackend(cfg, log)
	if err != nil {
		log.Error("reload refused, keeping the running configuration", "err", err)
		return
	}
	old := d.cur.Load().cfg
	if fmt.Sprint(old.Listen) != fmt.Sprint(cfg.Listen) || old.Server != cfg.Server {
		log.Warn("listen: and server: changes take effect at the next restart")
	}
	setLevel(level, cfg.Log.Level)
	d.swap(b, old.Server.RequestTimeout+old.Server.IOTimeout)
	log.Info("configuration reloaded", "ldap", cfg.LDAP.URLs, "cache", cfg.Cache.TTL > 0)
}

type listenerSet struct {
	saslauthd []net.Listener
	control   net.Listener // nil when off
}

// openListeners takes sockets from systemd when it passed any
// (FileDescriptorName=saslauthd or control), otherwise creates those the
// configuration names.
func openListeners(cfg *config.File) (ls listenerSet, err error) {
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
				ls.control = x
			} else {
				ls.saslauthd = append(ls.saslauthd, x)
			}
		}
	}
	if len(byName) > 0 {
		return ls, nil
	}
	closeAll := func() {
		for _, l := range ls.saslauthd {
			l.Close()
		}
	}
	for _, s := range cfg.Listen.Saslauthd {
		mode, _ := s.FileMode() // validated at load
		l, err := saslauthd.Listen(s.Path, mode, s.Group)
		if err != nil {
			closeAll()
			return ls, err
		}
		ls.saslauthd = append(ls.saslauthd, l)
	}
	if s := cfg.Listen.Control; s.Path != "" {
		mode, _ := s.FileMode()
		l, err := saslauthd.Listen(s.Path, mode, s.Group)
		if err != nil {
			closeAll()
			return ls, err
		}
		ls.control = l
	}
	return ls, nil
}

// startWatchdog pings systemd at half the WatchdogSec interval.
func startWatchdog(log *slog.Logger) (stop func()) {
	interval, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return func() {}
	}
	t := time.NewTicker(interval / 2)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-t.C:
				sddaemon.SdNotify(false, sddaemon.SdNotifyWatchdog)
			case <-done:
				return
			}
		}
	}()
	log.Debug("systemd watchdog enabled", "interval", interval)
	return func() { t.Stop(); close(done) }
}
