package proxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"sync"
	"time"
)

// backendKey identifies a server backend for cancellation: its process id and secret key.
type backendKey struct {
	pid    uint32
	secret []byte
}

// cancelKeys maps the keys the proxy hands to clients onto the server backends behind them.
// Clients never see a server's real key: a CancelRequest must come through the proxy, which
// knows which upstream backend it is for.
type cancelKeys struct {
	mu   sync.Mutex
	keys map[uint32]cancelEntry
}

type cancelEntry struct {
	secret []byte
	server backendKey
}

func newCancelKeys() *cancelKeys {
	return &cancelKeys{keys: make(map[uint32]cancelEntry)}
}

// register issues a fresh proxy key for a server key. The proxy secret has the server secret's
// length, so a client that negotiated protocol 3.2 (longer keys) gets what it expects.
func (c *cancelKeys) register(server backendKey) (backendKey, error) {
	secret := make([]byte, len(server.secret))
	if _, err := rand.Read(secret); err != nil {
		return backendKey{}, fmt.Errorf("generate cancel key: %w", err)
	}
	var b [4]byte
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return backendKey{}, fmt.Errorf("generate cancel key: %w", err)
		}
		pid := binary.BigEndian.Uint32(b[:]) &^ (1 << 31) // positive, as a pid would be
		if _, taken := c.keys[pid]; pid != 0 && !taken {
			c.keys[pid] = cancelEntry{secret: secret, server: server}
			return backendKey{pid: pid, secret: secret}, nil
		}
	}
}

func (c *cancelKeys) unregister(pid uint32) {
	c.mu.Lock()
	delete(c.keys, pid)
	c.mu.Unlock()
}

// lookup returns the server key for a client's CancelRequest, comparing secrets in constant time.
func (c *cancelKeys) lookup(pid uint32, secret []byte) (backendKey, bool) {
	c.mu.Lock()
	e, ok := c.keys[pid]
	c.mu.Unlock()
	if !ok || subtle.ConstantTimeCompare(e.secret, secret) != 1 {
		return backendKey{}, false
	}
	return e.server, true
}

// forwardCancel sends a CancelRequest for key to the server on a new connection, as Postgres
// requires; the server answers nothing and closes.
func forwardCancel(ctx context.Context, up *Upstream, key backendKey) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := up.dial(ctx)
	if err != nil {
		return fmt.Errorf("connect to upstream for cancel: %w", err)
	}
	defer conn.Close()
	msg := make([]byte, 12, 12+len(key.secret))
	binary.BigEndian.PutUint32(msg[0:], uint32(12+len(key.secret)))
	binary.BigEndian.PutUint32(msg[4:], cancelRequestCode)
	binary.BigEndian.PutUint32(msg[8:], key.pid)
	msg = append(msg, key.secret...)
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := conn.Write(msg); err != nil {
		return fmt.Errorf("send cancel request: %w", err)
	}
	// Wait for the server to close, so the cancel has been read before we report it done.
	var one [1]byte
	_, _ = conn.Read(one[:])
	return nil
}
