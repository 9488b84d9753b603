package e2e

// `pgcanary verify` through the real binary: drift written behind the proxy's back is found and
// named, repaired, verified clean; usage and connection errors exit 2 with a message naming the
// problem.

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// verifyEnv loads the examples into db and returns the environment examples/pgcanary.yaml needs.
func verifyEnv(t *testing.T, db string) ([]string, func(string) string) {
	t.Helper()
	inDB := loadExamples(t, db)
	return []string{
		"PGCANARY_UPSTREAM=" + cluster.Addr(),
		"PGCANARY_SIDE_DSN=" + inDB(cluster.DSN(pgtest.SuperUser, "")),
		"PGCANARY_DATABASE=" + db,
	}, inDB
}

type verifyJSON struct {
	Migration        string           `json:"migration"`
	RowsCompared     int64            `json:"rows_compared"`
	MissingInNew     int64            `json:"missing_in_new"`
	ExtraInNew       int64            `json:"extra_in_new"`
	Differing        int64            `json:"differing"`
	DifferingColumns map[string]int64 `json:"differing_columns"`
	SampleKeys       []struct {
		Kind    string            `json:"kind"`
		Key     map[string]string `json:"key"`
		Columns []string          `json:"columns"`
	} `json:"sample_keys"`
	Seconds       float64 `json:"seconds"`
	RowsPerSecond float64 `json:"rows_per_second"`
	Repaired      int64   `json:"repaired"`
	Remaining     int64   `json:"remaining"`
}

func runVerifyJSON(t *testing.T, env []string, wantCode int, args ...string) verifyJSON {
	t.Helper()
	stdout, stderr, code := runPgcanary(t, cfgRepoRoot(t), env, append([]string{"verify", "--config", "examples/pgcanary.yaml", "--json"}, args...)...)
	if code != wantCode {
		t.Fatalf("verify %v: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", args, code, wantCode, stdout, stderr)
	}
	var res verifyJSON
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("verify --json: %v\n%s", err, stdout)
	}
	return res
}

func TestVerifyDriftRepairCLI(t *testing.T) {
	env, inDB := verifyEnv(t, "e2e_verify")
	conn := connectDSN(t, inDB(cluster.DSN(pgtest.SuperUser, "")))
	defer conn.Close(testCtx(t))

	if res := runVerifyJSON(t, env, 0, "users-split-name"); res.RowsCompared != 300 || res.Remaining != 0 || res.SampleKeys == nil {
		t.Fatalf("clean examples: %+v", res)
	}
	for _, sql := range []string{
		`update users set full_name = 'Zed Quux' where id = 10`,
		`update users_v2 set last_name = 'Changed' where id = 20`,
		`delete from users_v2 where id = 40`,
		`delete from orders where user_id = 30`, `delete from users where id = 30`,
		`update orders set amount_cents = 1 where id = 7`,
	} {
		if _, err := conn.Exec(testCtx(t), sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	res := runVerifyJSON(t, env, 1, "users-split-name", "--range-rows", "50")
	var got []string
	for _, k := range res.SampleKeys {
		got = append(got, k.Kind+" "+k.Key["id"]+" "+strings.Join(k.Columns, ","))
	}
	slices.Sort(got)
	want := []string{"differing 10 first_name,last_name", "differing 20 last_name", "extra_in_new 30 ", "missing_in_new 40 "}
	if !slices.Equal(got, want) || res.MissingInNew != 1 || res.ExtraInNew != 1 || res.Differing != 2 ||
		res.DifferingColumns["last_name"] != 2 || res.DifferingColumns["first_name"] != 1 || res.Remaining != 4 {
		t.Fatalf("drift: %+v\ngot  %q\nwant %q", res, got, want)
	}
	if res := runVerifyJSON(t, env, 1, "orders-cents"); res.Differing != 1 || res.DifferingColumns["amount_cents"] != 1 {
		t.Fatalf("orders drift: %+v", res)
	}
	stdout, stderr, code := runPgcanary(t, cfgRepoRoot(t), env, "verify", "--config", "examples/pgcanary.yaml", "users-split-name")
	for _, line := range []string{
		"missing in new: 1, extra in new: 1, differing: 2\n",
		"differing columns: first_name 1, last_name 2\n",
		"  differing: id=10 (first_name, last_name)\n",
		"  missing in new: id=40\n",
		"  extra in new: id=30\n",
	} {
		if code != 1 || !strings.Contains(stdout, line) {
			t.Fatalf("text output: exit %d, want 1 and %q\nstdout:\n%s\nstderr:\n%s", code, line, stdout, stderr)
		}
	}
	if !strings.Contains(stderr, "4 differences remain") {
		t.Fatalf("stderr: %s", stderr)
	}

	if res := runVerifyJSON(t, env, 0, "users-split-name", "--repair"); res.Repaired != 4 || res.Remaining != 0 {
		t.Fatalf("repair: %+v", res)
	}
	if res := runVerifyJSON(t, env, 0, "orders-cents", "--repair"); res.Repaired != 1 || res.Remaining != 0 {
		t.Fatalf("repair orders: %+v", res)
	}
	runVerifyJSON(t, env, 0, "users-split-name")
	runVerifyJSON(t, env, 0, "orders-cents")

	stdout, stderr, code = runPgcanary(t, cfgRepoRoot(t), env, "verify", "--config", "examples/pgcanary.yaml", "users-split-name")
	if code != 0 || !strings.Contains(stdout, "299 rows compared") || !strings.Contains(stdout, "equal") {
		t.Fatalf("text output: exit %d\n%s\n%s", code, stdout, stderr)
	}
}

func TestVerifyErrorsCLI(t *testing.T) {
	env, _ := verifyEnv(t, "e2e_verify_errors")
	stdout, stderr, code := runPgcanary(t, cfgRepoRoot(t), env, "verify", "--config", "examples/pgcanary.yaml", "users-split")
	if code != 2 || !strings.Contains(stderr, `no migration "users-split"`) || !strings.Contains(stderr, "users-split-name, orders-cents") {
		t.Fatalf("unknown migration: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}

	down := unusedLoopbackAddr(t)
	env = append(env, "PGCANARY_SIDE_DSN=postgres://postgres@"+down+"/e2e_verify_errors?sslmode=disable&connect_timeout=5")
	stdout, stderr, code = runPgcanary(t, cfgRepoRoot(t), env, "verify", "--config", "examples/pgcanary.yaml", "users-split-name")
	if code != 2 || !strings.Contains(stderr, down) || !strings.Contains(stderr, "e2e_verify_errors") {
		t.Fatalf("unreachable: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}

	// A migration check finds errors in is refused with check's findings.
	dir := t.TempDir()
	raw, err := os.ReadFile(filepath.Join(cfgRepoRoot(t), "examples", "pgcanary.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	broken := filepath.Join(dir, "pgcanary.yaml")
	if err := os.WriteFile(broken, []byte(strings.Replace(string(raw), "new: public.users_v2", "new: public.users_v9", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	stdout, stderr, code = runPgcanary(t, dir, env[:3], "verify", "--config", "pgcanary.yaml", "users-split-name")
	if code != 2 || !strings.Contains(stderr, "does not pass check") ||
		!regexp.MustCompile(`pgcanary\.yaml:\d+: error: migration users-split-name: new relation public\.users_v9 does not exist`).MatchString(stderr) {
		t.Fatalf("refused: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}

	stdout, stderr, code = runPgcanary(t, cfgRepoRoot(t), env, "verify", "users-split-name")
	if code != 2 || !strings.Contains(stderr, "--config is required") {
		t.Fatalf("no --config: exit %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}
