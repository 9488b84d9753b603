package shadow

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Comparison results, the result label of pgcanary_comparisons_total.
const (
	ResultMatch    = "match"    // both forms agree (or fail with the same SQLSTATE)
	ResultMismatch = "mismatch" // they differ; a Mismatch is recorded
	ResultError    = "error"    // the side database failed, was unreachable or too slow: no verdict
	ResultDropped  = "dropped"  // the queue was full (or closed) and the request was not run
	ResultSkipped  = "skipped"  // not comparable: a side exceeded max_rows, or the read writes
)

// Sides of a comparison, the side label of pgcanary_compare_duration_seconds.
const (
	SideOld = "old"
	SideNew = "new"
)

// Verdict statuses, and their values in pgcanary_canary_verdict.
const (
	StatusPass         = "pass"         // 0
	StatusInconclusive = "inconclusive" // 1
	StatusFail         = "fail"         // 2
)

// Metrics is what this package reports. It is an interface so the comparator, judge and kill
// switch do not depend on how numbers are exported, and tests can count without a registry.
type Metrics interface {
	// Comparison counts one request by result (Result* constants).
	Comparison(migration, result string)
	// Mismatch counts one mismatch by kind (Kind* constants).
	Mismatch(migration, kind string)
	// CompareDuration observes how long one side of a comparison took (SideOld, SideNew).
	CompareDuration(migration, side string, d time.Duration)
	// RoutedRead counts a read the proxy served, by the shape it was routed to, and whether it failed.
	RoutedRead(migration, route string, failed bool)
	// Verdict sets a migration's current verdict (Status* constants).
	Verdict(migration, status string)
	// KillSwitch sets whether a migration's kill switch is engaged.
	KillSwitch(migration string, active bool)
}

// PromMetrics exports the package's metrics to a Prometheus registry.
//
// Every input of the judge is a series, so the fleet's verdict can be approximated in PromQL over
// all sidecars, e.g. for the mismatch rate over 10 minutes:
//
//	sum by (migration) (increase(pgcanary_comparisons_total{result="mismatch"}[10m]))
//	/ sum by (migration) (increase(pgcanary_comparisons_total{result=~"match|mismatch"}[10m]))
//
// the error-rate increase of the new shape:
//
//	sum by (migration) (increase(pgcanary_routed_reads_total{route="new",outcome="error"}[10m]))
//	/ sum by (migration) (increase(pgcanary_routed_reads_total{route="new"}[10m]))
//	- sum by (migration) (increase(pgcanary_routed_reads_total{route="old",outcome="error"}[10m]))
//	/ sum by (migration) (increase(pgcanary_routed_reads_total{route="old"}[10m]))
//
// and the median latency ratio from the histogram of both sides' durations:
//
//	histogram_quantile(0.5, sum by (migration, le) (rate(pgcanary_compare_duration_seconds_bucket{side="new"}[10m])))
//	/ histogram_quantile(0.5, sum by (migration, le) (rate(pgcanary_compare_duration_seconds_bucket{side="old"}[10m])))
//
// The rank test itself needs the paired samples that only a judge holds; its outcome is in
// pgcanary_canary_verdict.
type PromMetrics struct {
	comparisons *prometheus.CounterVec
	mismatches  *prometheus.CounterVec
	durations   *prometheus.HistogramVec
	routedReads *prometheus.CounterVec
	verdict     *prometheus.GaugeVec
	killSwitch  *prometheus.GaugeVec
}

// NewPromMetrics registers the package's metrics with reg (never the global registry, so tests and
// several instances in one process do not collide).
func NewPromMetrics(reg prometheus.Registerer) *PromMetrics {
	m := &PromMetrics{
		comparisons: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcanary_comparisons_total",
			Help: "Sampled reads submitted for comparison, by result (match, mismatch, error, dropped, skipped).",
		}, []string{"migration", "result"}),
		mismatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcanary_mismatches_total",
			Help: "Comparisons whose old and new forms differ, by kind (columns, row_count, values, error_old, error_new, error_both).",
		}, []string{"migration", "kind"}),
		durations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "pgcanary_compare_duration_seconds",
			Help: "Time to run one form of a compared read and read its rows on the side connection, by side (old, new).",
			// 250 µs to about 8 s: point reads to the statement timeout.
			Buckets: prometheus.ExponentialBuckets(0.00025, 2, 16),
		}, []string{"migration", "side"}),
		routedReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcanary_routed_reads_total",
			Help: "Reads of a migrated relation served to clients, by route (old, new) and outcome (ok, error).",
		}, []string{"migration", "route", "outcome"}),
		verdict: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgcanary_canary_verdict",
			Help: "The canary's verdict over the judge's window: 0 pass, 1 inconclusive, 2 fail.",
		}, []string{"migration"}),
		killSwitch: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "pgcanary_kill_switch_active",
			Help: "1 while the migration's kill switch holds its reads on the old shape.",
		}, []string{"migration"}),
	}
	reg.MustRegister(m.comparisons, m.mismatches, m.durations, m.routedReads, m.verdict, m.killSwitch)
	return m
}

func (m *PromMetrics) Comparison(migration, result string) {
	m.comparisons.WithLabelValues(migration, result).Inc()
}

func (m *PromMetrics) Mismatch(migration, kind string) {
	m.mismatches.WithLabelValues(migration, kind).Inc()
}

func (m *PromMetrics) CompareDuration(migration, side string, d time.Duration) {
	m.durations.WithLabelValues(migration, side).Observe(d.Seconds())
}

func (m *PromMetrics) RoutedRead(migration, route string, failed bool) {
	outcome := "ok"
	if failed {
		outcome = "error"
	}
	m.routedReads.WithLabelValues(migration, route, outcome).Inc()
}

func (m *PromMetrics) Verdict(migration, status string) {
	m.verdict.WithLabelValues(migration).Set(statusValue(status))
}

func (m *PromMetrics) KillSwitch(migration string, active bool) {
	v := 0.0
	if active {
		v = 1
	}
	m.killSwitch.WithLabelValues(migration).Set(v)
}

// statusValue is a status's value in pgcanary_canary_verdict.
func statusValue(status string) float64 {
	switch status {
	case StatusPass:
		return 0
	case StatusFail:
		return 2
	default:
		return 1
	}
}

// nopMetrics discards everything; used when no Metrics is configured.
type nopMetrics struct{}

func (nopMetrics) Comparison(string, string)                     {}
func (nopMetrics) Mismatch(string, string)                       {}
func (nopMetrics) CompareDuration(string, string, time.Duration) {}
func (nopMetrics) RoutedRead(string, string, bool)               {}
func (nopMetrics) Verdict(string, string)                        {}
func (nopMetrics) KillSwitch(string, bool)                       {}

func orNop(m Metrics) Metrics {
	if m == nil {
		return nopMetrics{}
	}
	return m
}
