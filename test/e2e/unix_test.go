package e2e

import (
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pgcanary/pgcanary/proxy"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

// upstreamSocket is the test cluster's socket as pgcanary's upstream, written DIR:PORT; tests
// that need it skip against an external server, whose socket directory is unknown.
func upstreamSocket(t *testing.T) string {
	t.Helper()
	dir := cluster.SocketDir()
	if dir == "" {
		t.Skip("PGCANARY_TEST_DSN names an external server: its Unix socket directory is unknown")
	}
	return fmt.Sprintf("%s:%d", dir, cluster.Port)
}

// unixDSN connects through a socket directory and port, the way applications name a socket.
func unixDSN(dir string, port int, user, password string) string {
	return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=prefer", dir, port, user, password, pgtest.TestDB)
}

// TestUnixSockets runs sessions with a Unix socket on both sides of the proxy: clients connect to
// pgcanary's socket, pgcanary connects to Postgres's. Authentication, queries, COPY and cancel
// must work as over TCP, with pgx, lib/pq and psql.
func TestUnixSockets(t *testing.T) {
	dir := t.TempDir()
	const port = 6499 // names the socket file only: nothing binds this TCP port
	// A TLS certificate is configured, yet clients on the socket must get 'N' as from Postgres.
	clientTLS, _ := proxyCerts(t)
	p := startProxy(t, proxyOpts{
		upstream:   upstreamSocket(t),
		listen:     "none",
		listenUnix: fmt.Sprintf("%s:%d", dir, port),
		clientTLS:  clientTLS,
	})
	sock := filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(port))
	if p.srv.UnixSocket() != sock {
		t.Fatalf("socket %q, want %q", p.srv.UnixSocket(), sock)
	}
	if fi, err := os.Stat(sock); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o777 {
		t.Fatalf("socket file %s: %v %v, want a socket with mode 0777", sock, fi, err)
	}
	ctx := testCtx(t)

	t.Run("pgx", func(t *testing.T) {
		for _, u := range []struct{ user, password string }{
			{pgtest.SuperUser, ""},
			{pgtest.MD5User, pgtest.MD5Password},
			{pgtest.SCRAMUser, pgtest.SCRAMPassword},
		} {
			conn := connectDSN(t, unixDSN(dir, port, u.user, u.password))
			var who string
			var addr *string
			// inet_client_addr() is NULL on a socket: the proxy really reached Postgres's socket.
			if err := conn.QueryRow(ctx, "select current_user::text, inet_client_addr()::text").Scan(&who, &addr); err != nil {
				t.Fatalf("%s: %v", u.user, err)
			}
			if who != u.user || addr != nil {
				t.Fatalf("user %q client_addr %v, want %q and NULL (a socket)", who, addr, u.user)
			}
			var n int
			if err := conn.QueryRow(ctx, "select $1::int + 1", pgx.QueryExecModeCacheStatement, 41).Scan(&n); err != nil || n != 42 {
				t.Fatalf("extended query: %d %v", n, err)
			}
			if _, err := conn.Exec(ctx, "create temp table unix_copy(a int)"); err != nil {
				t.Fatal(err)
			}
			if tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("1\n2\n"), "copy unix_copy from stdin"); err != nil || tag.RowsAffected() != 2 {
				t.Fatalf("COPY FROM STDIN over the socket: %v %v", tag, err)
			}
		}
	})

	t.Run("cancel", func(t *testing.T) {
		// The CancelRequest arrives on the proxy's socket and leaves through Postgres's.
		conn := connectDSN(t, unixDSN(dir, port, pgtest.SuperUser, ""))
		cancelRunning(t, conn, "select pg_sleep(30)", pgx.QueryExecModeSimpleProtocol)
		var n int
		if err := conn.QueryRow(ctx, "select 1").Scan(&n); err != nil {
			t.Fatalf("connection unusable after cancel: %v", err)
		}
	})

	t.Run("lib/pq", func(t *testing.T) {
		db, err := sql.Open("postgres", fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s sslmode=disable",
			dir, port, pgtest.MD5User, pgtest.MD5Password, pgtest.TestDB))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var s string
		if err := db.QueryRowContext(ctx, "select $1::text || 'b'", "a").Scan(&s); err != nil || s != "ab" {
			t.Fatalf("lib/pq over the socket: %q %v", s, err)
		}
	})

	t.Run("psql", func(t *testing.T) {
		psql, err := pgtest.FindBin("psql")
		if err != nil {
			t.Skipf("psql not installed: %v", err)
		}
		cmd := exec.Command(psql, "-X", "-At", "-h", dir, "-p", strconv.Itoa(port), "-U", pgtest.SCRAMUser, "-d", pgtest.TestDB,
			"-c", "select 'over the socket: ' || current_user")
		cmd.Env = append(os.Environ(), "PGPASSWORD="+pgtest.SCRAMPassword)
		out, err := cmd.CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "over the socket: "+pgtest.SCRAMUser {
			t.Fatalf("psql: %v\n%s", err, out)
		}
	})

	t.Run("SSLRequest", func(t *testing.T) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var req [8]byte
		binary.BigEndian.PutUint32(req[0:], 8)
		binary.BigEndian.PutUint32(req[4:], 80877103)
		if _, err := c.Write(req[:]); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var b [1]byte
		if _, err := c.Read(b[:]); err != nil || b[0] != 'N' {
			t.Fatalf("answer to SSLRequest on the socket: %q %v, want 'N'", b[0], err)
		}
	})

	// Closing the proxy removes its socket, so the next start finds a clean directory.
	p.srv.Close()
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket %s left behind after close: %v", sock, err)
	}
}

// TestUnixSocketBothListeners serves TCP and a socket at once: the socket's file is named after
// the TCP port when the socket is given as a directory, and each listener serves sessions.
func TestUnixSocketBothListeners(t *testing.T) {
	dir := t.TempDir()
	addr := unusedLoopbackAddr(t)
	_, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	p := startProxy(t, proxyOpts{listen: addr, listenUnix: dir})
	if want := filepath.Join(dir, fmt.Sprintf(".s.PGSQL.%d", port)); p.srv.UnixSocket() != want {
		t.Fatalf("socket %q, want %q", p.srv.UnixSocket(), want)
	}
	ctx := testCtx(t)
	for _, dsn := range []string{p.dsn(pgtest.SuperUser, ""), unixDSN(dir, port, pgtest.SuperUser, "")} {
		conn := connectDSN(t, dsn)
		var n int
		if err := conn.QueryRow(ctx, "select 7").Scan(&n); err != nil || n != 7 {
			t.Fatalf("%s: %d %v", dsn, n, err)
		}
	}
}

// TestUnixSocketErrors checks each bad socket setting is refused with an error that names it,
// before any client is served.
func TestUnixSocketErrors(t *testing.T) {
	dir := t.TempDir()
	newServer := func(cfg proxy.Config) error {
		srv, err := proxy.New(cfg)
		if err != nil {
			return err
		}
		defer srv.Close()
		return srv.Listen()
	}
	plain := filepath.Join(dir, ".s.PGSQL.6501")
	if err := os.WriteFile(plain, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	live := filepath.Join(dir, ".s.PGSQL.6502")
	ln, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	up := proxy.Upstream{Addr: cluster.Addr(), SSLMode: proxy.SSLDisable}
	for _, c := range []struct {
		name string
		cfg  proxy.Config
		want string
	}{
		{"no listener", proxy.Config{Upstream: up}, "no client address"},
		{"relative socket", proxy.Config{Upstream: up, ListenUnix: "run/pgcanary"}, "want an absolute path"},
		{"directory without port", proxy.Config{Upstream: up, Listen: "127.0.0.1:0", ListenUnix: dir}, "say which port's socket"},
		{"bad port", proxy.Config{Upstream: up, ListenUnix: dir + ":99999"}, "port \"99999\""},
		{"path too long", proxy.Config{Upstream: up, ListenUnix: "/" + strings.Repeat("x", 120) + ":6432"}, "over the system's limit"},
		{"not a socket", proxy.Config{Upstream: up, ListenUnix: plain}, "is not a socket"},
		{"socket in use", proxy.Config{Upstream: up, ListenUnix: live}, "another process is listening"},
		{"TLS demanded on a socket", proxy.Config{Listen: "127.0.0.1:0",
			Upstream: proxy.Upstream{Addr: "/var/run/postgresql", SSLMode: proxy.SSLRequire}}, "sslmode require cannot be met"},
	} {
		err := newServer(c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}

	// A socket file whose process is gone is replaced, as Postgres replaces its own.
	stale := filepath.Join(dir, ".s.PGSQL.6500")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	p := startProxy(t, proxyOpts{listen: "none", listenUnix: stale})
	if p.srv.UnixSocket() != stale {
		t.Fatalf("socket %q, want %q", p.srv.UnixSocket(), stale)
	}
	conn := connectDSN(t, unixDSN(dir, 6500, pgtest.SuperUser, ""))
	if err := conn.Ping(testCtx(t)); err != nil {
		t.Fatalf("over the replaced socket: %v", err)
	}
}

// TestUnixUpstreamUnreachable: a socket with no server behind it fails the client's connect with
// 08001 naming the socket, as a TCP upstream does.
func TestUnixUpstreamUnreachable(t *testing.T) {
	missing := filepath.Join(t.TempDir(), ".s.PGSQL.5432")
	p := startProxy(t, proxyOpts{upstream: missing})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, p.dsn(pgtest.SuperUser, ""))
	pe := requirePgErr(t, err, "FATAL", "08001")
	if !strings.Contains(pe.Message, missing) {
		t.Fatalf("error %q does not name the socket %s", pe.Message, missing)
	}
}
