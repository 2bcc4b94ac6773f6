package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/mailauthd/mailauthd/control"
)

const cacheSynopsis = "flush [--config FILE | --control SOCKET] [-t DURATION]"

func init() {
	register("cache", "manage the running daemon's credential cache (flush)", cacheSynopsis, cmdCache)
}

// cmdCache runs "mailauthd cache flush": it asks the running daemon, over
// its control socket, to forget every cached verdict (after a password
// reset or an account lock, so the change takes effect before the TTL).
func cmdCache(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("cache", cacheSynopsis)
	var cf configFlags
	cf.register(fs)
	socket := fs.String("control", "", "control socket `path`; overrides the configuration (listen.control.path)")
	timeout := fs.Duration("t", 10*time.Second, "give up after this `duration`")
	// The verb may stand before or after the flags.
	var verb string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		verb, args = args[0], args[1:]
		if code, ok := parseFlags(fs, args, 0, stdout, stderr); !ok {
			return code
		}
	} else {
		if code, ok := parseFlags(fs, args, 1, stdout, stderr); !ok {
			return code
		}
		verb = fs.Arg(0)
	}
	if verb != "flush" {
		fmt.Fprintf(stderr, "mailauthd cache: want the verb flush, not %q\n", verb)
		fs.SetOutput(stderr)
		fs.Usage()
		return exitUsage
	}
	path := *socket
	if path == "" {
		// Only the listen section matters; the configuration reader reads
		// no secret, so an operator may flush without read access to the
		// LDAP password.
		cfg, err := cf.load()
		if err != nil {
			fmt.Fprintf(stderr, "mailauthd: %v\n", err)
			return exitUsage
		}
		if path = cfg.Listen.Control.Path; path == "" {
			fmt.Fprintf(stderr, "mailauthd: listen.control.path is empty: the daemon has no control socket; send it SIGUSR1 to flush the cache\n")
			return exitUsage
		}
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
