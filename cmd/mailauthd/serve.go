package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/daemon"
)

func init() {
	register("serve", "run the daemon (saslauthd and control sockets)", serveSynopsis, cmdServe)
}

// configFlags are the flags every command that reads the configuration takes.
type configFlags struct {
	fs                  *flag.FlagSet
	path, saslauthdConf string
}

func (c *configFlags) register(fs *flag.FlagSet) {
	c.fs = fs
	fs.StringVar(&c.path, "config", config.DefaultPath, "YAML configuration `file`")
	fs.StringVar(&c.saslauthdConf, "saslauthd-conf", "", "take the LDAP settings from a Cyrus saslauthd.conf `file`")
}

// load reads the configuration; without an explicit --config a missing
// default file means the built-in defaults (config.Find).
func (c *configFlags) load() (*config.File, error) {
	explicit := false
	c.fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	return config.Find(c.path, explicit, c.saslauthdConf)
}

func newLogger(w io.Writer, c config.Log, level *slog.LevelVar) *slog.Logger {
	setLevel(level, c.Level)
	return c.NewLogger(w, level, true)
}

func setLevel(level *slog.LevelVar, name string) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(name)); err == nil {
		level.Set(l)
	}
}

const serveSynopsis = "[--config FILE] [--saslauthd-conf FILE] [--check]"

func cmdServe(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("serve", serveSynopsis)
	var cf configFlags
	cf.register(fs)
	checkOnly := fs.Bool("check", false, "validate the configuration (every section, and what building the daemon checks) and exit")
	if code, ok := parseFlags(fs, args, 0, stdout, stderr); !ok {
		return code
	}
	cfg, err := cf.load()
	if err != nil {
		fmt.Fprintf(stderr, "mailauthd: configuration: %v\n", err)
		return 1
	}
	level := new(slog.LevelVar)
	log := newLogger(stderr, cfg.Log, level)
	for _, w := range cfg.Warnings {
		log.Warn("setting not honoured", "detail", w)
	}
	if *checkOnly {
		d, err := daemon.New(cfg, daemon.Options{Logger: log, OneShot: true, Check: true})
		if err != nil {
			fmt.Fprintf(stderr, "mailauthd: configuration: %v\n", err)
			return 1
		}
		d.Close()
		fmt.Fprintln(stderr, "mailauthd: configuration ok")
		return 0
	}
	d, err := daemon.Start(cfg, daemon.Options{Logger: log})
	if err != nil {
		fmt.Fprintf(stderr, "mailauthd: %v\n", err)
		return 1
	}

	sig := make(chan os.Signal, 4)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGUSR1)
	sddaemon.SdNotify(false, sddaemon.SdNotifyReady)
	stopWatchdog := startWatchdog(log)
	defer stopWatchdog()
	log.Info("mailauthd started", "version", version, "ldap", cfg.LDAP.Directory.URLs, "cache", cfg.Cache.TTL > 0)

	code := 0
loop:
	for {
		select {
		case s := <-sig:
			switch s {
			case syscall.SIGHUP:
				sddaemon.SdNotify(false, sddaemon.SdNotifyReloading)
				reload(d.Daemon, &cf, level, log)
				sddaemon.SdNotify(false, sddaemon.SdNotifyReady)
			case syscall.SIGUSR1:
				if !d.Flush() {
					log.Info("no credential cache configured; nothing to flush")
				}
			default:
				log.Info("shutting down", "signal", s.String())
				break loop
			}
		case err := <-d.Servers.Err():
			log.Error("listener failed", "err", err)
			code = 1
			break loop
		}
	}
	sddaemon.SdNotify(false, sddaemon.SdNotifyStopping)
	// In-flight requests get their whole deadline to finish, then we go.
	cur := d.Config().Server
	ctx, cancel := context.WithTimeout(context.Background(), cur.RequestTimeout+cur.IOTimeout)
	defer cancel()
	if err := d.Stop(ctx); err != nil {
		log.Warn("shutdown did not drain", "err", err)
	}
	log.Info("mailauthd stopped")
	return code
}

// reload re-reads the configuration; a bad one is logged and the running
// configuration stays. Socket settings need a restart: the sockets may sit
// in a chroot the daemon can no longer reach after dropping privileges.
func reload(d *daemon.Daemon, cf *configFlags, level *slog.LevelVar, log *slog.Logger) {
	old := d.Config()
	cfg, err := d.Reload(cf.load, old.Server.RequestTimeout+old.Server.IOTimeout)
	if err != nil {
		log.Error("reload refused, keeping the running configuration", "err", err)
		return
	}
	for _, w := range cfg.Warnings {
		log.Warn("setting not honoured", "detail", w)
	}
	if fmt.Sprint(old.Listen) != fmt.Sprint(cfg.Listen) || old.Server != cfg.Server {
		log.Warn("listen: and server: changes take effect at the next restart")
	}
	setLevel(level, cfg.Log.Level)
	log.Info("configuration reloaded", "ldap", cfg.LDAP.Directory.URLs, "cache", cfg.Cache.TTL > 0)
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
