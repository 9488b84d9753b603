package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// TestProtocolWithMigrations runs protocol corners through a proxy whose migrations are live
// (reads routed at 100 %, every read compared, writes mirrored): pipelines of routed reads and
// mirrored writes, an error inside a pipeline, COPY both ways, LISTEN/NOTIFY, and a cancelled
// routed read, which must not be re-run by the fallback. Both shapes agree at the end.
func TestProtocolWithMigrations(t *testing.T) {
	ff := newFlagFile(t)
	p, dsn := migratedProxyWith(t, "proto_migrated", proxyOpts{flags: ff.src, canary: true, configEdit: compareAll("")})
	ff.set(100)
	ctx := testCtx(t)
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))

	// A pipeline (one batch, many Syncs) of routed reads and mirrored writes.
	batch := &pgx.Batch{}
	for i := range 100 {
		if i%3 == 0 {
			batch.Queue("UPDATE users SET full_name = $1 WHERE id = $2", fmt.Sprintf("Pipe Line%d", i), 1+i)
		} else {
			batch.Queue("SELECT full_name FROM users WHERE id = $1", 1+i-i%3) // the row the write before wrote
		}
	}
	br := conn.SendBatch(ctx, batch)
	for i := range 100 {
		if i%3 == 0 {
			tag, err := br.Exec()
			if err != nil || tag.String() != "UPDATE 1" {
				t.Fatalf("batch write %d: %v %v", i, tag, err)
			}
			continue
		}
		var name string
		if err := br.QueryRow().Scan(&name); err != nil {
			t.Fatalf("batch read %d: %q %v", i, name, err)
		}
		if want := fmt.Sprintf("Pipe Line%d", i-i%3); name != want {
			t.Fatalf("batch read %d saw %q, not the write before it (%q)", i, name, want)
		}
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}

	// An error in the middle of a pipeline skips to its Sync; the next Sync's work runs.
	pipe := conn.PgConn().StartPipeline(ctx)
	pipe.SendQueryParams("SELECT full_name FROM users WHERE id = $1", [][]byte{[]byte("2")}, nil, nil, nil)
	pipe.SendQueryParams("SELECT 1/0", nil, nil, nil, nil)
	pipe.SendQueryParams("SELECT full_name FROM users WHERE id = $1", [][]byte{[]byte("3")}, nil, nil, nil)
	if err := pipe.Sync(); err != nil {
		t.Fatal(err)
	}
	pipe.SendQueryParams("SELECT full_name FROM users WHERE id = $1", [][]byte{[]byte("2")}, nil, nil, nil)
	if err := pipe.Sync(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for syncs := 0; syncs < 2; {
		r, err := pipe.GetResults()
		if err != nil {
			got = append(got, "err:"+pgCode(err))
			continue
		}
		switch r := r.(type) {
		case *pgconn.ResultReader:
			rr := r.Read()
			if rr.Err != nil {
				got = append(got, "err:"+pgCode(rr.Err))
			} else {
				got = append(got, string(rr.Rows[0][0]))
			}
		case *pgconn.PipelineSync:
			got = append(got, "sync")
			syncs++
		}
	}
	if err := pipe.Close(); err != nil {
		t.Fatal(err)
	}
	if want := "Grace Brewster Hopper,err:22012,sync,Grace Brewster Hopper,sync"; strings.Join(got, ",") != want {
		t.Fatalf("pipeline: %v, want %s", got, want)
	}

	// COPY out of a migrated table (relayed as is) and into a table of no migration.
	var out bytes.Buffer
	tag, err := conn.PgConn().CopyTo(ctx, &out, "COPY (SELECT id, full_name FROM users ORDER BY id) TO STDOUT")
	if err != nil || tag.RowsAffected() < 300 {
		t.Fatalf("copy to: %v %v", tag, err)
	}
	if _, err := conn.Exec(ctx, "CREATE TEMP TABLE copy_in (id int, name text)"); err != nil {
		t.Fatal(err)
	}
	if tag, err := conn.PgConn().CopyFrom(ctx, strings.NewReader(out.String()), "COPY copy_in FROM STDIN"); err != nil || tag.RowsAffected() < 300 {
		t.Fatalf("copy from: %v %v", tag, err)
	}

	// LISTEN/NOTIFY on the same session as routed reads.
	if _, err := conn.Exec(ctx, "LISTEN pgcanary_mig"); err != nil {
		t.Fatal(err)
	}
	other := connectDSN(t, dsn(pgtest.SuperUser, ""))
	if _, err := other.Exec(ctx, "SELECT pg_notify('pgcanary_mig', 'hello')"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	n, err := conn.WaitForNotification(wctx)
	cancel()
	if err != nil || n.Payload != "hello" {
		t.Fatalf("notification %+v %v", n, err)
	}

	// A routed read cancelled by the client is not re-run in the old form.
	before := max(gatheredValue(t, p.reg, "pgcanary_read_fallbacks_total", map[string]string{"migration": usersMigration}), 0)
	slow := connectDSN(t, dsn(pgtest.SuperUser, ""))
	cancelRunning(t, slow, "SELECT full_name, pg_sleep(30) FROM users WHERE id = 1", pgx.QueryExecModeSimpleProtocol)
	if after := max(gatheredValue(t, p.reg, "pgcanary_read_fallbacks_total", map[string]string{"migration": usersMigration}), 0); after != before {
		t.Fatalf("a cancelled read was re-run (%v fallbacks)", after-before)
	}
	var name string
	if err := slow.QueryRow(ctx, "SELECT full_name FROM users WHERE id = 2").Scan(&name); err != nil || name != "Grace Brewster Hopper" {
		t.Fatalf("after cancel: %q %v", name, err)
	}
	assertShapesAgree(t, connectDSN(t, dsn(pgtest.SuperUser, "")))
}
