package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgcanary/pgcanary/config"
)

func newCheckCmd() *cobra.Command {
	var configFile string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration file against the live database",
		Long: `Validate the configuration file and, through side_dsn, each migration against its live database:
relations and columns exist, keys have unique indexes, every write and read expression parses,
type-checks and is assignable to its column, nothing NOT NULL is left unfilled, no old column is
left unmapped, roles keep the privileges mirrored writes need, and no relation is in two migrations.
A nullable key column is a warning: rows with a NULL in the key cannot be mirrored by key,
backfilled or verified.

Prints one line per finding, "file:line: error|warning: migration NAME: ...".
Exit status: 0 when there is no error (warnings allowed), 1 on any error, 2 when a database
cannot be reached.`,
		Example: `  pgcanary check --config examples/pgcanary.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile == "" {
				return &exitError{code: 2, err: errors.New("--config is required")}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			cfg, err := config.Load(configFile)
			report, isReport := config.AsReport(err)
			if err != nil && (!isReport || cfg == nil) {
				if isReport {
					printReport(cmd, report)
					return &exitError{code: 1, err: fmt.Errorf("%s is not valid", configFile)}
				}
				return &exitError{code: 2, err: err}
			}
			live, _, err := config.Check(ctx, cfg, config.DSNConnector(cfg.SideDSN))
			if err != nil {
				printReport(cmd, live)
				return &exitError{code: 2, err: err}
			}
			printReport(cmd, live)
			if live.HasErrors() {
				return &exitError{code: 1, err: fmt.Errorf("%s has errors", configFile)}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d migrations)\n", configFile, len(cfg.Migrations))
			return nil
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "the configuration file to check (required)")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "give up on the database after this long")
	return cmd
}

func printReport(cmd *cobra.Command, r config.Report) {
	for _, f := range r {
		fmt.Fprintln(cmd.OutOrStdout(), f.String())
	}
}
