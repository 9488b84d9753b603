// Command pgcanary is a PostgreSQL wire-protocol sidecar for safe schema migrations.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// exitError carries a process exit code through cobra.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	root := &cobra.Command{
		Use:   "pgcanary",
		Short: "A PostgreSQL wire-protocol sidecar for safe schema migrations",
		Long: `pgcanary sits between applications and PostgreSQL, speaking the wire protocol, while a
schema migration is under way. Applications connect to it instead of to Postgres, unchanged.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServeCmd(), newCheckCmd(), newRampCmd(), newStatusCmd(), newRollbackCmd(), newResumeCmd(), newBackfillCmd(), newVerifyCmd(), newExplainCmd(), newHealthcheckCmd())
	if err := root.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "pgcanary:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}
