package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/mailauthd/mailauthd/auth"
	"github.com/mailauthd/mailauthd/ldapauth"
	"github.com/mailauthd/mailauthd/saslauthd"
)

func init() {
	register("test", "authenticate one user through the socket (like testsaslauthd), or --explain", cmdTest)
}

// stdin is where "-p -" reads the password; tests replace it.
var stdin io.Reader = os.Stdin

func cmdTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(stderr)
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
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if req.User == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: mailauthd test -u USER -p PASS [-s SERVICE] [-r REALM] [-f SOCKET] [--explain [--config FILE]]")
		return 2
	}
	req.Password = *pass
	if *pass == "-" {
		line, err := bufio.NewReader(io.LimitReader(stdin, 64<<10)).ReadString('\n')
		if err != nil && err != io.EOF {
			fmt.Fprintf(stderr, "mailauthd: reading password: %v\n", err)
			return 2
		}
		req.Password = strings.TrimRight(line, "\r\n")
	}
	req = req.SplitRealm()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	if *explain {
		cfg, err := cf.load(fs)
		if err != nil {
			fmt.Fprintf(stderr, "mailauthd: configuration: %v\n", err)
			return 2
		}
		for _, w := range cfg.Warnings {
			fmt.Fprintf(stdout, "warning: %s\n", w)
		}
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		a, err := ldapauth.New(cfg.LDAP, cfg.Access, quiet)
		if err != nil {
			fmt.Fprintf(stderr, "mailauthd: configuration: %v\n", err)
			return 2
		}
		defer a.Close()
		v := a.Explain(ctx, req, stdout)
		return printVerdict(stdout, v.Outcome == auth.Accept, v.Reason)
	}

	c := saslauthd.Client{Path: *socket, Timeout: *timeout}
	ok, text, err := c.Authenticate(ctx, req)
	if err != nil {
		fmt.Fprintf(stderr, "mailauthd: %v\n", err)
		return 2
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
