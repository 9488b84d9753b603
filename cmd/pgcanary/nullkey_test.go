package main

// The commands' side of rows whose key has a NULL: check warns about the nullable key columns,
// backfill and verify report the rows they leave out (text and JSON), and verify exits 1 while
// any exist, as it does for differences.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) { pgtest.RunMain(m, pgtest.Options{}, &cluster) }

// runCmd runs one subcommand and returns its output and exit status.
func runCmd(t *testing.T, cmd *cobra.Command, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.ExecuteContext(ctx)
	var ee *exitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.code
		fmt.Fprintln(&errOut, "pgcanary:", err) // as main prints it
	default:
		t.Fatalf("%v: %v", args, err)
	}
	return out.String(), errOut.String(), code
}

func TestNullKeyCommands(t *testing.T) {
	const db = "cmd_null_keys"
	cluster.CreateDatabase(t, db)
	dsn := cluster.DatabaseDSN(db, pgtest.SuperUser, "")
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`
		create table items (tenant int not null, code text, v int, unique (tenant, code));
		create table items_v2 (tenant int, code text not null, v2 int, unique (tenant, code));
		insert into items select g % 3, 'c' || g, g from generate_series(1, 100) g;
		insert into items values (0, null, 1000), (1, null, 1001), (2, null, 1002);
		insert into items_v2 values (null, 'x1', 1), (null, 'x2', 2);`)
	file := filepath.Join(t.TempDir(), "pgcanary.yaml")
	yaml := fmt.Sprintf("upstream: %s\nside_dsn: %s\nmigrations:\n  - name: items\n    database: %s\n    old: items\n    new: items_v2\n    key: [tenant, code]\n    write: {v2: v * 2}\n    read: {v: v2 / 2}\n",
		cluster.Addr(), dsn, db)
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}

	// check: two warnings at the key's line, exit 0.
	stdout, stderr, code := runCmd(t, newCheckCmd(), "--config", file)
	for _, want := range []string{
		file + ":8: warning: migration items: key column code is nullable in old relation public.items: rows with a NULL in the key cannot be mirrored by key, backfilled or verified",
		file + ":8: warning: migration items: key column tenant is nullable in new relation public.items_v2",
		file + ": ok (1 migrations)",
	} {
		if code != 0 || !strings.Contains(stdout, want) {
			t.Fatalf("check: exit %d, want 0 and %q\nstdout:\n%s\nstderr:\n%s", code, want, stdout, stderr)
		}
	}

	// backfill: the rows with a NULL key are counted, printed and warned about; the rest is copied.
	stdout, stderr, code = runCmd(t, newBackfillCmd(), "--config", file, "items")
	if code != 0 || !strings.Contains(stdout, "items: done, 100 rows") ||
		!strings.Contains(stdout, "items: skipped 3 rows of the old relation whose key has a NULL: no key names them, so they were not copied") ||
		!strings.Contains(stderr, `level=WARN msg="backfill skips rows whose key has a NULL: they are not copied" migration=items relation=public.items nullable_key_columns=code rows=3`) {
		t.Fatalf("backfill: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	stdout, stderr, code = runCmd(t, newBackfillCmd(), "--config", file, "items", "--json", "--restart")
	var bf struct {
		Rows         int64 `json:"rows"`
		NullKeyInOld int64 `json:"null_key_in_old"`
	}
	if err := json.Unmarshal([]byte(stdout), &bf); code != 0 || err != nil || bf.Rows != 100 || bf.NullKeyInOld != 3 {
		t.Fatalf("backfill --json: exit %d, %+v (%v)\nstdout:\n%s\nstderr:\n%s", code, bf, err, stdout, stderr)
	}

	// verify: every keyed row matches, yet the run fails: 5 rows could not be compared.
	stdout, stderr, code = runCmd(t, newVerifyCmd(), "--config", file, "items")
	for _, want := range []string{
		"items: 100 rows compared in 1 ranges",
		"not compared: 3 rows in old, 2 in new have a NULL in their key",
		"not proved equal: the rows compared match, the rows with a NULL key were not compared",
	} {
		if code != 1 || !strings.Contains(stdout, want) || strings.Contains(stdout, "equal: new matches") {
			t.Fatalf("verify: exit %d, want 1 and %q\nstdout:\n%s\nstderr:\n%s", code, want, stdout, stderr)
		}
	}
	if !strings.Contains(stderr, "pgcanary: migration items: 5 rows with a NULL key were not compared (3 in old, 2 in new)") ||
		!strings.Contains(stderr, "level=WARN msg=\"verify leaves out rows whose key has a NULL") {
		t.Fatalf("verify stderr:\n%s", stderr)
	}
	stdout, stderr, code = runCmd(t, newVerifyCmd(), "--config", file, "items", "--json", "--repair")
	var vr struct {
		RowsCompared int64 `json:"rows_compared"`
		Remaining    int64 `json:"remaining"`
		NullKeyInOld int64 `json:"null_key_in_old"`
		NullKeyInNew int64 `json:"null_key_in_new"`
	}
	if err := json.Unmarshal([]byte(stdout), &vr); code != 1 || err != nil || vr.RowsCompared != 100 || vr.Remaining != 0 || vr.NullKeyInOld != 3 || vr.NullKeyInNew != 2 {
		t.Fatalf("verify --json --repair: exit %d, %+v (%v)\nstdout:\n%s\nstderr:\n%s", code, vr, err, stdout, stderr)
	}

	// A difference and NULL keys: both named, exit 1.
	exec(`update items_v2 set v2 = 0 where tenant = 2 and code = 'c2'`)
	_, stderr, code = runCmd(t, newVerifyCmd(), "--config", file, "items")
	if code != 1 || !strings.Contains(stderr, "migration items: 1 differences remain; 5 rows with a NULL key were not compared") {
		t.Fatalf("verify with a difference: exit %d\n%s", code, stderr)
	}

	// Once the NULL keys are gone (and the difference repaired): equal, exit 0.
	exec(`delete from items where code is null; delete from items_v2 where tenant is null`)
	runCmd(t, newVerifyCmd(), "--config", file, "items", "--repair")
	stdout, stderr, code = runCmd(t, newVerifyCmd(), "--config", file, "items")
	if code != 0 || !strings.Contains(stdout, "equal: new matches the write map of old") || strings.Contains(stdout, "not compared") || stderr != "" {
		t.Fatalf("verify without NULL keys: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}
