// Command workload drives an application-like mix of reads and writes on the example schema
// (examples/schema.sql) through pgcanary, for the demo (scripts/demo.sh).
//
//	workload --dsn postgres://postgres@127.0.0.1:6432/app --duration 5s --clients 8
//
// Each client reconnects every --reconnect statements, as a pooled application's connections
// come and go, so that the per-connection routing key spreads reads over both shapes. Reads go by
// key, by range and through joins of users and orders, prepared and with the simple protocol;
// writes are INSERTs relying on defaults, UPDATEs, DELETEs, INSERT ... ON CONFLICT and RETURNING.
// It prints one summary line (also when stopped by SIGINT or SIGTERM) and exits 1 when no
// statement succeeded.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

type counters struct {
	reads, writes, errors atomic.Int64
	logged                atomic.Int64
}

func (c *counters) fail(err error) {
	c.errors.Add(1)
	if c.logged.Add(1) <= 3 { // the first few, for whoever reads the demo's output
		fmt.Fprintf(os.Stderr, "workload: %v\n", err)
	}
}

type client struct {
	id       int
	conn     *pgx.Conn
	rng      *rand.Rand
	maxUser  int64
	maxOrder int64
	mine     []int64 // users this client inserted, which it may delete
	c        *counters
	seq      int
}

func main() {
	dsn := flag.String("dsn", "postgres://postgres@127.0.0.1:6432/app?sslmode=disable", "connection string (pgcanary's address)")
	duration := flag.Duration("duration", 5*time.Second, "how long to run")
	clients := flag.Int("clients", 8, "concurrent connections")
	reconnect := flag.Int("reconnect", 40, "statements per connection before reconnecting (0: never)")
	writePct := flag.Int("writes", 20, "percentage of operations that write")
	flag.Parse()
	if err := run(*dsn, *duration, *clients, *reconnect, *writePct); err != nil {
		fmt.Fprintln(os.Stderr, "workload:", err)
		os.Exit(1)
	}
}

func run(dsn string, duration time.Duration, clients, reconnect, writePct int) error {
	// SIGINT/SIGTERM end the run early, with the summary.
	sig, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(sig, duration)
	defer cancel()
	probe, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	var maxUser, maxOrder int64
	// Keys are drawn from the example's own rows (emails user<N>@example.com): the users a run
	// inserts may be deleted again, and an order must not reference them.
	err = probe.QueryRow(ctx, `select (select max(id) from users where email like 'user%'), (select max(id) from orders)`).Scan(&maxUser, &maxOrder)
	probe.Close(context.Background())
	if err != nil {
		return err
	}
	var c counters
	var wg sync.WaitGroup
	start := time.Now()
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := &client{id: i, rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(i))),
				maxUser: maxUser, maxOrder: maxOrder, c: &c}
			cl.loop(ctx, dsn, reconnect, writePct)
		}()
	}
	wg.Wait()
	secs := time.Since(start).Seconds()
	fmt.Printf("workload: %d clients, %.1fs: %d reads, %d writes, %d errors (%.0f statements/s)\n",
		clients, secs, c.reads.Load(), c.writes.Load(), c.errors.Load(), float64(c.reads.Load()+c.writes.Load())/secs)
	if c.reads.Load()+c.writes.Load() == 0 {
		return errors.New("no statement succeeded")
	}
	return nil
}

func (cl *client) loop(ctx context.Context, dsn string, reconnect, writePct int) {
	defer func() {
		if cl.conn != nil {
			cl.conn.Close(context.Background())
		}
	}()
	// A dial or read cut short by the run's deadline can fail a moment before ctx reports it.
	deadline, _ := ctx.Deadline()
	over := func() bool { return ctx.Err() != nil || !time.Now().Before(deadline) }
	n := 0
	for !over() {
		if cl.conn == nil || (reconnect > 0 && n >= reconnect) {
			if cl.conn != nil {
				cl.conn.Close(context.Background())
				cl.conn = nil
			}
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				if !over() {
					cl.c.fail(err)
					time.Sleep(50 * time.Millisecond)
				}
				continue
			}
			cl.conn, n = conn, 0
		}
		n++
		var err error
		write := cl.rng.IntN(100) < writePct
		if write {
			err = cl.write(ctx)
		} else {
			err = cl.read(ctx)
		}
		switch {
		case over(): // the deadline interrupted it: not the application's error
		case err != nil:
			cl.c.fail(err)
			if cl.conn.IsClosed() {
				cl.conn = nil
			}
		case write:
			cl.c.writes.Add(1)
		default:
			cl.c.reads.Add(1)
		}
	}
}

func (cl *client) user() int64  { return 1 + cl.rng.Int64N(cl.maxUser) }
func (cl *client) order() int64 { return 1 + cl.rng.Int64N(cl.maxOrder) }

// drain reads every row of a query, so a read is complete (and comparable) only once consumed.
func drain(rows pgx.Rows) error {
	for rows.Next() {
		if _, err := rows.Values(); err != nil {
			rows.Close()
			return err
		}
	}
	return rows.Err()
}

func (cl *client) query(ctx context.Context, simple bool, sql string, args ...any) error {
	if simple {
		args = append([]any{pgx.QueryExecModeSimpleProtocol}, args...)
	}
	rows, err := cl.conn.Query(ctx, sql, args...)
	if err != nil {
		return err
	}
	return drain(rows)
}

func (cl *client) read(ctx context.Context) error {
	simple := cl.rng.IntN(4) == 0 // a quarter with the simple protocol, the rest prepared
	u, o := cl.user(), cl.order()
	switch cl.rng.IntN(6) {
	case 0: // by key
		return cl.query(ctx, simple, "select id, full_name, email, tier, active from users where id = $1", u)
	case 1: // a range, ordered
		return cl.query(ctx, simple, "select id, full_name, birthday from users where id between $1 and $2 order by id", u, u+25)
	case 2: // a join of users and orders
		return cl.query(ctx, simple, "select u.full_name, o.id, o.amount, o.status from users u join orders o on o.user_id = u.id where u.id = $1 order by o.id", u)
	case 3: // orders of a user, by amount
		return cl.query(ctx, simple, "select id, amount, currency, placed_on from orders where user_id = $1 and amount > $2", u, 10)
	case 4: // an aggregate over a join
		return cl.query(ctx, simple, "select u.tier, count(*), sum(o.amount) from orders o join users u on u.id = o.user_id where o.id between $1 and $2 group by u.tier", o, o+200)
	default: // name search
		return cl.query(ctx, simple, "select id, full_name from users where full_name like $1 and id > $2 order by id limit 10", "Ada%", u)
	}
}

var names = []string{"Ada Lovelace", "Grace Brewster Hopper", "Cher", "Alan  Turing", "Barbara Liskov", "Ken Thompson", "Radia Perlman"}

func (cl *client) name() string { return names[cl.rng.IntN(len(names))] }

func (cl *client) email() string {
	cl.seq++
	return fmt.Sprintf("w%d-%d-%d@example.com", cl.id, time.Now().UnixNano(), cl.seq)
}

func (cl *client) write(ctx context.Context) error {
	switch cl.rng.IntN(8) {
	case 0: // a new user: id, tier, profile, external_id, created_at from defaults
		var id int64
		err := cl.conn.QueryRow(ctx, "insert into users (full_name, email) values ($1, $2) returning id", cl.name(), cl.email()).Scan(&id)
		if err == nil {
			cl.mine = append(cl.mine, id)
		}
		return err
	case 1: // rename a user
		_, err := cl.conn.Exec(ctx, "update users set full_name = $1 where id = $2", cl.name(), cl.user())
		return err
	case 2: // upsert by email: an existing user's email, so it updates
		u := cl.user()
		_, err := cl.conn.Exec(ctx, `insert into users (full_name, email) values ($1, $2)
			on conflict (email) do update set full_name = excluded.full_name, active = not users.active`,
			cl.name(), fmt.Sprintf("user%d@example.com", u))
		return err
	case 3: // a new order, with defaults for currency, status, placed_on, items
		_, err := cl.conn.Exec(ctx, "insert into orders (user_id, amount, note) values ($1, $2, $3)",
			cl.user(), float64(cl.rng.IntN(100000))/100, "demo")
		return err
	case 4: // change an amount, returning the new value
		var amount float64
		err := cl.conn.QueryRow(ctx, "update orders set amount = amount + $1, status = 'paid' where id = $2 returning amount",
			0.5, cl.order()).Scan(&amount)
		if errors.Is(err, pgx.ErrNoRows) { // deleted by another client
			err = nil
		}
		return err
	case 5: // upsert an order by id (simple protocol)
		_, err := cl.conn.Exec(ctx, `insert into orders (id, user_id, amount) values ($1, $2, $3)
			on conflict (id) do update set amount = excluded.amount`, pgx.QueryExecModeSimpleProtocol,
			cl.order(), cl.user(), float64(cl.rng.IntN(10000))/100)
		return err
	case 6: // cancel orders in a transaction: an UPDATE and a DELETE ... RETURNING
		tx, err := cl.conn.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(context.Background()) //nolint:errcheck // after Commit it is a no-op
		o := cl.order()
		if _, err := tx.Exec(ctx, "update orders set status = 'cancelled', note = 'refund' where id = $1", o); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, "delete from orders where id = $1 returning id, amount", o+1)
		if err != nil {
			return err
		}
		if err := drain(rows); err != nil {
			return err
		}
		return tx.Commit(ctx)
	default: // delete a user this client created (and its orders), with RETURNING
		if len(cl.mine) == 0 {
			_, err := cl.conn.Exec(ctx, "update users set tags = array_append(tags, 'demo') where id = $1", cl.user())
			return err
		}
		id := cl.mine[len(cl.mine)-1]
		cl.mine = cl.mine[:len(cl.mine)-1]
		if _, err := cl.conn.Exec(ctx, "delete from orders where user_id = $1", id); err != nil {
			return err
		}
		var email string
		err := cl.conn.QueryRow(ctx, "delete from users where id = $1 returning email", id).Scan(&email)
		return err
	}
}
