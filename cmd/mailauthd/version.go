package main

import (
	"fmt"
	"io"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func init() {
	register("version", "print the version", "", func(args []string, stdout, stderr io.Writer) int {
		fs := newFlagSet("version", "")
		if code, ok := parseFlags(fs, args, 0, stdout, stderr); !ok {
			return code
		}
		v := version
		if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" && len(s.Value) >= 12 {
					v = "dev-" + s.Value[:12]
				}
			}
		}
		fmt.Fprintf(stdout, "mailauthd %s\n", v)
		return 0
	})
}
