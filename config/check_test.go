package config_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) { pgtest.RunMain(m, pgtest.Options{}, &cluster) }

// createDB makes a fresh database owned by the superuser and returns its name.
func createDB(t *testing.T, name string) string {
	t.Helper()
	ctx := context.Background()
	_ = cluster.Exec(ctx, "drop database if exists "+name)
	if err := cluster.Exec(ctx, "create database "+name); err != nil {
		t.Fatal(err)
	}
	return name
}

// superDSN is a superuser DSN for db.
func superDSN(db string) string {
	return strings.Replace(cluster.DSN(pgtest.SuperUser, ""), "/"+pgtest.TestDB+"?", "/"+db+"?", 1)
}

// psqlFile runs a file of SQL (with psql meta-commands) in db.
func psqlFile(t *testing.T, db, file string, vars ...string) {
	t.Helper()
	psql, err := pgtest.FindBin("psql")
	if err != nil {
		t.Fatalf("psql is needed to load %s: %v", file, err)
	}
	args := []string{"-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", superDSN(db), "-f", file}
	for _, v := range vars {
		args = append(args, "-v", v)
	}
	if out, err := exec.Command(psql, args...).CombinedOutput(); err != nil {
		t.Fatalf("psql -f %s: %v\n%s", file, err, out)
	}
}

// TestExamplesPass: examples/pgcanary.yaml checks clean against examples/schema.sql.
func TestExamplesPass(t *testing.T) {
	db := createDB(t, "examples_check")
	psqlFile(t, db, "../examples/schema.sql", "users=200", "orders=600")
	t.Setenv("PGCANARY_UPSTREAM", cluster.Addr())
	t.Setenv("PGCANARY_SIDE_DSN", superDSN(db))
	t.Setenv("PGCANARY_DATABASE", db)
	cfg, err := config.Load("../examples/pgcanary.yaml")
	if err != nil {
		t.Fatal(err)
	}
	report, catalog, err := config.Check(context.Background(), cfg, config.DSNConnector(cfg.SideDSN))
	if err != nil {
		t.Fatal(err)
	}
	if len(report) != 0 {
		t.Fatalf("findings on the examples:\n%s", report.Error())
	}
	users := catalog["users-split-name"]
	if users == nil || users.Old.Name != "users" || users.New.Name != "users_v2" || len(users.New.Columns) != 11 {
		t.Fatalf("catalog: %+v", users)
	}
	full, ok := users.Old.Column("full_name")
	if !ok || full.TypeName != "text" || !full.NotNull || full.Num != 2 {
		t.Fatalf("full_name: %+v", full)
	}
	id, _ := users.Old.Column("id")
	if !strings.Contains(id.Default, "nextval") || users.Old.PrimaryKey[0] != "id" {
		t.Fatalf("id: %+v, pk %v", id, users.Old.PrimaryKey)
	}
	orders := catalog["orders-cents"]
	amount, _ := orders.Old.Column("amount")
	if orders.Old.OID != orders.New.OID || amount.TypeName != "numeric(12,2)" {
		t.Fatalf("orders: %+v", amount)
	}
}

// TestBrokenShowsEveryFinding: each check finds its problem, at the right line.
func TestBrokenShowsEveryFinding(t *testing.T) {
	db := createDB(t, "broken_check")
	_ = cluster.Exec(context.Background(), "drop role if exists b_writer")
	psqlFile(t, db, "testdata/broken.sql")
	t.Cleanup(func() {
		_ = cluster.Exec(context.Background(), "drop database if exists broken_check")
		_ = cluster.Exec(context.Background(), "drop role if exists b_writer")
	})
	t.Setenv("PGCANARY_TEST_SIDE_DSN", superDSN(db))
	t.Setenv("PGCANARY_TEST_DB", db)
	const file = "testdata/broken.yaml"
	cfg, err := config.Load(file)
	if _, isReport := config.AsReport(err); err != nil && (!isReport || cfg == nil) {
		t.Fatal(err)
	}
	report, _, err := config.Check(context.Background(), cfg, config.DSNConnector(cfg.SideDSN))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(file)
	text := string(raw)
	// line finds the line of needle within the block of migration name.
	line := func(name, needle string) int {
		start := strings.Index(text, "name: "+name)
		if start < 0 {
			t.Fatalf("no migration %s in %s", name, file)
		}
		i := strings.Index(text[start:], needle)
		if i < 0 {
			t.Fatalf("no %q after migration %s", needle, name)
		}
		return strings.Count(text[:start+i], "\n") + 1
	}
	want := []struct {
		sev       config.Severity
		migration string
		line      int
		text      string
	}{
		{config.Error, "bad-relation", line("bad-relation", "old:"), "old relation public.b_missing does not exist"},
		{config.Error, "bad-relation", line("bad-relation", "new:"), "new relation public.b_missing_v2 does not exist"},
		{config.Error, "users-broken", line("users-broken", "key:"), "has no unique index on new relation"},
		{config.Error, "users-broken", line("users-broken", "first_name:"), "write.first_name: expression does not parse"},
		{config.Error, "users-broken", line("users-broken", "ghost:"), "write: column ghost does not exist in new relation"},
		{config.Error, "users-broken", line("users-broken", "write:"), "new column nick of public.b_users_v2 is NOT NULL without a default"},
		{config.Error, "users-broken", line("users-broken", "read:"), "old column score of public.b_users is not mapped"},
		{config.Error, "users-broken", line("users-broken", "full_name:"), `read.full_name: expression does not type-check against public.b_users_v2: column "nope" does not exist`},
		{config.Error, "users-broken", line("users-broken", "id: now()"), "read.id: expression type is not assignable to column id integer"},
		{config.Error, "users-broken", line("users-broken", "missing_old:"), "read: column missing_old does not exist in old relation"},
		{config.Warning, "users-broken", line("users-broken", "new:"), "role b_writer has DELETE, INSERT, UPDATE on public.b_users but not on public.b_users_v2"},
		{config.Error, "nokey-old", line("nokey-old", "key:"), "has no unique index on old relation public.b_nokey_old"},
		{config.Error, "keyless", line("keyless", "uid"), "key column uid does not exist in old relation"},
		{config.Error, "keyless", line("keyless", "uid"), "key column uid does not exist in new relation"},
		{config.Warning, "orders-volatile", line("orders-volatile", "id_copy:"), "write.id_copy reads column id, whose default is volatile (nextval("},
		{config.Error, "orders-again", line("orders-again", "name:"), "relation public.b_orders is already part of migration orders-volatile"},
		{config.Warning, "users-broken", line("users-broken", "key:"), "key column id is nullable in new relation public.b_users_v2"},
		{config.Warning, "nullable-key", line("nullable-key", "- code"), "key column code is nullable in old relation public.b_nullable: rows with a NULL in the key cannot be mirrored by key, backfilled or verified"},
		{config.Warning, "nullable-key", line("nullable-key", "- tenant"), "key column tenant is nullable in new relation public.b_nullable_v2"},
		{config.Error, "on-a-view", line("on-a-view", "old:"), `old relation b_view is not a table (relkind "v")`},
		{config.Error, "Bad_Name", line("Bad_Name", "name:"), `name "Bad_Name": use lower-case letters`},
		{config.Error, "Bad_Name", line("Bad_Name", "on_mirror_error:"), `on_mirror_error "sometimes"`},
		{config.Error, "Bad_Name", line("Bad_Name", "ratio"), "compare.ratio 1.5"},
	}
	for _, w := range want {
		found := false
		for _, f := range report {
			if f.Severity == w.sev && f.Migration == w.migration && f.File == file && f.Line == w.line && strings.Contains(f.Message, w.text) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("missing %s at %s:%d for %s: %q", w.sev, file, w.line, w.migration, w.text)
		}
	}
	// The cleanly configured parts produce nothing: cents is fine, and so are the key checks of
	// orders-volatile. A nullable key is a warning and nothing more: nullable-key has a unique
	// index on each side, so its two nullable columns (one per side) are its only findings.
	nullable := 0
	for _, f := range report {
		if strings.Contains(f.Message, "write.cents") || f.Migration == "orders-volatile" && strings.Contains(f.Message, "key") {
			t.Errorf("unexpected finding: %s", f)
		}
		if f.Migration == "nullable-key" {
			nullable++
			if f.Severity != config.Warning {
				t.Errorf("nullable-key: want only warnings, got %s", f)
			}
		}
	}
	if nullable != 2 {
		t.Errorf("nullable-key: %d findings, want 2 (code in old, tenant in new)", nullable)
	}
	if t.Failed() {
		t.Logf("report:\n%s", report.Error())
	}
}

func TestStaticErrorsNameFileAndLine(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.yaml")
	cases := []struct{ yaml, want string }{
		{"listen: a:1\nlistne: b\n", path + ":2: error: field listne not found"},
		{"migrations:\n  - name: x\n    databse: app\n", path + ":3: error: field databse not found"},
		{"migrations:\n  - name: a\n    database: d\n    old: t\n    new: t2\n    key: [id]\nside_dsn: x\n  ", path + ":1: error: migration a: relation"}, // placeholder replaced below
		{"routing_key: header:x\n", path + ":1: error: routing_key \"header:x\""},
		{"flags: {file: f.json, flagd: localhost:8013}\n", path + ":1: error: flags: set file or flagd, not both"},
		{"migrations:\n  - name: a\n    database: d\n    old: t\n    new: t2\n    key: [id]\n", "side_dsn is required"},
		{"upstream: ${PGC_SURELY_UNSET}\n", path + ":1: error: environment variable PGC_SURELY_UNSET is not set"},
	}
	cases[2] = struct{ yaml, want string }{"side_dsn: x\nmigrations:\n  - name: a\n    database: d\n    old: t\n    new: t2\n    key: [id]\n  - name: a\n    database: d\n    old: t3\n    new: t\n    key: [id]\n", path + ":8: error: migration a: name \"a\" is already used"}
	for i, tc := range cases {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := config.Load(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error:\n%v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

// TestCheckUnreachable: a database that cannot be reached is an error, not a finding.
func TestCheckUnreachable(t *testing.T) {
	cfg, err := config.Parse("c.yaml", []byte("side_dsn: postgres://nobody@127.0.0.1:1/x?connect_timeout=2\nmigrations:\n  - {name: a, database: d, old: t, new: t2, key: [id]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err = config.Check(ctx, cfg, config.DSNConnector(cfg.SideDSN))
	if err == nil || !strings.Contains(err.Error(), "database unreachable") {
		t.Fatalf("error %v", err)
	}
}

// TestCheckMissingDatabaseIsAFinding: a server that answers "no such database" points at a mistake
// in the file, reported at the migration's database line, not as an unreachable server.
func TestCheckMissingDatabaseIsAFinding(t *testing.T) {
	raw := "side_dsn: " + superDSN(pgtest.TestDB) + "\nmigrations:\n  - name: a\n    database: no_such_db\n    old: t\n    new: t2\n    key: [id]\n"
	cfg, err := config.Parse("c.yaml", []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	report, _, err := config.Check(context.Background(), cfg, config.DSNConnector(cfg.SideDSN))
	if err != nil {
		t.Fatalf("error %v, want a finding", err)
	}
	if len(report) != 1 || report[0].Line != 4 || !strings.Contains(report[0].Message, "database no_such_db does not exist") {
		t.Fatalf("report: %v", report)
	}
}
