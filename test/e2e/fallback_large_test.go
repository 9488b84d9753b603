package e2e

import (
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// largeAccountsSchema: accountsSchema's migration over 300 rows of about 2 KB each (uncompressed
// md5 text, stored inline), about 580 KB in all. In the new table the last row, in physical
// order too, holds a balance the read map's cast rejects: a sequential scan's new form fails only
// after more than maxGateOutput (256 KB) of rows went out.
const largeAccountsSchema = `
create table accounts (id int primary key, owner text not null, balance numeric(12,2) not null);
create table accounts_v2 (id int primary key, owner text not null, balance_text text not null);
insert into accounts
	select i, (select string_agg(md5(i::text || '-' || g::text), '') from generate_series(1, 60) g), i * 10.5
	from generate_series(1, 300) i;
insert into accounts_v2
	select id, owner, case when id = 300 then 'oops' else balance::text end from accounts order by id;
`

// TestReadFallbackAfterLargeOutput: a routed read whose new form fails after it returned more than
// the proxy holds in memory still answers with the old form's rows only (the output is held in a
// temporary file until the read ends); so does a later read of the same batch, after an earlier
// one returned that much: in a Query of several statements, in a pipeline, and in a transaction.
func TestReadFallbackAfterLargeOutput(t *testing.T) {
	cs := customProxy(t, "fallback_large", largeAccountsSchema, accountsMigration("fail"), proxyOpts{})
	cs.setFlags(map[string]float64{"accounts-text": 100})
	ctx := testCtx(t)
	conn := connectDSN(t, cs.dsn(pgtest.SuperUser, ""))
	fallbacks := func() float64 {
		return cs.metric("pgcanary_read_fallbacks_total", map[string]string{"migration": "accounts-text"})
	}
	const wantSum = "474075.00" // 10.5 * (1 + ... + 300)
	scan := func(q pgx.Tx, mode pgx.QueryExecMode) (int, string) {
		t.Helper()
		var rows pgx.Rows
		var err error
		if q != nil {
			rows, err = q.Query(ctx, "SELECT id, owner, balance::text FROM accounts", mode)
		} else {
			rows, err = conn.Query(ctx, "SELECT id, owner, balance::text FROM accounts", mode)
		}
		if err != nil {
			t.Fatalf("%v: %v", mode, err)
		}
		n, size, last := 0, 0, ""
		for rows.Next() {
			var id int
			var owner, balance string
			if err := rows.Scan(&id, &owner, &balance); err != nil {
				t.Fatalf("%v: scan: %v", mode, err)
			}
			n, size, last = n+1, size+len(owner), balance
		}
		if err := rows.Err(); err != nil {
			t.Fatalf("%v: the new form's failure after %d rows (%d bytes) reached the client: %v", mode, n, size, err)
		}
		if size < 512<<10 {
			t.Fatalf("%v: only %d bytes of rows: the test no longer exceeds what the proxy holds in memory", mode, size)
		}
		return n, last
	}
	spilled := func() float64 { return cs.metric("pgcanary_gate_spill_bytes_total", nil) }
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement}
	for _, mode := range modes {
		before, spilledBefore := fallbacks(), spilled()
		if n, last := scan(nil, mode); n != 300 || last != "3150.00" {
			t.Fatalf("%v: %d rows, last balance %q; want 300 rows of the old shape, the last 3150.00", mode, n, last)
		}
		if got := fallbacks() - before; got != 1 {
			t.Fatalf("%v: %v fallbacks counted, want 1", mode, got)
		}
		// The new form's rows up to its failure, past the 256 KB held in memory, in 64 KB writes.
		if got := spilled() - spilledBefore; got < 128<<10 {
			t.Fatalf("%v: %v bytes counted as held in a file, want over 128 KB", mode, got)
		}
	}

	// A later read of the batch fails, after an earlier one returned more than 256 KB.
	before := fallbacks()
	results, err := conn.PgConn().Exec(ctx, "SELECT id, owner FROM accounts; SELECT sum(balance)::text FROM accounts").ReadAll()
	if err != nil {
		t.Fatalf("Query of two reads: %v", err)
	}
	if len(results) != 2 || len(results[0].Rows) != 300 || len(results[1].Rows) != 1 || string(results[1].Rows[0][0]) != wantSum {
		t.Fatalf("Query of two reads: %d results, want 300 rows, then the old shape's sum %s", len(results), wantSum)
	}
	b := &pgx.Batch{}
	b.Queue("SELECT id, owner FROM accounts WHERE id > $1", 0)
	b.Queue("SELECT sum(balance)::text FROM accounts WHERE id > $1", 0)
	br := conn.SendBatch(ctx, b)
	rows, err := br.Query()
	if err != nil {
		t.Fatalf("pipeline, first read: %v", err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil || n != 300 {
		t.Fatalf("pipeline, first read: %d rows, %v", n, err)
	}
	var sum string
	if err := br.QueryRow().Scan(&sum); err != nil || sum != wantSum {
		t.Fatalf("pipeline, second read: %q %v; want the old shape's %s", sum, err, wantSum)
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	if got := fallbacks() - before; got != 2 {
		t.Fatalf("%v fallbacks counted for the two batches, want 2", got)
	}

	// In a transaction: the proxy's savepoint is rolled back to, and the transaction goes on.
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n, last := scan(tx, pgx.QueryExecModeExec); n != 300 || last != "3150.00" {
		t.Fatalf("in a transaction: %d rows, last balance %q", n, last)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit after the fallback: %v", err)
	}
}
