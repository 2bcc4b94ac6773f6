package main

import (
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// serveSasl answers saslauthd requests with answer(login, password).
func serveSasl(t *testing.T, answer func(user, pw string) string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mux")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var fields [4]string
				for i := range fields {
					var hdr [2]byte
					if _, err := io.ReadFull(c, hdr[:]); err != nil {
						return
					}
					b := make([]byte, binary.BigEndian.Uint16(hdr[:]))
					if _, err := io.ReadFull(c, b); err != nil {
						return
					}
					fields[i] = string(b)
				}
				reply := answer(fields[0], fields[1])
				c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(reply))), reply...))
			}()
		}
	}()
	return path
}

func runOnce(t *testing.T, socket string) Result {
	t.Helper()
	out := filepath.Join(t.TempDir(), "r.jsonl")
	args := []string{"-socket", socket, "-c", "4", "-d", "300ms", "-warmup", "0s",
		"-users", "50", "-hot", "5", "-wrong", "0.3", "-out", out}
	// runLoad prints the result line too; keep test output clean.
	stdout := os.Stdout
	os.Stdout, _ = os.Open(os.DevNull)
	err := runLoad(args)
	os.Stdout = stdout
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var r Result
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatal(err)
	}
	if r.Requests == 0 {
		t.Fatal("no requests measured")
	}
	return r
}

// TestWrongAnswersAreErrors: a daemon that accepts everything, or refuses
// everything, must show errors; a correct one must not.
func TestWrongAnswersAreErrors(t *testing.T) {
	correct := func(user, pw string) string {
		if pw == "pass"+strings.TrimPrefix(user, "user") {
			return "OK"
		}
		return "NO authentication failed"
	}
	tests := []struct {
		name       string
		answer     func(user, pw string) string
		wantErrors bool
	}{
		{"correct daemon", correct, false},
		{"accepts everything", func(string, string) string { return "OK" }, true},
		{"refuses everything", func(string, string) string { return "NO" }, true},
		{"garbage reply", func(string, string) string { return "MAYBE" }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := runOnce(t, serveSasl(t, tt.answer))
			if (r.Errors > 0) != tt.wantErrors {
				t.Fatalf("errors %d of %d requests (mismatches %d), want errors: %v; first: %s",
					r.Errors, r.Requests, r.Mismatches, tt.wantErrors, r.FirstError)
			}
			// About 30% wrong passwords: an accept-all daemon gets most of them wrong.
			if tt.name == "accepts everything" && r.Mismatches < r.Requests/10 {
				t.Fatalf("only %d mismatches in %d requests", r.Mismatches, r.Requests)
			}
		})
	}
}
