package canary

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/pgcanary/pgcanary/admin"
	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/flags"
	"github.com/pgcanary/pgcanary/shadow"
)

// Options configures New.
type Options struct {
	Store *config.Store // the live configuration: migrations and their compare options
	Flags flags.Source  // compare-ratio and read-percent flags; nil: compare.ratio, 0 %
	// Registerer receives the canary's metrics; Gatherer is read back for the counters the admin
	// API reports (normally the same registry).
	Registerer prometheus.Registerer
	Gatherer   prometheus.Gatherer
	Logger     *slog.Logger
	// NoSharedSnapshot: see shadow.Options (for measuring the shared snapshot's worth only).
	NoSharedSnapshot bool
}

// Service is one process's canary machinery. It implements proxy.Shadow and admin.Migrations.
type Service struct {
	store    *config.Store
	flags    flags.Source
	gatherer prometheus.Gatherer
	log      *slog.Logger
	cmp      *shadow.Comparator
	judge    *shadow.Judge
	kill     *shadow.KillSwitch
	records  *shadow.Recorder

	mu     sync.Mutex
	ratios map[string]cachedRatio // compare ratio per migration, re-evaluated when flags change
}

type cachedRatio struct {
	version uint64
	value   float64
}

// New builds the canary from the current configuration's shadow section. Settings that shape
// the comparator and judge (workers, queue, window, files) take effect at start.
func New(o Options) (*Service, error) {
	gen := o.Store.Current()
	if gen == nil {
		return nil, fmt.Errorf("canary: no configuration loaded")
	}
	cfg := gen.Config
	sh := cfg.Shadow
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	metrics := shadow.NewPromMetrics(o.Registerer)
	kill, err := shadow.NewKillSwitch(shadow.KillSwitchOptions{StatePath: relativeTo(cfg, sh.StateFile), Metrics: metrics, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("canary: kill switch state: %w", err)
	}
	records, err := shadow.NewRecorder(shadow.RecorderOptions{Path: relativeTo(cfg, sh.MismatchLog), Logger: log})
	if err != nil {
		return nil, fmt.Errorf("canary: mismatch log: %w", err)
	}
	judge := shadow.NewJudge(shadow.JudgeOptions{
		Window: sh.Window, MinSamples: sh.MinSamples, MaxMismatchRate: sh.MaxMismatchRate,
		MaxErrorRateIncrease: sh.MaxErrorRateIncrease, KillSwitch: kill, Metrics: metrics, Logger: log,
	})
	for _, m := range cfg.Migrations {
		judge.SetAutoRollback(m.Name, m.RollsBackAutomatically())
	}
	cmp, err := shadow.New(shadow.Options{
		SideDSN: cfg.SideDSN, Workers: sh.Workers, QueueSize: sh.QueueSize, Timeout: sh.Timeout,
		Logger: log, Metrics: metrics, Records: records, Judge: judge, NoSharedSnapshot: o.NoSharedSnapshot,
	})
	if err != nil {
		_ = records.Close()
		return nil, fmt.Errorf("canary: comparator: %w", err)
	}
	return &Service{store: o.Store, flags: o.Flags, gatherer: o.Gatherer, log: log, cmp: cmp, judge: judge,
		kill: kill, records: records, ratios: map[string]cachedRatio{}}, nil
}

// relativeTo resolves a path of the configuration file relative to its directory.
func relativeTo(cfg *config.Config, path string) string {
	if path == "" || filepath.IsAbs(path) || cfg.Path() == "" {
		return path
	}
	return filepath.Join(filepath.Dir(cfg.Path()), path)
}

// Run evaluates verdicts until ctx ends (the judge acts on a failing one).
func (s *Service) Run(ctx context.Context) { s.judge.Run(ctx) }

// Close stops the comparator (waiting for running comparisons until ctx ends) and the recorder.
func (s *Service) Close(ctx context.Context) error {
	err := s.cmp.Close(ctx)
	if cerr := s.records.Close(); err == nil {
		err = cerr
	}
	return err
}

// Judge is the service's judge (for tests and status).
func (s *Service) Judge() *shadow.Judge { return s.judge }

// migration finds a migration of the current configuration.
func (s *Service) migration(name string) *config.Migration {
	gen := s.store.Current()
	if gen == nil {
		return nil
	}
	for i := range gen.Config.Migrations {
		if gen.Config.Migrations[i].Name == name {
			return &gen.Config.Migrations[i]
		}
	}
	return nil
}

// Killed implements proxy.Shadow.
func (s *Service) Killed(migration string) bool {
	engaged, _, _ := s.kill.Engaged(migration)
	return engaged
}

// Sample implements proxy.Shadow: a read is compared with the probability of the migration's
// compare-ratio flag (compare.ratio when the flag is missing).
func (s *Service) Sample(migration string) bool {
	r := s.ratio(migration)
	return r > 0 && (r >= 1 || rand.Float64() < r)
}

// ratio evaluates the compare-ratio flag once per flag change.
func (s *Service) ratio(migration string) float64 {
	var version uint64
	if s.flags != nil {
		version = s.flags.Version()
	}
	s.mu.Lock()
	c, ok := s.ratios[migration]
	s.mu.Unlock()
	if ok && c.version == version {
		return c.value
	}
	m := s.migration(migration)
	if m == nil {
		return 0
	}
	value := *m.Compare.Ratio
	if s.flags != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		v, err := s.flags.Float(ctx, m.CompareRatioFlag, flags.EvalContext{TargetingKey: migration,
			Attributes: map[string]any{"migration": migration}})
		cancel()
		if err == nil {
			value = v
		}
	}
	value = min(max(value, 0), 1)
	s.mu.Lock()
	s.ratios[migration] = cachedRatio{version: version, value: value}
	s.mu.Unlock()
	return value
}

// Compare implements proxy.Shadow: the request gets the migration's compare options and goes to
// the comparator's queue (dropped and counted when full).
func (s *Service) Compare(req shadow.Request) {
	m := s.migration(req.Migration)
	if m == nil {
		return
	}
	req.Database = m.Database
	req.KeyColumns = m.Key
	req.IgnoreColumns = m.Compare.IgnoreColumns
	req.FloatTolerance = m.Compare.FloatTolerance
	req.MaxRows = m.Compare.MaxRows
	req.LogValues = m.Compare.LogValues
	s.cmp.Submit(req)
}

// ReadDone implements proxy.Shadow.
func (s *Service) ReadDone(migration, route string, failed bool) {
	s.judge.RecordRoutedRead(migration, route, failed)
}

// Status is what the admin API says of one migration.
type Status struct {
	Name          string   `json:"name"`
	Database      string   `json:"database"`
	Old           string   `json:"old"`
	New           string   `json:"new"`
	Key           []string `json:"key"`
	Mirror        bool     `json:"mirror"`
	OnMirrorError string   `json:"on_mirror_error"`
	AutoRollback  bool     `json:"auto_rollback"`

	ReadPercentFlag string   `json:"read_percent_flag"`
	FlagValue       *float64 `json:"flag_value"` // the flag's default evaluation (no targeting context); null on error
	FlagError       string   `json:"flag_error,omitempty"`
	// EffectivePercent is what routing uses for a context the targeting rules do not single out:
	// the flag value, or 0 while the kill switch is engaged.
	EffectivePercent float64 `json:"effective_percent"`
	CompareRatio     float64 `json:"compare_ratio"`

	KillSwitch KillSwitchStatus `json:"kill_switch"`
	// Stale says how the live schema of the migration's relations changed since the running
	// configuration was checked against it, when it no longer validates: reads stay on the old
	// shape (config/drift.go). Empty when the catalog is current.
	Stale    string             `json:"stale,omitempty"`
	Verdict  shadow.Verdict     `json:"verdict"`
	Counters map[string]float64 `json:"counters"` // this migration's pgcanary_* series, by name{labels}
}

// KillSwitchStatus says whether reads are held on the old shape, since when and why.
type KillSwitchStatus struct {
	Engaged bool       `json:"engaged"`
	Reason  string     `json:"reason,omitempty"`
	Since   *time.Time `json:"since,omitempty"`
}

// List implements admin.Migrations.
func (s *Service) List() any {
	gen := s.store.Current()
	out := []Status{}
	if gen == nil {
		return out
	}
	for i := range gen.Config.Migrations {
		out = append(out, s.status(&gen.Config.Migrations[i]))
	}
	return out
}

// Status implements admin.Migrations.
func (s *Service) Status(name string) (any, error) {
	m := s.migration(name)
	if m == nil {
		return nil, fmt.Errorf("%w: %q", admin.ErrUnknownMigration, name)
	}
	return s.status(m), nil
}

func (s *Service) status(m *config.Migration) Status {
	st := Status{
		Name: m.Name, Database: m.Database, Old: m.Old, New: m.New, Key: m.Key, Mirror: m.Mirrors(),
		OnMirrorError: m.OnMirrorError, AutoRollback: m.RollsBackAutomatically(), ReadPercentFlag: m.ReadPercentFlag,
		CompareRatio: s.ratio(m.Name), Verdict: s.judge.Verdict(m.Name), Counters: s.counters(m.Name),
	}
	if s.flags != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		v, err := s.flags.Float(ctx, m.ReadPercentFlag, flags.EvalContext{Attributes: map[string]any{"migration": m.Name}})
		cancel()
		if err != nil {
			st.FlagError = err.Error()
		} else {
			st.FlagValue = &v
			st.EffectivePercent = v
		}
	}
	if engaged, reason, since := s.kill.Engaged(m.Name); engaged {
		st.KillSwitch = KillSwitchStatus{Engaged: true, Reason: reason, Since: &since}
		st.EffectivePercent = 0
	}
	if gen := s.store.Current(); gen != nil {
		if mc := gen.Catalog[m.Name]; mc != nil && mc.Stale != "" {
			st.Stale, st.EffectivePercent = mc.Stale, 0
		}
	}
	return st
}

// counters reads back the registry's series labelled with the migration.
func (s *Service) counters(migration string) map[string]float64 {
	out := map[string]float64{}
	if s.gatherer == nil {
		return out
	}
	families, err := s.gatherer.Gather()
	if err != nil {
		return out
	}
	for _, f := range families {
		if f.GetType() != dto.MetricType_COUNTER && f.GetType() != dto.MetricType_GAUGE { // histograms are for Prometheus
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			ours := false
			for _, l := range m.GetLabel() {
				if l.GetName() == "migration" {
					ours = l.GetValue() == migration
					continue
				}
				labels = append(labels, l.GetName()+"="+l.GetValue())
			}
			if !ours {
				continue
			}
			sort.Strings(labels)
			name := f.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			if c := m.GetCounter(); c != nil {
				out[name] = c.GetValue()
			} else if g := m.GetGauge(); g != nil {
				out[name] = g.GetValue()
			}
		}
	}
	return out
}

// Mismatches implements admin.Migrations.
func (s *Service) Mismatches(name string, limit int) (any, error) {
	if s.migration(name) == nil {
		return nil, fmt.Errorf("%w: %q", admin.ErrUnknownMigration, name)
	}
	out := s.records.Recent(name, limit)
	if out == nil {
		out = []shadow.Mismatch{}
	}
	return out, nil
}

// Rollback implements admin.Migrations: reads go back to the old shape until Resume.
func (s *Service) Rollback(name, reason string) error {
	if s.migration(name) == nil {
		return fmt.Errorf("%w: %q", admin.ErrUnknownMigration, name)
	}
	s.kill.Engage(name, reason)
	s.log.Warn("kill switch engaged by an operator: reads go to the old shape", "migration", name, "reason", reason)
	return nil
}

// Resume implements admin.Migrations: the kill switch is released and the judge starts a fresh
// window, so evidence from before the fix cannot fail the canary again.
func (s *Service) Resume(name string) error {
	if s.migration(name) == nil {
		return fmt.Errorf("%w: %q", admin.ErrUnknownMigration, name)
	}
	s.kill.Release(name)
	s.judge.Reset(name)
	s.log.Info("kill switch released by an operator: reads follow the flag again", "migration", name)
	return nil
}
