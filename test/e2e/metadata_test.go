package e2e

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcanary/pgcanary/flags"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// TestRoutedReadColumnOrigins: a read served by the new shape reports, for each column that is a
// plain reference to a column of the old relation, that relation's OID and column number, as
// Postgres reports them for the client's text. Drivers look columns up by them: JDBC's
// ResultSetMetaData (table name, nullability, auto-increment) and its updatable result sets,
// which build their UPDATE from the column's table and name.
func TestRoutedReadColumnOrigins(t *testing.T) {
	// Both migrations' reads on the new shape.
	path := filepath.Join(t.TempDir(), "flags.json")
	if err := os.WriteFile(path, []byte(`{"flags": {
		"users-split-name.read-percent": {"state": "ENABLED", "variants": {"all": 100}, "defaultVariant": "all"},
		"orders-cents.read-percent": {"state": "ENABLED", "variants": {"all": 100}, "defaultVariant": "all"}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := flags.NewFile(context.Background(), path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	p, dsn := migratedProxyWith(t, "column_origins", proxyOpts{flags: src,
		setupSQL: "CREATE TABLE notes (nid int PRIMARY KEY, user_id bigint); INSERT INTO notes VALUES (1, 1)"})
	ctx := testCtx(t)
	proxied := connectDSN(t, dsn(pgtest.SuperUser, ""))
	direct := connectDSN(t, strings.Replace(dsn(pgtest.SuperUser, ""), p.addr, cluster.Addr(), 1))
	fields := func(conn *pgx.Conn, sql string, mode pgx.QueryExecMode) []pgconn.FieldDescription {
		t.Helper()
		rows, err := conn.Query(ctx, sql, mode)
		if err != nil {
			t.Fatalf("%s (%v): %v", sql, mode, err)
		}
		defer rows.Close()
		for rows.Next() {
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%s (%v): %v", sql, mode, err)
		}
		return rows.FieldDescriptions()
	}
	routedNew := func() float64 {
		n := 0.0
		for _, m := range []string{usersMigration, "orders-cents"} {
			n += max(gatheredValue(t, p.reg, "pgcanary_statements_total", map[string]string{"migration": m, "kind": "read", "route": "new"}), 0)
		}
		return n
	}
	newBefore := routedNew()
	reads := 0
	for _, sql := range []string{
		"SELECT * FROM users WHERE id = 1",
		"SELECT id, full_name, email FROM users WHERE id = 1",
		"SELECT full_name AS n, upper(full_name) AS up, u.tier FROM users u WHERE u.id = 1",
		"SELECT u.*, o.amount FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = 1 ORDER BY o.id",
		"SELECT amount, id, note FROM orders WHERE id = 1",
		"SELECT o.* FROM orders o WHERE o.id = 1",
	} {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeCacheStatement} {
			want, got := fields(direct, sql, mode), fields(proxied, sql, mode)
			reads += strings.Count(sql, "JOIN") + 1 // a join counts for both migrations
			if len(got) != len(want) {
				t.Fatalf("%s (%v): %d columns through pgcanary, %d from Postgres", sql, mode, len(got), len(want))
			}
			for i := range want {
				if got[i].Name != want[i].Name || got[i].TableOID != want[i].TableOID || got[i].TableAttributeNumber != want[i].TableAttributeNumber {
					t.Errorf("%s (%v): column %d is %s of table %d column %d through pgcanary, %s of table %d column %d from Postgres",
						sql, mode, i, got[i].Name, got[i].TableOID, got[i].TableAttributeNumber, want[i].Name, want[i].TableOID, want[i].TableAttributeNumber)
				}
			}
		}
	}
	// A star over a relation pgcanary has no column list of, before users: where users' columns
	// start is unknown, but those the projection copies unchanged (the new form reports them as
	// users_v2's) still name users'. Only the computed full_name keeps no origin.
	const notesFirst = "SELECT * FROM notes n JOIN users u ON u.id = n.user_id"
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		want, got := fields(direct, notesFirst, mode), fields(proxied, notesFirst, mode)
		reads++
		for i := range want {
			if want[i].Name == "full_name" {
				continue
			}
			if got[i].TableOID != want[i].TableOID || got[i].TableAttributeNumber != want[i].TableAttributeNumber {
				t.Errorf("%s (%v): column %s is table %d column %d through pgcanary, table %d column %d from Postgres",
					notesFirst, mode, want[i].Name, got[i].TableOID, got[i].TableAttributeNumber, want[i].TableOID, want[i].TableAttributeNumber)
			}
		}
	}
	if newAfter := routedNew(); newAfter-newBefore < float64(reads) {
		t.Fatalf("%v of %d reads were served by the new shape; the test needs them all", newAfter-newBefore, reads)
	}
}
