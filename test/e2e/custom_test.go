package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/flags"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

// customSetup is a database with its own schema and migrations, behind a proxy whose flag file
// the test sets.
type customSetup struct {
	t         *testing.T
	proxy     *testProxy
	dsn       func(user, password string) string
	directDSN string
	flagPath  string
	flags     flags.Source
}

// customProxy creates database db with schema, configures the migrations (YAML list items, with
// database filled in) and starts a proxy with a flag file where every read percentage is 0.
func customProxy(t *testing.T, db, schema, migrations string, o proxyOpts) *customSetup {
	t.Helper()
	ctx := testCtx(t)
	_ = cluster.Exec(ctx, "drop database if exists "+db)
	if err := cluster.Exec(ctx, "create database "+db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "drop database if exists "+db+" with (force)") })
	inDB := func(dsn string) string { return strings.Replace(dsn, "/"+pgtest.TestDB+"?", "/"+db+"?", 1) }
	direct := connectDSN(t, inDB(cluster.DSN(pgtest.SuperUser, "")))
	if _, err := direct.Exec(ctx, schema); err != nil {
		t.Fatalf("schema: %v", err)
	}
	direct.Close(ctx)

	dir := t.TempDir()
	cs := &customSetup{t: t, directDSN: inDB(cluster.DSN(pgtest.SuperUser, "")), flagPath: filepath.Join(dir, "flags.json")}
	cs.setFlags(map[string]float64{})
	yaml := fmt.Sprintf("upstream: %s\nside_dsn: %s\nflags: {file: flags.json}\nmigrations:\n%s",
		cluster.Addr(), cs.directDSN, strings.ReplaceAll(migrations, "$DB", db))
	cfgPath := filepath.Join(dir, "pgcanary.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(cfgPath)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	src, err := flags.NewFile(context.Background(), cs.flagPath, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	cs.flags, o.flags = src, src
	cs.proxy = startConfiguredProxy(t, cfg, o)
	cs.dsn = func(user, password string) string { return inDB(cs.proxy.dsn(user, password)) }
	return cs
}

// setFlags writes the flag file: each migration's read percentage.
func (cs *customSetup) setFlags(percent map[string]float64) {
	cs.t.Helper()
	var items []string
	for m, p := range percent {
		items = append(items, fmt.Sprintf(`%q: {"state": "ENABLED", "variants": {"v": %v}, "defaultVariant": "v"}`, m+".read-percent", p))
	}
	body := `{"flags": {` + strings.Join(items, ",") + `}}`
	tmp := cs.flagPath + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		cs.t.Fatal(err)
	}
	if err := os.Rename(tmp, cs.flagPath); err != nil {
		cs.t.Fatal(err)
	}
	if cs.flags == nil {
		return
	}
	for m, p := range percent {
		pollUntil(cs.t, 10*time.Second, func() bool {
			v, err := cs.flags.Float(context.Background(), m+".read-percent", flags.EvalContext{TargetingKey: "x"})
			return err == nil && v == p
		}, func() string { return fmt.Sprintf("flag %s never became %v", m, p) })
	}
}

// metric reads one sample of the proxy's registry (0 when absent).
func (cs *customSetup) metric(name string, labels map[string]string) float64 {
	return max(gatheredValue(cs.t, cs.proxy.reg, name, labels), 0)
}
