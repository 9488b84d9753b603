package backfill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcanary/pgcanary/config"
)

// Defaults of Options.
const (
	DefaultTargetChunk  = 100 * time.Millisecond
	DefaultInitialChunk = 1000
	DefaultMinChunk     = 10
	DefaultMaxChunk     = 100000
	DefaultLockTimeout  = 2 * time.Second
	DefaultLagPoll      = time.Second
	maxRetries          = 10
)

// Options configures Run.
type Options struct {
	Config    *config.Config
	Migration string // the migration's name
	// Connect opens a connection to a database; nil connects through Config.SideDSN with the
	// migration's database (config.DSNConnector).
	Connect config.Connector

	TargetChunk  time.Duration // how long a chunk should take; DefaultTargetChunk when 0
	InitialChunk int           // rows in the first chunk; DefaultInitialChunk when 0
	MinChunk     int           // adaptive bounds; DefaultMinChunk and DefaultMaxChunk when 0
	MaxChunk     int
	MaxRate      float64       // rows per second at most; 0 = unlimited
	MaxLag       time.Duration // pause while a replica's replay lag exceeds it; 0 = never look
	LagPoll      time.Duration // how often to look again while paused; DefaultLagPoll when 0
	// LockTimeout bounds how long a chunk waits for a row lock held by a writer; the chunk is then
	// retried smaller. DefaultLockTimeout when 0; negative waits forever.
	LockTimeout time.Duration

	DryRun  bool      // print the plan and the first chunk's SQL to Out, change nothing
	Restart bool      // forget the checkpoint and start from the first key
	Out     io.Writer // the dry-run plan; io.Discard when nil

	// Progress, when set, is called after every chunk and while paused for lag.
	Progress func(Progress)
	Logger   *slog.Logger // retries and pauses; discarded when nil

	// Test hooks: the replication lag, and a sleep that can be counted.
	lag   func(ctx context.Context, conn *pgx.Conn) (time.Duration, error)
	sleep func(ctx context.Context, d time.Duration) error
}

// Progress is the state of a run, reported after each chunk.
type Progress struct {
	Migration string
	Rows      int64   // rows copied so far, including those of earlier runs (the checkpoint's count)
	RunRows   int64   // rows copied by this run
	Total     int64   // estimated rows in the old relation (pg_class.reltuples, or count(*) when small)
	Chunks    int64   // chunks committed by this run
	ChunkSize int     // rows asked of the next chunk
	Rate      float64 // rows per second of this run
	LastKey   []string
	// Paused is set while waiting for replication lag to drop below MaxLag; Lag is the lag seen.
	Paused bool
	Lag    time.Duration
}

// Result summarises a run.
type Result struct {
	Migration string   `json:"migration"`
	Rows      int64    `json:"rows"`       // rows copied by this run
	TotalRows int64    `json:"total_rows"` // rows copied by every run so far
	Chunks    int64    `json:"chunks"`     // chunks committed by this run
	Seconds   float64  `json:"seconds"`
	Rate      float64  `json:"rows_per_second"`
	Resumed   []string `json:"resumed_from"` // the checkpoint key this run started after; null from the start
	LastKey   []string `json:"last_key"`
	Done      bool     `json:"done"`
	// NullKeyInOld counts the rows of the old relation with a NULL in a key column when the run
	// started (possible with a unique index on nullable columns): no key names them, so they
	// are skipped, not copied. Counted by one query, and only when a key column is nullable.
	NullKeyInOld int64 `json:"null_key_in_old"`
	// AlreadyDone: the checkpoint said a previous run finished, so nothing was copied.
	AlreadyDone bool `json:"already_done,omitempty"`
	Retries     int  `json:"retries,omitempty"`     // chunks retried after a deadlock or lock timeout
	Throttled   int  `json:"throttled,omitempty"`   // sleeps to stay under MaxRate
	LagPauses   int  `json:"lag_pauses,omitempty"`  // waits for replication lag
	DryRun      bool `json:"dry_run,omitempty"`     // nothing was changed
	Interrupted bool `json:"interrupted,omitempty"` // stopped at a chunk boundary by ctx
}

// ErrInterrupted is returned (wrapping the context's error) when ctx ends the run: it stopped at
// a chunk boundary, and running it again resumes after the last chunk.
var ErrInterrupted = errors.New("backfill interrupted")

// UnknownMigrationError names a migration the configuration does not have.
type UnknownMigrationError struct {
	Name  string
	File  string
	Known []string
}

func (e *UnknownMigrationError) Error() string {
	known := "none are configured"
	if len(e.Known) > 0 {
		known = "configured: " + strings.Join(e.Known, ", ")
	}
	where := ""
	if e.File != "" {
		where = " in " + e.File
	}
	return fmt.Sprintf("no migration %q%s (%s)", e.Name, where, known)
}

// ConfigError is a migration that cannot be backfilled as configured: the findings of
// config.Check that concern it (a missing relation, a key without a unique index, ...).
type ConfigError struct {
	Migration string
	Report    config.Report
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("migration %s cannot be backfilled:\n%s", e.Migration, e.Report.Error())
}

func (o *Options) defaults() {
	if o.TargetChunk <= 0 {
		o.TargetChunk = DefaultTargetChunk
	}
	if o.MinChunk <= 0 {
		o.MinChunk = DefaultMinChunk
	}
	if o.MaxChunk <= 0 {
		o.MaxChunk = DefaultMaxChunk
	}
	if o.MaxChunk < o.MinChunk {
		o.MaxChunk = o.MinChunk
	}
	if o.InitialChunk <= 0 {
		o.InitialChunk = DefaultInitialChunk
	}
	if o.LagPoll <= 0 {
		o.LagPoll = DefaultLagPoll
	}
	if o.LockTimeout == 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Connect == nil && o.Config != nil {
		o.Connect = config.DSNConnector(o.Config.SideDSN)
	}
	if o.lag == nil {
		o.lag = replicationLag
	}
	if o.sleep == nil {
		o.sleep = sleepCtx
	}
}

// Run backfills one migration. On ctx's end it stops after the chunk under way and returns the
// result so far with an error wrapping ErrInterrupted.
func Run(ctx context.Context, opts Options) (Result, error) {
	opts.defaults()
	res := Result{Migration: opts.Migration, DryRun: opts.DryRun}
	m, err := lookup(opts.Config, opts.Migration)
	if err != nil {
		return res, err
	}
	mc, err := checkMigration(ctx, opts, m)
	if err != nil {
		return res, err
	}
	p, err := newPlan(m, mc)
	if err != nil {
		return res, &ConfigError{Migration: m.Name, Report: config.Report{{Severity: config.Error, File: opts.Config.Path(), Migration: m.Name, Message: err.Error()}}}
	}
	conn, err := opts.Connect(ctx, m.Database)
	if err != nil {
		return res, fmt.Errorf("backfill %s: %w", m.Name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	r := &runner{opts: opts, plan: p, conn: conn, res: &res}
	if err := r.prepare(ctx); err != nil {
		return res, fmt.Errorf("backfill %s: %w", m.Name, err)
	}
	if opts.DryRun {
		return res, r.dryRun()
	}
	return res, r.run(ctx)
}

// lookup finds the named migration.
func lookup(cfg *config.Config, name string) (*config.Migration, error) {
	if cfg == nil {
		return nil, errors.New("backfill: no configuration")
	}
	var known []string
	for i := range cfg.Migrations {
		if cfg.Migrations[i].Name == name {
			return &cfg.Migrations[i], nil
		}
		known = append(known, cfg.Migrations[i].Name)
	}
	return nil, &UnknownMigrationError{Name: name, File: cfg.Path(), Known: known}
}

// checkMigration runs config.Check (the same checks as `pgcanary check`) for the migration's
// database only, and refuses it with its error findings: a backfill through a broken write map
// or without a unique key would copy wrong rows or fail halfway.
func checkMigration(ctx context.Context, opts Options, m *config.Migration) (*config.MigrationCatalog, error) {
	if opts.Config.SideDSN == "" && opts.Connect == nil {
		return nil, &ConfigError{Migration: m.Name, Report: config.Report{{Severity: config.Error, File: opts.Config.Path(),
			Message: "side_dsn is required: backfill connects to the database through it"}}}
	}
	// Other migrations' databases are not this run's business (they may not even be reachable
	// from here): they are answered "no such database" and their findings are dropped below.
	only := func(ctx context.Context, database string) (*pgx.Conn, error) {
		if database != m.Database {
			return nil, &pgconn.PgError{Code: "3D000", Message: "not checked by backfill"}
		}
		return opts.Connect(ctx, database)
	}
	report, catalog, err := config.Check(ctx, opts.Config, only)
	if err != nil {
		return nil, fmt.Errorf("backfill %s: %w", m.Name, err)
	}
	var mine config.Report
	for _, f := range report {
		if f.Severity == config.Error && f.Migration == m.Name {
			mine = append(mine, f)
		}
	}
	if len(mine) > 0 {
		return nil, &ConfigError{Migration: m.Name, Report: mine}
	}
	mc := catalog[m.Name]
	if mc == nil {
		return nil, &ConfigError{Migration: m.Name, Report: config.Report{{Severity: config.Error, File: opts.Config.Path(), Migration: m.Name,
			Message: "its relations could not be read from database " + m.Database}}}
	}
	return mc, nil
}

// replicationLag is the largest replay lag of the primary's replicas; none means no lag. Replicas
// that are idle report a null lag, which is no lag either.
func replicationLag(ctx context.Context, conn *pgx.Conn) (time.Duration, error) {
	var secs float64
	err := conn.QueryRow(ctx, `select coalesce(max(extract(epoch from replay_lag)), 0)::float8 from pg_stat_replication`).Scan(&secs)
	if err != nil {
		return 0, fmt.Errorf("read replication lag: %w", err)
	}
	return time.Duration(secs * float64(time.Second)), nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
