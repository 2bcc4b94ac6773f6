package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mailauthd/mailauthd/config"
	"github.com/mailauthd/mailauthd/control"
)

func init() {
	register("cache", "manage the running daemon's credential cache (flush)", cmdCache)
}

// cmdCache runs "mailauthd cache flush": it asks the running daemon, over
// its control socket, to forget every cached verdict (after a password
// reset or an account lock, so the change takes effect before the TTL).
func cmdCache(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("cache", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", config.DefaultPath, "YAML configuration `file` naming the control socket (listen.control.path)")
	socket := fs.String("control", "", "control socket `path`; overrides the configuration")
	timeout := fs.Duration("t", 10*time.Second, "give up after this `duration`")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: mailauthd cache flush [--config FILE | --control SOCKET] [-t DURATION]")
		fs.PrintDefaults()
	}
	// Accept the flags before or after the verb.
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() < 1 || fs.Arg(0) != "flush" {
		fs.Usage()
		return 2
	}
	if err := fs.Parse(fs.Args()[1:]); err != nil {
		return 2
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return 2
	}
	path := *socket
	if path == "" {
		explicit := false
		fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
		p, err := controlPath(*cfgPath, explicit)
		if err != nil {
			fmt.Fprintf(stderr, "mailauthd: %v\n", err)
			return 2
		}
		path = p
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	c := &control.Client{Path: path, Timeout: *timeout}
	if err := c.Flush(ctx); err != nil {
		if errors.Is(err, control.ErrNotRunning) {
			fmt.Fprintf(stderr, "mailauthd: no daemon is listening on %s\n", path)
		} else {
			fmt.Fprintf(stderr, "mailauthd: cache flush: %v\n", err)
		}
		return 1
	}
	fmt.Fprintf(stdout, "cache flushed (%s)\n", path)
	return 0
}

// controlPath finds the control socket in the configuration. Only the
// listen section matters, so the file is parsed but the secrets it names
// are not read: an operator may flush without read access to the LDAP
// password. A missing default file means the built-in default path.
func controlPath(path string, explicit bool) (string, error) {
	fh, err := os.Open(path)
	if err != nil {
		if !explicit && errors.Is(err, os.ErrNotExist) {
			return config.Default().Listen.Control.Path, nil
		}
		return "", err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, 1<<20))
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	cfg, err := config.Parse(data)
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if cfg.Listen.Control.Path == "" {
		return "", fmt.Errorf("%s: listen.control.path is empty: the daemon has no control socket; send it SIGUSR1 to flush the cache", path)
	}
	return cfg.Listen.Control.Path, nil
}
