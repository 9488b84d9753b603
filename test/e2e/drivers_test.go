package e2e

import (
	"bytes"
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
	_ "github.com/lib/pq"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

func TestPgxSimpleProtocol(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	ctx := testCtx(t)
	conn := connectDSN(t, p.dsn(pgtest.SuperUser, "")+"&default_query_exec_mode=simple_protocol")
	var s string
	var n int
	if err := conn.QueryRow(ctx, "select $1::text || 'b', $2::int * 2", "a", 21).Scan(&s, &n); err != nil || s != "ab" || n != 42 {
		t.Fatalf("got %q %d %v", s, n, err)
	}
	// Several statements in one Query message: every result set and command tag comes back.
	results, err := conn.PgConn().Exec(ctx, "create temp table simple_t(x int); insert into simple_t values (1),(2); select x from simple_t order by x; select 'done'").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 4 {
		t.Fatalf("got %d results, want 4", len(results))
	}
	if tag := results[1].CommandTag.String(); tag != "INSERT 0 2" {
		t.Fatalf("insert tag %q", tag)
	}
	if len(results[2].Rows) != 2 || string(results[2].Rows[1][0]) != "2" || string(results[3].Rows[0][0]) != "done" {
		t.Fatalf("unexpected rows: %v %v", results[2].Rows, results[3].Rows)
	}
	// An empty query answers EmptyQueryResponse.
	if _, err := conn.PgConn().Exec(ctx, "").ReadAll(); err != nil {
		t.Fatalf("empty query: %v", err)
	}
}

func TestPgxExtendedProtocol(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	ctx := testCtx(t)
	conn := p.connect(t)
	// Named statement, executed many times.
	if _, err := conn.Prepare(ctx, "add", "select $1::int + $2::int"); err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		var n int
		if err := conn.QueryRow(ctx, "add", i, 1).Scan(&n); err != nil || n != i+1 {
			t.Fatalf("add(%d,1) = %d, %v", i, n, err)
		}
	}
	// Describe of a statement returns its parameter and result types.
	sd, err := conn.Prepare(ctx, "desc", "select $1::text as a, $2::bigint as b, now() as c")
	if err != nil {
		t.Fatal(err)
	}
	if len(sd.ParamOIDs) != 2 || len(sd.Fields) != 3 || sd.Fields[2].Name != "c" {
		t.Fatalf("describe: %+v", sd)
	}
	if err := conn.Deallocate(ctx, "desc"); err != nil {
		t.Fatal(err)
	}
	// Unnamed statements, every exec mode pgx has.
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe, pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		rows, err := conn.Query(ctx, "select g, g::text from generate_series(1, $1::int) g", mode, 1000)
		if err != nil {
			t.Fatalf("mode %v: %v", mode, err)
		}
		count := 0
		for rows.Next() {
			var g int
			var s string
			if err := rows.Scan(&g, &s); err != nil {
				t.Fatal(err)
			}
			count++
			if s != fmt.Sprint(g) {
				t.Fatalf("row %d: %q", g, s)
			}
		}
		if rows.Err() != nil || count != 1000 {
			t.Fatalf("mode %v: %d rows, %v", mode, count, rows.Err())
		}
	}
	// A portal read in pieces (Execute with a row limit → PortalSuspended).
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "declare c cursor for select generate_series(1, 10)"); err != nil {
		t.Fatal(err)
	}
	var total int
	for range 5 {
		rows, _ := tx.Query(ctx, "fetch 2 from c")
		for rows.Next() {
			var v int
			_ = rows.Scan(&v)
			total += v
		}
		if rows.Err() != nil {
			t.Fatal(rows.Err())
		}
	}
	if total != 55 {
		t.Fatalf("cursor sum %d", total)
	}
	_ = tx.Rollback(ctx)

	res := conn.PgConn().ExecParams(ctx, "select generate_series(1, 5)", nil, nil, nil, nil)
	if r := res.Read(); r.Err != nil || len(r.Rows) != 5 {
		t.Fatalf("ExecParams: %v %d", r.Err, len(r.Rows))
	}
}

// TestPipeline sends many Parse/Bind/Execute before one Sync, with an error in the middle: the
// server skips to Sync, and later syncs work again.
func TestPipeline(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	ctx := testCtx(t)
	conn := p.connect(t)

	batch := &pgx.Batch{}
	for i := range 200 {
		batch.Queue("select $1::int * 2", i)
	}
	br := conn.SendBatch(ctx, batch)
	for i := range 200 {
		var n int
		if err := br.QueryRow().Scan(&n); err != nil || n != 2*i {
			t.Fatalf("batch %d: %d %v", i, n, err)
		}
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}

	pc := conn.PgConn()
	pipe := pc.StartPipeline(ctx)
	pipe.SendPrepare("p_ok", "select $1::int", nil)
	pipe.SendQueryParams("select 1", nil, nil, nil, nil)
	pipe.SendQueryParams("select 1/0", nil, nil, nil, nil) // fails: the rest until Sync is skipped
	pipe.SendQueryParams("select 2", nil, nil, nil, nil)
	if err := pipe.Sync(); err != nil {
		t.Fatal(err)
	}
	pipe.SendQueryPrepared("p_ok", [][]byte{[]byte("7")}, nil, nil)
	if err := pipe.Sync(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		r, err := pipe.GetResults()
		if err != nil {
			got = append(got, "err:"+pgCode(err))
			continue
		}
		if r == nil {
			break
		}
		switch r := r.(type) {
		case *pgconn.StatementDescription:
			got = append(got, "prepared")
		case *pgconn.ResultReader:
			rr := r.Read()
			if rr.Err != nil {
				got = append(got, "err:"+pgCode(rr.Err))
			} else {
				got = append(got, string(rr.Rows[0][0]))
			}
		case *pgconn.PipelineSync:
			got = append(got, "sync")
			if strings.Count(strings.Join(got, ","), "sync") == 2 {
				goto done
			}
		}
	}
done:
	if err := pipe.Close(); err != nil {
		t.Fatal(err)
	}
	want := "prepared,1,err:22012,sync,7,sync"
	if strings.Join(got, ",") != want {
		t.Fatalf("pipeline results %v, want %s", got, want)
	}
	var n int
	if err := conn.QueryRow(ctx, "select 3").Scan(&n); err != nil || n != 3 {
		t.Fatalf("after pipeline: %d %v", n, err)
	}
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return err.Error()
}

func TestCopyBothWays(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	ctx := testCtx(t)
	conn := p.connect(t)
	if _, err := conn.Exec(ctx, "create temp table copy_t(id int primary key, name text, data bytea)"); err != nil {
		t.Fatal(err)
	}
	const rows = 20000
	src := make([][]any, rows)
	for i := range src {
		src[i] = []any{i, fmt.Sprintf("name-%d", i), bytes.Repeat([]byte{byte(i)}, i%100)}
	}
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"copy_t"}, []string{"id", "name", "data"}, pgx.CopyFromRows(src))
	if err != nil || n != rows {
		t.Fatalf("copy from: %d %v", n, err)
	}
	// COPY FROM STDIN in text format through the simple protocol.
	tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader("100000\tx\t\\\\x00\n100001\ty\t\\N\n"), "copy copy_t from stdin")
	if err != nil || tag.RowsAffected() != 2 {
		t.Fatalf("copy text: %v %v", tag, err)
	}
	var out bytes.Buffer
	tag, err = conn.PgConn().CopyTo(ctx, &out, "copy (select id, name from copy_t order by id) to stdout")
	if err != nil || tag.RowsAffected() != rows+2 {
		t.Fatalf("copy to: %v %v", tag, err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != rows+2 || lines[12345] != "12345\tname-12345" {
		t.Fatalf("copy out: %d lines, line 12345 %q", len(lines), lines[12345])
	}
	// A failing COPY (duplicate key) reports the error and leaves the connection usable.
	_, err = conn.PgConn().CopyFrom(ctx, strings.NewReader("1\tdup\t\\N\n"), "copy copy_t from stdin")
	if pgCode(err) != "23505" {
		t.Fatalf("duplicate copy: %v", err)
	}
	var count int
	if err := conn.QueryRow(ctx, "select count(*) from copy_t").Scan(&count); err != nil || count != rows+2 {
		t.Fatalf("count %d %v", count, err)
	}
}

func TestListenNotify(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	ctx := testCtx(t)
	listener := p.connect(t)
	sender := p.connect(t)
	if _, err := listener.Exec(ctx, "listen pgcanary_events"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := sender.Exec(ctx, "select pg_notify('pgcanary_events', $1)", fmt.Sprint("msg-", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		n, err := listener.WaitForNotification(wctx)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if n.Channel != "pgcanary_events" || n.Payload != fmt.Sprint("msg-", i) {
			t.Fatalf("notification %d: %+v", i, n)
		}
	}
}

// TestCancel cancels a running pg_sleep through the proxy: pgx sends a CancelRequest with the key
// the proxy issued, which the proxy maps to the server backend's key.
func TestCancel(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	conn := p.connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := conn.Exec(ctx, "select pg_sleep(30)")
	if err == nil {
		t.Fatal("pg_sleep(30) was not cancelled")
	}
	if time.Since(start) > 20*time.Second {
		t.Fatalf("cancel took %s", time.Since(start))
	}
	// pgx closes a connection whose query was interrupted by its context; the cancel itself must
	// have reached the server: the backend reports query_canceled in its error, or is gone.
	if code := pgCode(err); code != "57014" && !pgconn.Timeout(err) {
		t.Fatalf("error %v (code %s), want 57014 or a timeout", err, code)
	}

	// Same through PgConn.CancelRequest directly, keeping the connection.
	conn2 := p.connect(t)
	cancelRunning(t, conn2, "select pg_sleep(30)", conn2.Config().DefaultQueryExecMode)
	var n int
	if err := conn2.QueryRow(context.Background(), "select 1").Scan(&n); err != nil {
		t.Fatalf("connection unusable after cancel: %v", err)
	}
}

// cancelRunning runs sql (which must take long) on conn, cancels it with a CancelRequest once it
// runs, and expects query_canceled; conn stays usable.
func cancelRunning(t *testing.T, conn *pgx.Conn, sql string, mode pgx.QueryExecMode) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(context.Background(), sql, mode)
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if err := conn.PgConn().CancelRequest(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if pgCode(err) != "57014" {
			t.Fatalf("cancelled %q: %v", sql, err)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("cancel request did not interrupt %q", sql)
	}
}

func TestErrorsInsideTransactions(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	ctx := testCtx(t)
	conn := p.connect(t)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "create temp table tx_t(x int primary key)"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "insert into tx_t values (1)"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "insert into tx_t values (1)"); pgCode(err) != "23505" {
		t.Fatalf("duplicate insert: %v", err)
	}
	if conn.PgConn().TxStatus() != 'E' {
		t.Fatalf("tx status %q, want E", conn.PgConn().TxStatus())
	}
	if _, err := tx.Exec(ctx, "select 1"); pgCode(err) != "25P02" {
		t.Fatalf("statement in failed transaction: %v", err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if conn.PgConn().TxStatus() != 'I' {
		t.Fatalf("tx status %q after rollback", conn.PgConn().TxStatus())
	}
	// Savepoints recover inside a transaction.
	tx, _ = conn.Begin(ctx)
	_, _ = tx.Exec(ctx, "create temp table tx_s(x int primary key)")
	_, _ = tx.Exec(ctx, "savepoint s1")
	_, err = tx.Exec(ctx, "select 1/0")
	if pgCode(err) != "22012" {
		t.Fatalf("1/0: %v", err)
	}
	if _, err := tx.Exec(ctx, "rollback to savepoint s1"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "insert into tx_s values (5)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestLargeValue sends and receives a 100 MB value in both protocols.
func TestLargeValue(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 400 MB through the proxy; skipped with -short")
	}
	p := startProxy(t, proxyOpts{})
	ctx := testCtx(t)
	conn := p.connect(t)
	big := strings.Repeat("0123456789abcdef", 100<<20/16)
	if _, err := conn.Exec(ctx, "create temp table big_t(v text)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "insert into big_t values ($1)", big); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := conn.QueryRow(ctx, "select v from big_t").Scan(&got); err != nil {
		t.Fatal(err)
	}
	if got != big {
		t.Fatalf("value came back with %d bytes, want %d", len(got), len(big))
	}
	var n int
	if err := conn.QueryRow(ctx, "select length(v) from big_t", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil || n != len(big) {
		t.Fatalf("length %d %v", n, err)
	}
}

func TestLibPQ(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	ctx := testCtx(t)
	db, err := sql.Open("postgres", p.dsn(pgtest.MD5User, pgtest.MD5Password))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(4)
	if _, err := db.ExecContext(ctx, "create table if not exists libpq_t(id serial primary key, v text)"); err != nil {
		t.Fatal(err)
	}
	defer db.ExecContext(context.Background(), "drop table libpq_t")
	stmt, err := db.PrepareContext(ctx, "insert into libpq_t(v) values ($1) returning id")
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		var id int
		if err := stmt.QueryRowContext(ctx, fmt.Sprint("v", i)).Scan(&id); err != nil {
			t.Fatal(err)
		}
	}
	_ = stmt.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "delete from libpq_t where id <= 5"); err != nil {
		t.Fatal(err)
	}
	_ = tx.Rollback()
	var count int
	if err := db.QueryRowContext(ctx, "select count(*) from libpq_t").Scan(&count); err != nil || count != 20 {
		t.Fatalf("count %d %v", count, err)
	}
	rows, err := db.QueryContext(ctx, "select id, v from libpq_t where id > $1 order by id", 15)
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for rows.Next() {
		got++
	}
	if rows.Close(); got != 5 {
		t.Fatalf("rows %d", got)
	}
	if _, err := db.ExecContext(ctx, "select 1/0"); err == nil || !strings.Contains(err.Error(), "division by zero") {
		t.Fatalf("error not relayed: %v", err)
	}
}

func TestPsql(t *testing.T) {
	psql, err := pgtest.FindBin("psql")
	if err != nil {
		t.Skipf("psql not installed: %v", err)
	}
	p := startProxy(t, proxyOpts{})
	script := `create temp table psql_t(a int, b text);
\copy psql_t from stdin
1	one
2	two
\.
select string_agg(a || ':' || b, ',' order by a) from psql_t;
\copy psql_t to stdout
select 1/0;
select 'after error';
`
	cmd := exec.Command(psql, "-X", "-At", "-v", "ON_ERROR_STOP=0", p.dsn(pgtest.SCRAMUser, pgtest.SCRAMPassword))
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	text := string(out)
	if err != nil && !strings.Contains(text, "division by zero") {
		t.Fatalf("psql: %v\n%s", err, text)
	}
	for _, want := range []string{"1:one,2:two", "1\tone\n2\ttwo", "division by zero", "after error"} {
		if !strings.Contains(text, want) {
			t.Fatalf("psql output lacks %q:\n%s", want, text)
		}
	}
}
