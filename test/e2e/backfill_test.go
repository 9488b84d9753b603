package e2e

// pgcanary backfill end to end: a backfill running while clients write every shape through the
// proxy leaves both shapes in agreement, and the binary's dry run, JSON summary, exit statuses
// and resume after an interrupt.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/backfill"
	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/test/pgtest"
	"github.com/pgcanary/pgcanary/verify"
)

// TestBackfillUnderConcurrentWrites: both example migrations are backfilled from scratch while 8
// clients write every shape through the proxy (inserts with defaults, updates of the mapped
// columns, multi-row updates, upserts, deletes, writes to the new shape, transactions committed
// and rolled back); afterwards the shapes agree row for row. The backfills are slowed down
// (small chunks, a rate limit) so that they overlap the writes for a few seconds.
func TestBackfillUnderConcurrentWrites(t *testing.T) {
	const db = "e2e_backfill_concurrent"
	_, dsn := migratedProxyWith(t, db, proxyOpts{setupSQL: "truncate users_v2; update orders set amount_cents = null"})
	cfg, err := config.Load("../../examples/pgcanary.yaml") // migratedProxyWith pointed its variables at db
	if err != nil {
		t.Fatal(err)
	}
	writeCtx, stopWrites := context.WithCancel(context.Background())
	defer stopWrites()
	ctx := writeCtx

	writes := []func(c *pgx.Conn, r *rand.Rand) error{
		func(c *pgx.Conn, r *rand.Rand) error { // INSERT with defaults (serial, now(), gen_random_uuid())
			_, err := c.Exec(ctx, "INSERT INTO users (full_name, email, tier) VALUES ($1, $2, $3)",
				[]string{"Ada Lovelace", "Cher", "Grace Brewster Hopper", "Alan  Turing"}[r.IntN(4)],
				fmt.Sprintf("bf-%d@example.com", r.Int64()), []string{"free", "pro", "enterprise"}[r.IntN(3)])
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // UPDATE of the migrated column, all over the key range
			_, err := c.Exec(ctx, "UPDATE users SET full_name = $1 WHERE id = $2",
				fmt.Sprintf("Name%d Last%d", r.IntN(100), r.IntN(100)), 1+r.IntN(300))
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // multi-row UPDATE, simple protocol
			_, err := c.Exec(ctx, fmt.Sprintf("UPDATE users SET active = NOT active WHERE id %% 37 = %d", r.IntN(37)), pgx.QueryExecModeSimpleProtocol)
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // upsert of existing and new keys
			_, err := c.Exec(ctx, "INSERT INTO users (id, full_name, email) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET full_name = EXCLUDED.full_name",
				[]int{1 + r.IntN(300), 100000 + r.IntN(30)}[r.IntN(2)], "Upserted Person", fmt.Sprintf("bf-u-%d@example.com", r.Int64()))
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // DELETE of rows the backfill may be copying
			_, err := c.Exec(ctx, "DELETE FROM users WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM orders WHERE user_id = $1)", 1+r.IntN(300))
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // a newer application writes the new shape
			_, err := c.Exec(ctx, "UPDATE users_v2 SET last_name = $1 WHERE id = $2", fmt.Sprintf("V2last%d", r.IntN(9)), 1+r.IntN(300))
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // same-table: UPDATE and INSERT of amount, DELETE
			switch r.IntN(3) {
			case 0:
				_, err := c.Exec(ctx, "UPDATE orders SET amount = amount + $1 WHERE id = $2", fmt.Sprintf("%d.%02d", r.IntN(5), r.IntN(100)), 1+r.IntN(900))
				return err
			case 1:
				_, err := c.Exec(ctx, "DELETE FROM orders WHERE id = $1", 1+r.IntN(900))
				return err
			}
			_, err := c.Exec(ctx, "INSERT INTO orders (user_id, amount) VALUES ($1, $2)", 1+r.IntN(200), fmt.Sprintf("%d.%02d", r.IntN(500), r.IntN(100)))
			if err != nil && pgCode(err) == "23503" { // the user was deleted meanwhile
				return nil
			}
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // a slow transaction: a chunk reaching its row must wait for it
			tx, err := c.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
			id := 1 + r.IntN(300)
			if _, err := tx.Exec(ctx, "UPDATE users SET full_name = $1 WHERE id = $2", fmt.Sprintf("Slow%d Writer", r.IntN(1000)), id); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "SELECT pg_sleep(0.1)"); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "UPDATE orders SET amount = amount + 1 WHERE id = $1", id); err != nil {
				return err
			}
			return tx.Commit(ctx)
		},
		func(c *pgx.Conn, r *rand.Rand) error { // a transaction: two writes, committed or rolled back
			tx, err := c.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
			if _, err := tx.Exec(ctx, "UPDATE users SET email = $1 WHERE id = $2", fmt.Sprintf("bf-t-%d@example.com", r.Int64()), 1+r.IntN(300)); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "UPDATE orders SET amount_cents = $1 WHERE id = $2", r.IntN(100000), 1+r.IntN(900)); err != nil {
				return err
			}
			if r.IntN(3) == 0 {
				return tx.Rollback(ctx)
			}
			return tx.Commit(ctx)
		},
	}

	var ops, refused atomic.Int64
	var unexpected sync.Map
	var writers sync.WaitGroup
	for w := range 8 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			conn, err := pgx.Connect(context.Background(), dsn(pgtest.SuperUser, ""))
			if err != nil {
				t.Errorf("client %d: %v", w, err)
				return
			}
			defer conn.Close(context.Background())
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for ctx.Err() == nil {
				err := writes[r.IntN(len(writes))](conn, r)
				ops.Add(1)
				if err == nil || ctx.Err() != nil {
					continue
				}
				refused.Add(1)
				// Deadlocks and unique collisions are the database's own answers to this workload.
				if code := pgCode(err); code != "40P01" && code != "23505" && code != "40001" {
					unexpected.Store(err.Error(), true)
				}
				if conn.IsClosed() {
					return
				}
			}
		}()
	}

	// Let the writers get going, then backfill both migrations at once, directly (side_dsn).
	time.Sleep(300 * time.Millisecond)
	results := make([]backfill.Result, 2)
	errs := make([]error, 2)
	var backfills sync.WaitGroup
	for i, o := range []backfill.Options{
		{Migration: "users-split-name", MaxRate: 150, MinChunk: 5, MaxChunk: 20},
		{Migration: "orders-cents", MaxRate: 500, MinChunk: 5, MaxChunk: 20},
	} {
		backfills.Add(1)
		go func() {
			defer backfills.Done()
			o.Config = cfg
			o.Logger = nil
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			results[i], errs[i] = backfill.Run(ctx, o)
		}()
	}
	backfills.Wait()
	time.Sleep(300 * time.Millisecond) // writes after the backfill are the mirror's alone
	stopWrites()
	writers.Wait()

	for i, err := range errs {
		if err != nil {
			t.Fatalf("backfill %s: %v", results[i].Migration, err)
		}
		if !results[i].Done || results[i].Rows < 100 || results[i].Chunks < 5 {
			t.Fatalf("backfill result %+v", results[i])
		}
	}
	unexpected.Range(func(k, _ any) bool { t.Errorf("unexpected error: %v", k); return true })
	check := connectDSN(t, cfgSuperDSN(db))
	assertShapesAgree(t, check)
	// And pgcanary verify says so too.
	for _, m := range []string{"users-split-name", "orders-cents"} {
		res, err := verify.Verify(testCtx(t), cfg, m, config.DSNConnector(cfg.SideDSN), verify.Options{RangeRows: 100})
		if err != nil {
			t.Fatalf("verify %s: %v", m, err)
		}
		if res.Differences() != 0 || res.RowsCompared < 300 {
			t.Fatalf("verify %s after the backfill: %+v", m, res)
		}
	}
	t.Logf("backfilled %d users in %.1fs (%d chunks, %d retried) and %d orders in %.1fs (%d chunks, %d retried) under %d writes by 8 clients (%d refused by the database); both shapes agree",
		results[0].Rows, results[0].Seconds, results[0].Chunks, results[0].Retries,
		results[1].Rows, results[1].Seconds, results[1].Chunks, results[1].Retries, ops.Load(), refused.Load())
	if ops.Load() < 200 {
		t.Fatalf("only %d writes: the writers did not overlap the backfill", ops.Load())
	}
}

// TestBackfillBinary: the command's dry run changes nothing, --json summarises a run, an
// unknown migration exits 2 naming the configured ones, SIGINT stops at a chunk boundary with
// exit 130 and the same command resumes where it stopped.
func TestBackfillBinary(t *testing.T) {
	db := cfgDB(t, "e2e_backfill_bin", "../../examples/schema.sql", "users=200", "orders=400")
	direct := connectDSN(t, cfgSuperDSN(db))
	ctx := testCtx(t)
	if _, err := direct.Exec(ctx, "truncate users_v2"); err != nil {
		t.Fatal(err)
	}
	root := cfgRepoRoot(t)
	env := []string{"PGCANARY_UPSTREAM=" + cluster.Addr(), "PGCANARY_SIDE_DSN=" + cfgSuperDSN(db), "PGCANARY_DATABASE=" + db}
	count := func(sql string) int {
		t.Helper()
		var n int
		if err := direct.QueryRow(ctx, sql).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	stdout, stderr, code := runPgcanary(t, root, env, "backfill", "--config", "examples/pgcanary.yaml", "users-split-name", "--dry-run")
	if code != 0 || !strings.Contains(stdout, "for share") || !strings.Contains(stdout, `insert into "public"."users_v2"`) || !strings.Contains(stdout, "-- $2 = 1000") {
		t.Fatalf("dry run: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if n := count("select count(*) from users_v2"); n != 0 {
		t.Fatalf("the dry run copied %d rows", n)
	}

	stdout, stderr, code = runPgcanary(t, root, env, "backfill", "--config", "examples/pgcanary.yaml", "nope")
	if code != 2 || !strings.Contains(stderr, `no migration "nope"`) || !strings.Contains(stderr, "users-split-name, orders-cents") {
		t.Fatalf("unknown migration: exit %d, want 2 naming the migrations\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}

	// Interrupted: 200 rows at 40 rows/s take 5 s; SIGINT after the first chunks.
	cmd := exec.Command(pgcanaryBinary(t), "backfill", "--config", "examples/pgcanary.yaml", "users-split-name", "--max-rate", "40")
	cmd.Dir, cmd.Env = root, append(os.Environ(), env...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pollUntil(t, 10*time.Second, func() bool {
		return count("select count(*) from users_v2") > 0
	}, func() string { return "no chunk committed\n" + errOut.String() })
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 || !strings.Contains(errOut.String(), "Resume with the same command:  pgcanary backfill --config examples/pgcanary.yaml users-split-name") {
		t.Fatalf("interrupted: %v, want exit 130 and how to resume\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	copied := count("select count(*) from users_v2")
	if copied == 0 || copied == 200 || count("select rows::int from pgcanary.backfill_checkpoint") != copied {
		t.Fatalf("after the interrupt: %d rows copied, checkpoint says %d", copied, count("select rows::int from pgcanary.backfill_checkpoint"))
	}

	stdout, stderr, code = runPgcanary(t, root, env, "backfill", "--config", "examples/pgcanary.yaml", "users-split-name", "--json")
	var res struct {
		Migration   string   `json:"migration"`
		Rows        int      `json:"rows"`
		TotalRows   int      `json:"total_rows"`
		Chunks      int      `json:"chunks"`
		Seconds     float64  `json:"seconds"`
		Rate        float64  `json:"rows_per_second"`
		ResumedFrom []string `json:"resumed_from"`
		Done        bool     `json:"done"`
	}
	if code != 0 || json.Unmarshal([]byte(stdout), &res) != nil {
		t.Fatalf("--json: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	if res.Migration != "users-split-name" || !res.Done || res.Rows != 200-copied || res.TotalRows != 200 || res.ResumedFrom == nil || res.Chunks < 1 {
		t.Fatalf("--json summary %+v (after %d rows copied before the interrupt)\n%s", res, copied, stdout)
	}
	var diff int
	if err := direct.QueryRow(ctx, `select count(*) from users u full join users_v2 n using (id)
		where n.first_name is distinct from split_part(u.full_name, ' ', 1)`).Scan(&diff); err != nil || diff != 0 {
		t.Fatalf("%d rows differ after the resumed backfill (%v)", diff, err)
	}
}
