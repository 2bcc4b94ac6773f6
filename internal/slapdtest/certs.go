package slapdtest

import "github.com/mailauthd/mailauthd/internal/testca"

// writeCertificates creates, in dir: ca.pem (test CA), server.pem/.key
// (signed by the CA, SAN 127.0.0.1, ::1 and localhost) and
// untrusted.pem/.key (self-signed, same SANs, not trusted by ca.pem).
func writeCertificates(dir string) error { return testca.Write(dir) }
