package proxy

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
)

// Startup packets carry no type byte: a length, then a 4-byte code. Postgres caps them at 10000
// bytes (MAX_STARTUP_PACKET_LENGTH); so do we, before any authentication has happened.
const (
	maxStartupPacket  = 10000
	cancelRequestCode = 80877102
	gssEncRequestCode = 80877104
)

// readStartupPacket reads one startup-phase packet (StartupMessage, SSLRequest, GSSENCRequest or
// CancelRequest) and returns its body, code included. It reads exactly the packet and nothing
// more, so no plaintext can be buffered across a TLS handshake (CVE-2021-23214).
func readStartupPacket(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n < 8 || n > maxStartupPacket {
		return nil, fmt.Errorf("%w: startup packet length %d", errMalformed, n)
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, unexpected(err)
	}
	return body, nil
}

// startupParams decodes the name/value pairs of a StartupMessage body (after the version). The
// raw packet is what goes upstream; this copy is for logs, routing and the session's own state.
func startupParams(body []byte) (map[string]string, error) {
	params := make(map[string]string)
	rest := body[4:]
	for len(rest) > 0 && rest[0] != 0 {
		k, r, ok := cstring(rest)
		if !ok {
			return nil, fmt.Errorf("%w: unterminated startup parameter name", errMalformed)
		}
		v, r, ok := cstring(r)
		if !ok {
			return nil, fmt.Errorf("%w: unterminated value of startup parameter %q", errMalformed, k)
		}
		params[string(k)] = string(v)
		rest = r
	}
	if !bytes.Equal(rest, []byte{0}) {
		return nil, fmt.Errorf("%w: startup message not terminated", errMalformed)
	}
	return params, nil
}

// stripChannelBinding removes SCRAM-SHA-256-PLUS from an AuthenticationSASL body. TLS ends at
// the proxy, so the client's channel binding would name the proxy's certificate and could never
// verify against the server's: offer only what can work through a relay.
func stripChannelBinding(body []byte) []byte {
	out := make([]byte, 4, len(body))
	copy(out, body[:4])
	rest := body[4:]
	for len(rest) > 0 && rest[0] != 0 {
		mech, r, ok := cstring(rest)
		if !ok {
			return body
		}
		if !bytes.HasSuffix(mech, []byte("-PLUS")) {
			out = append(out, mech...)
			out = append(out, 0)
		}
		rest = r
	}
	return append(out, 0)
}

// errChannelBinding explains the one combination a relay cannot authenticate: SCRAM with TLS on
// both legs, from a client that supports channel binding. Told that the server lacks it (we
// removed -PLUS), the client says so in its gs2 header ("y"); the server, whose own connection is
// TLS, must treat that as a downgrade attack. The flag is covered by the client's proof, so the
// proxy cannot rewrite it; an early, plain error beats the server's cryptic one.
const errChannelBinding = "pgcanary cannot relay SCRAM channel binding: TLS ends at the proxy and the upstream " +
	"connection is TLS too. Set channel_binding=disable in the client's connection string, " +
	"or connect to pgcanary without TLS (a sidecar on localhost), or use upstream sslmode=disable on a trusted network"

// saslClaimsChannelBinding reports whether a SASLInitialResponse body says "client supports
// channel binding, server does not" (gs2 flag 'y').
func saslClaimsChannelBinding(body []byte) bool {
	_, rest, ok := cstring(body) // mechanism
	if !ok || len(rest) < 5 {
		return false
	}
	data := rest[4:]
	return len(data) > 0 && data[0] == 'y'
}
