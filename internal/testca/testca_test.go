package testca

import (
	"crypto/tls"
	"crypto/x509"
	"path/filepath"
	"testing"
)

func TestServerCertVerifiesAgainstCA(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, "dc1.example.org"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"127.0.0.1", "::1", "localhost", "dc1.example.org"} {
		cfg, err := ClientConfig(filepath.Join(dir, CAFile), name)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			cert, key string
			trusted   bool
		}{{CertFile, KeyFile, true}, {UntrustedCertFile, UntrustedKeyFile, false}} {
			pair, err := tls.LoadX509KeyPair(filepath.Join(dir, c.cert), filepath.Join(dir, c.key))
			if err != nil {
				t.Fatal(err)
			}
			_, err = pair.Leaf.Verify(x509.VerifyOptions{Roots: cfg.RootCAs, DNSName: name})
			if (err == nil) != c.trusted {
				t.Errorf("%s as %s: verify error %v, want trusted=%v", c.cert, name, err, c.trusted)
			}
		}
	}
}
