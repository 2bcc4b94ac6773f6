package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestCLIConsistency: every command treats usage the same way: a bad flag
// or a stray argument exits 2 with the synopsis on stderr; -h and
// "mailauthd help CMD" print that command's synopsis on stdout and exit 0.
func TestCLIConsistency(t *testing.T) {
	for name, c := range commands {
		t.Run(name, func(t *testing.T) {
			for _, args := range [][]string{{name, "-h"}, {"help", name}} {
				var out, errOut bytes.Buffer
				if code := run(args, &out, &errOut); code != 0 {
					t.Errorf("%v: exit %d, want 0; stderr %q", args, code, errOut.String())
				}
				if !strings.Contains(out.String(), "usage: mailauthd "+name) || !strings.Contains(out.String(), firstLine(c.synopsis)) {
					t.Errorf("%v: stdout %q lacks the synopsis %q", args, out.String(), c.synopsis)
				}
			}
			var out, errOut bytes.Buffer
			if code := run([]string{name, "--no-such-flag"}, &out, &errOut); code != exitUsage {
				t.Errorf("bad flag: exit %d, want %d", code, exitUsage)
			}
			if !strings.Contains(errOut.String(), "usage: mailauthd "+name) {
				t.Errorf("bad flag: stderr %q lacks the synopsis", errOut.String())
			}
		})
	}
	// Stray positional arguments are refused, not ignored.
	for _, args := range [][]string{
		{"serve", "extra-arg", "--check"}, {"version", "now"}, {"test", "-u", "alice", "extra"},
		{"checkpassword", "/reply", "extra"}, {"cache", "flush", "now"}, {"pamcheck", "check", "extra"},
	} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != exitUsage {
			t.Errorf("%v: exit %d, want %d; stderr %q", args, code, exitUsage, errOut.String())
		}
	}
	for _, args := range [][]string{{}, {"nosuchcommand"}, {"help", "nosuchcommand"}} {
		var out, errOut bytes.Buffer
		if code := run(args, &out, &errOut); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
