package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/peertest"
	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// TestFail2ban runs the shipped filter (packaging/fail2ban) through the
// real fail2ban-regex over the daemon's real log output, text and JSON:
// every refusal that carries a client address matches, with that address;
// no accepted login, no temporary failure and no address a client wrote
// into its login name does.
func TestFail2ban(t *testing.T) {
	regexBin := peertest.NeedFile(t, "/usr/bin/fail2ban-regex")
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	filter := filepath.Join(root, "packaging", "fail2ban", "filter.d", "mailauthd.conf")
	slapd := slapdtest.Start(t)
	for _, format := range []string{"text", "json"} {
		t.Run(format, func(t *testing.T) {
			dir := shortDir(t)
			sock := filepath.Join(dir, "mux")
			cfg := writeConfig(t, dir, settings{Socket: sock, LDAPURL: slapd.URL(), LogFormat: format,
				Realms: []string{"example.org"},
				// Throttling after two failures makes "throttled" lines too.
				Extra: "throttle:\n  account: {failures: 2, window: 10m}\n  delay: 1ms\n  max_delay: 1ms\n"})
			d := startDaemon(t, sock, "--config", cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			ask := func(user, pass, addr string) {
				d.addPassword(pass)
				d.sent.Add(1)
				cmd := exec.CommandContext(ctx, mailauthdBin, "test", "-u", user, "-p", "-", "-s", "imap", "-f", sock, "-a", addr)
				cmd.Stdin = strings.NewReader(pass + "\n")
				cmd.Run()
			}
			ask("alice", "alicepw", "192.0.2.1;40001")                             // accepted
			ask("alice", "Wrong-1", "192.0.2.2;40002")                             // wrong password
			ask("ghost", "Ghost-2", "2001:db8::7;993")                             // unknown user
			ask("star", "Wrong-3", "192.0.2.3;1")                                  // wrong password
			ask("star", "Wrong-4", "192.0.2.3;2")                                  // wrong password
			ask("star", "Wrong-5", "192.0.2.4;3")                                  // throttled
			ask("alice@evil.test", "alicepw", "192.0.2.5;4")                       // realm refused
			ask(`x client=203.0.113.66 outcome=reject`, "Wrong-6", "")             // no address: nothing to ban
			ask(`y","client":"203.0.113.77`, "Wrong-7", "198.51.100.9;5")          // JSON injection attempt
			ask(`z" client=203.0.113.88 outcome=reject`, "alicepw", "192.0.2.6;6") // text injection attempt
			d.waitDecisions(int(d.sent.Load()))
			logFile := filepath.Join(dir, "mailauthd.log")
			if err := os.WriteFile(logFile, []byte(d.stderr.String()), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := exec.CommandContext(ctx, regexBin, "--print-all-matched", logFile, filter).CombinedOutput()
			if err != nil {
				t.Fatalf("fail2ban-regex: %v\n%s", err, out)
			}
			m := regexp.MustCompile(`Lines: \d+ lines, \d+ ignored, (\d+) matched`).FindSubmatch(out)
			if m == nil {
				t.Fatalf("no summary from fail2ban-regex:\n%s", out)
			}
			if n, _ := strconv.Atoi(string(m[1])); n != 8 {
				t.Errorf("%d lines matched, want the 8 refusals with an address:\n%s", n, out)
			}
			matched := string(out[strings.Index(string(out), "Matched line"):])
			for _, want := range []string{"192.0.2.2", "2001:db8::7", "192.0.2.3", "192.0.2.4", "192.0.2.5", "198.51.100.9", "192.0.2.6"} {
				if !strings.Contains(matched, want) {
					t.Errorf("no match for %s", want)
				}
			}
			// The address banned is the one the front door saw, never one a
			// client wrote into its login: the hits list the banned addresses.
			hits := string(out[:strings.Index(string(out), "Lines:")])
			for _, never := range []string{"192.0.2.1", "203.0.113.66", "203.0.113.77", "203.0.113.88"} {
				if strings.Contains(hits, never+" ") || strings.Contains(hits, never+"\n") {
					t.Errorf("%s would be banned:\n%s", never, hits)
				}
			}
		})
	}
}
