package pgtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Well-known users and the database created in every cluster.
const (
	// SuperUser is trusted over TCP from 127.0.0.1 (no password).
	SuperUser = "postgres"

	// MD5User authenticates with the md5 method; its password is stored as
	// an md5 hash so that the server can actually use md5.
	MD5User     = "md5user"
	MD5Password = "md5pass"

	// SCRAMUser authenticates with scram-sha-256.
	SCRAMUser     = "scramuser"
	SCRAMPassword = "scrampass"

	// ClearUser authenticates with the password (cleartext) method.
	ClearUser     = "clearuser"
	ClearPassword = "clearpass"

	// TLSOnlyUser may only connect over TLS (hostssl, scram-sha-256); a
	// hostnossl reject line refuses it in plain text. Only meaningful
	// when Options.TLS is set.
	TLSOnlyUser = "tlsuser"
	TLSPassword = "tlspass"

	// TestDB is owned by the superuser; every user may connect to it and
	// create objects in its public schema.
	TestDB = "pgcanary_test"
)

// EnvDSN names the environment variable that points the tests at an existing
// server instead of starting one; its value is a superuser DSN.
const EnvDSN = "PGCANARY_TEST_DSN"

const (
	// postgresOSUser runs initdb and the server when the tests run as
	// root, because PostgreSQL refuses to run as root.
	postgresOSUser = "postgres"

	logFileName  = "postgres.log"
	confFileName = "pgtest.conf"

	// startAttempts bounds retries when the free port we picked was taken
	// by someone else between probing it and the server binding it.
	startAttempts = 3

	// bootstrapLockKey serialises user/database creation between test
	// processes sharing one server (go test runs packages in parallel);
	// concurrent CREATE ROLE or GRANT otherwise fail with "already
	// exists" or "tuple concurrently updated". The value spells "pgcn".
	bootstrapLockKey int64 = 0x7067636e

	stopTimeout = time.Minute
)

// Options configures Start.
type Options struct {
	// TLS starts the server with ssl=on and a generated CA + server
	// certificate (CN/SAN localhost, 127.0.0.1).
	TLS bool
}

// Cluster is a running PostgreSQL server: a throwaway local cluster, or the
// external server named by PGCANARY_TEST_DSN.
type Cluster struct {
	Host    string // "127.0.0.1"
	Port    int
	DataDir string // empty when external
	CAFile  string // PEM of the CA that signed the server cert (TLS only)
	// CertFile and KeyFile are the server cert/key (TLS only). They are
	// valid for localhost and 127.0.0.1, so tests may reuse them as the
	// proxy's certificate for its client side.
	CertFile, KeyFile string
	Version           int  // server_version_num, e.g. 150018
	External          bool // true when PGCANARY_TEST_DSN was used

	tmpDir string          // root of everything Start created; removed by Stop
	pgCtl  string          // pg_ctl from the same installation as initdb
	run    runner          // runs PostgreSQL binaries, as the postgres OS user when root
	admin  *pgx.ConnConfig // superuser connection to TestDB, used by Exec

	stopMu  sync.Mutex
	stopped bool
}

// Start starts a throwaway cluster, or connects to PGCANARY_TEST_DSN when it
// is set. In both cases the well-known users and TestDB exist on return.
// Call Stop when done.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		return startExternal(ctx, dsn)
	}
	return startLocal(ctx, opts)
}

func startExternal(ctx context.Context, dsn string) (*Cluster, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", EnvDSN, err)
	}
	// Tests dial Addr() with plain TCP (for example to put the proxy in
	// front of the server), so a unix socket directory cannot work.
	if strings.HasPrefix(cfg.Host, "/") {
		return nil, fmt.Errorf("%s must name a TCP host, not the unix socket directory %q", EnvDSN, cfg.Host)
	}
	c := &Cluster{
		Host:     cfg.Host,
		Port:     int(cfg.Port),
		External: true,
	}
	version, err := bootstrap(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("prepare server from %s: %w", EnvDSN, err)
	}
	c.Version = version
	c.admin = cfg.Copy()
	c.admin.Database = TestDB
	return c, nil
}

func startLocal(ctx context.Context, opts Options) (_ *Cluster, err error) {
	initdb, err := FindBin("initdb")
	if err != nil {
		return nil, err
	}
	// pg_ctl must come from the same installation as initdb: a data
	// directory can only be run by the major version that created it.
	pgCtl, err := findSibling(initdb, "pg_ctl")
	if err != nil {
		return nil, err
	}
	run, err := newRunner()
	if err != nil {
		return nil, err
	}

	reapOrphans(ctx, run, pgCtl, tempBase(run.asRoot()))
	tmp, err := os.MkdirTemp(tempBase(run.asRoot()), "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("create temp dir: %w", err)
	}
	// The owner's pid lets a later run reap this cluster if the test process is killed (SIGKILL,
	// a fuzzer ending its workers, a CI timeout) before it can stop the server itself.
	if err := os.WriteFile(filepath.Join(tmp, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, fmt.Errorf("record owner: %w", err)
	}
	c := &Cluster{
		Host:    "127.0.0.1",
		DataDir: filepath.Join(tmp, "data"),
		tmpDir:  tmp,
		pgCtl:   pgCtl,
		run:     run,
	}
	logFile := filepath.Join(c.DataDir, logFileName)
	defer func() {
		if err == nil {
			return
		}
		// Read the log before cleanup removes it: it is usually the
		// only place that says why the server did not come up.
		err = fmt.Errorf("%w\n--- tail of %s ---\n%s", err, logFile, logTail(logFile))
		if stopErr := c.Stop(); stopErr != nil {
			err = errors.Join(err, stopErr)
		}
	}()

	// MkdirTemp made tmp 0700; when root, hand it to the postgres user so
	// that initdb can create the data directory inside it.
	if err := run.chown(tmp); err != nil {
		return nil, err
	}
	out, err := run.command(ctx, tmp, initdb,
		"-D", c.DataDir, "-A", "trust", "-U", SuperUser,
		"--no-sync", "-E", "UTF8", "--locale=C",
	).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}

	if opts.TLS {
		certDir := filepath.Join(tmp, "certs")
		c.CAFile, c.CertFile, c.KeyFile, err = GenerateCerts(certDir)
		if err != nil {
			return nil, err
		}
		// The server refuses a key it does not own (unless owned by
		// root with mode 0640), so it must belong to the postgres user.
		if err := run.chownTree(certDir); err != nil {
			return nil, err
		}
	}

	if err := run.writeFile(filepath.Join(c.DataDir, "pg_hba.conf"), []byte(hbaConf())); err != nil {
		return nil, err
	}
	// Our settings live in their own file, included at the end of
	// postgresql.conf so that they override initdb's defaults; only that
	// file is rewritten when a start is retried on another port.
	if err := appendFile(filepath.Join(c.DataDir, "postgresql.conf"), "\ninclude '"+confFileName+"'\n"); err != nil {
		return nil, err
	}

	for attempt := 1; ; attempt++ {
		port, err := freePort(ctx)
		if err != nil {
			return nil, err
		}
		c.Port = port
		if err := run.writeFile(filepath.Join(c.DataDir, confFileName), []byte(serverConf(c, opts))); err != nil {
			return nil, err
		}
		logStart := fileSize(logFile)
		out, err := run.command(ctx, tmp, pgCtl,
			"start", "-w", "-t", "60", "-D", c.DataDir, "-l", logFile,
		).CombinedOutput()
		if err == nil {
			break
		}
		if attempt < startAttempts && portTaken(logFile, logStart) {
			continue
		}
		return nil, fmt.Errorf("pg_ctl start: %w\n%s", err, out)
	}

	superCfg, err := pgx.ParseConfig(c.DSN(SuperUser, ""))
	if err != nil {
		return nil, fmt.Errorf("parse superuser DSN: %w", err)
	}
	c.admin = superCfg.Copy()
	maintCfg := superCfg.Copy()
	maintCfg.Database = "postgres"
	if err := waitReady(ctx, maintCfg); err != nil {
		return nil, err
	}
	if c.Version, err = bootstrap(ctx, maintCfg); err != nil {
		return nil, err
	}
	return c, nil
}

// Stop stops the cluster (pg_ctl stop -m immediate) and removes its
// temporary directory. It is a no-op for an external server and safe to call
// more than once. If the server cannot be stopped the directory is kept, so
// that it can be inspected and stopped by hand.
func (c *Cluster) Stop() error {
	if c.External {
		return nil
	}
	c.stopMu.Lock()
	defer c.stopMu.Unlock()
	if c.stopped || c.tmpDir == "" {
		return nil
	}
	// No postmaster.pid means no server was started (or it already
	// exited): pg_ctl stop would fail, and there is nothing to stop.
	if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		out, err := c.run.command(ctx, c.tmpDir, c.pgCtl,
			"stop", "-w", "-m", "immediate", "-D", c.DataDir,
		).CombinedOutput()
		if err != nil {
			return fmt.Errorf("pg_ctl stop (data directory %s kept): %w\n%s", c.DataDir, err, out)
		}
	}
	if err := os.RemoveAll(c.tmpDir); err != nil {
		return fmt.Errorf("remove %s: %w", c.tmpDir, err)
	}
	c.stopped = true
	return nil
}

// SocketDir is the directory of the server's Unix socket (.s.PGSQL.<Port>); "" for an external
// server, whose socket the harness does not know.
func (c *Cluster) SocketDir() string {
	if c.External {
		return ""
	}
	return c.tmpDir
}

// Addr returns "host:port" of the server, e.g. "127.0.0.1:54321".
func (c *Cluster) Addr() string {
	return net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
}

// DSN returns a URL connecting to TestDB on the server as user, without TLS:
// "postgres://user:pass@127.0.0.1:PORT/pgcanary_test?sslmode=disable".
func (c *Cluster) DSN(user, password string) string {
	return c.ConnString(c.Addr(), user, password)
}

// ConnString is DSN for another host:port, typically the proxy in front of
// the server.
func (c *Cluster) ConnString(addr, user, password string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     addr,
		Path:     "/" + TestDB,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// DatabaseDSN is DSN for database db instead of TestDB.
func (c *Cluster) DatabaseDSN(db, user, password string) string {
	return strings.Replace(c.DSN(user, password), "/"+TestDB+"?", "/"+url.PathEscape(db)+"?", 1)
}

// CreateDatabase makes a fresh database db (dropping one left behind), dropped again when the
// test ends.
func (c *Cluster) CreateDatabase(t testing.TB, db string) {
	t.Helper()
	ctx := context.Background()
	_ = c.Exec(ctx, "drop database if exists "+db+" with (force)")
	if err := c.Exec(ctx, "create database "+db); err != nil {
		t.Fatalf("create database %s: %v", db, err)
	}
	t.Cleanup(func() { _ = c.Exec(context.Background(), "drop database if exists "+db+" with (force)") })
}

// Exec runs sql (which may hold several statements) as SuperUser in TestDB.
// For an external server it runs as the user of PGCANARY_TEST_DSN.
func (c *Cluster) Exec(ctx context.Context, sql string) error {
	cfg := c.admin
	if cfg == nil {
		var err error
		if cfg, err = pgx.ParseConfig(c.DSN(SuperUser, "")); err != nil {
			return fmt.Errorf("parse superuser DSN: %w", err)
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
	if err != nil {
		return fmt.Errorf("connect as superuser: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	// Without arguments pgx uses the simple protocol, which is what
	// allows several statements in one string.
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	return nil
}

// RunMain is for TestMain: it starts a cluster (or fails the process with a
// clear message), stores it in *dst, runs m.Run(), stops the cluster and
// exits with the tests' code. An interrupt (Ctrl-C) or SIGTERM also stops the
// cluster before exiting.
func RunMain(m *testing.M, opts Options, dst **Cluster) {
	os.Exit(Run(m, opts, dst))
}

// Run is RunMain without the exit: it returns the exit code, for a TestMain with its own cleanup.
func Run(m *testing.M, opts Options, dst **Cluster) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := Start(ctx, opts)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: cannot start PostgreSQL for the tests: %v\n\n"+
			"Install PostgreSQL with scripts/ensure-postgres.sh, or set %s to the superuser DSN of an existing server.\n",
			err, EnvDSN)
		return 1
	}
	*dst = c

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	defer func() {
		signal.Stop(sigs)
		close(done)
	}()
	go func() {
		select {
		case s := <-sigs:
			// Without this an interrupted test run leaves the server
			// running and its directory behind.
			if err := c.Stop(); err != nil {
				fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
			}
			fmt.Fprintf(os.Stderr, "pgtest: %v: stopped PostgreSQL\n", s)
			os.Exit(1)
		case <-done:
		}
	}()

	code := m.Run()
	if err := c.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// FindBin finds a PostgreSQL program (initdb, pg_ctl, postgres, pgbench,
// psql): PATH first, then /usr/lib/postgresql/*/bin of the highest version
// (where Debian and Ubuntu install the server, off PATH).
func FindBin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	matches, err := filepath.Glob(filepath.Join("/usr/lib/postgresql", "*", "bin", name))
	if err != nil {
		return "", fmt.Errorf("find %s: %w", name, err)
	}
	sort.Slice(matches, func(i, j int) bool {
		return versionLess(versionDir(matches[j]), versionDir(matches[i]))
	})
	for _, m := range matches {
		if isExecutable(m) {
			return m, nil
		}
	}
	return "", fmt.Errorf("%s not found on PATH or in /usr/lib/postgresql/*/bin (run scripts/ensure-postgres.sh, or set %s): %w",
		name, EnvDSN, exec.ErrNotFound)
}

// findSibling looks for name next to bin (after resolving symlinks such as
// /usr/local/bin/initdb -> /usr/lib/postgresql/15/bin/initdb), then falls
// back to FindBin.
func findSibling(bin, name string) (string, error) {
	if resolved, err := filepath.EvalSymlinks(bin); err == nil {
		p := filepath.Join(filepath.Dir(resolved), name)
		if isExecutable(p) {
			return p, nil
		}
	}
	return FindBin(name)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// versionDir returns "15" for /usr/lib/postgresql/15/bin/initdb.
func versionDir(binPath string) string {
	return filepath.Base(filepath.Dir(filepath.Dir(binPath)))
}

// versionLess compares dotted versions numerically ("9.6" < "15").
func versionLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		ai, aerr := strconv.Atoi(as[i])
		bi, berr := strconv.Atoi(bs[i])
		if aerr != nil || berr != nil {
			if as[i] != bs[i] {
				return as[i] < bs[i]
			}
			continue
		}
		if ai != bi {
			return ai < bi
		}
	}
	return len(as) < len(bs)
}

// tempBase picks the parent of the cluster's temporary directory. The unix
// socket lives there too, and socket paths are limited to 107 bytes, so a
// long TMPDIR is not usable. As root, the postgres user must be able to
// traverse every parent, which only /tmp reliably allows.
func tempBase(asRoot bool) string {
	base := os.TempDir()
	if asRoot || len(base) > 60 {
		return "/tmp"
	}
	return base
}

func hbaConf() string {
	// First match wins: the per-user lines must precede the final
	// catch-all trust line.
	return strings.Join([]string{
		"# Written by pgcanary's test/pgtest; first matching line wins.",
		"local     all  " + MD5User + "       md5",
		"local     all  " + SCRAMUser + "     scram-sha-256",
		"local     all  all           trust",
		"host      all  " + SuperUser + "      127.0.0.1/32  trust",
		"hostnossl all  " + TLSOnlyUser + "       127.0.0.1/32  reject",
		"hostssl   all  " + TLSOnlyUser + "       127.0.0.1/32  scram-sha-256",
		"host      all  " + MD5User + "       127.0.0.1/32  md5",
		"host      all  " + SCRAMUser + "     127.0.0.1/32  scram-sha-256",
		"host      all  " + ClearUser + "     127.0.0.1/32  password",
		"host      all  all           127.0.0.1/32  trust",
		"",
	}, "\n")
}

func serverConf(c *Cluster, opts Options) string {
	var b strings.Builder
	set := func(name, value string) { fmt.Fprintf(&b, "%s = %s\n", name, value) }
	b.WriteString("# Written by pgcanary's test/pgtest.\n")
	set("listen_addresses", confQuote(c.Host))
	set("port", strconv.Itoa(c.Port))
	// The socket goes in our own directory so that clusters never clash
	// with each other or with a system server's /var/run/postgresql.
	set("unix_socket_directories", confQuote(c.tmpDir))
	// Durability is worthless for a throwaway cluster; speed is not.
	set("fsync", "off")
	set("synchronous_commit", "off")
	set("full_page_writes", "off")
	set("max_connections", "200")
	set("shared_buffers", "128MB")
	// pg_ctl -l captures stderr into the log file in the data directory.
	set("logging_collector", "off")
	// Since PostgreSQL 14 this logs the auth method each connection used,
	// which is what one wants to know when a proxy auth test fails.
	set("log_connections", "on")
	if opts.TLS {
		set("ssl", "on")
		set("ssl_cert_file", confQuote(c.CertFile))
		set("ssl_key_file", confQuote(c.KeyFile))
	}
	return b.String()
}

// confQuote quotes a string value for postgresql.conf.
func confQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// quoteLiteral quotes a SQL string literal (standard_conforming_strings is on
// in every supported version). CREATE ROLE ... PASSWORD takes no parameters.
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

func freePort(ctx context.Context) (int, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	return port, nil
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// portTaken reports whether the log written since offset says the server
// could not bind its port.
func portTaken(logFile string, offset int64) bool {
	f, err := os.Open(logFile)
	if err != nil {
		return false
	}
	defer f.Close()
	data, err := io.ReadAll(io.NewSectionReader(f, offset, 1<<20))
	if err != nil {
		return false
	}
	s := string(data)
	return strings.Contains(s, "could not bind") || strings.Contains(s, "Address already in use")
}

// logTail returns about the last 40 lines of the server log.
func logTail(path string) string {
	const maxBytes, maxLines = 8 << 10, 40
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no server log: %v)", err)
	}
	defer f.Close()
	size := fileSize(path)
	off := max(size-maxBytes, 0)
	data, err := io.ReadAll(io.NewSectionReader(f, off, size-off))
	if err != nil {
		return fmt.Sprintf("(cannot read server log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	return strings.Join(lines, "\n")
}

func appendFile(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return fmt.Errorf("append to %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

// waitReady waits until the server accepts TCP connections. pg_ctl -w only
// checks the unix socket, and the tests use TCP.
func waitReady(ctx context.Context, cfg *pgx.ConnConfig) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
		if err == nil {
			return conn.Close(ctx)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for server on %s: %w", net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

type testRole struct {
	name, password string
	// encryption is the password_encryption in effect when the password
	// is set: the md5 method needs an md5 hash, the others work with
	// SCRAM verifiers (cleartext "password" auth included).
	encryption string
}

func testRoles() []testRole {
	return []testRole{
		{MD5User, MD5Password, "md5"},
		{SCRAMUser, SCRAMPassword, "scram-sha-256"},
		{ClearUser, ClearPassword, "scram-sha-256"},
		{TLSOnlyUser, TLSPassword, "scram-sha-256"},
	}
}

// bootstrap creates the well-known users and TestDB through cfg (a superuser
// connection to a maintenance database) and returns server_version_num. It
// is idempotent: existing users get their password reset, an existing
// database is kept.
func bootstrap(ctx context.Context, cfg *pgx.ConnConfig) (int, error) {
	conn, err := pgx.ConnectConfig(ctx, cfg.Copy())
	if err != nil {
		return 0, fmt.Errorf("connect as superuser: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var super bool
	if err := conn.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user").Scan(&super); err != nil {
		return 0, fmt.Errorf("check superuser: %w", err)
	}
	if !super {
		return 0, fmt.Errorf("user %q is not a superuser", cfg.User)
	}
	// Session-level lock, released when conn closes.
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", bootstrapLockKey); err != nil {
		return 0, fmt.Errorf("take bootstrap lock: %w", err)
	}

	for _, r := range testRoles() {
		if _, err := conn.Exec(ctx, "SET password_encryption = "+quoteLiteral(r.encryption)); err != nil {
			return 0, fmt.Errorf("set password_encryption for %s: %w", r.name, err)
		}
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", r.name).Scan(&exists); err != nil {
			return 0, fmt.Errorf("look up role %s: %w", r.name, err)
		}
		verb := "CREATE"
		if exists {
			verb = "ALTER"
		}
		sql := fmt.Sprintf("%s ROLE %s LOGIN PASSWORD %s", verb, pgx.Identifier{r.name}.Sanitize(), quoteLiteral(r.password))
		if _, err := conn.Exec(ctx, sql); err != nil && !isCode(err, "42710") { // duplicate_object
			return 0, fmt.Errorf("%s role %s: %w", strings.ToLower(verb), r.name, err)
		}
	}
	if _, err := conn.Exec(ctx, "RESET password_encryption"); err != nil {
		return 0, fmt.Errorf("reset password_encryption: %w", err)
	}

	db := pgx.Identifier{TestDB}.Sanitize()
	var dbExists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", TestDB).Scan(&dbExists); err != nil {
		return 0, fmt.Errorf("look up database %s: %w", TestDB, err)
	}
	if !dbExists {
		// Owned by the connecting superuser: "postgres" for local
		// clusters, whoever PGCANARY_TEST_DSN names otherwise.
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+db); err != nil && !isCode(err, "42P04") { // duplicate_database
			return 0, fmt.Errorf("create database %s: %w", TestDB, err)
		}
	}
	if _, err := conn.Exec(ctx, "GRANT ALL ON DATABASE "+db+" TO PUBLIC"); err != nil {
		return 0, fmt.Errorf("grant on database %s: %w", TestDB, err)
	}

	var versionText string
	if err := conn.QueryRow(ctx, "SHOW server_version_num").Scan(&versionText); err != nil {
		return 0, fmt.Errorf("query server_version_num: %w", err)
	}
	version, err := strconv.Atoi(versionText)
	if err != nil {
		return 0, fmt.Errorf("parse server_version_num %q: %w", versionText, err)
	}

	// Since PostgreSQL 15 only the database owner may create in public;
	// the grant has to be made from inside the database.
	dbCfg := cfg.Copy()
	dbCfg.Database = TestDB
	dbConn, err := pgx.ConnectConfig(ctx, dbCfg)
	if err != nil {
		return 0, fmt.Errorf("connect to %s: %w", TestDB, err)
	}
	defer dbConn.Close(context.WithoutCancel(ctx))
	if _, err := dbConn.Exec(ctx, "GRANT ALL ON SCHEMA public TO PUBLIC"); err != nil {
		return 0, fmt.Errorf("grant on schema public: %w", err)
	}
	return version, nil
}

func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// runner runs PostgreSQL programs. initdb, pg_ctl and postgres refuse to run
// as root, so when the tests are root they run as the postgres OS user and
// the files they need are handed to that user.
type runner struct {
	runuser string // path of runuser, preferred when root
	su      string // path of su, the fallback when runuser is missing
	uid     int    // owner for files we create; -1 when not root
	gid     int
}

func newRunner() (runner, error) {
	if os.Geteuid() != 0 {
		return runner{uid: -1, gid: -1}, nil
	}
	u, err := user.Lookup(postgresOSUser)
	if err != nil {
		return runner{}, fmt.Errorf("running as root needs an OS user %q to run PostgreSQL (initdb refuses root); install PostgreSQL with scripts/ensure-postgres.sh or run the tests as another user: %w",
			postgresOSUser, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return runner{}, fmt.Errorf("uid of %s: %w", postgresOSUser, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return runner{}, fmt.Errorf("gid of %s: %w", postgresOSUser, err)
	}
	r := runner{uid: uid, gid: gid}
	if p, err := exec.LookPath("runuser"); err == nil {
		r.runuser = p
	} else if p, err := exec.LookPath("su"); err == nil {
		r.su = p
	} else {
		return runner{}, fmt.Errorf("running as root needs runuser or su to switch to the %s user: %w", postgresOSUser, err)
	}
	return r, nil
}

func (r runner) asRoot() bool { return r.uid >= 0 }

// command builds the command for name with args, run in dir (which must be
// accessible to the postgres user: the test's working directory may not be).
func (r runner) command(ctx context.Context, dir, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	switch {
	case r.runuser != "":
		cmd = exec.CommandContext(ctx, r.runuser, append([]string{"-u", postgresOSUser, "--", name}, args...)...)
	case r.su != "":
		cmd = exec.CommandContext(ctx, r.su, "-s", "/bin/sh", postgresOSUser, "-c", shellJoin(append([]string{name}, args...)))
	default:
		cmd = exec.CommandContext(ctx, name, args...)
	}
	cmd.Dir = dir
	// pg_ctl start leaves the server running; should it ever inherit our
	// output pipes, do not wait for it to close them.
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// writeFile writes a file the server reads, owned by the postgres user when
// root. An existing file keeps its owner.
func (r runner) writeFile(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return r.chown(path)
}

func (r runner) chown(path string) error {
	if !r.asRoot() {
		return nil
	}
	if err := os.Lchown(path, r.uid, r.gid); err != nil {
		return fmt.Errorf("chown %s to %s: %w", path, postgresOSUser, err)
	}
	return nil
}

func (r runner) chownTree(root string) error {
	if !r.asRoot() {
		return nil
	}
	err := filepath.WalkDir(root, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return r.chown(path)
	})
	if err != nil {
		return fmt.Errorf("chown %s: %w", root, err)
	}
	return nil
}

// shellJoin quotes args for sh -c (used with su, which takes one string).
func shellJoin(args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(quoted, " ")
}

// ownerFile, in a cluster's temp dir, holds the pid of the test process that started it.
const ownerFile = "owner.pid"

// reapOrphans stops and removes clusters whose owning test process no longer exists. Machines are
// reused between runs, and a killed test process cannot clean up after itself.
func reapOrphans(ctx context.Context, run runner, pgCtl, base string) {
	dirs, _ := filepath.Glob(filepath.Join(base, "pgtest-*"))
	for _, dir := range dirs {
		raw, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue // not ours, or still being created
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		data := filepath.Join(dir, "data")
		if _, err := os.Stat(filepath.Join(data, "postmaster.pid")); err == nil {
			_ = run.command(ctx, dir, pgCtl, "stop", "-D", data, "-m", "immediate", "-w").Run()
		}
		_ = os.RemoveAll(dir)
	}
}

// processAlive reports whether pid names a running process (signal 0 checks without sending). A
// zombie, killed but not yet reaped by its parent, counts as gone.
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // no /proc: trust the signal check
	}
	// Fields after the command name, which is in parentheses and may hold spaces: "<pid> (<comm>) <state> ..."
	if i := strings.LastIndexByte(string(stat), ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z'
	}
	return true
}
