package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/verify"
)

func newVerifyCmd() *cobra.Command {
	var (
		configFile string
		opts       verify.Options
		asJSON     bool
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "verify --config FILE MIGRATION",
		Short: "Compare a migration's new shape with the write map of its old shape; repair on request",
		Long: `Compare, row by row, what the new shape holds with what the write map makes of the old shape,
through side_dsn connected to the migration's database.

The migration is first checked as "pgcanary check" does; one with errors (a relation missing, a key
without a unique index, an expression that does not type-check) is refused with check's findings.
The old table's key index is then cut into ranges of --range-rows rows (the first range open
below, the last open above, so rows of the new shape outside the old key span count too). Each
range is compared in one REPEATABLE READ snapshot by a count and a hash aggregate per side,
computed by the server; a differing range is bisected down to --leaf-rows rows and listed key by
key. A same-table migration compares each row's new columns with their expressions.

Reports rows compared, keys missing in new, keys extra in new (not in old), differing keys with
the columns that differ, a sample of keys, and rows/s.

Rows with a NULL in a key column (a unique index on nullable columns allows them) are named by no
key, so they can be neither compared nor repaired: they are counted per side ("null_key_in_old",
"null_key_in_new"), logged as a warning, and fail the run like differences do.

--repair re-syncs exactly the differing keys, each range's in one transaction that locks the old
rows (SELECT ... FOR UPDATE) so concurrent mirrored writes are neither lost nor overwritten:
write-map(old) is upserted into new, keys no longer in old are deleted from new, or (same table)
the new columns are set from their expressions. The repaired keys are then compared again.

Exit status: 0 when the shapes are equal (or every difference was repaired and compared equal
again), 1 when differences remain or rows with a NULL key were left out, 2 on a usage or
configuration error, a migration that does not pass check, or a database that cannot be reached.`,
		Example: `  # compare users with users_v2 (examples/pgcanary.yaml)
  pgcanary verify --config examples/pgcanary.yaml users-split-name

  # the same for a script: one JSON object on stdout
  pgcanary verify --config examples/pgcanary.yaml users-split-name --json

  # fix what differs and compare it again; two workers, larger ranges
  pgcanary verify --config examples/pgcanary.yaml orders-cents --repair --workers 2 --range-rows 50000`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return &exitError{code: 2, err: fmt.Errorf("want one MIGRATION argument, got %d (usage: %s)", len(args), cmd.UseLine())}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if configFile == "" {
				return &exitError{code: 2, err: errors.New("--config is required")}
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			cfg, err := config.Load(configFile)
			if report, isReport := config.AsReport(err); err != nil && (!isReport || cfg == nil || report.HasErrors()) {
				return &exitError{code: 2, err: err}
			}
			opts.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			res, err := verify.Verify(ctx, cfg, args[0], config.DSNConnector(cfg.SideDSN), opts)
			if err != nil {
				var unknown *verify.UnknownMigrationError
				if errors.As(err, &unknown) {
					err = fmt.Errorf("%s: %w", configFile, err)
				}
				return &exitError{code: 2, err: err}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				if res.SampleKeys == nil {
					res.SampleKeys = []verify.KeyDiff{} // [] rather than null for consumers
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(res); err != nil {
					return &exitError{code: 2, err: err}
				}
			} else {
				printVerify(out, res, opts.Repair)
			}
			if !res.Equal() {
				return &exitError{code: 1, err: fmt.Errorf("migration %s: %s", res.Migration, notEqual(res))}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "the configuration file (required)")
	f.BoolVar(&opts.Repair, "repair", false, "re-sync the differing keys, then compare them again")
	f.BoolVar(&asJSON, "json", false, "print the result as one JSON object")
	f.IntVar(&opts.RangeRows, "range-rows", 10000, "rows of the old table per compared range (one snapshot each)")
	f.IntVar(&opts.LeafRows, "leaf-rows", 1000, "a differing range is bisected down to this many rows, then listed")
	f.IntVar(&opts.Workers, "workers", 1, "ranges compared at once, each on its own connection")
	f.IntVar(&opts.MaxSamples, "samples", 20, "differing keys to print")
	f.DurationVar(&timeout, "timeout", 0, "give up after this long (0: no limit)")
	return cmd
}

// notEqual says why a result does not prove the shapes equal.
func notEqual(r *verify.Result) string {
	var why []string
	if r.Remaining > 0 {
		why = append(why, fmt.Sprintf("%d differences remain", r.Remaining))
	}
	if r.NullKeys() > 0 {
		why = append(why, fmt.Sprintf("%d rows with a NULL key were not compared (%d in old, %d in new)", r.NullKeys(), r.NullKeyInOld, r.NullKeyInNew))
	}
	return strings.Join(why, "; ")
}

// printVerify writes the human-readable result.
func printVerify(w io.Writer, r *verify.Result, repair bool) {
	fmt.Fprintf(w, "%s: %d rows compared in %d ranges, %.2fs (%.0f rows/s)\n", r.Migration, r.RowsCompared, r.Ranges, r.Seconds, r.RowsPerSecond)
	if r.NullKeys() > 0 {
		fmt.Fprintf(w, "not compared: %d rows in old, %d in new have a NULL in their key: no key names them, so they can be neither compared nor repaired (see pgcanary check)\n",
			r.NullKeyInOld, r.NullKeyInNew)
	}
	if r.Differences() == 0 {
		if r.NullKeys() > 0 {
			fmt.Fprintln(w, "not proved equal: the rows compared match, the rows with a NULL key were not compared")
			return
		}
		fmt.Fprintln(w, "equal: new matches the write map of old")
		return
	}
	fmt.Fprintf(w, "missing in new: %d, extra in new: %d, differing: %d\n", r.MissingInNew, r.ExtraInNew, r.Differing)
	if len(r.DifferingColumns) > 0 {
		var cols []string
		for _, c := range slices.Sorted(maps.Keys(r.DifferingColumns)) {
			cols = append(cols, fmt.Sprintf("%s %d", c, r.DifferingColumns[c]))
		}
		fmt.Fprintf(w, "differing columns: %s\n", strings.Join(cols, ", "))
	}
	printKeys(w, r.SampleKeys, r.Differences())
	if !repair {
		return
	}
	fmt.Fprintf(w, "repaired: %d rows written\n", r.Repaired)
	if r.Remaining == 0 {
		fmt.Fprintln(w, "re-verified: the repaired keys are equal")
		return
	}
	fmt.Fprintf(w, "re-verified: %d keys still differ (written to at the same time without being mirrored?)\n", r.Remaining)
	printKeys(w, r.RemainingKeys, r.Remaining)
}

func printKeys(w io.Writer, keys []verify.KeyDiff, total int64) {
	for _, d := range keys {
		kind := strings.ReplaceAll(d.Kind, "_", " ")
		if len(d.Columns) > 0 {
			fmt.Fprintf(w, "  %s: %s (%s)\n", kind, d, strings.Join(d.Columns, ", "))
		} else {
			fmt.Fprintf(w, "  %s: %s\n", kind, d)
		}
	}
	if n := total - int64(len(keys)); n > 0 {
		fmt.Fprintf(w, "  ... and %d more\n", n)
	}
}
