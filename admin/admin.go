package admin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ReadinessFunc reports whether the proxy can serve: nil when ready.
type ReadinessFunc func(ctx context.Context) error

// Server is the admin HTTP server.
type Server struct {
	http *http.Server
	ln   net.Listener
	log  *slog.Logger
}

// New builds the admin handler: /healthz answers while the process runs, /readyz asks ready,
// /metrics exports gatherer.
func New(listen string, gatherer prometheus.Gatherer, ready ReadinessFunc, log *slog.Logger) *Server {
	return NewWithOptions(Options{Listen: listen, Gatherer: gatherer, Ready: ready, Log: log})
}

// Options configures the admin server.
type Options struct {
	Listen   string
	Gatherer prometheus.Gatherer
	Ready    ReadinessFunc
	Log      *slog.Logger
	// Pprof mounts net/http/pprof under /debug/pprof/ for profiling a live proxy. Off by default:
	// profiles reveal query text in memory.
	Pprof bool
	// Migrations serves the JSON API under /v1/migrations; nil leaves it out.
	Migrations Migrations
	// Token is the bearer token (admin.token_file's contents): required for POSTs, and for every
	// endpoint but the health probes when Listen is beyond loopback.
	Token string
}

// NewWithOptions builds the admin server from opts.
func NewWithOptions(o Options) *Server {
	listen, gatherer, ready, log := o.Listen, o.Gatherer, o.Ready, o.Log
	mux := http.NewServeMux()
	a := auth{token: o.Token, loopback: IsLoopback(listen)}
	if o.Pprof {
		for path, h := range map[string]http.HandlerFunc{"/debug/pprof/": pprof.Index, "/debug/pprof/cmdline": pprof.Cmdline,
			"/debug/pprof/profile": pprof.Profile, "/debug/pprof/symbol": pprof.Symbol, "/debug/pprof/trace": pprof.Trace} {
			mux.Handle(path, a.wrap(h, false))
		}
	}
	if o.Migrations != nil {
		mountAPI(mux, o.Migrations, a)
	}
	probe := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, a.wrap(h, true)) }
	probe("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	probe("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", a.wrap(promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}), false))
	return &Server{
		http: &http.Server{Addr: listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second},
		log:  log,
	}
}

// Listen binds the admin address.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.http.Addr)
	if err != nil {
		return fmt.Errorf("admin listen on %s: %w", s.http.Addr, err)
	}
	s.ln = ln
	return nil
}

// Addr is the bound address; nil before Listen.
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Serve serves until Shutdown.
func (s *Server) Serve() error {
	if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("admin server: %w", err)
	}
	return nil
}

// Shutdown stops the server, letting in-flight requests finish until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.http.Shutdown(ctx)
}
