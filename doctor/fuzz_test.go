package doctor

import (
	"bytes"
	"os"
	"testing"
)

// The parsers read files an admin (or apt) wrote: none may panic or loop.

func FuzzParseAptHook(f *testing.F) {
	if data, err := os.ReadFile("../testdata/doctor/apt-hook-v3-dovecot-2.4.txt"); err == nil {
		f.Add(data)
	}
	f.Add([]byte("VERSION 2\n\nx 1 < 2 /x.deb\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ParseAptHook(bytes.NewReader(data))
		ParseChangeList(bytes.NewReader(data))
	})
}

func FuzzParseDovecot(f *testing.F) {
	f.Add([]byte(dovecotAuth + dovecotMaster))
	f.Add([]byte("!include conf.d/*.conf\nservice auth {\n unix_listener x {\n }\n}\n}\n}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n := newNode("", "", "f", 0)
		parseDovecot(n, data, "f", func(string, string) [][2]string { return [][2]string{{"g", string(data)}} }, 8)
		dc := &dovecotConf{Tree: n, Files: n}
		for _, db := range dc.databases() {
			parseCheckpasswordArgs(db.Args)
			dc.locate(db)
		}
		dc.authVszLimit()
		dc.serviceUser("auth")
	})
}

func FuzzParsePostfix(f *testing.F) {
	f.Add([]byte("smtpd_sasl_path = $a${b}$(c)\n  continued\na = $b\nb = $a\n"), []byte("smtp inet n - y - - smtpd\n -o x=y -oz=w\n"))
	f.Fuzz(func(t *testing.T, main, master []byte) {
		vals, _ := parseMainCF(main)
		for _, v := range vals {
			expandPostfix(v, vals, 0)
		}
		parseMasterCF(master)
	})
}

func FuzzParseColonConf(f *testing.F) {
	f.Add([]byte("pwcheck_method: saslauthd\n# c\nmech_list: PLAIN LOGIN\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		o := parseColonConf(data)
		hasWord(o["mech_list"].Value, "PLAIN")
	})
}
