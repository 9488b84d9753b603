package router

import "github.com/prometheus/client_golang/prometheus"

// PromMetrics exports the planner's metrics to Prometheus.
type PromMetrics struct {
	hits, misses prometheus.Counter
	unrewritten  *prometheus.CounterVec
}

// NewPromMetrics registers pgcanary_plan_cache_hits_total, pgcanary_plan_cache_misses_total and
// pgcanary_unrewritten_statements_total{migration,reason} with reg.
func NewPromMetrics(reg prometheus.Registerer) *PromMetrics {
	m := &PromMetrics{
		hits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgcanary_plan_cache_hits_total", Help: "Statements planned from the plan cache.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgcanary_plan_cache_misses_total", Help: "Statements parsed and planned anew.",
		}),
		unrewritten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcanary_unrewritten_statements_total",
			Help: "Statements touching a migration that keep their old form, by reason (counted when planned).",
		}, []string{"migration", "reason"}),
	}
	reg.MustRegister(m.hits, m.misses, m.unrewritten)
	return m
}

func (m *PromMetrics) PlanCacheHit()  { m.hits.Inc() }
func (m *PromMetrics) PlanCacheMiss() { m.misses.Inc() }
func (m *PromMetrics) Unrewritten(migration, reason string) {
	m.unrewritten.WithLabelValues(migration, reason).Inc()
}
