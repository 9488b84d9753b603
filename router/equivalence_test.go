package router_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/router"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

// The router's tests share one PostgreSQL cluster; only TestReadEquivalence uses it.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	// Fuzz workers are processes of their own that run only the fuzz target, which needs no
	// database: starting a cluster in each would waste them (and a killed worker cannot stop it).
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-test.fuzzworker") {
			os.Exit(m.Run())
		}
	}
	pgtest.RunMain(m, pgtest.Options{}, &cluster)
}

const (
	corpusFile   = "testdata/read_corpus.sql"
	equivDB      = "router_equivalence"
	equivPath    = `"$user", public`
	equivUser    = "postgres"
	minCompared  = 100
	minFlat      = 50 // reads that take the flat form (router/flatten.go)
	queryTimeout = 10 * time.Second
)

// declined lists the corpus reads the planner is expected to leave in their old form, with the
// reason it must give. Anything else the planner declines fails the test, and so does an entry
// here that gets rewritten after all.
var declined = map[string]string{
	// The table's composite type cannot be reproduced by a subquery.
	"SELECT u FROM users u WHERE u.id = 1": router.ReasonWholeRow,
	// Sampling is defined on a table's pages: over a subquery it would pick other rows.
	"SELECT id, full_name FROM users TABLESAMPLE SYSTEM (50) REPEATABLE (1)": router.ReasonTableSample,
	// schema.table.column cannot name a column of a subquery.
	"SELECT public.users.full_name FROM public.users WHERE public.users.id = 2": router.ReasonQualifiedColumn,
	// alias.* as a value is the whole row, typed as the table's row type; over a subquery it is an
	// anonymous record: column aliases rename row_to_json's keys, pg_typeof and array_agg's type
	// change. (Plain row_to_json(u.*) would happen to match; the planner does not guess.)
	"SELECT row_to_json(u.*) FROM users u ORDER BY u.id LIMIT 5":                        router.ReasonWholeRow,
	"SELECT to_jsonb(u.*) - 'external_id' FROM users u WHERE u.id < 5":                  router.ReasonWholeRow,
	"SELECT row_to_json(x.*) FROM users AS x(uid, name) WHERE x.uid < 4 ORDER BY x.uid": router.ReasonWholeRow,
	"SELECT pg_typeof(u.*)::text AS row_type, count(*) FROM users u GROUP BY 1":         router.ReasonWholeRow,
	"SELECT array_agg(o.* ORDER BY o.id) FROM orders o WHERE o.user_id = 3":             router.ReasonWholeRow,
	// GROUP BY the primary key, then ungrouped columns: allowed on the table (functional
	// dependency), an error over a subquery.
	"SELECT u.id, u.full_name, count(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id GROUP BY u.id ORDER BY u.id LIMIT 20": router.ReasonGroupByKey,
	"SELECT o.id, o.amount, o.status FROM orders o GROUP BY o.id ORDER BY o.id LIMIT 5":                                              router.ReasonGroupByKey,
}

// corpusQuery is one read of the corpus.
type corpusQuery struct {
	line int // where it starts in corpusFile
	sql  string
	args []any
}

// loadCorpus reads corpusFile (format in its header).
func loadCorpus(t *testing.T) []corpusQuery {
	t.Helper()
	var out []corpusQuery
	for _, e := range corpusEntries(t, corpusFile) {
		q := corpusQuery{line: e.line}
		q.sql, q.args = splitArgs(t, corpusFile, e.line, e.text)
		out = append(out, q)
	}
	return out
}

// corpusEntry is one statement of a corpus file and the line it starts on.
type corpusEntry struct {
	line int
	text string
}

// corpusEntries splits a corpus file into statements: one per line, or a multi-line block between
// two lines ";;". Blank lines and comment lines are skipped.
func corpusEntries(t *testing.T, path string) []corpusEntry {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []corpusEntry
	var block []string
	blockStart := 0
	for i, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == ";;" && blockStart == 0:
			blockStart = i + 2
		case trimmed == ";;":
			out = append(out, corpusEntry{blockStart, strings.TrimSpace(strings.Join(block, "\n"))})
			block, blockStart = nil, 0
		case blockStart != 0:
			block = append(block, line)
		case trimmed == "" || strings.HasPrefix(trimmed, "--"):
		default:
			out = append(out, corpusEntry{i + 1, trimmed})
		}
	}
	if blockStart != 0 {
		t.Fatalf("%s:%d: multi-line statement not closed by ;;", path, blockStart-1)
	}
	return out
}

// splitArgs separates a trailing "-- args: ..." comment from a statement and parses it.
func splitArgs(t *testing.T, path string, line int, sql string) (string, []any) {
	t.Helper()
	i := strings.LastIndex(sql, "-- args:")
	if i < 0 {
		return sql, nil
	}
	args, err := parseArgs(sql[i+len("-- args:"):])
	if err != nil {
		t.Fatalf("%s:%d: %v", path, line, err)
	}
	return strings.TrimSpace(sql[:i]), args
}

// parseArgs parses a list such as: 42, 'Ada' into int64 and string values (SQL quoting: a quote
// inside a string is doubled).
func parseArgs(s string) ([]any, error) {
	var out []any
	s = strings.TrimSpace(s)
	for s != "" {
		if s[0] == '\'' {
			var b strings.Builder
			i := 1
			for ; i < len(s); i++ {
				if s[i] == '\'' {
					if i+1 < len(s) && s[i+1] == '\'' {
						b.WriteByte('\'')
						i++
						continue
					}
					break
				}
				b.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("args: unterminated string in %q", s)
			}
			out = append(out, b.String())
			s = strings.TrimSpace(s[i+1:])
		} else {
			end := strings.IndexByte(s, ',')
			if end < 0 {
				end = len(s)
			}
			n, err := strconv.ParseInt(strings.TrimSpace(s[:end]), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("args: %q is neither an integer nor a 'string'", s[:end])
			}
			out = append(out, n)
			s = strings.TrimSpace(s[end:])
		}
		if s == "" {
			break
		}
		if s[0] != ',' {
			return nil, fmt.Errorf("args: expected a comma before %q", s)
		}
		s = strings.TrimSpace(s[1:])
	}
	return out, nil
}

// topLevelOrdered reports whether a read ends in an ORDER BY of its own, so its rows are compared
// in order; other reads are compared as multisets.
func topLevelOrdered(sql string) bool {
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.Stmts) != 1 {
		return false
	}
	sel := tree.Stmts[0].Stmt.GetSelectStmt()
	return sel != nil && len(sel.SortClause) > 0
}

// result is what a client sees of a read: its description and its rows, values in text format.
type result struct {
	names   []string
	oids    []uint32
	typmods []int32
	params  []uint32
	rows    []string // each row rendered by renderRow
}

// renderRow renders raw text-format values unambiguously: NULL differs from ” and from 'NULL'.
func renderRow(values [][]byte) string {
	parts := make([]string, len(values))
	for i, v := range values {
		if v == nil {
			parts[i] = "NULL"
		} else {
			parts[i] = strconv.Quote(string(v))
		}
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// run describes and runs sql in tx with the extended protocol, results in text format.
func run(ctx context.Context, tx pgx.Tx, sql string, args []any) (*result, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	sd, err := tx.Conn().PgConn().Prepare(ctx, "", sql, nil) // the unnamed statement: Describe only
	if err != nil {
		return nil, err
	}
	r := &result{params: sd.ParamOIDs}
	rows, err := tx.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for _, fd := range rows.FieldDescriptions() {
		r.names = append(r.names, fd.Name)
		r.oids = append(r.oids, fd.DataTypeOID)
		r.typmods = append(r.typmods, fd.TypeModifier)
	}
	for rows.Next() {
		r.rows = append(r.rows, renderRow(rows.RawValues()))
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return r, nil
}

// difference says how two results differ, "" when a client could not tell them apart.
func difference(old, cur *result, ordered bool) string {
	var b strings.Builder
	if !slices.Equal(old.names, cur.names) {
		fmt.Fprintf(&b, "column names differ:\n  old %q\n  new %q\n", old.names, cur.names)
	}
	if !slices.Equal(old.oids, cur.oids) {
		fmt.Fprintf(&b, "column type OIDs differ:\n  old %v\n  new %v\n", old.oids, cur.oids)
	}
	if !slices.Equal(old.params, cur.params) {
		fmt.Fprintf(&b, "parameter type OIDs differ:\n  old %v\n  new %v\n", old.params, cur.params)
	}
	a, c := old.rows, cur.rows
	if !ordered {
		a, c = slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(c))
	}
	if slices.Equal(a, c) {
		return b.String()
	}
	fmt.Fprintf(&b, "rows differ (%d old, %d new, compared %s):\n", len(a), len(c), map[bool]string{true: "in order", false: "as multisets"}[ordered])
	if ordered && slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(c))) {
		b.WriteString("  same rows, other order\n")
	}
	onlyOld, onlyNew := multisetDiff(a, c)
	for _, side := range []struct {
		label string
		rows  []string
	}{{"only old", onlyOld}, {"only new", onlyNew}} {
		for i, r := range side.rows {
			if i == 5 {
				fmt.Fprintf(&b, "  %s: ... %d more\n", side.label, len(side.rows)-5)
				break
			}
			fmt.Fprintf(&b, "  %s: %s\n", side.label, r)
		}
	}
	if ordered && len(onlyOld) == 0 && len(onlyNew) == 0 {
		for i := range a {
			if a[i] != c[i] {
				fmt.Fprintf(&b, "  first difference at row %d: old %s, new %s\n", i+1, a[i], c[i])
				break
			}
		}
	}
	return b.String()
}

// multisetDiff returns the rows of a missing from b and the rows of b missing from a.
func multisetDiff(a, b []string) (onlyA, onlyB []string) {
	count := map[string]int{}
	for _, r := range a {
		count[r]++
	}
	for _, r := range b {
		count[r]--
	}
	for _, r := range a {
		if count[r] > 0 {
			onlyA = append(onlyA, r)
			count[r]--
		}
	}
	for _, r := range b {
		if count[r] < 0 {
			onlyB = append(onlyB, r)
			count[r]++
		}
	}
	return onlyA, onlyB
}

// equivEnv is the database the corpus runs against and what the planner knows of it.
type equivEnv struct {
	conn *pgx.Conn
	cfg  *config.Config
	gen  *config.Generation
}

// setupEquivalence loads examples/schema.sql into a fresh database, checks
// examples/pgcanary.yaml against it and connects.
func setupEquivalence(t *testing.T) *equivEnv {
	t.Helper()
	ctx := context.Background()
	_ = cluster.Exec(ctx, "drop database if exists "+equivDB)
	if err := cluster.Exec(ctx, "create database "+equivDB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "drop database if exists "+equivDB+" with (force)") })
	dsn := strings.Replace(cluster.DSN(pgtest.SuperUser, ""), "/"+pgtest.TestDB+"?", "/"+equivDB+"?", 1)

	psql, err := pgtest.FindBin("psql")
	if err != nil {
		t.Fatalf("psql is needed to load examples/schema.sql: %v", err)
	}
	cmd := exec.Command(psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", "../examples/schema.sql",
		"-v", "users=500", "-v", "orders=1500")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("psql -f ../examples/schema.sql: %v\n%s", err, out)
	}

	t.Setenv("PGCANARY_UPSTREAM", cluster.Addr())
	t.Setenv("PGCANARY_SIDE_DSN", dsn)
	t.Setenv("PGCANARY_DATABASE", equivDB)
	cfg, err := config.Load("../examples/pgcanary.yaml")
	if err != nil {
		t.Fatal(err)
	}
	report, catalog, err := config.Check(ctx, cfg, config.DSNConnector(cfg.SideDSN))
	if err != nil {
		t.Fatal(err)
	}
	if report.HasErrors() {
		t.Fatalf("examples/pgcanary.yaml does not check:\n%s", report.Error())
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	// The session the reads are planned for: the search_path and user given to the planner.
	var sp, user string
	if err := conn.QueryRow(ctx, "select current_setting('search_path'), current_user").Scan(&sp, &user); err != nil {
		t.Fatal(err)
	}
	if sp != equivPath || user != equivUser {
		t.Fatalf("session has search_path %s and user %s; the corpus is planned for %s and %s", sp, user, equivPath, equivUser)
	}
	return &equivEnv{conn: conn, cfg: cfg, gen: &config.Generation{Number: 1, Config: cfg, Catalog: catalog}}
}

// outcome of one corpus read.
type outcome struct {
	q        corpusQuery
	declined string // the planner's reason, when it kept the old form only
	readSQL  string
	diff     string // how the forms differ ("" when equivalent)
	oldErr   error  // the client's own form failed: a corpus bug
	readErr  error  // the read form failed where the old one did not: a planner bug
	typmods  string // column typmods that differ (reported, not failed on)
	ordered  bool
	// migrations whose new shape the read form takes.
	migrations []string
}

// compare plans q against cat and runs both forms in one REPEATABLE READ READ ONLY transaction.
func (e *equivEnv) compare(ctx context.Context, p *router.Planner, cat *router.Catalog, q corpusQuery) outcome {
	o := outcome{q: q, ordered: topLevelOrdered(q.sql)}
	plan := p.Plan(cat, equivPath, equivUser, q.sql)
	if len(plan.Statements) != 1 {
		o.readErr = fmt.Errorf("planned as %d statements", len(plan.Statements))
		return o
	}
	st := plan.Statements[0]
	if st.Kind != router.KindRead || len(st.Migrations) == 0 {
		o.readErr = fmt.Errorf("planned as %s touching %v: not a read of a migration", st.Kind, st.Migrations)
		return o
	}
	if st.Read == nil {
		var reasons []string
		for _, u := range st.Unrewritten {
			reasons = append(reasons, u.Reason)
		}
		o.declined = strings.Join(slices.Compact(reasons), ",")
		if o.declined == "" {
			o.declined = "(no reason given)"
		}
		return o
	}
	o.migrations = st.Read.Migrations
	return e.compareForms(ctx, o, q.sql, st.Read.SQL)
}

// compareForms runs old and read forms of o's query in one transaction and fills in the outcome.
func (e *equivEnv) compareForms(ctx context.Context, o outcome, oldSQL, readSQL string) outcome {
	o.readSQL = readSQL
	tx, err := e.conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		o.oldErr = err
		return o
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read only
	old, err := run(ctx, tx, oldSQL, o.q.args)
	if err != nil {
		o.oldErr = err
		return o
	}
	cur, err := run(ctx, tx, readSQL, o.q.args)
	if err != nil {
		o.readErr = err
		return o
	}
	o.diff = difference(old, cur, o.ordered)
	if !slices.Equal(old.typmods, cur.typmods) {
		o.typmods = fmt.Sprintf("old %v, new %v", old.typmods, cur.typmods)
	}
	return o
}

// TestReadEquivalence: every read of the corpus returns, in its read form over the new shape,
// exactly what it returns in its old form (column names, type OIDs, parameter types, rows), on
// both example migrations; and the comparison does catch a wrong read map.
func TestReadEquivalence(t *testing.T) {
	ctx := context.Background()
	corpus := loadCorpus(t)
	env := setupEquivalence(t)
	if _, err := env.conn.Exec(ctx, "set statement_timeout = '10s'"); err != nil {
		t.Fatal(err)
	}

	t.Run("corpus", func(t *testing.T) {
		p, err := router.NewPlanner(1000, nil)
		if err != nil {
			t.Fatal(err)
		}
		cat := router.NewCatalog(env.gen)
		var compared, equal, declinedN, failed, flat int
		perMigration := map[string]int{}
		for _, q := range corpus {
			o := env.compare(ctx, p, cat, q)
			where := fmt.Sprintf("%s:%d", corpusFile, q.line)
			want, allowed := declined[q.sql]
			if o.declined != "" {
				declinedN++
				switch {
				case !allowed:
					t.Errorf("%s: the planner declined a corpus read (%s); list it in declined with the reason, or fix the planner:\n  %s", where, o.declined, q.sql)
				case want != o.declined:
					t.Errorf("%s: declined for %s, want %s:\n  %s", where, o.declined, want, q.sql)
				}
				continue
			}
			if allowed {
				t.Errorf("%s: listed in declined (%s) but rewritten: remove it from the list\n  %s", where, want, q.sql)
			}
			switch {
			case o.oldErr != nil:
				failed++
				t.Errorf("%s: the corpus read itself fails (fix the corpus): %v\n  %s", where, o.oldErr, q.sql)
			case o.readErr != nil:
				failed++
				t.Errorf("%s: PLANNER BUG: the read form fails where the old form runs: %v\n  old:  %s\n  read: %s", where, o.readErr, q.sql, o.readSQL)
			default:
				compared++
				for _, m := range o.migrations {
					perMigration[m]++
				}
				if !strings.Contains(o.readSQL, "(SELECT") {
					flat++ // the single-relation form without a subquery (router/flatten.go)
				}
				if o.diff != "" {
					t.Errorf("%s: PLANNER BUG: the read form differs from the old form\n  old:  %s\n  read: %s\n%s", where, q.sql, o.readSQL, o.diff)
				} else {
					equal++
				}
			}
			if o.typmods != "" {
				t.Logf("%s: column typmods differ (reported, not compared): %s\n  %s", where, o.typmods, q.sql)
			}
		}
		t.Logf("read equivalence: %d corpus reads; %d compared (%d equal, %d differ), %d declined, %d failed to run; compared per migration %v",
			len(corpus), compared, equal, compared-equal, declinedN, failed, perMigration)
		t.Logf("%d compared reads took the flat form", flat)
		if flat < minFlat {
			t.Errorf("only %d compared reads took the flat form, want at least %d", flat, minFlat)
		}
		if compared < minCompared {
			t.Errorf("only %d corpus reads compared, want at least %d", compared, minCompared)
		}
		for _, m := range env.cfg.Migrations {
			if perMigration[m.Name] == 0 {
				t.Errorf("no corpus read of migration %s was compared", m.Name)
			}
		}
	})

	t.Run("negative-controls", func(t *testing.T) {
		negativeControls(t, ctx, env, corpus)
	})
}

// negativeControls proves the comparison would catch a wrong rewrite: catalogs whose read maps are
// subtly wrong must make some corpus reads differ, and tampered read forms must be reported for
// the very property that was changed.
func negativeControls(t *testing.T, ctx context.Context, env *equivEnv, corpus []corpusQuery) {
	wrongMaps := []struct {
		migration, column, expr, why string
	}{
		{"users-split-name", "full_name", "concat_ws(' ', first_name)", "drops the last name"},
		{"users-split-name", "full_name", "first_name || ' ' || last_name", "NULL for a one-word name (Cher)"},
		{"users-split-name", "full_name", `regexp_replace(concat_ws(' ', first_name, last_name), '\s+', ' ', 'g')`, "collapses the two spaces of 'Alan  Turing' only"},
		{"orders-cents", "amount", "(amount_cents / 100)::numeric(12, 2)", "integer division drops the cents"},
		{"orders-cents", "amount", "round(amount_cents / 100.0, 1)::numeric(12, 2)", "rounds to ten cents"},
	}
	// Only reads equivalent under the right read maps can show what a wrong one changes.
	good := router.NewCatalog(env.gen)
	gp, err := router.NewPlanner(1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	var baseline []corpusQuery
	for _, q := range corpus {
		if o := env.compare(ctx, gp, good, q); o.readSQL != "" && o.oldErr == nil && o.readErr == nil && o.diff == "" {
			baseline = append(baseline, q)
		}
	}
	for i, w := range wrongMaps {
		t.Run(fmt.Sprintf("read-map-%d", i+1), func(t *testing.T) {
			cfg := *env.cfg
			cfg.Migrations = slices.Clone(env.cfg.Migrations)
			found := false
			for j := range cfg.Migrations {
				if cfg.Migrations[j].Name == w.migration {
					cfg.Migrations[j].Read = maps.Clone(cfg.Migrations[j].Read)
					cfg.Migrations[j].Read[w.column] = w.expr
					found = true
				}
			}
			if !found {
				t.Fatalf("no migration %s", w.migration)
			}
			cat := router.NewCatalog(&config.Generation{Number: int64(100 + i), Config: &cfg, Catalog: env.gen.Catalog})
			p, err := router.NewPlanner(1000, nil)
			if err != nil {
				t.Fatal(err)
			}
			caught := 0
			var first string
			for _, q := range baseline {
				o := env.compare(ctx, p, cat, q)
				if o.diff != "" {
					caught++
					if first == "" {
						first = q.sql
					}
				}
			}
			if caught == 0 {
				t.Fatalf("read %s.%s = %s (%s): no corpus read differs; the corpus cannot see this mistake", w.migration, w.column, w.expr, w.why)
			}
			t.Logf("read %s.%s = %s (%s): %d of %d equivalent corpus reads differ, e.g. %s", w.migration, w.column, w.expr, w.why, caught, len(baseline), first)
		})
	}

	// Tampered read forms: each changes one property a client sees, which the comparison must name.
	p, cat := gp, good
	tampers := []struct {
		name, sql, from, to, want string
	}{
		{"column-name", "SELECT id, full_name FROM users WHERE id <= 10 ORDER BY id", "AS full_name FROM", "AS name FROM", "column names differ"},
		{"type-oid", "SELECT id, full_name FROM users WHERE id <= 10 ORDER BY id", "SELECT id,", "SELECT id::int AS id,", "column type OIDs differ"},
		{"param-type", "SELECT id FROM users WHERE id = $1", "WHERE id = $1", "WHERE id = $1::int", "parameter type OIDs differ"},
		{"missing-row", "SELECT id, full_name FROM users WHERE id <= 10 ORDER BY id", "id <= 10", "id <= 9", "rows differ"},
		{"row-order", "SELECT id, full_name FROM users WHERE id <= 10 ORDER BY id", "ORDER BY id", "ORDER BY id DESC", "same rows, other order"},
		{"null-vs-empty", "SELECT id, note FROM orders WHERE id <= 10", "note FROM", "coalesce(note, '')::text AS note FROM", "rows differ"},
		{"duplicate-row", "SELECT tier FROM users WHERE id <= 6", "WHERE id <= 6", "WHERE id <= 6 UNION ALL SELECT 'free'::public.user_tier", "rows differ"},
	}
	for _, tc := range tampers {
		t.Run("tampered-"+tc.name, func(t *testing.T) {
			q := corpusQuery{sql: tc.sql}
			if tc.name == "param-type" {
				q.args = []any{int64(3)}
			}
			st := p.Plan(cat, equivPath, equivUser, tc.sql).Statements[0]
			if st.Read == nil {
				t.Fatalf("not rewritten: %s", tc.sql)
			}
			if !strings.Contains(st.Read.SQL, tc.from) {
				t.Fatalf("read form has no %q:\n%s", tc.from, st.Read.SQL)
			}
			tampered := strings.Replace(st.Read.SQL, tc.from, tc.to, 1)
			o := env.compareForms(ctx, outcome{q: q, ordered: topLevelOrdered(tc.sql)}, tc.sql, st.Read.SQL)
			if o.oldErr != nil || o.readErr != nil || o.diff != "" {
				t.Fatalf("untampered forms are not equivalent: %v %v %s", o.oldErr, o.readErr, o.diff)
			}
			o = env.compareForms(ctx, outcome{q: q, ordered: topLevelOrdered(tc.sql)}, tc.sql, tampered)
			if o.oldErr != nil || o.readErr != nil {
				t.Fatalf("tampered form fails: %v %v\n%s", o.oldErr, o.readErr, tampered)
			}
			if !strings.Contains(o.diff, tc.want) {
				t.Fatalf("tampered form not reported as %q; got %q\n%s", tc.want, o.diff, tampered)
			}
		})
	}
}
