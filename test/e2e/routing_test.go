package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/flags"
	"github.com/pgcanary/pgcanary/router"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

// flagFile is a flagd flag file the test rewrites to ramp users-split-name.
type flagFile struct {
	t    *testing.T
	path string
	src  flags.Source
}

func newFlagFile(t *testing.T) *flagFile {
	f := &flagFile{t: t, path: filepath.Join(t.TempDir(), "flags.json")}
	f.write(0)
	src, err := flags.NewFile(context.Background(), f.path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	f.src = src
	return f
}

func (f *flagFile) write(percent float64) {
	f.t.Helper()
	body := fmt.Sprintf(`{"flags": {"users-split-name.read-percent": {"state": "ENABLED",
		"variants": {"set": %v, "all": 100}, "defaultVariant": "set",
		"targeting": {"if": [{"==": [{"var": "tenant"}, "42"]}, "all", null]}}}}`, percent)
	tmp := f.path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		f.t.Fatal(err)
	}
	if err := os.Rename(tmp, f.path); err != nil {
		f.t.Fatal(err)
	}
}

// set writes percent and waits until the flag source reports it.
func (f *flagFile) set(percent float64) {
	f.t.Helper()
	f.write(percent)
	pollUntil(f.t, 10*time.Second, func() bool {
		v, err := f.src.Float(context.Background(), "users-split-name.read-percent", flags.EvalContext{TargetingKey: "x"})
		return err == nil && v == percent
	}, func() string { return fmt.Sprintf("flag never became %v", percent) })
}

func routeCounts(t *testing.T, p *testProxy) (old, new float64) {
	t.Helper()
	get := func(route string) float64 {
		v := gatheredValue(t, p.reg, "pgcanary_statements_total", map[string]string{"migration": "users-split-name", "kind": "read", "route": route})
		return max(v, 0)
	}
	return get("old"), get("new")
}

// TestRoutingShareOverSessions: at 0, 25 and 100 %, the share of 2000 sessions' reads served by the
// new shape is within 3 points of the setting, and every read returns what the old shape holds.
func TestRoutingShareOverSessions(t *testing.T) {
	ff := newFlagFile(t)
	p, dsn := migratedProxyWith(t, "routing_share", proxyOpts{flags: ff.src})
	const sessions = 2000
	for _, pct := range []float64{0, 25, 100} {
		ff.set(pct)
		old0, new0 := routeCounts(t, p)
		var wg sync.WaitGroup
		errs := make(chan error, sessions)
		for w := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < sessions; i += 8 {
					conn, err := pgx.Connect(context.Background(), dsn(pgtest.SuperUser, ""))
					if err != nil {
						errs <- err
						return
					}
					mode := pgx.QueryExecModeSimpleProtocol
					if i%2 == 0 {
						mode = pgx.QueryExecModeExec // unnamed statement, extended protocol
					}
					var name string
					err = conn.QueryRow(context.Background(), "SELECT full_name FROM users WHERE id = $1", mode, 2).Scan(&name)
					conn.Close(context.Background())
					if err != nil {
						errs <- err
						return
					}
					if name != "Grace Brewster Hopper" {
						errs <- fmt.Errorf("read returned %q", name)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatalf("at %v%%: %v", pct, err)
		}
		old1, new1 := routeCounts(t, p)
		total := (old1 - old0) + (new1 - new0)
		share := 100 * (new1 - new0) / total
		t.Logf("at %v%%: %v of %v reads served by the new shape (%.1f%%)", pct, new1-new0, total, share)
		if total != sessions || share < pct-3 || share > pct+3 {
			t.Fatalf("at %v%%: %.1f%% of %v reads on the new shape", pct, share, total)
		}
	}
}

// TestRoutingStickyAndRampOnlyMovesToNew: with routing_key application_name a key always takes the
// same route, the route is the documented bucket's, and 10 % -> 30 % only moves keys to new.
func TestRoutingStickyAndRampOnlyMovesToNew(t *testing.T) {
	ff := newFlagFile(t)
	p, dsn := migratedProxyWith(t, "routing_sticky", proxyOpts{flags: ff.src, routingKey: "application_name"})
	routeOf := func(app string) string {
		conn := connectDSN(t, dsn(pgtest.SuperUser, "")+"&application_name="+app)
		defer conn.Close(context.Background())
		old0, new0 := routeCounts(t, p)
		if _, err := conn.Exec(context.Background(), "SELECT full_name FROM users WHERE id = 1", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
		old1, new1 := routeCounts(t, p)
		switch {
		case new1 > new0 && old1 == old0:
			return "new"
		case old1 > old0 && new1 == new0:
			return "old"
		}
		t.Fatalf("no single route counted for %s", app)
		return ""
	}
	apps := make([]string, 60)
	for i := range apps {
		apps[i] = fmt.Sprint("app-", i)
	}
	ff.set(10)
	at10 := map[string]string{}
	for _, app := range apps {
		at10[app] = routeOf(app)
		if again := routeOf(app); again != at10[app] {
			t.Fatalf("%s took %s, then %s", app, at10[app], again)
		}
		want := "old"
		if router.RoutesNew(router.Bucket("users-split-name", app), 10) {
			want = "new"
		}
		if at10[app] != want {
			t.Fatalf("%s routed %s, the documented bucket says %s", app, at10[app], want)
		}
	}
	ff.set(30)
	moved := 0
	for _, app := range apps {
		at30 := routeOf(app)
		if at10[app] == "new" && at30 != "new" {
			t.Fatalf("%s moved from new back to old when the percentage rose", app)
		}
		if at10[app] == "old" && at30 == "new" {
			moved++
		}
	}
	t.Logf("10%% -> 30%%: %d of %d keys moved to new, none back", moved, len(apps))
}

// TestRoutingFlagEditTakesEffect: a flag file edit changes routing within a second.
func TestRoutingFlagEditTakesEffect(t *testing.T) {
	ff := newFlagFile(t)
	p, dsn := migratedProxyWith(t, "routing_edit", proxyOpts{flags: ff.src})
	conn := connectDSN(t, dsn(pgtest.SuperUser, ""))
	ff.set(0)
	start := time.Now()
	ff.write(100)
	for {
		_, new0 := routeCounts(t, p)
		if _, err := conn.Exec(context.Background(), "SELECT full_name FROM users WHERE id = 3", pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatal(err)
		}
		if _, new1 := routeCounts(t, p); new1 > new0 {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("the flag file edit did not take effect within 5 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	latency := time.Since(start)
	t.Logf("flag file edit took effect after %s", latency)
	if latency > time.Second {
		t.Errorf("flag edit took %s, goal 1 s", latency)
	}
	// A tenant attribute (startup parameter) picked by the targeting rule goes new at 0 %.
	ff.set(0)
	tenant := connectDSN(t, dsn(pgtest.SuperUser, "")+"&app.tenant=42")
	_, new0 := routeCounts(t, p)
	if _, err := tenant.Exec(context.Background(), "SELECT full_name FROM users WHERE id = 3", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	if _, new1 := routeCounts(t, p); new1 != new0+1 {
		t.Fatal("the targeting rule for tenant 42 did not send its read to the new shape")
	}
	// The same through libpq's PGOPTIONS (a setting inside the options startup parameter).
	viaOptions := connectDSN(t, dsn(pgtest.SuperUser, "")+"&options=-c%20app.tenant%3D42")
	_, new0 = routeCounts(t, p)
	if _, err := viaOptions.Exec(context.Background(), "SELECT full_name FROM users WHERE id = 3", pgx.QueryExecModeSimpleProtocol); err != nil {
		t.Fatal(err)
	}
	if _, new1 := routeCounts(t, p); new1 != new0+1 {
		t.Fatal("a tenant set through options did not reach the targeting rule")
	}
}
