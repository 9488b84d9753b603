package e2e

// The operator commands of the canary through the real binary: `pgcanary rollback` and
// `pgcanary resume` against a running `pgcanary serve --config`, `pgcanary status` reading the
// admin JSON API (and falling back to /metrics on a pgcanary without it), and the API's
// authorization and answers seen directly over HTTP.

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

const canaryCLIToken = "e2e-admin-token-7f3a"

// canaryCLIConfig writes into dir the example configuration under name, with admin lines
// replaced by admin (a YAML flow mapping), and the example flag file next to it.
func canaryCLIConfig(t *testing.T, dir, name, admin string) string {
	t.Helper()
	root := cfgRepoRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "examples", "pgcanary.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const exampleAdmin = "admin: {listen: 127.0.0.1:9187}"
	if !strings.Contains(string(raw), exampleAdmin) {
		t.Fatalf("examples/pgcanary.yaml has no line %q to replace", exampleAdmin)
	}
	yaml := strings.Replace(string(raw), exampleAdmin, "admin: "+admin, 1)
	if err := os.WriteFile(filepath.Join(dir, name), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "flags.json")); err != nil {
		flagsRaw, err := os.ReadFile(filepath.Join(root, "examples", "flags.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "flags.json"), flagsRaw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, name)
}

// statusRow runs `pgcanary status` and returns the fields of migration's row and the whole output.
func statusRow(t *testing.T, dir, cfg, migration string, extra ...string) ([]string, string) {
	t.Helper()
	out, stderr, code := runPgcanary(t, dir, nil, append([]string{"status", "--config", cfg}, extra...)...)
	if code != 0 {
		t.Fatalf("status: exit %d\n%s\n%s", code, out, stderr)
	}
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && f[0] == migration {
			return f, out
		}
	}
	t.Fatalf("no row for %s in:\n%s", migration, out)
	return nil, ""
}

// statusJSON runs `pgcanary status --json` and returns the migration's object.
func statusJSON(t *testing.T, dir, cfg, migration string) map[string]any {
	t.Helper()
	out, stderr, code := runPgcanary(t, dir, nil, "status", "--config", cfg, "--json")
	if code != 0 {
		t.Fatalf("status --json: exit %d\n%s\n%s", code, out, stderr)
	}
	var list []map[string]any
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("status --json is not a JSON array: %v\n%s", err, out)
	}
	for _, m := range list {
		if m["name"] == migration {
			return m
		}
	}
	t.Fatalf("no %s in status --json:\n%s", migration, out)
	return nil
}

// apiDo sends a request to the admin API with an optional bearer token and returns status and body.
func apiDo(t *testing.T, method, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(testCtx(t), method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	return resp.StatusCode, string(body)
}

func TestCanaryCLI(t *testing.T) {
	inDB := loadExamples(t, "canary_cli")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte(canaryCLIToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "wrong.token"), []byte("not-the-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	adminAddr := unusedLoopbackAddr(t)
	cfg := canaryCLIConfig(t, dir, "pgcanary.yaml", "{listen: "+adminAddr+", token_file: admin.token}")
	noToken := canaryCLIConfig(t, dir, "notoken.yaml", "{listen: "+adminAddr+"}")
	wrongToken := canaryCLIConfig(t, dir, "wrongtoken.yaml", "{listen: "+adminAddr+", token_file: wrong.token}")
	t.Setenv("PGCANARY_UPSTREAM", cluster.Addr())
	t.Setenv("PGCANARY_SIDE_DSN", inDB(cluster.DSN(pgtest.SuperUser, "")))
	t.Setenv("PGCANARY_DATABASE", "canary_cli")
	// startServeArgs passes --admin 127.0.0.1:0 first; this one wins and equals admin.listen, so
	// the commands below find pgcanary through the file alone.
	p := startServeArgs(t, "--config", cfg, "--upstream-sslmode", "disable", "--admin", adminAddr)
	if p.admin != adminAddr {
		t.Fatalf("pgcanary admin on %s, want %s", p.admin, adminAddr)
	}
	base := "http://" + adminAddr
	const mig = "users-split-name"

	if out, stderr, code := runPgcanary(t, dir, nil, "ramp", "--config", cfg, mig, "25"); code != 0 {
		t.Fatalf("ramp: exit %d\n%s\n%s", code, out, stderr)
	}
	pollUntil(t, 5*time.Second, func() bool { return statusJSON(t, dir, cfg, mig)["effective_percent"] == 25.0 },
		func() string { return "effective_percent never became 25 after the ramp" })

	t.Run("RollbackThenStatus", func(t *testing.T) {
		out, stderr, code := runPgcanary(t, dir, nil, "rollback", "--config", cfg, "--reason", "last names lost", mig)
		want := mig + ": kill switch engaged (reason: last names lost): reads go to the old shape"
		if code != 0 || strings.TrimSpace(out) != want {
			t.Fatalf("rollback: exit %d, stdout %q, want %q\n%s", code, out, want, stderr)
		}
		// With the switch engaged every read goes to the old shape; the write is mirrored.
		conn := connectDSN(t, inDB(p.dsn(pgtest.SuperUser, "")))
		if _, err := conn.Exec(testCtx(t), "UPDATE users SET full_name = 'Ada Lovelace' WHERE id = 1"); err != nil {
			t.Fatal(err)
		}
		for range 4 {
			if _, err := conn.Exec(testCtx(t), "SELECT full_name FROM users WHERE id = 1", pgx.QueryExecModeSimpleProtocol); err != nil {
				t.Fatal(err)
			}
		}
		row, out := statusRow(t, dir, cfg, mig)
		// MIGRATION MIRROR FLAG EFFECTIVE% KILL-SWITCH VERDICT COMPARISONS MISMATCHES READS-OLD READS-NEW MIRRORED UNMIRRORED
		if len(row) != 12 || row[1] != "on" || row[2] != "25" || row[3] != "0" || row[4] != "on" ||
			row[8] != "4" || row[9] != "0" || row[10] != "1" || row[11] != "0" {
			t.Fatalf("status row %q in:\n%s", row, out)
		}
		switch row[5] {
		case "pass", "inconclusive", "fail":
		default:
			t.Errorf("verdict %q, want pass, inconclusive or fail", row[5])
		}
		if !strings.Contains(out, mig+": kill switch engaged since ") || !strings.Contains(out, ": last names lost") {
			t.Errorf("status does not list the engaged switch with its reason:\n%s", out)
		}
		if other, _ := statusRow(t, dir, cfg, "orders-cents"); len(other) != 12 || other[4] != "off" {
			t.Errorf("orders-cents row %q: its kill switch should be off", other)
		}
		st := statusJSON(t, dir, cfg, mig)
		ks, _ := st["kill_switch"].(map[string]any)
		if ks["engaged"] != true || ks["reason"] != "last names lost" || st["effective_percent"] != 0.0 || st["flag_value"] != 25.0 {
			t.Fatalf("status --json: kill_switch %v, effective_percent %v, flag_value %v", ks, st["effective_percent"], st["flag_value"])
		}
		if _, ok := st["verdict"].(map[string]any)["status"].(string); !ok {
			t.Errorf("status --json: no verdict.status in %v", st["verdict"])
		}
		// A second rollback keeps the first reason and says so.
		out, _, code = runPgcanary(t, dir, nil, "rollback", "--config", cfg, "--reason", "again", mig)
		if code != 0 || !strings.Contains(out, "already engaged since") || !strings.Contains(out, "(reason: last names lost)") {
			t.Errorf("second rollback: exit %d %q", code, out)
		}
	})

	t.Run("Resume", func(t *testing.T) {
		out, stderr, code := runPgcanary(t, dir, nil, "resume", "--config", cfg, mig)
		want := mig + ": kill switch released: reads follow the flag again (25%)"
		if code != 0 || strings.TrimSpace(out) != want {
			t.Fatalf("resume: exit %d, stdout %q, want %q\n%s", code, out, want, stderr)
		}
		row, out := statusRow(t, dir, cfg, mig)
		if len(row) != 12 || row[3] != "25" || row[4] != "off" || strings.Contains(out, "kill switch engaged") {
			t.Fatalf("status row after resume %q in:\n%s", row, out)
		}
	})

	t.Run("RollbackUnknownMigration", func(t *testing.T) {
		out, stderr, code := runPgcanary(t, dir, nil, "rollback", "--config", cfg, "nope")
		if code != 1 || !strings.Contains(stderr, `no such migration: "nope"`) || !strings.Contains(stderr, "404") {
			t.Fatalf("rollback nope: exit %d\n%s\n%s", code, out, stderr)
		}
		if _, stderr, code := runPgcanary(t, dir, nil, "resume", "--config", cfg, "nope"); code != 1 || !strings.Contains(stderr, `no such migration: "nope"`) {
			t.Fatalf("resume nope: exit %d\n%s", code, stderr)
		}
	})

	t.Run("RollbackWithoutTokenFile", func(t *testing.T) {
		for _, command := range []string{"rollback", "resume"} {
			out, stderr, code := runPgcanary(t, dir, nil, command, "--config", noToken, mig)
			if code != 2 || !strings.Contains(stderr, "set admin.token_file") {
				t.Fatalf("%s without admin.token_file: exit %d\n%s\n%s", command, code, out, stderr)
			}
		}
		// Nothing was sent: the switch is still off.
		if st := statusJSON(t, dir, cfg, mig); st["kill_switch"].(map[string]any)["engaged"] != false {
			t.Fatalf("kill switch engaged by a refused command: %v", st["kill_switch"])
		}
		// status needs no token on loopback.
		if row, out := statusRow(t, dir, noToken, mig); len(row) != 12 {
			t.Fatalf("status without a token: %q\n%s", row, out)
		}
	})

	t.Run("RollbackWrongToken", func(t *testing.T) {
		out, stderr, code := runPgcanary(t, dir, nil, "rollback", "--config", wrongToken, mig)
		if code != 1 || !strings.Contains(stderr, "401") || !strings.Contains(stderr, "bearer token") {
			t.Fatalf("rollback with a wrong token: exit %d\n%s\n%s", code, out, stderr)
		}
	})

	t.Run("RollbackUnreachable", func(t *testing.T) {
		nobody := unusedLoopbackAddr(t)
		out, stderr, code := runPgcanary(t, dir, nil, "rollback", "--config", cfg, "--admin", nobody, mig)
		if code != 1 || !strings.Contains(stderr, "from pgcanary at "+nobody+": ") {
			t.Fatalf("rollback to nobody: exit %d\n%s\n%s", code, out, stderr)
		}
		if _, stderr, code := runPgcanary(t, dir, nil, "status", "--config", cfg, "--admin", nobody); code != 1 || !strings.Contains(stderr, "from pgcanary at "+nobody+": ") {
			t.Fatalf("status of nobody: exit %d\n%s", code, stderr)
		}
	})

	t.Run("HTTP", func(t *testing.T) {
		if code, body := apiDo(t, http.MethodPost, base+"/v1/migrations/"+mig+"/rollback", ""); code != http.StatusUnauthorized || !strings.Contains(body, `"error"`) {
			t.Errorf("POST rollback without a token: %d %s", code, body)
		}
		if code, body := apiDo(t, http.MethodPost, base+"/v1/migrations/"+mig+"/rollback", "wrong"); code != http.StatusUnauthorized {
			t.Errorf("POST rollback with a wrong token: %d %s", code, body)
		}
		code, body := apiDo(t, http.MethodGet, base+"/v1/migrations", "")
		var list []map[string]any
		if code != http.StatusOK || json.Unmarshal([]byte(body), &list) != nil || len(list) != 2 {
			t.Errorf("GET /v1/migrations on loopback without a token: %d %s", code, body)
		}
		if code, body := apiDo(t, http.MethodGet, base+"/v1/migrations/"+mig, ""); code != http.StatusOK || !strings.Contains(body, `"name": "`+mig+`"`) {
			t.Errorf("GET /v1/migrations/%s: %d %s", mig, code, body)
		}
		code, body = apiDo(t, http.MethodGet, base+"/v1/migrations/"+mig+"/mismatches?limit=5", "")
		var mismatches []json.RawMessage
		if code != http.StatusOK || json.Unmarshal([]byte(body), &mismatches) != nil || mismatches == nil {
			t.Errorf("GET mismatches: %d %s, want 200 and a JSON array", code, body)
		}
		if code, body := apiDo(t, http.MethodGet, base+"/v1/migrations/"+mig+"/mismatches?limit=zero", ""); code != http.StatusBadRequest {
			t.Errorf("GET mismatches?limit=zero: %d %s, want 400", code, body)
		}
		for _, u := range []string{base + "/v1/migrations/nope", base + "/v1/migrations/nope/mismatches"} {
			if code, body := apiDo(t, http.MethodGet, u, ""); code != http.StatusNotFound || !strings.Contains(body, `"error"`) {
				t.Errorf("GET %s: %d %s, want 404 with an error", u, code, body)
			}
		}
		if code, body := apiDo(t, http.MethodPost, base+"/v1/migrations/nope/resume", canaryCLIToken); code != http.StatusNotFound {
			t.Errorf("POST resume of nope with the token: %d %s, want 404", code, body)
		}
	})

	// A pgcanary with the migrations API but without admin.token_file refuses every POST (403).
	t.Run("ServerWithoutToken", func(t *testing.T) {
		other := unusedLoopbackAddr(t)
		p2 := startServeArgs(t, "--config", noToken, "--upstream-sslmode", "disable", "--admin", other)
		out, stderr, code := runPgcanary(t, dir, nil, "rollback", "--config", cfg, "--admin", p2.admin, mig)
		if code != 1 || !strings.Contains(stderr, "403") || !strings.Contains(stderr, "admin.token_file") {
			t.Fatalf("rollback against a pgcanary without a token: exit %d\n%s\n%s", code, out, stderr)
		}
	})

	// A pgcanary without the migrations API (no configuration): status shows its /metrics table.
	t.Run("StatusFallback", func(t *testing.T) {
		p3 := startServeBinary(t, "", 5*time.Second)
		out, stderr, code := runPgcanary(t, dir, nil, "status", "--config", cfg, "--admin", p3.admin)
		if code != 0 || !strings.Contains(out, "FLAG ERRORS") || !strings.Contains(out, mig) {
			t.Fatalf("status of a pgcanary without the API: exit %d\n%s\n%s", code, out, stderr)
		}
		out, stderr, code = runPgcanary(t, dir, nil, "status", "--config", cfg, "--admin", p3.admin, "--json")
		if code != 1 || !strings.Contains(stderr, "404") || !strings.Contains(stderr, "no migrations API") {
			t.Fatalf("status --json of a pgcanary without the API: exit %d\n%s\n%s", code, out, stderr)
		}
	})
}
