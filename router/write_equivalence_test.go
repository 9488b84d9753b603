package router_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pgcanary/pgcanary/router"
)

const (
	writeCorpusFile = "testdata/write_corpus.sql"
	minMirrored     = 50
	// noMirrorNeeded marks, in unmirroredWrites, a write that changes nothing the other shape
	// derives from: the planner gives neither a form nor a reason, and the client form alone
	// must keep both shapes consistent.
	noMirrorNeeded = "(no mirror needed)"
)

// unmirroredWrites lists the corpus writes the planner is expected to pass through without a
// mirrored form, with the reason it must give. Anything else left unmirrored fails the test, and
// so does an entry here that gets a mirrored form after all.
var unmirroredWrites = map[string]string{
	"MERGE INTO users u USING staging s ON u.id = s.id WHEN MATCHED THEN UPDATE SET full_name = s.name": router.ReasonMerge,
	// The old key's row would stay behind in the other shape.
	"UPDATE users SET id = id + 1000 WHERE id = 800002": router.ReasonKeyUpdate,
	"UPDATE users_v2 SET id = 900009 WHERE id = 900002": router.ReasonKeyUpdate,
	// RETURNING may name the joined relations, which the capture's final SELECT cannot see.
	"UPDATE users SET email = s.mail FROM staging s WHERE s.id = users.id AND s.ok RETURNING users.id": router.ReasonReturningWithJoin,
	"DELETE FROM users u USING staging s WHERE s.mail = u.email RETURNING u.id":                        router.ReasonReturningWithJoin,
	// Writes inside CTEs are not mirrored.
	"WITH d AS (DELETE FROM users WHERE id = -5 RETURNING *) SELECT * FROM d":                      router.ReasonDataModifyingCTE,
	"WITH up AS (UPDATE orders SET amount = 1 WHERE id = 73 RETURNING id) SELECT count(*) FROM up": router.ReasonDataModifyingCTE,
	"UPDATE users SET (email, active) = ('multi@example.com', false) WHERE id = 800002":            router.ReasonMultiAssignment,
	"WITH pgcanary_w AS (SELECT 1) DELETE FROM users WHERE id = -1":                                router.ReasonNameClash,
	// A derived column would evaluate the assigned expression a second time.
	"UPDATE orders SET amount = random() * 100 WHERE id = 71":                                    router.ReasonVolatile,
	"UPDATE orders SET amount = (SELECT amount FROM orders WHERE id > 72 LIMIT 1) WHERE id = 72": router.ReasonVolatile,
	"UPDATE orders SET amount = (SELECT max(amount) * random() FROM orders) WHERE id = 72":       router.ReasonVolatile,
	// RETURNING that the captured rows cannot answer: no system columns in a CTE, its whole row is
	// a record, and a schema-qualified column cannot name it.
	"INSERT INTO users (full_name, email) VALUES ('Upsert Idiom', 'user9@example.com'), ('Upsert New', 'w15@example.com') ON CONFLICT (email) DO UPDATE SET full_name = EXCLUDED.full_name RETURNING email, (xmax = 0) AS inserted": router.ReasonSystemColumn,
	"UPDATE users SET active = true WHERE id = 7 RETURNING users":                       router.ReasonWholeRow,
	"UPDATE public.users SET tier = 'pro' WHERE id = 8 RETURNING public.users.id, tier": router.ReasonQualifiedColumn,
	// ON CONFLICT DO UPDATE that moves the key: the old key's row would stay behind.
	"INSERT INTO users (id, full_name, email) VALUES (800001, 'Key Moves', 'w7@example.com') ON CONFLICT (id) DO UPDATE SET id = 800002": router.ReasonKeyUpdate,
	// Truncating users as well would fail: orders has a foreign key to it.
	"TRUNCATE users_v2": router.ReasonTruncateReferenced,
	// Nothing a derived column reads changes, or the client writes both shapes itself.
	"UPDATE orders SET status = 'cancelled' WHERE id = 74":                     noMirrorNeeded,
	"DELETE FROM orders WHERE id BETWEEN 1400 AND 1405 RETURNING id":           noMirrorNeeded,
	"INSERT INTO orders (user_id, amount, amount_cents) VALUES (1, 2.50, 250)": noMirrorNeeded,
}

// writeCorpusStmt is one write of the corpus.
type writeCorpusStmt struct {
	line    int
	sql     string
	args    []any
	wantErr string // the SQLSTATE the client form must fail with ("" when it must succeed)
}

// loadWriteCorpus reads writeCorpusFile (format in its header; that of read_corpus.sql plus
// "-- error: SQLSTATE").
func loadWriteCorpus(t *testing.T) []writeCorpusStmt {
	t.Helper()
	var out []writeCorpusStmt
	for _, e := range corpusEntries(t, writeCorpusFile) {
		s := writeCorpusStmt{line: e.line, sql: e.text}
		if i := strings.LastIndex(s.sql, "-- error:"); i >= 0 {
			s.sql, s.wantErr = strings.TrimSpace(s.sql[:i]), strings.TrimSpace(s.sql[i+len("-- error:"):])
		}
		s.sql, s.args = splitArgs(t, writeCorpusFile, e.line, s.sql)
		out = append(out, s)
	}
	return out
}

// writeResult is what a client sees of a write: its description, rows and command tag.
type writeResult struct {
	res   *result
	cells [][]*string // the rows' raw text values (nil for NULL), unmasked
	tag   string
}

// runWrite describes and runs a write in tx with the extended protocol, results in text format.
// Values that differ between the two runs by nature are masked in the rendered rows:
// external_id (a uuid made by gen_random_uuid()), and the columns named in derived.
func runWrite(ctx context.Context, tx pgx.Tx, sql string, args []any, derived ...string) (*writeResult, error) {
	ctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	sd, err := tx.Conn().PgConn().Prepare(ctx, "", sql, nil)
	if err != nil {
		return nil, err
	}
	w := &writeResult{res: &result{params: sd.ParamOIDs}}
	rows, err := tx.Query(ctx, sql, append([]any{pgx.QueryResultFormats{pgx.TextFormatCode}}, args...)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var masked []bool
	for _, fd := range rows.FieldDescriptions() {
		w.res.names = append(w.res.names, fd.Name)
		w.res.oids = append(w.res.oids, fd.DataTypeOID)
		w.res.typmods = append(w.res.typmods, fd.TypeModifier)
		masked = append(masked, fd.Name == "external_id" && fd.DataTypeOID == pgtype.UUIDOID || slices.Contains(derived, fd.Name))
	}
	for rows.Next() {
		values := rows.RawValues()
		cells := make([]*string, len(values))
		shown := make([][]byte, len(values))
		for i, v := range values {
			if v != nil {
				s := string(v)
				cells[i] = &s
			}
			shown[i] = v
			if masked[i] {
				shown[i] = []byte("<masked>") // NULL included: the client form leaves a derived column NULL
			}
		}
		w.cells = append(w.cells, cells)
		w.res.rows = append(w.res.rows, renderRow(shown))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	w.tag = rows.CommandTag().String()
	return w, nil
}

// clientView is what the proxy hands the client for a mirrored run: a capture form's final
// SELECT becomes the client's command tag (and, when CountOnly, no rows at all).
func clientView(form *router.WriteForm, w *writeResult) (*result, string, error) {
	if form.Strategy != "capture" {
		return w.res, w.tag, nil
	}
	if want := fmt.Sprintf("SELECT %d", len(w.cells)); w.tag != want {
		return nil, "", fmt.Errorf("capture form's tag is %q, want %q", w.tag, want)
	}
	n := len(w.cells)
	view := w.res
	if form.CountOnly {
		if len(w.cells) != 1 || len(w.cells[0]) != 1 || w.cells[0][0] == nil {
			return nil, "", fmt.Errorf("count-only capture form returned %d rows of %d columns, want one count", len(w.cells), len(w.res.names))
		}
		c, err := strconv.Atoi(*w.cells[0][0])
		if err != nil {
			return nil, "", fmt.Errorf("count-only capture form returned %q", *w.cells[0][0])
		}
		n = c
		view = &result{params: w.res.params} // RowDescription becomes NoData
	}
	switch form.Verb {
	case "INSERT":
		return view, fmt.Sprintf("INSERT 0 %d", n), nil
	case "UPDATE", "DELETE":
		return view, fmt.Sprintf("%s %d", form.Verb, n), nil
	}
	return nil, "", fmt.Errorf("capture form with verb %q", form.Verb)
}

// The full-table comparison: the other shape equals the write map of the old one.
const (
	// users-split-name: users through the write map, EXCEPT ALL users_v2, and the reverse.
	usersMapped = `SELECT id, split_part(full_name, ' ', 1) AS first_name,
       nullif(substr(full_name, length(split_part(full_name, ' ', 1)) + 2), '') AS last_name,
       email, active, tier, birthday, profile, tags, external_id, created_at FROM users`
	usersV2Cols  = `SELECT id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at FROM users_v2`
	usersDiffSQL = `SELECT side, d::text FROM (
  SELECT 'only in write-map(users)' AS side, d FROM ((` + usersMapped + `) EXCEPT ALL (` + usersV2Cols + `)) d
  UNION ALL
  SELECT 'only in users_v2', d FROM ((` + usersV2Cols + `) EXCEPT ALL (` + usersMapped + `)) d
) x ORDER BY 1, 2 LIMIT 6`
	// orders-cents: every row's amount_cents is its amount's write map.
	ordersDiffSQL = `SELECT 'orders', format('id %s: amount %s, amount_cents %s, write map gives %s', id, amount, amount_cents, (amount * 100)::bigint)
FROM orders WHERE amount_cents IS DISTINCT FROM (amount * 100)::bigint ORDER BY id LIMIT 6`
)

// shapesDiffer runs the full-table comparison in tx: "" when both migrations' shapes agree.
func shapesDiffer(ctx context.Context, tx pgx.Tx) (string, error) {
	var b strings.Builder
	for _, q := range []string{usersDiffSQL, ordersDiffSQL} {
		rows, err := tx.Query(ctx, q)
		if err != nil {
			return "", err
		}
		for rows.Next() {
			var side, row string
			if err := rows.Scan(&side, &row); err != nil {
				rows.Close()
				return "", err
			}
			fmt.Fprintf(&b, "  %s: %s\n", side, row)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

// targetSQL reads the relation a write changes, the columns its client form sets and the mirror
// must not change otherwise: the mirrored run must leave it exactly as the client form does.
// external_id is left out (gen_random_uuid() differs between the runs; the full-table
// comparison shows the mirror copies it); for orders, the column the mirror derives is.
func targetSQL(form *router.WriteForm) string {
	switch {
	case form.Migration == "orders-cents" && form.Direction == "reverse":
		return "SELECT id, user_id, amount_cents, currency, status, placed_on, items, note, created_at FROM orders"
	case form.Migration == "orders-cents":
		return "SELECT id, user_id, amount, currency, status, placed_on, items, note, created_at FROM orders"
	case form.Strategy == "capture" && form.Direction == "reverse":
		return "SELECT id, first_name, last_name, email, active, tier, birthday, profile, tags, created_at FROM users_v2"
	default:
		return "SELECT id, full_name, email, active, tier, birthday, profile, tags, created_at FROM users"
	}
}

// derivedColumns names the columns an augment form sets on top of the client's: in RETURNING
// they show the value the mirror derived where the client form shows the stale one (or NULL), a
// difference by design; they are masked there, and the full-table comparison checks their values.
func derivedColumns(form *router.WriteForm) []string {
	switch {
	case form.Strategy != "augment":
		return nil
	case form.Direction == "reverse":
		return []string{"amount"}
	default:
		return []string{"amount_cents"}
	}
}

func readTarget(ctx context.Context, tx pgx.Tx, sql string) ([]string, error) {
	rows, err := tx.Query(ctx, "SELECT t::text FROM ("+sql+") t ORDER BY t.id")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// sequences are reset between the client run and the mirrored run: nextval is not rolled back.
var sequences = []string{"users_id_seq", "orders_id_seq"}

type seqState struct {
	last   int64
	called bool
}

func readSequences(ctx context.Context, tx pgx.Tx) ([]seqState, error) {
	out := make([]seqState, len(sequences))
	for i, s := range sequences {
		if err := tx.QueryRow(ctx, "SELECT last_value, is_called FROM "+s).Scan(&out[i].last, &out[i].called); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func restoreSequences(ctx context.Context, tx pgx.Tx, st []seqState) error {
	for i, s := range sequences {
		if _, err := tx.Exec(ctx, "SELECT setval($1::regclass, $2, $3)", s, st[i].last, st[i].called); err != nil {
			return err
		}
	}
	return nil
}

func sqlState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// writeOutcome is what happened to one corpus write.
type writeOutcome struct {
	form      *router.WriteForm
	reason    string // unmirrored: the planner's reasons, or noMirrorNeeded
	corpusErr error  // the client form misbehaved (fails, or does not fail as annotated): a corpus bug
	bug       string // how the mirrored form differs from the client form: a planner bug
	rows      int    // rows the client form affected (its tag's count)
	committed bool
}

func tagCount(tag string) int {
	f := strings.Fields(tag)
	if len(f) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(f[len(f)-1])
	return n
}

// compareWrite plans s and, in one transaction, runs its client form, rolls it back to a
// savepoint, resets the sequences, runs the mirrored form and compares; it commits the mirrored
// run when nothing differs (so the database stays consistent for the writes after it).
func (e *equivEnv) compareWrite(ctx context.Context, p *router.Planner, cat *router.Catalog, s writeCorpusStmt) (o writeOutcome) {
	plan := p.Plan(cat, equivPath, equivUser, s.sql)
	if len(plan.Statements) != 1 {
		o.corpusErr = fmt.Errorf("planned as %d statements", len(plan.Statements))
		return o
	}
	st := plan.Statements[0]
	o.form = st.Write
	if st.Write == nil {
		var reasons []string
		for _, u := range st.Unmirrored {
			reasons = append(reasons, u.Reason)
		}
		o.reason = strings.Join(slices.Compact(reasons), ",")
		if o.reason == "" {
			o.reason = noMirrorNeeded
		}
	}

	tx, err := e.conn.Begin(ctx)
	if err != nil {
		o.corpusErr = err
		return o
	}
	defer func() {
		if !o.committed {
			_ = tx.Rollback(ctx)
		}
	}()
	exec := func(sql string) error { _, err := tx.Exec(ctx, sql); return err }
	if err := exec("SAVEPOINT client_form"); err != nil {
		o.corpusErr = err
		return o
	}
	seqs, err := readSequences(ctx, tx)
	if err != nil {
		o.corpusErr = err
		return o
	}
	var derived []string
	if st.Write != nil {
		derived = derivedColumns(st.Write)
	}
	orig, origErr := runWrite(ctx, tx, s.sql, s.args, derived...)
	switch {
	case s.wantErr != "" && sqlState(origErr) != s.wantErr:
		o.corpusErr = fmt.Errorf("client form should fail with %s, got %v", s.wantErr, origErr)
		return o
	case s.wantErr == "" && origErr != nil:
		o.corpusErr = fmt.Errorf("client form fails: %w", origErr)
		return o
	}

	if st.Write == nil {
		if o.reason != noMirrorNeeded || s.wantErr != "" {
			return o // an unmirrored write would leave drift: rolled back
		}
		o.rows = tagCount(orig.tag)
		diff, err := shapesDiffer(ctx, tx)
		switch {
		case err != nil:
			o.corpusErr = err
		case diff != "":
			o.bug = "the planner gave no mirrored form, but the client form alone leaves the shapes different:\n" + diff
		default:
			o.committed = tx.Commit(ctx) == nil
		}
		return o
	}

	var origTarget []string
	if s.wantErr == "" {
		o.rows = tagCount(orig.tag)
		if origTarget, err = readTarget(ctx, tx, targetSQL(st.Write)); err != nil {
			o.corpusErr = err
			return o
		}
	}
	if err := exec("ROLLBACK TO SAVEPOINT client_form"); err != nil {
		o.corpusErr = err
		return o
	}
	if err := restoreSequences(ctx, tx, seqs); err != nil {
		o.corpusErr = err
		return o
	}
	mir, mirErr := runWrite(ctx, tx, st.Write.SQL, s.args, derived...)
	if s.wantErr != "" {
		if got := sqlState(mirErr); got != s.wantErr {
			o.bug = fmt.Sprintf("the client form fails with %s; the mirrored form %s", s.wantErr,
				map[bool]string{true: "succeeds (tag " + tagOf(mir) + ")", false: fmt.Sprintf("fails with %s: %v", got, mirErr)}[mirErr == nil])
		}
		return o
	}
	if mirErr != nil {
		o.bug = fmt.Sprintf("the mirrored form fails where the client form runs (tag %s): %v", orig.tag, mirErr)
		return o
	}
	var b strings.Builder
	view, tag, err := clientView(st.Write, mir)
	if err != nil {
		fmt.Fprintf(&b, "%v\n", err)
	} else {
		if tag != orig.tag {
			fmt.Fprintf(&b, "command tags differ: client form %q, mirrored form %q\n", orig.tag, tag)
		}
		b.WriteString(difference(orig.res, view, false))
	}
	if mirTarget, err := readTarget(ctx, tx, targetSQL(st.Write)); err != nil {
		o.corpusErr = err
		return o
	} else if onlyOrig, onlyMir := multisetDiff(origTarget, mirTarget); len(onlyOrig)+len(onlyMir) > 0 {
		fmt.Fprintf(&b, "the written relation differs after the two runs (%d rows only after the client form, %d only after the mirrored form):\n", len(onlyOrig), len(onlyMir))
		for i := 0; i < len(onlyOrig) && i < 3; i++ {
			fmt.Fprintf(&b, "  client form:   %s\n", onlyOrig[i])
		}
		for i := 0; i < len(onlyMir) && i < 3; i++ {
			fmt.Fprintf(&b, "  mirrored form: %s\n", onlyMir[i])
		}
	}
	diff, err := shapesDiffer(ctx, tx)
	if err != nil {
		o.corpusErr = err
		return o
	}
	if diff != "" {
		fmt.Fprintf(&b, "after the mirrored form the shapes differ (new != write-map(old)):\n%s", diff)
	}
	if o.bug = b.String(); o.bug == "" {
		o.committed = tx.Commit(ctx) == nil
	}
	return o
}

func tagOf(w *writeResult) string {
	if w == nil {
		return ""
	}
	return w.tag
}

// TestWriteEquivalence: every write of the corpus, in its mirrored form, gives the client the
// same rows and command tag as its client form, changes its own relation the same way, and leaves
// the other shape equal to the write map of the old one (a full-table comparison), on both example
// migrations and in both directions; and the comparison does catch a write left unmirrored.
func TestWriteEquivalence(t *testing.T) {
	ctx := context.Background()
	corpus := loadWriteCorpus(t)
	env := setupEquivalence(t)
	for _, sql := range []string{
		"set statement_timeout = '10s'",
		"create table staging (id bigint primary key, name text, mail text, ok boolean)",
		`insert into staging values (50, 'Stage Fifty', 'c2-user10@example.com', true),
			(51, 'Stage  Two Spaces', 'r2@example.com', true), (52, 'Stagemono', 'nomatch52@example.com', false),
			(53, 'Stage Fifty Three', 'nomatch53@example.com', true)`,
	} {
		if _, err := env.conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	check := func(t *testing.T) {
		t.Helper()
		tx, err := env.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx) //nolint:errcheck // read only
		if diff, err := shapesDiffer(ctx, tx); err != nil || diff != "" {
			t.Fatalf("the example data is not consistent to begin with: %v\n%s", err, diff)
		}
	}
	check(t)

	t.Run("corpus", func(t *testing.T) {
		p, err := router.NewPlanner(1000, nil)
		if err != nil {
			t.Fatal(err)
		}
		cat := router.NewCatalog(env.gen)
		var mirrored, equal, unmirrored, noMirror, errorCases, failures int
		perShape := map[string]int{}
		var zeroRows []string
		for _, s := range corpus {
			where := fmt.Sprintf("%s:%d", writeCorpusFile, s.line)
			o := env.compareWrite(ctx, p, cat, s)
			want, listed := unmirroredWrites[s.sql]
			switch {
			case o.corpusErr != nil:
				failures++
				t.Errorf("%s: corpus bug (fix the corpus): %v\n  %s", where, o.corpusErr, s.sql)
				continue
			case o.form == nil && !listed:
				failures++
				t.Errorf("%s: the planner gives no mirrored form (%s); list it in unmirroredWrites with the reason, or fix the planner:\n  %s", where, o.reason, s.sql)
				continue
			case o.form == nil && want != o.reason:
				failures++
				t.Errorf("%s: unmirrored for %s, want %s:\n  %s", where, o.reason, want, s.sql)
				continue
			case o.form != nil && listed:
				failures++
				t.Errorf("%s: listed in unmirroredWrites (%s) but mirrored (%s %s): remove it from the list\n  %s", where, want, o.form.Strategy, o.form.Direction, s.sql)
			}
			if o.form == nil {
				if o.reason == noMirrorNeeded {
					noMirror++
				} else {
					unmirrored++
				}
				if o.bug != "" {
					failures++
					t.Errorf("%s: PLANNER BUG: %s\n  %s", where, o.bug, s.sql)
				}
				continue
			}
			if s.wantErr != "" {
				errorCases++
				if o.bug != "" {
					failures++
					t.Errorf("%s: PLANNER BUG (%s %s %s): %s\n  client:   %s\n  mirrored: %s", where, o.form.Strategy, o.form.Direction, o.form.Verb, o.bug, s.sql, o.form.SQL)
				}
				continue
			}
			mirrored++
			perShape[o.form.Migration+" "+o.form.Strategy+" "+o.form.Direction+" "+o.form.Verb]++
			if o.rows == 0 {
				zeroRows = append(zeroRows, where)
			}
			if o.bug != "" {
				failures++
				t.Errorf("%s: PLANNER BUG (%s %s %s, count_only=%v): the mirrored form differs from the client form\n  client:   %s\n  mirrored: %s\n%s",
					where, o.form.Strategy, o.form.Direction, o.form.Verb, o.form.CountOnly, s.sql, o.form.SQL, o.bug)
			} else {
				equal++
			}
		}
		t.Logf("write equivalence: %d corpus writes; %d mirrored and compared (%d equivalent, %d differ), %d unmirrored as expected, %d needing no mirror, %d failing client forms compared, %d failures",
			len(corpus), mirrored, equal, mirrored-equal, unmirrored, noMirror, errorCases, failures)
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range perShape {
				if !yield(k) {
					return
				}
			}
		}) {
			t.Logf("  compared %-45s %d", k, perShape[k])
		}
		t.Logf("  writes whose tag counts no row (on purpose: ON CONFLICT DO NOTHING, no match, TRUNCATE): %v", zeroRows)
		if mirrored < minMirrored {
			t.Errorf("only %d corpus writes mirrored and compared, want at least %d", mirrored, minMirrored)
		}
		for _, shape := range []string{
			"users-split-name capture forward INSERT", "users-split-name capture forward UPDATE", "users-split-name capture forward DELETE",
			"users-split-name capture reverse INSERT", "users-split-name capture reverse UPDATE", "users-split-name capture reverse DELETE",
			"orders-cents augment forward INSERT", "orders-cents augment forward UPDATE", "orders-cents augment reverse UPDATE",
		} {
			if perShape[shape] == 0 {
				t.Errorf("no corpus write compared as %s", shape)
			}
		}
		for sql := range unmirroredWrites {
			if !slices.ContainsFunc(corpus, func(s writeCorpusStmt) bool { return s.sql == sql }) {
				t.Errorf("unmirroredWrites lists a statement not in the corpus: %s", sql)
			}
		}
	})

	t.Run("negative-controls", func(t *testing.T) {
		negativeWriteControls(t, ctx, env)
	})
}

// negativeWriteControls proves the full-table comparison sees drift: a client form run alone (as
// if the planner had not mirrored it), and a mirrored form with a wrong write map, must each make
// it report a difference.
func negativeWriteControls(t *testing.T, ctx context.Context, env *equivEnv) {
	p, err := router.NewPlanner(1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	cat := router.NewCatalog(env.gen)
	ids := func(q string) int64 {
		var id int64
		if err := env.conn.QueryRow(ctx, q).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	// Rows that still exist however the corpus ended (TRUNCATE empties the tables): insert some.
	tx, err := env.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{
		"INSERT INTO users (full_name, email) VALUES ('Control One', 'control1@example.com'), ('Cher', 'control2@example.com'), ('No Orders', 'control3@example.com')",
		"INSERT INTO orders (user_id, amount) SELECT id, 12.34 FROM users WHERE email IN ('control1@example.com', 'control2@example.com')",
	} {
		st := p.Plan(cat, equivPath, equivUser, sql).Statements[0]
		if st.Write == nil {
			t.Fatalf("not mirrored: %s", sql)
		}
		if _, err := tx.Exec(ctx, st.Write.SQL); err != nil {
			t.Fatalf("%v\n%s", err, st.Write.SQL)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	uid := ids("SELECT min(id) FROM users WHERE email = 'control1@example.com'")
	oid := ids("SELECT min(id) FROM orders")
	controls := []struct {
		name, sql string
		mirrored  bool // run the planner's mirrored form, tampered as below, instead of the client form
		from, to  string
		want      string
	}{
		{name: "update-old", sql: fmt.Sprintf("UPDATE users SET full_name = 'Negative Control' WHERE id = %d", uid), want: "only in users_v2"},
		{name: "insert-old", sql: "INSERT INTO users (full_name, email) VALUES ('Neg Ative', 'neg@example.com')", want: "only in write-map(users)"},
		{name: "delete-old", sql: fmt.Sprintf("DELETE FROM users WHERE id = %d", ids("SELECT id FROM users WHERE email = 'control3@example.com'")), want: "only in users_v2"},
		{name: "update-new-uuid", sql: fmt.Sprintf("UPDATE users_v2 SET external_id = gen_random_uuid() WHERE id = %d", uid), want: "only in users_v2"},
		{name: "update-new-created-at", sql: fmt.Sprintf("UPDATE users_v2 SET created_at = created_at + interval '1 microsecond' WHERE id = %d", uid), want: "only in users_v2"},
		{name: "update-new-last-name", sql: fmt.Sprintf("UPDATE users_v2 SET last_name = '' WHERE id = %d", ids("SELECT id FROM users WHERE email = 'control2@example.com'")), want: "only in users_v2"},
		{name: "update-amount", sql: fmt.Sprintf("UPDATE orders SET amount = amount + 0.01 WHERE id = %d", oid), want: "orders"},
		{name: "insert-amount", sql: fmt.Sprintf("INSERT INTO orders (user_id, amount) VALUES (%d, 1.23)", uid), want: "orders"},
		{name: "wrong-write-map", sql: fmt.Sprintf("UPDATE users SET full_name = 'Grace Brewster Hopper' WHERE id = %d", uid), mirrored: true,
			from: "split_part(full_name, ' ', 1),", to: "split_part(full_name, ' ', 2),", want: "only in users_v2"},
		{name: "wrong-derived-column", sql: fmt.Sprintf("UPDATE orders SET amount = 10.05 WHERE id = %d", oid), mirrored: true,
			from: "10.05::numeric(12, 2) * 100)::bigint", to: "10.05::numeric(12, 2) * 10)::bigint", want: "orders"},
	}
	for _, c := range controls {
		t.Run(c.name, func(t *testing.T) {
			sql := c.sql
			if c.mirrored {
				st := p.Plan(cat, equivPath, equivUser, c.sql).Statements[0]
				if st.Write == nil || !strings.Contains(st.Write.SQL, c.from) {
					t.Fatalf("no mirrored form containing %q for %s", c.from, c.sql)
				}
				// The untampered form keeps the shapes equal: the tampering alone makes the difference.
				tx, err := env.conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, st.Write.SQL); err != nil {
					t.Fatal(err)
				}
				if diff, err := shapesDiffer(ctx, tx); err != nil || diff != "" {
					t.Fatalf("untampered mirrored form: %v\n%s", err, diff)
				}
				_ = tx.Rollback(ctx)
				sql = strings.Replace(st.Write.SQL, c.from, c.to, 1)
			}
			tx, err := env.conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) //nolint:errcheck // a control never stays
			tag, err := tx.Exec(ctx, sql)
			if err != nil {
				t.Fatalf("%v\n%s", err, sql)
			}
			if tag.RowsAffected() == 0 {
				t.Fatalf("changed no row: %s", sql)
			}
			diff, err := shapesDiffer(ctx, tx)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(diff, c.want) {
				t.Fatalf("the full-table comparison does not report %q after %s; got:\n%s", c.want, sql, diff)
			}
			t.Logf("%s: reported\n%s", c.name, diff)
		})
	}
}
