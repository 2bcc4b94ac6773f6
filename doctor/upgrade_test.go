package doctor

import (
	"context"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The stream is what apt 2.6 (Debian 12) really sent a Pre-Install-Pkgs
// hook with Version "3" for an upgrade of dovecot-core to 2.4 (a scratch
// apt configuration, dpkg replaced by /bin/true; e2e's TestAptHook makes
// it afresh).
func TestParseAptHookV3(t *testing.T) {
	f, err := os.Open("../testdata/doctor/apt-hook-v3-dovecot-2.4.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got, err := ParseAptHook(f)
	if err != nil {
		t.Fatal(err)
	}
	want := []Change{{Package: "dovecot-core", Old: "1:2.3.19.1+dfsg1-2.1+deb12u7", New: "1:2.4.1+dfsg1-6"}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestParseAptHookForms(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []Change
		err      string
	}{
		{"v3 install, upgrade, remove", "VERSION 3\nAPT::Architecture=amd64\n\n" +
			"lua-socket - - none < 3.1.0-1 amd64 same /var/cache/apt/archives/lua-socket_3.1.0-1_amd64.deb\n" +
			"postfix 3.7.11-0+deb12u1 amd64 none < 3.10.5-1 amd64 none /var/cache/apt/archives/postfix_3.10.5-1_amd64.deb\n" +
			"libsasl2-modules 2.1.28+dfsg-10 amd64 same > - - none **REMOVE**\n" +
			"postfix 3.7.11-0+deb12u1 amd64 none < 3.10.5-1 amd64 none **CONFIGURE**\n",
			[]Change{{"lua-socket", "", "3.1.0-1"}, {"postfix", "3.7.11-0+deb12u1", "3.10.5-1"}, {"libsasl2-modules", "2.1.28+dfsg-10", ""}}, ""},
		{"v2", "VERSION 2\nA=b\n\ndovecot-core 1:2.3.19.1 < 1:2.4.1 /x.deb\n",
			[]Change{{"dovecot-core", "1:2.3.19.1", "1:2.4.1"}}, ""},
		{"v1 (no Version option)", "/var/cache/apt/archives/x.deb\n", nil, "want VERSION 2 or 3"},
		{"empty", "", nil, "empty input"},
		{"garbage line", "VERSION 3\n\nfoo bar\n", nil, "unexpected line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAptHook(strings.NewReader(tc.in))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestParseChangeList(t *testing.T) {
	got, err := ParseChangeList(strings.NewReader("# zypper\ndovecot 2.3.21 2.4.1\nlibsasl2-modules 2.1.28 -\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Change{{"dovecot", "2.3.21", "2.4.1"}, {"libsasl2-modules", "2.1.28", ""}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v", got)
	}
	if _, err := ParseChangeList(strings.NewReader("one two\n")); err == nil {
		t.Fatal("short line accepted")
	}
}

func upgrade(tr *tree, changes ...Change) *Report {
	return CheckUpgrade(context.Background(), Options{Root: tr.root, NoSystemd: true}, changes)
}

func TestCheckUpgrade(t *testing.T) {
	t.Run("dovecot-core 2.3 to 2.4 with checkpassword", func(t *testing.T) {
		tr := good(t)
		r := upgrade(tr, Change{"dovecot-core", "1:2.3.19.1+dfsg1-2.1+deb12u7", "1:2.4.1+dfsg1-6"})
		f := want(t, r, "upgrade-dovecot-checkpassword", Critical)
		if f.Path != "/etc/dovecot/conf.d/10-auth.conf" || f.Line != 2 {
			t.Errorf("at %s:%d", f.Path, f.Line)
		}
		contain(t, "message", f.Message, "dovecot-core 1:2.3.19.1+dfsg1-2.1+deb12u7 → 1:2.4.1+dfsg1-6", "removed the checkpassword driver")
		contain(t, "fix", f.Fix, "apt-mark hold dovecot-core")
	})
	t.Run("2.4 to 2.4.2 is not the break", func(t *testing.T) {
		tr := good(t)
		wantNo(t, upgrade(tr, Change{"dovecot-core", "1:2.4.1+dfsg1-6", "1:2.4.2-1"}), "upgrade-dovecot-checkpassword")
	})
	t.Run("2.3 point release", func(t *testing.T) {
		tr := good(t)
		r := upgrade(tr, Change{"dovecot-core", "1:2.3.19.1+dfsg1-2.1+deb12u6", "1:2.3.19.1+dfsg1-2.1+deb12u7"})
		if len(r.Findings) != 0 {
			t.Fatalf("%s", dump(r))
		}
	})
	t.Run("dovecot 2.4 without checkpassword: config warning", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/dovecot/conf.d/10-auth.conf", 0o644, 0, 0, "passdb {\n  driver = pam\n}\n")
		want(t, upgrade(tr, Change{"dovecot-core", "1:2.3.19.1", "1:2.4.1"}), "upgrade-dovecot-config", Warning)
	})
	t.Run("postfix to Debian 13 relying on the compiled-in path", func(t *testing.T) {
		tr := good(t)
		f := want(t, upgrade(tr, Change{"postfix", "3.7.11-0+deb12u1", "3.10.5-1~deb13u1"}), "upgrade-postfix-sasl-path", Critical)
		contain(t, "fix", f.Fix, "postconf -e cyrus_sasl_config_path=/etc/postfix/sasl")
	})
	t.Run("postfix to Debian 13 with cyrus_sasl_config_path set", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/postfix/main.cf", 0o644, 0, 0, "smtpd_sasl_auth_enable = yes\ncyrus_sasl_config_path = /etc/postfix/sasl\n")
		wantNo(t, upgrade(tr, Change{"postfix", "3.7.11-0+deb12u1", "3.10.5-1"}), "upgrade-postfix-sasl-path")
	})
	t.Run("libsasl2-modules removed", func(t *testing.T) {
		tr := good(t)
		f := want(t, upgrade(tr, Change{"libsasl2-modules", "2.1.28+dfsg-10", ""}), "upgrade-sasl-plugins-removed", Critical)
		contain(t, "message", f.Message, "Postfix and Cyrus imapd")
	})
	t.Run("lua pieces removed while the adapter is used", func(t *testing.T) {
		tr := good(t)
		tr.write("/etc/dovecot/conf.d/10-auth.conf", 0o644, 0, 0, "passdb {\n  driver = lua\n  args = file=/usr/share/mailauthd/dovecot/mailauthd.lua\n}\n")
		want(t, upgrade(tr, Change{"lua-socket", "3.1.0-1", ""}), "upgrade-lua-removed", Critical)
	})
	t.Run("unrelated packages", func(t *testing.T) {
		tr := good(t)
		r := upgrade(tr, Change{"libc6", "2.36-9", "2.36-10"}, Change{"vim", "", "9.0"})
		if len(r.Findings) != 0 {
			t.Fatalf("%s", dump(r))
		}
	})
}

func TestVersions(t *testing.T) {
	for v, want := range map[string]string{
		"1:2.3.19.1+dfsg1-2.1+deb12u7": "2.3.19.1", "2.4.1-1": "2.4.1", "2.4.0~rc1-1": "2.4.0", "3.10.5": "3.10.5",
	} {
		if got := upstreamVersion(v); got != want {
			t.Errorf("upstreamVersion(%q) = %q, want %q", v, got, want)
		}
	}
	if !atLeast("1:2.4.1+dfsg1-6", 2, 4) || atLeast("1:2.3.21", 2, 4) || !atLeast("3.10.5-1", 3, 9) || atLeast("3.7.11", 3, 9) {
		t.Error("atLeast")
	}
	for s, want := range map[string]uint64{"2G": 2 << 30, "2 G": 2 << 30, "256 M": 256 << 20, "1024k": 1 << 20, "0": 0, "unlimited": 0, "2048MB": 2 << 30} {
		if got, ok := parseSize(s); !ok || got != want {
			t.Errorf("parseSize(%q) = %d, %v", s, got, ok)
		}
	}
	if _, ok := parseSize("lots"); ok {
		t.Error("parseSize accepted lots")
	}
}

func TestExpandPostfixIsBounded(t *testing.T) {
	vals := map[string]string{"a": strings.Repeat("$a", 200)}
	done := make(chan string)
	go func() { done <- expandPostfix("$a", vals, 0) }()
	select {
	case s := <-done:
		if len(s) > 2*maxExpansion {
			t.Errorf("expanded to %d bytes", len(s))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("expansion of a self-reference did not stop")
	}
	if got := expandPostfix("${queue_directory}/x $(b) $c", map[string]string{"queue_directory": "/var/spool/postfix", "b": "B", "c": "$b"}, 0); got != "/var/spool/postfix/x B B" {
		t.Errorf("got %q", got)
	}
}
