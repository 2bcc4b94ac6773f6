package dovecottest

import (
	"fmt"
	"strings"
	"testing"
)

// doveadm's output as Dovecot 2.3.19 and 2.4.1 print it.
func TestParseDoveadm(t *testing.T) {
	for _, c := range []struct {
		name  string
		parse func(string) map[string]string
		out   string
		want  map[string]string
	}{
		{"auth test 2.3", parseAuthTest,
			"passdb: lua-ok auth succeeded\nextra fields:\n  user=lua-ok\n  host=192.0.2.1\n  proxy\n",
			map[string]string{"user": "lua-ok", "host": "192.0.2.1", "proxy": ""}},
		{"auth test 2.4", parseAuthTest,
			"passdb: lua-ok auth succeeded\nextra fields:\n  user=lua-ok\n  proxy=y\n  host=192.0.2.1\n",
			map[string]string{"user": "lua-ok", "host": "192.0.2.1", "proxy": "y"}},
		{"auth test tempfail 2.3", parseAuthTest,
			"passdb: x auth failed\nextra fields:\n  user=x\n  code=temp_fail\n",
			map[string]string{"user": "x", "code": "temp_fail"}},
		{"auth test value with =", parseAuthTest,
			"passdb: x auth succeeded\nextra fields:\n  user=x\n  reason=a=b\n",
			map[string]string{"user": "x", "reason": "a=b"}},
		{"auth lookup", parseAuthLookup,
			"passdb: lua-ok\n  user      : lua-ok\n  host      : 192.0.2.1\n  proxy     : y\n  longer_key_name: a: b\n",
			map[string]string{"user": "lua-ok", "host": "192.0.2.1", "proxy": "y", "longer_key_name": "a: b"}},
		{"auth lookup unknown", parseAuthLookup,
			"passdb lookup: user nobody doesn't exist\n", map[string]string{}},
		{"user", parseUser,
			"field\tvalue\nuid\t5000\ngid\t5000\nhome\t/var/vmail/lua-ok\nmail\t\n",
			map[string]string{"uid": "5000", "gid": "5000", "home": "/var/vmail/lua-ok", "mail": ""}},
		{"user unknown", parseUser,
			"field\tvalue\n\nuserdb lookup: user nobody doesn't exist\n", map[string]string{}},
	} {
		if got := c.parse(c.out); fmt.Sprint(got) != fmt.Sprint(c.want) {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

func TestConfigText(t *testing.T) {
	cfg := Config{PassdbUserdb: "passdb {\n  driver = lua\n}\n", Extra: "service auth {\n  vsz_limit = 1G\n}"}
	c23 := configText(Version23, "/tmp/dt1", cfg)
	c24 := configText(Version24, "/tmp/dt1", cfg)
	if strings.Contains(c23, "dovecot_config_version") || strings.Contains(c23, "auth_internal_failure_delay") {
		t.Errorf("2.3 configuration has 2.4 settings:\n%s", c23)
	}
	first := strings.SplitN(c24, "\n", 3)[1]
	if first != "dovecot_config_version = 2.4.0" {
		t.Errorf("2.4 configuration's first setting is %q, want dovecot_config_version", first)
	}
	for _, c := range []string{c23, c24} {
		for _, s := range []string{"base_dir = /tmp/dt1/run\n", "log_path = /tmp/dt1/dovecot.log\n", "auth_debug = no\n",
			"passdb {\n  driver = lua\n}\n", "vsz_limit = 1G"} {
			if !strings.Contains(c, s) {
				t.Errorf("configuration lacks %q:\n%s", s, c)
			}
		}
	}
}
