package backfill

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// runner walks one migration's key space.
type runner struct {
	opts Options
	plan *plan
	conn *pgx.Conn
	res  *Result

	checkpointed bool     // a checkpoint table exists (always after prepare, except in a dry run)
	lastKey      []string // where the walk is; nil before the first row
	upper        []string // the highest key when the run started, where it stops; nil: empty
	priorRows    int64    // the checkpoint's row count when this run started
	done         bool     // the checkpoint says a previous run finished
	total        int64    // estimated rows of the old relation
}

// prepare names the session, makes the checkpoint table (not in a dry run: that changes
// nothing), reads or resets the checkpoint, and estimates the row count.
func (r *runner) prepare(ctx context.Context) error {
	if _, err := r.conn.Exec(ctx, "set application_name = 'pgcanary-backfill'"); err != nil {
		return fmt.Errorf("set application_name: %w", err)
	}
	if r.opts.LockTimeout > 0 {
		if _, err := r.conn.Exec(ctx, fmt.Sprintf("set lock_timeout = %d", r.opts.LockTimeout.Milliseconds())); err != nil {
			return fmt.Errorf("set lock_timeout: %w", err)
		}
	}
	if r.opts.DryRun {
		var exists bool
		if err := r.conn.QueryRow(ctx, "select to_regclass('pgcanary.backfill_checkpoint') is not null").Scan(&exists); err != nil {
			return fmt.Errorf("look for the checkpoint table: %w", err)
		}
		r.checkpointed = exists
	} else {
		// Simple protocol: two statements in one string.
		if _, err := r.conn.Exec(ctx, checkpointDDL, pgx.QueryExecModeSimpleProtocol); err != nil {
			return fmt.Errorf("create pgcanary.backfill_checkpoint (the role needs CREATE on the database, or create it once as an owner): %w", err)
		}
		r.checkpointed = true
	}
	if r.checkpointed && r.opts.Restart && !r.opts.DryRun {
		if _, err := r.conn.Exec(ctx, "delete from pgcanary.backfill_checkpoint where migration = $1", r.plan.migration); err != nil {
			return fmt.Errorf("reset checkpoint: %w", err)
		}
	}
	if r.checkpointed && !r.opts.Restart {
		var keyCols []string
		err := r.conn.QueryRow(ctx, "select key_columns, last_key, rows, done from pgcanary.backfill_checkpoint where migration = $1",
			r.plan.migration).Scan(&keyCols, &r.lastKey, &r.priorRows, &r.done)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return fmt.Errorf("read checkpoint: %w", err)
		case strings.Join(keyCols, ",") != strings.Join(r.plan.keys, ","):
			return fmt.Errorf("the checkpoint walked key (%s), the migration's key is now (%s): run again with --restart to start over",
				strings.Join(keyCols, ", "), strings.Join(r.plan.keys, ", "))
		}
	}
	r.res.Resumed = r.lastKey
	r.res.LastKey = r.lastKey
	r.res.TotalRows = r.priorRows
	err := r.conn.QueryRow(ctx, r.plan.upperSQL()).Scan(&r.upper)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("read the highest key of %s: %w", r.plan.old.Qualified(), err)
	}
	if err := r.countNullKeys(ctx); err != nil {
		return err
	}
	if err := r.estimate(ctx); err != nil {
		return err
	}
	r.total = max(0, r.total-r.res.NullKeyInOld) // the walk skips them
	return nil
}

// countNullKeys counts the rows the walk skips because their key has a NULL, once per run, and
// warns about them: they are not copied, and nothing else would tell.
func (r *runner) countNullKeys(ctx context.Context) error {
	sql := r.plan.nullKeySQL()
	if sql == "" {
		return nil // every key column is NOT NULL
	}
	if err := r.conn.QueryRow(ctx, sql).Scan(&r.res.NullKeyInOld); err != nil {
		return fmt.Errorf("count rows of %s with a NULL key: %w", r.plan.old.Qualified(), err)
	}
	if n := r.res.NullKeyInOld; n > 0 {
		r.opts.Logger.Warn("backfill skips rows whose key has a NULL: they are not copied", "migration", r.plan.migration,
			"relation", r.plan.old.Qualified(), "nullable_key_columns", strings.Join(r.plan.nullable, ","), "rows", n)
	}
	return nil
}

// estimate reads the planner's row count of the old relation, counting when it is small or was
// never analyzed: a progress bar's ETA only needs the order of magnitude.
func (r *runner) estimate(ctx context.Context) error {
	var tuples float64
	if err := r.conn.QueryRow(ctx, "select reltuples::float8 from pg_class where oid = $1", r.plan.old.OID).Scan(&tuples); err != nil {
		return fmt.Errorf("estimate rows of %s: %w", r.plan.old.Qualified(), err)
	}
	if tuples >= 100000 {
		r.total = int64(tuples)
		return nil
	}
	if err := r.conn.QueryRow(ctx, "select count(*) from "+r.plan.old.QuotedName()).Scan(&r.total); err != nil {
		return fmt.Errorf("count rows of %s: %w", r.plan.old.Qualified(), err)
	}
	return nil
}

// dryRun prints what a run would do and the first chunk's SQL with its parameters.
func (r *runner) dryRun() error {
	p, o, w := r.plan, r.opts, r.opts.Out
	strategy := fmt.Sprintf("new table: upsert into %s, old rows locked FOR SHARE", p.new.Qualified())
	if p.sameTable {
		strategy = fmt.Sprintf("same table: UPDATE of the new columns of %s, rows locked FOR NO KEY UPDATE", p.old.Qualified())
	}
	fmt.Fprintf(w, "migration:   %s (database %s)\n", p.migration, p.database)
	fmt.Fprintf(w, "strategy:    %s\n", strategy)
	fmt.Fprintf(w, "from:        %s (about %d rows)\n", p.old.Qualified(), r.total)
	fmt.Fprintf(w, "key:         (%s), walked in this order\n", strings.Join(p.keys, ", "))
	if r.res.NullKeyInOld > 0 {
		fmt.Fprintf(w, "skipped:     %d rows whose key has a NULL (in %s): no key names them, so they are not copied\n",
			r.res.NullKeyInOld, strings.Join(p.nullable, ", "))
	}
	switch {
	case r.upper == nil && r.res.NullKeyInOld > 0:
		fmt.Fprintf(w, "up to:       nothing: every row of %s has a NULL in its key\n", p.old.Qualified())
	case r.upper == nil:
		fmt.Fprintf(w, "up to:       nothing: %s is empty\n", p.old.Qualified())
	default:
		fmt.Fprintf(w, "up to:       key (%s), the highest now; rows inserted later are mirrored by the proxy\n", strings.Join(r.upper, ", "))
	}
	fmt.Fprintf(w, "write map:\n")
	for _, c := range p.cols {
		if p.sameTable && c.Key {
			continue
		}
		fmt.Fprintf(w, "  %-12s <- %s\n", c.Name, c.Expr)
	}
	fmt.Fprintf(w, "chunks:      %d rows first, resized to take about %s (%d..%d rows)\n", r.firstLimit(), o.TargetChunk, o.MinChunk, o.MaxChunk)
	if o.MaxRate > 0 {
		fmt.Fprintf(w, "max rate:    %.0f rows/s\n", o.MaxRate)
	}
	if o.MaxLag > 0 {
		fmt.Fprintf(w, "max lag:     %s (pauses while a replica's replay_lag exceeds it)\n", o.MaxLag)
	}
	switch {
	case o.Restart:
		fmt.Fprintf(w, "checkpoint:  ignored (--restart): starts from the first key\n")
	case r.done:
		fmt.Fprintf(w, "checkpoint:  a previous run finished (%d rows): nothing to do; --restart copies again\n", r.priorRows)
	case r.lastKey != nil:
		fmt.Fprintf(w, "checkpoint:  resumes after key (%s), %d rows already copied\n", strings.Join(r.lastKey, ", "), r.priorRows)
	default:
		fmt.Fprintf(w, "checkpoint:  none: starts from the first key\n")
	}
	if !r.checkpointed {
		fmt.Fprintf(w, "             (a run creates schema pgcanary and table pgcanary.backfill_checkpoint)\n")
	}
	fmt.Fprintf(w, "\nfirst chunk, one statement (its own transaction):\n%s;\n", p.sql(r.lastKey))
	args := p.args(r.lastKey, r.upper, r.firstLimit())
	for i, a := range args {
		fmt.Fprintf(w, "-- $%d = %v\n", i+1, a)
	}
	return nil
}

func (r *runner) firstLimit() int { return r.capLimit(r.opts.InitialChunk) }

// capLimit bounds a chunk size; under MaxRate a chunk holds at most what the rate allows in one
// target duration, so that throttling is smooth sleeps rather than bursts then long stalls.
func (r *runner) capLimit(n int) int {
	o := r.opts
	if o.MaxRate > 0 {
		n = min(n, int(math.Ceil(o.MaxRate*o.TargetChunk.Seconds())))
	}
	return max(o.MinChunk, min(o.MaxChunk, n))
}

// run copies chunk after chunk until the old relation is exhausted or ctx ends.
func (r *runner) run(ctx context.Context) error {
	o, res := r.opts, r.res
	if r.done {
		res.Done, res.AlreadyDone = true, true
		return nil
	}
	start := time.Now()
	var paused time.Duration // time spent waiting for lag, not held against the rate
	limit := r.firstLimit()
	lastLagCheck := time.Time{}
	streak := 0 // consecutive retries: a chunk that keeps failing is an error, not contention
	defer func() {
		res.Seconds = time.Since(start).Seconds()
		if res.Seconds > 0 {
			res.Rate = float64(res.Rows) / res.Seconds
		}
	}()
	for {
		if ctx.Err() != nil {
			return r.interrupted(ctx)
		}
		if o.MaxLag > 0 && time.Since(lastLagCheck) >= o.LagPoll {
			waited, err := r.waitForLag(ctx, limit)
			paused += waited
			if err != nil {
				if ctx.Err() != nil {
					return r.interrupted(ctx)
				}
				return err
			}
			lastLagCheck = time.Now()
		}
		// The chunk runs to its end even when ctx ends meanwhile: stopping at a chunk boundary
		// is the promise, and lock_timeout keeps a chunk short.
		n, took, err := r.chunk(context.WithoutCancel(ctx), limit)
		if err != nil {
			if retryable(err) && streak < maxRetries {
				streak++
				res.Retries++
				limit = max(o.MinChunk, limit/2)
				o.Logger.Warn("backfill chunk retried", "migration", r.plan.migration, "error", err, "next_chunk", limit)
				if err := o.sleep(ctx, time.Duration(streak)*20*time.Millisecond); err != nil {
					return r.interrupted(ctx)
				}
				continue
			}
			return fmt.Errorf("backfill %s: chunk after key (%s): %w", r.plan.migration, strings.Join(r.lastKey, ", "), err)
		}
		streak = 0
		if n == 0 {
			if _, err := r.conn.Exec(context.WithoutCancel(ctx), `
				insert into pgcanary.backfill_checkpoint as c (migration, key_columns, last_key, done)
				values ($1, $2, $3, true)
				on conflict (migration) do update set done = true, updated_at = now()`, r.plan.migration, r.plan.keys, r.lastKey); err != nil {
				return fmt.Errorf("backfill %s: mark done: %w", r.plan.migration, err)
			}
			res.Done = true
			r.report(start, paused, limit)
			return nil
		}
		res.Chunks++
		res.Rows += n
		res.TotalRows += n
		res.LastKey = r.lastKey
		limit = r.capLimit(resize(limit, n, took, o.TargetChunk))
		r.report(start, paused, limit)
		if o.MaxRate > 0 {
			// Sleep until this run's rows fit under the rate since it started.
			ahead := time.Duration(float64(res.Rows)/o.MaxRate*float64(time.Second)) - (time.Since(start) - paused)
			if ahead > 0 {
				res.Throttled++
				if err := o.sleep(ctx, ahead); err != nil {
					return r.interrupted(ctx)
				}
			}
		}
	}
}

// chunk runs one chunk statement and advances the walk.
func (r *runner) chunk(ctx context.Context, limit int) (int64, time.Duration, error) {
	var n int64
	var last []string
	t0 := time.Now()
	err := r.conn.QueryRow(ctx, r.plan.sql(r.lastKey), r.plan.args(r.lastKey, r.upper, limit)...).Scan(&n, &last)
	took := time.Since(t0)
	if err != nil {
		return 0, took, err
	}
	if n > 0 {
		r.lastKey = last
	}
	return n, took, nil
}

// resize scales the chunk size by how far the last chunk was from the target duration, at most
// halving or doubling it at once so that one slow or fast chunk (a lock wait, a cached page run)
// does not swing it. A short chunk (the end of the table) says nothing about speed.
func resize(limit int, rows int64, took, target time.Duration) int {
	if rows < int64(limit) || took <= 0 {
		return limit
	}
	f := float64(target) / float64(took)
	f = max(0.5, min(2, f))
	return int(math.Round(float64(limit) * f))
}

// retryable: the database's answers to contention with concurrent writers, after which the chunk
// (rolled back as a whole, checkpoint included) can simply run again.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case "40P01", "40001", "55P03": // deadlock_detected, serialization_failure, lock_not_available
		return true
	}
	return false
}

// waitForLag holds the run while a replica lags more than MaxLag, and returns how long it waited.
func (r *runner) waitForLag(ctx context.Context, limit int) (time.Duration, error) {
	var waited time.Duration
	for {
		lag, err := r.opts.lag(ctx, r.conn)
		if err != nil {
			return waited, fmt.Errorf("backfill %s: %w", r.plan.migration, err)
		}
		if lag <= r.opts.MaxLag {
			return waited, nil
		}
		r.res.LagPauses++
		r.opts.Logger.Info("backfill paused: replication lag", "migration", r.plan.migration, "lag", lag, "max_lag", r.opts.MaxLag)
		if r.opts.Progress != nil {
			pr := r.progress(limit)
			pr.Paused, pr.Lag = true, lag
			r.opts.Progress(pr)
		}
		t0 := time.Now()
		if err := r.opts.sleep(ctx, r.opts.LagPoll); err != nil {
			return waited + time.Since(t0), err
		}
		waited += time.Since(t0)
	}
}

func (r *runner) interrupted(ctx context.Context) error {
	r.res.Interrupted = true
	return fmt.Errorf("%w after %d rows in %d chunks: %w", ErrInterrupted, r.res.Rows, r.res.Chunks, context.Cause(ctx))
}

func (r *runner) progress(limit int) Progress {
	return Progress{Migration: r.plan.migration, Rows: r.res.TotalRows, RunRows: r.res.Rows, Total: max(r.total, r.res.TotalRows),
		Chunks: r.res.Chunks, ChunkSize: limit, LastKey: r.lastKey}
}

func (r *runner) report(start time.Time, paused time.Duration, limit int) {
	if r.opts.Progress == nil {
		return
	}
	p := r.progress(limit)
	if d := time.Since(start) - paused; d > 0 {
		p.Rate = float64(r.res.Rows) / d.Seconds()
	}
	r.opts.Progress(p)
}
