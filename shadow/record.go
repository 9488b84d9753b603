package shadow

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"
)

// Mismatch is the record of one comparison whose old and new forms differ. Records are shared
// once made: treat them, their maps and slices, as read-only.
//
// In JSON, field names are snake_case and durations are seconds as a float ("old_seconds",
// "new_seconds"), the unit Prometheus uses.
type Mismatch struct {
	Time        time.Time
	Migration   string
	Fingerprint string // pg_query fingerprint of the old form
	Query       string // the old form normalized (literals replaced), safe to log
	Kind        string // Kind* constants
	// Key identifies the first differing row by the migration key's values. They are redacted to
	// "sha256:" and the first 12 hex digits of their SHA-256 unless the migration logs values;
	// SQL NULL is "NULL". When the result lacks a key column, Key is nil and Row alone says which
	// row it is.
	Key map[string]string
	// Row is the position (0-based, in the order the server returned rows) of the first differing
	// row, in the old result or, when RowInNew, in the new one; -1 when no row is involved.
	Row      int
	RowInNew bool
	Columns  []string // the differing columns
	// OldValues and NewValues are the differing columns' values in the first differing row, only
	// when the migration logs values (compare.log_values); SQL NULL is "NULL".
	OldValues, NewValues     map[string]string
	OldDuration, NewDuration time.Duration
	// OldError and NewError are the forms' errors, "SQLSTATE: message", never redacted: the
	// server's messages are what an operator needs and hold no row values as a rule.
	OldError, NewError string
}

// mismatchJSON is Mismatch's JSON form.
type mismatchJSON struct {
	Time        time.Time         `json:"time"`
	Migration   string            `json:"migration"`
	Fingerprint string            `json:"fingerprint,omitempty"`
	Query       string            `json:"query,omitempty"`
	Kind        string            `json:"kind"`
	Key         map[string]string `json:"key,omitempty"`
	Row         *int              `json:"row,omitempty"`
	RowInNew    bool              `json:"row_in_new,omitempty"`
	Columns     []string          `json:"columns,omitempty"`
	OldValues   map[string]string `json:"old_values,omitempty"`
	NewValues   map[string]string `json:"new_values,omitempty"`
	OldSeconds  float64           `json:"old_seconds"`
	NewSeconds  float64           `json:"new_seconds"`
	OldError    string            `json:"old_error,omitempty"`
	NewError    string            `json:"new_error,omitempty"`
}

// MarshalJSON writes the snake_case form with durations in seconds.
func (m Mismatch) MarshalJSON() ([]byte, error) {
	j := mismatchJSON{
		Time: m.Time, Migration: m.Migration, Fingerprint: m.Fingerprint, Query: m.Query, Kind: m.Kind,
		Key: m.Key, RowInNew: m.RowInNew, Columns: m.Columns, OldValues: m.OldValues, NewValues: m.NewValues,
		OldSeconds: m.OldDuration.Seconds(), NewSeconds: m.NewDuration.Seconds(),
		OldError: m.OldError, NewError: m.NewError,
	}
	if m.Row >= 0 {
		row := m.Row
		j.Row = &row
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads what MarshalJSON writes.
func (m *Mismatch) UnmarshalJSON(data []byte) error {
	var j mismatchJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return err
	}
	*m = Mismatch{
		Time: j.Time, Migration: j.Migration, Fingerprint: j.Fingerprint, Query: j.Query, Kind: j.Kind,
		Key: j.Key, Row: -1, RowInNew: j.RowInNew, Columns: j.Columns, OldValues: j.OldValues, NewValues: j.NewValues,
		OldDuration: secondsToDuration(j.OldSeconds), NewDuration: secondsToDuration(j.NewSeconds),
		OldError: j.OldError, NewError: j.NewError,
	}
	if j.Row != nil {
		m.Row = *j.Row
	}
	return nil
}

func secondsToDuration(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// nullText stands for SQL NULL in keys and values of a Mismatch.
const nullText = "NULL"

// redact hides a value behind a prefix of its SHA-256: equal values still look equal across
// records, so an operator can tell one bad row from many, without the value leaving the process.
func redact(v string) string {
	sum := sha256.Sum256([]byte(v))
	return "sha256:" + hex.EncodeToString(sum[:6])
}

// RecorderOptions configures NewRecorder.
type RecorderOptions struct {
	// PerMigration is how many recent mismatches are kept for each migration; default 100.
	PerMigration int
	// Path, when set, is a file to which every mismatch is appended as one JSON object per line.
	Path string
	// FileQueue bounds the mismatches waiting to be written to Path (default 1000); beyond it they
	// are left out of the file, so a slow disk never slows comparisons.
	FileQueue int
	Logger    *slog.Logger
}

// Recorder keeps the recent mismatches of each migration in a bounded ring, and optionally
// appends every mismatch to a JSON-lines file.
type Recorder struct {
	per int
	log *slog.Logger

	mu     sync.Mutex
	rings  map[string]*ring
	closed bool

	file      *os.File
	writes    chan Mismatch // to the file writer; nil without a file
	done      chan struct{} // closed when the file writer has finished
	fileErrs  rateLimiter
	dropsLogs rateLimiter
}

// NewRecorder returns a recorder; with opts.Path it opens (or creates, mode 0600) the file for
// appending and starts its writer, which Close stops.
func NewRecorder(opts RecorderOptions) (*Recorder, error) {
	r := &Recorder{
		per:       opts.PerMigration,
		log:       orDiscard(opts.Logger),
		rings:     map[string]*ring{},
		fileErrs:  rateLimiter{every: time.Minute},
		dropsLogs: rateLimiter{every: time.Minute},
	}
	if r.per <= 0 {
		r.per = 100
	}
	if opts.Path == "" {
		return r, nil
	}
	f, err := os.OpenFile(opts.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open mismatch log: %w", err)
	}
	queue := opts.FileQueue
	if queue <= 0 {
		queue = 1000
	}
	r.file = f
	r.writes = make(chan Mismatch, queue)
	r.done = make(chan struct{})
	go r.writeFile()
	return r, nil
}

// Record keeps m in its migration's ring and queues it for the file. It never blocks on the file.
func (r *Recorder) Record(m Mismatch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rg := r.rings[m.Migration]
	if rg == nil {
		rg = &ring{buf: make([]Mismatch, 0, r.per)}
		r.rings[m.Migration] = rg
	}
	rg.add(m)
	if r.writes == nil || r.closed {
		return
	}
	select {
	case r.writes <- m:
	default:
		if ok, suppressed := r.dropsLogs.allow(time.Now()); ok {
			r.log.Warn("mismatch log falling behind: records left out of the file", "path", r.file.Name(), "also_left_out", suppressed)
		}
	}
}

// Recent returns up to limit (all when limit <= 0) of migration's kept mismatches, newest first.
func (r *Recorder) Recent(migration string, limit int) []Mismatch {
	r.mu.Lock()
	defer r.mu.Unlock()
	rg := r.rings[migration]
	if rg == nil {
		return nil
	}
	return rg.newest(limit)
}

// Close stops the file writer after it has written what was queued, and closes the file.
// Records made after Close are kept in memory only.
func (r *Recorder) Close() error {
	r.mu.Lock()
	if r.closed || r.writes == nil {
		r.closed = true
		r.mu.Unlock()
		return nil
	}
	r.closed = true
	close(r.writes)
	r.mu.Unlock()
	<-r.done
	if err := r.file.Close(); err != nil {
		return fmt.Errorf("close mismatch log: %w", err)
	}
	return nil
}

func (r *Recorder) writeFile() {
	defer close(r.done)
	for m := range r.writes {
		line, err := json.Marshal(m)
		if err == nil {
			_, err = r.file.Write(append(line, '\n'))
		}
		if err != nil {
			if ok, suppressed := r.fileErrs.allow(time.Now()); ok {
				r.log.Error("mismatch log write failed", "path", r.file.Name(), "err", err, "errors_since_last_report", suppressed)
			}
		}
	}
}

// ring is a fixed-capacity buffer of the latest mismatches.
type ring struct {
	buf  []Mismatch
	next int // where the next record goes once buf is full
}

func (rg *ring) add(m Mismatch) {
	if len(rg.buf) < cap(rg.buf) {
		rg.buf = append(rg.buf, m)
		return
	}
	rg.buf[rg.next] = m
	rg.next = (rg.next + 1) % len(rg.buf)
}

func (rg *ring) newest(limit int) []Mismatch {
	n := len(rg.buf)
	if limit <= 0 || limit > n {
		limit = n
	}
	out := make([]Mismatch, 0, limit)
	// The newest record sits just before next (or at the end while the ring fills).
	last := n - 1
	if n == cap(rg.buf) {
		last = (rg.next - 1 + n) % n
	}
	for i := range limit {
		out = append(out, rg.buf[(last-i+n)%n])
	}
	return slices.Clip(out)
}

// rateLimiter lets a repeated log line through at most once per period and counts the rest, so a
// failing side database or disk shows up in the log without flooding it.
type rateLimiter struct {
	every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether to log now, and how many were suppressed since the last allowed one.
func (l *rateLimiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	return true, n
}
