package doctor

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailauthd/mailauthd/internal/slapdtest"
)

// ldapRun checks only the LDAP area of a configuration whose ldap: section
// is body, with the service password in /bindpw (below a fresh root).
func ldapRun(t *testing.T, body, password string, timeout time.Duration) *Report {
	t.Helper()
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc/mailauthd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bindpw"), []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/mailauthd/mailauthd.yaml"), []byte("ldap:\n"+body), 0o644); err != nil {
		t.Fatal(err)
	}
	return Run(context.Background(), Options{Root: root, NoSystemd: true, Timeout: timeout, Areas: map[string]bool{AreaLDAP: true}})
}

func serviceBind(url string) string {
	return fmt.Sprintf("  urls: [%q]\n  bind_dn: %s\n  bind_password_file: /bindpw\n  base: %s\n", url, slapdtest.ServiceDN, slapdtest.PeopleDN)
}

// withCA adds ldap.ca_file (a path below the run's root).
func withCA(body, caFile string) string {
	return body + "  ca_file: " + caFile + "\n"
}

func TestLDAPAgainstSlapd(t *testing.T) {
	s := slapdtest.Start(t, slapdtest.WithLDAPS())
	t.Run("ok, with the time of each step", func(t *testing.T) {
		r := ldapRun(t, serviceBind(s.URL()), slapdtest.ServicePassword, 0)
		f := want(t, r, "ldap-ok", Info)
		contain(t, "message", f.Message, s.URL()+": connect ", "ms, bind as "+slapdtest.ServiceDN, "base "+slapdtest.PeopleDN+" exists")
		if r.Worst() > Info {
			t.Fatalf("%s", dump(r))
		}
	})
	t.Run("wrong service password", func(t *testing.T) {
		r := ldapRun(t, serviceBind(s.URL()), "not-it", 0)
		f := want(t, r, "ldap-bind-failed", Critical)
		contain(t, "message", f.Message, "Invalid Credentials", "every login fails", "connect ")
		contain(t, "fix", f.Fix, "ldap.bind_dn", "/bindpw")
	})
	t.Run("base missing", func(t *testing.T) {
		body := strings.Replace(serviceBind(s.URL()), slapdtest.PeopleDN, "ou=nobody,dc=example,dc=org", 1)
		f := want(t, ldapRun(t, body, slapdtest.ServicePassword, 0), "ldap-base-missing", Critical)
		contain(t, "message", f.Message, "ou=nobody,dc=example,dc=org does not exist")
	})
	t.Run("ldaps with the CA", func(t *testing.T) {
		r := ldapRunWithFile(t, withCA(serviceBind(s.LDAPSURL()), "/ca.pem"), "/ca.pem", s.CAFile())
		f := want(t, r, "ldap-ok", Info)
		contain(t, "message", f.Message, ", TLS ")
	})
	t.Run("StartTLS with the CA", func(t *testing.T) {
		body := withCA(serviceBind(s.URL()), "/ca.pem") + "  start_tls: true\n"
		f := want(t, ldapRunWithFile(t, body, "/ca.pem", s.CAFile()), "ldap-ok", Info)
		contain(t, "message", f.Message, ", StartTLS ")
	})
	t.Run("ldaps without the CA", func(t *testing.T) {
		f := want(t, ldapRun(t, serviceBind(s.LDAPSURL()), slapdtest.ServicePassword, 0), "ldap-cert-untrusted", Critical)
		contain(t, "message", f.Message, "mailauthd test CA", "not a trusted CA")
		contain(t, "fix", f.Fix, "ldap.ca_file")
	})
	t.Run("failover: a dead first server is a warning", func(t *testing.T) {
		dead := closedPort(t)
		body := fmt.Sprintf("  urls: [%q, %q]\n  bind_dn: %s\n  bind_password_file: /bindpw\n  base: %s\n", "ldap://"+dead, s.URL(), slapdtest.ServiceDN, slapdtest.PeopleDN)
		r := ldapRun(t, body, slapdtest.ServicePassword, 0)
		f := want(t, r, "ldap-dial-failed", Warning)
		contain(t, "message", f.Message, "connection refused", "failover")
		want(t, r, "ldap-ok", Info)
	})
}

func ldapRunWithFile(t *testing.T, body, name, src string) *Report {
	t.Helper()
	root := t.TempDir()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	for p, d := range map[string][]byte{
		name:                            data,
		"/bindpw":                       []byte(slapdtest.ServicePassword + "\n"),
		"/etc/mailauthd/mailauthd.yaml": []byte("ldap:\n" + body),
	} {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		if err := os.WriteFile(filepath.Join(root, p), d, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Run(context.Background(), Options{Root: root, NoSystemd: true, Areas: map[string]bool{AreaLDAP: true}})
}

func closedPort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// A server whose certificate names another host: the finding says which
// names it has, in crypto/x509's words.
func TestLDAPCertificateName(t *testing.T) {
	caPEM, cert := testCertificate(t, []string{"ldap.corp.test"}, nil)
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { c.(*tls.Conn).Handshake(); time.Sleep(time.Second); c.Close() }()
		}
	}()
	ca := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(ca, caPEM, 0o644)
	url := "ldaps://" + l.Addr().String()
	f := want(t, ldapRunWithFile(t, withCA(serviceBind(url), "/ca.pem"), "/ca.pem", ca), "ldap-cert-name", Critical)
	contain(t, "message", f.Message, "certificate is valid for ldap.corp.test, not 127.0.0.1")
	contain(t, "fix", f.Fix, "ldap.corp.test")
}

// A server that accepts and then says nothing: every step has a deadline.
func TestLDAPTimeouts(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	held := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held <- c // open, never answered
		}
	}()
	defer func() {
		for len(held) > 0 {
			(<-held).Close()
		}
	}()
	addr := l.Addr().String()
	for _, tc := range []struct{ name, url, extra, step string }{
		{"bind", "ldap://" + addr, "", "bind as " + slapdtest.ServiceDN + " got no answer within 300ms"},
		{"StartTLS", "ldap://" + addr, "  start_tls: true\n", "StartTLS got no answer within 300ms"},
		{"TLS handshake", "ldaps://" + addr, "", "TLS handshake did not finish within 300ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			r := ldapRun(t, serviceBind(tc.url)+tc.extra, "pw", 300*time.Millisecond)
			f := want(t, r, "ldap-timeout", Critical)
			contain(t, "message", f.Message, tc.step)
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
}

func testCertificate(t *testing.T, dns []string, ips []net.IP) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "doctor test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: dns[0]},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: dns, IPAddresses: ips,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return caPEM, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
