package config

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// Generation is one fully validated configuration with the live catalog it was checked against.
// Statements are planned against the generation that is current when they are planned.
type Generation struct {
	Number   int64
	Config   *Config
	Catalog  Catalog
	Warnings Report
	LoadedAt time.Time
	hash     [sha256.Size]byte
}

// Store holds the current generation. Reading it is one atomic load, so the proxy's hot path
// never waits for a reload.
type Store struct {
	cur atomic.Pointer[Generation]
}

// Current returns the active generation (nil before the first load).
func (s *Store) Current() *Generation { return s.cur.Load() }

// Install makes g the first generation (number 1), for a start without a reloader or before one
// takes over.
func (s *Store) Install(g *Generation) {
	if g.Number == 0 {
		g.Number = 1
	}
	if g.Catalog == nil {
		g.Catalog = Catalog{}
	}
	s.cur.Store(g)
}

// Loader reads, validates and checks the configuration file into a generation.
type Loader struct {
	Path string
	// Override re-applies command-line flags after each read: they win over the file.
	Override func(*Config) error
	// Connect opens the side connection for the live checks; nil uses the config's side_dsn.
	Connect func(*Config) Connector
}

// Load returns a generation (without its number) or the report that rejects the file. A
// database that cannot be reached is an error wrapping ErrUnreachable.
func (l *Loader) Load(ctx context.Context) (*Generation, error) {
	raw, err := os.ReadFile(l.Path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	cfg, err := Parse(l.Path, raw)
	if err != nil {
		return nil, err
	}
	if l.Override != nil {
		if err := l.Override(cfg); err != nil {
			return nil, err
		}
	}
	gen := &Generation{Config: cfg, Catalog: Catalog{}, LoadedAt: time.Now(), hash: sha256.Sum256(raw)}
	if len(cfg.Migrations) == 0 {
		gen.Warnings = cfg.Lint()
		return gen, nil
	}
	report, catalog, err := Check(ctx, cfg, l.connector(cfg))
	if err != nil {
		return nil, err
	}
	if report.HasErrors() {
		return nil, report
	}
	gen.Catalog, gen.Warnings = catalog, report
	return gen, nil
}

// connector is how the loader reaches cfg's databases.
func (l *Loader) connector(cfg *Config) Connector {
	if l.Connect != nil {
		return l.Connect(cfg)
	}
	return DSNConnector(cfg.SideDSN)
}

// ReloadMetrics is what reloading reports.
type ReloadMetrics interface {
	Generation(n int64)
	ReloadFailed()
}

// PromReloadMetrics exports reload metrics to Prometheus.
type PromReloadMetrics struct {
	generation prometheus.Gauge
	failures   prometheus.Counter
}

// NewPromReloadMetrics registers pgcanary_config_generation and
// pgcanary_config_reload_failures_total with reg.
func NewPromReloadMetrics(reg prometheus.Registerer) *PromReloadMetrics {
	m := &PromReloadMetrics{
		generation: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgcanary_config_generation",
			Help: "Number of the active configuration generation (1 at start, +1 per successful reload).",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgcanary_config_reload_failures_total",
			Help: "Reloads rejected because the new configuration did not validate; the running one stays.",
		}),
	}
	reg.MustRegister(m.generation, m.failures)
	return m
}

func (m *PromReloadMetrics) Generation(n int64) { m.generation.Set(float64(n)) }
func (m *PromReloadMetrics) ReloadFailed()      { m.failures.Inc() }

// Reloader swaps in a new generation when the file changes or on request, after full validation.
// An invalid file keeps the running generation.
type Reloader struct {
	loader  *Loader
	store   *Store
	log     *slog.Logger
	metrics ReloadMetrics
	// OnSwap, when set, runs after each new generation is installed (live settings such as the
	// log level).
	OnSwap func(*Generation)
	// RecheckEvery is how often Watch compares the file's content and reads relation names and
	// columns again (0: every 5 s).
	RecheckEvery time.Duration
	mu           sync.Mutex    // one reload at a time
	poke         chan struct{} // DDL seen: read relation names again soon (names.go)
	// namesFailing: the last reading of relation names failed (Watch's goroutine only).
	namesFailing bool
	// drift: the schema change (drift.go) the last reload attempt answered, so that a change the
	// file does not validate against is not loaded again every few seconds. Guarded by mu.
	drift string
}

// NewReloader returns a reloader for store. Call Reload once to load the first generation.
func NewReloader(loader *Loader, store *Store, log *slog.Logger, metrics ReloadMetrics) *Reloader {
	return &Reloader{loader: loader, store: store, log: log, metrics: metrics, poke: make(chan struct{}, 1)}
}

// NamesMayHaveChanged asks Watch to read relation names again soon: a session sent DDL naming a
// migrated relation's name. It never blocks.
func (r *Reloader) NamesMayHaveChanged() {
	select {
	case r.poke <- struct{}{}:
	default:
	}
}

// RefreshNames installs a new generation when the schemas holding relations named like the
// migrated ones changed since the running generation was loaded.
func (r *Reloader) RefreshNames(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.store.Current()
	if cur == nil || len(cur.Catalog) == 0 {
		return nil
	}
	next, err := RefreshNames(ctx, cur, r.loader.connector(cur.Config))
	if err != nil || next == nil {
		return err
	}
	next.Number = cur.Number + 1
	r.install(next)
	r.log.Info("relations named like a migrated one appeared or went: catalog refreshed", "generation", next.Number)
	return nil
}

// Reload loads, validates and swaps. It returns the report or error that kept the running
// generation; an unchanged file is not reloaded.
func (r *Reloader) Reload(ctx context.Context, reason string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur := r.store.Current()
	if cur != nil && reason == "file changed" {
		if raw, err := os.ReadFile(r.loader.Path); err == nil && sha256.Sum256(raw) == cur.hash {
			return nil // an event that did not change the content (touch, chmod, a sibling file)
		}
	}
	gen, err := r.loader.Load(ctx)
	if err != nil {
		if cur != nil {
			r.metrics.ReloadFailed()
			r.log.Error("configuration reload rejected: keeping generation "+fmt.Sprint(cur.Number), "reason", reason, "file", r.loader.Path, "report", err.Error())
		}
		return err
	}
	gen.Number = 1
	if cur != nil {
		gen.Number = cur.Number + 1
		restartOnly(cur.Config, gen.Config, r.log)
	}
	r.drift = ""
	r.install(gen)
	for _, w := range gen.Warnings {
		r.log.Warn(w.String())
	}
	r.log.Info("configuration loaded", "generation", gen.Number, "reason", reason, "migrations", len(gen.Config.Migrations))
	return nil
}

// install makes gen, numbered, the running generation. Holds r.mu.
func (r *Reloader) install(gen *Generation) {
	r.store.cur.Store(gen)
	r.metrics.Generation(gen.Number)
	if r.OnSwap != nil {
		r.OnSwap(gen)
	}
}

// restartOnly logs settings that changed but only take effect on restart. (log_level applies
// live, through Reloader.OnSwap.)
func restartOnly(old, cur *Config, log *slog.Logger) {
	changed := func(name string, a, b any) {
		if a != b {
			log.Warn("setting changed in the file takes effect only after a restart", "setting", name, "running", a, "file", b)
		}
	}
	changed("listen", old.Listen, cur.Listen)
	changed("listen_unix", old.ListenUnix, cur.ListenUnix)
	changed("upstream", old.Upstream, cur.Upstream)
	changed("upstream_tls", old.UpstreamTLS, cur.UpstreamTLS)
	changed("tls", old.TLS, cur.TLS)
	changed("admin.listen", old.Admin.Listen, cur.Admin.Listen)
	changed("max_message_size", old.MaxMessageSize, cur.MaxMessageSize)
	changed("drain_timeout", old.DrainTimeout, cur.DrainTimeout)
	changed("event_loops", old.EventLoops, cur.EventLoops)
	changed("busy_poll", old.BusyPoll, cur.BusyPoll)
	changed("connect_timeout", old.ConnectTimeout, cur.ConnectTimeout)
	changed("log_format", old.LogFormat, cur.LogFormat)
	changed("admin.pprof", old.Admin.Pprof, cur.Admin.Pprof)
	changed("admin.token_file", old.Admin.TokenFile, cur.Admin.TokenFile)
	changed("flags", old.Flags, cur.Flags)
	changed("routing_key", old.RoutingKey, cur.RoutingKey)
	changed("side_dsn", old.SideDSN, cur.SideDSN)
	changed("shadow", old.Shadow, cur.Shadow)
}

// recheckEvery is how often Watch compares the file's content even without an event, and reads
// relation names again (DDL made outside the proxy).
const recheckEvery = 5 * time.Second

// namesAfterDDL is how long Watch waits after a session's DDL before reading names: the
// statement's transaction usually commits by then.
const namesAfterDDL = 250 * time.Millisecond

// CheckDrift loads the configuration again when the columns of the migrated relations changed
// since the running generation loaded (drift.go). When it does not validate against them, the
// drifted migrations are marked stale in a copy of the running generation: their reads stay on
// the old shape (their writes are still mirrored as planned) until the configuration validates
// again, or the columns are back as they were.
func (r *Reloader) CheckDrift(ctx context.Context) error {
	cur := r.store.Current()
	if cur == nil || len(cur.Catalog) == 0 {
		return nil
	}
	drift, err := DetectDrift(ctx, cur, r.loader.connector(cur.Config))
	if err != nil {
		return err
	}
	r.mu.Lock()
	key := fmt.Sprint(drift) // fmt prints maps in key order
	retry := len(drift) > 0 && key != r.drift
	r.drift = key
	r.mu.Unlock()
	if retry {
		r.log.Warn("the migrated relations' columns changed: loading the configuration again", "changes", key)
		if r.Reload(ctx, "schema changed") == nil {
			return nil
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	cur = r.store.Current()
	want := map[string]string{}
	for name := range cur.Catalog {
		want[name] = drift[name]
	}
	next := WithStale(cur, want)
	if next == nil {
		return nil
	}
	next.Number = cur.Number + 1
	r.install(next)
	for _, name := range sortedKeys(want) {
		if why := want[name]; why != "" {
			r.log.Error("a migration's live schema changed and the configuration does not validate against it: its reads stay on the old shape until it does", "migration", name, "change", why)
		} else if cur.Catalog[name].Stale != "" {
			r.log.Info("a migration's live schema matches its catalog again: its reads are routed again", "migration", name)
		}
	}
	return nil
}

// refreshNames runs RefreshNames, logging the first failure of a streak and the recovery (it runs
// every few seconds: a side database that is down must not flood the log).
func (r *Reloader) refreshNames(ctx context.Context) {
	err := r.RefreshNames(ctx)
	if err == nil {
		err = r.CheckDrift(ctx)
	}
	switch {
	case err != nil && ctx.Err() == nil && !r.namesFailing:
		r.namesFailing = true
		r.log.Warn("cannot read relation names again; planning keeps the ones it has", "err", err)
	case err == nil && r.namesFailing:
		r.namesFailing = false
		r.log.Info("relation names read again")
	}
}

// recheck reloads when the file's content differs from the running generation's (only once
// one runs: loading the first is the caller's business).
func (r *Reloader) recheck(ctx context.Context) {
	if r.store.Current() != nil {
		_ = r.Reload(ctx, "file changed")
	}
}

// Watch reloads when the file's directory changes (editors replace files by rename; a Kubernetes
// ConfigMap update swaps a symlink) and on each value from signals (SIGHUP). Events are coalesced
// for debounce. It returns when ctx ends.
func (r *Reloader) Watch(ctx context.Context, signals <-chan os.Signal, debounce time.Duration) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch config: %w", err)
	}
	defer w.Close()
	dir := filepath.Dir(r.loader.Path)
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch config directory %s: %w", dir, err)
	}
	// A change made between the first load and the watch went unseen; and inotify can drop events
	// (queue overflow). Comparing the content now and then costs a read and a hash.
	r.recheck(ctx)
	every := r.RecheckEvery
	if every <= 0 {
		every = recheckEvery
	}
	recheck := time.NewTicker(every)
	defer recheck.Stop()
	var timer, names, namesAgain <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-recheck.C:
			r.recheck(ctx)
			r.refreshNames(ctx)
		case <-r.poke:
			// Twice: right after the DDL's transaction most likely committed, and once more in case
			// it took longer (the periodic read covers anything slower).
			names, namesAgain = time.After(namesAfterDDL), time.After(4*namesAfterDDL)
		case <-names:
			names = nil
			r.refreshNames(ctx)
		case <-namesAgain:
			namesAgain = nil
			r.refreshNames(ctx)
		case <-signals:
			_ = r.Reload(ctx, "SIGHUP")
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("config watcher closed")
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			timer = time.After(debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("config watcher closed")
			}
			r.log.Warn("config watcher", "err", err)
		case <-timer:
			timer = nil
			_ = r.Reload(ctx, "file changed")
		}
	}
}
