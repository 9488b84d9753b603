package backfill

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) { pgtest.RunMain(m, pgtest.Options{}, &cluster) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
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

// examplesDB is a database with examples/schema.sql (300 users, 900 orders), users_v2 emptied and
// orders.amount_cents nulled, so both example migrations have everything to backfill.
func examplesDB(t *testing.T, name string) (string, *config.Config) {
	t.Helper()
	db := createDB(t, name)
	psql, err := pgtest.FindBin("psql")
	if err != nil {
		t.Fatalf("psql is needed to load examples/schema.sql: %v", err)
	}
	if out, err := exec.Command(psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-v", "users=300", "-v", "orders=900",
		"-d", superDSN(db), "-f", "../examples/schema.sql").CombinedOutput(); err != nil {
		t.Fatalf("load schema: %v\n%s", err, out)
	}
	exec1(t, db, "truncate users_v2; update orders set amount_cents = null")
	t.Setenv("PGCANARY_UPSTREAM", cluster.Addr())
	t.Setenv("PGCANARY_SIDE_DSN", superDSN(db))
	t.Setenv("PGCANARY_DATABASE", db)
	cfg, err := config.Load("../examples/pgcanary.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return db, cfg
}

// parseConfig builds a configuration for db from the migrations section of a YAML file.
func parseConfig(t *testing.T, db, migrations string) *config.Config {
	t.Helper()
	raw := fmt.Sprintf("upstream: %s\nside_dsn: %s\nmigrations:\n%s", cluster.Addr(), superDSN(db), strings.ReplaceAll(migrations, "DB", db))
	cfg, err := config.Parse("test.yaml", []byte(raw))
	if err != nil {
		t.Fatalf("config: %v\n%s", err, raw)
	}
	return cfg
}

func connect(t *testing.T, db string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(testCtx(t), superDSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func exec1(t *testing.T, db, sql string) {
	t.Helper()
	if _, err := connect(t, db).Exec(testCtx(t), sql, pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func queryInt(t *testing.T, db, sql string) int64 {
	t.Helper()
	var n int64
	if err := connect(t, db).QueryRow(testCtx(t), sql).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func queryText(t *testing.T, db, sql string) string {
	t.Helper()
	var s string
	if err := connect(t, db).QueryRow(testCtx(t), sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// usersDiffer counts rows where users_v2 is not the write map of users, both ways.
const usersDiffer = `
	with wm as (select id, split_part(full_name, ' ', 1) as first_name,
	                   nullif(substr(full_name, length(split_part(full_name, ' ', 1)) + 2), '') as last_name,
	                   email, active, tier, birthday, profile, tags, external_id, created_at from users),
	     nw as (select id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at from users_v2)
	select (select count(*) from (select * from wm except all select * from nw) a)
	     + (select count(*) from (select * from nw except all select * from wm) b)`

const ordersDiffer = `select count(*) from orders where amount_cents is distinct from (amount * 100)::bigint`

func run(t *testing.T, ctx context.Context, o Options) Result {
	t.Helper()
	res, err := Run(ctx, o)
	if err != nil {
		t.Fatalf("backfill %s: %v", o.Migration, err)
	}
	return res
}

// TestNewTable: users → users_v2 through the write map; a second run finds the checkpoint done
// and copies nothing; --restart copies again and leaves identical data.
func TestNewTable(t *testing.T) {
	db, cfg := examplesDB(t, "bf_new_table")
	ctx := testCtx(t)
	var progress []Progress
	res := run(t, ctx, Options{Config: cfg, Migration: "users-split-name", InitialChunk: 64,
		Progress: func(p Progress) { progress = append(progress, p) }})
	if !res.Done || res.Rows != 300 || res.TotalRows != 300 || res.Resumed != nil || res.Chunks < 2 || res.NullKeyInOld != 0 {
		t.Fatalf("result %+v", res)
	}
	if d := queryInt(t, db, usersDiffer); d != 0 {
		t.Fatalf("users_v2 differs from the write map of users on %d rows", d)
	}
	if len(progress) == 0 || progress[len(progress)-1].Rows != 300 || progress[0].Total != 300 {
		t.Fatalf("progress %+v", progress)
	}
	snapshot := `select md5(string_agg(t::text, '|' order by id)) from users_v2 t`
	before := queryText(t, db, snapshot)

	again := run(t, ctx, Options{Config: cfg, Migration: "users-split-name"})
	if !again.Done || !again.AlreadyDone || again.Rows != 0 || again.Chunks != 0 {
		t.Fatalf("second run: %+v", again)
	}
	restarted := run(t, ctx, Options{Config: cfg, Migration: "users-split-name", Restart: true})
	if !restarted.Done || restarted.Rows != 300 || restarted.Resumed != nil {
		t.Fatalf("restarted run: %+v", restarted)
	}
	if after := queryText(t, db, snapshot); after != before {
		t.Fatal("running the backfill again changed users_v2")
	}
	if n := queryInt(t, db, `select rows from pgcanary.backfill_checkpoint where migration = 'users-split-name' and done`); n != 300 {
		t.Fatalf("checkpoint rows %d, want 300", n)
	}
}

// TestSameTable: orders.amount_cents filled by UPDATEs of the old table.
func TestSameTable(t *testing.T) {
	db, cfg := examplesDB(t, "bf_same_table")
	ctx := testCtx(t)
	res := run(t, ctx, Options{Config: cfg, Migration: "orders-cents", InitialChunk: 100})
	if !res.Done || res.Rows != 900 {
		t.Fatalf("result %+v", res)
	}
	if d := queryInt(t, db, ordersDiffer); d != 0 {
		t.Fatalf("%d orders without their amount_cents", d)
	}
	// Idempotent: a restart over filled rows leaves them as they are.
	before := queryText(t, db, `select md5(string_agg(t::text, '|' order by id)) from orders t`)
	run(t, ctx, Options{Config: cfg, Migration: "orders-cents", Restart: true})
	if after := queryText(t, db, `select md5(string_agg(t::text, '|' order by id)) from orders t`); after != before {
		t.Fatal("running the backfill again changed orders")
	}
}

// TestCompositeKey: a key of two columns, configured in the order opposite to the primary key's,
// with ties on the leading column, text compared under its collation and a date; chunks of one
// to a few rows walk every boundary.
func TestCompositeKey(t *testing.T) {
	db := createDB(t, "bf_composite")
	exec1(t, db, `
		create table readings (sensor text, day date, value int not null, primary key (sensor, day));
		create table readings_v2 (day date, sensor text, value_x2 bigint not null, note text, primary key (day, sensor));
		insert into readings select s, date '2024-01-01' + d, d * 10 + length(s)
		from unnest(array['a', 'B', 'b', 'a b', 'é', 'z', '']) s, generate_series(0, 20) d;`)
	cfg := parseConfig(t, db, `
  - name: readings
    database: DB
    old: readings
    new: readings_v2
    key: [day, sensor]
    write: {value_x2: value * 2, note: "'n' || value"}
    read: {value: (value_x2 / 2)::int}
`)
	ctx := testCtx(t)
	res := run(t, ctx, Options{Config: cfg, Migration: "readings", InitialChunk: 5, MinChunk: 1, MaxChunk: 5})
	if !res.Done || res.Rows != 7*21 || res.Chunks != (7*21+4)/5 {
		t.Fatalf("result %+v", res)
	}
	if len(res.LastKey) != 2 || res.LastKey[0] != queryText(t, db, "select max(sensor) from readings") || res.LastKey[1] != "2024-01-21" {
		t.Fatalf("last key %v: want the walk in primary key order (sensor, day)", res.LastKey)
	}
	d := queryInt(t, db, `select count(*) from readings r full join readings_v2 n using (sensor, day)
		where n.value_x2 is distinct from r.value * 2 or n.note is distinct from 'n' || r.value`)
	if d != 0 {
		t.Fatalf("%d readings differ", d)
	}
}

// TestResume: interrupted after its first chunk, a run leaves the checkpoint at that chunk; the
// next run starts after it and copies only the rest.
func TestResume(t *testing.T) {
	db, cfg := examplesDB(t, "bf_resume")
	ctx, cancel := context.WithCancel(testCtx(t))
	fixed := Options{Config: cfg, Migration: "users-split-name", InitialChunk: 50, MinChunk: 50, MaxChunk: 50}
	o := fixed
	o.Progress = func(Progress) { cancel() } // Ctrl-C during the first chunk
	res, err := Run(ctx, o)
	if !errors.Is(err, ErrInterrupted) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want ErrInterrupted", err)
	}
	if !res.Interrupted || res.Done || res.Chunks != 1 || res.Rows != 50 || len(res.LastKey) != 1 {
		t.Fatalf("interrupted result %+v", res)
	}
	if n := queryInt(t, db, `select rows from pgcanary.backfill_checkpoint where not done and last_key = array['`+res.LastKey[0]+`']`); n != 50 {
		t.Fatalf("checkpoint rows %d, want 50", n)
	}
	if n := queryInt(t, db, `select count(*) from users_v2`); n != 50 {
		t.Fatalf("users_v2 has %d rows after one chunk, want 50", n)
	}
	// Rows of the first chunk are not copied again: change one in users_v2 behind the
	// backfill's back, and it stays changed.
	exec1(t, db, `update users_v2 set first_name = 'untouched' where id = 1`)

	res2 := run(t, testCtx(t), fixed)
	if !res2.Done || res2.Rows != 250 || res2.Chunks != 5 || res2.TotalRows != 300 || strings.Join(res2.Resumed, ",") != res.LastKey[0] {
		t.Fatalf("resumed result %+v", res2)
	}
	if d := queryInt(t, db, usersDiffer); d != 2 { // the planted row, counted both ways
		t.Fatalf("%d differences, want only the planted row (2)", d)
	}
	if s := queryText(t, db, `select first_name from users_v2 where id = 1`); s != "untouched" {
		t.Fatalf("the first chunk was copied again: %q", s)
	}
}

// TestDryRun prints the plan and the first chunk's SQL, and changes nothing: no rows, no
// checkpoint schema.
func TestDryRun(t *testing.T) {
	db, cfg := examplesDB(t, "bf_dry_run")
	for _, tc := range []struct{ migration, want string }{
		{"users-split-name", "for share"},
		{"orders-cents", "for no key update"},
	} {
		var out bytes.Buffer
		res := run(t, testCtx(t), Options{Config: cfg, Migration: tc.migration, DryRun: true, Out: &out})
		text := out.String()
		for _, want := range []string{tc.want, "strategy:", "about ", "checkpoint:  none", "-- $2 = 1000", "pgcanary.backfill_checkpoint"} {
			if !strings.Contains(text, want) {
				t.Errorf("%s: dry run output lacks %q:\n%s", tc.migration, want, text)
			}
		}
		if !res.DryRun || res.Rows != 0 || res.Done {
			t.Errorf("%s: result %+v", tc.migration, res)
		}
	}
	if n := queryInt(t, db, `select count(*) from users_v2`); n != 0 {
		t.Fatalf("dry run wrote %d rows", n)
	}
	if n := queryInt(t, db, `select count(*) from orders where amount_cents is not null`); n != 0 {
		t.Fatalf("dry run wrote %d orders", n)
	}
	if n := queryInt(t, db, `select count(*) from pg_namespace where nspname = 'pgcanary'`); n != 0 {
		t.Fatal("dry run created schema pgcanary")
	}
}

// countingSleep sleeps for real and records each sleep.
type countingSleep struct {
	mu    sync.Mutex
	calls []time.Duration
}

func (c *countingSleep) sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.calls = append(c.calls, d)
	c.mu.Unlock()
	return sleepCtx(ctx, d)
}

// TestMaxRate: chunks shrink to what the rate allows per target duration, and the run sleeps
// between them so that its rows per second stay under the rate.
func TestMaxRate(t *testing.T) {
	_, cfg := examplesDB(t, "bf_max_rate")
	var s countingSleep
	const rate = 1500.0
	res := run(t, testCtx(t), Options{Config: cfg, Migration: "users-split-name", MaxRate: rate, sleep: s.sleep})
	if !res.Done || res.Rows != 300 {
		t.Fatalf("result %+v", res)
	}
	// 150 rows per chunk (1500 rows/s × 100 ms): 2 chunks, a sleep after each.
	if res.Chunks != 2 || res.Throttled != 2 || len(s.calls) != 2 {
		t.Fatalf("chunks %d, throttled %d, sleeps %v: want 2 chunks of 150 rows each followed by a sleep", res.Chunks, res.Throttled, s.calls)
	}
	if res.Rate > rate*1.05 {
		t.Fatalf("%.0f rows/s, over the %v limit", res.Rate, rate)
	}
	if res.Seconds < 0.19 || res.Seconds > 20 {
		t.Fatalf("took %.2fs, want at least 300 rows / 1500 rows/s", res.Seconds)
	}
}

// TestMaxLag: while the replicas lag more than the limit, the run waits and says so.
func TestMaxLag(t *testing.T) {
	db, cfg := examplesDB(t, "bf_max_lag")
	lags := []time.Duration{5 * time.Second, 3 * time.Second, 0}
	calls := 0
	lag := func(context.Context, *pgx.Conn) (time.Duration, error) {
		l := lags[min(calls, len(lags)-1)]
		calls++
		return l, nil
	}
	var paused []Progress
	res := run(t, testCtx(t), Options{Config: cfg, Migration: "users-split-name", MaxLag: time.Second, LagPoll: time.Millisecond, lag: lag,
		Progress: func(p Progress) {
			if p.Paused {
				paused = append(paused, p)
			}
		}})
	if !res.Done || res.LagPauses != 2 || len(paused) != 2 || paused[0].Lag != 5*time.Second {
		t.Fatalf("result %+v, paused %+v", res, paused)
	}
	if d := queryInt(t, db, usersDiffer); d != 0 {
		t.Fatalf("%d differences", d)
	}
	// The real query: a lone server has no replicas, hence no lag.
	if l, err := replicationLag(testCtx(t), connect(t, db)); err != nil || l != 0 {
		t.Fatalf("replication lag %v, %v", l, err)
	}
}

// TestRefusals: an unknown migration lists the configured ones; a migration that does not
// check (its new relation missing) is refused with check's finding; an unreachable database is
// named with its address.
func TestRefusals(t *testing.T) {
	db, cfg := examplesDB(t, "bf_refusals")
	ctx := testCtx(t)
	_, err := Run(ctx, Options{Config: cfg, Migration: "nope"})
	var unknown *UnknownMigrationError
	if !errors.As(err, &unknown) || !strings.Contains(err.Error(), "users-split-name, orders-cents") {
		t.Fatalf("err %v, want the list of migrations", err)
	}

	exec1(t, db, "alter table users_v2 rename to users_v3")
	_, err = Run(ctx, Options{Config: cfg, Migration: "users-split-name"})
	var cerr *ConfigError
	if !errors.As(err, &cerr) || !strings.Contains(err.Error(), "new relation public.users_v2 does not exist") {
		t.Fatalf("err %v, want check's finding", err)
	}
	// The other migration still runs: findings of one do not block another.
	if res := run(t, ctx, Options{Config: cfg, Migration: "orders-cents"}); !res.Done {
		t.Fatalf("orders-cents: %+v", res)
	}

	cfg.SideDSN = "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=2"
	_, err = Run(ctx, Options{Config: cfg, Migration: "orders-cents"})
	if !errors.Is(err, config.ErrUnreachable) || !strings.Contains(err.Error(), "127.0.0.1:1") || !strings.Contains(err.Error(), db) {
		t.Fatalf("err %v, want the unreachable database named", err)
	}
}

// TestResize keeps chunks near the target duration, within ×0.5..×2 per step.
func TestResize(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		limit int
		rows  int64
		took  time.Duration
		want  int
	}{
		{1000, 1000, 50 * ms, 2000},
		{1000, 1000, 10 * ms, 2000}, // at most doubled
		{1000, 1000, 400 * ms, 500}, // at most halved
		{1000, 1000, 125 * ms, 800},
		{1000, 10, 1 * ms, 1000}, // the end of the table says nothing
	} {
		if got := resize(tc.limit, tc.rows, tc.took, 100*ms); got != tc.want {
			t.Errorf("resize(%d, %d, %v) = %d, want %d", tc.limit, tc.rows, tc.took, got, tc.want)
		}
	}
}

// TestChunkWaitsForWriter: a mirrored write in flight (its transaction has updated the old row
// and upserted the new one, uncommitted) when a chunk reaches the row. The chunk must wait for
// it on the old row and then copy the row's new value; copying the value it read before the
// write committed would overwrite the mirrored write with a stale image.
func TestChunkWaitsForWriter(t *testing.T) {
	for _, tc := range []struct{ migration, write, check string }{
		{"users-split-name", `update users set full_name = 'Fresh Value' where id = 150;
			insert into users_v2 select id, 'Fresh', 'Value', email, active, tier, birthday, profile, tags, external_id, created_at
			from users where id = 150 on conflict (id) do update set first_name = excluded.first_name, last_name = excluded.last_name`,
			`select count(*) from users_v2 where id = 150 and first_name = 'Fresh' and last_name = 'Value'`},
		{"orders-cents", `update orders set amount = 12.34, amount_cents = 1234 where id = 150`,
			`select count(*) from orders where id = 150 and amount_cents = 1234`},
	} {
		t.Run(tc.migration, func(t *testing.T) {
			db, cfg := examplesDB(t, "bf_waits_"+strings.ReplaceAll(tc.migration, "-", "_"))
			ctx := testCtx(t)
			writer := connect(t, db)
			tx, err := writer.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck // committed below
			if _, err := tx.Exec(ctx, tc.write, pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, err := Run(ctx, Options{Config: cfg, Migration: tc.migration, InitialChunk: 100, MinChunk: 100, MaxChunk: 100, LockTimeout: -1})
				done <- err
			}()
			watch := connect(t, db)
			deadline := time.Now().Add(20 * time.Second)
			for {
				var waiting int
				if err := watch.QueryRow(ctx, `select count(*) from pg_stat_activity
					where application_name = 'pgcanary-backfill' and wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
					t.Fatal(err)
				}
				if waiting > 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the backfill never waited for the writer's lock")
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if n := queryInt(t, db, tc.check); n != 1 {
				t.Fatal("the chunk overwrote the committed write with the value it had read before")
			}
		})
	}
}

// TestNullKeys: rows whose key has a NULL (a unique index on nullable columns allows any number
// of them) are named by no key. The walk skips them, even where a row comparison alone would not
// ((1, NULL) > (0, 'c9') is true) and where NULL would sort first (the highest key); the run
// counts them once, reports them in the result, the dry run and a warning, and copies every other
// row. A NOT NULL key costs no count.
func TestNullKeys(t *testing.T) {
	db := createDB(t, "bf_null_keys")
	exec1(t, db, `
		create table items (tenant int not null, code text, v int not null, unique (tenant, code));
		create table items_v2 (tenant int not null, code text not null, v2 int not null, primary key (tenant, code));
		insert into items select g % 3, 'c' || g, g from generate_series(1, 100) g;
		insert into items values (0, null, 1000), (1, null, 1001), (2, null, 1002);
		create table tags (name text unique, label text, label_upper text);
		insert into tags select 't' || g, 'l' || g, null from generate_series(1, 50) g;
		insert into tags values (null, 'no name', null), (null, 'no name either', null);`)
	cfg := parseConfig(t, db, `
  - name: items
    database: DB
    old: items
    new: items_v2
    key: [tenant, code]
    write: {v2: v * 2}
    read: {v: v2 / 2}
  - name: tags
    database: DB
    old: tags
    new: tags
    key: [name]
    write: {label_upper: upper(label)}
`)
	ctx := testCtx(t)
	for _, tc := range []struct {
		migration    string
		rows, nulls  int64
		copied, left string
	}{
		{"items", 100, 3, `select count(*) from items_v2 n join items o using (tenant, code) where n.v2 = o.v * 2`,
			`select count(*) from items where code is null`},
		{"tags", 50, 2, `select count(*) from tags where name is not null and label_upper = upper(label)`,
			`select count(*) from tags where name is null and label_upper is null`},
	} {
		t.Run(tc.migration, func(t *testing.T) {
			var dry bytes.Buffer
			res := run(t, ctx, Options{Config: cfg, Migration: tc.migration, DryRun: true, Out: &dry})
			want := fmt.Sprintf("skipped:     %d rows whose key has a NULL", tc.nulls)
			if res.NullKeyInOld != tc.nulls || !strings.Contains(dry.String(), want) {
				t.Fatalf("dry run: %d rows with a NULL key, want %d; output lacks %q?\n%s", res.NullKeyInOld, tc.nulls, want, dry.String())
			}

			// One chunk for everything (no lower bound: the row comparison with the upper bound
			// alone would take (0, NULL)), then chunks of at most 7 rows, which cross from one
			// tenant to the next with (1, NULL) within reach.
			for _, chunks := range []Options{{}, {InitialChunk: 7, MinChunk: 1, MaxChunk: 7}} {
				var logs bytes.Buffer
				o := chunks
				o.Config, o.Migration, o.Restart, o.Logger = cfg, tc.migration, true, slog.New(slog.NewTextHandler(&logs, nil))
				res = run(t, ctx, o)
				if !res.Done || res.Rows != tc.rows || res.NullKeyInOld != tc.nulls {
					t.Fatalf("result %+v: want %d rows copied and %d with a NULL key counted", res, tc.rows, tc.nulls)
				}
				if n := queryInt(t, db, tc.copied); n != tc.rows {
					t.Fatalf("%d rows copied correctly, want %d", n, tc.rows)
				}
				if n := queryInt(t, db, tc.left); n != tc.nulls {
					t.Fatalf("%d rows with a NULL key left alone, want %d", n, tc.nulls)
				}
				if !strings.Contains(logs.String(), "level=WARN msg=\"backfill skips rows whose key has a NULL") ||
					!strings.Contains(logs.String(), fmt.Sprintf("rows=%d", tc.nulls)) {
					t.Fatalf("no warning naming %d rows:\n%s", tc.nulls, logs.String())
				}
			}
			raw, err := json.Marshal(res)
			if err != nil || !strings.Contains(string(raw), fmt.Sprintf(`"null_key_in_old":%d`, tc.nulls)) {
				t.Fatalf("JSON %s (%v): want null_key_in_old", raw, err)
			}
			// A later run that has nothing left to copy still says what it skipped.
			if again := run(t, ctx, Options{Config: cfg, Migration: tc.migration}); !again.AlreadyDone || again.NullKeyInOld != tc.nulls {
				t.Fatalf("second run %+v", again)
			}
		})
	}

	// Without NULLs, nothing is counted; nor is anything with a NOT NULL key (no count query).
	exec1(t, db, "delete from tags where name is null")
	if res := run(t, ctx, Options{Config: cfg, Migration: "tags", Restart: true}); res.NullKeyInOld != 0 || res.Rows != 50 {
		t.Fatalf("tags without NULL keys: %+v", res)
	}
	p, err := newPlan(&cfg.Migrations[0], &config.MigrationCatalog{Old: &config.Relation{Schema: "public", Name: "items",
		Columns: []config.Column{{Name: "tenant", NotNull: true, TypeSQL: "integer"}, {Name: "code", NotNull: true, TypeSQL: "text"}, {Name: "v", NotNull: true, TypeSQL: "integer"}}},
		New: &config.Relation{Schema: "public", Name: "items_v2",
			Columns: []config.Column{{Name: "tenant", TypeSQL: "integer"}, {Name: "code", TypeSQL: "text"}, {Name: "v2", TypeSQL: "integer"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if sql := p.nullKeySQL(); sql != "" || strings.Contains(p.first+p.upperSQL(), "is not null") {
		t.Fatalf("a NOT NULL key: count %q, chunk\n%s", sql, p.first)
	}
}
