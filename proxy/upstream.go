package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
)

// SSLMode is the proxy's TLS policy towards the upstream server, with libpq's meanings.
type SSLMode string

const (
	SSLDisable    SSLMode = "disable"
	SSLPrefer     SSLMode = "prefer"
	SSLRequire    SSLMode = "require"
	SSLVerifyCA   SSLMode = "verify-ca"
	SSLVerifyFull SSLMode = "verify-full"
)

// ParseSSLMode validates an sslmode string.
func ParseSSLMode(s string) (SSLMode, error) {
	switch m := SSLMode(strings.ToLower(s)); m {
	case SSLDisable, SSLPrefer, SSLRequire, SSLVerifyCA, SSLVerifyFull:
		return m, nil
	case "":
		return SSLPrefer, nil
	}
	return "", fmt.Errorf("unknown sslmode %q (want disable, prefer, require, verify-ca or verify-full)", s)
}

// Upstream says how to reach the server.
type Upstream struct {
	// Addr is host:port, or a Unix socket: the socket file, DIR:PORT or a directory (port 5432),
	// read as libpq reads host=DIR port=PORT.
	Addr        string
	SSLMode     SSLMode
	SSLRootCert string // PEM file; with require it verifies the chain like libpq's verify-ca
	rootCAs     *x509.CertPool

	network, address string // what dial uses, from Addr
}

// prepare loads the root certificates once, at startup, so a bad file fails fast.
func (u *Upstream) prepare() error {
	if u.SSLMode == "" {
		u.SSLMode = SSLPrefer
	}
	if isUnixAddress(u.Addr) {
		path, err := resolveUnixPath(u.Addr, "5432")
		if err != nil {
			return fmt.Errorf("upstream: %w", err)
		}
		// Postgres never offers TLS on its socket (libpq does not ask there): nothing to negotiate,
		// and a policy that demands TLS could never be met.
		switch u.SSLMode {
		case SSLRequire, SSLVerifyCA, SSLVerifyFull:
			return fmt.Errorf("upstream %s is a Unix socket, where Postgres offers no TLS: sslmode %s cannot be met (use disable or prefer)", u.Addr, u.SSLMode)
		}
		u.network, u.address = "unix", path
		return nil
	}
	if _, _, err := net.SplitHostPort(u.Addr); err != nil {
		return fmt.Errorf("upstream address %q: %w", u.Addr, err)
	}
	u.network, u.address = "tcp", u.Addr
	if u.SSLRootCert != "" {
		pem, err := os.ReadFile(u.SSLRootCert)
		if err != nil {
			return fmt.Errorf("read upstream sslrootcert: %w", err)
		}
		u.rootCAs = x509.NewCertPool()
		if !u.rootCAs.AppendCertsFromPEM(pem) {
			return fmt.Errorf("upstream sslrootcert %s: no certificate found", u.SSLRootCert)
		}
	}
	if (u.SSLMode == SSLVerifyCA || u.SSLMode == SSLVerifyFull) && u.rootCAs == nil {
		pool, err := x509.SystemCertPool()
		if err != nil {
			return fmt.Errorf("sslmode %s needs sslrootcert: %w", u.SSLMode, err)
		}
		u.rootCAs = pool
	}
	return nil
}

const sslRequestCode = 80877103

// dial connects to the server and negotiates TLS according to the sslmode.
func (u *Upstream) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, u.network, u.address)
	if err != nil {
		return nil, err
	}
	if u.SSLMode == SSLDisable || u.network == "unix" {
		return conn, nil
	}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	tconn, err := u.negotiateTLS(conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	_ = tconn.SetDeadline(noDeadline)
	return tconn, nil
}

func (u *Upstream) negotiateTLS(conn net.Conn) (net.Conn, error) {
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:], 8)
	binary.BigEndian.PutUint32(req[4:], sslRequestCode)
	if _, err := conn.Write(req[:]); err != nil {
		return nil, fmt.Errorf("send SSLRequest: %w", err)
	}
	// Read exactly one byte: anything the server sent after it, before the handshake, must not be
	// taken as if it had come through TLS (CVE-2021-23222).
	var resp [1]byte
	if _, err := io.ReadFull(conn, resp[:]); err != nil {
		return nil, fmt.Errorf("read SSLRequest response: %w", err)
	}
	switch resp[0] {
	case 'N':
		if u.SSLMode == SSLPrefer {
			return conn, nil
		}
		return nil, fmt.Errorf("server does not support TLS (sslmode %s)", u.SSLMode)
	case 'S':
	default:
		return nil, fmt.Errorf("unexpected response %q to SSLRequest", resp[0])
	}
	host, _, _ := net.SplitHostPort(u.Addr)
	cfg := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	switch {
	case u.SSLMode == SSLVerifyFull:
		cfg.RootCAs = u.rootCAs
	case u.rootCAs != nil && u.SSLMode != SSLPrefer:
		// verify-ca (and require with a root cert, as libpq does): check the chain, not the name.
		cfg.InsecureSkipVerify = true
		cfg.VerifyPeerCertificate = verifyChain(u.rootCAs)
	default:
		cfg.InsecureSkipVerify = true
	}
	tc := tls.Client(conn, cfg)
	if err := tc.Handshake(); err != nil {
		return nil, fmt.Errorf("TLS handshake with upstream: %w", err)
	}
	return tc, nil
}

func verifyChain(roots *x509.CertPool) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("upstream presented no certificate")
		}
		certs := make([]*x509.Certificate, len(raw))
		for i, r := range raw {
			c, err := x509.ParseCertificate(r)
			if err != nil {
				return fmt.Errorf("parse upstream certificate: %w", err)
			}
			certs[i] = c
		}
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		_, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
		return err
	}
}
