package config_test

// Hot reload: Reloader.Reload and Reloader.Watch against real files (in place, by rename, as a
// Kubernetes ConfigMap swaps them) and a real PostgreSQL catalog.

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgcanary/pgcanary/config"
)

// reloadDebounce is the Watch debounce used here: short, so the tests are quick, and long
// enough that the few syscalls of one write land in one window.
const reloadDebounce = 100 * time.Millisecond

// settle is how long a test waits to conclude that an event did NOT produce a generation.
const settle = 8 * reloadDebounce

// syncBuffer is a log sink written by the watcher goroutine and read by the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// reloadRig is a Reloader with its store, registry and log.
type reloadRig struct {
	path  string
	store *config.Store
	r     *config.Reloader
	reg   *prometheus.Registry
	log   *syncBuffer
}

func newReloadRig(t *testing.T, path string) *reloadRig {
	t.Helper()
	rig := &reloadRig{path: path, store: &config.Store{}, reg: prometheus.NewRegistry(), log: &syncBuffer{}}
	logger := slog.New(slog.NewTextHandler(rig.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	rig.r = config.NewReloader(&config.Loader{Path: path}, rig.store, logger, config.NewPromReloadMetrics(rig.reg))
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("reloader log:\n%s", rig.log.String())
		}
	})
	return rig
}

// metric reads an unlabelled gauge or counter from the rig's registry (-1 when absent).
func (rig *reloadRig) metric(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := rig.reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		if c := m.GetCounter(); c != nil {
			return c.GetValue()
		}
	}
	return -1
}

func (rig *reloadRig) generation(t *testing.T) float64 {
	return rig.metric(t, "pgcanary_config_generation")
}

func (rig *reloadRig) failures(t *testing.T) float64 {
	return rig.metric(t, "pgcanary_config_reload_failures_total")
}

// number is the current generation's number, 0 before the first load.
func (rig *reloadRig) number() int64 {
	if g := rig.store.Current(); g != nil {
		return g.Number
	}
	return 0
}

// watch runs Watch until the test ends and returns the channel that stands for SIGHUP. The
// channel is unbuffered, so a send on it returns only once Watch has set up its directory watch
// and reached its loop.
func (rig *reloadRig) watch(t *testing.T) chan<- os.Signal {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal)
	done := make(chan error, 1)
	go func() { done <- rig.r.Watch(ctx, sig, reloadDebounce) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Watch: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Watch did not return after its context ended")
		}
	})
	return sig
}

// sighup delivers one SIGHUP to Watch, failing the test if Watch does not take it.
func sighup(t *testing.T, sig chan<- os.Signal) {
	t.Helper()
	select {
	case sig <- syscall.SIGHUP:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not take the SIGHUP within 10s")
	}
}

// waitFor polls cond every 10 ms for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5s: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitGeneration waits until the store holds generation n (and no further one).
func (rig *reloadRig) waitGeneration(t *testing.T, n int64) *config.Generation {
	t.Helper()
	waitFor(t, fmt.Sprintf("generation %d (have %d)", n, rig.number()), func() bool { return rig.number() >= n })
	g := rig.store.Current()
	if g.Number != n {
		t.Fatalf("generation %d, want exactly %d", g.Number, n)
	}
	if got := rig.generation(t); got != float64(n) {
		t.Fatalf("pgcanary_config_generation = %v, want %d", got, n)
	}
	return g
}

// expectStill waits settle and asserts the store still holds exactly g.
func (rig *reloadRig) expectStill(t *testing.T, g *config.Generation, after string) {
	t.Helper()
	time.Sleep(settle)
	if cur := rig.store.Current(); cur != g {
		t.Fatalf("after %s: generation %d replaced generation %d", after, cur.Number, g.Number)
	}
	if got := rig.generation(t); got != float64(g.Number) {
		t.Fatalf("after %s: pgcanary_config_generation = %v, want %d", after, got, g.Number)
	}
}

// writeFile writes content in place (truncate and write, as `echo >` or an editor without
// backups does).
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// replaceFile writes content to a temporary file and renames it over path, as most editors
// and configuration tools do.
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	writeFile(t, tmp, content)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// lineOf is the 1-based line of the first occurrence of needle in text.
func lineOf(t *testing.T, text, needle string) int {
	t.Helper()
	i := strings.Index(text, needle)
	if i < 0 {
		t.Fatalf("%q not in:\n%s", needle, text)
	}
	return strings.Count(text[:i], "\n") + 1
}

// examplesDB makes a fresh database with examples/schema.sql (few rows) and drops it afterwards.
func examplesDB(t *testing.T, name string) string {
	t.Helper()
	db := createDB(t, name)
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "drop database if exists "+name+" with (force)") })
	psqlFile(t, db, "../examples/schema.sql", "users=50", "orders=100")
	return db
}

// ordersYAML is a configuration with the orders-cents migration of the examples; write is the
// amount_cents expression and ratio the compare ratio.
func ordersYAML(db, write, ratio string) string {
	return fmt.Sprintf(`upstream: 127.0.0.1:5432
side_dsn: %s
migrations:
  - name: orders-cents
    database: %s
    old: public.orders
    new: public.orders
    key: [id]
    write:
      amount_cents: %s
    read:
      amount: (amount_cents / 100.0)::numeric(12, 2)
    compare: {ratio: %s}
`, superDSN(db), db, write, ratio)
}

// plainYAML is a configuration without migrations: reloading it needs no database.
func plainYAML(listen, comment string) string {
	return fmt.Sprintf("# %s\nupstream: 127.0.0.1:5432\nlisten: %s\nlog_level: info\n", comment, listen)
}

// TestReloadInitialExamples: the first Reload of the example configuration makes generation 1
// with the live catalog of both migrations and exports it.
func TestReloadInitialExamples(t *testing.T) {
	db := examplesDB(t, "reload_initial")
	raw, err := os.ReadFile("../examples/pgcanary.yaml")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "pgcanary.yaml")
	writeFile(t, path, string(raw))
	t.Setenv("PGCANARY_UPSTREAM", cluster.Addr())
	t.Setenv("PGCANARY_SIDE_DSN", superDSN(db))
	t.Setenv("PGCANARY_DATABASE", db)

	rig := newReloadRig(t, path)
	if rig.store.Current() != nil {
		t.Fatal("a new store has a generation")
	}
	if err := rig.r.Reload(context.Background(), "start"); err != nil {
		t.Fatalf("initial reload: %v", err)
	}
	g := rig.waitGeneration(t, 1)
	if g.Config == nil || g.Config.Path() != path || g.Config.Upstream != cluster.Addr() || len(g.Config.Migrations) != 2 {
		t.Fatalf("generation 1 config: %+v", g.Config)
	}
	if len(g.Warnings) != 0 {
		t.Errorf("warnings on the examples:\n%s", g.Warnings.Error())
	}
	if g.LoadedAt.IsZero() {
		t.Error("LoadedAt is not set")
	}
	users, orders := g.Catalog["users-split-name"], g.Catalog["orders-cents"]
	if len(g.Catalog) != 2 || users == nil || orders == nil {
		t.Fatalf("catalog: %+v", g.Catalog)
	}
	if users.Old.Name != "users" || users.New.Name != "users_v2" || len(users.New.Columns) != 11 {
		t.Errorf("users-split-name catalog: old %+v new %+v", users.Old, users.New)
	}
	if _, ok := users.New.Column("first_name"); !ok {
		t.Error("users_v2.first_name missing from the catalog")
	}
	if orders.Old.OID != orders.New.OID || orders.Old.Name != "orders" {
		t.Errorf("orders-cents is a same-table migration: old %+v new %+v", orders.Old, orders.New)
	}
	if c, ok := orders.Old.Column("amount_cents"); !ok || c.TypeName != "bigint" {
		t.Errorf("orders.amount_cents: %+v", c)
	}
	if f := rig.failures(t); f != 0 {
		t.Errorf("pgcanary_config_reload_failures_total = %v after a clean start", f)
	}
	if log := rig.log.String(); !strings.Contains(log, "configuration loaded") || !strings.Contains(log, "generation=1") {
		t.Errorf("no 'configuration loaded' generation=1 in the log:\n%s", log)
	}

	// An event on an unchanged file keeps the generation; the file's own content decides.
	if err := rig.r.Reload(context.Background(), "file changed"); err != nil {
		t.Fatal(err)
	}
	if rig.store.Current() != g {
		t.Fatal("a 'file changed' reload of an unchanged file replaced the generation")
	}
}

// TestReloadWatchEditAndRename: Watch picks up an in-place edit and a rename-replace, and
// ignores events that do not change the content (touch, chmod, the same bytes again, a sibling
// file).
func TestReloadWatchEditAndRename(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pgcanary.yaml")
	writeFile(t, path, plainYAML("127.0.0.1:7001", "v1"))
	rig := newReloadRig(t, path)
	if err := rig.r.Reload(context.Background(), "start"); err != nil {
		t.Fatal(err)
	}
	g1 := rig.waitGeneration(t, 1)

	sig := rig.watch(t)
	// SIGHUP reloads even an unchanged file: a new generation, validated anew.
	sighup(t, sig)
	g2 := rig.waitGeneration(t, 2)
	if g2 == g1 || g2.Config == g1.Config || g2.Config.Listen != "127.0.0.1:7001" {
		t.Fatalf("SIGHUP generation: %+v", g2)
	}
	if !strings.Contains(rig.log.String(), "reason=SIGHUP") {
		t.Errorf("log does not name the SIGHUP reason:\n%s", rig.log.String())
	}

	// In place.
	writeFile(t, path, plainYAML("127.0.0.1:7002", "v2"))
	g3 := rig.waitGeneration(t, 3)
	if g3.Config.Listen != "127.0.0.1:7002" {
		t.Fatalf("generation 3 listen %q", g3.Config.Listen)
	}
	if log := rig.log.String(); !strings.Contains(log, `reason="file changed"`) ||
		!strings.Contains(log, "takes effect only after a restart") || !strings.Contains(log, "setting=listen") {
		t.Errorf("log lacks the file-changed reload or the restart-only warning for listen:\n%s", log)
	}

	// By rename, as editors save.
	replaceFile(t, path, plainYAML("127.0.0.1:7003", "v3"))
	g4 := rig.waitGeneration(t, 4)
	if g4.Config.Listen != "127.0.0.1:7003" {
		t.Fatalf("generation 4 listen %q", g4.Config.Listen)
	}

	// Events without a content change.
	now := time.Now().Add(time.Minute)
	if err := os.Chtimes(path, now, now); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	rig.expectStill(t, g4, "touch and chmod")
	writeFile(t, path, plainYAML("127.0.0.1:7003", "v3"))
	rig.expectStill(t, g4, "rewriting the same bytes in place")
	replaceFile(t, path, plainYAML("127.0.0.1:7003", "v3"))
	rig.expectStill(t, g4, "renaming the same bytes over the file")
	writeFile(t, filepath.Join(dir, "flags.json"), `{"flags": {}}`)
	rig.expectStill(t, g4, "writing a sibling file")

	// And a real change still comes through, as generation 5 (not 6).
	writeFile(t, path, plainYAML("127.0.0.1:7005", "v5"))
	if g := rig.waitGeneration(t, 5); g.Config.Listen != "127.0.0.1:7005" {
		t.Fatalf("generation 5 listen %q", g.Config.Listen)
	}
	if f := rig.failures(t); f != 0 {
		t.Fatalf("failures = %v, want 0", f)
	}
}

// TestReloadWatchKubernetesConfigMap: a ConfigMap volume is a timestamped directory, a ..data
// symlink to it, and pgcanary.yaml -> ..data/pgcanary.yaml; the kubelet updates it by renaming a
// new ..data symlink over the old one. The file named by the Loader never changes itself.
func TestReloadWatchKubernetesConfigMap(t *testing.T) {
	dir := t.TempDir()
	// publish makes a timestamped directory with content and points ..data at it, as the kubelet
	// does (atomic_writer.go): a ..data_tmp symlink renamed over ..data.
	publish := func(stamp, content string) {
		t.Helper()
		ts := "..2026_01_01_" + stamp
		if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, ts, "pgcanary.yaml"), content)
		if err := os.Symlink(ts, filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	}
	publish("00_00_00.1", plainYAML("127.0.0.1:7101", "configmap v1"))
	path := filepath.Join(dir, "pgcanary.yaml")
	if err := os.Symlink(filepath.Join("..data", "pgcanary.yaml"), path); err != nil {
		t.Fatal(err)
	}

	rig := newReloadRig(t, path)
	if err := rig.r.Reload(context.Background(), "start"); err != nil {
		t.Fatal(err)
	}
	if g := rig.waitGeneration(t, 1); g.Config.Listen != "127.0.0.1:7101" {
		t.Fatalf("generation 1 listen %q", g.Config.Listen)
	}
	sig := rig.watch(t)
	sighup(t, sig) // Watch is watching from here on
	rig.waitGeneration(t, 2)

	publish("00_01_00.2", plainYAML("127.0.0.1:7102", "configmap v2"))
	g3 := rig.waitGeneration(t, 3)
	if g3.Config.Listen != "127.0.0.1:7102" {
		t.Fatalf("after the ConfigMap update, generation 3 listen %q", g3.Config.Listen)
	}
	// The kubelet then removes the old directory: no content change for pgcanary.yaml.
	if err := os.RemoveAll(filepath.Join(dir, "..2026_01_01_00_00_00.1")); err != nil {
		t.Fatal(err)
	}
	rig.expectStill(t, g3, "removing the old ConfigMap directory")

	publish("00_02_00.3", plainYAML("127.0.0.1:7103", "configmap v3"))
	if g := rig.waitGeneration(t, 4); g.Config.Listen != "127.0.0.1:7103" {
		t.Fatalf("after the second update, generation 4 listen %q", g.Config.Listen)
	}
	if f := rig.failures(t); f != 0 {
		t.Fatalf("failures = %v, want 0", f)
	}
}

// TestReloadInvalidKeepsRunning: a version that does not validate (YAML, then a live error)
// keeps the running generation, counts a failure and logs the report with file:line; the next
// valid version is picked up.
func TestReloadInvalidKeepsRunning(t *testing.T) {
	db := examplesDB(t, "reload_invalid")
	path := filepath.Join(t.TempDir(), "pgcanary.yaml")
	writeFile(t, path, ordersYAML(db, "(amount * 100)::bigint", "0.1"))
	rig := newReloadRig(t, path)
	if err := rig.r.Reload(context.Background(), "start"); err != nil {
		t.Fatal(err)
	}
	g1 := rig.waitGeneration(t, 1)
	if g1.Catalog["orders-cents"] == nil {
		t.Fatalf("catalog: %+v", g1.Catalog)
	}
	sig := rig.watch(t)
	sighup(t, sig)
	g2 := rig.waitGeneration(t, 2)

	rejected := func(step string, failures float64, wantLog string) {
		t.Helper()
		waitFor(t, fmt.Sprintf("%s: failures %v (have %v)", step, failures, rig.failures(t)), func() bool { return rig.failures(t) >= failures })
		if f := rig.failures(t); f != failures {
			t.Fatalf("%s: failures %v, want %v", step, f, failures)
		}
		if cur := rig.store.Current(); cur != g2 || cur.Number != 2 || cur.Config != g2.Config {
			t.Fatalf("%s: the running generation was replaced by %d", step, cur.Number)
		}
		if got := rig.generation(t); got != 2 {
			t.Fatalf("%s: pgcanary_config_generation = %v, want 2", step, got)
		}
		// The counter moves just before the log line is written.
		waitFor(t, fmt.Sprintf("%s: log names the rejection and %q", step, wantLog), func() bool {
			log := rig.log.String()
			return strings.Count(log, "configuration reload rejected: keeping generation 2") == int(failures) && strings.Contains(log, wantLog)
		})
	}

	// A YAML error: a misspelt key on line 3.
	bad := strings.Replace(ordersYAML(db, "(amount * 100)::bigint", "0.1"), "migrations:", "migratons:", 1)
	replaceFile(t, path, bad)
	rejected("YAML error", 1, fmt.Sprintf("%s:%d: error: field migratons not found", path, lineOf(t, bad, "migratons:")))

	// A live error: the write expression does not type-check against public.orders.
	bad = ordersYAML(db, "(amount * 100)::bigint + no_such_column", "0.1")
	writeFile(t, path, bad)
	rejected("live error", 2, fmt.Sprintf("%s:%d: error: migration orders-cents: write.amount_cents: expression does not type-check",
		path, lineOf(t, bad, "amount_cents:")))

	// SIGHUP with the invalid file: rejected again.
	sighup(t, sig)
	rejected("SIGHUP on the invalid file", 3, "no_such_column")

	// A valid version again.
	replaceFile(t, path, ordersYAML(db, "(amount * 100)::bigint", "0.5"))
	g3 := rig.waitGeneration(t, 3)
	if r := *g3.Config.Migrations[0].Compare.Ratio; r != 0.5 {
		t.Fatalf("generation 3 compare ratio %v, want 0.5", r)
	}
	if g3.Catalog["orders-cents"] == nil {
		t.Fatalf("generation 3 catalog: %+v", g3.Catalog)
	}
	if f := rig.failures(t); f != 3 {
		t.Fatalf("failures %v after the valid version, want 3", f)
	}
}

// execIn runs sql in database db as the superuser.
func execIn(t *testing.T, db, sql string) {
	t.Helper()
	conn, err := config.DSNConnector(superDSN(db))(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestReloadSIGHUPRevalidatesLiveCatalog: the same file is valid or not depending on the
// database; SIGHUP re-checks it against the live catalog although the file did not change,
// while a file event on unchanged content does not.
func TestReloadSIGHUPRevalidatesLiveCatalog(t *testing.T) {
	db := createDB(t, "reload_sighup")
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "drop database if exists reload_sighup with (force)") })
	run := func(sql string) { t.Helper(); execIn(t, db, sql) }
	run(`create table notes (id int primary key, body text not null);
	      create table notes_v2 (id int primary key, body text not null)`)
	yaml := fmt.Sprintf(`side_dsn: %s
migrations:
  - name: notes-extra
    database: %s
    old: notes
    new: notes_v2
    key: [id]
    write:
      extra: upper(body)
`, superDSN(db), db)
	path := filepath.Join(t.TempDir(), "pgcanary.yaml")
	writeFile(t, path, yaml)
	wantFinding := fmt.Sprintf("%s:%d: error: migration notes-extra: write: column extra does not exist in new relation public.notes_v2",
		path, lineOf(t, yaml, "extra:"))

	rig := newReloadRig(t, path)
	rig.r.RecheckEvery = time.Hour // only SIGHUP reloads here, not the schema drift check
	err := rig.r.Reload(context.Background(), "start")
	if err == nil || !strings.Contains(err.Error(), wantFinding) {
		t.Fatalf("initial reload before the column exists: %v\nwant %q", err, wantFinding)
	}
	if rig.store.Current() != nil {
		t.Fatal("a rejected first load installed a generation")
	}

	run("alter table notes_v2 add column extra text")
	sig := rig.watch(t)
	sighup(t, sig)
	g1 := rig.waitGeneration(t, 1)
	if _, ok := g1.Catalog["notes-extra"].New.Column("extra"); !ok {
		t.Fatalf("generation 1 catalog lacks notes_v2.extra: %+v", g1.Catalog["notes-extra"].New)
	}

	// The column goes away. A file event on the unchanged file does not look at the database...
	run("alter table notes_v2 drop column extra")
	if err := rig.r.Reload(context.Background(), "file changed"); err != nil {
		t.Fatalf("'file changed' on an unchanged file: %v", err)
	}
	if rig.store.Current() != g1 || rig.failures(t) != 0 {
		t.Fatal("'file changed' on an unchanged file reloaded")
	}
	// ...SIGHUP does, and rejects it, keeping generation 1.
	sighup(t, sig)
	waitFor(t, "SIGHUP rejection counted", func() bool { return rig.failures(t) >= 1 })
	if cur := rig.store.Current(); cur != g1 {
		t.Fatalf("rejected SIGHUP reload replaced generation 1 by %d", cur.Number)
	}
	waitFor(t, "the log names the SIGHUP rejection and "+wantFinding, func() bool {
		log := rig.log.String()
		return strings.Contains(log, wantFinding) && strings.Contains(log, `keeping generation 1" reason=SIGHUP`)
	})

	// The column is back: SIGHUP makes generation 2.
	run("alter table notes_v2 add column extra varchar(100)")
	sighup(t, sig)
	g2 := rig.waitGeneration(t, 2)
	if c, ok := g2.Catalog["notes-extra"].New.Column("extra"); !ok || c.TypeName != "character varying(100)" {
		t.Fatalf("generation 2 catalog, notes_v2.extra: %+v", c)
	}
	if f := rig.failures(t); f != 1 {
		t.Fatalf("failures %v, want 1", f)
	}
}

// TestReloadConcurrentReaders: readers of Store.Current never race with reloads (run with
// -race) and never see the generation number go down; concurrent reloads number generations
// one by one.
func TestReloadConcurrentReaders(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pgcanary.yaml")
	writeFile(t, path, plainYAML("127.0.0.1:7201", "concurrent"))
	rig := newReloadRig(t, path)
	if err := rig.r.Reload(context.Background(), "start"); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var readers sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			var last int64
			// Each reader reads at least once, even when the reloads finish before it is scheduled.
			for {
				g := rig.store.Current()
				if g == nil || g.Config == nil || g.Config.Listen != "127.0.0.1:7201" {
					errs <- fmt.Errorf("incomplete generation: %+v", g)
					return
				}
				if g.Number < last {
					errs <- fmt.Errorf("generation went from %d down to %d", last, g.Number)
					return
				}
				last = g.Number
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}

	const writers, each = 8, 10
	var reloads sync.WaitGroup
	for range writers {
		reloads.Add(1)
		go func() {
			defer reloads.Done()
			for range each {
				if err := rig.r.Reload(context.Background(), "SIGHUP"); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	reloads.Wait()
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := rig.number(); n != 1+writers*each {
		t.Fatalf("after %d reloads generation %d, want %d", writers*each, n, 1+writers*each)
	}
	if got := rig.generation(t); got != 1+writers*each {
		t.Fatalf("pgcanary_config_generation = %v, want %d", got, 1+writers*each)
	}
}

// TestReloadSchemaDrift: a column added to a migrated relation behind the configuration's back
// is noticed by Watch. When the file still validates, a fresh generation lists the column; when it
// does not (an old column with no read mapping), the migration is marked stale, and unmarked when
// the column goes away again.
func TestReloadSchemaDrift(t *testing.T) {
	db := createDB(t, "reload_drift")
	t.Cleanup(func() { _ = cluster.Exec(context.Background(), "drop database if exists reload_drift with (force)") })
	run := func(sql string) { t.Helper(); execIn(t, db, sql) }
	run(`create table notes (id int primary key, body text not null);
	      create table notes_v2 (id int primary key, body text not null)`)
	path := filepath.Join(t.TempDir(), "pgcanary.yaml")
	writeFile(t, path, fmt.Sprintf(`side_dsn: %s
migrations:
  - name: notes-copy
    database: %s
    old: notes
    new: notes_v2
    key: [id]
`, superDSN(db), db))
	rig := newReloadRig(t, path)
	rig.r.RecheckEvery = 100 * time.Millisecond
	if err := rig.r.Reload(context.Background(), "start"); err != nil {
		t.Fatal(err)
	}
	rig.watch(t)

	// A column of the new table alone: the file still validates, and the catalog is read again.
	run("alter table notes_v2 add column extra text")
	waitFor(t, "a generation whose catalog lists notes_v2.extra", func() bool {
		_, ok := rig.store.Current().Catalog["notes-copy"].New.Column("extra")
		return ok
	})
	if s := rig.store.Current().Catalog["notes-copy"].Stale; s != "" {
		t.Fatalf("a valid reload is marked stale: %s", s)
	}

	// A column of the old table that nothing maps: the file no longer validates.
	run("alter table notes add column nickname text")
	waitFor(t, "the migration marked stale", func() bool { return rig.store.Current().Catalog["notes-copy"].Stale != "" })
	cur := rig.store.Current()
	if want := "public.notes: column nickname added"; cur.Catalog["notes-copy"].Stale != want {
		t.Fatalf("stale %q, want %q", cur.Catalog["notes-copy"].Stale, want)
	}
	waitFor(t, "the log names the migration and the change", func() bool {
		return strings.Contains(rig.log.String(), "migration=notes-copy change=\"public.notes: column nickname added\"")
	})
	// The same drift is not loaded again every recheck.
	time.Sleep(settle)
	failures := rig.failures(t)
	time.Sleep(settle)
	if rig.failures(t) != failures || rig.store.Current() != cur {
		t.Fatalf("the same drift was reloaded again: failures %v -> %v", failures, rig.failures(t))
	}

	// The column goes: the catalog matches again, and the mark is lifted.
	run("alter table notes drop column nickname")
	waitFor(t, "the stale mark lifted", func() bool { return rig.store.Current().Catalog["notes-copy"].Stale == "" })
}
