package pamcheck

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseLines(t *testing.T) {
	cases := []struct {
		name, in string
		want     []Line // compared on Num, Type, Silent, Control, Module, Args, Problem != ""
		abort    bool
	}{
		{"simple", "auth required pam_unix.so nullok\n", []Line{{Num: 1, Type: "auth", Control: "required", Module: "pam_unix.so", Args: []string{"nullok"}}}, false},
		{"comments and blanks", "# c\n\n   \t\nAccount   Sufficient pam_x.so # trailing\n", []Line{{Num: 4, Type: "account", Control: "sufficient", Module: "pam_x.so"}}, false},
		{"continuation", "auth required \\\n  pam_unix.so \\\n  nullok\n", []Line{{Num: 1, Type: "auth", Control: "required", Module: "pam_unix.so", Args: []string{"nullok"}}}, false},
		// libpam 1.5 skips blank lines inside a continuation.
		{"continuation over blank", "auth required pam_a.so \\\n\naccount required pam_b.so\n", []Line{{Num: 1, Type: "auth", Control: "required", Module: "pam_a.so", Args: []string{"account", "required", "pam_b.so"}}}, false},
		// A '#' ends the logical line even after a backslash.
		{"comment stops continuation", "auth required pam_a.so # x \\\naccount required pam_b.so\n", []Line{{Num: 1, Type: "auth", Control: "required", Module: "pam_a.so"}, {Num: 2, Type: "account", Control: "required", Module: "pam_b.so"}}, false},
		{"continuation at EOF", "auth required pam_a.so \\\n", nil, true},
		{"bracket control", "auth [success=2 default=ignore] pam_sss.so use_first_pass\n", []Line{{Num: 1, Type: "auth", Control: "success=2 default=ignore", Module: "pam_sss.so", Args: []string{"use_first_pass"}}}, false},
		{"bracket arg", "session required pam_x.so [query=select a, b] x\n", []Line{{Num: 1, Type: "session", Control: "required", Module: "pam_x.so", Args: []string{"query=select a, b", "x"}}}, false},
		{"escaped bracket", "auth required pam_x.so [a\\]b]\n", []Line{{Num: 1, Type: "auth", Control: "required", Module: "pam_x.so", Args: []string{"a]b"}}}, false},
		{"dash type", "-session optional pam_systemd.so\n", []Line{{Num: 1, Type: "session", Silent: true, Control: "optional", Module: "pam_systemd.so"}}, false},
		{"include", "auth include common-auth\naccount substack sub\n@include common-session\n", []Line{
			{Num: 1, Type: "auth", Control: "include", Module: "common-auth"},
			{Num: 2, Type: "account", Control: "substack", Module: "sub"},
			{Num: 3, Type: "*", Control: "@include", Module: "common-session"}}, false},
		{"illegal type", "login required pam_x.so\n", []Line{{Num: 1, Control: "required", Module: "pam_x.so", Problem: "x"}}, false},
		{"no control", "auth\n", []Line{{Num: 1, Type: "auth", Problem: "x"}}, false},
		{"no module", "auth required\n", []Line{{Num: 1, Type: "auth", Control: "required", Problem: "x"}}, false},
		{"bad bracket", "auth [success=frob] pam_x.so\n", []Line{{Num: 1, Type: "auth", Control: "success=frob", Module: "pam_x.so", Problem: "x"}}, false},
		{"zero jump", "auth [success=0] pam_x.so\n", []Line{{Num: 1, Type: "auth", Control: "success=0", Module: "pam_x.so", Problem: "x"}}, false},
		{"too long", "auth required pam_x.so " + strings.Repeat("a", 1100) + "\n", nil, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFile(strings.NewReader(tc.in))
			if tc.abort {
				if !errors.Is(err, ErrAbort) {
					t.Fatalf("want ErrAbort, got %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d lines %+v, want %d", len(got), got, len(tc.want))
			}
			for i, w := range tc.want {
				g := got[i]
				if g.Num != w.Num || g.Type != w.Type || g.Silent != w.Silent || g.Control != w.Control ||
					g.Module != w.Module || !reflect.DeepEqual(g.Args, w.Args) || (g.Problem != "") != (w.Problem != "") {
					t.Errorf("line %d: got %+v\nwant %+v", i, g, w)
				}
			}
		})
	}
}

func TestControlActions(t *testing.T) {
	cases := []struct {
		line           string
		success, unkwn string
	}{
		{"auth required pam_x.so", "ok", "bad"},
		{"auth requisite pam_x.so", "ok", "die"},
		{"auth sufficient pam_x.so", "done", "ignore"},
		{"auth optional pam_x.so", "ok", "ignore"},
		{"auth [success=1 default=ignore] pam_x.so", "jump", "ignore"},
		{"auth [success=ok] pam_x.so", "ok", "bad"}, // unset values default to bad
		{"auth [success=done module_unknown=ok default=die] pam_x.so", "done", "ok"},
		{"auth [success=ok new_authtok_reqd=ok ignore=ignore default=bad] pam_x.so", "ok", "bad"},
	}
	for _, tc := range cases {
		ls, err := ParseFile(strings.NewReader(tc.line))
		if err != nil || len(ls) != 1 {
			t.Fatalf("%q: %v", tc.line, err)
		}
		if s, u := ls[0].OnSuccess(), ls[0].OnModuleUnknown(); s != tc.success || u != tc.unkwn {
			t.Errorf("%q: success=%s module_unknown=%s, want %s %s", tc.line, s, u, tc.success, tc.unkwn)
		}
	}
}

// FuzzParseFile: the parser never panics, never returns more lines than the
// input has, and every line it accepts has a known type and a module.
func FuzzParseFile(f *testing.F) {
	for _, s := range []string{
		"auth required pam_unix.so\n",
		"auth [success=2 default=ignore] pam_sss.so use_first_pass\n",
		"-session optional pam_systemd.so \\\n  arg\n",
		"@include common-auth\n# comment\n",
		"auth include\n[\n\\]]\n",
		"account [default=bad success=ok user_unknown=ignore] pam_sss.so [a\\]b c]\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lines, err := parseBytes(data)
		if err != nil && !errors.Is(err, ErrAbort) {
			return
		}
		if len(lines) > strings.Count(string(data), "\n")+1 {
			t.Fatalf("%d lines from %d newlines", len(lines), strings.Count(string(data), "\n"))
		}
		prev := 0
		for _, l := range lines {
			if l.Num <= prev {
				t.Fatalf("line numbers not increasing: %d after %d", l.Num, prev)
			}
			prev = l.Num
			if l.parsedOK {
				switch l.Type {
				case TypeAuth, TypeAccount, TypeSession, TypePassword, "*":
				default:
					t.Fatalf("accepted line with type %q", l.Type)
				}
				if l.Module == "" {
					t.Fatalf("accepted line without module: %+v", l)
				}
			}
			if strings.Contains(l.Text, "#") {
				t.Fatalf("comment survived: %q", l.Text)
			}
		}
	})
}
