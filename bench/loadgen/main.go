// Command loadgen drives a saslauthd-protocol daemon (Cyrus saslauthd or
// mailauthd) or an LDAP server with a closed-loop load and reports requests
// per second, latency percentiles and errors. It is what `make bench` runs
// (bench/run.sh); see docs/benchmarks.md.
//
//	loadgen slapd -dir DIR -users N -ready FILE   run a test slapd until SIGTERM
//	loadgen run -mode saslauthd -socket PATH ...   one measurement, appended as JSON
//	loadgen dovecot -kind ldap|checkpassword|lua -ready FILE ...   run a Dovecot 2.3 until SIGTERM
//	loadgen table -in FILE                         the results table with ratios
//	loadgen mirror -phase load|refresh ...         a mirror's load or refresh cost (bench/scale.sh)
//	loadgen syncmods -n 1000 ...                   how long modifies take to reach a syncing mirror
//	loadgen scaletable -in FILE                    the cost curves by directory size
//
// Every answer is checked: a good password must get OK (or an LDAP bind
// success) and a wrong one NO (invalid credentials). Anything else counts as
// an error, so a daemon that accepts everything cannot look fast.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "slapd":
		err = runSlapd(os.Args[2:])
	case "run":
		err = runLoad(os.Args[2:])
	case "table":
		err = runTable(os.Args[2:])
	case "dovecot":
		err = runDovecot(os.Args[2:])
	case "mirror":
		err = runMirror(os.Args[2:])
	case "syncmods":
		err = runSyncMods(os.Args[2:])
	case "scaletable":
		err = runScaleTable(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: loadgen slapd|run|dovecot|table|mirror|syncmods|scaletable [flags]  (-h for each)")
	os.Exit(2)
}
