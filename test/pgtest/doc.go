// Package pgtest starts throwaway PostgreSQL clusters for tests, or uses PGCANARY_TEST_DSN.
//
// # Local clusters
//
// [Start] runs initdb into a fresh temporary directory, writes a
// postgresql.conf tuned for tests (fsync off, 127.0.0.1 only, a free port
// chosen at start) and a pg_hba.conf written from scratch, starts the server
// with pg_ctl and creates the well-known users ([MD5User], [SCRAMUser],
// [ClearUser], [TLSOnlyUser]) and the database [TestDB]. Every user may
// connect to [TestDB] and create objects in its public schema. The server
// log, with log_connections on (it names the auth method of each connection),
// is postgres.log in [Cluster.DataDir]; when Start fails, its error ends with
// the tail of that log.
//
// initdb and pg_ctl refuse to run as root. When the test process is root (as
// in CI), they are run as the "postgres" OS user via runuser (or su), and the
// temporary directory is owned by that user. The binaries are located with
// [FindBin]: PATH first, then the highest /usr/lib/postgresql/*/bin. Run
// scripts/ensure-postgres.sh to install PostgreSQL if none is found.
//
// Use [RunMain] from TestMain to share one cluster between the tests of a
// package:
//
//	var cluster *pgtest.Cluster
//
//	func TestMain(m *testing.M) { pgtest.RunMain(m, pgtest.Options{}, &cluster) }
//
// A cluster whose test process is killed with SIGKILL keeps running; it uses
// a directory named pgtest-* under the temporary directory and can be
// stopped with "pg_ctl stop -D <dir>/data".
//
// # External servers
//
// When PGCANARY_TEST_DSN is set (for example
// "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"), no cluster
// is started: [Start] connects with that DSN, which must be a superuser on a
// TCP host, creates the users and [TestDB] if they are missing (and resets
// the users' passwords so they match the constants), and [Cluster.Stop] does
// nothing. [Cluster.Exec] then runs as the DSN's user rather than [SuperUser].
//
// pg_hba.conf of an external server is not under our control, so the
// authentication methods described on the user constants only hold if the
// server's administrator configured matching lines. Options.TLS does not
// configure the external server either; CAFile, CertFile and KeyFile stay
// empty, and tests that need them should skip when [Cluster.External] is set.
package pgtest
