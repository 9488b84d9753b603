package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pgcanary/pgcanary/backfill"
	"github.com/pgcanary/pgcanary/config"
)

func newBackfillCmd() *cobra.Command {
	var (
		configFile string
		opts       backfill.Options
		jsonOut    bool
		logEvery   time.Duration
	)
	cmd := &cobra.Command{
		Use:   "backfill --config FILE MIGRATION",
		Short: "Copy a migration's existing rows from the old shape into the new one",
		Long: `Copy the rows that exist in a migration's old relation into its new shape through the write map,
while pgcanary serve mirrors live writes. It connects directly to the database, through side_dsn
with the migration's database, and first runs the checks of "pgcanary check" on the migration.

The old relation is walked in key order (composite keys too), in chunks sized to take about
--chunk-time each. Every chunk is one short transaction that locks the old rows it copies, writes
their write-map image (a new table: INSERT ... ON CONFLICT (key) DO UPDATE; new columns of the same
table: UPDATE), and advances a checkpoint in pgcanary.backfill_checkpoint. A concurrent mirrored
write to the same rows waits for the chunk or the chunk waits for it, so no write is lost or
overwritten by a stale copy.

Interrupting it (Ctrl-C, SIGTERM) stops after the current chunk; run the same command again to
resume after the last chunk, or add --restart to start over (re-copying is harmless). Once a run
has finished, running it again does nothing.

A progress bar (rows, rows/s, ETA) is drawn when stderr is a terminal; otherwise progress is logged
every --log-every. --json prints a summary for machines on stdout:
  {"migration", "rows", "total_rows", "chunks", "seconds", "rows_per_second", "resumed_from",
   "last_key", "done", "null_key_in_old", ...}

Rows of the old relation with a NULL in a key column (a unique index on nullable columns allows
them) are named by no key, so they are skipped: their number is printed, logged as a warning and
reported as "null_key_in_old".

Exit status: 0 done, 1 failed, 2 bad usage or configuration (unknown migration, a migration that
does not pass check, an unreachable database), 130 interrupted (resumable).`,
		Example: `  # see the plan and the first chunk's SQL, change nothing
  pgcanary backfill --config pgcanary.yaml users-split-name --dry-run

  # copy gently: at most 5000 rows/s, pausing while a replica lags more than 10s
  pgcanary backfill --config pgcanary.yaml users-split-name --max-rate 5000 --max-lag 10s

  # start over from the first key, summary as JSON
  pgcanary backfill --config pgcanary.yaml orders-cents --restart --json`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return &exitError{code: 2, err: fmt.Errorf("want exactly one MIGRATION, got %d arguments", len(args))}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if configFile == "" {
				return &exitError{code: 2, err: errors.New("--config is required")}
			}
			if opts.MaxRate < 0 || opts.MaxLag < 0 || opts.TargetChunk <= 0 || opts.InitialChunk <= 0 {
				return &exitError{code: 2, err: errors.New("--max-rate and --max-lag must not be negative, --chunk-time and --chunk-rows must be positive")}
			}
			cfg, err := config.Load(configFile)
			if _, isReport := config.AsReport(err); err != nil && (!isReport || cfg == nil) {
				return &exitError{code: 2, err: err}
			}
			// A finding elsewhere in the file (another migration) does not stop this one: Run
			// re-checks the migration live and refuses it on its own errors only.
			opts.Config, opts.Migration = cfg, args[0]
			return runBackfill(cmd, configFile, opts, jsonOut, logEvery)
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "the configuration file (required)")
	f.DurationVar(&opts.TargetChunk, "chunk-time", backfill.DefaultTargetChunk, "target duration of one chunk; chunk sizes adapt to it")
	f.IntVar(&opts.InitialChunk, "chunk-rows", backfill.DefaultInitialChunk, "rows in the first chunk")
	f.Float64Var(&opts.MaxRate, "max-rate", 0, "copy at most this many rows per second (0: no limit)")
	f.DurationVar(&opts.MaxLag, "max-lag", 0, "pause while a replica's replay lag (pg_stat_replication) exceeds this (0: do not look)")
	f.DurationVar(&opts.LockTimeout, "lock-timeout", backfill.DefaultLockTimeout, "a chunk waiting this long for a row lock is retried smaller")
	f.BoolVar(&opts.DryRun, "dry-run", false, "print the plan and the first chunk's SQL; change nothing")
	f.BoolVar(&opts.Restart, "restart", false, "forget the checkpoint and start from the first key")
	f.BoolVar(&jsonOut, "json", false, "print the final summary as JSON on stdout")
	f.DurationVar(&logEvery, "log-every", 5*time.Second, "log progress this often when stderr is not a terminal")
	return cmd
}

func runBackfill(cmd *cobra.Command, configFile string, opts backfill.Options, jsonOut bool, logEvery time.Duration) error {
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	opts.Logger, opts.Out = logger, stdout

	// The first SIGINT/SIGTERM ends the run at the next chunk boundary; a second one exits at
	// once (the chunk under way is rolled back by the server, so that is safe too).
	ctx, cancel := context.WithCancel(cmd.Context())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	finished := make(chan struct{})
	defer func() { signal.Stop(sigs); close(finished) }()
	go func() {
		select {
		case <-sigs:
		case <-finished:
			return
		}
		fmt.Fprintln(stderr, "pgcanary: stopping after the current chunk (again to quit at once)")
		cancel()
		select {
		case <-sigs:
			os.Exit(130)
		case <-finished:
		}
	}()

	var bar *progressbar.ProgressBar
	if !opts.DryRun {
		opts.Progress = progressReporter(stderr, logger, &bar, jsonOut, logEvery)
	}
	res, err := backfill.Run(ctx, opts)
	if bar != nil {
		_ = bar.Finish()
		fmt.Fprintln(stderr)
	}
	if opts.DryRun && err == nil {
		return nil
	}
	if jsonOut {
		out := struct {
			backfill.Result
			Error string `json:"error,omitempty"`
		}{Result: res}
		if err != nil {
			out.Error = err.Error()
		}
		enc := json.NewEncoder(stdout)
		if encErr := enc.Encode(out); encErr != nil {
			return &exitError{code: 1, err: encErr}
		}
	}
	var unknown *backfill.UnknownMigrationError
	var cerr *backfill.ConfigError
	switch {
	case err == nil:
		if !jsonOut {
			printDone(stdout, res)
		}
		return nil
	case errors.As(err, &unknown), errors.Is(err, config.ErrUnreachable):
		return &exitError{code: 2, err: err} // like check and verify: nothing could start
	case errors.As(err, &cerr):
		printReport(cmd, cerr.Report)
		return &exitError{code: 2, err: fmt.Errorf("migration %s does not pass check: nothing was copied", cerr.Migration)}
	case errors.Is(err, backfill.ErrInterrupted):
		at := "before the first chunk"
		if res.LastKey != nil {
			at = fmt.Sprintf("at key (%s)", strings.Join(res.LastKey, ", "))
		}
		fmt.Fprintf(stderr, "pgcanary: backfill of %s interrupted after %d rows this run (%d in all), checkpoint saved %s.\n"+
			"Resume with the same command:  pgcanary backfill --config %s %s\n"+
			"(add --restart to start over from the first key)\n",
			res.Migration, res.Rows, res.TotalRows, at, configFile, res.Migration)
		return &exitError{code: 130, err: errors.New("interrupted")}
	default:
		return &exitError{code: 1, err: err}
	}
}

func printDone(w io.Writer, res backfill.Result) {
	if res.AlreadyDone {
		fmt.Fprintf(w, "%s: already backfilled (%d rows) by an earlier run; --restart copies again\n", res.Migration, res.TotalRows)
	} else {
		resumed := ""
		if res.Resumed != nil {
			resumed = fmt.Sprintf(", resumed after key (%s)", strings.Join(res.Resumed, ", "))
		}
		fmt.Fprintf(w, "%s: done, %d rows in %d chunks in %.1fs (%.0f rows/s)%s\n", res.Migration, res.Rows, res.Chunks, res.Seconds, res.Rate, resumed)
	}
	if res.NullKeyInOld > 0 {
		fmt.Fprintf(w, "%s: skipped %d rows of the old relation whose key has a NULL: no key names them, so they were not copied (see pgcanary check)\n",
			res.Migration, res.NullKeyInOld)
	}
}

// progressReporter draws a progress bar on a terminal, and otherwise logs a line every
// logEvery, so that a backfill running under a job runner still tells how far it is.
func progressReporter(stderr io.Writer, logger *slog.Logger, bar **progressbar.ProgressBar, jsonOut bool, logEvery time.Duration) func(backfill.Progress) {
	f, isFile := stderr.(*os.File)
	if !jsonOut && isFile && term.IsTerminal(int(f.Fd())) {
		return func(p backfill.Progress) {
			// The bar counts this run's rows against what is left, so its rate and ETA are
			// this run's, not inflated by rows an earlier run copied.
			left := max(p.Total-(p.Rows-p.RunRows), p.RunRows, 1)
			if *bar == nil {
				*bar = progressbar.NewOptions64(left,
					progressbar.OptionSetWriter(stderr),
					progressbar.OptionSetDescription(p.Migration),
					progressbar.OptionShowCount(),
					progressbar.OptionShowIts(),
					progressbar.OptionSetItsString("rows"),
					progressbar.OptionSetPredictTime(true),
					progressbar.OptionThrottle(100*time.Millisecond),
					progressbar.OptionFullWidth(),
					progressbar.OptionSetRenderBlankState(true))
			}
			b := *bar
			if left != b.GetMax64() {
				b.ChangeMax64(left)
			}
			if p.Paused {
				b.Describe(fmt.Sprintf("%s (paused: replica lag %s)", p.Migration, p.Lag.Round(time.Millisecond)))
			} else {
				b.Describe(p.Migration)
			}
			_ = b.Set64(p.RunRows)
		}
	}
	var last time.Time
	return func(p backfill.Progress) {
		if time.Since(last) < logEvery {
			return
		}
		last = time.Now()
		attrs := []any{"migration", p.Migration, "rows", p.Rows, "of_about", p.Total, "rows_per_second", int64(p.Rate), "chunk_rows", p.ChunkSize}
		if p.Rate > 0 && p.Total > p.Rows {
			attrs = append(attrs, "eta", time.Duration(float64(p.Total-p.Rows)/p.Rate*float64(time.Second)).Round(time.Second))
		}
		if p.Paused {
			attrs = append(attrs, "paused_for_lag", p.Lag)
		}
		logger.Info("backfill progress", attrs...)
	}
}
