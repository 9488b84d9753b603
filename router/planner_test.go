package router

import (
	"fmt"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgcanary/pgcanary/config"
)

func TestPlanCacheAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewPromMetrics(reg)
	p, err := NewPlanner(2, m)
	if err != nil {
		t.Fatal(err)
	}
	cat := testCatalog()
	a := p.Plan(cat, "public", "u", "SELECT * FROM users")
	b := p.Plan(cat, "public", "u", "SELECT * FROM users")
	if a != b || a.Statements[0].Read == nil {
		t.Fatal("second plan of the same text was not the cached one")
	}
	// Another search_path is another key: it may resolve other relations.
	if c := p.Plan(cat, "other, public", "u", "SELECT * FROM users"); c == a || c.Statements[0].Read != nil {
		t.Fatal("search_path not part of the cache key")
	}
	p.Plan(cat, "public", "u", "SELECT * FROM users FOR UPDATE")
	if got := testutil.ToFloat64(m.hits); got != 1 {
		t.Fatalf("hits %v", got)
	}
	if got := testutil.ToFloat64(m.misses); got != 3 {
		t.Fatalf("misses %v", got)
	}
	if got := testutil.ToFloat64(m.unrewritten.WithLabelValues("users-split-name", ReasonLocking)); got != 1 {
		t.Fatalf("unrewritten %v", got)
	}
	// Bounded: with room for 2, the oldest plan is gone.
	if p.cache.Len() != 2 {
		t.Fatalf("cache holds %d plans, bound 2", p.cache.Len())
	}
}

func TestParseSearchPath(t *testing.T) {
	cases := map[string]string{
		`"$user", public`:    "pg_catalog,alice,public",
		`public, pg_catalog`: "public,pg_catalog",
		`"My Schema", Other`: "pg_catalog,My Schema,other",
		``:                   "pg_catalog",
		`"a,b", c`:           "pg_catalog,a,b,c",
	}
	for in, want := range cases {
		if got := strings.Join(ParseSearchPath(in, "alice"), ","); got != want {
			t.Errorf("ParseSearchPath(%q) = %s, want %s", in, got, want)
		}
	}
}

// BenchmarkPlanCacheHit: a cached plan must cost well under a microsecond.
func BenchmarkPlanCacheHit(b *testing.B) {
	p, _ := NewPlanner(1000, nil)
	cat := testCatalog()
	const sql = "SELECT u.full_name, o.amount FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = $1 ORDER BY o.id LIMIT 20"
	p.Plan(cat, `"$user", public`, "app", sql)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		p.Plan(cat, `"$user", public`, "app", sql)
	}
}

// BenchmarkPlanMiss: parsing, rewriting and deparsing one read, for scale.
func BenchmarkPlanMiss(b *testing.B) {
	cat := testCatalog()
	sp := ParseSearchPath("public", "app")
	for range b.N {
		build(cat, sp, "SELECT u.full_name FROM users u WHERE u.id = $1")
	}
}

// FuzzPlanner: any SQL never panics the planner, and every form it produces (read and write)
// parses. Run longer with: go test ./router -run XXX -fuzz FuzzPlanner -fuzztime 5m
func FuzzPlanner(f *testing.F) {
	for _, s := range []string{
		"SELECT * FROM users", "SELECT full_name FROM users u WHERE u.id = $1",
		"WITH users AS (SELECT 1) SELECT * FROM users", "SELECT 1; SELECT * FROM orders",
		"INSERT INTO users VALUES (1)", "SELECT * FROM users FOR UPDATE", "", ";;", "SELECT (",
		"SELECT * FROM users u, LATERAL (SELECT * FROM orders o WHERE o.user_id = u.id) x",
		"INSERT INTO users (full_name, email) VALUES ($1, $2) RETURNING id", "UPDATE users u SET email = $1 WHERE u.id = $2",
		"DELETE FROM users_v2 WHERE id = 1 RETURNING *", "UPDATE orders SET amount = amount + 1 WHERE id = 2",
		"INSERT INTO orders (user_id, amount) VALUES (1, 2), (3, 4) ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount",
		"INSERT INTO orders VALUES (1, 2, 3)", "TRUNCATE users, orders", `INSERT INTO users AS "we""ird" (full_name) VALUES ('a')`,
	} {
		f.Add(s)
	}
	cat := testCatalog()
	sp := ParseSearchPath(`"$user", public`, "app")
	f.Fuzz(func(t *testing.T, sql string) {
		plan := build(cat, sp, sql)
		for _, st := range plan.Statements {
			if st.Read != nil {
				if _, err := pg_query.Parse(st.Read.SQL); err != nil {
					t.Fatalf("read form of %q does not parse: %v\n%s", sql, err, st.Read.SQL)
				}
			}
			if st.Write != nil {
				if _, err := pg_query.Parse(st.Write.SQL); err != nil {
					t.Fatalf("write form of %q does not parse: %v\n%s", sql, err, st.Write.SQL)
				}
			}
		}
	})
}

func TestPrefilterSkipsUnrelatedSQL(t *testing.T) {
	p, _ := NewPlanner(10, nil)
	cat := testCatalog()
	if plan := p.Plan(cat, "public", "u", "SELECT * FROM accounts WHERE id = $1"); !plan.Untouched {
		t.Fatal("a statement naming no migrated relation was parsed")
	}
	for _, sql := range []string{"select * from USERS", `SELECT * FROM "users"`, "SELECT * FROM Orders o"} {
		if plan := p.Plan(cat, "public", "u", sql); plan.Untouched || plan.Statements[0].Read == nil {
			t.Fatalf("%q: not planned as a read of a migration", sql)
		}
	}
}

// TestPlanByShape: texts that differ only in their literals share one plan of their shape, and
// each gets its own literals back, verbatim, in its forms.
func TestPlanByShape(t *testing.T) {
	p, _ := NewPlanner(100, nil)
	cat := testCatalog()
	a := p.Plan(cat, "public", "u", "SELECT full_name FROM users WHERE id = 5 AND email = 'a''b@x'")
	b := p.Plan(cat, "public", "u", "SELECT full_name FROM users WHERE id = -17 AND email = E'c\\nd'")
	if p.shapes.Len() != 1 || p.cache.Len() != 0 || p.instances.Len() != 2 {
		t.Fatalf("shapes %d, exact %d, instances %d: want one shape, two instances, no exact plans", p.shapes.Len(), p.cache.Len(), p.instances.Len())
	}
	if !strings.Contains(a.Statements[0].Read.SQL, "id = 5 AND email = 'a''b@x'") ||
		!strings.Contains(b.Statements[0].Read.SQL, "id = -17 AND email = E'c\\nd'") {
		t.Fatalf("literals not restored:\n%s\n%s", a.Statements[0].Read.SQL, b.Statements[0].Read.SQL)
	}
	if a.Statements[0].SQL != "SELECT full_name FROM users WHERE id = 5 AND email = 'a''b@x'" {
		t.Fatalf("the old form is not the client's text: %q", a.Statements[0].SQL)
	}
	w := p.Plan(cat, "public", "u", "UPDATE orders SET amount = 12.5 WHERE id = 3")
	if w.Statements[0].Write == nil || !strings.Contains(w.Statements[0].Write.SQL, "amount_cents = (12.5::numeric(12, 2) * 100)::bigint WHERE id = 3") {
		t.Fatalf("write form: %+v", w.Statements[0].Write)
	}
	// The same shape with a client parameter where the first text had a literal: the first
	// text's template must not fill the parameter's place (it left "SET full_name =  WHERE").
	p.Plan(cat, "public", "u", "UPDATE users SET full_name = 'A B' WHERE id = 15")
	mixed := p.Plan(cat, "public", "u", "UPDATE users SET full_name = $1 WHERE id = 15")
	if form := mixed.Statements[0].Write.SQL; !strings.Contains(form, "SET full_name = $1 WHERE id = 15") {
		t.Fatalf("client parameter lost from the form: %s", form)
	}
	// Two statements, or a literal Normalize cannot lift into valid SQL, take the exact path.
	if p.Plan(cat, "public", "u", "SELECT 1; SELECT * FROM users WHERE id = 2").Statements[1].Read == nil {
		t.Fatal("multi-statement text not planned")
	}
	if p.Plan(cat, "public", "u", "SELECT * FROM users WHERE created_at > now() - interval '1 day'").Statements[0].Read == nil {
		t.Fatal("typed-literal text not planned")
	}
}

// BenchmarkPlanByShape: a text with new literals, its shape already planned.
func BenchmarkPlanByShape(b *testing.B) {
	p, _ := NewPlanner(1000, nil)
	cat := testCatalog()
	p.Plan(cat, "public", "app", "SELECT full_name, email FROM users WHERE id = 1")
	b.ReportAllocs()
	for i := range b.N {
		p.Plan(cat, "public", "app", fmt.Sprintf("SELECT full_name, email FROM users WHERE id = %d", i+2))
	}
}

// FuzzPlanByShape: any SQL through Plan (and so the shape path for literal-bearing texts) never
// panics, and every form parses.
func FuzzPlanByShape(f *testing.F) {
	for _, s := range []string{
		"SELECT full_name FROM users WHERE id = 5", "SELECT * FROM users WHERE id = -5 AND email = 'x''y'",
		"UPDATE orders SET amount = 1.5 WHERE id = 2", "INSERT INTO users (full_name, email) VALUES ('a b', E'c\\nd')",
		"SELECT * FROM users WHERE id IN (1, 2, 3) LIMIT 10 OFFSET $1", "DELETE FROM users WHERE id = B'101'::int",
		"SELECT $1, 'users' FROM users", "SELECT * FROM users WHERE full_name = $$dollar 'quoted'$$",
	} {
		f.Add(s)
	}
	cat := testCatalog()
	f.Fuzz(func(t *testing.T, sql string) {
		p, _ := NewPlanner(10, nil)
		for range 2 { // the second call exercises the cached shape and instance
			plan := p.Plan(cat, `"$user", public`, "app", sql)
			for _, st := range plan.Statements {
				for _, form := range []string{readSQL(st), writeSQL(st)} {
					if form == "" {
						continue
					}
					if _, err := pg_query.Parse(form); err != nil {
						t.Fatalf("form of %q does not parse: %v\n%s", sql, err, form)
					}
				}
			}
		}
	})
}

func readSQL(st *StatementPlan) string {
	if st.Read == nil {
		return ""
	}
	return st.Read.SQL
}

func writeSQL(st *StatementPlan) string {
	if st.Write == nil {
		return ""
	}
	return st.Write.SQL
}

// TestLockingReadCompareForm: a locking read is never routed, but gets comparison forms without
// its locking clauses; one with another blocker gets none; literals are kept (no shape template).
func TestLockingReadCompareForm(t *testing.T) {
	p, _ := NewPlanner(100, nil)
	cat := testCatalog()
	st := p.Plan(cat, "public", "u", "SELECT full_name FROM users WHERE id = 7 ORDER BY id FOR UPDATE").Statements[0]
	if st.Read != nil || st.Compare == nil {
		t.Fatalf("read %+v compare %+v", st.Read, st.Compare)
	}
	c := st.Compare
	if strings.Contains(c.OldSQL, "FOR UPDATE") || strings.Contains(c.SQL, "FOR UPDATE") || !c.Ordered {
		t.Fatalf("compare forms keep locks or lost ORDER BY:\n%s\n%s", c.OldSQL, c.SQL)
	}
	if !strings.Contains(c.OldSQL, "id = 7") || !strings.Contains(c.SQL, "users_v2") || !strings.Contains(c.SQL, "id = 7") {
		t.Fatalf("compare forms:\n%s\n%s", c.OldSQL, c.SQL)
	}
	if st := p.Plan(cat, "public", "u", "SELECT ctid FROM users FOR SHARE").Statements[0]; st.Compare != nil {
		t.Fatal("a read with a system column got comparison forms")
	}
}

// TestUnstableReadsAreNotCompared: a read whose answer may change between two runs over the same
// data is routed, but marked so that no comparison reports its differences as the migration's.
func TestUnstableReadsAreNotCompared(t *testing.T) {
	p, _ := NewPlanner(100, nil)
	cat := testCatalog()
	for sql, want := range map[string]string{
		"SELECT * FROM users LIMIT 2":                                             "limit_without_order",
		"SELECT * FROM users ORDER BY id LIMIT 2":                                 "",
		"SELECT full_name FROM users WHERE id IN (SELECT id FROM users OFFSET 3)": "limit_without_order",
		"SELECT full_name, random() FROM users WHERE id = 1":                      "volatile_function",
		"SELECT full_name FROM users WHERE id = 1":                                "",
		// Ties of an ORDER BY that does not tell rows apart fall as the plan puts them.
		"SELECT id, full_name FROM users ORDER BY tier LIMIT 5":                      "limit_with_partial_order",
		"SELECT DISTINCT ON (tier) tier, full_name FROM users ORDER BY tier":         "limit_with_partial_order",
		"SELECT DISTINCT ON (tier) tier, full_name FROM users u ORDER BY tier, u.id": "",
		"SELECT DISTINCT tier FROM users ORDER BY tier":                              "",
	} {
		st := p.Plan(cat, "public", "u", sql).Statements[0]
		if st.Read == nil {
			t.Fatalf("%s: not routed", sql)
		}
		if st.Read.Unstable != want {
			t.Errorf("%s: unstable %q, want %q", sql, st.Read.Unstable, want)
		}
	}
}

// TestRowOrderCountsOnlyWhenTotal: comparisons take row order as part of the answer only when
// the ORDER BY tells every row apart (the migration's key); otherwise they compare multisets.
func TestRowOrderCountsOnlyWhenTotal(t *testing.T) {
	p, _ := NewPlanner(100, nil)
	cat := testCatalog()
	for sql, want := range map[string]bool{
		"SELECT * FROM users ORDER BY id":                  true,
		"SELECT * FROM users u ORDER BY u.tier, u.id":      true,
		"SELECT * FROM users ORDER BY tier":                false,
		"SELECT * FROM users":                              false,
		"SELECT u.id FROM users u, orders o ORDER BY u.id": false,
	} {
		if st := p.Plan(cat, "public", "u", sql).Statements[0]; st.Read == nil || st.Read.Ordered != want {
			t.Errorf("%s: read %+v, want Ordered %v", sql, st.Read, want)
		}
	}
}

// TestProjectionCastsOnlyWhatDiffers: a new column of exactly the old type and modifier is read
// as it is; another modifier, another type or an expression gets the cast to the old type, unless
// the expression ends in that very cast.
func TestProjectionCastsOnlyWhatDiffers(t *testing.T) {
	col := func(name, typ string, oid uint32, typmod int32) config.Column {
		return config.Column{Name: name, TypeName: typ, TypeSQL: typ, TypeOID: oid, Typmod: typmod}
	}
	old := &config.Relation{OID: 1, Schema: "public", Name: "t", PrimaryKey: []string{"id"}, NameSchemas: []string{"public"}, Columns: []config.Column{
		col("id", "integer", 23, -1), col("code", "character varying(20)", 1043, 24), col("label", "text", 25, -1),
		col("Note", "text", 25, -1), col("n", "integer", 23, -1), col("title", "text", 25, -1),
		col("short", "character varying(20)", 1043, 24), col("shorter", "character varying(20)", 1043, 24),
	}}
	neu := &config.Relation{OID: 2, Schema: "public", Name: "t2", NameSchemas: []string{"public"}, Columns: []config.Column{
		col("id", "integer", 23, -1), col("code", "character varying(50)", 1043, 54), col("caption", "text", 25, -1),
		col("Note", "text", 25, -1), col("n", "bigint", 20, -1), col("title", "text", 25, -1),
	}}
	gen := &config.Generation{Number: 1, Config: &config.Config{Migrations: []config.Migration{
		{Name: "m", Old: "public.t", New: "public.t2", Key: []string{"id"},
			Read: map[string]string{"label": "caption", "title": "upper(title)",
				"short": "upper(caption)::varchar(20)", "shorter": "upper(caption)::varchar(10)"}},
	}}, Catalog: config.Catalog{"m": {Old: old, New: neu}}}
	p, _ := NewPlanner(100, nil)
	st := p.Plan(NewCatalog(gen), "public", "u", `SELECT id, code, label, "Note", n, title, short, shorter FROM t`).Statements[0]
	if st.Read == nil {
		t.Fatal("not planned as a read")
	}
	const want = `SELECT id, code::varchar(20) AS code, caption AS label, "Note", n::int AS n, upper(title)::text AS title, ` +
		`upper(caption)::varchar(20) AS short, upper(caption)::varchar(10)::varchar(20) AS shorter FROM public.t2 t`
	if st.Read.SQL != want {
		t.Fatalf("read form\n got %s\nwant %s", st.Read.SQL, want)
	}
}

// TestPlanSQLPrepare: PREPARE of a mirrored write is sent with the mirrored form under the same
// name and parameter types; the prepared write's own plan comes with it. EXECUTE names are found.
func TestPlanSQLPrepare(t *testing.T) {
	p, _ := NewPlanner(100, nil)
	cat := testCatalog()
	for _, sql := range []string{
		"PREPARE q (text, bigint) AS UPDATE users SET full_name = $1 WHERE id = $2",
		"prepare q as update users set full_name = 'x' where id = $1",
	} {
		st := p.Plan(cat, "public", "u", sql).Statements[0]
		if st.Prepare == nil {
			t.Fatalf("%s: no prepared form (unmirrored %v)", sql, st.Unmirrored)
		}
		w := st.Prepare.Statement.Write
		if w == nil || !strings.HasPrefix(st.Prepare.SQL, "PREPARE q") || !strings.Contains(st.Prepare.SQL, "AS "+w.SQL) {
			t.Fatalf("%s: prepared form %q, write %+v", sql, st.Prepare.SQL, w)
		}
		if strings.Contains(sql, "text, bigint") && !strings.HasPrefix(st.Prepare.SQL, "PREPARE q(text, bigint) AS WITH") {
			t.Fatalf("parameter types lost: %s", st.Prepare.SQL)
		}
		if st.Prepare.Name != "q" || st.Write != nil || len(st.Migrations) != 1 {
			t.Fatalf("%s: %+v", sql, st)
		}
	}
	if st := p.Plan(cat, "public", "u", "PREPARE r AS SELECT full_name FROM users WHERE id = $1").Statements[0]; st.Prepare != nil {
		t.Fatal("a prepared read got a prepared write form")
	}
	if got := ExecutedNames("SELECT 1; EXECUTE q('a', 2); execute \"Q2\""); strings.Join(got, ",") != ",q,Q2" {
		t.Fatalf("executed names %q", got)
	}
}

// A DO block's body is a literal, so the normalized text (DO $1) does not parse: it must not
// become a shape that hides the statements after it from planning.
func TestDoBlockDoesNotHideStatements(t *testing.T) {
	p, err := NewPlanner(10, nil)
	if err != nil {
		t.Fatal(err)
	}
	sql := "DO $$ BEGIN RAISE NOTICE 'x'; END $$; INSERT INTO orders (id, user_id, amount) VALUES (97, 24, 0)"
	plan := p.Plan(testCatalog(), "public", "u", sql)
	if len(plan.Statements) != 2 || plan.Statements[1].Write == nil {
		t.Fatalf("plan of %q: %d statements, the INSERT not mirrored", sql, len(plan.Statements))
	}
}

// TestReadOrigins: the origins of a routed read's columns are told for plain references to the
// old relation's columns (stars of migrated relations expanded), and left unknown (0) for
// expressions, for other relations' columns, and after a star that cannot be expanded.
func TestReadOrigins(t *testing.T) {
	p, _ := NewPlanner(100, nil)
	cat := testCatalog()
	tables := func(os []ColumnOrigin) string {
		var b strings.Builder
		for _, o := range os {
			fmt.Fprint(&b, o.TableOID)
		}
		return b.String()
	}
	for sql, want := range map[string]string{
		"SELECT * FROM users WHERE id = 1":                                                    "111111",
		"SELECT full_name AS n, upper(full_name), u.tier FROM users u":                        "101",
		"SELECT u.*, o.amount, x.y FROM users u JOIN orders o ON o.user_id = u.id, other.t x": "11111130",
		"SELECT *, full_name FROM users u JOIN other.t x ON true":                             "111111", // then x's columns: unknown
		"SELECT id, * FROM users JOIN orders USING (id)":                                      "",
		"SELECT amount, status FROM orders":                                                   "33",
		"SELECT 1 FROM users":                                                                 "",
	} {
		st := p.Plan(cat, "public", "u", sql).Statements[0]
		if st.Read == nil {
			t.Fatalf("%s: not routed", sql)
		}
		if got := tables(st.Read.Origins); got != want {
			t.Errorf("%s: origins %q, want %q", sql, got, want)
		}
	}
}

// TestReadMayFail: a read over a projection whose expressions raise for no value (concat_ws,
// a cast to text) cannot fail where the old form would not; a cast to numeric can.
func TestReadMayFail(t *testing.T) {
	p, _ := NewPlanner(100, nil)
	cat := testCatalog()
	for sql, want := range map[string]bool{
		"SELECT full_name FROM users WHERE id = 1":                                false,
		"SELECT amount FROM orders WHERE id = 1":                                  true,
		"SELECT u.full_name, o.id FROM users u JOIN orders o ON o.user_id = u.id": true,
	} {
		st := p.Plan(cat, "public", "u", sql).Statements[0]
		if st.Read == nil || st.Read.MayFail != want {
			t.Errorf("%s: read %+v, want MayFail %v", sql, st.Read, want)
		}
	}
	for expr, want := range map[string]bool{
		"concat_ws(' ', a, b)::text":  false,
		"coalesce(nullif(a, ''), b)":  false,
		"upper(a) || b":               true,
		"a::numeric":                  true,
		"(a / 100.0)::numeric(12, 2)": true,
		"count(*)":                    true,
	} {
		tree, err := pg_query.Parse("SELECT " + expr)
		if err != nil {
			t.Fatal(err)
		}
		if got := mayRaise(tree.Stmts[0].Stmt.GetSelectStmt().TargetList[0].GetResTarget().Val); got != want {
			t.Errorf("%s: may raise %v, want %v", expr, got, want)
		}
	}
}
