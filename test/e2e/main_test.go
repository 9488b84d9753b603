package e2e

import (
	"context"
	"crypto/tls"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgcanary/pgcanary/canary"
	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/flags"
	"github.com/pgcanary/pgcanary/proxy"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

// cluster is shared by every test in the package; it runs with TLS so both legs can be tested.
var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	code := pgtest.Run(m, pgtest.Options{TLS: true}, &cluster)
	if pgcanaryBinPath != "" {
		_ = os.RemoveAll(filepath.Dir(pgcanaryBinPath)) // the binary built for the tests that run it
	}
	os.Exit(code)
}

// proxyOpts tweaks the proxy a test starts.
type proxyOpts struct {
	upstream   string // default: the cluster
	sslMode    proxy.SSLMode
	rootCert   string
	clientTLS  *tls.Config
	maxMessage int
	registry   *prometheus.Registry
	planner    proxy.Planner
	flags      flags.Source
	routingKey string
	// batchEndWait: proxy.Config.BatchEndWait (0: the default).
	batchEndWait time.Duration
	// setupSQL runs in the migrated database before the configuration is checked (migratedProxyWith).
	setupSQL string
	// configEdit changes the example configuration before it is checked (migratedProxyWith).
	configEdit func(*config.Config)
	// canary runs the canary machinery (comparisons, judge, kill switch) (migratedProxyWith).
	canary           bool
	noSharedSnapshot bool
	sideDSN          string // the canary's side DSN, when not the checked database's
	shadow           proxy.Shadow
	listen           string // TCP address for clients; default 127.0.0.1:0, "none" for none
	listenUnix       string // a Unix socket for clients too
	// eventLoops: proxy.Config.EventLoops; 0 takes PGCANARY_TEST_EVENT_LOOPS, else the default
	// (-1 there runs every test with a goroutine per direction instead).
	eventLoops int
}

// testProxy is a proxy running in-process on a free port.
type testProxy struct {
	srv    *proxy.Server
	addr   string
	reg    *prometheus.Registry
	canary *canary.Service // with proxyOpts.canary
}

// startProxy starts a proxy in front of the cluster and stops it when the test ends.
func startProxy(t testing.TB, o proxyOpts) *testProxy {
	t.Helper()
	if o.upstream == "" {
		o.upstream = cluster.Addr()
	}
	if o.sslMode == "" {
		o.sslMode = proxy.SSLDisable
	}
	if o.registry == nil {
		o.registry = prometheus.NewRegistry()
	}
	level := slog.LevelWarn
	if os.Getenv("PGCANARY_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	switch o.listen {
	case "":
		o.listen = "127.0.0.1:0"
	case "none":
		o.listen = ""
	}
	if o.eventLoops == 0 {
		if v := os.Getenv("PGCANARY_TEST_EVENT_LOOPS"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("PGCANARY_TEST_EVENT_LOOPS=%q: %v", v, err)
			}
			o.eventLoops = n
		}
	}
	srv, err := proxy.New(proxy.Config{
		Listen:         o.listen,
		ListenUnix:     o.listenUnix,
		Upstream:       proxy.Upstream{Addr: o.upstream, SSLMode: o.sslMode, SSLRootCert: o.rootCert},
		TLS:            o.clientTLS,
		MaxMessageSize: o.maxMessage,
		ConnectTimeout: 5 * time.Second,
		Logger:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})),
		Metrics:        proxy.NewPromMetrics(o.registry),
		Planner:        o.planner,
		Flags:          o.flags,
		RoutingKey:     o.routingKey,
		Shadow:         o.shadow,
		BatchEndWait:   o.batchEndWait,
		EventLoops:     o.eventLoops,
	})
	if err != nil {
		t.Fatalf("new proxy: %v", err)
	}
	if err := srv.Listen(); err != nil {
		t.Fatalf("proxy listen: %v", err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(context.Background()); err != nil {
			t.Errorf("proxy serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		wg.Wait()
	})
	tp := &testProxy{srv: srv, reg: o.registry}
	if a := srv.Addr(); a != nil {
		tp.addr = a.String()
	}
	return tp
}

// dsn is a connection string for user through the proxy.
func (p *testProxy) dsn(user, password string) string {
	return cluster.ConnString(p.addr, user, password)
}

// connect opens a pgx connection through the proxy as the superuser.
func (p *testProxy) connect(t testing.TB) *pgx.Conn {
	t.Helper()
	return connectDSN(t, p.dsn(pgtest.SuperUser, ""))
}

func connectDSN(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// testCtx is a context that ends with the test, bounded so a hang fails instead of stalling CI.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// proxyCerts returns a TLS config for the proxy's client side and the CA file clients trust.
func proxyCerts(t testing.TB) (*tls.Config, string) {
	t.Helper()
	dir := t.TempDir()
	ca, cert, key, err := pgtest.GenerateCerts(dir)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}}, filepath.Clean(ca)
}
