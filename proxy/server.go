package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgcanary/pgcanary/flags"
)

// DefaultMaxMessageSize matches Postgres's own limit on a client message (PQ_LARGE_MESSAGE_LIMIT
// is 1 GiB minus one; a value over it could not be stored anyway).
const DefaultMaxMessageSize = 1 << 30

// Config configures a Server.
type Config struct {
	Listen string // address for clients, host:port; empty for none (then ListenUnix is required)
	// ListenUnix, when set, is a Unix socket for clients too: the socket file, DIR:PORT, or a
	// directory, holding .s.PGSQL.<port of Listen> as Postgres's own socket directory would.
	ListenUnix string
	Upstream   Upstream // the PostgreSQL server
	// TLS, when set, is offered to clients that send SSLRequest; otherwise they get 'N'.
	TLS            *tls.Config
	MaxMessageSize int           // largest client message body accepted; default DefaultMaxMessageSize
	ConnectTimeout time.Duration // upstream connect and TLS handshake; default 10s
	Logger         *slog.Logger
	Metrics        Metrics
	// Planner, when set, plans the statements of sessions: writes to migrated relations are sent in
	// their mirrored form. Without one (or while no migration is configured) sessions relay as is.
	Planner Planner
	// Flags evaluates each migration's read-percent flag for routed reads; nil reads everything
	// from the old shape.
	Flags flags.Source
	// RoutingKey is the config's routing_key: session (default), statement, user,
	// application_name, client_addr, startup:<param> or comment:<key>.
	RoutingKey string
	// Shadow, when set, receives sampled reads to compare and holds the kill switches.
	Shadow Shadow
	// NamesMayHaveChanged, when set, is called when a session sends DDL naming a migrated
	// relation's name (CREATE TABLE tenant7.users, a RENAME, a DROP): which schemas hold such
	// names, which planning depends on, may have changed. It must not block.
	NamesMayHaveChanged func()
	// BatchEndWait bounds how long a routed read's failure that arrives before the client has
	// sent the rest of its batch is held back, waiting for the batch's end so the batch can be
	// re-run in its old form (awaitBatchEnd); default DefaultBatchEndWait.
	BatchEndWait time.Duration
	// EventLoops is how many event loops relay the sessions whose client and server connections
	// are both plain TCP or Unix sockets (loop_linux.go): 0 for one per two CPUs, a negative
	// number for none (each session then waits in Go's netpoller with a goroutine per
	// direction, as TLS sessions always do).
	EventLoops int
	// BusyPoll is how long an event loop keeps polling its sockets once it has nothing to do,
	// before it sleeps in epoll_pwait: 0 for DefaultBusyPoll (none under a CPU quota), a negative
	// duration for none.
	//
	// Why: at low concurrency each request and each answer would otherwise wake the loop's
	// thread from sleep, twice per round trip, and a wake-up costs more than the relaying; more
	// so in a VM, where an idle CPU halts and waking it exits to the hypervisor. A loop that polls
	// while the server works is there when the answer comes. Measured on a 2-core VM (pgbench -S,
	// prepared, 1 client): 56% more transactions per second than without, 1.3 times direct to
	// Postgres, for one CPU spent polling. It polls only with CPU time nothing else wants: not
	// while every CPU of the machine is taken (runQueue), and it stops when a yield between
	// polls lets another thread run (eventLoop.spin).
	BusyPoll time.Duration
}

// DefaultBusyPoll is Config.BusyPoll's default: long enough to span a point query's execution
// and a client's turnaround. The kernel's own busy polling (net.core.busy_poll) suggests 50 µs,
// which missed the answer of a query taking 150-200 µs at the server: 200 µs turned that query's
// 3.6k transactions per second at one client into 5.1-5.8k (the guest haltpoll governor's default
// ceiling is 200 µs too).
const DefaultBusyPoll = 200 * time.Microsecond

// DefaultBatchEndWait is Config.BatchEndWait's default: clients that send a pipeline in pieces
// send its end within microseconds to a millisecond; one that waits for an error before it goes on
// gets it after this long.
const DefaultBatchEndWait = 50 * time.Millisecond

// Server accepts client connections and relays each to the upstream server.
type Server struct {
	listen         string
	listenUnix     string // the socket file's path, resolved by New
	upstream       Upstream
	tls            *tls.Config
	maxMessageSize int
	connectTimeout time.Duration
	log            *slog.Logger
	metrics        Metrics
	planner        Planner
	shadow         Shadow
	namesChanged   func()
	flags          flags.Source
	routingKey     string
	batchEndWait   time.Duration
	keys           *cancelKeys
	// warnedUnixTrust: a session logged that Postgres lets clients in over its socket unasked.
	warnedUnixTrust atomic.Bool

	mu           sync.Mutex
	eventLoops   int           // how many loops to start; 0 for none
	busyPoll     time.Duration // Config.BusyPoll, resolved
	loops        []*eventLoop  // started with the first session
	loopNext     uint64
	loopsStopped bool
	ln           net.Listener // TCP clients; nil without Listen
	uln          net.Listener // Unix-socket clients; nil without ListenUnix
	sessions     map[*session]struct{}
	draining     bool
	wg           sync.WaitGroup
}

// New validates cfg and returns a Server that is not yet listening.
func New(cfg Config) (*Server, error) {
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.MaxMessageSize < 1024 {
		return nil, fmt.Errorf("max message size %d is too small (at least 1024 bytes)", cfg.MaxMessageSize)
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	if cfg.BatchEndWait <= 0 {
		cfg.BatchEndWait = DefaultBatchEndWait
	}
	switch {
	case cfg.EventLoops == 0:
		cfg.EventLoops = defaultEventLoops()
	case cfg.EventLoops < 0:
		cfg.EventLoops = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	switch {
	case cfg.BusyPoll == 0:
		var quota string
		cfg.BusyPoll, quota = defaultBusyPoll()
		if quota != "" && cfg.EventLoops > 0 {
			cfg.Logger.Info("event loops do not busy poll: the process runs under a CPU quota, which polling would spend (set busy_poll to poll anyway)", "quota", quota)
		}
	case cfg.BusyPoll < 0:
		cfg.BusyPoll = 0
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	if err := cfg.Upstream.prepare(); err != nil {
		return nil, err
	}
	if cfg.Listen == "" && cfg.ListenUnix == "" {
		return nil, errors.New("no client address: set a TCP listen address, a Unix socket, or both")
	}
	var unixPath string
	if cfg.ListenUnix != "" {
		if !isUnixAddress(cfg.ListenUnix) {
			return nil, fmt.Errorf("unix socket %q: want an absolute path", cfg.ListenUnix)
		}
		port := ""
		if _, p, err := net.SplitHostPort(cfg.Listen); err == nil && p != "0" {
			port = p
		}
		path, err := resolveUnixPath(cfg.ListenUnix, port)
		if err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
		unixPath = path
	}
	return &Server{
		listen:         cfg.Listen,
		listenUnix:     unixPath,
		upstream:       cfg.Upstream,
		tls:            cfg.TLS,
		maxMessageSize: cfg.MaxMessageSize,
		connectTimeout: cfg.ConnectTimeout,
		log:            cfg.Logger,
		metrics:        cfg.Metrics,
		planner:        cfg.Planner,
		shadow:         cfg.Shadow,
		namesChanged:   cfg.NamesMayHaveChanged,
		flags:          cfg.Flags,
		routingKey:     cfg.RoutingKey,
		batchEndWait:   cfg.BatchEndWait,
		keys:           newCancelKeys(),
		eventLoops:     cfg.EventLoops,
		busyPoll:       cfg.BusyPoll,
		sessions:       make(map[*session]struct{}),
	}, nil
}

// Listen binds the client address. Split from Serve so callers know the address (port 0 in tests)
// and can report a bind error before starting anything else.
func (s *Server) Listen() error {
	var ln, uln net.Listener
	if s.listen != "" {
		l, err := net.Listen("tcp", s.listen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", s.listen, err)
		}
		ln = l
	}
	if s.listenUnix != "" {
		l, err := listenUnix(s.listenUnix)
		if err != nil {
			if ln != nil {
				ln.Close()
			}
			return err
		}
		uln = l
	}
	s.mu.Lock()
	s.ln, s.uln = ln, uln
	s.mu.Unlock()
	return nil
}

// Addr is the bound TCP client address; nil before Listen or without a TCP address.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// UnixSocket is the path of the clients' Unix socket; "" without one.
func (s *Server) UnixSocket() string { return s.listenUnix }

// Serve accepts clients until Shutdown or Close. It returns nil after a shutdown.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	var lns []net.Listener
	for _, l := range []net.Listener{s.ln, s.uln} {
		if l != nil {
			lns = append(lns, l)
		}
	}
	s.mu.Unlock()
	if len(lns) == 0 {
		return errors.New("proxy: Serve called before Listen")
	}
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errs <- s.accept(ctx, ln) }()
	}
	var first error
	for range lns {
		if err := <-errs; err != nil && first == nil {
			first = err
			// One listener failing stops the server's service as a whole: close the others so
			// Serve returns rather than serving half its addresses.
			s.closeListeners()
		}
	}
	return first
}

func (s *Server) closeListeners() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeListenersLocked()
}

func (s *Server) closeListenersLocked() {
	for _, l := range []net.Listener{s.ln, s.uln} {
		if l != nil {
			_ = l.Close()
		}
	}
}

// accept serves one listener until it is closed.
func (s *Server) accept(ctx context.Context, ln net.Listener) error {
	var backoff time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			// Out of file descriptors and similar: wait a little and keep serving.
			if backoff == 0 {
				backoff = 5 * time.Millisecond
			} else if backoff < time.Second {
				backoff *= 2
			}
			s.log.Error("accept", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		backoff = 0
		s.startSession(ctx, conn)
	}
}

func (s *Server) startSession(ctx context.Context, conn net.Conn) {
	s.mu.Lock()
	if s.draining {
		s.mu.Unlock()
		_ = conn.Close()
		return
	}
	sess := newSession(s, conn, s.pickLoopLocked())
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.metrics.ClientConnected()
	go func() {
		defer s.wg.Done()
		defer s.metrics.ClientDisconnected()
		defer func() {
			s.mu.Lock()
			delete(s.sessions, sess)
			s.mu.Unlock()
		}()
		sess.run(ctx)
	}()
}

// Sessions returns how many client sessions are open.
func (s *Server) Sessions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// Shutdown stops accepting, lets sessions finish what they are doing until each is idle (closing
// it then), and when ctx ends closes whatever is left. It returns when every session is gone.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	s.closeListenersLocked()
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		sess.drain()
	}
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		s.stopLoops()
		return nil
	case <-ctx.Done():
	}
	s.mu.Lock()
	left := len(s.sessions)
	for sess := range s.sessions {
		go sess.close()
	}
	s.mu.Unlock()
	<-done
	s.stopLoops()
	s.log.Info("drain timeout: closed busy sessions", "sessions", left)
	return nil
}

// Close stops accepting and closes every session at once.
func (s *Server) Close() {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = s.Shutdown(ctx)
}

// CheckUpstream reports whether the upstream accepts connections; it backs /readyz.
func (s *Server) CheckUpstream(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, s.upstream.network, s.upstream.address)
	if err != nil {
		return fmt.Errorf("upstream %s: %w", s.upstream.Addr, err)
	}
	return conn.Close()
}
