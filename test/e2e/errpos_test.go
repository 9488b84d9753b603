package e2e

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

// TestErrorPositionsOfRewrittenStatements: a statement pgcanary sends in another form (a mirrored
// write, a read routed to the new shape) that fails at a position must report the position in the
// client's text, as Postgres reports it for that text: psql draws its caret there.
func TestErrorPositionsOfRewrittenStatements(t *testing.T) {
	ff := newFlagFile(t)
	p, dsn := migratedProxyWith(t, "errpos", proxyOpts{flags: ff.src})
	ff.set(100)
	ctx := testCtx(t)
	proxied := connectDSN(t, dsn(pgtest.SuperUser, ""))
	direct := connectDSN(t, strings.Replace(dsn(pgtest.SuperUser, ""), p.addr, cluster.Addr(), 1))

	// failIn runs sql in a transaction, rolled back (a statement that unexpectedly succeeds
	// changes nothing), and returns the server's error.
	failIn := func(conn *pgx.Conn, opts pgx.TxOptions, sql string, mode pgx.QueryExecMode) *pgconn.PgError {
		t.Helper()
		tx, err := conn.BeginTx(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(context.Background())
		_, err = tx.Exec(ctx, sql, mode)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) {
			t.Fatalf("%s (%v, %v): error %v, want a server error", sql, mode, opts.AccessMode, err)
		}
		return pe
	}
	fail := func(conn *pgx.Conn, sql string, mode pgx.QueryExecMode) *pgconn.PgError {
		t.Helper()
		return failIn(conn, pgx.TxOptions{}, sql, mode)
	}
	for _, sql := range []string{
		"UPDATE users SET active = 'maybe' WHERE id = 1",                              // mirrored write
		"UPDATE users SET full_name = 'Zoë Ünal', active = 'maybe' WHERE id = 1",      // characters, not bytes
		"/* app */ UPDATE users SET tier = 'platinum' WHERE id = 1 AND active = 'no'", // two literals, the first fails
		"INSERT INTO users (email, full_name, active) VALUES ('a@b', 'A B', 'maybe')",
		// The augment casts a copy of the literal, and Postgres reports the copy: the position
		// of the client's one such literal.
		"UPDATE orders SET amount = 'x1' WHERE id = 3",
		"INSERT INTO orders (user_id, amount, status, note) VALUES (8, 'abc', 'cancelled', 'Alan  Turing') RETURNING id, amount",
		"SELECT full_name FROM users WHERE id = 'abc'",            // read routed to the new shape
		"SELECT email FROM users WHERE id = 1 AND tier = 'gold '", // an enum literal of the read
		// Ambiguous: the projections list created_at before the client's own created_at.
		"SELECT u.id FROM users u, users x WHERE x.id = u.id AND created_at > now()",
	} {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement} {
			want := fail(direct, sql, mode)
			got := fail(proxied, sql, mode)
			if want.Position == 0 {
				t.Fatalf("%s (%v): Postgres reports no position (%s); the test needs one", sql, mode, want.Message)
			}
			if got.Code != want.Code || got.Message != want.Message || got.Position != want.Position {
				t.Errorf("%s (%v):\n  Postgres: %s %s at %d\n  pgcanary: %s %s at %d", sql, mode,
					want.Code, want.Message, want.Position, got.Code, got.Message, got.Position)
			}
		}
	}
	// A mirrored write in a read-only transaction: its form is a SELECT, but the refusal names
	// the client's command, as Postgres's does.
	for _, sql := range []string{
		"UPDATE users SET full_name = 'Read Only' WHERE id = 1",
		"INSERT INTO users (full_name, email) VALUES ('Read Only', 'ro@example.com')",
		"DELETE FROM users WHERE id = 1",
	} {
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
			readOnly := pgx.TxOptions{AccessMode: pgx.ReadOnly}
			want, got := failIn(direct, readOnly, sql, mode), failIn(proxied, readOnly, sql, mode)
			if got.Code != want.Code || got.Message != want.Message {
				t.Errorf("%s (%v) read-only: pgcanary %s %q, Postgres %s %q", sql, mode, got.Code, got.Message, want.Code, want.Message)
			}
		}
	}
	// Several statements in one Query: positions count from the start of the whole text.
	multi := "SELECT 1; UPDATE users SET active = 'maybe' WHERE id = 2"
	want, got := fail(direct, multi, pgx.QueryExecModeSimpleProtocol), fail(proxied, multi, pgx.QueryExecModeSimpleProtocol)
	if got.Position != want.Position || got.Position == 0 {
		t.Errorf("%s: position %d through pgcanary, %d from Postgres", multi, got.Position, want.Position)
	}
}
