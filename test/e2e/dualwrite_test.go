package e2e

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgcanary/pgcanary/canary"
	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/router"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

// migratedProxy loads examples/schema.sql into a fresh database db, configures both example
// migrations, and starts a proxy that plans against them. It returns the proxy and a DSN builder.
func migratedProxy(t *testing.T, db string) (*testProxy, func(user, password string) string) {
	t.Helper()
	return migratedProxyWith(t, db, proxyOpts{})
}

// migratedProxyWith is migratedProxy with more proxy options (flags, routing key).
func migratedProxyWith(t *testing.T, db string, o proxyOpts) (*testProxy, func(user, password string) string) {
	t.Helper()
	ctx := testCtx(t)
	inDB := loadExamples(t, db)
	if o.setupSQL != "" {
		c := connectDSN(t, inDB(cluster.DSN(pgtest.SuperUser, "")))
		if _, err := c.Exec(ctx, o.setupSQL); err != nil {
			t.Fatalf("setup: %v", err)
		}
		c.Close(ctx)
	}
	// The shipped example configuration, pointed at this database.
	t.Setenv("PGCANARY_UPSTREAM", cluster.Addr())
	t.Setenv("PGCANARY_SIDE_DSN", inDB(cluster.DSN(pgtest.SuperUser, "")))
	t.Setenv("PGCANARY_DATABASE", db)
	cfg, err := config.Load("../../examples/pgcanary.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if o.configEdit != nil {
		o.configEdit(cfg)
	}
	p := startConfiguredProxy(t, cfg, o)
	return p, func(user, password string) string { return inDB(p.dsn(user, password)) }
}

// startConfiguredProxy checks cfg against its databases and starts a proxy planning with it (and
// running the canary with proxyOpts.canary).
func startConfiguredProxy(t *testing.T, cfg *config.Config, o proxyOpts) *testProxy {
	t.Helper()
	report, catalog, err := config.Check(testCtx(t), cfg, config.DSNConnector(cfg.SideDSN))
	if err != nil || report.HasErrors() {
		t.Fatalf("check: %v\n%v", err, report)
	}
	var store config.Store
	store.Install(&config.Generation{Config: cfg, Catalog: catalog})
	planner, err := router.NewPlanner(1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	o.planner, o.registry = router.NewLive(&store, planner), prometheus.NewRegistry()
	var svc *canary.Service
	if o.sideDSN != "" {
		cfg.SideDSN = o.sideDSN
	}
	if o.canary {
		svc, err = canary.New(canary.Options{Store: &store, Flags: o.flags, Registerer: o.registry, Gatherer: o.registry,
			NoSharedSnapshot: o.noSharedSnapshot, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(context.Background())
		go svc.Run(runCtx)
		t.Cleanup(func() {
			stop()
			_ = svc.Close(context.Background())
		})
		o.shadow = svc
	}
	p := startProxy(t, o)
	p.canary = svc
	return p
}

// loadExamples creates database db with examples/schema.sql and returns a function that points a
// DSN at it.
func loadExamples(t *testing.T, db string) func(dsn string) string {
	t.Helper()
	ctx := testCtx(t)
	_ = cluster.Exec(ctx, "drop database if exists "+db)
	if err := cluster.Exec(ctx, "create database "+db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "drop database if exists "+db+" with (force)") })
	inDB := func(dsn string) string { return strings.Replace(dsn, "/"+pgtest.TestDB+"?", "/"+db+"?", 1) }
	psql, err := pgtest.FindBin("psql")
	if err != nil {
		t.Fatalf("psql is needed to load examples/schema.sql: %v", err)
	}
	if out, err := exec.Command(psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "users=300", "-v", "orders=900",
		"-d", inDB(cluster.DSN(pgtest.SuperUser, "")), "-f", "../../examples/schema.sql").CombinedOutput(); err != nil {
		t.Fatalf("load schema: %v\n%s", err, out)
	}
	return inDB
}

// assertShapesAgree runs the full-table comparisons: new == write-map(old) both ways, and
// amount_cents derived from amount on every order.
func assertShapesAgree(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	var diff int
	err := conn.QueryRow(testCtx(t), `
		with wm as (select id, split_part(full_name, ' ', 1) as first_name,
		                   nullif(substr(full_name, length(split_part(full_name, ' ', 1)) + 2), '') as last_name,
		                   email, active, tier, birthday, profile, tags, external_id, created_at from users),
		     nw as (select id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at from users_v2)
		select (select count(*) from (select * from wm except all select * from nw) a)
		     + (select count(*) from (select * from nw except all select * from wm) b)
		     + (select count(*) from orders where amount_cents is distinct from (amount * 100)::bigint)`).Scan(&diff)
	if err != nil {
		t.Fatal(err)
	}
	if diff != 0 {
		t.Fatalf("the shapes disagree on %d rows", diff)
	}
}

func TestDualWritesPgx(t *testing.T) {
	_, dsn := migratedProxy(t, "dual_pgx")
	ctx := testCtx(t)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeDescribeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
			email := fmt.Sprintf("dual-%d@example.com", mode)
			var id int64
			var created string
			if err := conn.QueryRow(ctx, "INSERT INTO users (full_name, email) VALUES ($1, $2) RETURNING id, created_at::text", mode, "Ada Byron King", email).Scan(&id, &created); err != nil {
				t.Fatal(err)
			}
			tag, err := conn.Exec(ctx, "UPDATE users SET full_name = $1 WHERE id = $2", mode, "Ada Lovelace", id)
			if err != nil || tag.String() != "UPDATE 1" {
				t.Fatalf("update: %v %v", tag, err)
			}
			tag, err = conn.Exec(ctx, "INSERT INTO users (full_name, email) VALUES ($1, $2)", mode, "Cher", "x"+email)
			if err != nil || tag.String() != "INSERT 0 1" {
				t.Fatalf("insert: %v %v", tag, err)
			}
			tag, err = conn.Exec(ctx, "UPDATE orders SET amount = $1 WHERE user_id = $2", mode, "12.34", 5)
			if err != nil || !strings.HasPrefix(tag.String(), "UPDATE ") || tag.RowsAffected() == 0 {
				t.Fatalf("orders update: %v %v", tag, err)
			}
			tag, err = conn.Exec(ctx, "INSERT INTO orders (user_id, amount) VALUES ($1, $2), ($1, $3)", mode, id, "1.50", 2.25)
			if err != nil || tag.String() != "INSERT 0 2" {
				t.Fatalf("orders insert: %v %v", tag, err)
			}
			tag, err = conn.Exec(ctx, "DELETE FROM orders WHERE user_id = $1", mode, id)
			if err != nil || tag.String() != "DELETE 2" {
				t.Fatalf("orders delete: %v %v", tag, err)
			}
			tag, err = conn.Exec(ctx, "DELETE FROM users WHERE email = $1", mode, "x"+email)
			if err != nil || tag.String() != "DELETE 1" {
				t.Fatalf("delete: %v %v", tag, err)
			}
			var first, last string
			if err := conn.QueryRow(ctx, "SELECT first_name, last_name FROM users_v2 WHERE id = $1", id).Scan(&first, &last); err != nil || first != "Ada" || last != "Lovelace" {
				t.Fatalf("users_v2 row: %q %q %v", first, last, err)
			}
			assertShapesAgree(t, conn)
		})
	}
}

// TestDualWritesProtocolShapes: multi-statement simple queries, Describe of a mirrored statement,
// pipelines, transactions and a failing mirror.
func TestDualWritesProtocolShapes(t *testing.T) {
	p, dsn := migratedProxy(t, "dual_shapes")
	ctx := testCtx(t)
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))

	// Several statements in one Query: each keeps its own result and tag.
	results, err := conn.PgConn().Exec(ctx, `UPDATE users SET active = false WHERE id <= 3 -- a trailing comment
; SELECT 1; INSERT INTO users (full_name, email) VALUES ('Multi Statement', 'multi@example.com') RETURNING full_name; DELETE FROM users WHERE email = 'multi@example.com'`).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	tags := []string{}
	for _, r := range results {
		tags = append(tags, r.CommandTag.String())
	}
	if strings.Join(tags, ",") != "UPDATE 3,SELECT 1,INSERT 0 1,DELETE 1" || len(results[0].FieldDescriptions) != 0 ||
		string(results[2].Rows[0][0]) != "Multi Statement" || results[2].FieldDescriptions[0].Name != "full_name" {
		t.Fatalf("multi-statement results: %v", tags)
	}

	// Describe of a mirrored statement without RETURNING answers NoData, as the original would.
	sd, err := conn.Prepare(ctx, "upd", "UPDATE users SET email = $1 WHERE id = $2")
	if err != nil {
		t.Fatal(err)
	}
	if len(sd.Fields) != 0 || len(sd.ParamOIDs) != 2 {
		t.Fatalf("describe: %d fields, params %v", len(sd.Fields), sd.ParamOIDs)
	}
	for i := range 3 {
		tag, err := conn.Exec(ctx, "upd", fmt.Sprintf("prepared-%d@example.com", i), 10+i)
		if err != nil || tag.String() != "UPDATE 1" {
			t.Fatalf("prepared exec %d: %v %v", i, tag, err)
		}
	}

	// A pipeline of mirrored writes before one Sync.
	batch := &pgx.Batch{}
	for i := range 20 {
		batch.Queue("UPDATE users SET full_name = $1 WHERE id = $2", fmt.Sprintf("Batch Name%d", i), 20+i)
	}
	batch.Queue("INSERT INTO users (full_name, email) VALUES ('In Batch', 'batch@example.com') RETURNING id")
	br := conn.SendBatch(ctx, batch)
	for i := range 20 {
		if tag, err := br.Exec(); err != nil || tag.String() != "UPDATE 1" {
			t.Fatalf("batch %d: %v %v", i, tag, err)
		}
	}
	var batchID int64
	if err := br.QueryRow().Scan(&batchID); err != nil || batchID == 0 {
		t.Fatalf("batch insert: %v", err)
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}

	// ROLLBACK undoes both shapes.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "UPDATE users SET full_name = 'Rolled Back' WHERE id = 50"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM users_v2 WHERE first_name = 'Rolled'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("rolled back mirror visible: %d %v", n, err)
	}

	// A mirror that fails (a constraint only the new table has) fails the statement: neither
	// shape changes.
	if _, err := conn.Exec(ctx, "ALTER TABLE users_v2 ADD CONSTRAINT no_forbidden CHECK (first_name <> 'Forbidden')"); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, "INSERT INTO users (full_name, email) VALUES ('Forbidden Name', 'forbidden@example.com')")
	if pgCode(err) != "23514" {
		t.Fatalf("failing mirror: %v", err)
	}
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM users WHERE email = 'forbidden@example.com'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("the old shape changed although the mirror failed: %d %v", n, err)
	}
	assertShapesAgree(t, conn)
	if got := gatheredValue(t, p.reg, "pgcanary_mirrored_writes_total", map[string]string{"migration": "users-split-name", "direction": "forward"}); got < 20 {
		t.Fatalf("pgcanary_mirrored_writes_total = %v", got)
	}
}

func TestDualWritesLibPQAndPsql(t *testing.T) {
	_, dsn := migratedProxy(t, "dual_pq")
	ctx := testCtx(t)
	db, err := sql.Open("postgres", dsn(pgtest.SuperUser, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	res, err := db.ExecContext(ctx, "UPDATE users SET full_name = $1 WHERE id BETWEEN $2 AND $3", "Barbara Liskov", 1, 5)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 5 {
		t.Fatalf("lib/pq rows affected %d", n)
	}
	var id int64
	if err := db.QueryRowContext(ctx, "INSERT INTO users (full_name, email) VALUES ($1, $2) RETURNING id", "Radia Perlman", "radia@example.com").Scan(&id); err != nil {
		t.Fatal(err)
	}
	if psql, err := pgtest.FindBin("psql"); err == nil {
		out, err := exec.Command(psql, "-X", "-c", "UPDATE users SET active = true WHERE id <= 4", "-c", "DELETE FROM users WHERE email = 'radia@example.com'", dsn(pgtest.SuperUser, "")).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "UPDATE 4") || !strings.Contains(string(out), "DELETE 1") {
			t.Fatalf("psql: %v\n%s", err, out)
		}
	}
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
	assertShapesAgree(t, conn)
}

// v2Name returns users_v2's first and last name of row id, as "first/last".
func v2Name(t *testing.T, conn *pgx.Conn, id int) string {
	t.Helper()
	var first, last string
	if err := conn.QueryRow(testCtx(t), "SELECT first_name, coalesce(last_name, '') FROM users_v2 WHERE id = $1", id).Scan(&first, &last); err != nil {
		t.Fatal(err)
	}
	return first + "/" + last
}

// TestDualWritesSQLPrepare: writes prepared in SQL (PREPARE ... AS UPDATE, EXECUTE) mirror on every
// EXECUTE and answer as the client's statement would, also when PREPARE and EXECUTE share a query
// string, through DEALLOCATE, and when a PREPARE fails because the name is taken (the EXECUTE then
// runs the statement that holds the name, untouched).
func TestDualWritesSQLPrepare(t *testing.T) {
	p, dsn := migratedProxy(t, "dual_sql_prepare")
	ctx := testCtx(t)
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
	pc := conn.PgConn()
	run := func(sql string) []*pgconn.Result {
		t.Helper()
		res, err := pc.Exec(ctx, sql).ReadAll()
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		return res
	}
	tags := func(res []*pgconn.Result) string {
		var out []string
		for _, r := range res {
			out = append(out, r.CommandTag.String())
		}
		return strings.Join(out, "|")
	}
	name := func(id int) string { t.Helper(); return v2Name(t, conn, id) }
	mirroredBefore := max(gatheredValue(t, p.reg, "pgcanary_mirrored_writes_total", map[string]string{"migration": usersMigration, "direction": "forward"}), 0)

	if got := tags(run("PREPARE up (text, bigint) AS UPDATE users SET full_name = $1 WHERE id = $2")); got != "PREPARE" {
		t.Fatalf("prepare: %s", got)
	}
	if got := tags(run("EXECUTE up('Prep Ared', 3)")); got != "UPDATE 1" || name(3) != "Prep/Ared" {
		t.Fatalf("execute: %s, users_v2 %s", got, name(3))
	}
	if got := tags(run("execute up ('Twice Over', 3); EXECUTE up('No Row', 999999)")); got != "UPDATE 1|UPDATE 0" || name(3) != "Twice/Over" {
		t.Fatalf("two executes: %s, users_v2 %s", got, name(3))
	}
	// PREPARE and EXECUTE in one string; INSERT ... RETURNING answers its own rows.
	res := run("PREPARE ins AS INSERT INTO users (full_name, email) VALUES ($1, $2) RETURNING id, full_name; EXECUTE ins('Same String', 'same@example.com')")
	if tags(res) != "PREPARE|INSERT 0 1" || len(res[1].Rows) != 1 || string(res[1].Rows[0][1]) != "Same String" {
		t.Fatalf("prepare and execute in one string: %s %v", tags(res), res[1].Rows)
	}
	if len(res[1].FieldDescriptions) != 2 || res[1].FieldDescriptions[1].Name != "full_name" {
		t.Fatalf("RETURNING columns: %+v", res[1].FieldDescriptions)
	}
	// Through the extended protocol too, a Bind to the SQL-prepared name.
	if tag, err := pc.ExecPrepared(ctx, "up", [][]byte{[]byte("Bound Name"), []byte("4")}, nil, nil).Close(); err != nil || tag.String() != "UPDATE 1" || name(4) != "Bound/Name" {
		t.Fatalf("bind to a SQL-prepared write: %v %v, users_v2 %s", tag, err, name(4))
	}
	// DEALLOCATE drops it; the name can hold another statement.
	run("DEALLOCATE up")
	if _, err := pc.Exec(ctx, "EXECUTE up('Gone', 3)").ReadAll(); err == nil {
		t.Fatal("EXECUTE after DEALLOCATE succeeded")
	}
	run("PREPARE up AS SELECT $1::int + 1")
	if res := run("EXECUTE up(41)"); len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "42" {
		t.Fatalf("a read under the reused name: %v", res[0].Rows)
	}
	// A PREPARE that fails (the name is taken) changes nothing: EXECUTE runs the read.
	if _, err := pc.Exec(ctx, "PREPARE up AS UPDATE users SET full_name = $1 WHERE id = 3").ReadAll(); err == nil {
		t.Fatal("PREPARE of a taken name succeeded")
	}
	if res := run("EXECUTE up(1)"); len(res[0].Rows) != 1 || string(res[0].Rows[0][0]) != "2" || tags(res) != "SELECT 1" {
		t.Fatalf("EXECUTE after a failed PREPARE: %s %v", tags(res), res[0].Rows)
	}
	mirrored := gatheredValue(t, p.reg, "pgcanary_mirrored_writes_total", map[string]string{"migration": usersMigration, "direction": "forward"}) - mirroredBefore
	if mirrored != 5 {
		t.Fatalf("%v mirrored writes counted, want 5", mirrored)
	}
	assertShapesAgree(t, conn)
}

// TestDualWritesSQLPrepareExtended: PREPARE and EXECUTE sent as protocol statements (what JDBC
// does with a plain Statement): the PREPARE prepares the mirrored form, and an EXECUTE, unnamed or
// named, answers as the client's statement would (an update count, no rows), Describe included.
func TestDualWritesSQLPrepareExtended(t *testing.T) {
	p, dsn := migratedProxy(t, "dual_sql_prepare_ext")
	ctx := testCtx(t)
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
	pc := conn.PgConn()
	execParams := func(sql string) *pgconn.Result {
		t.Helper()
		res := pc.ExecParams(ctx, sql, nil, nil, nil, nil).Read()
		if res.Err != nil {
			t.Fatalf("%s: %v", sql, res.Err)
		}
		return res
	}
	name := func(id int) string { t.Helper(); return v2Name(t, conn, id) }
	mirroredBefore := max(gatheredValue(t, p.reg, "pgcanary_mirrored_writes_total", map[string]string{"migration": usersMigration, "direction": "forward"}), 0)

	if res := execParams("PREPARE ep (text, bigint) AS UPDATE users SET full_name = $1 WHERE id = $2"); res.CommandTag.String() != "PREPARE" {
		t.Fatalf("prepare: %s", res.CommandTag)
	}
	res := execParams("EXECUTE ep('Ext Ended', 5)")
	if res.CommandTag.String() != "UPDATE 1" || len(res.FieldDescriptions) != 0 || len(res.Rows) != 0 || name(5) != "Ext/Ended" {
		t.Fatalf("unnamed EXECUTE: %s, fields %v, rows %v, users_v2 %s", res.CommandTag, res.FieldDescriptions, res.Rows, name(5))
	}
	sd, err := pc.Prepare(ctx, "exec_ep", "EXECUTE ep('Named Exec', 6)", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(sd.Fields) != 0 {
		t.Fatalf("Describe of a named EXECUTE of a write: fields %v, want none", sd.Fields)
	}
	if tag, err := pc.ExecPrepared(ctx, "exec_ep", nil, nil, nil).Close(); err != nil || tag.String() != "UPDATE 1" || name(6) != "Named/Exec" {
		t.Fatalf("named EXECUTE: %v %v, users_v2 %s", tag, err, name(6))
	}
	// INSERT ... RETURNING, prepared and executed through the protocol, answers its own rows.
	execParams("PREPARE ei AS INSERT INTO users (full_name, email) VALUES ($1, $2) RETURNING id, full_name")
	res = execParams("EXECUTE ei('Ext Inserted', 'ext-ins@example.com')")
	if res.CommandTag.String() != "INSERT 0 1" || len(res.Rows) != 1 || string(res.Rows[0][1]) != "Ext Inserted" || len(res.FieldDescriptions) != 2 {
		t.Fatalf("EXECUTE of INSERT RETURNING: %s %v %v", res.CommandTag, res.FieldDescriptions, res.Rows)
	}
	// DEALLOCATE through the protocol drops it: the EXECUTE fails as on Postgres.
	execParams("DEALLOCATE ep")
	if err := pc.ExecParams(ctx, "EXECUTE ep('Gone', 5)", nil, nil, nil, nil).Read().Err; err == nil {
		t.Fatal("EXECUTE after DEALLOCATE succeeded")
	}
	mirrored := gatheredValue(t, p.reg, "pgcanary_mirrored_writes_total", map[string]string{"migration": usersMigration, "direction": "forward"}) - mirroredBefore
	if mirrored != 3 {
		t.Fatalf("%v mirrored writes counted, want 3", mirrored)
	}
	assertShapesAgree(t, conn)
}
