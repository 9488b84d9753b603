package main

import (
	"errors"

	"github.com/spf13/cobra"
)

func newBackfillCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "backfill --config FILE MIGRATION",
		Short: "(not built yet)",
		RunE: func(*cobra.Command, []string) error {
			return &exitError{code: 2, err: errors.New("backfill is not built yet")}
		},
	}
}
