package shadow

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// Engagement is one engaged kill switch.
type Engagement struct {
	Reason string    `json:"reason"`
	Since  time.Time `json:"since"`
}

// KillSwitchOptions configures NewKillSwitch.
type KillSwitchOptions struct {
	// StatePath, when set, is a JSON file that keeps the engaged switches across restarts: a
	// migration rolled back by its canary must not quietly serve the new shape again because the
	// process restarted. It is written atomically (temporary file and rename).
	StatePath string
	Metrics   Metrics
	Logger    *slog.Logger
	Now       func() time.Time // the clock; time.Now when nil
}

// KillSwitch holds each migration's kill switch: while engaged, the proxy serves every read of
// the migration from the old shape, whatever the flags say, until an operator releases it.
//
// Engaged is read on every routed read, so it is a lock-free load of an immutable map; the rare
// writers copy the map under a mutex and swap it in.
type KillSwitch struct {
	state   atomic.Pointer[map[string]Engagement]
	mu      sync.Mutex // serialises writers and the state file
	path    string
	metrics Metrics
	log     *slog.Logger
	now     func() time.Time
}

// killSwitchFile is the state file's format.
type killSwitchFile struct {
	Engaged map[string]Engagement `json:"engaged"`
}

// NewKillSwitch returns a kill switch with the switches recorded in opts.StatePath engaged. A
// missing state file is an empty one; an unreadable or corrupt one is an error rather than
// silently released switches.
func NewKillSwitch(opts KillSwitchOptions) (*KillSwitch, error) {
	k := &KillSwitch{
		path:    opts.StatePath,
		metrics: orNop(opts.Metrics),
		log:     orDiscard(opts.Logger),
		now:     opts.Now,
	}
	if k.now == nil {
		k.now = time.Now
	}
	state := map[string]Engagement{}
	if k.path != "" {
		raw, err := os.ReadFile(k.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("read kill switch state: %w", err)
		default:
			var f killSwitchFile
			if err := json.Unmarshal(raw, &f); err != nil {
				return nil, fmt.Errorf("parse kill switch state %s: %w", k.path, err)
			}
			if f.Engaged != nil {
				state = f.Engaged
			}
		}
	}
	for m, e := range state {
		k.metrics.KillSwitch(m, true)
		k.log.Warn("kill switch engaged from the state file", "migration", m, "reason", e.Reason, "since", e.Since)
	}
	k.state.Store(&state)
	return k, nil
}

// Engage engages migration's kill switch. An engaged switch keeps its first reason and time.
// The switch holds in memory even when the state file cannot be written (that is logged).
func (k *KillSwitch) Engage(migration, reason string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	cur := *k.state.Load()
	if _, on := cur[migration]; on {
		return
	}
	next := maps.Clone(cur)
	next[migration] = Engagement{Reason: reason, Since: k.now()}
	k.state.Store(&next)
	k.metrics.KillSwitch(migration, true)
	k.log.Warn("kill switch engaged: reads served by the old shape", "migration", migration, "reason", reason)
	k.persist(next)
}

// Release releases migration's kill switch (an operator's resume).
func (k *KillSwitch) Release(migration string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	cur := *k.state.Load()
	if _, on := cur[migration]; !on {
		return
	}
	next := maps.Clone(cur)
	delete(next, migration)
	k.state.Store(&next)
	k.metrics.KillSwitch(migration, false)
	k.log.Info("kill switch released", "migration", migration)
	k.persist(next)
}

// Engaged reports whether migration's kill switch is engaged, why and since when. It is safe and
// cheap to call from any number of goroutines.
func (k *KillSwitch) Engaged(migration string) (engaged bool, reason string, since time.Time) {
	e, ok := (*k.state.Load())[migration]
	return ok, e.Reason, e.Since
}

// All returns the engaged switches by migration.
func (k *KillSwitch) All() map[string]Engagement {
	return maps.Clone(*k.state.Load())
}

// persist writes state to the state file: a temporary file in the same directory, synced, then
// renamed over the old one, so a crash leaves either the old or the new state, never half a file.
func (k *KillSwitch) persist(state map[string]Engagement) {
	if k.path == "" {
		return
	}
	if err := writeFileAtomic(k.path, killSwitchFile{Engaged: state}); err != nil {
		k.log.Error("kill switch state not saved: a restart would forget this change", "path", k.path, "err", err)
	}
}

func writeFileAtomic(path string, v any) (err error) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create temporary file for %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp.Name(), path, err)
	}
	return nil
}

// orDiscard returns l, or a logger that discards everything when l is nil.
func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
