package e2e

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// TestSearchPathTracking: the proxy plans with the session's search_path as Postgres scopes it
// (SET, SET LOCAL, RESET, DISCARD ALL, rolled-back SETs, database defaults), so an unqualified
// name that means another schema's table is never rewritten to the migration's new shape.
func TestSearchPathTracking(t *testing.T) {
	ff := newFlagFile(t)
	// The proxy learns which schemas hold a relation named like a migrated one when it loads its
	// configuration.
	p, dsn := migratedProxyWith(t, "search_path", proxyOpts{flags: ff.src, setupSQL: `create schema app;
		create table app.users (id int primary key, full_name text);
		insert into app.users values (2, 'app schema row')`})
	ff.set(100)
	ctx := testCtx(t)
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
	const public = "Grace Brewster Hopper"
	const app = "app schema row"
	check := func(c *pgx.Conn, step, want string, mode pgx.QueryExecMode) {
		t.Helper()
		var name string
		if err := c.QueryRow(ctx, "SELECT full_name FROM users WHERE id = $1", mode, 2).Scan(&name); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if name != want {
			t.Fatalf("%s: read %q, want %q", step, name, want)
		}
	}
	exec := func(c *pgx.Conn, sql string, mode pgx.QueryExecMode) {
		t.Helper()
		if _, err := c.Exec(ctx, sql, mode); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		check(conn, "default path", public, mode)
		_, newBefore := routeCounts(t, p)
		exec(conn, "SET search_path TO app, public", mode)
		check(conn, "after SET", app, mode)
		if _, newAfter := routeCounts(t, p); newAfter != newBefore {
			t.Fatalf("a read of app.users was routed to the new shape")
		}
		exec(conn, "RESET search_path", mode)
		check(conn, "after RESET", public, mode)

		exec(conn, "BEGIN", mode)
		exec(conn, "SET LOCAL search_path TO app", mode)
		check(conn, "SET LOCAL in the transaction", app, mode)
		exec(conn, "COMMIT", mode)
		check(conn, "after the transaction with SET LOCAL", public, mode)

		exec(conn, "BEGIN", mode)
		exec(conn, "SET search_path TO app", mode)
		check(conn, "SET in the transaction", app, mode)
		exec(conn, "ROLLBACK", mode)
		check(conn, "after ROLLBACK of SET", public, mode)

		exec(conn, "SET search_path TO app", mode)
		exec(conn, "DISCARD ALL", pgx.QueryExecModeSimpleProtocol)
		check(conn, "after DISCARD ALL", public, mode)
	}

	// A database default applies at startup.
	direct := connectDSN(t, cluster.DSN(pgtest.SuperUser, ""))
	if _, err := direct.Exec(ctx, "ALTER DATABASE search_path SET search_path = app, public"); err != nil {
		t.Fatal(err)
	}
	fresh := connectDSN(t, dsn(pgtest.SuperUser, ""))
	check(fresh, "database default", app, pgx.QueryExecModeSimpleProtocol)
	exec(fresh, "SET search_path TO public", pgx.QueryExecModeSimpleProtocol)
	check(fresh, "after SET over the default", public, pgx.QueryExecModeSimpleProtocol)
	exec(fresh, "RESET search_path", pgx.QueryExecModeSimpleProtocol)
	check(fresh, "RESET returns to the database default", app, pgx.QueryExecModeSimpleProtocol)
}

// TestOtherDatabaseUntouched: a migration lives in one database; a session of another database
// with a table of the same name is relayed untouched (reads not routed, writes not mirrored).
func TestOtherDatabaseUntouched(t *testing.T) {
	ff := newFlagFile(t)
	p, _ := migratedProxyWith(t, "db_scoped", proxyOpts{flags: ff.src})
	ff.set(100)
	ctx := testCtx(t)
	// The proxy's own DSN points at the harness's default database, not db_scoped.
	conn := connectDSN(t, p.dsn(pgtest.SuperUser, ""))
	if _, err := conn.Exec(ctx, `drop table if exists users; create table users (id int primary key, full_name text);
		insert into users values (2, 'other database')`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "drop table if exists users") })
	var name string
	if err := conn.QueryRow(ctx, "SELECT full_name FROM users WHERE id = $1", 2).Scan(&name); err != nil || name != "other database" {
		t.Fatalf("read %q %v", name, err)
	}
	if _, err := conn.Exec(ctx, "UPDATE users SET full_name = 'x' WHERE id = 2"); err != nil {
		t.Fatalf("a write in another database was mirrored: %v", err)
	}
	if old, new := routeCounts(t, p); old+new != 0 {
		t.Fatalf("reads in another database were routed: old %v new %v", old, new)
	}
}
