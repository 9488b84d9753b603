package verify

import (
	"context"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/config"
)

// Options tune a verification.
type Options struct {
	RangeRows  int  // rows of old per compared range; default 10000
	LeafRows   int  // drill-down stops bisecting at this many rows and lists keys; default 1000
	Workers    int  // ranges compared at once, each on its own connection; default 1
	MaxSamples int  // differing keys kept in the result; default 20
	Repair     bool // re-sync the differing keys and compare them again
	// Logger receives a warning when rows with a NULL key are left out; discarded when nil.
	Logger *slog.Logger
}

func (o *Options) defaults() {
	if o.RangeRows <= 0 {
		o.RangeRows = 10000
	}
	if o.LeafRows <= 0 {
		o.LeafRows = 1000
	}
	if o.Workers <= 0 {
		o.Workers = 1
	}
	if o.MaxSamples <= 0 {
		o.MaxSamples = 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Kinds of difference.
const (
	MissingInNew = "missing_in_new" // the key is in old, not in new
	ExtraInNew   = "extra_in_new"   // the key is in new, not in old
	Differing    = "differing"      // in both, with different values in Columns
)

// KeyDiff is one differing key.
type KeyDiff struct {
	Kind    string            `json:"kind"`
	Key     map[string]string `json:"key"` // key column → value as text
	Columns []string          `json:"columns,omitempty"`
	values  []string          // the key values in key order
	keys    []string          // the key columns in key order
}

// String renders the key as "a=1, b=x" in key order.
func (d KeyDiff) String() string {
	parts := make([]string, len(d.keys))
	for i, k := range d.keys {
		parts[i] = k + "=" + d.values[i]
	}
	return strings.Join(parts, ", ")
}

// Result is the outcome of one verification.
type Result struct {
	Migration        string           `json:"migration"`
	Ranges           int              `json:"ranges"`
	RowsCompared     int64            `json:"rows_compared"`
	MissingInNew     int64            `json:"missing_in_new"`
	ExtraInNew       int64            `json:"extra_in_new"`
	Differing        int64            `json:"differing"`
	DifferingColumns map[string]int64 `json:"differing_columns"`
	SampleKeys       []KeyDiff        `json:"sample_keys"` // the first MaxSamples differences found
	Seconds          float64          `json:"seconds"`
	RowsPerSecond    float64          `json:"rows_per_second"`
	Repaired         int64            `json:"repaired"` // rows written by the repair
	// Remaining counts the differences left at the end: all of them without repair, those still
	// found when the repaired keys were compared again with it.
	Remaining     int64     `json:"remaining"`
	RemainingKeys []KeyDiff `json:"remaining_keys,omitempty"` // with repair: a sample of them
	// NullKeyInOld and NullKeyInNew count the rows of each side with a NULL in a key column
	// (possible with a unique index on nullable columns). No key names such a row, so it is
	// compared with nothing and cannot be repaired; while any exist the shapes are not proved
	// equal (see Equal). A same-table migration counts its rows once, in NullKeyInOld.
	NullKeyInOld int64 `json:"null_key_in_old"`
	NullKeyInNew int64 `json:"null_key_in_new"`
}

// Differences is the number of differing keys found (before any repair).
func (r *Result) Differences() int64 { return r.MissingInNew + r.ExtraInNew + r.Differing }

// NullKeys is the number of rows left out of the comparison for a NULL in their key, both sides.
func (r *Result) NullKeys() int64 { return r.NullKeyInOld + r.NullKeyInNew }

// Equal reports whether the run proved the shapes equal: no difference remains and no row was
// left out for a NULL in its key. `pgcanary verify` exits 1 unless it holds.
func (r *Result) Equal() bool { return r.Remaining == 0 && r.NullKeys() == 0 }

// UnknownMigrationError names a migration the configuration does not have.
type UnknownMigrationError struct {
	Name       string
	Configured []string
}

func (e *UnknownMigrationError) Error() string {
	if len(e.Configured) == 0 {
		return fmt.Sprintf("no migration %q: the configuration has no migrations", e.Name)
	}
	return fmt.Sprintf("no migration %q: the configuration has %s", e.Name, strings.Join(e.Configured, ", "))
}

// RefusedError is a migration that config.Check finds errors in: its relations, key or
// expressions cannot be trusted to build the comparison from.
type RefusedError struct {
	Migration string
	Report    config.Report // the error findings
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("migration %s does not pass check, not verifying it:\n%s", e.Migration, e.Report.Error())
}

// Verify checks migration name of cfg against its live database (as `pgcanary check` does; a
// migration with error findings is refused with a *RefusedError) and compares write-map(old)
// with new. An unreachable database comes back as an error wrapping config.ErrUnreachable.
func Verify(ctx context.Context, cfg *config.Config, name string, connect config.Connector, opts Options) (*Result, error) {
	idx := slices.IndexFunc(cfg.Migrations, func(m config.Migration) bool { return m.Name == name })
	if idx < 0 {
		e := &UnknownMigrationError{Name: name}
		for _, m := range cfg.Migrations {
			e.Configured = append(e.Configured, m.Name)
		}
		return nil, e
	}
	// Check only this migration: another migration's database being down or broken must not stop
	// this one. Blanking the others' database makes Check skip them; their lint findings are
	// dropped below. The slice keeps its indexes, so findings keep their file lines.
	only := *cfg
	only.Migrations = slices.Clone(cfg.Migrations)
	for i := range only.Migrations {
		if i != idx {
			only.Migrations[i].Database = ""
		}
	}
	report, catalog, err := config.Check(ctx, &only, connect)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", name, err)
	}
	var errs config.Report
	for _, f := range report {
		if f.Severity == config.Error && (f.Migration == name || f.Migration == "") {
			errs = append(errs, f)
		}
	}
	if len(errs) > 0 || catalog[name] == nil {
		return nil, &RefusedError{Migration: name, Report: errs}
	}
	m := &cfg.Migrations[idx]
	p, err := newPlan(m, catalog[name])
	if err != nil {
		return nil, err
	}
	return p.run(ctx, func(ctx context.Context) (*pgx.Conn, error) { return connect(ctx, m.Database) }, opts)
}

// run compares every range of the key space.
func (p *plan) run(ctx context.Context, connect func(context.Context) (*pgx.Conn, error), opts Options) (*Result, error) {
	opts.defaults()
	start := time.Now()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conns := make([]*pgx.Conn, opts.Workers)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.Background())
			}
		}
	}()
	for i := range conns {
		c, err := connect(ctx)
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", p.m.Name, err)
		}
		// Each range's statements are the same text with other bounds: a generic plan chosen once
		// for all of them could scan a whole table for every range.
		if _, err := c.Exec(ctx, "set plan_cache_mode = force_custom_plan"); err != nil {
			return nil, fmt.Errorf("verify %s: %w", p.m.Name, err)
		}
		conns[i] = c
	}
	nullOld, nullNew, err := p.countNullKeys(ctx, conns[0], opts.Logger)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", p.m.Name, err)
	}
	ranges, err := p.ranges(ctx, conns[0], opts.RangeRows)
	if err != nil {
		return nil, fmt.Errorf("verify %s: split the key space of %s: %w", p.m.Name, p.mc.Old.Qualified(), err)
	}
	acc := &accumulator{res: Result{Migration: p.m.Name, Ranges: len(ranges), DifferingColumns: map[string]int64{},
		NullKeyInOld: nullOld, NullKeyInNew: nullNew}, max: opts.MaxSamples}
	work := make(chan keyRange)
	errc := make(chan error, len(conns))
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() {
			for r := range work {
				if err := p.verifyRange(ctx, c, r, opts, acc); err != nil {
					errc <- err
					cancel()
					return
				}
			}
		})
	}
	for _, r := range ranges {
		select {
		case work <- r:
			continue
		case <-ctx.Done():
		}
		break
	}
	close(work)
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("verify %s: %w", p.m.Name, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("verify %s: %w", p.m.Name, err)
	}
	res := acc.res
	if !opts.Repair {
		res.Remaining = res.Differences()
	}
	res.Seconds = time.Since(start).Seconds()
	if res.Seconds > 0 {
		res.RowsPerSecond = float64(res.RowsCompared) / res.Seconds
	}
	return &res, nil
}

// countNullKeys counts, in one statement, the rows of each side that have a NULL in a key column
// (and so are in no range), and warns about them. Without a nullable key column it costs nothing.
func (p *plan) countNullKeys(ctx context.Context, conn *pgx.Conn, log *slog.Logger) (inOld, inNew int64, err error) {
	sql := p.nullKeySQL()
	if sql == "" {
		return 0, 0, nil
	}
	if err := conn.QueryRow(ctx, sql).Scan(&inOld, &inNew); err != nil {
		return 0, 0, fmt.Errorf("count rows with a NULL key: %w", err)
	}
	for _, s := range []struct {
		n    int64
		rel  *config.Relation
		cols []string
	}{{inOld, p.mc.Old, p.oldNull}, {inNew, p.mc.New, p.newNull}} {
		if s.n > 0 {
			log.Warn("verify leaves out rows whose key has a NULL: they cannot be compared, so the shapes are not proved equal",
				"migration", p.m.Name, "relation", s.rel.Qualified(), "nullable_key_columns", strings.Join(s.cols, ","), "rows", s.n)
		}
	}
	return inOld, inNew, nil
}

// ranges walks old's key index, one short statement per boundary, so that no snapshot is held
// for the whole walk. Rows written meanwhile only make a range larger or smaller.
func (p *plan) ranges(ctx context.Context, conn *pgx.Conn, n int) ([]keyRange, error) {
	var out []keyRange
	var lo []string
	for {
		sql, args := p.boundarySQL(lo, n)
		rows, err := conn.Query(ctx, sql, args...)
		if err != nil {
			return nil, err
		}
		keys, err := scanKeys(rows, len(p.keys))
		if err != nil {
			return nil, err
		}
		if len(keys) == 0 {
			return append(out, keyRange{lo: lo}), nil // the last range is open above
		}
		out = append(out, keyRange{lo: lo, hi: keys[0]})
		lo = keys[0]
	}
}

// accumulator merges the workers' findings.
type accumulator struct {
	mu  sync.Mutex
	res Result
	max int
}

func (a *accumulator) add(rows int64, found, remaining []KeyDiff, repaired int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.res.RowsCompared += rows
	a.res.Repaired += repaired
	for _, d := range found {
		switch d.Kind {
		case MissingInNew:
			a.res.MissingInNew++
		case ExtraInNew:
			a.res.ExtraInNew++
		default:
			a.res.Differing++
			for _, c := range d.Columns {
				a.res.DifferingColumns[c]++
			}
		}
		if len(a.res.SampleKeys) < a.max {
			a.res.SampleKeys = append(a.res.SampleKeys, d)
		}
	}
	a.res.Remaining += int64(len(remaining))
	for _, d := range remaining {
		if len(a.res.RemainingKeys) < a.max {
			a.res.RemainingKeys = append(a.res.RemainingKeys, d)
		}
	}
}

// aggregate is one range's summary on both sides.
type aggregate struct {
	nOld, nNew int64
	hOld, hNew string // hash sums as numeric text (new table)
	differing  int64  // rows whose new columns differ (same table)
}

func (g aggregate) equal() bool { return g.nOld == g.nNew && g.hOld == g.hNew && g.differing == 0 }

// verifyRange compares r in one snapshot, drills down when it differs, and repairs on request.
func (p *plan) verifyRange(ctx context.Context, conn *pgx.Conn, r keyRange, opts Options, acc *accumulator) error {
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read only: nothing to undo
	agg, err := p.aggregate(ctx, tx, p.rangeFilter(r))
	if err != nil {
		return err
	}
	var diffs []KeyDiff
	if !agg.equal() {
		if p.same {
			diffs, err = p.diffs(ctx, tx, p.rangeFilter(r))
		} else {
			diffs, err = p.drill(ctx, tx, r, agg, int64(opts.LeafRows))
		}
		if err != nil {
			return err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	rows := agg.nOld
	for _, d := range diffs {
		if d.Kind == ExtraInNew {
			rows++
		}
	}
	var remaining []KeyDiff
	var repaired int64
	if opts.Repair && len(diffs) > 0 {
		if repaired, err = p.repair(ctx, conn, diffs); err != nil {
			return err
		}
		if remaining, err = p.recheck(ctx, conn, diffs); err != nil {
			return err
		}
	}
	acc.add(rows, diffs, remaining, repaired)
	return nil
}

// recheck compares exactly the keys of diffs again, in a new snapshot.
func (p *plan) recheck(ctx context.Context, conn *pgx.Conn, diffs []KeyDiff) ([]KeyDiff, error) {
	keys := make([][]string, len(diffs))
	for i, d := range diffs {
		keys[i] = d.values
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("re-verify: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read only
	out, err := p.diffs(ctx, tx, p.keySetFilter(keys))
	if err != nil {
		return nil, fmt.Errorf("re-verify: %w", err)
	}
	return out, tx.Commit(ctx)
}

func (p *plan) aggregate(ctx context.Context, tx pgx.Tx, f filter) (aggregate, error) {
	sql, args := p.aggregateSQL(f)
	var g aggregate
	var err error
	if p.same {
		err = tx.QueryRow(ctx, sql, args...).Scan(&g.nOld, &g.differing)
		g.nNew = g.nOld
	} else {
		err = tx.QueryRow(ctx, sql, args...).Scan(&g.nOld, &g.hOld, &g.nNew, &g.hNew)
	}
	if err != nil {
		return g, fmt.Errorf("compare range: %w", err)
	}
	return g, nil
}

// drill bisects a differing range until its parts are small enough to list, comparing only the
// parts whose aggregates differ. agg is r's aggregate; the second half's is agg minus the first's
// (counts and hash sums add up), so each split costs one aggregate over half of the rows.
func (p *plan) drill(ctx context.Context, tx pgx.Tx, r keyRange, agg aggregate, leaf int64) ([]KeyDiff, error) {
	n, s := agg.nOld, oldSide
	if agg.nNew > n {
		n, s = agg.nNew, newSide
	}
	if n <= leaf {
		return p.diffs(ctx, tx, p.rangeFilter(r))
	}
	sql, args := p.medianSQL(s, r, n/2-1)
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("split range: %w", err)
	}
	mids, err := scanKeys(rows, len(p.keys))
	if err != nil {
		return nil, fmt.Errorf("split range: %w", err)
	}
	if len(mids) == 0 { // cannot happen in one snapshot; list the range rather than loop
		return p.diffs(ctx, tx, p.rangeFilter(r))
	}
	left, right := keyRange{lo: r.lo, hi: mids[0]}, keyRange{lo: mids[0], hi: r.hi}
	la, err := p.aggregate(ctx, tx, p.rangeFilter(left))
	if err != nil {
		return nil, err
	}
	ra, err := subtract(agg, la)
	if err != nil {
		return nil, err
	}
	var out []KeyDiff
	for _, part := range []struct {
		r keyRange
		a aggregate
	}{{left, la}, {right, ra}} {
		if part.a.equal() {
			continue
		}
		d, err := p.drill(ctx, tx, part.r, part.a, leaf)
		if err != nil {
			return nil, err
		}
		out = append(out, d...)
	}
	return out, nil
}

// subtract is whole minus part, for the half of a range that was not measured.
func subtract(whole, part aggregate) (aggregate, error) {
	out := aggregate{nOld: whole.nOld - part.nOld, nNew: whole.nNew - part.nNew}
	var err error
	if out.hOld, err = subNumeric(whole.hOld, part.hOld); err != nil {
		return out, err
	}
	out.hNew, err = subNumeric(whole.hNew, part.hNew)
	return out, err
}

func (p *plan) diffs(ctx context.Context, tx pgx.Tx, f filter) ([]KeyDiff, error) {
	sql, args := p.diffSQL(f)
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("list differing keys: %w", err)
	}
	defer rows.Close()
	names := p.colNames()
	var out []KeyDiff
	for rows.Next() {
		vals := make([]string, len(p.keys))
		var inOld, inNew bool
		var flags []bool
		dst := make([]any, 0, len(vals)+3)
		for i := range vals {
			dst = append(dst, &vals[i])
		}
		dst = append(dst, &inOld, &inNew, &flags)
		if err := rows.Scan(dst...); err != nil {
			return nil, fmt.Errorf("list differing keys: %w", err)
		}
		d := KeyDiff{Kind: Differing, Key: map[string]string{}, values: vals, keys: p.keys}
		for i, k := range p.keys {
			d.Key[k] = vals[i]
		}
		switch {
		case !inNew:
			d.Kind = MissingInNew
		case !inOld:
			d.Kind = ExtraInNew
		default:
			for i, differs := range flags {
				if differs {
					d.Columns = append(d.Columns, names[i])
				}
			}
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list differing keys: %w", err)
	}
	return out, nil
}

// subNumeric subtracts two hash sums, integers as numeric text that outgrow int64.
func subNumeric(a, b string) (string, error) {
	x, okA := new(big.Int).SetString(a, 10)
	y, okB := new(big.Int).SetString(b, 10)
	if !okA || !okB {
		return "", fmt.Errorf("hash sums %q and %q are not integers", a, b)
	}
	return x.Sub(x, y).String(), nil
}
