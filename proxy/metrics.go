package proxy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics is what the proxy reports. It is an interface so the session code does not depend on
// how numbers are exported, and tests can count without a registry.
type Metrics interface {
	ClientConnected()
	ClientDisconnected()
	UpstreamConnectError()
	BytesToServer(n int)
	BytesToClient(n int)
	MirroredWrite(migration, direction string)
	UnmirroredWrite(migration, reason string)
	Statement(migration, kind, route string)
	ReadPercent(migration string, percent float64)
	FlagError(migration string)
	// StatementDuration and StatementError report how a statement touching a migration ended,
	// by route (old, new, write). The shadow judge learns routed-read error rates from them.
	StatementDuration(migration, route string, d time.Duration)
	StatementError(migration, route, sqlstateClass string)
	// ReadFallback: a routed read failed on the new shape and was re-run in its old form.
	ReadFallback(migration string)
	// GateSpill: bytes of a gated batch's output written to a temporary file (heldout.go).
	GateSpill(n int)
	// LoopHandoff: an event loop moved to a new goroutine because a step was about to block
	// (loop_linux.go).
	LoopHandoff()
	// LoopBusyPoll: an event loop polled for d before it found events or went to sleep
	// (Config.BusyPoll).
	LoopBusyPoll(d time.Duration)
}

// PromMetrics exports the proxy's metrics to a Prometheus registry.
type PromMetrics struct {
	clients       prometheus.Gauge
	clientsTotal  prometheus.Counter
	connectErrors prometheus.Counter
	toServer      prometheus.Counter
	toClient      prometheus.Counter
	mirrored      *prometheus.CounterVec
	unmirrored    *prometheus.CounterVec
	statements    *prometheus.CounterVec
	readPercent   *prometheus.GaugeVec
	flagErrors    *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	errors        *prometheus.CounterVec
	fallbacks     *prometheus.CounterVec
	spilled       prometheus.Counter
	handoffs      prometheus.Counter
	busyPoll      prometheus.Counter
}

// NewPromMetrics registers the proxy's metrics with reg.
func NewPromMetrics(reg prometheus.Registerer) *PromMetrics {
	bytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgcanary_bytes_total",
		Help: "Bytes relayed, by direction (client_to_server, server_to_client).",
	}, []string{"direction"})
	m := &PromMetrics{
		clients: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pgcanary_client_connections",
			Help: "Client connections currently open.",
		}),
		clientsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgcanary_client_connections_total",
			Help: "Client connections accepted since start.",
		}),
		connectErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pgcanary_upstream_connect_errors_total",
			Help: "Failed attempts to connect to the upstream server.",
		}),
		// Bound once: the hot path adds to a counter without a label lookup.
		toServer: bytes.WithLabelValues("client_to_server"),
		toClient: bytes.WithLabelValues("server_to_client"),
		mirrored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcanary_mirrored_writes_total",
			Help: "Writes sent in their mirrored form (both shapes change in one statement), by direction.",
		}, []string{"migration", "direction"}),
		unmirrored: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pgcanary_unmirrored_writes_total",
			Help: "Writes to a migrated relation passed through without their mirror, by reason.",
		}, []string{"migration", "reason"}),
	}
	m.statements = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgcanary_statements_total",
		Help: "Statements touching a migration, by kind and the shape that served them (route old or new).",
	}, []string{"migration", "kind", "route"})
	m.readPercent = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "pgcanary_read_percent",
		Help: "The read percentage last evaluated for the migration (0 on a flag error).",
	}, []string{"migration"})
	m.flagErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgcanary_flag_errors_total",
		Help: "Flag evaluations that failed (missing flag, wrong type, provider down); they count as 0 %.",
	}, []string{"migration"})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "pgcanary_statement_duration_seconds",
		Help:    "Time from sending a statement touching a migration to its CommandComplete, by route (old, new, write).",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"migration", "route"})
	m.errors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgcanary_statement_errors_total",
		Help: "Statements touching a migration that failed, by route and SQLSTATE class (first two characters).",
	}, []string{"migration", "route", "sqlstate_class"})
	m.fallbacks = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pgcanary_read_fallbacks_total",
		Help: "Routed reads that failed on the new shape before any row reached the client and were re-run in the old form.",
	}, []string{"migration"})
	m.spilled = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgcanary_gate_spill_bytes_total",
		Help: "Bytes of routed batches' output held in temporary files until the batch ended (a new form that may fail part-way through its rows, output over 256 KB).",
	})
	m.handoffs = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgcanary_event_loop_handoffs_total",
		Help: "Times an event loop went on in a new goroutine because a session's step was about to wait (a full socket, a held batch); a few per second is normal, a steady high rate means sessions often wait.",
	})
	m.busyPoll = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "pgcanary_event_loop_busy_poll_seconds_total",
		Help: "Time event loops spent polling for events before sleeping (busy_poll): CPU time spent to answer sooner. Up to one CPU per loop while sessions are active; 0 with busy_poll off.",
	})
	reg.MustRegister(m.clients, m.clientsTotal, m.connectErrors, bytes, m.mirrored, m.unmirrored, m.statements,
		m.readPercent, m.flagErrors, m.duration, m.errors, m.fallbacks, m.spilled, m.handoffs, m.busyPoll)
	return m
}

func (m *PromMetrics) ClientConnected()      { m.clients.Inc(); m.clientsTotal.Inc() }
func (m *PromMetrics) ClientDisconnected()   { m.clients.Dec() }
func (m *PromMetrics) UpstreamConnectError() { m.connectErrors.Inc() }
func (m *PromMetrics) BytesToServer(n int)   { m.toServer.Add(float64(n)) }
func (m *PromMetrics) BytesToClient(n int)   { m.toClient.Add(float64(n)) }
func (m *PromMetrics) MirroredWrite(migration, direction string) {
	m.mirrored.WithLabelValues(migration, direction).Inc()
}
func (m *PromMetrics) UnmirroredWrite(migration, reason string) {
	m.unmirrored.WithLabelValues(migration, reason).Inc()
}
func (m *PromMetrics) Statement(migration, kind, route string) {
	m.statements.WithLabelValues(migration, kind, route).Inc()
}
func (m *PromMetrics) ReadPercent(migration string, percent float64) {
	m.readPercent.WithLabelValues(migration).Set(percent)
}
func (m *PromMetrics) FlagError(migration string) { m.flagErrors.WithLabelValues(migration).Inc() }
func (m *PromMetrics) StatementDuration(migration, route string, d time.Duration) {
	m.duration.WithLabelValues(migration, route).Observe(d.Seconds())
}
func (m *PromMetrics) StatementError(migration, route, class string) {
	m.errors.WithLabelValues(migration, route, class).Inc()
}
func (m *PromMetrics) ReadFallback(migration string) { m.fallbacks.WithLabelValues(migration).Inc() }
func (m *PromMetrics) GateSpill(n int)               { m.spilled.Add(float64(n)) }
func (m *PromMetrics) LoopHandoff()                  { m.handoffs.Inc() }
func (m *PromMetrics) LoopBusyPoll(d time.Duration)  { m.busyPoll.Add(d.Seconds()) }

// nopMetrics discards everything; used when no Metrics is configured.
type nopMetrics struct{}

func (nopMetrics) ClientConnected()                                {}
func (nopMetrics) ClientDisconnected()                             {}
func (nopMetrics) UpstreamConnectError()                           {}
func (nopMetrics) BytesToServer(int)                               {}
func (nopMetrics) BytesToClient(int)                               {}
func (nopMetrics) MirroredWrite(string, string)                    {}
func (nopMetrics) UnmirroredWrite(string, string)                  {}
func (nopMetrics) Statement(string, string, string)                {}
func (nopMetrics) ReadPercent(string, float64)                     {}
func (nopMetrics) FlagError(string)                                {}
func (nopMetrics) StatementDuration(string, string, time.Duration) {}
func (nopMetrics) StatementError(string, string, string)           {}
func (nopMetrics) ReadFallback(string)                             {}
func (nopMetrics) GateSpill(int)                                   {}
func (nopMetrics) LoopHandoff()                                    {}
func (nopMetrics) LoopBusyPoll(time.Duration)                      {}
