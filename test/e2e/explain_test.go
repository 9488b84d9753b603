package e2e

// `pgcanary explain` through the real binary: the forms it prints are the ones the proxy sends, so
// running them directly must do what the proxy's mirrored write and routed read do.

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/router"
)

// explainStmt is one statement of `pgcanary explain --json`.
type explainStmt struct {
	SQL        string               `json:"sql"`
	Kind       string               `json:"kind"`
	Migrations []string             `json:"migrations"`
	Read       *router.ReadForm     `json:"read"`
	Write      *router.WriteForm    `json:"write"`
	Unmirrored []router.Unrewritten `json:"unmirrored"`
}

// explainPlan runs `pgcanary explain --json` for sql against the example configuration on db.
func explainPlan(t *testing.T, db, sql string) []explainStmt {
	t.Helper()
	stdout, stderr, code := runPgcanary(t, cfgRepoRoot(t), explainEnv(db), "explain", "--config", "examples/pgcanary.yaml", "--json", sql)
	if code != 0 {
		t.Fatalf("explain %q: exit %d\n%s%s", sql, code, stdout, stderr)
	}
	var out struct {
		Database   string        `json:"database"`
		Configured bool          `json:"configured"`
		Statements []explainStmt `json:"statements"`
	}
	if err := json.Unmarshal([]byte(stdout), &out); err != nil {
		t.Fatalf("explain --json output: %v\n%s", err, stdout)
	}
	if out.Database != db || !out.Configured {
		t.Fatalf("explain planned for database %q (configured %v), want %q", out.Database, out.Configured, db)
	}
	return out.Statements
}

func explainEnv(db string) []string {
	return []string{"PGCANARY_UPSTREAM=" + cluster.Addr(), "PGCANARY_SIDE_DSN=" + cfgSuperDSN(db), "PGCANARY_DATABASE=" + db}
}

// TestExplainFormsRun: the mirrored UPDATE explain prints, run directly, changes both shapes; the
// new-shape read it prints returns what the old form returns.
func TestExplainFormsRun(t *testing.T) {
	ctx := context.Background()
	db := cfgDB(t, "e2e_explain", "../../examples/schema.sql", "users=50", "orders=100")
	conn, err := pgx.Connect(ctx, cfgSuperDSN(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	w := explainPlan(t, db, "UPDATE users SET full_name = $1 WHERE id = $2")
	if len(w) != 1 || w[0].Kind != "write" || w[0].Write == nil || w[0].Write.Strategy != "capture" || !w[0].Write.CountOnly {
		t.Fatalf("UPDATE users: want one write with a capture form, got %+v", w)
	}
	var n int64
	if err := conn.QueryRow(ctx, w[0].Write.SQL, "Grace Brewster Hopper", 7).Scan(&n); err != nil {
		t.Fatalf("run the mirrored form: %v\n%s", err, w[0].Write.SQL)
	}
	var first, last string
	if err := conn.QueryRow(ctx, "select first_name, last_name from users_v2 where id = 7").Scan(&first, &last); err != nil {
		t.Fatal(err)
	}
	if n != 1 || first != "Grace" || last != "Brewster Hopper" {
		t.Fatalf("mirrored form: count %d, users_v2 row 7 = (%q, %q); want 1, (Grace, Brewster Hopper)", n, first, last)
	}

	r := explainPlan(t, db, "SELECT id, full_name, email FROM users WHERE id <= $1 ORDER BY id")
	if len(r) != 1 || r[0].Read == nil || !r[0].Read.Ordered || r[0].Read.Flags[0] != "users-split-name.read-percent" {
		t.Fatalf("SELECT users: want one routed ordered read, got %+v", r)
	}
	old, err := rowsText(ctx, conn, r[0].SQL, 10)
	if err != nil {
		t.Fatal(err)
	}
	rewritten, err := rowsText(ctx, conn, r[0].Read.SQL, 10)
	if err != nil {
		t.Fatalf("run the new-shape form: %v\n%s", err, r[0].Read.SQL)
	}
	if old != rewritten || !strings.Contains(old, "Grace Brewster Hopper") {
		t.Fatalf("new-shape form answers differently:\nold: %s\nnew: %s", old, rewritten)
	}

	if u := explainPlan(t, db, "UPDATE users SET id = id + 1000 WHERE id = 1"); len(u) != 1 || u[0].Write != nil ||
		len(u[0].Unmirrored) != 1 || u[0].Unmirrored[0].Reason != router.ReasonKeyUpdate {
		t.Fatalf("a key update: want unmirrored with reason %s, got %+v", router.ReasonKeyUpdate, u)
	}
}

// TestExplainBadInput: each bad input names its problem and exits 1; an unreachable database exits 2.
func TestExplainBadInput(t *testing.T) {
	db := cfgDB(t, "e2e_explain_bad", "../../examples/schema.sql", "users=5", "orders=5")
	root := cfgRepoRoot(t)
	for _, c := range []struct {
		args []string
		env  []string
		code int
		want string
	}{
		{[]string{"explain", "SELECT 1"}, nil, 1, "--config is required"},
		{[]string{"explain", "--config", "examples/pgcanary.yaml", "SELEC 1"}, explainEnv(db), 1, `syntax error at or near "SELEC"`},
		{[]string{"explain", "--config", "examples/pgcanary.yaml", "  "}, explainEnv(db), 1, "the SQL argument is empty"},
		{[]string{"explain", "--config", "examples/pgcanary.yaml", "SELECT 1"},
			[]string{"PGCANARY_UPSTREAM=" + cluster.Addr(), "PGCANARY_SIDE_DSN=postgres://postgres@127.0.0.1:1/x?sslmode=disable", "PGCANARY_DATABASE=" + db},
			2, "unreachable"},
	} {
		stdout, stderr, code := runPgcanary(t, root, c.env, c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("pgcanary %s: exit %d, stderr %q; want exit %d naming %q (stdout %q)", strings.Join(c.args, " "), code, stderr, c.code, c.want, stdout)
		}
	}
	stdout, _, code := runPgcanary(t, root, explainEnv(db), "explain", "--config", "examples/pgcanary.yaml", "--database", "elsewhere", "SELECT * FROM users")
	if code != 0 || !strings.Contains(stdout, "no migration is configured in database elsewhere") {
		t.Errorf("another database: exit %d, stdout %q", code, stdout)
	}
}

// rowsText renders a query's rows, one line each, with limit as its one parameter.
func rowsText(ctx context.Context, conn *pgx.Conn, sql string, limit int) (string, error) {
	rows, err := conn.Query(ctx, sql, limit)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return "", err
		}
		for i, v := range vals {
			if i > 0 {
				b.WriteString("|")
			}
			fmt.Fprint(&b, v)
		}
		b.WriteString("\n")
	}
	return b.String(), rows.Err()
}
