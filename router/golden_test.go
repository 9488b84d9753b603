package router

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgcanary/pgcanary/config"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with the planner's current output")

// testCatalog mirrors examples/schema.sql without a database: users → users_v2 (a new table) and
// orders.amount_cents (new columns of the same table), plus a same-named users in schema other.
func testCatalog() *Catalog {
	col := func(name, typ string) config.Column {
		return config.Column{Name: name, TypeName: typ, TypeSQL: typ, TypeOID: testTypeOIDs[typ], Typmod: -1}
	}
	users := &config.Relation{OID: 1, Schema: "public", Name: "users", PrimaryKey: []string{"id"}, NameSchemas: []string{"other", "public"}, Columns: []config.Column{
		col("id", "bigint"), col("full_name", "text"), col("email", "text"), col("active", "boolean"),
		col("tier", "public.user_tier"), col("created_at", "timestamp with time zone"),
	}}
	usersV2 := &config.Relation{OID: 2, Schema: "public", Name: "users_v2", NameSchemas: []string{"public"}, Columns: []config.Column{
		col("id", "bigint"), col("first_name", "text"), col("last_name", "text"), col("email", "text"),
		col("active", "boolean"), col("tier", "public.user_tier"), col("created_at", "timestamp with time zone"),
	}}
	orders := &config.Relation{OID: 3, Schema: "public", Name: "orders", PrimaryKey: []string{"id"}, NameSchemas: []string{"public"}, Columns: []config.Column{
		col("id", "integer"), col("user_id", "bigint"), col("amount", "numeric(12,2)"), col("amount_cents", "bigint"), col("status", "public.order_status"),
	}}
	gen := &config.Generation{Number: 7, Config: &config.Config{Migrations: []config.Migration{
		{Name: "users-split-name", Old: "public.users", New: "public.users_v2", Key: []string{"id"},
			Write: map[string]string{"first_name": "split_part(full_name, ' ', 1)", "last_name": "nullif(substr(full_name, length(split_part(full_name, ' ', 1)) + 2), '')"},
			Read:  map[string]string{"full_name": "concat_ws(' ', first_name, last_name)"}},
		{Name: "orders-cents", Old: "public.orders", New: "public.orders", Key: []string{"id"},
			Write: map[string]string{"amount_cents": "(amount * 100)::bigint"},
			Read:  map[string]string{"amount": "(amount_cents / 100.0)::numeric(12,2)"}},
	}}, Catalog: config.Catalog{
		"users-split-name": {Old: users, New: usersV2},
		"orders-cents":     {Old: orders, New: orders},
	}}
	return NewCatalog(gen)
}

// testTypeOIDs stands in for pg_type: distinct types must have distinct OIDs, since the planner
// casts a column only when the types differ.
var testTypeOIDs = map[string]uint32{
	"boolean": 16, "bigint": 20, "integer": 23, "text": 25, "numeric(12,2)": 1700, "timestamp with time zone": 1184,
	"public.user_tier": 90001, "public.order_status": 90002,
}

// TestGolden runs testdata/*.golden: cases separated by a line "====", each an optional
// "search_path: ..." line, the SQL, a line "----", then the expected plan.
func TestGolden(t *testing.T) {
	files, _ := os.ReadDir("testdata")
	cat := testCatalog()
	for _, f := range files {
		if !strings.HasSuffix(f.Name(), ".golden") {
			continue
		}
		path := "testdata/" + f.Name()
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var out strings.Builder
		for i, block := range strings.Split(string(raw), "\n====\n") {
			in, want, _ := strings.Cut(block, "----")
			in, want = strings.TrimSpace(in), strings.TrimSpace(want)
			searchPath := `"$user", public`
			lines := strings.Split(in, "\n")
			if sp, ok := strings.CutPrefix(lines[0], "search_path: "); ok {
				searchPath, lines = sp, lines[1:]
			}
			sql := strings.Join(lines, "\n")
			got := describe(build(cat, ParseSearchPath(searchPath, "alice"), sql))
			if *update {
				if i > 0 {
					out.WriteString("\n====\n")
				}
				out.WriteString(in + "\n----\n" + got)
				continue
			}
			if strings.TrimSpace(want) != strings.TrimSpace(got) {
				t.Errorf("%s case %d:\n%s\n--- want\n%s\n--- got\n%s", path, i+1, sql, strings.TrimSpace(want), got)
			}
		}
		if *update {
			if err := os.WriteFile(path, []byte(out.String()+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// describe renders a plan for golden files; every rewritten form must parse again.
func describe(p *Plan) string {
	var b strings.Builder
	for _, st := range p.Statements {
		fmt.Fprintf(&b, "%s", st.Kind)
		if len(st.Migrations) > 0 {
			fmt.Fprintf(&b, " migrations=%s", strings.Join(st.Migrations, ","))
		}
		b.WriteString("\n")
		for _, u := range st.Unrewritten {
			fmt.Fprintf(&b, "unrewritten %s: %s\n", u.Migration, u.Reason)
		}
		if st.Read != nil {
			if _, err := pg_query.Parse(st.Read.SQL); err != nil {
				fmt.Fprintf(&b, "READ FORM DOES NOT PARSE: %v\n", err)
			}
			fmt.Fprintf(&b, "read: %s\n", st.Read.SQL)
		}
		for _, u := range st.Unmirrored {
			fmt.Fprintf(&b, "unmirrored %s: %s\n", u.Migration, u.Reason)
		}
		if w := st.Write; w != nil {
			if _, err := pg_query.Parse(w.SQL); err != nil {
				fmt.Fprintf(&b, "WRITE FORM DOES NOT PARSE: %v\n", err)
			}
			fmt.Fprintf(&b, "write %s %s %s count_only=%v: %s\n", w.Strategy, w.Direction, w.Verb, w.CountOnly, w.SQL)
		}
	}
	return strings.TrimSpace(b.String())
}
