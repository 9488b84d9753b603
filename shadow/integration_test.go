package shadow

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// The package's tests share one PostgreSQL cluster; the tests below use it, the rest need none.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) { pgtest.RunMain(m, pgtest.Options{}, &cluster) }

// shadowDB is the database the integration tests compare in. The side DSN names pgtest.TestDB,
// so every request's Database replacing it is exercised too.
const shadowDB = "shadow_test"

const schema = `
CREATE TABLE users (id int PRIMARY KEY, full_name text NOT NULL, score float8);
CREATE TABLE users_v2 (id int PRIMARY KEY, first_name text NOT NULL, last_name text NOT NULL, score float8);
INSERT INTO users SELECT g, 'First' || g || ' Last' || g, g / 3.0 FROM generate_series(1, 50) g;
INSERT INTO users_v2 SELECT g, 'First' || g, 'Last' || g, g / 3.0 FROM generate_series(1, 50) g;
CREATE TABLE snap_users (LIKE users INCLUDING ALL);
CREATE TABLE snap_users_v2 (LIKE users_v2 INCLUDING ALL);
INSERT INTO snap_users SELECT * FROM users WHERE id <= 20;
INSERT INTO snap_users_v2 SELECT * FROM users_v2 WHERE id <= 20;
CREATE SCHEMA sp;
CREATE TABLE sp.t (v text);
INSERT INTO sp.t VALUES ('from sp');
CREATE SEQUENCE seq;
`

var setupOnce = sync.OnceValue(func() error {
	ctx := context.Background()
	_ = cluster.Exec(ctx, "DROP DATABASE IF EXISTS "+shadowDB)
	if err := cluster.Exec(ctx, "CREATE DATABASE "+shadowDB); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dsnFor(shadowDB))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, schema) // no arguments: the simple protocol, several statements
	return err
})

func setup(t *testing.T) {
	t.Helper()
	if err := setupOnce(); err != nil {
		t.Fatalf("create %s: %v", shadowDB, err)
	}
}

func dsnFor(db string) string {
	return strings.Replace(cluster.DSN(pgtest.SuperUser, ""), "/"+pgtest.TestDB+"?", "/"+db+"?", 1)
}

func newTestComparator(t *testing.T, opts Options) *Comparator {
	t.Helper()
	setup(t)
	if opts.SideDSN == "" {
		opts.SideDSN = cluster.DSN(pgtest.SuperUser, "")
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return c
}

// usersRequest is a read of the users projection: old table, and the new shape per readMap.
func usersRequest(readMap string) Request {
	return Request{
		Migration:  "users-split-name",
		Database:   shadowDB,
		SearchPath: `"$user", public`,
		OldSQL:     "SELECT id, full_name FROM users WHERE id <= $1",
		NewSQL:     "SELECT id, " + readMap + " AS full_name FROM users_v2 WHERE id <= $1",
		Params:     [][]byte{[]byte("10")},
		KeyColumns: []string{"id"},
		Normalized: "SELECT id, full_name FROM users WHERE id <= $1",
		MaxRows:    1000,
	}
}

const rightMap, wrongMap = "first_name || ' ' || last_name", "last_name || ' ' || first_name"

// compareBoth runs req twice, so that each form runs first once (the comparator alternates).
func compareBoth(t *testing.T, c *Comparator, req Request) [2]outcome {
	t.Helper()
	var out [2]outcome
	for i := range out {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		out[i] = c.compare(ctx, req)
		cancel()
	}
	return out
}

func TestIntegrationMatch(t *testing.T) {
	c := newTestComparator(t, Options{})
	for _, out := range compareBoth(t, c, usersRequest(rightMap)) {
		if out.result != ResultMatch {
			t.Fatalf("right read map: %s (%s: %v), diff %+v", out.result, out.reason, out.err, out.diff)
		}
		if out.oldDur <= 0 || out.newDur <= 0 {
			t.Errorf("durations %v / %v, want both measured", out.oldDur, out.newDur)
		}
	}
	// Ordered, with a float column and the tolerance.
	req := usersRequest(rightMap)
	req.OldSQL = "SELECT id, full_name, score FROM users ORDER BY id"
	req.NewSQL = "SELECT id, " + rightMap + " AS full_name, score + 1e-12 AS score FROM users_v2 ORDER BY id"
	req.Params, req.Ordered, req.FloatTolerance = nil, true, 1e-9
	if out := c.compare(context.Background(), req); out.result != ResultMatch {
		t.Errorf("within tolerance: %s %+v %v", out.result, out.diff, out.err)
	}
	req.FloatTolerance = 0
	if out := c.compare(context.Background(), req); out.result != ResultMismatch || out.diff.Columns[0] != "score" {
		t.Errorf("without tolerance: %s %+v", out.result, out.diff)
	}
}

func TestIntegrationWrongReadMap(t *testing.T) {
	for _, out := range compareBoth(t, newTestComparator(t, Options{}), usersRequest(wrongMap)) {
		if out.result != ResultMismatch || out.diff.Kind != KindValues {
			t.Fatalf("wrong read map: %s %+v (%v)", out.result, out.diff, out.err)
		}
		if len(out.diff.Columns) != 1 || out.diff.Columns[0] != "full_name" || out.diff.Key["id"] != "1" {
			t.Errorf("diff %+v, want full_name differing at id 1", out.diff)
		}
	}
	// A column of another type.
	req := usersRequest(rightMap)
	req.NewSQL = "SELECT id::bigint AS id, " + rightMap + " AS full_name FROM users_v2 WHERE id <= $1"
	out := newTestComparator(t, Options{}).compare(context.Background(), req)
	if out.result != ResultMismatch || out.diff.Kind != KindColumns || out.diff.Columns[0] != "id" {
		t.Errorf("retyped column: %s %+v", out.result, out.diff)
	}
}

// TestIntegrationPipeline: submitted reads flow to the metrics, the recorder and the judge, and a
// broken read map rolls the migration back.
func TestIntegrationPipeline(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics := NewPromMetrics(reg)
	rec, err := NewRecorder(RecorderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ks, err := NewKillSwitch(KillSwitchOptions{Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	judge := NewJudge(JudgeOptions{KillSwitch: ks, Metrics: metrics})
	c := newTestComparator(t, Options{Metrics: metrics, Records: rec, Judge: judge, Workers: 2})
	const n = 30
	for i := range n {
		req := usersRequest(wrongMap)
		req.Fingerprint = fmt.Sprint("fp", i)
		for !c.Submit(req) {
			time.Sleep(time.Millisecond) // the test wants every one run, not dropped
		}
	}
	waitFor(t, "the comparisons", func() bool { return judge.Verdict("users-split-name").Comparisons == n })
	if got := gatherValue(t, reg, "pgcanary_comparisons_total", "result", "mismatch"); got != n {
		t.Errorf("pgcanary_comparisons_total{result=mismatch} = %v, want %d", got, n)
	}
	if got := gatherValue(t, reg, "pgcanary_mismatches_total", "kind", "values"); got != n {
		t.Errorf("pgcanary_mismatches_total{kind=values} = %v, want %d", got, n)
	}
	recent := rec.Recent("users-split-name", 5)
	if len(recent) != 5 {
		t.Fatalf("%d recent mismatches, want 5", len(recent))
	}
	m := recent[0]
	if m.Kind != KindValues || m.Columns[0] != "full_name" || !strings.HasPrefix(m.Key["id"], "sha256:") || m.OldValues != nil || m.Query == "" {
		t.Errorf("record %+v", m)
	}

	judge.Evaluate()
	if on, reason, _ := ks.Engaged("users-split-name"); !on || !strings.Contains(reason, "mismatches: 30 of 30") {
		t.Errorf("kill switch engaged %v (%q), want engaged by the canary", on, reason)
	}
	if got := gatherValue(t, reg, "pgcanary_canary_verdict", "migration", "users-split-name"); got != 2 {
		t.Errorf("pgcanary_canary_verdict = %v, want 2 (fail)", got)
	}
	if got := gatherValue(t, reg, "pgcanary_kill_switch_active", "migration", "users-split-name"); got != 1 {
		t.Errorf("pgcanary_kill_switch_active = %v, want 1", got)
	}
}

// gatherValue returns the value of the series of name whose label has value (summed over others).
func gatherValue(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
				}
			}
		}
	}
	return sum
}

func TestIntegrationErrors(t *testing.T) {
	c := newTestComparator(t, Options{})
	base := usersRequest(rightMap)
	tests := []struct {
		name, old, new string
		result, kind   string
	}{
		{"only new fails", base.OldSQL, "SELECT id, no_such_column AS full_name FROM users_v2 WHERE id <= $1", ResultMismatch, KindErrorNew},
		{"only old fails", "SELECT id / 0 AS v FROM users WHERE id <= $1", "SELECT id AS v FROM users_v2 WHERE id <= $1", ResultMismatch, KindErrorOld},
		{"both fail alike", "SELECT id / 0 AS v FROM users WHERE id <= $1", "SELECT id / 0 AS v FROM users_v2 WHERE id <= $1", ResultMatch, ""},
		{"both fail differently", "SELECT id / 0 AS v FROM users WHERE id <= $1", "SELECT nope FROM users_v2 WHERE id <= $1", ResultMismatch, KindErrorBoth},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := base
			req.OldSQL, req.NewSQL = tt.old, tt.new
			// Both orders: when the failing form runs first, the other runs after the rollback to
			// the savepoint, in the same transaction.
			for _, out := range compareBoth(t, c, req) {
				if out.result != tt.result {
					t.Fatalf("%s (%s: %v), want %s", out.result, out.reason, out.err, tt.result)
				}
				if tt.kind != "" {
					if m := buildMismatch(req, out, time.Now()); m.Kind != tt.kind {
						t.Errorf("kind %s (old %q, new %q), want %s", m.Kind, m.OldError, m.NewError, tt.kind)
					}
				}
			}
		})
	}
}

func TestIntegrationParams(t *testing.T) {
	c := newTestComparator(t, Options{})
	int4 := func(v int32) []byte { return binary.BigEndian.AppendUint32(nil, uint32(v)) }
	int8 := func(v int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(v)) }
	tests := []struct {
		name    string
		old     string
		new     string
		params  [][]byte
		formats []int16
		oids    []uint32
	}{
		{"text", "SELECT id, full_name FROM users WHERE id = $1", "SELECT id, " + rightMap + " AS full_name FROM users_v2 WHERE id = $1",
			[][]byte{[]byte("3")}, nil, nil},
		{"binary, declared int4", "SELECT count(*) AS n FROM users WHERE id = $1", "SELECT (count(*) + $1 - 7)::bigint AS n FROM users_v2 WHERE id = 3",
			[][]byte{int4(7)}, []int16{1}, []uint32{23}},
		{"binary, type inferred", "SELECT count(*) AS n FROM users WHERE id = $1", "SELECT count(*) AS n FROM users_v2 WHERE id = $1",
			[][]byte{int4(3)}, []int16{1}, nil},
		// $2 is a binary int8: its type is declared for the server to decode it.
		{"mixed formats", "SELECT $1::text || '/' || $2 AS v", "SELECT $1::text || '/' || ($2 + 0) AS v",
			[][]byte{[]byte("a"), int8(9000000000)}, []int16{0, 1}, []uint32{0, 20}},
		{"fewer OIDs than params", "SELECT count(*) AS n FROM users WHERE id = $1 AND $2 = 'x'", "SELECT count(*) AS n FROM users_v2 WHERE id = $1 AND $2 = 'x'",
			[][]byte{[]byte("3"), []byte("x")}, nil, []uint32{23}},
		{"NULL", "SELECT $1::text IS NULL AS v", "SELECT $1::text IS NOT DISTINCT FROM NULL AS v", [][]byte{nil}, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := usersRequest(rightMap)
			req.OldSQL, req.NewSQL, req.Params, req.ParamFormats, req.ParamOIDs = tt.old, tt.new, tt.params, tt.formats, tt.oids
			out := c.compare(context.Background(), req)
			if out.result != ResultMatch {
				t.Errorf("%s (%s: %v; old %v, new %v), diff %+v", out.result, out.reason, out.err, out.oldErr, out.newErr, out.diff)
			}
		})
	}
	// More OIDs than parameters are cut to the parameters.
	req := usersRequest(rightMap)
	req.ParamOIDs = []uint32{23, 25, 25}
	if out := c.compare(context.Background(), req); out.result != ResultMatch {
		t.Errorf("extra OIDs: %s (%s: %v)", out.result, out.reason, out.err)
	}
}

func TestIntegrationSettings(t *testing.T) {
	c := newTestComparator(t, Options{})
	req := usersRequest(rightMap)
	req.Params = nil
	// The search_path is a list as text, quotes included, applied without quoting trouble.
	req.SearchPath = `"$user", sp, public`
	req.OldSQL, req.NewSQL = "SELECT v FROM t", "SELECT 'from sp'::text AS v"
	if out := c.compare(context.Background(), req); out.result != ResultMatch {
		t.Errorf("search_path: %s (%s: %v) %+v", out.result, out.reason, out.err, out.diff)
	}
	req.Settings = map[string]string{"TimeZone": "Asia/Tokyo", "DateStyle": "German, DMY"}
	req.OldSQL = "SELECT current_setting('TimeZone') AS tz, '2024-03-01'::date::text AS d"
	req.NewSQL = "SELECT 'Asia/Tokyo'::text AS tz, '01.03.2024'::text AS d"
	if out := c.compare(context.Background(), req); out.result != ResultMatch {
		t.Errorf("settings: %s (%s: %v) %+v", out.result, out.reason, out.err, out.diff)
	}
	// The settings were local to the comparison's transaction.
	req.Settings = nil
	req.OldSQL, req.NewSQL = "SELECT current_setting('TimeZone') <> 'Asia/Tokyo' AS v", "SELECT true AS v"
	for _, out := range compareBoth(t, c, req) {
		if out.result != ResultMatch {
			t.Errorf("a setting outlived its comparison: %s %+v", out.result, out.diff)
		}
	}
}

// TestIntegrationOneSnapshot: with writers changing both shapes continuously (atomically, as
// mirrored writes do), comparisons in one snapshot never disagree; the same comparisons in two
// transactions do.
func TestIntegrationOneSnapshot(t *testing.T) {
	setup(t)
	ctx, stop := context.WithCancel(context.Background())
	var commits atomic.Int64
	var wg sync.WaitGroup
	for w := range 2 {
		conn, err := pgx.Connect(ctx, dsnFor(shadowDB))
		if err != nil {
			t.Fatal(err)
		}
		lo, hi := w*10+1, w*10+10 // disjoint rows: the writers never wait for each other
		wg.Go(func() {
			defer conn.Close(context.Background())
			for n := 0; ctx.Err() == nil; n++ {
				// One simple-protocol message with two statements is one transaction.
				sql := fmt.Sprintf(`UPDATE snap_users SET full_name = 'F%[1]d L%[1]d' WHERE id BETWEEN %[2]d AND %[3]d;
					UPDATE snap_users_v2 SET first_name = 'F%[1]d', last_name = 'L%[1]d' WHERE id BETWEEN %[2]d AND %[3]d`, n, lo, hi)
				if _, err := conn.Exec(ctx, sql); err != nil {
					if ctx.Err() == nil {
						t.Errorf("writer: %v", err)
					}
					return
				}
				commits.Add(1)
			}
		})
	}
	defer func() {
		stop()
		wg.Wait()
	}()
	waitFor(t, "the writers' first commits", func() bool { return commits.Load() > 0 })

	req := Request{
		Migration: "snap", Database: shadowDB, KeyColumns: []string{"id"},
		OldSQL: "SELECT id, full_name FROM snap_users",
		NewSQL: "SELECT id, first_name || ' ' || last_name AS full_name FROM snap_users_v2",
	}
	run := func(c *Comparator, n int) (mismatches int) {
		for i := range n {
			out := c.compare(ctx, req)
			if out.result == ResultError {
				t.Fatalf("comparison %d: %s: %v", i, out.reason, out.err)
			}
			if out.result == ResultMismatch {
				mismatches++
			}
		}
		return mismatches
	}

	before := commits.Load()
	const n = 200
	shared := newTestComparator(t, Options{})
	if mismatches := run(shared, n); mismatches != 0 {
		t.Errorf("one snapshot: %d mismatches in %d comparisons, want 0", mismatches, n)
	}
	during := commits.Load() - before
	if during == 0 {
		t.Fatal("the writers committed nothing during the comparisons: the test proves nothing")
	}
	t.Logf("one snapshot: 0 mismatches in %d comparisons while the writers committed %d times", n, during)

	// Contrast: two transactions. A commit between the two reads shows as a mismatch.
	separate := newTestComparator(t, Options{NoSharedSnapshot: true})
	mismatches := run(separate, n)
	if mismatches == 0 {
		t.Errorf("separate transactions: no false mismatch in %d comparisons under concurrent writes; the contrast does not show", n)
	}
	t.Logf("separate transactions: %d false mismatches in %d comparisons", mismatches, n)
}

func TestIntegrationSideRefuses(t *testing.T) {
	// A port nobody listens on: take a free one and close it.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	m := newCountMetrics()
	c := newTestComparator(t, Options{
		SideDSN: "postgres://postgres@" + addr + "/" + pgtest.TestDB + "?sslmode=disable",
		Metrics: m, Workers: 2, QueueSize: 10,
	})
	out := c.compare(context.Background(), usersRequest(rightMap))
	if out.result != ResultError || out.reason != "connect" {
		t.Errorf("%s (%s: %v), want an error connecting", out.result, out.reason, out.err)
	}
	const n = 1000
	for range n {
		c.Submit(usersRequest(rightMap)) // returns at once, queued or dropped
	}
	waitFor(t, "every request accounted for", func() bool { return m.results("users-split-name") == n })
	if m.get("comparison/users-split-name/error") == 0 || m.get("comparison/users-split-name/match") != 0 {
		t.Errorf("errors %d, matches %d: want errors only (and drops)", m.get("comparison/users-split-name/error"), m.get("comparison/users-split-name/match"))
	}
}

func TestIntegrationSlowSide(t *testing.T) {
	c := newTestComparator(t, Options{Timeout: 200 * time.Millisecond})
	req := usersRequest(rightMap)
	req.Params = nil
	req.OldSQL, req.NewSQL = "SELECT 1 AS v FROM pg_sleep(30)", "SELECT 1 AS v"
	for _, out := range compareBoth(t, c, req) {
		if out.result != ResultError || out.reason != "statement_timeout" {
			t.Errorf("%s (%s: %v), want an error by statement timeout", out.result, out.reason, out.err)
		}
	}
	// The connection the timeout hit is usable again (or replaced).
	if out := c.compare(context.Background(), usersRequest(rightMap)); out.result != ResultMatch {
		t.Errorf("after a timeout: %s (%s: %v)", out.result, out.reason, out.err)
	}
}

func TestIntegrationSkipped(t *testing.T) {
	c := newTestComparator(t, Options{})
	req := usersRequest(rightMap)
	req.Params = nil
	req.MaxRows = 5
	req.OldSQL, req.NewSQL = "SELECT g FROM generate_series(1, 100000) g", "SELECT g FROM generate_series(1, 100000) g"
	for _, out := range compareBoth(t, c, req) {
		if out.result != ResultSkipped || out.reason != "max_rows" {
			t.Errorf("large result: %s (%s: %v), want skipped for max_rows", out.result, out.reason, out.err)
		}
	}
	req.MaxRows = 0
	req.OldSQL, req.NewSQL = "SELECT nextval('seq') AS v", "SELECT nextval('seq') AS v"
	for _, out := range compareBoth(t, c, req) {
		if out.result != ResultSkipped || out.reason != "not_read_only" {
			t.Errorf("a read that writes: %s (%s: %v), want skipped", out.result, out.reason, out.err)
		}
	}
}
