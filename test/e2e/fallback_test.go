package e2e

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// accountsSchema: balances move from numeric to text in a new table. The read map casts the text
// back, which fails on a row whose text is not a number (corrupted below, directly in the new
// table): a read expression that fails at run time for some rows.
const accountsSchema = `
create table accounts (id int primary key, owner text not null, balance numeric(12,2) not null);
create table accounts_v2 (id int primary key, owner text not null, balance_text text not null
	check (length(balance_text) <= 8));
insert into accounts select i, 'owner ' || i, i * 10.5 from generate_series(1, 50) i;
insert into accounts_v2 select id, owner, balance::text from accounts;
update accounts_v2 set balance_text = 'oops' where id = 7;
`

func accountsMigration(onMirrorError string) string {
	return `  - name: accounts-text
    database: $DB
    old: public.accounts
    new: public.accounts_v2
    key: [id]
    write:
      balance_text: balance::text
    read:
      balance: balance_text::numeric(12,2)
    on_mirror_error: ` + onMirrorError + "\n"
}

// TestReadFallback: at 100 %, reads whose new form fails on some rows still answer with the old
// form's rows, through every protocol path (simple, unnamed, named variants, lib/pq, psql), and
// each re-run is counted; inside an explicit transaction too, where the proxy wraps the read in a
// savepoint that the failure rolls back to, and the transaction goes on.
func TestReadFallback(t *testing.T) {
	cs := customProxy(t, "fallback_reads", accountsSchema, accountsMigration("fail"), proxyOpts{})
	cs.setFlags(map[string]float64{"accounts-text": 100})
	ctx := testCtx(t)
	conn := connectDSN(t, cs.dsn(pgtest.SuperUser, ""))
	fallbacks := func() float64 {
		return cs.metric("pgcanary_read_fallbacks_total", map[string]string{"migration": "accounts-text"})
	}
	routedNew := func() float64 {
		return cs.metric("pgcanary_statements_total", map[string]string{"migration": "accounts-text", "kind": "read", "route": "new"})
	}
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement,
		pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec}
	for _, mode := range modes {
		before, newBefore := fallbacks(), routedNew()
		// One failing row, and a scan that fails part-way through.
		var balance string
		if err := conn.QueryRow(ctx, "SELECT balance::text FROM accounts WHERE id = $1", mode, 7).Scan(&balance); err != nil {
			t.Fatalf("%v: single row: %v", mode, err)
		}
		if balance != "73.50" {
			t.Fatalf("%v: balance %q, want the old shape's 73.50", mode, balance)
		}
		var n int
		var sum string
		if err := conn.QueryRow(ctx, "SELECT count(*), sum(balance)::text FROM (SELECT balance FROM accounts WHERE id > $1) a", mode, 0).Scan(&n, &sum); err != nil {
			t.Fatalf("%v: aggregate: %v", mode, err)
		}
		if n != 50 || sum != "13387.50" {
			t.Fatalf("%v: aggregate %d %s", mode, n, sum)
		}
		rows, err := conn.Query(ctx, "SELECT id, balance FROM accounts WHERE id >= $1 ORDER BY id", mode, 1)
		if err != nil {
			t.Fatalf("%v: scan: %v", mode, err)
		}
		count := 0
		for rows.Next() {
			count++
		}
		if err := rows.Err(); err != nil || count != 50 {
			t.Fatalf("%v: scan returned %d rows, err %v", mode, count, err)
		}
		// A row the new form reads fine is served by it.
		if err := conn.QueryRow(ctx, "SELECT balance::text FROM accounts WHERE id = $1", mode, 2).Scan(&balance); err != nil || balance != "21.00" {
			t.Fatalf("%v: healthy row: %q %v", mode, balance, err)
		}
		if got := fallbacks() - before; got != 3 {
			t.Fatalf("%v: %v fallbacks counted, want 3", mode, got)
		}
		if routedNew()-newBefore < 4 {
			t.Fatalf("%v: reads were not routed to the new shape", mode)
		}
	}

	// Inside an explicit transaction, in every mode: the read falls back, and the transaction,
	// with what it wrote before the read, goes on and commits.
	var balance string
	for i, mode := range modes {
		before := fallbacks()
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		note := fmt.Sprintf("in tx %d", i)
		if _, err := tx.Exec(ctx, "UPDATE accounts SET owner = $1 WHERE id = 2", mode, note); err != nil {
			t.Fatalf("%v: write before the read: %v", mode, err)
		}
		if err := tx.QueryRow(ctx, "SELECT balance::text FROM accounts WHERE id = $1", mode, 7).Scan(&balance); err != nil || balance != "73.50" {
			t.Fatalf("%v: in a transaction: %q %v, want the old shape's 73.50", mode, balance, err)
		}
		var got string
		if err := tx.QueryRow(ctx, "SELECT owner FROM accounts WHERE id = 2", mode).Scan(&got); err != nil || got != note {
			t.Fatalf("%v: after the fallback, in the same transaction: %q %v", mode, got, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("%v: commit after the fallback: %v", mode, err)
		}
		if got := fallbacks() - before; got != 1 {
			t.Fatalf("%v: %v fallbacks counted in a transaction, want 1", mode, got)
		}
	}
	// A batch that also ends the transaction and starts another: the proxy's savepoint ends with
	// the first, and the second is not touched (a RELEASE there would fail and abort it).
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b := &pgx.Batch{}
	b.Queue("SELECT balance::text FROM accounts WHERE id = $1", 3)
	b.Queue("COMMIT")
	b.Queue("BEGIN")
	b.Queue("SELECT balance::text FROM accounts WHERE id = $1", 2)
	br := tx.SendBatch(ctx, b)
	if err := br.QueryRow().Scan(&balance); err != nil || balance != "31.50" {
		t.Fatalf("batch ending the transaction: %q %v", balance, err)
	}
	for range 2 {
		if _, err := br.Exec(); err != nil {
			t.Fatal(err)
		}
	}
	if err := br.QueryRow().Scan(&balance); err != nil || balance != "21.00" {
		t.Fatalf("batch ending the transaction, then a read: %q %v", balance, err)
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit of the transaction the batch began: %v", err)
	}

	// A failing read with a write after it in its batch: the failure stopped the batch before
	// the write ran, so the batch is re-run, the write in its mirrored form, once
	// (TestReadFallbackBeforeWrites has more).
	before := fallbacks()
	var balanceBefore, balanceAfter string
	if err := conn.QueryRow(ctx, "SELECT balance::text FROM accounts WHERE id = 4").Scan(&balanceBefore); err != nil {
		t.Fatal(err)
	}
	b = &pgx.Batch{}
	b.Queue("SELECT balance::text FROM accounts WHERE id = $1", 7)
	b.Queue("UPDATE accounts SET balance = balance + 1 WHERE id = $1", 4)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		t.Fatalf("a failing read with a write in its batch: %v", err)
	}
	if got := fallbacks() - before; got != 1 {
		t.Fatalf("%v fallbacks of a batch with a write, want 1", got)
	}
	if err := conn.QueryRow(ctx, "SELECT balance::text FROM accounts WHERE id = 4").Scan(&balanceAfter); err != nil || balanceBefore != "42.00" || balanceAfter != "43.00" {
		t.Fatalf("balance of account 4: %s before the batch, %s after (%v); want 42.00 and 43.00", balanceBefore, balanceAfter, err)
	}
	var diverged int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM accounts a JOIN accounts_v2 v USING (id) WHERE a.balance::text <> v.balance_text AND a.id <> 7").Scan(&diverged); err != nil || diverged != 0 {
		t.Fatalf("%d accounts differ from accounts_v2 (%v)", diverged, err)
	}

	// lib/pq (unnamed statement parsed, described and executed in two batches) and psql.
	before = fallbacks()
	db, err := sql.Open("postgres", cs.dsn(pgtest.SuperUser, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.QueryRowContext(ctx, "SELECT balance::text FROM accounts WHERE id = $1", 7).Scan(&balance); err != nil || balance != "73.50" {
		t.Fatalf("lib/pq: %q %v", balance, err)
	}
	if psql, err := pgtest.FindBin("psql"); err == nil {
		out, err := exec.Command(psql, "-X", "-At", "-c", "SELECT balance FROM accounts WHERE id = 7", cs.dsn(pgtest.SuperUser, "")).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "73.50" {
			t.Fatalf("psql: %v\n%s", err, out)
		}
	}
	if got := fallbacks() - before; got < 1 {
		t.Fatalf("lib/pq and psql: %v fallbacks counted", got)
	}
	// The session is still usable after all of it, and errors per route are counted.
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
	if cs.metric("pgcanary_statement_errors_total", map[string]string{"migration": "accounts-text", "route": "new", "sqlstate_class": "22"}) == 0 {
		t.Fatal("statement errors on the new route were not counted")
	}
}

// TestNamedStatementsSwitchRoute: a statement prepared once (pgx's statement cache) follows the
// flag on every execution, and closing, DEALLOCATE and DISCARD ALL leave the session consistent.
func TestNamedStatementsSwitchRoute(t *testing.T) {
	cs := customProxy(t, "named_variants", accountsSchema+"update accounts_v2 set balance_text = '73.50' where id = 7;",
		accountsMigration("fail"), proxyOpts{})
	ctx := testCtx(t)
	conn := connectDSN(t, cs.dsn(pgtest.SuperUser, ""))
	route := func(r string) float64 {
		return cs.metric("pgcanary_statements_total", map[string]string{"migration": "accounts-text", "kind": "read", "route": r})
	}
	const q = "SELECT owner, balance::text FROM accounts WHERE id = $1"
	read := func() {
		t.Helper()
		var owner, balance string
		if err := conn.QueryRow(ctx, q, pgx.QueryExecModeCacheStatement, 7).Scan(&owner, &balance); err != nil {
			t.Fatal(err)
		}
		if owner != "owner 7" || balance != "73.50" {
			t.Fatalf("read %q %s", owner, balance)
		}
	}
	read() // prepared at 0 %
	if route("old") != 1 || route("new") != 0 {
		t.Fatalf("at 0%%: old %v new %v", route("old"), route("new"))
	}
	cs.setFlags(map[string]float64{"accounts-text": 100})
	for range 3 {
		read()
	}
	if route("new") != 3 {
		t.Fatalf("after the flag went to 100%%, the prepared statement took the new route %v times of 3", route("new"))
	}
	cs.setFlags(map[string]float64{"accounts-text": 0})
	read()
	if route("old") != 2 {
		t.Fatalf("back at 0%%: old %v", route("old"))
	}
	// Close (pgx Deallocate) drops the statement and its variant; a new statement under the same
	// name with another text must work.
	cs.setFlags(map[string]float64{"accounts-text": 100})
	for _, reset := range []string{"deallocate", "DEALLOCATE ALL", "DISCARD ALL"} {
		read()
		switch reset {
		case "deallocate":
			if err := conn.DeallocateAll(ctx); err != nil {
				t.Fatal(err)
			}
		default:
			if _, err := conn.Exec(ctx, reset, pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
			// pgx does not know the server dropped its statements.
			conn.Close(ctx)
			conn = connectDSN(t, cs.dsn(pgtest.SuperUser, ""))
		}
		read()
	}
	// Prepare the same name twice by hand: the variant follows the current text.
	pc := conn.PgConn()
	for i, text := range []string{"SELECT owner FROM accounts WHERE id = $1", "SELECT balance::text FROM accounts WHERE id = $1"} {
		if _, err := pc.Prepare(ctx, "mine", text, nil); err != nil {
			t.Fatal(err)
		}
		res := pc.ExecPrepared(ctx, "mine", [][]byte{[]byte("7")}, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 {
			t.Fatalf("statement %d: %v", i, res.Err)
		}
		want := []string{"owner 7", "73.50"}[i]
		if got := string(res.Rows[0][0]); got != want {
			t.Fatalf("statement %d returned %q, want %q", i, got, want)
		}
		if err := pc.Deallocate(ctx, "mine"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPassthroughMirror: with on_mirror_error passthrough, a write whose mirror fails (a check
// constraint on the new table) succeeds unmirrored and is counted, outside and inside explicit
// transactions (through a savepoint) and in every protocol mode; with fail, it fails.
func TestPassthroughMirror(t *testing.T) {
	cs := customProxy(t, "passthrough", accountsSchema, accountsMigration("passthrough"), proxyOpts{})
	ctx := testCtx(t)
	conn := connectDSN(t, cs.dsn(pgtest.SuperUser, ""))
	direct := connectDSN(t, cs.directDSN)
	unmirrored := func() float64 {
		return cs.metric("pgcanary_unmirrored_writes_total", map[string]string{"migration": "accounts-text", "reason": "mirror_failed"})
	}
	newText := func(id int) string {
		t.Helper()
		var s string
		if err := direct.QueryRow(ctx, "select balance_text from accounts_v2 where id = $1", id).Scan(&s); err != nil {
			return "<" + err.Error() + ">"
		}
		return s
	}
	oldBalance := func(id int) string {
		t.Helper()
		var s string
		if err := direct.QueryRow(ctx, "select balance::text from accounts where id = $1", id).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement,
		pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec}
	for i, mode := range modes {
		id := 10 + i
		before := unmirrored()
		// Outside a transaction: the mirror fails, the original runs alone.
		tag, err := conn.Exec(ctx, "UPDATE accounts SET balance = $1 WHERE id = $2", mode, "123456.78", id)
		if err != nil || tag.String() != "UPDATE 1" {
			t.Fatalf("%v: update: %v %v", mode, tag, err)
		}
		if oldBalance(id) != "123456.78" || newText(id) == "123456.78" {
			t.Fatalf("%v: old %s new %s", mode, oldBalance(id), newText(id))
		}
		// A write the mirror accepts is still mirrored.
		if _, err := conn.Exec(ctx, "UPDATE accounts SET balance = $1 WHERE id = $2", mode, "5.25", id); err != nil {
			t.Fatal(err)
		}
		if newText(id) != "5.25" {
			t.Fatalf("%v: mirrored write left %q", mode, newText(id))
		}
		// INSERT ... RETURNING returns the original's rows.
		var got int
		if err := conn.QueryRow(ctx, "INSERT INTO accounts (id, owner, balance) VALUES ($1, 'x', 99999999.99) RETURNING id", mode, 100+i).Scan(&got); err != nil || got != 100+i {
			t.Fatalf("%v: insert returning: %v %v", mode, got, err)
		}
		// Inside a transaction: a savepoint keeps the transaction alive; other writes mirror;
		// COMMIT keeps both.
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = $1 WHERE id = $2", mode, "7777777.77", id); err != nil {
			t.Fatalf("%v: in transaction: %v", mode, err)
		}
		if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = $1 WHERE id = $2", mode, "1.5", id+20); err != nil {
			t.Fatalf("%v: second write in transaction: %v", mode, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatalf("%v: commit: %v", mode, err)
		}
		if oldBalance(id) != "7777777.77" || newText(id) != "5.25" || newText(id+20) != "1.50" {
			t.Fatalf("%v: after commit old %s new %s other %s", mode, oldBalance(id), newText(id), newText(id+20))
		}
		// ROLLBACK undoes the re-run write too.
		tx, err = conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = $1 WHERE id = $2", mode, "8888888.88", id); err != nil {
			t.Fatalf("%v: in transaction: %v", mode, err)
		}
		if err := tx.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		if oldBalance(id) != "7777777.77" {
			t.Fatalf("%v: rollback left %s", mode, oldBalance(id))
		}
		if got := unmirrored() - before; got != 4 {
			t.Fatalf("%v: %v unmirrored writes counted, want 4", mode, got)
		}
	}
	// A genuine error of the client's statement is the client's, in and out of transactions.
	if _, err := conn.Exec(ctx, "UPDATE accounts SET balance = 1/0 WHERE id = 1"); err == nil {
		t.Fatal("division by zero succeeded")
	}
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(new(int)); err != nil {
		t.Fatal(err)
	}
}

// TestMirrorFailFails: under on_mirror_error fail, the same write fails and neither shape changes.
func TestMirrorFailFails(t *testing.T) {
	cs := customProxy(t, "mirror_fail", accountsSchema, accountsMigration("fail"), proxyOpts{})
	ctx := testCtx(t)
	conn := connectDSN(t, cs.dsn(pgtest.SuperUser, ""))
	_, err := conn.Exec(ctx, "UPDATE accounts SET balance = $1 WHERE id = $2", "123456.78", 3)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23514" {
		t.Fatalf("got %v, want the new table's check violation", err)
	}
	var b string
	if err := conn.QueryRow(ctx, "SELECT balance::text FROM accounts WHERE id = 3").Scan(&b); err != nil || b != "31.50" {
		t.Fatalf("old shape changed: %s %v", b, err)
	}
}

// TestReadFallbackInBatches: a batch of several reads before one Sync, and a Query of several
// reads, are re-run in their old forms when a routed read among them fails, so the client sees
// every answer of the old forms. A batch with anything else among several statements (a write,
// whose serial values a re-run would advance again; a COMMIT) could not be re-run, so a read that
// may fail there is not routed: it takes the old shape.
func TestReadFallbackInBatches(t *testing.T) {
	cs := customProxy(t, "fallback_batches", accountsSchema+"create table hits (n serial, note text);", accountsMigration("fail"), proxyOpts{})
	cs.setFlags(map[string]float64{"accounts-text": 100})
	ctx := testCtx(t)
	conn := connectDSN(t, cs.dsn(pgtest.SuperUser, ""))
	direct := connectDSN(t, cs.directDSN)
	fallbacks := func() float64 {
		return cs.metric("pgcanary_read_fallbacks_total", map[string]string{"migration": "accounts-text"})
	}
	hits := func() int {
		t.Helper()
		var n int
		if err := direct.QueryRow(ctx, "select count(*) from hits").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	param := func(s string) [][]byte { return [][]byte{[]byte(s)} }
	const read = "SELECT balance::text FROM accounts WHERE id = $1"
	pipeline := func(stmts ...string) ([]string, error) {
		t.Helper()
		pipe := conn.PgConn().StartPipeline(ctx)
		for _, st := range stmts {
			if id, ok := strings.CutPrefix(st, "read "); ok {
				pipe.SendQueryParams(read, param(id), nil, nil, nil)
			} else {
				pipe.SendQueryParams(st, nil, nil, nil, nil)
			}
		}
		if err := pipe.Sync(); err != nil {
			t.Fatal(err)
		}
		var got []string
		var firstErr error
		for {
			res, err := pipe.GetResults()
			if err != nil {
				t.Fatalf("pipeline: %v", err)
			}
			if res == nil {
				break
			}
			if rr, ok := res.(*pgconn.ResultReader); ok {
				r := rr.Read()
				switch {
				case r.Err != nil:
					if firstErr == nil {
						firstErr = r.Err
					}
				case len(r.Rows) == 1:
					got = append(got, string(r.Rows[0][0]))
				default:
					got = append(got, r.CommandTag.String())
				}
			}
		}
		if err := pipe.Close(); err != nil {
			t.Fatal(err)
		}
		return got, firstErr
	}

	// Extended protocol: healthy reads around the failing one, one Sync.
	before := fallbacks()
	got, err := pipeline("read 2", "read 7", "read 3")
	if err != nil || strings.Join(got, "|") != "21.00|73.50|31.50" {
		t.Fatalf("pipeline answered %q, %v", got, err)
	}
	if fallbacks()-before != 1 {
		t.Fatalf("pipeline: %v fallbacks, want 1", fallbacks()-before)
	}
	// A named statement closed and prepared again inside the re-run batch: the client gets every
	// answer, and the statement it prepared stands afterwards (prepared statements outlive the
	// batch's rollback, so the re-run must neither close it again nor parse it twice).
	if _, err := conn.PgConn().Prepare(ctx, "fb", "SELECT 0 AS zero", nil); err != nil {
		t.Fatal(err)
	}
	before = fallbacks()
	pipe := conn.PgConn().StartPipeline(ctx)
	pipe.SendQueryParams(read, param("2"), nil, nil, nil)
	pipe.SendDeallocate("fb")
	pipe.SendPrepare("fb", "SELECT 1 AS one", nil)
	pipe.SendQueryParams(read, param("7"), nil, nil, nil)
	if err := pipe.Sync(); err != nil {
		t.Fatal(err)
	}
	var answers []string
	for {
		res, err := pipe.GetResults()
		if err != nil {
			t.Fatalf("pipeline with a Close and a Parse: %v", err)
		}
		if res == nil {
			break
		}
		switch r := res.(type) {
		case *pgconn.ResultReader:
			answers = append(answers, string(r.Read().Rows[0][0]))
		case *pgconn.StatementDescription:
			answers = append(answers, r.Fields[0].Name)
		case *pgconn.CloseComplete:
			answers = append(answers, "closed")
		}
	}
	if err := pipe.Close(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(answers, "|") != "21.00|closed|one|73.50" || fallbacks()-before != 1 {
		t.Fatalf("pipeline with a Close and a Parse answered %q with %v fallbacks; want 21.00|closed|one|73.50 and 1", answers, fallbacks()-before)
	}
	if r := conn.PgConn().ExecPrepared(ctx, "fb", nil, nil, nil).Read(); r.Err != nil || string(r.Rows[0][0]) != "1" {
		t.Fatalf("the statement prepared in the re-run batch: %v %q", r.Err, r.Rows)
	}
	// Simple protocol: one Query of three reads.
	before = fallbacks()
	results, err := conn.PgConn().Exec(ctx, "SELECT balance::text FROM accounts WHERE id = 3; SELECT owner FROM accounts WHERE id = 4; SELECT balance::text FROM accounts WHERE id = 7").ReadAll()
	if err != nil {
		t.Fatalf("multi-statement query: %v", err)
	}
	if len(results) != 3 || string(results[0].Rows[0][0]) != "31.50" || string(results[1].Rows[0][0]) != "owner 4" || string(results[2].Rows[0][0]) != "73.50" {
		t.Fatalf("multi-statement query answered %+v", results)
	}
	if fallbacks()-before != 1 {
		t.Fatalf("multi-statement query: %v fallbacks, want 1", fallbacks()-before)
	}

	// A write among the statements, in either protocol: no re-run could follow a failure, so the
	// read that may fail takes the old shape, and the batch runs once, as without pgcanary.
	routedOld := func() float64 {
		return cs.metric("pgcanary_statements_total", map[string]string{"migration": "accounts-text", "kind": "read", "route": "old"})
	}
	before, hitsBefore, oldBefore := fallbacks(), hits(), routedOld()
	if got, err := pipeline("INSERT INTO hits (note) VALUES ('x')", "read 7"); err != nil || strings.Join(got, "|") != "INSERT 0 1|73.50" {
		t.Fatalf("pipeline with a write: %q %v", got, err)
	}
	results, err = conn.PgConn().Exec(ctx, "INSERT INTO hits (note) VALUES ('y'); SELECT balance::text FROM accounts WHERE id = 7").ReadAll()
	if err != nil || len(results) != 2 || string(results[1].Rows[0][0]) != "73.50" {
		t.Fatalf("query with a write: %+v %v", results, err)
	}
	if fallbacks() != before || hits()-hitsBefore != 2 || routedOld()-oldBefore != 2 {
		t.Fatalf("batches with a write: %v fallbacks, %d rows, %v reads on the old shape; want 0, 2, 2",
			fallbacks()-before, hits()-hitsBefore, routedOld()-oldBefore)
	}
	// Batches pipelined behind another (each with its own Sync, as psycopg's pipeline mode sends
	// them): the first is re-run; those sent while it is in flight could not be, so their reads
	// take the old shape. Every answer is the old shape's.
	pipe = conn.PgConn().StartPipeline(ctx)
	for range 3 {
		pipe.SendQueryParams(read, param("7"), nil, nil, nil)
		pipe.SendPipelineSync()
	}
	if err := pipe.Flush(); err != nil {
		t.Fatal(err)
	}
	var pipelined []string
	for syncs := 0; syncs < 3; {
		res, err := pipe.GetResults()
		if err != nil {
			t.Fatalf("pipelined batches: %v", err)
		}
		switch r := res.(type) {
		case *pgconn.ResultReader:
			rr := r.Read()
			if rr.Err != nil {
				t.Fatalf("pipelined batches: %v (answers so far %q)", rr.Err, pipelined)
			}
			pipelined = append(pipelined, string(rr.Rows[0][0]))
		case *pgconn.PipelineSync:
			syncs++
		}
	}
	if err := pipe.Close(); err != nil {
		t.Fatal(err)
	}
	if strings.Join(pipelined, "|") != "73.50|73.50|73.50" {
		t.Fatalf("pipelined batches answered %q", pipelined)
	}
	// A COMMIT inside the Query: the same.
	before, hitsBefore = fallbacks(), hits()
	results, err = conn.PgConn().Exec(ctx, "BEGIN; INSERT INTO hits (note) VALUES ('c'); COMMIT; SELECT balance::text FROM accounts WHERE id = 7").ReadAll()
	if err != nil || len(results) != 4 || string(results[3].Rows[0][0]) != "73.50" {
		t.Fatalf("query with a COMMIT inside: %+v %v", results, err)
	}
	if fallbacks() != before || hits()-hitsBefore != 1 {
		t.Fatalf("query with a COMMIT inside: %v fallbacks, %d inserts; want 0 and 1", fallbacks()-before, hits()-hitsBefore)
	}

	// The session is in order afterwards.
	var b string
	if err := conn.QueryRow(ctx, read, 7).Scan(&b); err != nil || b != "73.50" {
		t.Fatalf("after the batches: %q %v", b, err)
	}
}

// TestFallbackWithFlush: a client that sends Flush and waits for answers before its Sync gets
// them at once (a gate holding them back would hang it). The answers it has may belong to work
// of the batch's implicit transaction, so the rest of that batch could not be re-run on its own:
// a read that may fail there takes the old shape, and the batch runs once.
func TestFallbackWithFlush(t *testing.T) {
	cs := customProxy(t, "fallback_flush", accountsSchema+"create table hits (n int);", accountsMigration("fail"), proxyOpts{})
	cs.setFlags(map[string]float64{"accounts-text": 100})
	ctx := testCtx(t)
	conn := connectDSN(t, cs.dsn(pgtest.SuperUser, ""))
	const read = "SELECT balance::text FROM accounts WHERE id = $1"
	for _, first := range []string{read, "INSERT INTO hits VALUES (1)"} {
		pipe := conn.PgConn().StartPipeline(ctx)
		if first == read {
			pipe.SendQueryParams(read, [][]byte{[]byte("2")}, nil, nil, nil)
		} else {
			pipe.SendQueryParams(first, nil, nil, nil, nil)
		}
		pipe.SendFlushRequest()
		if err := pipe.Flush(); err != nil {
			t.Fatal(err)
		}
		res, err := pipe.GetResults() // hangs if the answer is held back
		if err != nil {
			t.Fatalf("%s: %v", first, err)
		}
		if r := res.(*pgconn.ResultReader).Read(); r.Err != nil {
			t.Fatalf("%s: %v", first, r.Err)
		}
		pipe.SendQueryParams(read, [][]byte{[]byte("7")}, nil, nil, nil)
		if err := pipe.Sync(); err != nil {
			t.Fatal(err)
		}
		res, err = pipe.GetResults()
		if err != nil {
			t.Fatal(err)
		}
		if r := res.(*pgconn.ResultReader).Read(); r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][0]) != "73.50" {
			t.Fatalf("after %s and a Flush: %q %v, want the old shape's 73.50", first, r.Rows, r.Err)
		}
		for {
			if res, err := pipe.GetResults(); res == nil || err != nil {
				break
			}
		}
		if err := pipe.Close(); err != nil {
			t.Fatal(err)
		}
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM hits").Scan(&n); err != nil || n != 1 {
		t.Fatalf("hits: %d %v: the batch's insert ran once", n, err)
	}
}

// TestVariantFailureReachesClient: a role that may read the old table but not the new one. A
// prepared read routed to the new shape fails when its new-shape variant is prepared or bound; the
// read falls back to the old form, outside a transaction and, behind the proxy's savepoint (the
// read map's cast may fail), inside one, which goes on.
//
// Two ways to lack the privilege fail at two different messages: without SELECT on the new table,
// Postgres refuses at Bind (privileges are checked when the portal starts); without USAGE on the
// new table's schema, it refuses the variant's Parse, the proxy's own message.
func TestVariantFailureReachesClient(t *testing.T) {
	ctx := testCtx(t)
	const role = "pgc_old_only"
	_ = cluster.Exec(ctx, "drop role if exists "+role)
	if err := cluster.Exec(ctx, "create role "+role+" login"); err != nil {
		t.Fatal(err)
	}
	// Its privileges go with each test's database, so the role can be dropped at the end.
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "drop role if exists "+role) })
	inSchema := "create schema v2;\n" + strings.ReplaceAll(accountsSchema, "accounts_v2", "v2.accounts_v2")
	for _, tc := range []struct{ name, schema, migration string }{
		{"no_select", accountsSchema, accountsMigration("fail")},
		{"no_usage", inSchema, strings.Replace(accountsMigration("fail"), "public.accounts_v2", "v2.accounts_v2", 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs := customProxy(t, "variant_"+tc.name, tc.schema+"grant select on accounts to "+role+";", tc.migration, proxyOpts{})
			cs.setFlags(map[string]float64{"accounts-text": 100})
			conn := connectDSN(t, cs.dsn(role, ""))
			const read = "SELECT balance::text FROM accounts WHERE id = $1"
			for i, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
				var b string
				if err := conn.QueryRow(ctx, read, mode, 2+i).Scan(&b); err != nil || b != []string{"21.00", "31.50"}[i] {
					t.Fatalf("%v outside a transaction: %q %v", mode, b, err)
				}
			}
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var inTx string
			if err := tx.QueryRow(ctx, read, pgx.QueryExecModeCacheStatement, 4).Scan(&inTx); err != nil || inTx != "42.00" {
				t.Fatalf("in a transaction: %q %v, want the old shape's 42.00", inTx, err)
			}
			if err := tx.QueryRow(ctx, read, pgx.QueryExecModeCacheStatement, 3).Scan(&inTx); err != nil || inTx != "31.50" {
				t.Fatalf("in the same transaction after the fallback: %q %v", inTx, err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			cs.setFlags(map[string]float64{"accounts-text": 0})
			var b string
			if err := conn.QueryRow(ctx, read, pgx.QueryExecModeCacheStatement, 4).Scan(&b); err != nil || b != "42.00" {
				t.Fatalf("after the failed transaction: %q %v", b, err)
			}
		})
	}
}

// TestReadFallbackBeforeWrites: a pipeline whose first statement is a read that fails on the new
// shape, followed by mirrored writes (psycopg's pipeline mode sends such batches). The failure
// stops the batch before any write runs, so the batch is re-run: the read in its old form, the
// writes in their mirrored forms. The client gets every answer, and both shapes change.
// A write prepared under a name in such a batch stays mirrored in later executions.
//
// A client may send such a pipeline in pieces (psycopg does): the read's error, which Postgres
// sends at once, can reach the proxy before the rest of the batch. The proxy holds it for the
// batch's end (here up to 5 s, so that the test does not depend on timing), and re-runs then.
func TestReadFallbackBeforeWrites(t *testing.T) {
	// app.accounts is not migrated: a statement prepared under search_path app names it.
	schema := accountsSchema + "create schema app; create table app.accounts (like public.accounts);\n"
	cs := customProxy(t, "fallback_before_writes", schema, accountsMigration("fail"), proxyOpts{batchEndWait: 5 * time.Second})
	cs.setFlags(map[string]float64{"accounts-text": 100})
	ctx := testCtx(t)
	conn := connectDSN(t, cs.dsn(pgtest.SuperUser, ""))
	direct := connectDSN(t, cs.directDSN)
	fallbacks := func() float64 {
		return cs.metric("pgcanary_read_fallbacks_total", map[string]string{"migration": "accounts-text"})
	}
	mirrored := func(id int) string {
		t.Helper()
		var owner, text string
		if err := direct.QueryRow(ctx, "select owner, balance_text from accounts_v2 where id = $1", id).Scan(&owner, &text); err != nil {
			t.Fatal(err)
		}
		return owner + "/" + text
	}
	const read = "SELECT balance::text FROM accounts WHERE id = $1"
	param := func(s string) [][]byte { return [][]byte{[]byte(s)} }
	results := func(pipe *pgconn.Pipeline) []string {
		t.Helper()
		if err := pipe.Sync(); err != nil {
			t.Fatal(err)
		}
		var got []string
		for {
			res, err := pipe.GetResults()
			if err != nil {
				t.Fatalf("pipeline: %v", err)
			}
			if res == nil {
				break
			}
			switch r := res.(type) {
			case *pgconn.ResultReader:
				rr := r.Read()
				switch {
				case rr.Err != nil:
					got = append(got, "error: "+rr.Err.Error())
				case len(rr.Rows) == 1:
					got = append(got, string(rr.Rows[0][0]))
				default:
					got = append(got, rr.CommandTag.String())
				}
			case *pgconn.StatementDescription:
				got = append(got, "prepared")
			}
		}
		if err := pipe.Close(); err != nil {
			t.Fatal(err)
		}
		return got
	}

	before := fallbacks()
	pipe := conn.PgConn().StartPipeline(ctx)
	pipe.SendQueryParams(read, param("7"), nil, nil, nil)
	pipe.SendQueryParams("UPDATE accounts SET owner = 'first', balance = 1.25 WHERE id = 3", nil, nil, nil, nil)
	pipe.SendQueryParams(read, param("3"), nil, nil, nil)
	pipe.SendQueryParams("UPDATE accounts SET owner = $1 WHERE id = $2", [][]byte{[]byte("second"), []byte("4")}, nil, nil, nil)
	if got := strings.Join(results(pipe), "|"); got != "73.50|UPDATE 1|1.25|UPDATE 1" {
		t.Fatalf("read, write, read, write answered %q", got)
	}
	if n := fallbacks() - before; n != 1 {
		t.Fatalf("%v fallbacks, want 1", n)
	}
	if got := mirrored(3) + " " + mirrored(4); got != "first/1.25 second/42.00" {
		t.Fatalf("accounts_v2 rows 3 and 4: %q, want the writes mirrored", got)
	}

	// A named write prepared in the re-run batch: later executions mirror too.
	before = fallbacks()
	pipe = conn.PgConn().StartPipeline(ctx)
	pipe.SendQueryParams(read, param("7"), nil, nil, nil)
	pipe.SendPrepare("setowner", "UPDATE accounts SET owner = $1 WHERE id = $2", nil)
	if got := strings.Join(results(pipe), "|"); got != "73.50|prepared" {
		t.Fatalf("read, prepare answered %q", got)
	}
	if n := fallbacks() - before; n != 1 {
		t.Fatalf("%v fallbacks, want 1", n)
	}
	if r := conn.PgConn().ExecPrepared(ctx, "setowner", [][]byte{[]byte("third"), []byte("5")}, nil, nil).Read(); r.Err != nil || r.CommandTag.String() != "UPDATE 1" {
		t.Fatalf("executing the statement prepared in the re-run batch: %v %v", r.CommandTag, r.Err)
	}
	if got := mirrored(5); got != "third/52.50" {
		t.Fatalf("accounts_v2 row 5: %q, want the prepared write mirrored", got)
	}
	// The same with the write executed in the batch, then again after it.
	pipe = conn.PgConn().StartPipeline(ctx)
	pipe.SendQueryParams(read, param("7"), nil, nil, nil)
	pipe.SendPrepare("setowner2", "UPDATE accounts SET owner = $1 WHERE id = $2", nil)
	pipe.SendQueryPrepared("setowner2", [][]byte{[]byte("fourth"), []byte("6")}, nil, nil)
	if got := strings.Join(results(pipe), "|"); got != "73.50|prepared|UPDATE 1" {
		t.Fatalf("read, prepare, execute answered %q", got)
	}
	if r := conn.PgConn().ExecPrepared(ctx, "setowner2", [][]byte{[]byte("fifth"), []byte("8")}, nil, nil).Read(); r.Err != nil {
		t.Fatal(r.Err)
	}
	if got := mirrored(6) + " " + mirrored(8); got != "fourth/63.00 fifth/84.00" {
		t.Fatalf("accounts_v2 rows 6 and 8: %q, want the writes mirrored", got)
	}
	// Sent in pieces: the read first, the rest once its error has surely reached the proxy.
	before = fallbacks()
	pipe = conn.PgConn().StartPipeline(ctx)
	pipe.SendQueryParams(read, param("7"), nil, nil, nil)
	if err := pipe.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	pipe.SendQueryParams("UPDATE accounts SET owner = 'sixth' WHERE id = 9", nil, nil, nil, nil)
	if got := strings.Join(results(pipe), "|"); got != "73.50|UPDATE 1" {
		t.Fatalf("read, then a write sent after the read's error, answered %q", got)
	}
	if n := fallbacks() - before; n != 1 {
		t.Fatalf("%v fallbacks, want 1", n)
	}
	if got := mirrored(9); got != "sixth/94.50" {
		t.Fatalf("accounts_v2 row 9: %q, want the write mirrored", got)
	}
	// A named write prepared where its name meant another table (search_path app), bound after a
	// SET in its batch makes it the migrated one: it runs through a variant of the proxy's, its
	// mirrored form, whose Parse the read's failure skipped. The re-run prepares it again.
	if _, err := conn.Exec(ctx, "set search_path to app, public"); err != nil {
		t.Fatal(err)
	}
	pipe = conn.PgConn().StartPipeline(ctx)
	pipe.SendPrepare("movedowner", "UPDATE accounts SET owner = $1 WHERE id = $2", nil)
	if got := strings.Join(results(pipe), "|"); got != "prepared" {
		t.Fatalf("prepare answered %q", got)
	}
	before = fallbacks()
	pipe = conn.PgConn().StartPipeline(ctx)
	pipe.SendQueryParams("SELECT balance::text FROM public.accounts WHERE id = $1", param("7"), nil, nil, nil)
	pipe.SendQueryParams("SET search_path TO public", nil, nil, nil, nil)
	pipe.SendQueryPrepared("movedowner", [][]byte{[]byte("seventh"), []byte("10")}, nil, nil)
	if got := strings.Join(results(pipe), "|"); got != "73.50|SET|UPDATE 1" {
		t.Fatalf("read, SET, moved write answered %q", got)
	}
	if n := fallbacks() - before; n != 1 {
		t.Fatalf("%v fallbacks, want 1", n)
	}
	if got := mirrored(10); got != "seventh/105.00" {
		t.Fatalf("accounts_v2 row 10: %q, want the moved write mirrored", got)
	}
	var diff int
	if err := direct.QueryRow(ctx, `select count(*) from accounts a full join accounts_v2 b using (id)
		where b.id is null or a.id is null or a.owner <> b.owner or (a.balance::text <> b.balance_text and b.id <> 7)`).Scan(&diff); err != nil || diff != 0 {
		t.Fatalf("%d rows differ between the shapes (%v)", diff, err)
	}
}

// TestReadFallbackErrorNotHeldForever: a client that waits for a read's error before it sends the
// rest of its batch (Postgres sends errors without waiting for a Sync or Flush; pgx cannot wait so,
// hence a client speaking the protocol by hand) gets the error once the proxy stops waiting for
// the batch's end, and the session goes on.
func TestReadFallbackErrorNotHeldForever(t *testing.T) {
	const db = "fallback_error_held"
	cs := customProxy(t, db, accountsSchema, accountsMigration("fail"), proxyOpts{batchEndWait: 200 * time.Millisecond})
	cs.setFlags(map[string]float64{"accounts-text": 100})
	w := dialWire(t, cs.proxy.addr)
	w.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": pgtest.SuperUser, "database": db}})
	if err := w.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	w.readUntilReady(t)
	const read = "SELECT balance::text FROM accounts WHERE id = $1"
	w.fe.Send(&pgproto3.Parse{Query: read})
	w.fe.Send(&pgproto3.Bind{Parameters: [][]byte{[]byte("7")}})
	w.fe.Send(&pgproto3.Execute{})
	if err := w.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for done := false; !done; {
		msg, err := w.fe.Receive() // times out (the wire deadline) if the error is held for good
		if err != nil {
			t.Fatalf("waiting for the read's error: %v (got %q)", err, got)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			got = append(got, "error "+m.Code)
			done = true
		case *pgproto3.ParseComplete:
			got = append(got, "parsed")
		case *pgproto3.BindComplete:
			got = append(got, "bound")
		default:
			got = append(got, fmt.Sprintf("%T", msg))
		}
	}
	if strings.Join(got, "|") != "parsed|bound|error 22P02" {
		t.Fatalf("the read answered %q, want parsed|bound|error 22P02", got)
	}
	w.fe.Send(&pgproto3.Sync{})
	if err := w.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	w.readUntilReady(t)
	conn := connectDSN(t, cs.dsn(pgtest.SuperUser, ""))
	var b string
	if err := conn.QueryRow(testCtx(t), read, 7).Scan(&b); err != nil || b != "73.50" {
		t.Fatalf("a read afterwards: %q %v", b, err)
	}
}

// TestFlushedBatchInTransaction: in a transaction, a batch whose routed read may fail runs behind
// the proxy's savepoint. When the client asks for the answers with a Flush, they go out as soon as
// they are in (no re-run is possible after that), but the savepoint must still end with the
// batch: left open, a
// later error would leave the transaction failed inside it, where COMMIT AND CHAIN starts the
// next transaction (with the failed one's characteristics) instead of ending it, and each such
// batch would nest one subtransaction deeper.
func TestFlushedBatchInTransaction(t *testing.T) {
	cs := customProxy(t, "fallback_flush_tx", accountsSchema, accountsMigration("fail"), proxyOpts{})
	cs.setFlags(map[string]float64{"accounts-text": 100})
	ctx := testCtx(t)
	const read = "SELECT balance::text FROM accounts WHERE id = $1"
	run := func(conn *pgx.Conn) string {
		t.Helper()
		var got []string
		if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY"); err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{"2", "7"} {
			pipe := conn.PgConn().StartPipeline(ctx)
			pipe.SendQueryParams(read, [][]byte{[]byte(id)}, nil, nil, nil)
			pipe.SendFlushRequest()
			if err := pipe.Flush(); err != nil {
				t.Fatal(err)
			}
			res, err := pipe.GetResults()
			if err != nil {
				t.Fatal(err)
			}
			r := res.(*pgconn.ResultReader).Read()
			switch {
			case r.Err != nil:
				var pgErr *pgconn.PgError
				errors.As(r.Err, &pgErr)
				got = append(got, "error "+pgErr.Code)
			default:
				got = append(got, string(r.Rows[0][0]))
			}
			if err := pipe.Sync(); err != nil {
				t.Fatal(err)
			}
			for {
				if res, err := pipe.GetResults(); res == nil || err != nil {
					break
				}
			}
			if err := pipe.Close(); err != nil {
				t.Fatal(err)
			}
			if r.Err != nil {
				break
			}
		}
		if _, err := conn.Exec(ctx, "SELECT 1/0"); err == nil {
			t.Fatal("1/0 succeeded")
		}
		tag, err := conn.PgConn().Exec(ctx, "COMMIT AND CHAIN").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, tag[0].CommandTag.String(), "status "+string(conn.PgConn().TxStatus()))
		if conn.PgConn().TxStatus() != 'I' {
			var ro string
			if err := conn.QueryRow(ctx, "SHOW transaction_read_only").Scan(&ro); err != nil {
				t.Fatal(err)
			}
			got = append(got, "read only "+ro)
			if _, err := conn.Exec(ctx, "ROLLBACK"); err != nil {
				t.Fatal(err)
			}
		}
		return strings.Join(got, "|")
	}
	direct := run(connectDSN(t, cs.directDSN))
	proxied := run(connectDSN(t, cs.dsn(pgtest.SuperUser, "")))
	// Account 7's read fails on the new shape before any answer went out: it is re-run, though
	// the client flushed (flushGate).
	if want := "21.00|73.50|ROLLBACK|status T|read only off"; direct != want {
		t.Fatalf("directly: %q, want %q", direct, want)
	}
	if proxied != direct {
		t.Fatalf("through pgcanary: %q; directly: %q", proxied, direct)
	}
}
