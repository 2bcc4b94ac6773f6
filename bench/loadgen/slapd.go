package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// runSlapd starts the test slapd (internal/slapdtest) with n generated users
// uid=userN / passN, writes its URL to the ready file, and stops it on
// SIGTERM or SIGINT, so a shell script can own its lifetime.
func runSlapd(args []string) error {
	fs := flag.NewFlagSet("slapd", flag.ExitOnError)
	dir := fs.String("dir", "", "working directory (created; must be empty or absent)")
	users := fs.Int("users", 10000, "generated users uid=user0.. with password passN")
	ready := fs.String("ready", "", "file to write the ldap:// URL to once slapd answers")
	syncProv := fs.Bool("syncprov", false, "offer content synchronisation (RFC 4533, the syncprov overlay)")
	fs.Parse(args)
	if *dir == "" || *ready == "" {
		return fmt.Errorf("slapd: -dir and -ready are required")
	}
	if !slapdtest.Available() {
		return fmt.Errorf("slapd: %s not installed (run scripts/install-deps.sh)", slapdtest.SlapdPath)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	opts := []slapdtest.Option{slapdtest.WithUsers(*users), slapdtest.WithReadyTimeout(2 * time.Minute)}
	if *syncProv {
		opts = append(opts, slapdtest.WithSyncProv())
	}
	srv, err := slapdtest.Launch(*dir, opts...)
	if err != nil {
		return err
	}
	defer srv.Stop()
	if err := os.WriteFile(*ready, []byte(srv.URL()+"\n"), 0o600); err != nil {
		return err
	}
	<-sig
	return nil
}
