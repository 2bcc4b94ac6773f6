// Command mailauthd authenticates mail users against LDAP for Postfix, Cyrus
// and Dovecot, and watches the PAM files mail services depend on. This
// package parses flags; what the commands do lives in the packages they call.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

// exitUsage is every command's exit code for a usage error.
const exitUsage = 2

// command is one subcommand. Each lives in its own file and registers itself
// in init, so adding a front door does not touch this file.
type command struct {
	summary  string
	synopsis string // after "mailauthd NAME"
	run      func(args []string, stdout, stderr io.Writer) int
}

var commands = map[string]command{}

func register(name, summary, synopsis string, run func(args []string, stdout, stderr io.Writer) int) {
	if _, dup := commands[name]; dup {
		panic("mailauthd: command registered twice: " + name)
	}
	commands[name] = command{summary: summary, synopsis: synopsis, run: run}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: mailauthd <command> [flags]")
	fmt.Fprintln(w, "\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-14s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'mailauthd help <command>' or 'mailauthd <command> -h' for a command's synopsis and flags.")
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help", "-help":
		usage(stdout)
		return 0
	case "help":
		switch len(args) {
		case 1:
			usage(stdout)
			return 0
		case 2:
			if c, ok := commands[args[1]]; ok {
				return c.run([]string{"-h"}, stdout, stderr)
			}
		}
		fmt.Fprintf(stderr, "mailauthd: help: unknown command %q\n", args[1:])
		usage(stderr)
		return exitUsage
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "mailauthd: unknown command %q\n", args[0])
		usage(stderr)
		return exitUsage
	}
	return c.run(args[1:], stdout, stderr)
}

// newFlagSet makes the flag set of "mailauthd NAME" (NAME may be "pamcheck
// check"); its usage line is the synopsis.
func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("mailauthd "+name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s %s\n", fs.Name(), synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseFlags parses args the same way for every command: -h prints the
// synopsis and flags to stdout (exit 0); a bad flag, or more than maxArgs
// positional arguments, is a usage error on stderr (exit 2). ok is false
// when the command must return code now.
func parseFlags(fs *flag.FlagSet, args []string, maxArgs int, stdout, stderr io.Writer) (code int, ok bool) {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		fs.SetOutput(stdout)
		fs.Usage()
		return 0, false
	case err != nil:
		fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
	case fs.NArg() > maxArgs:
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", fs.Name(), fs.Arg(maxArgs))
	default:
		fs.SetOutput(stderr)
		return 0, true
	}
	fs.SetOutput(stderr)
	fs.Usage()
	return exitUsage, false
}
