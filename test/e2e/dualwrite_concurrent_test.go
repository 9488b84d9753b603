package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// TestDualWritesConcurrent: 8 clients write every shape at random through the proxy for 30 s
// (PGCANARY_SOAK_SECONDS overrides), then both shapes must agree row for row. Concurrent writes to
// the same rows, deadlock retries and aborted transactions all happen along the way.
func TestDualWritesConcurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("a 30 s soak; skipped with -short")
	}
	duration := 30 * time.Second
	if s := os.Getenv("PGCANARY_SOAK_SECONDS"); s != "" {
		var n int
		if _, err := fmt.Sscan(s, &n); err == nil {
			duration = time.Duration(n) * time.Second
		}
	}
	_, dsn := migratedProxy(t, "dual_soak")
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()

	writes := []func(c *pgx.Conn, r *rand.Rand) error{
		func(c *pgx.Conn, r *rand.Rand) error { // INSERT with defaults (serial, now(), gen_random_uuid())
			_, err := c.Exec(ctx, "INSERT INTO users (full_name, email, tier) VALUES ($1, $2, $3)",
				[]string{"Ada Lovelace", "Cher", "Grace Brewster Hopper", "Alan  Turing"}[r.IntN(4)],
				fmt.Sprintf("soak-%d@example.com", r.Int64()), []string{"free", "pro", "enterprise"}[r.IntN(3)])
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // INSERT ... RETURNING
			var id int64
			return c.QueryRow(ctx, "INSERT INTO users (full_name, email) VALUES ($1, $2) RETURNING id",
				"Edsger Dijkstra", fmt.Sprintf("soak-r-%d@example.com", r.Int64())).Scan(&id)
		},
		func(c *pgx.Conn, r *rand.Rand) error { // UPDATE of the migrated column, on hot rows
			_, err := c.Exec(ctx, "UPDATE users SET full_name = $1 WHERE id = $2",
				fmt.Sprintf("Name%d Last%d", r.IntN(100), r.IntN(100)), 1+r.IntN(50))
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // multi-row UPDATE, simple protocol
			_, err := c.Exec(ctx, fmt.Sprintf("UPDATE users SET active = NOT active WHERE id %% 17 = %d", r.IntN(17)), pgx.QueryExecModeSimpleProtocol)
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // upsert
			_, err := c.Exec(ctx, "INSERT INTO users (id, full_name, email) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET full_name = EXCLUDED.full_name",
				100000+r.IntN(30), "Upserted Person", fmt.Sprintf("soak-u-%d@example.com", r.Int64()))
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // DELETE
			_, err := c.Exec(ctx, "DELETE FROM users WHERE id = (SELECT max(id) FROM users WHERE email LIKE 'soak-%') AND $1", r.IntN(2) == 0)
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // reverse: a newer application writes the new shape
			_, err := c.Exec(ctx, "UPDATE users_v2 SET last_name = $1 WHERE id = $2", fmt.Sprintf("V2last%d", r.IntN(9)), 60+r.IntN(40))
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // same-table: UPDATE and INSERT of amount
			if r.IntN(2) == 0 {
				_, err := c.Exec(ctx, "UPDATE orders SET amount = amount + $1 WHERE id = $2", fmt.Sprintf("%d.%02d", r.IntN(5), r.IntN(100)), 1+r.IntN(200))
				return err
			}
			_, err := c.Exec(ctx, "INSERT INTO orders (user_id, amount) VALUES ($1, $2) RETURNING id", 1+r.IntN(200), fmt.Sprintf("%d.%02d", r.IntN(500), r.IntN(100)))
			return err
		},
		func(c *pgx.Conn, r *rand.Rand) error { // a transaction: two writes, committed or rolled back
			tx, err := c.Begin(ctx)
			if err != nil {
				return err
			}
			defer tx.Rollback(ctx) //nolint:errcheck // after Commit it is a no-op
			if _, err := tx.Exec(ctx, "UPDATE users SET email = $1 WHERE id = $2", fmt.Sprintf("soak-t-%d@example.com", r.Int64()), 100+r.IntN(100)); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, "UPDATE orders SET amount_cents = $1 WHERE id = $2", r.IntN(100000), 1+r.IntN(200)); err != nil {
				return err
			}
			if r.IntN(3) == 0 {
				return tx.Rollback(ctx)
			}
			return tx.Commit(ctx)
		},
	}

	var ops, failed atomic.Int64
	var unexpected sync.Map
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(context.Background(), dsn(pgtest.SuperUser, ""))
			if err != nil {
				t.Errorf("client %d: %v", w, err)
				return
			}
			defer conn.Close(context.Background())
			r := rand.New(rand.NewPCG(uint64(w), 42))
			for ctx.Err() == nil {
				err := writes[r.IntN(len(writes))](conn, r)
				ops.Add(1)
				if err == nil || ctx.Err() != nil {
					continue
				}
				failed.Add(1)
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
	wg.Wait()
	unexpected.Range(func(k, _ any) bool { t.Errorf("unexpected error: %v", k); return true })
	check, err := pgx.Connect(context.Background(), dsn(pgtest.SuperUser, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer check.Close(context.Background())
	assertShapesAgree(t, check)
	t.Logf("%d writes by 8 clients in %s (%d refused by the database: deadlocks, duplicates); both shapes agree", ops.Load(), duration, failed.Load())
	if ops.Load() < 1000 {
		t.Fatalf("only %d writes: the soak did not run", ops.Load())
	}
}
