package verify_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/test/pgtest"
	"github.com/pgcanary/pgcanary/verify"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) { pgtest.RunMain(m, pgtest.Options{}, &cluster) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// superDSN is a superuser DSN for db.
func superDSN(db string) string { return cluster.DatabaseDSN(db, pgtest.SuperUser, "") }

// createDB makes a fresh database, dropped when the test ends.
func createDB(t *testing.T, name string) string {
	cluster.CreateDatabase(t, name)
	return name
}

// examplesDB loads examples/schema.sql (200 users, 600 orders) into a fresh database and returns
// the example configuration pointed at it, and a connection to it.
func examplesDB(t *testing.T, name string) (*config.Config, *pgx.Conn) {
	t.Helper()
	db := createDB(t, name)
	psql, err := pgtest.FindBin("psql")
	if err != nil {
		t.Fatalf("psql is needed to load examples/schema.sql: %v", err)
	}
	out, err := exec.Command(psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "users=200", "-v", "orders=600",
		"-d", superDSN(db), "-f", "../examples/schema.sql").CombinedOutput()
	if err != nil {
		t.Fatalf("load schema: %v\n%s", err, out)
	}
	t.Setenv("PGCANARY_UPSTREAM", cluster.Addr())
	t.Setenv("PGCANARY_SIDE_DSN", superDSN(db))
	t.Setenv("PGCANARY_DATABASE", db)
	cfg, err := config.Load("../examples/pgcanary.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return cfg, connect(t, db)
}

func connect(t *testing.T, db string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(testCtx(t), superDSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec1(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(testCtx(t), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// small ranges and leaves, so that a few hundred rows exercise splitting and drill-down.
var small = verify.Options{RangeRows: 37, LeafRows: 5}

func run(t *testing.T, cfg *config.Config, name string, opts verify.Options) *verify.Result {
	t.Helper()
	res, err := verify.Verify(testCtx(t), cfg, name, config.DSNConnector(cfg.SideDSN), opts)
	if err != nil {
		t.Fatalf("verify %s: %v", name, err)
	}
	return res
}

// summary renders the found differences as sorted "kind key [columns]" lines.
func summary(diffs []verify.KeyDiff) []string {
	var out []string
	for _, d := range diffs {
		s := d.Kind + " " + d.String()
		if len(d.Columns) > 0 {
			s += " " + strings.Join(d.Columns, ",")
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func wantDiffs(t *testing.T, res *verify.Result, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := summary(res.SampleKeys); !slices.Equal(got, want) {
		t.Fatalf("differences:\n got  %q\n want %q", got, want)
	}
	if int(res.Differences()) != len(want) {
		t.Fatalf("%d differences counted, %d listed", res.Differences(), len(want))
	}
}

func TestVerifyEqualShapes(t *testing.T) {
	cfg, _ := examplesDB(t, "verify_equal")
	for _, opts := range []verify.Options{{}, small, {RangeRows: 37, LeafRows: 5, Workers: 3}} {
		users := run(t, cfg, "users-split-name", opts)
		if users.Differences() != 0 || users.Remaining != 0 || users.RowsCompared != 200 || !users.Equal() || users.NullKeys() != 0 {
			t.Fatalf("users %+v: want 200 rows compared, no differences", users)
		}
		orders := run(t, cfg, "orders-cents", opts)
		if orders.Differences() != 0 || orders.Remaining != 0 || orders.RowsCompared != 600 || !orders.Equal() || orders.NullKeys() != 0 {
			t.Fatalf("orders %+v: want 600 rows compared, no differences", orders)
		}
		if opts.RangeRows == 37 && users.Ranges != 6 { // 200/37: 5 full ranges and the open last one
			t.Fatalf("users: %d ranges, want 6", users.Ranges)
		}
	}
}

// TestVerifyDriftAndRepair writes behind the proxy's back on each side, at the edges of the key
// space too, then finds exactly those keys and columns, repairs them, and verifies clean.
func TestVerifyDriftAndRepair(t *testing.T) {
	cfg, conn := examplesDB(t, "verify_drift")
	exec1(t, conn, `update users set full_name = 'Zed Quux' where id = 10`)   // old changed, not mirrored
	exec1(t, conn, `update users set birthday = '2001-02-03' where id = 11`)  // a copied column
	exec1(t, conn, `update users_v2 set last_name = 'Changed' where id = 20`) // new changed
	exec1(t, conn, `update users_v2 set last_name = null where id = 22 and last_name is not null`)
	exec1(t, conn, `delete from orders where user_id = 30; delete from users where id = 30`) // only in new
	exec1(t, conn, `delete from users_v2 where id = 40`)                                     // only in old
	exec1(t, conn, `delete from users_v2 where id in (1, 200)`)                              // old's first and last keys
	// Below the first and above the last key of old: only the open ranges see them.
	exec1(t, conn, `insert into users_v2 select -5, 'Below', null, 'below@x', true, 'free', null, '{}', '{}', gen_random_uuid(), now()`)
	exec1(t, conn, `insert into users_v2 select 99999, 'Above', 'X', 'above@x', true, 'free', null, '{}', '{}', gen_random_uuid(), now()`)

	for _, opts := range []verify.Options{small, {}} {
		res := run(t, cfg, "users-split-name", opts)
		wantDiffs(t, res,
			"differing id=10 first_name,last_name", "differing id=11 birthday", "differing id=20 last_name",
			"differing id=22 last_name", "extra_in_new id=30", "missing_in_new id=40",
			"missing_in_new id=1", "missing_in_new id=200", "extra_in_new id=-5", "extra_in_new id=99999")
		if res.Remaining != 10 || res.Repaired != 0 {
			t.Fatalf("remaining %d repaired %d, want 10 and 0", res.Remaining, res.Repaired)
		}
		if res.DifferingColumns["last_name"] != 3 || res.DifferingColumns["first_name"] != 1 || res.DifferingColumns["birthday"] != 1 {
			t.Fatalf("differing columns %v", res.DifferingColumns)
		}
		if res.RowsCompared != 199+3 { // 199 rows in old, three keys only in new
			t.Fatalf("rows compared %d, want 202", res.RowsCompared)
		}
	}

	repair := small
	repair.Repair = true
	res := run(t, cfg, "users-split-name", repair)
	if res.Differences() != 10 || res.Remaining != 0 || res.Repaired != 10 {
		t.Fatalf("repair: %d differences, %d repaired, %d remaining (%v); want 10, 10, 0", res.Differences(), res.Repaired, res.Remaining, res.RemainingKeys)
	}
	if res := run(t, cfg, "users-split-name", small); res.Differences() != 0 {
		t.Fatalf("after repair: %v", summary(res.SampleKeys))
	}
	var diff int
	err := conn.QueryRow(testCtx(t), `
		with wm as (select id, split_part(full_name, ' ', 1) as first_name,
		                   nullif(substr(full_name, length(split_part(full_name, ' ', 1)) + 2), '') as last_name,
		                   email, active, tier, birthday, profile, tags, external_id, created_at from users),
		     nw as (select id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at from users_v2)
		select (select count(*) from (select * from wm except all select * from nw) a)
		     + (select count(*) from (select * from nw except all select * from wm) b)`).Scan(&diff)
	if err != nil || diff != 0 {
		t.Fatalf("after repair the shapes disagree on %d rows (%v)", diff, err)
	}
}

func TestVerifySameTable(t *testing.T) {
	cfg, conn := examplesDB(t, "verify_same")
	exec1(t, conn, `update orders set amount_cents = amount_cents + 1 where id in (5, 600)`)
	exec1(t, conn, `update orders set amount_cents = null where id = 1`)
	exec1(t, conn, `update orders set amount = amount + 1 where id = 77`) // old column changed, not mirrored
	res := run(t, cfg, "orders-cents", small)
	wantDiffs(t, res, "differing id=1 amount_cents", "differing id=5 amount_cents", "differing id=600 amount_cents", "differing id=77 amount_cents")
	if res.DifferingColumns["amount_cents"] != 4 || res.RowsCompared != 600 {
		t.Fatalf("%+v", res)
	}
	repair := small
	repair.Repair = true
	if res := run(t, cfg, "orders-cents", repair); res.Repaired != 4 || res.Remaining != 0 {
		t.Fatalf("repair: %+v", res)
	}
	if res := run(t, cfg, "orders-cents", verify.Options{}); res.Differences() != 0 {
		t.Fatalf("after repair: %v", summary(res.SampleKeys))
	}
	var bad int
	if err := conn.QueryRow(testCtx(t), `select count(*) from orders where amount_cents is distinct from (amount * 100)::bigint`).Scan(&bad); err != nil || bad != 0 {
		t.Fatalf("%d orders still wrong (%v)", bad, err)
	}
}

// TestVerifyEmptyNew: every row missing, found through drill-down; samples stay bounded; repair
// fills the new table.
func TestVerifyEmptyNew(t *testing.T) {
	cfg, conn := examplesDB(t, "verify_empty")
	exec1(t, conn, `truncate users_v2`)
	res := run(t, cfg, "users-split-name", verify.Options{RangeRows: 64, LeafRows: 4, MaxSamples: 7})
	if res.MissingInNew != 200 || res.Differences() != 200 || len(res.SampleKeys) != 7 || res.Remaining != 200 {
		t.Fatalf("%+v", res)
	}
	res = run(t, cfg, "users-split-name", verify.Options{RangeRows: 64, Repair: true, Workers: 2})
	if res.Repaired != 200 || res.Remaining != 0 {
		t.Fatalf("repair: %+v", res)
	}
	if res := run(t, cfg, "users-split-name", small); res.Differences() != 0 {
		t.Fatalf("after repair: %v", summary(res.SampleKeys))
	}
	// And the other way round: old emptied (its orders first), everything in new is extra.
	exec1(t, conn, `delete from orders; delete from users`)
	res = run(t, cfg, "users-split-name", small)
	if res.ExtraInNew != 200 || res.Differences() != 200 || res.Ranges != 1 {
		t.Fatalf("old empty: %+v", res)
	}
}

const compositeSchema = `
create type kind as enum ('a', 'b');
create table ev (tenant text, seq int, k kind not null, payload text, noted timestamptz, primary key (tenant, seq));
create table ev_v2 (tenant text, seq bigint, k kind not null, body text, len int, noted timestamptz, primary key (tenant, seq));
insert into ev select 't' || (g % 7), g, (array['a','b'])[1 + g % 2]::kind, case when g % 9 = 0 then null when g % 5 = 0 then '' else 'p' || g end,
                      timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => g) from generate_series(1, 300) g;
insert into ev_v2 select tenant, seq, k, upper(payload), length(payload), noted from ev;
`

// compositeConfig writes a configuration for ev → ev_v2 keyed by (tenant, seq).
func compositeConfig(t *testing.T, db string) *config.Config {
	t.Helper()
	file := filepath.Join(t.TempDir(), "pgcanary.yaml")
	text := fmt.Sprintf(`upstream: %s
side_dsn: %s
migrations:
  - name: ev-upper
    database: %s
    old: ev
    new: ev_v2
    key: [tenant, seq]
    write:
      body: upper(payload)
      len: length(payload)
    read:
      payload: lower(body)
`, cluster.Addr(), superDSN(db), db)
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestVerifyCompositeKey(t *testing.T) {
	db := createDB(t, "verify_composite")
	conn := connect(t, db)
	exec1(t, conn, compositeSchema)
	cfg := compositeConfig(t, db)
	if res := run(t, cfg, "ev-upper", small); res.Differences() != 0 || res.RowsCompared != 300 {
		t.Fatalf("equal shapes: %+v %v", res, summary(res.SampleKeys))
	}
	exec1(t, conn, `update ev set payload = 'zz' where tenant = 't3' and seq = 10`) // body and len
	exec1(t, conn, `update ev set payload = null where tenant = 't1' and seq = 15`) // '' → NULL: body and len
	exec1(t, conn, `update ev_v2 set k = 'b' where tenant = 't2' and seq = 100 and k = 'a'`)
	exec1(t, conn, `update ev_v2 set noted = noted + interval '1 microsecond' where tenant = 't0' and seq = 7`)
	exec1(t, conn, `delete from ev_v2 where tenant = 't0' and seq = 294`)
	exec1(t, conn, `delete from ev where tenant = 't6' and seq = 6`) // the first key of t6... only in new
	exec1(t, conn, `insert into ev_v2 values ('', 1, 'a', 'X', 1, null), ('t0', 0, 'a', null, null, null), ('zz', 5, 'b', 'Y', 1, now())`)
	res := run(t, cfg, "ev-upper", small)
	wantDiffs(t, res,
		"differing tenant=t3, seq=10 body,len", "differing tenant=t1, seq=15 body,len", "differing tenant=t2, seq=100 k",
		"differing tenant=t0, seq=7 noted", "missing_in_new tenant=t0, seq=294", "extra_in_new tenant=t6, seq=6",
		"extra_in_new tenant=, seq=1", "extra_in_new tenant=t0, seq=0", "extra_in_new tenant=zz, seq=5")
	repair := small
	repair.Repair = true
	if res := run(t, cfg, "ev-upper", repair); res.Repaired != 9 || res.Remaining != 0 {
		t.Fatalf("repair: %+v", res)
	}
	if res := run(t, cfg, "ev-upper", verify.Options{}); res.Differences() != 0 || res.RowsCompared != 299 {
		t.Fatalf("after repair: %+v %v", res, summary(res.SampleKeys))
	}
}

func TestVerifyErrors(t *testing.T) {
	cfg, _ := examplesDB(t, "verify_errors")
	ctx := testCtx(t)
	_, err := verify.Verify(ctx, cfg, "nope", config.DSNConnector(cfg.SideDSN), verify.Options{})
	var unknown *verify.UnknownMigrationError
	if !errors.As(err, &unknown) || !strings.Contains(err.Error(), "users-split-name, orders-cents") {
		t.Fatalf("unknown migration: %v", err)
	}

	// The new relation missing: check's finding, refused.
	broken := *cfg
	broken.Migrations = slices.Clone(cfg.Migrations)
	broken.Migrations[0].New = "public.users_v3"
	_, err = verify.Verify(ctx, &broken, "users-split-name", config.DSNConnector(cfg.SideDSN), verify.Options{})
	var refused *verify.RefusedError
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "new relation public.users_v3 does not exist") {
		t.Fatalf("missing new relation: %v", err)
	}
	// The other migration is still verified: only the named one is checked.
	if res := run(t, &broken, "orders-cents", verify.Options{}); res.Differences() != 0 {
		t.Fatalf("orders: %+v", res)
	}

	// A key without a unique index.
	broken.Migrations[0].New = "public.users_v2"
	broken.Migrations[0].Key = []string{"email", "active"}
	_, err = verify.Verify(ctx, &broken, "users-split-name", config.DSNConnector(cfg.SideDSN), verify.Options{})
	if !errors.As(err, &refused) || !strings.Contains(err.Error(), "has no unique index") {
		t.Fatalf("key without unique index: %v", err)
	}

	// Unreachable: the error names host:port and the database.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	down := config.DSNConnector("postgres://postgres@" + addr + "/verify_errors?sslmode=disable&connect_timeout=5")
	_, err = verify.Verify(ctx, cfg, "users-split-name", down, verify.Options{})
	if !errors.Is(err, config.ErrUnreachable) || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "verify_errors") {
		t.Fatalf("unreachable: %v", err)
	}
}

// TestVerifyUnderMirroredWrites: writes that change both shapes in one transaction (as mirrored
// writes do) run throughout; every range is seen in one snapshot, so none is reported.
func TestVerifyUnderMirroredWrites(t *testing.T) {
	cfg, _ := examplesDB(t, "verify_concurrent")
	db := cfg.Migrations[0].Database
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(ctx, superDSN(db))
		if err != nil {
			done <- err
			return
		}
		defer conn.Close(context.Background())
		for i := 0; ctx.Err() == nil; i++ {
			id := 1 + i%200
			_, err := conn.Exec(ctx, `
				with u as (update users set full_name = 'N' || $1::int || ' L' || ($1::int % 13) where id = $2 returning *)
				update users_v2 v set first_name = split_part(u.full_name, ' ', 1),
				       last_name = nullif(substr(u.full_name, length(split_part(u.full_name, ' ', 1)) + 2), '')
				from u where v.id = u.id`, i, id)
			if err != nil && ctx.Err() == nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for range 5 {
		res := run(t, cfg, "users-split-name", verify.Options{RangeRows: 20, LeafRows: 3, Workers: 3})
		if res.Differences() != 0 {
			t.Fatalf("differences under mirrored writes: %v", summary(res.SampleKeys))
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestVerifyNullKeys: rows with a NULL in a key column (unique indexes on nullable columns: code
// in old, tenant in new) are named by no key. Every range leaves them out, the open ranges and
// a row comparison that alone would take (1, NULL) too; they are counted per side, warned about,
// and the result is not Equal (verify exits 1) even though every compared row matches, repair
// or not. Differences among the other rows are still found; once the NULL keys are gone the
// shapes are equal.
func TestVerifyNullKeys(t *testing.T) {
	db := createDB(t, "verify_null_keys")
	conn := connect(t, db)
	exec1(t, conn, `
		create table items (tenant int not null, code text, v int, unique (tenant, code));
		create table items_v2 (tenant int, code text not null, v2 int, unique (tenant, code));
		insert into items select g % 3, 'c' || g, g from generate_series(1, 100) g;
		insert into items_v2 select tenant, code, v * 2 from items;
		insert into items values (0, null, 1000), (1, null, 1001), (2, null, 1002);
		insert into items_v2 values (null, 'x1', 1), (null, 'x2', 2);
		create table tags (name text unique, label text, label_upper text);
		insert into tags select 't' || g, 'l' || g, upper('l' || g) from generate_series(1, 50) g;
		insert into tags values (null, 'no name', null), (null, 'no name either', 'NO NAME EITHER');`)
	file := filepath.Join(t.TempDir(), "pgcanary.yaml")
	text := fmt.Sprintf(`upstream: %s
side_dsn: %s
migrations:
  - {name: items, database: %s, old: items, new: items_v2, key: [tenant, code], write: {v2: v * 2}, read: {v: v2 / 2}}
  - {name: tags, database: %s, old: tags, new: tags, key: [name], write: {label_upper: upper(label)}}
`, cluster.Addr(), superDSN(db), db, db)
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	repair := small
	repair.Repair = true
	for _, tc := range []struct {
		migration        string
		rows, old, newer int64
	}{
		{"items", 100, 3, 2},
		{"tags", 50, 2, 0}, // same table: the rows are counted once, as old's
	} {
		for _, opts := range []verify.Options{{}, small, {RangeRows: 10, LeafRows: 3, Workers: 2}, repair} {
			var logs strings.Builder
			opts.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			res := run(t, cfg, tc.migration, opts)
			if res.RowsCompared != tc.rows || res.Differences() != 0 || res.Remaining != 0 || res.Repaired != 0 {
				t.Fatalf("%s %+v: want %d rows compared, equal", tc.migration, res, tc.rows)
			}
			if res.NullKeyInOld != tc.old || res.NullKeyInNew != tc.newer || res.NullKeys() != tc.old+tc.newer {
				t.Fatalf("%s: NULL keys %d in old, %d in new; want %d and %d", tc.migration, res.NullKeyInOld, res.NullKeyInNew, tc.old, tc.newer)
			}
			if res.Equal() {
				t.Fatalf("%s: Equal with %d rows not compared", tc.migration, res.NullKeys())
			}
			if want := fmt.Sprintf("rows=%d", tc.old); !strings.Contains(logs.String(), "level=WARN msg=\"verify leaves out rows whose key has a NULL") ||
				!strings.Contains(logs.String(), want) {
				t.Fatalf("%s: no warning with %s:\n%s", tc.migration, want, logs.String())
			}
			raw, err := json.Marshal(res)
			if want := fmt.Sprintf(`"null_key_in_old":%d,"null_key_in_new":%d`, tc.old, tc.newer); err != nil || !strings.Contains(string(raw), want) {
				t.Fatalf("JSON %s (%v): want %s", raw, err, want)
			}
		}
	}

	// A difference among keyed rows is still found next to the NULL keys; repairing it leaves
	// the NULL keys alone, and the result still not Equal.
	exec1(t, conn, `update items_v2 set v2 = -1 where tenant = 1 and code = 'c97'`)
	res := run(t, cfg, "items", small)
	wantDiffs(t, res, "differing tenant=1, code=c97 v2")
	if res.Remaining != 1 || res.Equal() {
		t.Fatalf("drift: %+v", res)
	}
	if res := run(t, cfg, "items", repair); res.Repaired != 1 || res.Remaining != 0 || res.NullKeys() != 5 || res.Equal() {
		t.Fatalf("repair: %+v", res)
	}
	if n := queryCount(t, conn, `select count(*) from items_v2 where tenant is null`); n != 2 {
		t.Fatalf("repair touched the rows with a NULL key: %d left of 2", n)
	}

	// No NULL left: equal, nothing counted, nothing logged.
	exec1(t, conn, `delete from items where code is null; delete from items_v2 where tenant is null; delete from tags where name is null`)
	for _, name := range []string{"items", "tags"} {
		var logs strings.Builder
		res := run(t, cfg, name, verify.Options{RangeRows: 10, LeafRows: 3, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
		if !res.Equal() || res.NullKeys() != 0 || logs.Len() != 0 {
			t.Fatalf("%s without NULL keys: %+v\n%s", name, res, logs.String())
		}
	}
}

func queryCount(t *testing.T, conn *pgx.Conn, sql string) int64 {
	t.Helper()
	var n int64
	if err := conn.QueryRow(testCtx(t), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}
