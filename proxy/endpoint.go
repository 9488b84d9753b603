package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// maxUnixPath is the longest socket path Linux accepts: sun_path holds 108 bytes with the NUL.
const maxUnixPath = 107

// socketFileName is Postgres's (and libpq's) name for the socket of a port inside a directory.
func socketFileName(port string) string { return ".s.PGSQL." + port }

// isUnixAddress tells a Unix-socket address (an absolute path) from host:port.
func isUnixAddress(addr string) bool { return strings.HasPrefix(addr, "/") }

// resolveUnixPath turns a Unix-socket address into the socket file's path, the way libpq reads
// host=DIR port=PORT, so the addresses operators already use work unchanged:
//   - DIR:PORT is DIR/.s.PGSQL.PORT;
//   - a path whose last name starts with .s.PGSQL. is the socket file itself;
//   - any other path is a directory, DIR/.s.PGSQL.<defaultPort> (an error when defaultPort is
//     ""), whether or not it exists yet: Postgres may create its socket directory after we start.
func resolveUnixPath(addr, defaultPort string) (string, error) {
	var path string
	switch i := strings.LastIndexByte(addr, ':'); {
	case i > strings.LastIndexByte(addr, '/'):
		port := addr[i+1:]
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("unix socket address %q: port %q is not a number from 1 to 65535", addr, port)
		}
		path = filepath.Join(addr[:i], socketFileName(port))
	case strings.HasPrefix(filepath.Base(addr), socketFileName("")):
		path = addr
	case defaultPort == "":
		return "", fmt.Errorf("unix socket address %q is a directory: say which port's socket, as %s:PORT", addr, addr)
	default:
		path = filepath.Join(addr, socketFileName(defaultPort))
	}
	path = filepath.Clean(path)
	if len(path) > maxUnixPath {
		return "", fmt.Errorf("unix socket path %q is %d bytes, over the system's limit of %d", path, len(path), maxUnixPath)
	}
	return path, nil
}

// listenUnix binds a Unix socket at path, as Postgres does: a socket file left by a process that
// is gone is replaced, one that still answers is not, and any other file is never touched. The
// socket is open to every local user (Postgres's default unix_socket_permissions, 0777): the
// server behind the proxy authenticates each client as it would on its own socket.
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen on %s: the path exists and is not a socket", path)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, derr := (&net.Dialer{}).DialContext(ctx, "unix", path)
		cancel()
		switch {
		case derr == nil:
			conn.Close()
			return nil, fmt.Errorf("listen on %s: another process is listening on this socket", path)
		case !errors.Is(derr, syscall.ECONNREFUSED):
			// A busy listener (a full backlog) or a slow one is still alive: never remove it.
			return nil, fmt.Errorf("listen on %s: a socket is there and it cannot be told whether a process listens on it: %w", path, derr)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("listen on %s: remove stale socket: %w", path, err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o777); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: set permissions: %w", path, err)
	}
	return ln, nil
}

// isUnixConn reports whether a client came through a Unix socket.
func isUnixConn(c net.Conn) bool {
	a := c.LocalAddr()
	return a != nil && a.Network() == "unix"
}

// clientName names a client in logs: its address, or "local" on a Unix socket (whose peers have
// none, "@" to Go).
func clientName(c net.Conn) string {
	if isUnixConn(c) {
		return "local"
	}
	return c.RemoteAddr().String()
}
