package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/pgcanary/pgcanary/admin"
	"github.com/pgcanary/pgcanary/canary"
	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/flags"
	"github.com/pgcanary/pgcanary/proxy"
	"github.com/pgcanary/pgcanary/router"
)

func newServeCmd() *cobra.Command {
	var configFile string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the proxy in front of a PostgreSQL server",
		Long: `Run the proxy. Clients connect to --listen as they would to PostgreSQL; each session is relayed
to --upstream with authentication passed through. Operator endpoints (/healthz, /readyz, /metrics)
listen on --admin.

Settings come from the defaults, then --config FILE, then environment variables named after the
flags (PGCANARY_UPSTREAM for --upstream, PGCANARY_LOG_LEVEL for --log-level, ...), then the
command-line flags, each overriding the one before.

SIGTERM or SIGINT stops accepting clients, lets each session finish its current transaction for
up to --drain-timeout, closes the rest and exits 0.`,
		Example: `  pgcanary serve --upstream 127.0.0.1:5432
  pgcanary serve --upstream /var/run/postgresql --listen-unix /run/pgcanary   # Unix sockets both sides
  pgcanary serve --config /etc/pgcanary/pgcanary.yaml --log-level debug
  PGCANARY_UPSTREAM=db:5432 PGCANARY_LISTEN=0.0.0.0:6432 pgcanary serve`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			flags := cmd.Flags()
			if err := flagsFromEnv(flags, os.LookupEnv); err != nil {
				return &exitError{code: 2, err: err}
			}
			override := func(c *config.Config) error { return applyFlags(flags, c) }
			var gen *config.Generation
			var loader *config.Loader
			if configFile != "" {
				loader = &config.Loader{Path: configFile, Override: override}
				var err error
				if gen, err = loader.Load(cmd.Context()); err != nil {
					return &exitError{code: 2, err: fmt.Errorf("invalid configuration, not starting:\n%w", err)}
				}
			} else {
				cfg := config.Defaults()
				if err := override(&cfg); err != nil {
					return &exitError{code: 2, err: err}
				}
				gen = &config.Generation{Config: &cfg}
			}
			if gen.Config.Upstream == "" {
				return &exitError{code: 2, err: errors.New("no upstream: set --upstream host:port (or a Unix socket path) or upstream: in the config file")}
			}
			return serve(cmd.Context(), gen, loader)
		},
	}
	f := cmd.Flags()
	d := config.Defaults()
	f.StringVar(&configFile, "config", "", "YAML configuration file; flags given on the command line override it")
	f.String("listen", d.Listen, "address for client connections (host:port); \"\" for none, with --listen-unix")
	f.String("listen-unix", "", "Unix socket for client connections too: the socket file, DIR:PORT, or a directory (DIR/.s.PGSQL.<--listen port>, so psql -h DIR -p PORT connects)")
	f.String("upstream", "", "the PostgreSQL server: host:port, or its Unix socket (the socket file, DIR:PORT, or a directory for port 5432)")
	f.String("admin", d.Admin.Listen, "address of the admin HTTP endpoint: /healthz, /readyz, /metrics")
	f.Bool("admin-pprof", false, "serve Go profiles under /debug/pprof/ on the admin address (for diagnosing a live proxy)")
	f.String("log-level", d.LogLevel, "debug, info, warn or error")
	f.String("log-format", d.LogFormat, "text or json")
	f.Duration("drain-timeout", d.DrainTimeout, "on SIGTERM/SIGINT, how long sessions may take to reach idle before they are closed")
	f.Duration("connect-timeout", d.ConnectTimeout, "timeout for connecting to the upstream, TLS included")
	f.String("tls-cert", "", "PEM certificate offered to clients that request TLS (with --tls-key); without it clients get 'N'")
	f.String("tls-key", "", "PEM private key for --tls-cert")
	f.String("upstream-sslmode", d.UpstreamTLS.SSLMode, "TLS to the upstream: disable, prefer, require, verify-ca or verify-full (libpq meanings)")
	f.String("upstream-sslrootcert", "", "PEM CA bundle to verify the upstream's certificate (verify-ca, verify-full; with require it verifies the chain)")
	f.Int("event-loops", d.EventLoops, "event loops relaying plain TCP and Unix-socket sessions: 0 for one per two CPUs, -1 for none (each session then keeps a goroutine per direction, as TLS sessions do)")
	f.String("busy-poll", "auto", "how long an event loop polls its sockets before it sleeps, to answer sooner at low load: auto (200us, or off under a CPU quota), off, or a duration; polling spends up to one CPU per loop while sessions are active")
	f.String("max-message-size", "1GiB", "largest message accepted from a client (bytes, or with KiB, MiB, GiB); larger frames are refused with 08P01")
	return cmd
}

// flagsFromEnv sets each flag not given on the command line from its environment variable,
// PGCANARY_ and the flag's name in capitals with underscores (PGCANARY_UPSTREAM for --upstream):
// the way containers are configured. The command line wins over the environment, which wins
// over the config file.
func flagsFromEnv(f *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var err error
	f.VisitAll(func(fl *pflag.Flag) {
		if fl.Changed || err != nil || fl.Name == "help" {
			return
		}
		name := envName(fl.Name)
		if v, ok := lookup(name); ok && v != "" {
			if e := f.Set(fl.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, e)
			}
		}
	})
	return err
}

// envName is the environment variable of a flag.
func envName(flag string) string {
	return "PGCANARY_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyFlags copies the flags the user set over cfg, so the file fills in only what flags leave out.
func applyFlags(f *pflag.FlagSet, cfg *config.Config) error {
	var err error
	f.Visit(func(fl *pflag.Flag) {
		v := fl.Value.String()
		switch fl.Name {
		case "listen":
			cfg.Listen = v
		case "listen-unix":
			cfg.ListenUnix = v
		case "upstream":
			cfg.Upstream = v
		case "admin":
			cfg.Admin.Listen = v
		case "admin-pprof":
			cfg.Admin.Pprof = v == "true"
		case "log-level":
			cfg.LogLevel = v
		case "log-format":
			cfg.LogFormat = v
		case "drain-timeout":
			cfg.DrainTimeout, _ = f.GetDuration(fl.Name)
		case "connect-timeout":
			cfg.ConnectTimeout, _ = f.GetDuration(fl.Name)
		case "event-loops":
			cfg.EventLoops, _ = f.GetInt(fl.Name)
		case "busy-poll":
			b, e := config.ParseBusyPoll(v)
			if e != nil {
				err = fmt.Errorf("--busy-poll: %w", e)
			}
			cfg.BusyPoll = b
		case "tls-cert":
			cfg.TLS.Cert = v
		case "tls-key":
			cfg.TLS.Key = v
		case "upstream-sslmode":
			cfg.UpstreamTLS.SSLMode = v
		case "upstream-sslrootcert":
			cfg.UpstreamTLS.SSLRootCert = v
		case "max-message-size":
			n, e := config.ParseByteSize(v)
			if e != nil {
				err = fmt.Errorf("--max-message-size: %w", e)
			}
			cfg.MaxMessageSize = n
		}
	})
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid settings: %w", err)
	}
	return nil
}

// newLogger builds the logger; its level is a LevelVar so a reload can change it live.
func newLogger(cfg config.Config, level *slog.LevelVar) *slog.Logger {
	setLevel(level, cfg.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

func setLevel(v *slog.LevelVar, name string) {
	var level slog.Level
	if level.UnmarshalText([]byte(strings.ToLower(name))) == nil {
		v.Set(level)
	}
}

// serve runs the proxy with the first generation gen; with a loader it also reloads the file when
// it changes and on SIGHUP.
func serve(ctx context.Context, gen *config.Generation, loader *config.Loader) error {
	cfg := *gen.Config
	var level slog.LevelVar
	log := newLogger(cfg, &level)
	mode, err := proxy.ParseSSLMode(cfg.UpstreamTLS.SSLMode)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	var clientTLS *tls.Config
	if cfg.TLS.Cert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLS.Cert, cfg.TLS.Key)
		if err != nil {
			return &exitError{code: 2, err: fmt.Errorf("load client-side TLS certificate: %w", err)}
		}
		clientTLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var store config.Store
	store.Install(gen)
	reloadMetrics := config.NewPromReloadMetrics(reg)
	reloadMetrics.Generation(gen.Number)
	for _, w := range gen.Warnings {
		log.Warn(w.String())
	}
	var planner proxy.Planner
	if loader != nil {
		// With a config file, migrations may appear with any reload: plan against the live store.
		p, err := router.NewPlanner(10000, router.NewPromMetrics(reg))
		if err != nil {
			return err
		}
		planner = router.NewLive(&store, p)
	}
	flagSrc, err := openFlags(ctx, cfg, loader, log)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	if flagSrc != nil {
		defer flagSrc.Close()
	}
	var canarySvc *canary.Service
	if loader != nil && cfg.SideDSN != "" {
		canarySvc, err = canary.New(canary.Options{Store: &store, Flags: flagSrc, Registerer: reg, Gatherer: reg, Logger: log})
		if err != nil {
			return &exitError{code: 2, err: err}
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = canarySvc.Close(cctx)
		}()
	}
	var shadowSvc proxy.Shadow
	var migrationsAPI admin.Migrations
	if canarySvc != nil {
		shadowSvc, migrationsAPI = canarySvc, canarySvc
	}
	token, err := adminToken(&cfg)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	var reloader *config.Reloader
	var namesChanged func()
	if loader != nil {
		reloader = config.NewReloader(loader, &store, log, reloadMetrics)
		reloader.OnSwap = func(g *config.Generation) { setLevel(&level, g.Config.LogLevel) }
		namesChanged = reloader.NamesMayHaveChanged
	}
	srv, err := proxy.New(proxy.Config{
		NamesMayHaveChanged: namesChanged,
		Shadow:              shadowSvc,
		Planner:             planner,
		Flags:               flagSrc,
		RoutingKey:          cfg.RoutingKey,
		Listen:              cfg.Listen,
		ListenUnix:          cfg.ListenUnix,
		Upstream:            proxy.Upstream{Addr: cfg.Upstream, SSLMode: mode, SSLRootCert: cfg.UpstreamTLS.SSLRootCert},
		TLS:                 clientTLS,
		MaxMessageSize:      int(cfg.MaxMessageSize),
		ConnectTimeout:      cfg.ConnectTimeout,
		EventLoops:          cfg.EventLoops,
		BusyPoll:            time.Duration(cfg.BusyPoll),
		Logger:              log,
		Metrics:             proxy.NewPromMetrics(reg),
	})
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	if err := srv.Listen(); err != nil {
		return err
	}
	adm := admin.NewWithOptions(admin.Options{Listen: cfg.Admin.Listen, Gatherer: reg, Ready: srv.CheckUpstream, Log: log,
		Pprof: cfg.Admin.Pprof, Migrations: migrationsAPI, Token: token})
	if token == "" && !admin.IsLoopback(cfg.Admin.Listen) {
		log.Warn("admin listens beyond loopback without admin.token_file: /metrics and health probes are open, the /v1 API refuses every request",
			"admin", cfg.Admin.Listen)
	}
	if err := adm.Listen(); err != nil {
		srv.Close()
		return err
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// SIGHUP is always ours: Go's default for it would end the process without a drain.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	if reloader != nil {
		go func() {
			if err := reloader.Watch(ctx, hup, 200*time.Millisecond); err != nil {
				log.Error("configuration watcher stopped; SIGHUP and file changes are no longer picked up", "err", err)
			}
		}()
	} else {
		go func() {
			for {
				select {
				case <-hup:
					log.Info("SIGHUP: no configuration file to reload (start with --config to reload)")
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	if canarySvc != nil {
		go canarySvc.Run(ctx)
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(ctx) }()
	go func() { errc <- adm.Serve() }()
	listen := ""
	if a := srv.Addr(); a != nil {
		listen = a.String()
	}
	log.Info("pgcanary serving", "listen", listen, "listen_unix", srv.UnixSocket(), "upstream", cfg.Upstream, "admin", adm.Addr().String(),
		"upstream_sslmode", string(mode), "client_tls", clientTLS != nil, "config_generation", gen.Number, "migrations", len(cfg.Migrations))

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining sessions", "drain_timeout", cfg.DrainTimeout, "sessions", srv.Sessions())
	case serveErr = <-errc:
		log.Error("server stopped", "err", serveErr)
	}
	dctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	defer cancel()
	_ = srv.Shutdown(dctx)
	actx, acancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer acancel()
	_ = adm.Shutdown(actx)
	log.Info("stopped")
	return serveErr
}

// openFlags connects the flag source the configuration names: a flagd flag file (relative to the
// configuration file, hot-reloaded) or a flagd daemon. No source: every read stays on the old shape.
func openFlags(ctx context.Context, cfg config.Config, loader *config.Loader, log *slog.Logger) (flags.Source, error) {
	switch {
	case cfg.Flags.File != "":
		path := cfg.Flags.File
		if !filepath.IsAbs(path) && loader != nil {
			path = filepath.Join(filepath.Dir(loader.Path), path)
		}
		src, err := flags.NewFile(ctx, path, log)
		if err != nil {
			return nil, fmt.Errorf("flags: %w", err)
		}
		return src, nil
	case cfg.Flags.Flagd != "":
		src, err := flags.NewFlagd(ctx, cfg.Flags.Flagd, log)
		if err != nil {
			return nil, fmt.Errorf("flags: %w", err)
		}
		return src, nil
	}
	return nil, nil
}
