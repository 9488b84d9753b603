package e2e

// The admin HTTP endpoints: /healthz, /readyz and /metrics, in-process (admin.New in front of a
// test proxy) and on the real binary (with the Go and process collectors).

import (
	"log/slog"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgcanary/pgcanary/admin"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

// startAdmin serves the admin endpoints for a test proxy and returns their base URL.
func startAdmin(t *testing.T, reg *prometheus.Registry, ready admin.ReadinessFunc) string {
	t.Helper()
	adm := admin.New("127.0.0.1:0", reg, ready, slog.New(slog.DiscardHandler))
	if err := adm.Listen(); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- adm.Serve() }()
	t.Cleanup(func() {
		_ = adm.Shutdown(testCtx(t))
		if err := <-errc; err != nil {
			t.Errorf("admin serve: %v", err)
		}
	})
	return "http://" + adm.Addr().String()
}

// metricsAfterRead returns /metrics once pgcanary_bytes_total{direction="server_to_client"}
// passes n. The proxy counts bytes after its write returns, and the client may have read them and
// asked for /metrics before that: the counter may lag the client by a moment.
func metricsAfterRead(t *testing.T, base string, n float64) string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		code, body := adminGet(t, base+"/metrics")
		if code != http.StatusOK {
			t.Fatalf("/metrics: %d", code)
		}
		if parsePromText(t, body)[`pgcanary_bytes_total{direction="server_to_client"}`] > n || time.Now().After(deadline) {
			return body
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkProxyMetrics asserts the proxy's series after one open client that ran some queries.
func checkProxyMetrics(t *testing.T, body string, wantClients float64) map[string]float64 {
	t.Helper()
	m := parsePromText(t, body)
	want := func(series string, ok func(float64) bool, what string) {
		t.Helper()
		v, present := m[series]
		if !present {
			t.Errorf("/metrics lacks %s", series)
			return
		}
		if !ok(v) {
			t.Errorf("%s = %v, want %s", series, v, what)
		}
	}
	want("pgcanary_client_connections", func(v float64) bool { return v == wantClients }, "the open clients")
	want("pgcanary_client_connections_total", func(v float64) bool { return v >= wantClients }, ">= the open clients")
	want("pgcanary_upstream_connect_errors_total", func(v float64) bool { return v == 0 }, "0")
	want(`pgcanary_bytes_total{direction="client_to_server"}`, func(v float64) bool { return v > 0 }, "> 0")
	// The client read a 10000-byte value back.
	want(`pgcanary_bytes_total{direction="server_to_client"}`, func(v float64) bool { return v > 10000 }, "> 10000")
	return m
}

func TestAdminEndpoints(t *testing.T) {
	reg := prometheus.NewRegistry()
	p := startProxy(t, proxyOpts{registry: reg})
	base := startAdmin(t, reg, p.srv.CheckUpstream)

	if code, body := adminGet(t, base+"/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := adminGet(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz with the upstream up: %d %q", code, body)
	}

	conn := p.connect(t)
	var s string
	if err := conn.QueryRow(testCtx(t), "select repeat('x', 10000)").Scan(&s); err != nil || len(s) != 10000 {
		t.Fatalf("query: %d bytes, %v", len(s), err)
	}
	checkProxyMetrics(t, metricsAfterRead(t, base, 10000), 1)

	// The exported numbers are the registry's: the in-process view agrees.
	if got := gatheredValue(t, reg, "pgcanary_bytes_total", map[string]string{"direction": "server_to_client"}); got <= 10000 {
		t.Errorf("registry server_to_client = %v", got)
	}
}

// /readyz follows the upstream: 200 while it accepts connections, 503 once it does not, while
// /healthz stays 200.
func TestAdminReadyzFollowsUpstream(t *testing.T) {
	fwd := startCutForwarder(t, cluster.Addr())
	reg := prometheus.NewRegistry()
	p := startProxy(t, proxyOpts{upstream: fwd.addr(), registry: reg})
	base := startAdmin(t, reg, p.srv.CheckUpstream)

	if code, body := adminGet(t, base+"/readyz"); code != http.StatusOK || strings.TrimSpace(body) != "ready" {
		t.Fatalf("/readyz with the upstream up: %d %q", code, body)
	}
	fwd.ln.Close() // the upstream stops accepting
	code, body := adminGet(t, base+"/readyz")
	if code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with the upstream down: %d %q, want 503", code, body)
	}
	if !strings.Contains(body, fwd.addr()) {
		t.Errorf("/readyz body %q does not name the upstream %s", body, fwd.addr())
	}
	if code, _ := adminGet(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz with the upstream down: %d, want 200", code)
	}
}

func TestAdminReadyzDeadUpstream(t *testing.T) {
	dead := unusedLoopbackAddr(t)
	reg := prometheus.NewRegistry()
	p := startProxy(t, proxyOpts{upstream: dead, registry: reg})
	base := startAdmin(t, reg, p.srv.CheckUpstream)

	if code, body := adminGet(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, dead) {
		t.Errorf("/readyz: %d %q, want 503 naming %s", code, body, dead)
	}
	if code, _ := adminGet(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d, want 200", code)
	}
	requirePgErr(t, tryConnect(p.dsn(pgtest.SuperUser, "")), "FATAL", "08001")
	_, body := adminGet(t, base+"/metrics")
	if got := parsePromText(t, body)["pgcanary_upstream_connect_errors_total"]; got != 1 {
		t.Errorf("pgcanary_upstream_connect_errors_total = %v, want 1", got)
	}
}

// The binary exports the proxy's metrics plus the Go and process collectors.
func TestAdminBinary(t *testing.T) {
	bp := startServeBinary(t, "", 30*time.Second)
	base := "http://" + bp.admin

	if code, body := adminGet(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := adminGet(t, base+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz: %d %q", code, body)
	}
	conn := connectDSN(t, bp.dsn(pgtest.SuperUser, ""))
	var s string
	if err := conn.QueryRow(testCtx(t), "select repeat('x', 10000)").Scan(&s); err != nil || len(s) != 10000 {
		t.Fatalf("query: %d bytes, %v", len(s), err)
	}
	m := checkProxyMetrics(t, metricsAfterRead(t, base, 10000), 1)
	if v, ok := m["go_goroutines"]; !ok || v <= 0 {
		t.Errorf("go_goroutines = %v (present %v), want > 0", v, ok)
	}
	if _, ok := m["process_cpu_seconds_total"]; !ok {
		t.Error("/metrics lacks process_cpu_seconds_total")
	}

	conn.Close(testCtx(t))
	bp.signal(t, syscall.SIGTERM)
	if code := bp.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

func TestAdminBinaryDeadUpstream(t *testing.T) {
	dead := unusedLoopbackAddr(t)
	bp := startServeBinary(t, dead, 30*time.Second)
	base := "http://" + bp.admin
	if code, body := adminGet(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, dead) {
		t.Errorf("/readyz: %d %q, want 503 naming %s", code, body, dead)
	}
	pe := requirePgErr(t, tryConnect(bp.dsn(pgtest.SuperUser, "")), "FATAL", "08001")
	if !strings.Contains(pe.Message, dead) {
		t.Errorf("message %q does not name %s", pe.Message, dead)
	}
	_, body := adminGet(t, base+"/metrics")
	if got := parsePromText(t, body)["pgcanary_upstream_connect_errors_total"]; got != 1 {
		t.Errorf("pgcanary_upstream_connect_errors_total = %v, want 1", got)
	}
	bp.signal(t, syscall.SIGTERM)
	if code := bp.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}
