package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

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
	_ = cluster.Exec(context.Background(), "drop role if exists pgc_tenant_r")
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "drop role if exists pgc_tenant_r") })
	p, dsn := migratedProxyWith(t, "search_path", proxyOpts{flags: ff.src, setupSQL: `create schema app;
		create table app.users (id int primary key, full_name text);
		insert into app.users values (2, 'app schema row');
		create role pgc_tenant_r;
		create schema pgc_tenant_r;
		create table pgc_tenant_r.users (id int primary key, full_name text);
		insert into pgc_tenant_r.users values (2, 'role schema row');
		grant usage on schema pgc_tenant_r, public to pgc_tenant_r;
		grant select on pgc_tenant_r.users, public.users, public.users_v2 to pgc_tenant_r`})
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

		// set_config with constant arguments is followed like SET.
		exec(conn, "SELECT set_config('search_path', 'app, public', false)", mode)
		check(conn, "after set_config", app, mode)
		exec(conn, "SELECT pg_catalog.set_config('search_path', 'public', false)", mode)
		check(conn, "after set_config back", public, mode)

		// A savepoint scopes the SETs after it: ROLLBACK TO undoes them, RELEASE keeps them.
		exec(conn, "BEGIN", mode)
		exec(conn, "SAVEPOINT a", mode)
		exec(conn, "SET search_path TO app", mode)
		check(conn, "SET after a savepoint", app, mode)
		exec(conn, "ROLLBACK TO SAVEPOINT a", mode)
		check(conn, "after ROLLBACK TO SAVEPOINT", public, mode)
		exec(conn, "SET LOCAL search_path TO app", mode)
		exec(conn, "RELEASE a", mode)
		check(conn, "after RELEASE", app, mode)
		exec(conn, "COMMIT", mode)
		check(conn, "after the transaction", public, mode)

		// "$user" follows SET ROLE.
		exec(conn, "RESET search_path", mode)
		exec(conn, "SET ROLE pgc_tenant_r", mode)
		check(conn, `SET ROLE with "$user" on the path`, "role schema row", mode)
		exec(conn, "RESET ROLE", mode)
		check(conn, "after RESET ROLE", public, mode)
		// SET SESSION AUTHORIZATION makes the named user the current user, and RESET ROLE keeps
		// it (the role returns to none, and the session user is the current user).
		exec(conn, "SET SESSION AUTHORIZATION pgc_tenant_r", mode)
		check(conn, `SET SESSION AUTHORIZATION with "$user" on the path`, "role schema row", mode)
		exec(conn, "RESET ROLE", mode)
		check(conn, "RESET ROLE after SET SESSION AUTHORIZATION", "role schema row", mode)
		exec(conn, "RESET SESSION AUTHORIZATION", mode)
		check(conn, "after RESET SESSION AUTHORIZATION", public, mode)
		exec(conn, "SET ROLE pgc_tenant_r", mode)
		exec(conn, "SET ROLE NONE", mode)
		check(conn, "after SET ROLE NONE", public, mode)

		// A computed value cannot be followed: statements are relayed as written (Postgres resolves
		// the names) and writes go unmirrored, counted, until the path is set plainly again.
		exec(conn, "SELECT set_config('search_path', 'ap' || 'p', false)", mode)
		check(conn, "computed set_config to app", app, mode)
		exec(conn, "SELECT set_config('search_path', 'pub' || 'lic', false)", mode)
		_, newBefore = routeCounts(t, p)
		unmirroredBefore := max(0, gatheredValue(t, p.reg, "pgcanary_unmirrored_writes_total", map[string]string{"migration": "users-split-name", "reason": "search_path_unknown"}))
		check(conn, "computed set_config to public", public, mode)
		exec(conn, "UPDATE users SET full_name = full_name WHERE id = 2", mode)
		if _, newAfter := routeCounts(t, p); newAfter != newBefore {
			t.Fatalf("a read was routed while the search_path was unknown")
		}
		if u := gatheredValue(t, p.reg, "pgcanary_unmirrored_writes_total", map[string]string{"migration": "users-split-name", "reason": "search_path_unknown"}); u != unmirroredBefore+1 {
			t.Fatalf("unmirrored writes (search_path_unknown): %v, want %v", u, unmirroredBefore+1)
		}
		exec(conn, "SET search_path TO public", mode)
		check(conn, "after a plain SET", public, mode)
		if _, newAfter := routeCounts(t, p); newAfter != newBefore+1 {
			t.Fatalf("reads are not routed again after a plain SET: new-route reads %v, want %v", newAfter, newBefore+1)
		}
		exec(conn, "RESET search_path", mode)
	}

	// A login's default role (ALTER ROLE ... SET role) is the current user from startup; SET
	// SESSION AUTHORIZATION sets the role to none; RESET SESSION AUTHORIZATION and DISCARD ALL bring
	// the default role back, as PostgreSQL does.
	_ = cluster.Exec(ctx, "drop role if exists pgc_default_su")
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "drop role if exists pgc_default_su") })
	if err := cluster.Exec(ctx, `create role pgc_default_su login superuser; grant pgc_tenant_r to pgc_default_su;
		alter role pgc_default_su set role = pgc_tenant_r`); err != nil {
		t.Fatal(err)
	}
	su := connectDSN(t, dsn("pgc_default_su", ""))
	simple := pgx.QueryExecModeSimpleProtocol
	check(su, "default role at startup", "role schema row", simple)
	exec(su, "SET SESSION AUTHORIZATION "+pgtest.SuperUser, simple)
	check(su, "SET SESSION AUTHORIZATION", public, simple)
	exec(su, "RESET SESSION AUTHORIZATION", simple)
	check(su, "RESET SESSION AUTHORIZATION brings back the default role", "role schema row", simple)
	exec(su, "SET ROLE NONE", simple)
	check(su, "SET ROLE NONE", public, simple)
	exec(su, "DISCARD ALL", simple)
	check(su, "DISCARD ALL brings back the default role", "role schema row", simple)

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

// TestPreparedStatementsFollowSearchPath: Postgres resolves a prepared statement's names again
// when search_path changes, so a statement prepared while users meant public.users, executed
// after SET search_path made it app.users, must reach app.users: not routed, and not mirrored
// (its mirrored form would copy app's rows into public.users_v2).
func TestPreparedStatementsFollowSearchPath(t *testing.T) {
	ff := newFlagFile(t)
	p, dsn := migratedProxyWith(t, "prepared_path", proxyOpts{flags: ff.src, setupSQL: `create schema app;
		create table app.users (id int primary key, full_name text);
		insert into app.users values (2, 'app schema row')`})
	ff.set(100)
	ctx := testCtx(t)
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
	direct := connectDSN(t, strings.Replace(cluster.DSN(pgtest.SuperUser, ""), "/"+pgtest.TestDB+"?", "/prepared_path?", 1))
	const mode = pgx.QueryExecModeCacheStatement // named prepared statements, reused
	read := func(step string) string {
		t.Helper()
		var name string
		if err := conn.QueryRow(ctx, "SELECT full_name FROM users WHERE id = $1", mode, 2).Scan(&name); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		return name
	}
	update := func(step, name string) {
		t.Helper()
		if _, err := conn.Exec(ctx, "UPDATE users SET full_name = $1 WHERE id = $2", mode, name, 2); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	v2 := func() string {
		t.Helper()
		var first, last string
		if err := direct.QueryRow(ctx, "SELECT first_name, coalesce(last_name, '') FROM public.users_v2 WHERE id = 2").Scan(&first, &last); err != nil {
			t.Fatal(err)
		}
		return first + " " + last
	}

	if got := read("prepared under the default path"); got != "Grace Brewster Hopper" {
		t.Fatalf("read %q", got)
	}
	update("prepared under the default path", "Ada Lovelace King")
	if got := v2(); got != "Ada Lovelace King" {
		t.Fatalf("users_v2 row 2 = %q: the write was not mirrored", got)
	}
	_, newBefore := routeCounts(t, p)

	if _, err := conn.Exec(ctx, "SET search_path TO app, public"); err != nil {
		t.Fatal(err)
	}
	if got := read("after SET search_path"); got != "app schema row" {
		t.Fatalf("after SET search_path the prepared read returned %q, want app.users' row", got)
	}
	update("after SET search_path", "App Renamed")
	var app string
	if err := direct.QueryRow(ctx, "SELECT full_name FROM app.users WHERE id = 2").Scan(&app); err != nil || app != "App Renamed" {
		t.Fatalf("app.users row 2 = %q (%v), want the prepared UPDATE to have changed it", app, err)
	}
	if got := v2(); got != "Ada Lovelace King" {
		t.Fatalf("users_v2 row 2 = %q: app.users' write was mirrored into the new shape", got)
	}
	if _, newAfter := routeCounts(t, p); newAfter != newBefore {
		t.Fatalf("a read of app.users was routed to the new shape")
	}

	if _, err := conn.Exec(ctx, "RESET search_path"); err != nil {
		t.Fatal(err)
	}
	if got := read("after RESET"); got != "Ada Lovelace King" {
		t.Fatalf("after RESET read %q", got)
	}
	update("after RESET", "Grace Brewster Hopper")
	if got := v2(); got != "Grace Brewster Hopper" {
		t.Fatalf("after RESET users_v2 row 2 = %q: the write was not mirrored", got)
	}
	if _, newAfter := routeCounts(t, p); newAfter != newBefore+1 {
		t.Fatalf("after RESET the prepared read was not routed: new-route reads %v, want %v", newAfter, newBefore+1)
	}

	// A computed search_path: the prepared UPDATE runs as written, unmirrored, counted once.
	unknown := func() float64 {
		return max(0, gatheredValue(t, p.reg, "pgcanary_unmirrored_writes_total", map[string]string{"migration": "users-split-name", "reason": "search_path_unknown"}))
	}
	before := unknown()
	if _, err := conn.Exec(ctx, "SELECT set_config('search_path', 'pub' || 'lic', false)"); err != nil {
		t.Fatal(err)
	}
	update("under a computed search_path", "Computed Path")
	if got := v2(); got != "Grace Brewster Hopper" {
		t.Fatalf("under a computed search_path users_v2 row 2 = %q: the write was mirrored", got)
	}
	if got := unknown(); got != before+1 {
		t.Fatalf("unmirrored writes (search_path_unknown) = %v, want %v", got, before+1)
	}
}

// TestNewSchemaSeenWithoutReload: a relation named like the migrated one, created while pgcanary
// runs (a new tenant's schema), is resolved as Postgres resolves it, so a session whose
// search_path puts it first is not served the migration's new shape. Created through the proxy it
// is seen within about a second; created behind the proxy's back, within the periodic re-read.
func TestNewSchemaSeenWithoutReload(t *testing.T) {
	inDB := loadExamples(t, "new_schema")
	dir := t.TempDir()
	adminAddr := unusedLoopbackAddr(t)
	cfg := canaryCLIConfig(t, dir, "pgcanary.yaml", "{listen: "+adminAddr+"}")
	t.Setenv("PGCANARY_UPSTREAM", cluster.Addr())
	t.Setenv("PGCANARY_SIDE_DSN", inDB(cluster.DSN(pgtest.SuperUser, "")))
	t.Setenv("PGCANARY_DATABASE", "new_schema")
	p := startServeArgs(t, "--config", cfg, "--upstream-sslmode", "disable", "--admin", adminAddr)
	if out, stderr, code := runPgcanary(t, dir, nil, "ramp", "--config", cfg, "users-split-name", "100"); code != 0 {
		t.Fatalf("ramp: exit %d\n%s\n%s", code, out, stderr)
	}
	ctx := testCtx(t)
	conn := connectDSN(t, inDB(p.dsn(pgtest.SuperUser, "")))
	direct := connectDSN(t, inDB(cluster.DSN(pgtest.SuperUser, "")))
	var want string
	if err := direct.QueryRow(ctx, "SELECT full_name FROM users WHERE id = 2").Scan(&want); err != nil {
		t.Fatal(err)
	}
	read := func(c *pgx.Conn) string {
		t.Helper()
		var name string
		if err := c.QueryRow(ctx, "SELECT full_name FROM users WHERE id = $1", pgx.QueryExecModeSimpleProtocol, 2).Scan(&name); err != nil {
			t.Fatal(err)
		}
		return name
	}
	// Wait for the flag: the read of public.users is routed (and answers the same).
	pollUntil(t, 5*time.Second, func() bool { return statusJSON(t, dir, cfg, "users-split-name")["effective_percent"] == 100.0 },
		func() string { return "the flag never reached 100 %" })
	if got := read(conn); got != want {
		t.Fatalf("read %q, want %q", got, want)
	}

	for _, c := range []struct {
		schema string
		create *pgx.Conn // through the proxy, or behind its back
		within time.Duration
	}{
		{"tenant_via_proxy", conn, 3 * time.Second},
		{"tenant_direct", direct, 15 * time.Second},
	} {
		if _, err := c.create.Exec(ctx, "CREATE SCHEMA "+c.schema+"; CREATE TABLE "+c.schema+
			".users (id int primary key, full_name text); INSERT INTO "+c.schema+".users VALUES (2, '"+c.schema+" row')"); err != nil {
			t.Fatal(err)
		}
		session := connectDSN(t, inDB(p.dsn(pgtest.SuperUser, "")))
		if _, err := session.Exec(ctx, "SET search_path TO "+c.schema+", public"); err != nil {
			t.Fatal(err)
		}
		pollUntil(t, c.within, func() bool { return read(session) == c.schema+" row" },
			func() string {
				return fmt.Sprintf("%s.users, created %v ago, is still read as %q", c.schema, c.within, read(session))
			})
	}
}

// TestSearchPathWithinQuery: a SET earlier in a multi-statement Query applies to the statements
// after it, as Postgres runs them: a read of the name that now means app.users is not routed, and
// an UPDATE of it is not mirrored into public.users_v2 (which would corrupt the new shape).
func TestSearchPathWithinQuery(t *testing.T) {
	ff := newFlagFile(t)
	_, dsn := migratedProxyWith(t, "search_path_query", proxyOpts{flags: ff.src, setupSQL: `create schema app;
		create table app.users (id int primary key, full_name text);
		insert into app.users values (2, 'app schema row'), (1001, 'app only');`})
	ff.set(100)
	ctx := testCtx(t)
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
	pc := conn.PgConn()
	res, err := pc.Exec(ctx, "SET search_path TO app, public; SELECT full_name FROM users WHERE id = 2; RESET search_path; SELECT full_name FROM users WHERE id = 2").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 4 || string(res[1].Rows[0][0]) != "app schema row" || string(res[3].Rows[0][0]) != "Grace Brewster Hopper" {
		t.Fatalf("reads around SET in one Query: %+v", res)
	}
	if _, err := pc.Exec(ctx, "SET search_path TO app, public; UPDATE users SET full_name = 'App Renamed' WHERE id = 1001; RESET search_path").ReadAll(); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM public.users_v2 WHERE id = 1001").Scan(&n); err != nil || n != 0 {
		t.Fatalf("the write to app.users reached public.users_v2: %d rows, %v", n, err)
	}
	var name string
	if err := conn.QueryRow(ctx, "SELECT full_name FROM app.users WHERE id = 1001").Scan(&name); err != nil || name != "App Renamed" {
		t.Fatalf("app.users: %q %v", name, err)
	}
	assertShapesAgree(t, conn)
}
