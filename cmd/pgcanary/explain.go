package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/spf13/cobra"

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/router"
)

func newExplainCmd() *cobra.Command {
	var (
		configFile, database, searchPath, user string
		asJSON                                 bool
		timeout                                time.Duration
	)
	cmd := &cobra.Command{
		Use:   "explain [SQL | -]",
		Short: "Show what the proxy does with a statement: its mirrored write or new-shape read",
		Long: `Plan SQL as the proxy would for a session of --database, against the live catalog read through
side_dsn, and print per statement: its kind, the migrations it touches, the mirrored form a write
is sent as, the new-shape form a read is routed to (and the flags that route it), or why a
statement touching a migration keeps its old form. Nothing is executed.

SQL is the one argument, or standard input when the argument is "-" or missing. Parameters ($1,
$2, ...) stay as they are. For application teams checking a query before a migration starts,
and for operators explaining a statement counted in pgcanary_unrewritten_statements_total.

Exit status: 0 when planned, 1 on a bad configuration or input, 2 when the database cannot be
reached.`,
		Example: `  pgcanary explain --config examples/pgcanary.yaml "UPDATE users SET full_name = \$1 WHERE id = \$2"
  echo "SELECT full_name FROM users WHERE id = 42" | pgcanary explain --config examples/pgcanary.yaml --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if configFile == "" {
				return &exitError{code: 1, err: errors.New("--config is required")}
			}
			sql, err := explainInput(cmd.InOrStdin(), args)
			if err != nil {
				return &exitError{code: 1, err: err}
			}
			if _, err := pg_query.Parse(sql); err != nil {
				// The proxy relays such text unchanged and Postgres answers with its own error.
				return &exitError{code: 1, err: fmt.Errorf("the SQL does not parse (the proxy would relay it unchanged): %w", err)}
			}
			cfg, err := config.Load(configFile)
			if report, isReport := config.AsReport(err); err != nil {
				if isReport {
					printReport(cmd, report)
					return &exitError{code: 1, err: fmt.Errorf("%s is not valid", configFile)}
				}
				return &exitError{code: 2, err: err}
			}
			if database, err = explainDatabase(cfg, database); err != nil {
				return &exitError{code: 1, err: err}
			}
			if user == "" {
				if pc, err := pgx.ParseConfig(cfg.SideDSN); err == nil {
					user = pc.User
				}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			live, catalog, err := config.Check(ctx, cfg, config.DSNConnector(cfg.SideDSN))
			if err != nil {
				printReport(cmd, live)
				return &exitError{code: 2, err: err}
			}
			if live.HasErrors() {
				printReport(cmd, live)
				return &exitError{code: 1, err: fmt.Errorf("%s has errors (see pgcanary check)", configFile)}
			}
			var store config.Store
			store.Install(&config.Generation{Config: cfg, Catalog: catalog})
			planner, err := router.NewPlanner(16, nil)
			if err != nil {
				return err
			}
			plan := router.NewLive(&store, planner).Plan(database, searchPath, user, sql)
			if asJSON {
				return writeExplainJSON(cmd.OutOrStdout(), database, plan)
			}
			writeExplain(cmd.OutOrStdout(), database, plan)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&configFile, "config", "", "the configuration file (required)")
	f.StringVar(&database, "database", "", "the session's database (default: the one database the migrations name)")
	f.StringVar(&searchPath, "search-path", `"$user", public`, "the session's search_path")
	f.StringVar(&user, "user", "", "the session's user, for \"$user\" in the search_path (default: side_dsn's user)")
	f.BoolVar(&asJSON, "json", false, "print the plan as JSON")
	f.DurationVar(&timeout, "timeout", time.Minute, "give up on the database after this long")
	return cmd
}

// explainInput is the SQL to plan: the argument, or standard input for "-" or no argument.
func explainInput(stdin io.Reader, args []string) (string, error) {
	if len(args) == 1 && args[0] != "-" {
		if strings.TrimSpace(args[0]) == "" {
			return "", errors.New("the SQL argument is empty")
		}
		return args[0], nil
	}
	if f, ok := stdin.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			return "", errors.New(`give the SQL as the argument, or on standard input with "-"`)
		}
	}
	raw, err := io.ReadAll(stdin)
	if err != nil {
		return "", fmt.Errorf("read SQL from standard input: %w", err)
	}
	if strings.TrimSpace(string(raw)) == "" {
		return "", errors.New("no SQL on standard input")
	}
	return string(raw), nil
}

// explainDatabase is the session database to plan for: the flag, or the only database the
// configuration's migrations name.
func explainDatabase(cfg *config.Config, flag string) (string, error) {
	var dbs []string
	for _, m := range cfg.Migrations {
		if !slices.Contains(dbs, m.Database) {
			dbs = append(dbs, m.Database)
		}
	}
	switch {
	case flag != "":
		return flag, nil
	case len(dbs) == 1:
		return dbs[0], nil
	case len(dbs) == 0:
		return "", errors.New("the configuration has no migrations")
	}
	return "", fmt.Errorf("the migrations are in several databases (%s): choose one with --database", strings.Join(dbs, ", "))
}

// writeExplain prints a plan for people, one block per statement.
func writeExplain(w io.Writer, database string, plan *router.Plan) {
	if plan == nil {
		fmt.Fprintf(w, "no migration is configured in database %s: every statement is relayed unchanged\n", database)
		return
	}
	if plan.Untouched {
		fmt.Fprintln(w, "names no migrated relation: relayed unchanged")
		return
	}
	for i, st := range plan.Statements {
		if len(plan.Statements) > 1 {
			fmt.Fprintf(w, "statement %d: %s\n", i+1, oneLine(st.SQL))
		}
		fmt.Fprintf(w, "  kind: %s\n", st.Kind)
		if len(st.Migrations) == 0 {
			fmt.Fprintln(w, "  touches no migration: relayed unchanged")
			continue
		}
		fmt.Fprintf(w, "  migrations: %s\n", strings.Join(st.Migrations, ", "))
		if r := st.Read; r != nil {
			fmt.Fprintf(w, "  routed: by flag %s; old form: the statement as written\n", strings.Join(r.Flags, ", "))
			fmt.Fprintf(w, "  new-shape form: %s\n", r.SQL)
			switch {
			case r.Unstable != "":
				fmt.Fprintf(w, "  comparisons: never (unstable: %s; its answer may differ between runs)\n", r.Unstable)
			case r.Ordered:
				fmt.Fprintln(w, "  comparisons: row order counts (an ORDER BY of the key)")
			}
		}
		if c := st.Compare; c != nil {
			fmt.Fprintln(w, "  routed: never (it locks rows); comparisons run both forms without their locking clauses")
			fmt.Fprintf(w, "  compared old form: %s\n  compared new form: %s\n", c.OldSQL, c.SQL)
		}
		for _, u := range st.Unrewritten {
			fmt.Fprintf(w, "  old form only for %s: %s\n", u.Migration, u.Reason)
		}
		if wf := st.Write; wf != nil {
			fmt.Fprintf(w, "  mirrored (%s, %s, on_mirror_error %s): %s\n", wf.Strategy, wf.Direction, mirrorErrorMode(wf), wf.SQL)
			if wf.Strategy == "capture" {
				fmt.Fprintf(w, "  client sees: the %s command tag%s\n", wf.Verb, map[bool]string{true: " (the count row is consumed)", false: " and its RETURNING rows"}[wf.CountOnly])
			}
		}
		if pw := st.Prepare; pw != nil {
			wf := pw.Statement.Write
			fmt.Fprintf(w, "  prepared as (%s, %s, on_mirror_error %s): %s\n", wf.Strategy, wf.Direction, mirrorErrorMode(wf), pw.SQL)
			fmt.Fprintf(w, "  EXECUTE %s: mirrored; the client sees the %s command tag%s\n", pw.Name, wf.Verb, map[bool]string{true: "", false: " and its RETURNING rows"}[wf.CountOnly])
		}
		for _, u := range st.Unmirrored {
			fmt.Fprintf(w, "  not mirrored for %s: %s (counted in pgcanary_unmirrored_writes_total; verify --repair closes the drift)\n", u.Migration, u.Reason)
		}
	}
}

func mirrorErrorMode(wf *router.WriteForm) string {
	if wf.Passthrough {
		return "passthrough"
	}
	return "fail"
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// explainJSON is the --json form of a plan.
type explainJSON struct {
	Database   string          `json:"database"`
	Configured bool            `json:"configured"` // a migration lives in the database
	Untouched  bool            `json:"untouched"`  // the text names no migrated relation
	Statements []explainStmtJS `json:"statements"`
}

type explainStmtJS struct {
	SQL         string               `json:"sql"`
	Kind        string               `json:"kind"`
	Migrations  []string             `json:"migrations"`
	Read        *router.ReadForm     `json:"read,omitempty"`
	Compare     *router.ReadForm     `json:"compare,omitempty"`
	Unrewritten []router.Unrewritten `json:"unrewritten,omitempty"`
	Write       *router.WriteForm    `json:"write,omitempty"`
	Unmirrored  []router.Unrewritten `json:"unmirrored,omitempty"`
	Prepare     *explainPrepareJS    `json:"prepare,omitempty"`
}

// explainPrepareJS is a SQL PREPARE of a mirrored write: the PREPARE sent, and the write's form.
type explainPrepareJS struct {
	Name  string            `json:"name"`
	SQL   string            `json:"sql"`
	Write *router.WriteForm `json:"write"`
}

func writeExplainJSON(w io.Writer, database string, plan *router.Plan) error {
	out := explainJSON{Database: database, Configured: plan != nil, Statements: []explainStmtJS{}}
	if plan != nil {
		out.Untouched = plan.Untouched
		for _, st := range plan.Statements {
			js := explainStmtJS{SQL: st.SQL, Kind: st.Kind.String(),
				Migrations: append([]string{}, st.Migrations...), Read: st.Read, Compare: st.Compare,
				Unrewritten: st.Unrewritten, Write: st.Write, Unmirrored: st.Unmirrored}
			if pw := st.Prepare; pw != nil {
				js.Prepare = &explainPrepareJS{Name: pw.Name, SQL: pw.SQL, Write: pw.Statement.Write}
			}
			out.Statements = append(out.Statements, js)
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
