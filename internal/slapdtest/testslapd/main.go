// Command testslapd runs the throwaway slapd of the demo and the benchmarks
// until it is signalled, printing its settings as shell assignments so a
// script can source them. It is a development tool, not shipped.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

func main() {
	dir := flag.String("dir", "", "working `directory` (created; required)")
	users := flag.Int("users", 0, "also generate this many users uid=userN with password passN")
	ldaps := flag.Bool("ldaps", false, "also listen on ldaps://")
	env := flag.String("env", "", "write the settings as shell assignments to this `file`")
	flag.Parse()
	if *dir == "" {
		fmt.Fprintln(os.Stderr, "usage: testslapd -dir DIR [-users N] [-ldaps] [-env FILE]")
		os.Exit(2)
	}
	if err := os.MkdirAll(*dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "testslapd:", err)
		os.Exit(1)
	}
	var opts []slapdtest.Option
	if *users > 0 {
		opts = append(opts, slapdtest.WithUsers(*users))
	}
	if *ldaps {
		opts = append(opts, slapdtest.WithLDAPS())
	}
	s, err := slapdtest.Launch(*dir, opts...)
	if err != nil {
		fmt.Fprintln(os.Stderr, "testslapd:", err)
		os.Exit(1)
	}
	out := fmt.Sprintf("LDAP_URL=%s\nLDAP_CA=%s\nLDAP_SERVICE_DN=%q\nLDAP_SERVICE_PW=%s\nLDAP_BASE=%q\n",
		s.URL(), s.CAFile(), slapdtest.ServiceDN, slapdtest.ServicePassword, slapdtest.PeopleDN)
	if *ldaps {
		out += fmt.Sprintf("LDAPS_URL=%s\n", s.LDAPSURL())
	}
	if *env != "" {
		tmp := *env + ".tmp"
		if err := os.WriteFile(tmp, []byte(out), 0o600); err == nil {
			err = os.Rename(tmp, filepath.Clean(*env))
		}
	} else {
		fmt.Print(out)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	s.Stop()
}
