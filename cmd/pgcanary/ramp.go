package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/flags"
)

func newRampCmd() *cobra.Command {
	var configFile string
	cmd := &cobra.Command{
		Use:   "ramp --config FILE MIGRATION PERCENT",
		Short: "Set a migration's read percentage in the flag file",
		Long: `Set the share of reads served by a migration's new shape: the migration's read-percent flag in
the flag file named by the configuration (flags.file) gets PERCENT (0-100) as its default value.
Other flags, variants and targeting rules are kept, and the file is replaced atomically, so every
pgcanary watching it picks the change up at once. Prints the old and the new value.`,
		Example: `  pgcanary ramp --config examples/pgcanary.yaml users-split-name 25`,
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if configFile == "" {
				return &exitError{code: 2, err: errors.New("--config is required")}
			}
			percent, err := strconv.ParseFloat(args[1], 64)
			if err != nil || percent < 0 || percent > 100 {
				return &exitError{code: 2, err: fmt.Errorf("PERCENT %q: want a number from 0 to 100", args[1])}
			}
			cfg, err := config.Load(configFile)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			var mig *config.Migration
			for i := range cfg.Migrations {
				if cfg.Migrations[i].Name == args[0] {
					mig = &cfg.Migrations[i]
				}
			}
			if mig == nil {
				return &exitError{code: 2, err: fmt.Errorf("no migration %q in %s", args[0], configFile)}
			}
			if cfg.Flags.File == "" {
				return &exitError{code: 2, err: fmt.Errorf("%s names no flag file (flags.file): with a flagd daemon, change %s there", configFile, mig.ReadPercentFlag)}
			}
			path := cfg.Flags.File
			if !filepath.IsAbs(path) {
				path = filepath.Join(filepath.Dir(configFile), path)
			}
			old, err := flags.SetPercent(path, mig.ReadPercentFlag, percent)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: read percentage %v -> %v (flag %s in %s)\n", mig.Name, old, percent, mig.ReadPercentFlag, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "the configuration file (required)")
	return cmd
}
