package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/daemon"
	"github.com/mailauthd/mailauthd/saslauthd"
)

const testSynopsis = "-u USER -p PASS [-s SERVICE] [-r REALM] [-a ADDR] [-f SOCKET] [--explain [--config FILE]]"

func init() {
	register("test", "authenticate one user through the socket (like testsaslauthd), or --explain", testSynopsis, cmdTest)
}

// stdin is where "-p -" reads the password; tests replace it.
var stdin io.Reader = os.Stdin

func cmdTest(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("test", testSynopsis)
	var cf configFlags
	cf.register(fs)
	var req auth.Request
	fs.StringVar(&req.User, "u", "", "user `name` (required)")
	pass := fs.String("p", "", "`password`; \"-\" reads one line from standard input (keeps it out of ps)")
	fs.StringVar(&req.Service, "s", "imap", "`service` name, as Postfix (smtp) or Cyrus (imap, pop, sieve) sends it")
	fs.StringVar(&req.Realm, "r", "", "`realm` (domain); \"user@domain\" is split like libsasl2 does")
	fs.StringVar(&req.ClientAddr, "a", "", "client `address` sent as the fifth field, e.g. 192.0.2.7;40000")
	socket := fs.String("f", "/run/mailauthd/mux", "saslauthd `socket` path")
	timeout := fs.Duration("t", 15*time.Second, "give up after this `duration`")
	explain := fs.Bool("explain", false, "evaluate the configuration directly, printing each step, instead of asking the daemon")
	if code, ok := parseFlags(fs, args, 0, stdout, stderr); !ok {
		return code
	}
	if req.User == "" {
		fmt.Fprintln(stderr, "mailauthd test: -u is required")
		fs.Usage()
		return exitUsage
	}
	req.Password = *pass
	if *pass == "-" {
		pw, err := auth.ReadPasswordLine(stdin)
		if err != nil {
			fmt.Fprintf(stderr, "mailauthd test: %v\n", err)
			return exitUsage
		}
		req.Password = pw
	}
	req = req.SplitRealm()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	if *explain {
		cfg, err := cf.load()
		if err != nil {
			fmt.Fprintf(stderr, "mailauthd: configuration: %v\n", err)
			return exitUsage
		}
		for _, w := range cfg.Warnings {
			fmt.Fprintf(stdout, "warning: %s\n", w)
		}
		d, err := daemon.New(cfg, daemon.Options{Logger: slog.New(slog.DiscardHandler), OneShot: true})
		if err != nil {
			fmt.Fprintf(stderr, "mailauthd: configuration: %v\n", err)
			return exitUsage
		}
		defer d.Close()
		v := d.Explain(ctx, req, stdout)
		return printVerdict(stdout, v.Outcome == auth.Accept, v.Reason)
	}

	c := saslauthd.Client{Path: *socket, Timeout: *timeout}
	ok, text, err := c.Authenticate(ctx, req)
	if err != nil {
		fmt.Fprintf(stderr, "mailauthd: %v\n", err)
		return exitUsage
	}
	return printVerdict(stdout, ok, text)
}

// printVerdict prints OK or NO <reason> and returns testsaslauthd's exit code.
func printVerdict(w io.Writer, ok bool, text string) int {
	if ok {
		fmt.Fprintln(w, "OK")
		return 0
	}
	fmt.Fprintln(w, strings.TrimSpace("NO "+text))
	return 1
}
