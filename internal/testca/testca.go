// Package testca makes the throwaway certificates of the real-peer test
// harnesses (slapdtest, ds389test, sambatest): a test CA and a server
// certificate it signed whose subject alternative names match what tests
// dial (127.0.0.1, ::1 and localhost), plus a self-signed certificate with
// the same names that the CA did not sign, for refusal tests.
package testca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// File names Write creates in its directory.
const (
	CAFile            = "ca.pem"        // the test CA certificate
	CertFile          = "server.pem"    // server certificate signed by the CA
	KeyFile           = "server.key"    // its key (PKCS#8, mode 0600)
	UntrustedCertFile = "untrusted.pem" // self-signed, same names
	UntrustedKeyFile  = "untrusted.key"
)

// Write creates, in dir: ca.pem (test CA), server.pem/.key (signed by the CA,
// SAN 127.0.0.1, ::1, localhost and extraDNS) and untrusted.pem/.key
// (self-signed, same SANs, not trusted by ca.pem). Keys are ECDSA P-256;
// everything is valid from an hour ago for a day.
func Write(dir string, extraDNS ...string) error {
	return WriteWithNames(dir, "localhost", append([]string{"localhost"}, extraDNS...), []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback})
}

// WriteWithNames writes the same files as Write, with a server certificate
// whose subject common name and subject alternative names are exactly
// these (none at all when dnsNames and ips are empty, like the
// certificate samba-tool provisions), for tests of name mismatches.
func WriteWithNames(dir, commonName string, dnsNames []string, ips []net.IP) error {
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mailauthd test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, CAFile), "CERTIFICATE", caDER); err != nil {
		return err
	}
	leaf := func(serial int64) *x509.Certificate {
		return &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: commonName},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			DNSNames:     dnsNames,
			IPAddresses:  ips,
		}
	}
	if err := writeLeaf(dir, CertFile, KeyFile, leaf(2), caCert, caKey); err != nil {
		return err
	}
	return writeLeaf(dir, UntrustedCertFile, UntrustedKeyFile, leaf(3), nil, nil)
}

// writeLeaf writes the certificate and its key; a nil parent means self-signed.
func writeLeaf(dir, certName, keyName string, tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(dir, certName), "CERTIFICATE", der); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, keyName), "PRIVATE KEY", keyDER)
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// ClientConfig returns a client TLS configuration that trusts only the CA in
// caFile and verifies the server's name as serverName.
func ClientConfig(caFile, serverName string) (*tls.Config, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New("testca: no certificate in " + caFile)
	}
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}, nil
}
