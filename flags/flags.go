package flags

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"
	isync "github.com/open-feature/flagd/core/pkg/sync"
	flagd "github.com/open-feature/go-sdk-contrib/providers/flagd/pkg"
	of "github.com/open-feature/go-sdk/openfeature"
)

// EvalContext is what a flag is evaluated for.
type EvalContext struct {
	TargetingKey string         // the routing key
	Attributes   map[string]any // user, database, application_name, client_addr, migration
}

// Source evaluates flags. Safe for concurrent use.
type Source interface {
	// Float returns the flag's numeric value for ec. A missing flag, a value of another type, or a provider that is not ready is an error: the caller then uses its default (0% for a read percentage).
	Float(ctx context.Context, flag string, ec EvalContext) (float64, error)
	// Version changes whenever the flags may have changed (a new flag file or daemon update, a
	// source error): while it stays the same, a caller may reuse an evaluation for the same flag and
	// context. (Targeting rules that depend on the current time are the exception.)
	Version() uint64
	Close() error
}

// initDeadlineMs bounds the provider's initialisation: loading the file, or the first sync from
// flagd. The provider also applies it to each evaluation, which in process takes microseconds.
const initDeadlineMs = 5000

// errClosed is returned by Float after Close.
var errClosed = errors.New("flags: source is closed")

// domains numbers the OpenFeature domains, one per Source, so that Sources in one process keep
// separate providers in OpenFeature's process-wide registry.
var domains atomic.Int64

// NewFile evaluates flags from a flagd flag-definition file (JSON, the flagd format), in process,
// re-reading it when it changes. It returns once the file has been loaded, or an error naming the
// file if it cannot be read or parsed within a few seconds.
func NewFile(ctx context.Context, path string, log *slog.Logger) (Source, error) {
	log = orDiscard(log)
	fs, err := newFileSync(path, log)
	if err != nil {
		return nil, err
	}
	p, err := flagd.NewProvider(
		flagd.WithInProcessResolver(),
		flagd.WithOfflineFilePath(""), // FLAGD_OFFLINE_FLAG_SOURCE_PATH would replace fs
		flagd.WithCustomSyncProviderAndUri(fs, fs.path),
		flagd.WithDeadline(initDeadlineMs),
		flagd.WithLogger(logr.FromSlogHandler(log.Handler())),
	)
	if err != nil {
		_ = fs.Shutdown()
		return nil, fmt.Errorf("flags: flag file %s: %w", path, err)
	}
	s, err := start(ctx, p, "flag file "+path, log)
	if err != nil {
		_ = fs.Shutdown()
		return nil, err
	}
	s.file = fs
	return s, nil
}

// NewFlagd evaluates flags with a flagd daemon at addr (host:port).
//
// addr is the daemon's sync service (flagd's --sync-port, 8015 by default): the flags are streamed
// from it and evaluated in process, so evaluation is as fast as with [NewFile], and the flags last
// received stay in force while the daemon is unreachable. It returns once the first flags have
// arrived; a daemon that is not up yet is retried for a few seconds before that is an error.
func NewFlagd(ctx context.Context, addr string, log *slog.Logger) (Source, error) {
	log = orDiscard(log)
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("flags: flagd address %q: %w", addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("flags: flagd address %q: bad port %q", addr, portStr)
	}
	if host == "" {
		host = "localhost"
	}
	deadline := time.Now().Add(initDeadlineMs * time.Millisecond)
	for {
		// Create a provider only once the daemon accepts connections: a provider given up on
		// while its Init still runs is shut down concurrently with it (a data race inside the
		// provider, v0.6.0).
		if err := reachable(ctx, addr); err != nil {
			if time.Until(deadline) < flagdRetry {
				return nil, fmt.Errorf("flags: flagd %s: %w", addr, err)
			}
			select {
			case <-time.After(flagdRetry):
				continue
			case <-ctx.Done():
				return nil, fmt.Errorf("flags: flagd %s: %w", addr, ctx.Err())
			}
		}
		p, err := flagd.NewProvider(
			flagd.WithInProcessResolver(),
			flagd.WithOfflineFilePath(""), // FLAGD_OFFLINE_FLAG_SOURCE_PATH would switch to a file
			flagd.WithHost(host),
			flagd.WithPort(uint16(port)),
			flagd.WithDeadline(int(time.Until(deadline).Milliseconds())+1),
			flagd.WithLogger(logr.FromSlogHandler(log.Handler())),
		)
		if err != nil {
			return nil, fmt.Errorf("flags: flagd %s: %w", addr, err)
		}
		s, err := start(ctx, p, "flagd "+addr, log)
		if err == nil {
			return s, nil
		}
		// Refused at once (the daemon is not listening yet): try again until the deadline.
		if time.Until(deadline) < flagdRetry {
			return nil, err
		}
		log.Debug("flagd not ready; retrying", "addr", addr, "err", err)
		select {
		case <-time.After(flagdRetry):
		case <-ctx.Done():
			return nil, err
		}
	}
}

// reachable dials addr once.
func reachable(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return conn.Close()
}

// flagdRetry is the pause between attempts to reach a flagd daemon that is not up yet.
const flagdRetry = 250 * time.Millisecond

func orDiscard(log *slog.Logger) *slog.Logger {
	if log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return log
}

// source is a flagd provider registered under its own OpenFeature domain.
type source struct {
	domain   string
	desc     string
	provider *flagd.Provider
	file     *fileSync // nil for a flagd daemon
	client   *of.Client
	log      *slog.Logger
	closed   atomic.Bool
	once     sync.Once

	onChange, onError, onStale of.EventCallback
	version                    atomic.Uint64
}

func start(ctx context.Context, p *flagd.Provider, desc string, log *slog.Logger) (*source, error) {
	if err := ctx.Err(); err != nil {
		p.Shutdown()
		return nil, fmt.Errorf("flags: %s: %w", desc, err)
	}
	domain := "pgcanary-" + strconv.FormatInt(domains.Add(1), 10)
	s := &source{domain: domain, desc: desc, provider: p, client: of.NewClient(domain), log: log}
	change := func(d of.EventDetails) {
		s.version.Add(1)
		log.Info("feature flags changed", "source", desc, "flags", d.FlagChanges)
	}
	failed := func(d of.EventDetails) {
		s.version.Add(1)
		log.Warn("feature flag source failing; evaluating the flags last received", "source", desc, "event", d.Message)
	}
	s.onChange, s.onError, s.onStale = &change, &failed, &failed
	s.client.AddHandler(of.ProviderConfigChange, s.onChange)
	s.client.AddHandler(of.ProviderError, s.onError)
	s.client.AddHandler(of.ProviderStale, s.onStale)

	// The flagd provider's Init is bounded by initDeadlineMs; it does not take ctx.
	if err := of.SetNamedProviderWithContextAndWait(ctx, domain, p); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("flags: %s: %w", desc, err)
	}
	return s, nil
}

// Version implements Source.
func (s *source) Version() uint64 { return s.version.Load() }

// Float implements Source.
func (s *source) Float(ctx context.Context, flag string, ec EvalContext) (float64, error) {
	if s.closed.Load() {
		return 0, errClosed
	}
	evalCtx := of.NewEvaluationContext(ec.TargetingKey, ec.Attributes)
	d, err := s.client.FloatValueDetails(ctx, flag, 0, evalCtx)
	if err == nil {
		return d.Value, noValue(flag, d.Reason, d.Variant)
	}
	if d.ErrorCode == of.TypeMismatchCode {
		// A provider may type a whole number as an integer.
		di, ierr := s.client.IntValueDetails(ctx, flag, 0, evalCtx)
		if ierr == nil {
			return float64(di.Value), noValue(flag, di.Reason, di.Variant)
		}
		return 0, fmt.Errorf("flags: flag %q is not a number", flag)
	}
	if d.ErrorCode == of.FlagNotFoundCode {
		return 0, fmt.Errorf("flags: flag %q not found in %s", flag, s.desc)
	}
	return 0, fmt.Errorf("flags: flag %q: %w", flag, err)
}

// noValue reports an evaluation that succeeded without a value of the flag's own: the flag is
// disabled, or no variant was selected (targeting gave null and there is no defaultVariant).
func noValue(flag string, reason of.Reason, variant string) error {
	switch {
	case reason == of.DisabledReason:
		return fmt.Errorf("flags: flag %q is disabled", flag)
	case variant == "" && (reason == of.DefaultReason || reason == "FALLBACK"):
		return fmt.Errorf("flags: flag %q selected no variant and has no defaultVariant", flag)
	}
	return nil
}

// Close shuts the provider down (stopping the file watch or the flagd stream) and detaches it from
// OpenFeature. Float then returns an error. Close is idempotent.
func (s *source) Close() error {
	s.once.Do(func() {
		s.closed.Store(true)
		s.client.RemoveHandler(of.ProviderConfigChange, s.onChange)
		s.client.RemoveHandler(of.ProviderError, s.onError)
		s.client.RemoveHandler(of.ProviderStale, s.onStale)
		// Shut down before detaching: OpenFeature still drains the provider's events meanwhile.
		s.provider.Shutdown()
		// OpenFeature cannot remove a domain; bind it to the no-op provider so that it drops
		// its reference to this one.
		if err := of.SetNamedProvider(s.domain, of.NoopProvider{}); err != nil {
			s.log.Debug("detaching feature flag provider", "source", s.desc, "err", err)
		}
	})
	return nil
}

// filePollInterval is how often the flag file is re-read in case a change raised no event (a
// network file system, a symlink into a directory that is not watched, no inotify watches left).
var filePollInterval = 3 * time.Second

// fileDebounce coalesces the events of one write (a truncate and several writes in place) so that
// the file is read once it is complete.
const fileDebounce = 30 * time.Millisecond

// fileSync is a flagd sync source (sync.ISync) for a flag file. Unlike flagd's own file sync, it
// watches the directory (so a replace by rename, a delete and re-create, or a symlink swap is seen)
// and keeps the flags loaded last when a new version cannot be read or parsed, instead of
// replacing them with an empty flag set.
type fileSync struct {
	path    string // absolute
	log     *slog.Logger
	poll    time.Duration
	watcher *fsnotify.Watcher // nil when the directory cannot be watched: polling only

	last     []byte // content last handed to flagd; only the Sync goroutine writes it after start
	rejected string // why the current content was rejected, logged once per distinct reason
	lastMu   sync.Mutex
	ready    atomic.Bool
	stopOnce sync.Once
}

// newFileSync starts watching path's directory, then reads and validates the file.
func newFileSync(path string, log *slog.Logger) (*fileSync, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("flags: flag file %s: %w", path, err)
	}
	fs := &fileSync{path: abs, log: log, poll: filePollInterval}
	// Watch before the first read so that no change is lost in between.
	if w, err := fsnotify.NewWatcher(); err != nil {
		log.Warn("cannot watch the flag file; polling it", "file", path, "every", fs.poll, "err", err)
	} else {
		fs.watcher = w
		dirs := []string{filepath.Dir(abs)}
		if real, err := filepath.EvalSymlinks(abs); err == nil && filepath.Dir(real) != dirs[0] {
			dirs = append(dirs, filepath.Dir(real))
		}
		for _, dir := range dirs {
			if err := w.Add(dir); err != nil {
				log.Warn("cannot watch the flag file's directory; polling it", "dir", dir, "every", fs.poll, "err", err)
			}
		}
	}
	raw, err := os.ReadFile(abs)
	if err == nil {
		err = validateFlagFile(raw)
	}
	if err != nil {
		_ = fs.Shutdown()
		return nil, fmt.Errorf("flags: flag file %s: %w", path, err)
	}
	fs.last = raw
	return fs, nil
}

// Init implements sync.ISync; the file was read by newFileSync.
func (fs *fileSync) Init(context.Context) error { return nil }

// IsReady implements sync.ISync.
func (fs *fileSync) IsReady() bool { return fs.ready.Load() }

// ReSync implements sync.ISync: it sends the flags in force again.
func (fs *fileSync) ReSync(ctx context.Context, out chan<- isync.DataSync) error {
	fs.lastMu.Lock()
	raw := fs.last
	fs.lastMu.Unlock()
	return fs.send(ctx, out, raw)
}

// Shutdown stops the watch (the in-process service calls it when it stops).
func (fs *fileSync) Shutdown() error {
	fs.stopOnce.Do(func() {
		if fs.watcher != nil {
			_ = fs.watcher.Close()
		}
	})
	return nil
}

func (fs *fileSync) send(ctx context.Context, out chan<- isync.DataSync, raw []byte) error {
	select {
	case out <- isync.DataSync{FlagData: string(raw), Source: fs.path}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Sync implements sync.ISync: it sends the file's flags, then each valid new version, until ctx
// ends.
func (fs *fileSync) Sync(ctx context.Context, out chan<- isync.DataSync) error {
	defer fs.Shutdown()
	fs.lastMu.Lock()
	first := fs.last
	fs.lastMu.Unlock()
	if err := fs.send(ctx, out, first); err != nil {
		return nil
	}
	fs.ready.Store(true)

	var events <-chan fsnotify.Event
	var errs <-chan error
	if fs.watcher != nil {
		events, errs = fs.watcher.Events, fs.watcher.Errors
	}
	tick := time.NewTicker(fs.poll)
	defer tick.Stop()
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if ev.Op != fsnotify.Chmod { // a chmod alone changes no content
				debounce.Reset(fileDebounce)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			fs.log.Warn("watching the flag file", "file", fs.path, "err", err)
		case <-tick.C:
			fs.reload(ctx, out)
		case <-debounce.C:
			fs.reload(ctx, out)
		}
	}
}

// reload re-reads the file and sends it when it changed and is valid.
func (fs *fileSync) reload(ctx context.Context, out chan<- isync.DataSync) {
	raw, err := os.ReadFile(fs.path)
	if err == nil {
		fs.lastMu.Lock()
		same := bytes.Equal(raw, fs.last)
		fs.lastMu.Unlock()
		if same {
			fs.rejected = ""
			return
		}
		err = validateFlagFile(raw)
	}
	if err != nil {
		if msg := err.Error(); msg != fs.rejected {
			fs.rejected = msg
			fs.log.Warn("flag file rejected; the flags loaded last stay in force", "file", fs.path, "err", err)
		}
		return
	}
	fs.rejected = ""
	if fs.send(ctx, out, raw) == nil {
		fs.lastMu.Lock()
		fs.last = raw
		fs.lastMu.Unlock()
	}
}

// validateFlagFile checks what flagd would otherwise accept silently or turn into an empty flag
// set: the file must be JSON with a "flags" object whose flags each have variants, a known state
// and a defaultVariant (or null) among the variants.
func validateFlagFile(raw []byte) error {
	var doc struct {
		Flags json.RawMessage `json:"flags"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("not a flagd flag file: %w", err)
	}
	trimmed := bytes.TrimSpace(doc.Flags)
	if len(trimmed) == 0 || bytes.Equal(trimmed, []byte("null")) {
		return errors.New(`not a flagd flag file: no "flags"`)
	}
	if trimmed[0] == '[' { // flagd's list form; left to flagd
		return nil
	}
	var flagMap map[string]struct {
		State          string          `json:"state"`
		Variants       map[string]any  `json:"variants"`
		DefaultVariant *string         `json:"defaultVariant"`
		Targeting      json.RawMessage `json:"targeting"`
	}
	if err := json.Unmarshal(doc.Flags, &flagMap); err != nil {
		return fmt.Errorf(`"flags": %w`, err)
	}
	for key, f := range flagMap {
		switch {
		case f.State != "ENABLED" && f.State != "DISABLED":
			return fmt.Errorf("flag %q: state %q is neither ENABLED nor DISABLED", key, f.State)
		case len(f.Variants) == 0:
			return fmt.Errorf("flag %q: no variants", key)
		}
		if f.DefaultVariant != nil && *f.DefaultVariant != "" {
			if _, ok := f.Variants[*f.DefaultVariant]; !ok {
				return fmt.Errorf("flag %q: defaultVariant %q is not one of its variants", key, *f.DefaultVariant)
			}
		}
	}
	return nil
}
