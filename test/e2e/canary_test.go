package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

const usersMigration = "users-split-name"

// compareAll makes every read of users-split-name a comparison, with the judge's defaults.
func compareAll(readMap string) func(*config.Config) {
	return func(cfg *config.Config) {
		for i := range cfg.Migrations {
			m := &cfg.Migrations[i]
			if m.Name != usersMigration {
				continue
			}
			one := 1.0
			m.Compare.Ratio = &one
			if readMap != "" {
				m.Read = map[string]string{"full_name": readMap}
			}
		}
		cfg.Shadow.Workers = 4
		cfg.Shadow.QueueSize = 10000
	}
}

// usersWorkload runs writers and readers of users through dsn until ctx ends or stop says so.
// Writers change names (the column the read map derives), insert and delete; readers read single
// rows, ordered ranges and aggregates, in both protocols.
func usersWorkload(ctx context.Context, t *testing.T, dsn string, writers, readers int, stop func() bool) (reads, writes int64) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var nReads, nWrites atomic.Int64
	errs := make(chan error, writers+readers)
	names := []string{"Ada Lovelace", "Cher", "Grace Brewster Hopper", "Edsger Wybe Dijkstra", "Barbara Liskov", "Ken Thompson"}
	// client runs body on its own connection, reporting a failure to connect.
	client := func(body func(c *pgx.Conn)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := pgx.Connect(ctx, dsn)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close(context.Background())
			body(c)
		}()
	}
	for w := range writers {
		client(func(c *pgx.Conn) {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for ctx.Err() == nil {
				var err error
				switch r.IntN(10) {
				case 0:
					_, err = c.Exec(ctx, "INSERT INTO users (full_name, email) VALUES ($1, $2)", names[r.IntN(len(names))], fmt.Sprintf("w%d-%d@example.com", w, r.Int64()))
				case 1:
					_, err = c.Exec(ctx, "DELETE FROM users WHERE id = (SELECT max(id) FROM users) AND id > 300")
				default:
					_, err = c.Exec(ctx, "UPDATE users SET full_name = $1 WHERE id = $2", names[r.IntN(len(names))], 1+r.IntN(300))
				}
				if err != nil && ctx.Err() == nil && !isRetryable(err) {
					errs <- fmt.Errorf("write: %w", err)
					return
				}
				nWrites.Add(1)
			}
		})
	}
	for rd := range readers {
		client(func(c *pgx.Conn) {
			r := rand.New(rand.NewPCG(uint64(rd), 2))
			mode := pgx.QueryExecModeCacheStatement
			if rd%2 == 1 {
				mode = pgx.QueryExecModeSimpleProtocol
			}
			for ctx.Err() == nil && !stop() {
				var err error
				switch r.IntN(4) {
				case 0:
					var name string
					err = c.QueryRow(ctx, "SELECT full_name FROM users WHERE id = $1", mode, 1+r.IntN(300)).Scan(&name)
					if err == pgx.ErrNoRows {
						err = nil
					}
				case 1:
					lo := 1 + r.IntN(290)
					var rows pgx.Rows
					rows, err = c.Query(ctx, "SELECT id, full_name, email FROM users WHERE id BETWEEN $1 AND $2 ORDER BY id", mode, lo, lo+10)
					if err == nil {
						for rows.Next() {
						}
						err = rows.Err()
					}
				case 2:
					var n int64
					var longest string
					err = c.QueryRow(ctx, "SELECT count(*), max(full_name) FROM users WHERE full_name LIKE $1", mode, "%a%").Scan(&n, &longest)
				default:
					var rows pgx.Rows
					rows, err = c.Query(ctx, "SELECT * FROM users WHERE id % 50 = $1", mode, r.IntN(50))
					if err == nil {
						for rows.Next() {
						}
						err = rows.Err()
					}
				}
				if err != nil && ctx.Err() == nil {
					errs <- fmt.Errorf("read: %w", err)
					return
				}
				nReads.Add(1)
			}
			cancel() // the readers decide when the run is over
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return nReads.Load(), nWrites.Load()
}

func comparisons(t *testing.T, p *testProxy, result string) float64 {
	return max(gatheredValue(t, p.reg, "pgcanary_comparisons_total", map[string]string{"migration": usersMigration, "result": result}), 0)
}

// TestCanaryComparisons: under 8 clients of concurrent writes, 10000 comparisons of the correct
// migration report no mismatch; the same workload compared outside a shared snapshot reports
// false mismatches (the rate is logged for the record).
func TestCanaryComparisons(t *testing.T) {
	if testing.Short() {
		t.Skip("runs 10000 comparisons; skipped with -short")
	}
	ff := newFlagFile(t)
	p, dsn := migratedProxyWith(t, "canary_ok", proxyOpts{flags: ff.src, canary: true, configEdit: compareAll("")})
	ctx := testCtx(t)
	const want = 10000
	done := func() bool { return comparisons(t, p, "match")+comparisons(t, p, "mismatch") >= want }
	reads, writes := usersWorkload(ctx, t, dsn(pgtest.SuperUser, ""), 8, 4, done)
	pollUntil(t, 30*time.Second, done, func() string { return "comparisons did not reach 10000" })
	match, mismatch := comparisons(t, p, "match"), comparisons(t, p, "mismatch")
	t.Logf("one snapshot: %v reads, %v writes; comparisons: %v match, %v mismatch, %v error, %v dropped, %v skipped",
		reads, writes, match, mismatch, comparisons(t, p, "error"), comparisons(t, p, "dropped"), comparisons(t, p, "skipped"))
	if mismatch != 0 {
		mm, _ := p.canary.Mismatches(usersMigration, 5)
		t.Fatalf("%v mismatches in one snapshot: %+v", mismatch, mm)
	}
	v := p.canary.Judge().Verdict(usersMigration)
	t.Logf("verdict %s: %v", v.Status, v.Reasons)
	for _, r := range v.Reasons {
		if v.Status == "fail" && v.Mismatches > 0 {
			t.Fatalf("verdict failed on mismatches: %s", r)
		}
	}

	// The contrast: the same workload, old and new read one after the other.
	ff2 := newFlagFile(t)
	p2, dsn2 := migratedProxyWith(t, "canary_contrast", proxyOpts{flags: ff2.src, canary: true, noSharedSnapshot: true, configEdit: compareAll("")})
	const contrast = 2000
	done2 := func() bool { return comparisons(t, p2, "match")+comparisons(t, p2, "mismatch") >= contrast }
	usersWorkload(ctx, t, dsn2(pgtest.SuperUser, ""), 8, 4, done2)
	pollUntil(t, 30*time.Second, done2, func() string { return "contrast comparisons did not finish" })
	m2, mm2 := comparisons(t, p2, "match"), comparisons(t, p2, "mismatch")
	t.Logf("separate snapshots: %v match, %v mismatch: false-mismatch rate %.2f%% (one snapshot: %.2f%%)",
		m2, mm2, 100*mm2/(m2+mm2), 100*mismatch/(match+mismatch))
	if mm2 == 0 {
		t.Log("no false mismatch without a shared snapshot this time: the writers did not race the readers")
	}
}

// TestCanaryWrongReadMapRollsBack: a subtly wrong read map (last names truncated to six
// characters) is caught: mismatches name full_name, the verdict fails, and the kill switch sends
// every read back to the old shape although the flag says 100 %.
func TestCanaryWrongReadMapRollsBack(t *testing.T) {
	ff := newFlagFile(t)
	p, dsn := migratedProxyWith(t, "canary_wrong", proxyOpts{flags: ff.src, canary: true,
		configEdit: compareAll("concat_ws(' ', first_name, left(last_name, 6))")})
	ff.set(100)
	ctx := testCtx(t)
	killed := func() bool { return p.canary.Killed(usersMigration) }
	usersWorkload(ctx, t, dsn(pgtest.SuperUser, ""), 8, 4, func() bool {
		return killed() || comparisons(t, p, "mismatch") > 2000
	})
	pollUntil(t, 30*time.Second, killed, func() string {
		return fmt.Sprintf("kill switch not engaged; verdict %+v", p.canary.Judge().Verdict(usersMigration))
	})
	v := p.canary.Judge().Verdict(usersMigration)
	if v.Status != "fail" {
		t.Fatalf("verdict %s, want fail: %v", v.Status, v.Reasons)
	}
	t.Logf("verdict %s after %d comparisons, %d mismatches: %v", v.Status, v.Comparisons, v.Mismatches, v.Reasons)
	records, err := p.canary.Mismatches(usersMigration, 10)
	if err != nil {
		t.Fatal(err)
	}
	recs := fmt.Sprintf("%+v", records)
	if !containsAll(recs, "full_name", "values") {
		t.Fatalf("mismatch records do not name full_name: %s", recs)
	}
	if gatheredValue(t, p.reg, "pgcanary_kill_switch_active", map[string]string{"migration": usersMigration}) != 1 {
		t.Fatal("pgcanary_kill_switch_active is not 1")
	}
	if gatheredValue(t, p.reg, "pgcanary_canary_verdict", map[string]string{"migration": usersMigration}) != 2 {
		t.Fatal("pgcanary_canary_verdict is not 2 (fail)")
	}
	// Every read now goes to the old shape, whatever the flag says.
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
	_, newBefore := routeCounts(t, p)
	for i := range 50 {
		var name string
		if err := conn.QueryRow(ctx, "SELECT full_name FROM users WHERE id = $1", 1+i).Scan(&name); err != nil {
			t.Fatal(err)
		}
	}
	if _, newAfter := routeCounts(t, p); newAfter != newBefore {
		t.Fatalf("%v reads went to the new shape with the kill switch engaged", newAfter-newBefore)
	}
	if got := gatheredValue(t, p.reg, "pgcanary_read_percent", map[string]string{"migration": usersMigration}); got != 0 {
		t.Fatalf("effective read percent %v with the kill switch engaged", got)
	}
	// Resume: reads follow the flag again.
	if err := p.canary.Resume(usersMigration); err != nil {
		t.Fatal(err)
	}
	conn2 := connectDSN(t, dsn(pgtest.SuperUser, ""))
	var name string
	if err := conn2.QueryRow(ctx, "SELECT full_name FROM users WHERE id = $1", 3).Scan(&name); err != nil {
		t.Fatal(err)
	}
	if _, newAfter := routeCounts(t, p); newAfter == newBefore {
		t.Fatal("after resume, reads did not follow the flag to the new shape")
	}
}

// TestCanarySideDatabaseDown: comparisons against a side database that refuses connections, or
// one that accepts and never answers, are counted as errors or dropped, and client reads keep
// their latency (the ratio is logged; times are never asserted on shared machines).
func TestCanarySideDatabaseDown(t *testing.T) {
	// A listener that accepts and never answers: a database that hangs.
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	var held []net.Conn
	var heldMu sync.Mutex
	go func() {
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			heldMu.Lock()
			held = append(held, c)
			heldMu.Unlock()
		}
	}()
	defer func() {
		heldMu.Lock()
		for _, c := range held {
			c.Close()
		}
		heldMu.Unlock()
	}()
	for _, side := range []struct{ name, addr string }{
		{"refuses", unusedLoopbackAddr(t)},
		{"hangs", hang.Addr().String()},
	} {
		t.Run(side.name, func(t *testing.T) {
			ff := newFlagFile(t)
			edit := compareAll("")
			p, dsn := migratedProxyWith(t, "canary_side_"+side.name, proxyOpts{flags: ff.src, canary: true,
				sideDSN: "postgres://postgres@" + side.addr + "/x?connect_timeout=1", configEdit: func(cfg *config.Config) {
					edit(cfg)
					cfg.Shadow.Timeout = 500 * time.Millisecond
					cfg.Shadow.QueueSize = 100
				}})
			ctx := testCtx(t)
			// Baseline: a proxy without comparisons in front of the same kind of database.
			_, plainDSN := migratedProxyWith(t, "canary_side_"+side.name+"_plain", proxyOpts{flags: ff.src})
			conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
			plainConn := connectDSN(t, plainDSN(pgtest.SuperUser, ""))
			measure := func(c *pgx.Conn) time.Duration {
				start := time.Now()
				for i := range 1000 {
					var name string
					if err := c.QueryRow(ctx, "SELECT full_name FROM users WHERE id = $1", 1+i%300).Scan(&name); err != nil {
						t.Fatal(err)
					}
				}
				return time.Since(start)
			}
			measure(plainConn) // warm both: prepared statements, plan caches
			var with, without []time.Duration
			for range 5 {
				with = append(with, measure(conn))
				without = append(without, measure(plainConn))
			}
			pollUntil(t, 60*time.Second, func() bool {
				return comparisons(t, p, "error")+comparisons(t, p, "dropped") >= 5000
			}, func() string {
				return fmt.Sprintf("comparisons: error %v dropped %v match %v", comparisons(t, p, "error"), comparisons(t, p, "dropped"), comparisons(t, p, "match"))
			})
			if comparisons(t, p, "match")+comparisons(t, p, "mismatch") != 0 {
				t.Fatal("comparisons ran against a side database that is down")
			}
			slices.Sort(with)
			slices.Sort(without)
			t.Logf("side database %s: 1000 reads take %v (median of 5) with comparisons, %v without: ratio %.2f; comparisons: error %v, dropped %v",
				side.name, with[2], without[2], float64(without[2])/float64(with[2]), comparisons(t, p, "error"), comparisons(t, p, "dropped"))
		})
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// isRetryable: errors concurrent writers cause each other (deadlocks, serialization failures,
// duplicates).
func isRetryable(err error) bool {
	code := pgCode(err)
	return code == "40P01" || code == "40001" || code == "23505"
}

// TestCanaryComparesLockingReads: a SELECT ... FOR UPDATE is never routed, but it is compared,
// both forms without their locking clause, with the client's parameters.
func TestCanaryComparesLockingReads(t *testing.T) {
	ff := newFlagFile(t)
	p, dsn := migratedProxyWith(t, "canary_locking", proxyOpts{flags: ff.src, canary: true, configEdit: compareAll("")})
	ctx := testCtx(t)
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
	for i := range 20 {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var name string
		if err := tx.QueryRow(ctx, "SELECT full_name FROM users WHERE id = $1 FOR UPDATE", 1+i).Scan(&name); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	pollUntil(t, 10*time.Second, func() bool { return comparisons(t, p, "match") >= 20 }, func() string {
		return fmt.Sprintf("match %v mismatch %v error %v", comparisons(t, p, "match"), comparisons(t, p, "mismatch"), comparisons(t, p, "error"))
	})
	if comparisons(t, p, "mismatch")+comparisons(t, p, "error") != 0 {
		t.Fatalf("locking reads: %v mismatches, %v errors", comparisons(t, p, "mismatch"), comparisons(t, p, "error"))
	}
}

// TestCanaryApplicationErrorsInTransactions: at 100 %, reads that fail on their own (a division
// by zero the application wrote) inside transactions cannot be re-run in the old form, so they
// cannot be told from the new shape's failures: they must not count against it, or the canary
// would fail on the application's bugs. The same errors outside transactions are re-run in the
// old form, fail there too, and count on both routes.
func TestCanaryApplicationErrorsInTransactions(t *testing.T) {
	ff := newFlagFile(t)
	p, dsn := migratedProxyWith(t, "canary_app_errors", proxyOpts{flags: ff.src, canary: true})
	ff.set(100)
	ctx := testCtx(t)
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
	appErrors := 0
	for i := range 300 {
		sql := "SELECT full_name FROM users WHERE id = $1"
		if i%10 == 0 {
			sql = "SELECT full_name, 1 / (id - id) FROM users WHERE id = $1"
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := tx.Query(ctx, sql, 1+i)
		if err == nil {
			for rows.Next() {
			}
			rows.Close()
			err = rows.Err()
		}
		if err != nil {
			appErrors++
			_ = tx.Rollback(ctx)
			continue
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if appErrors != 30 {
		t.Fatalf("%d reads failed in transactions, want 30", appErrors)
	}
	if v := p.canary.Judge().Verdict(usersMigration); v.Status == "fail" || v.NewReads != 0 {
		t.Fatalf("reads in transactions were judged: %s, new %d (%d failed), old %d: %v",
			v.Status, v.NewReads, v.NewErrors, v.OldReads, v.Reasons)
	}
	for i := range 60 {
		if _, err := conn.Exec(ctx, "SELECT full_name, 1 / (id - id) FROM users WHERE id = $1", 1+i); err == nil {
			t.Fatal("a division by zero succeeded")
		}
	}
	v := p.canary.Judge().Verdict(usersMigration)
	if v.Status == "fail" || p.canary.Killed(usersMigration) {
		t.Fatalf("the application's own errors failed the canary: %s %v", v.Status, v.Reasons)
	}
	if v.NewReads != 60 || v.NewErrors != 60 || v.OldErrors != 60 {
		t.Fatalf("judged reads: new %d (%d failed), old %d (%d failed); want the 60 outside transactions on both routes",
			v.NewReads, v.NewErrors, v.OldReads, v.OldErrors)
	}
}
