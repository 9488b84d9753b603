package pgtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestCluster(t *testing.T) {
	c, err := Start(t.Context(), Options{TLS: true})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			if err := c.Stop(); err != nil {
				t.Errorf("Stop: %v", err)
			}
		}
	})
	t.Logf("server %s, version %d, external %v", c.Addr(), c.Version, c.External)
	if c.Version < 100000 {
		t.Errorf("Version = %d, want a server_version_num such as 150018", c.Version)
	}

	for _, u := range []struct{ user, password string }{
		{SuperUser, ""},
		{MD5User, MD5Password},
		{SCRAMUser, SCRAMPassword},
		{ClearUser, ClearPassword},
	} {
		t.Run("login/"+u.user, func(t *testing.T) {
			conn := connect(t, c.DSN(u.user, u.password))
			// Every user may create in TestDB's public schema.
			table := pgx.Identifier{"pgtest_" + u.user}.Sanitize()
			if _, err := conn.Exec(t.Context(), "DROP TABLE IF EXISTS "+table+"; CREATE TABLE "+table+" (i int); DROP TABLE "+table); err != nil {
				t.Errorf("create table as %s: %v", u.user, err)
			}
		})
	}

	t.Run("wrong password refused", func(t *testing.T) {
		if c.External {
			t.Skip("pg_hba.conf of an external server is not ours")
		}
		for _, user := range []string{MD5User, SCRAMUser, ClearUser} {
			err := tryConnect(t, c.DSN(user, "wrong"))
			if !isCode(err, "28P01") { // invalid_password
				t.Errorf("%s with a wrong password: err = %v, want SQLSTATE 28P01", user, err)
			}
		}
	})

	t.Run("md5 password stored as md5", func(t *testing.T) {
		conn := connect(t, c.DSN(SuperUser, ""))
		var hash string
		if err := conn.QueryRow(t.Context(), "SELECT rolpassword FROM pg_authid WHERE rolname = $1", MD5User).Scan(&hash); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(hash, "md5") {
			t.Errorf("%s password stored as %.10q..., want an md5 hash", MD5User, hash)
		}
	})

	t.Run("Exec", func(t *testing.T) {
		if err := c.Exec(t.Context(), "CREATE TABLE pgtest_exec (i int); INSERT INTO pgtest_exec VALUES (1); DROP TABLE pgtest_exec"); err != nil {
			t.Errorf("Exec: %v", err)
		}
		if err := c.Exec(t.Context(), "SELECT * FROM no_such_table"); !isCode(err, "42P01") {
			t.Errorf("Exec of a bad query: err = %v, want SQLSTATE 42P01", err)
		}
	})

	t.Run("tlsuser over verified TLS", func(t *testing.T) {
		if c.CAFile == "" {
			t.Skip("no CA file (external server)")
		}
		dsn := strings.Replace(c.DSN(TLSOnlyUser, TLSPassword), "sslmode=disable",
			"sslmode=verify-full&sslrootcert="+url.QueryEscape(c.CAFile), 1)
		conn := connect(t, dsn)
		var ssl bool
		if err := conn.QueryRow(t.Context(), "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&ssl); err != nil {
			t.Fatal(err)
		}
		if !ssl {
			t.Error("pg_stat_ssl says the connection is not encrypted")
		}
	})

	t.Run("tlsuser refused without TLS", func(t *testing.T) {
		if c.External {
			t.Skip("pg_hba.conf of an external server is not ours")
		}
		err := tryConnect(t, c.DSN(TLSOnlyUser, TLSPassword))
		if !isCode(err, "28000") { // invalid_authorization_specification: pg_hba.conf reject
			t.Errorf("tlsuser without TLS: err = %v, want SQLSTATE 28000", err)
		}
	})

	t.Run("ConnString", func(t *testing.T) {
		// Pointing ConnString at the server's own address must work, as it
		// does for the proxy's address.
		connect(t, c.ConnString(c.Addr(), SCRAMUser, SCRAMPassword))
	})

	if c.External {
		return
	}

	t.Run("auth methods used", func(t *testing.T) {
		if c.Version < 140000 {
			t.Skip("the method is logged since PostgreSQL 14")
		}
		log, err := os.ReadFile(filepath.Join(c.DataDir, logFileName))
		if err != nil {
			t.Fatal(err)
		}
		for user, method := range map[string]string{
			MD5User:     "md5",
			SCRAMUser:   "scram-sha-256",
			ClearUser:   "password",
			TLSOnlyUser: "scram-sha-256",
		} {
			if want := `identity="` + user + `" method=` + method + " "; !strings.Contains(string(log), want) {
				t.Errorf("server log has no %q", want)
			}
		}
	})

	dataDir := c.DataDir
	if _, err := os.Stat(filepath.Join(dataDir, "PG_VERSION")); err != nil {
		t.Fatalf("data dir before Stop: %v", err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	stopped = true
	if _, err := os.Stat(dataDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data dir after Stop: err = %v, want not exist", err)
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := tryConnect(t, c.DSN(SuperUser, "")); err == nil {
		t.Error("server still accepts connections after Stop")
	}
}

func TestDSN(t *testing.T) {
	c := &Cluster{Host: "127.0.0.1", Port: 54321}
	if got, want := c.Addr(), "127.0.0.1:54321"; got != want {
		t.Errorf("Addr() = %q, want %q", got, want)
	}
	if got, want := c.DSN(MD5User, MD5Password), "postgres://md5user:md5pass@127.0.0.1:54321/pgcanary_test?sslmode=disable"; got != want {
		t.Errorf("DSN() = %q, want %q", got, want)
	}
	// Characters that mean something in a URL must survive the round trip.
	const user, password = "we@ird:user", "p@ss/w:rd?#%"
	cfg, err := pgx.ParseConfig(c.ConnString("localhost:6432", user, password))
	if err != nil {
		t.Fatalf("ParseConfig: %v", err)
	}
	if cfg.Host != "localhost" || cfg.Port != 6432 || cfg.User != user || cfg.Password != password || cfg.Database != TestDB || cfg.TLSConfig != nil {
		t.Errorf("ConnString parsed as host=%q port=%d user=%q password=%q db=%q tls=%v",
			cfg.Host, cfg.Port, cfg.User, cfg.Password, cfg.Database, cfg.TLSConfig != nil)
	}
}

func TestGenerateCerts(t *testing.T) {
	caFile, certFile, keyFile, err := GenerateCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("key file: %v, mode %v, want 0600", err, fi.Mode().Perm())
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatalf("LoadX509KeyPair: %v", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA file holds no certificate")
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"localhost", "127.0.0.1", "::1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
}

func TestVersionLess(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"9.6", "15", true},
		{"15", "9.6", false},
		{"15", "16", true},
		{"16", "16", false},
		{"10", "9", false},
	} {
		if got := versionLess(tc.a, tc.b); got != tc.want {
			t.Errorf("versionLess(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", redact(dsn), err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	if err := conn.Ping(t.Context()); err != nil {
		t.Fatalf("ping: %v", err)
	}
	return conn
}

// tryConnect connects and disconnects, returning the connection error.
func tryConnect(t *testing.T, dsn string) error {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		return err
	}
	conn.Close(context.Background())
	return nil
}

func redact(dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		return "(unparsable DSN)"
	}
	return u.Redacted()
}

// TestReapsOrphans: a cluster directory whose owning test process is gone (killed before it could
// stop its server) is removed by the next Start.
func TestReapsOrphans(t *testing.T) {
	if os.Getenv(EnvDSN) != "" {
		t.Skip("external server: no local clusters to reap")
	}
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	asRoot := os.Geteuid() == 0
	orphan, err := os.MkdirTemp(tempBase(asRoot), "pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(orphan, ownerFile), []byte(strconv.Itoa(dead.Process.Pid)), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := Start(context.Background(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatalf("orphan %s still there (%v)", orphan, err)
	}
	if _, err := os.Stat(c.DataDir); err != nil {
		t.Fatalf("the new cluster's own dir was reaped: %v", err)
	}
}
