package pgtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Names of the files written by GenerateCerts.
const (
	caFileName   = "ca.crt"
	certFileName = "server.crt"
	keyFileName  = "server.key"
)

// GenerateCerts writes a fresh CA and a server cert/key (SANs: localhost,
// 127.0.0.1, ::1) into dir and returns the paths. Used by Start for TLS and by
// tests that need a proxy certificate.
//
// The key file is written with mode 0600 because PostgreSQL refuses a key
// readable by group or others. The CA's private key is not kept: tests only
// need to verify the server, never to sign anything else.
func GenerateCerts(dir string) (caFile, certFile, keyFile string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", "", fmt.Errorf("create cert dir: %w", err)
	}

	// Backdate by a day so that small clock differences between the
	// machine and a container never make the certificates "not yet valid".
	notBefore := time.Now().Add(-24 * time.Hour)
	notAfter := notBefore.AddDate(10, 0, 1)

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", fmt.Errorf("generate CA key: %w", err)
	}
	caSerial, err := randomSerial()
	if err != nil {
		return "", "", "", err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          caSerial,
		Subject:               pkix.Name{CommonName: "pgcanary test CA", Organization: []string{"pgcanary"}},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", "", "", fmt.Errorf("create CA certificate: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return "", "", "", fmt.Errorf("parse CA certificate: %w", err)
	}

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", fmt.Errorf("generate server key: %w", err)
	}
	srvSerial, err := randomSerial()
	if err != nil {
		return "", "", "", err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: srvSerial,
		Subject:      pkix.Name{CommonName: "localhost", Organization: []string{"pgcanary"}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		// ClientAuth as well, so tests can reuse the pair as a client
		// certificate without generating another one.
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return "", "", "", fmt.Errorf("create server certificate: %w", err)
	}
	srvKeyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		return "", "", "", fmt.Errorf("marshal server key: %w", err)
	}

	caFile = filepath.Join(dir, caFileName)
	certFile = filepath.Join(dir, certFileName)
	keyFile = filepath.Join(dir, keyFileName)
	if err := writePEM(caFile, "CERTIFICATE", caDER, 0o644); err != nil {
		return "", "", "", err
	}
	if err := writePEM(certFile, "CERTIFICATE", srvDER, 0o644); err != nil {
		return "", "", "", err
	}
	if err := writePEM(keyFile, "PRIVATE KEY", srvKeyDER, 0o600); err != nil {
		return "", "", "", err
	}
	return caFile, certFile, keyFile, nil
}

func randomSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	return n, nil
}

func writePEM(path, blockType string, der []byte, mode os.FileMode) error {
	data := pem.EncodeToMemory(&pem.Block{Type: blockType, Bytes: der})
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// WriteFile only applies mode when it creates the file; an existing
	// key file with looser permissions would make PostgreSQL refuse it.
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}
