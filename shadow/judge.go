package shadow

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"
)

// minPairsPerBucket is the least number of latency pairs a bucket may keep (see perSlot).
const minPairsPerBucket = 256

// JudgeOptions configures NewJudge. Zero fields take the defaults in brackets.
type JudgeOptions struct {
	// Window is how far back the verdict looks [10m]. Events are kept in buckets of Bucket [10s],
	// so memory does not grow with the rate and the window slides one bucket at a time.
	Window time.Duration
	Bucket time.Duration

	// MinSamples is the number of comparisons in the window a pass needs [200].
	MinSamples int
	// MaxMismatchRate is the mismatch rate a migration may not be shown to exceed [0.001]. The
	// canary fails when there is at least one mismatch, at least MinComparisonsToFail [20]
	// comparisons, and the Wilson 95 % upper bound of the rate is above MaxMismatchRate.
	//
	// Both forms run in one snapshot, so a mismatch is a real difference, not race noise: one is
	// evidence. The upper bound keeps the canary failing until enough clean comparisons bound the
	// rate below the threshold (one mismatch passes at 0.001 once there are about 5,700
	// comparisons), while 5 mismatches in 20 (upper bound 0.47) fail at once. With no mismatch at
	// all nothing counts against the migration, and MinSamples comparisons pass, although the
	// upper bound (about 3.84/n) only falls below 0.001 after about 3,840 of them.
	MaxMismatchRate      float64
	MinComparisonsToFail int

	// MaxErrorRateIncrease is how much the error rate of reads routed to the new shape may exceed
	// that of reads routed to the old shape, absolute [0.01]. The canary fails when the Wilson
	// 95 % lower bound of the new route's error rate exceeds the old route's rate by more than
	// this, once the new route served MinRoutedReads [50] reads: one failed read in 50 does not
	// fail the canary, a new shape failing 10 % of its reads does.
	MaxErrorRateIncrease float64
	MinRoutedReads       int

	// The latency rule: the canary fails when the new form is slower, by a one-sided Mann–Whitney
	// U test over the paired durations of the window's comparisons with p < LatencyAlpha [0.01],
	// and the difference matters in practice: Cliff's delta (the share of (new, old) pairs where
	// new is slower, minus the share where it is faster) at least LatencyMinEffect [0.2; Romano
	// et al. call 0.147 small and 0.33 medium] and the ratio of medians new/old at least
	// LatencyMinRatio [1.2], and, when set, the medians at least LatencyMinIncrease apart [0, off;
	// set it to ignore slowdowns of fast reads too small to matter]. The test needs at least
	// LatencyMinPairs [30] pairs. It runs on at most LatencyReservoir [2000] pairs sampled about
	// uniformly over the window: each bucket keeps a reservoir sample of its own pairs, and the
	// buckets contribute in proportion to the pairs they saw.
	LatencyAlpha       float64
	LatencyMinEffect   float64
	LatencyMinRatio    float64
	LatencyMinIncrease time.Duration
	LatencyMinPairs    int
	LatencyReservoir   int

	// Interval is how often Run re-evaluates every migration [2s].
	Interval time.Duration

	// KillSwitch is engaged when a migration's verdict turns to fail and its auto-rollback is on
	// (the default; see SetAutoRollback). Nil: verdicts only.
	KillSwitch *KillSwitch
	Metrics    Metrics
	Logger     *slog.Logger
	Now        func() time.Time // the clock; time.Now when nil
}

func (o *JudgeOptions) applyDefaults() {
	setDefault(&o.Window, 10*time.Minute)
	setDefault(&o.Bucket, 10*time.Second)
	o.Bucket = min(o.Bucket, o.Window)
	setDefault(&o.MinSamples, 200)
	setDefault(&o.MaxMismatchRate, 0.001)
	setDefault(&o.MinComparisonsToFail, 20)
	setDefault(&o.MaxErrorRateIncrease, 0.01)
	setDefault(&o.MinRoutedReads, 50)
	setDefault(&o.LatencyAlpha, 0.01)
	setDefault(&o.LatencyMinEffect, 0.2)
	setDefault(&o.LatencyMinRatio, 1.2)
	// A fresh window (after a resume, say) must not fail on a few dozen pairs from a busy moment.
	setDefault(&o.LatencyMinPairs, 200)
	setDefault(&o.LatencyReservoir, 2000)
	setDefault(&o.Interval, 2*time.Second)
	if o.Now == nil {
		o.Now = time.Now
	}
}

func setDefault[T int | float64 | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Verdict is a migration's canary verdict over the judge's window. In JSON (for an Argo Rollouts
// web metric, or the admin endpoint) field names are snake_case and durations are seconds.
type Verdict struct {
	Migration string
	Status    string   // StatusPass, StatusInconclusive or StatusFail
	Reasons   []string // why: the failing rules, what is missing, or the evidence for a pass
	At        time.Time
	Window    time.Duration

	Comparisons, Mismatches     int
	MismatchRate, MismatchUpper float64 // MismatchUpper: Wilson 95 % upper bound

	OldReads, NewReads, OldErrors, NewErrors int // reads routed to each shape, and those that failed

	LatencyPairs         int
	LatencyP             float64 // one-sided p-value that the new form is slower; 1 without a test
	LatencyEffect        float64 // Cliff's delta of new vs old durations, in [-1, 1]
	OldMedian, NewMedian time.Duration
}

type verdictJSON struct {
	Migration        string    `json:"migration"`
	Status           string    `json:"status"`
	Reasons          []string  `json:"reasons"`
	At               time.Time `json:"at"`
	WindowSeconds    float64   `json:"window_seconds"`
	Comparisons      int       `json:"comparisons"`
	Mismatches       int       `json:"mismatches"`
	MismatchRate     float64   `json:"mismatch_rate"`
	MismatchUpper    float64   `json:"mismatch_upper"`
	OldReads         int       `json:"old_reads"`
	NewReads         int       `json:"new_reads"`
	OldErrors        int       `json:"old_errors"`
	NewErrors        int       `json:"new_errors"`
	LatencyPairs     int       `json:"latency_pairs"`
	LatencyP         float64   `json:"latency_p"`
	LatencyEffect    float64   `json:"latency_effect"`
	OldMedianSeconds float64   `json:"old_median_seconds"`
	NewMedianSeconds float64   `json:"new_median_seconds"`
}

// MarshalJSON writes the snake_case form with durations in seconds.
func (v Verdict) MarshalJSON() ([]byte, error) {
	reasons := v.Reasons
	if reasons == nil {
		reasons = []string{}
	}
	return json.Marshal(verdictJSON{
		Migration: v.Migration, Status: v.Status, Reasons: reasons, At: v.At, WindowSeconds: v.Window.Seconds(),
		Comparisons: v.Comparisons, Mismatches: v.Mismatches, MismatchRate: v.MismatchRate, MismatchUpper: v.MismatchUpper,
		OldReads: v.OldReads, NewReads: v.NewReads, OldErrors: v.OldErrors, NewErrors: v.NewErrors,
		LatencyPairs: v.LatencyPairs, LatencyP: v.LatencyP, LatencyEffect: v.LatencyEffect,
		OldMedianSeconds: v.OldMedian.Seconds(), NewMedianSeconds: v.NewMedian.Seconds(),
	})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (v *Verdict) UnmarshalJSON(data []byte) error {
	var j verdictJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return err
	}
	*v = Verdict{
		Migration: j.Migration, Status: j.Status, Reasons: j.Reasons, At: j.At, Window: secondsToDuration(j.WindowSeconds),
		Comparisons: j.Comparisons, Mismatches: j.Mismatches, MismatchRate: j.MismatchRate, MismatchUpper: j.MismatchUpper,
		OldReads: j.OldReads, NewReads: j.NewReads, OldErrors: j.OldErrors, NewErrors: j.NewErrors,
		LatencyPairs: j.LatencyPairs, LatencyP: j.LatencyP, LatencyEffect: j.LatencyEffect,
		OldMedian: secondsToDuration(j.OldMedianSeconds), NewMedian: secondsToDuration(j.NewMedianSeconds),
	}
	return nil
}

// Judge turns each migration's comparisons and routed reads over a sliding window into a verdict,
// and engages the migration's kill switch when the verdict turns to fail.
type Judge struct {
	opts     JudgeOptions
	nBuckets int
	perSlot  int // latency pairs kept per bucket
	metrics  Metrics
	log      *slog.Logger

	mu         sync.RWMutex
	migrations map[string]*judgeState
}

// judgeState is one migration's window. Its own mutex keeps migrations from contending with
// each other on the proxy's per-read RecordRoutedRead.
type judgeState struct {
	mu           sync.Mutex
	buckets      []bucket
	rng          *rand.Rand
	autoRollback bool
	lastStatus   string
	// rolledBack is set when the judge engaged the kill switch during the current fail; an
	// operator's Release then holds until the verdict leaves fail and fails again.
	rolledBack bool
	// resetAt is when an operator last reset the window: comparisons sampled before it (still
	// queued at the reset, planned under the configuration being fixed) are not evidence.
	resetAt time.Time
}

// bucket holds the events of one Bucket-long slice of time.
type bucket struct {
	id                                       int64 // time / Bucket; a slot whose id is stale is empty
	comparisons, mismatches                  int
	oldReads, newReads, oldErrors, newErrors int
	pairsSeen                                int
	pairs                                    []latencyPair // reservoir sample of the bucket's pairs
}

type latencyPair struct{ old, new time.Duration }

// NewJudge returns a judge; call Run to have it re-evaluate and act on its verdicts.
func NewJudge(opts JudgeOptions) *Judge {
	opts.applyDefaults()
	n := int((opts.Window + opts.Bucket - 1) / opts.Bucket)
	return &Judge{
		opts:     opts,
		nBuckets: n,
		// A bucket may keep more than its share of the reservoir, so that while traffic fills only
		// a few buckets (the first minute of a canary, a quiet hour) the test still has the pairs
		// it needs; collect then samples the window down to LatencyReservoir.
		perSlot:    min(opts.LatencyReservoir, max((opts.LatencyReservoir+n-1)/n, minPairsPerBucket)),
		metrics:    orNop(opts.Metrics),
		log:        orDiscard(opts.Logger),
		migrations: map[string]*judgeState{},
	}
}

// state returns migration's state, creating it on first use.
func (j *Judge) state(migration string) *judgeState {
	j.mu.RLock()
	s := j.migrations[migration]
	j.mu.RUnlock()
	if s != nil {
		return s
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if s = j.migrations[migration]; s == nil {
		s = &judgeState{
			buckets:      make([]bucket, j.nBuckets),
			rng:          rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())),
			autoRollback: true,
		}
		j.migrations[migration] = s
		j.metrics.Verdict(migration, StatusInconclusive)
	}
	return s
}

// current returns the bucket for now, emptied if it held an older slice of time. Call with s.mu.
func (j *Judge) current(s *judgeState, now time.Time) *bucket {
	id := now.UnixNano() / int64(j.opts.Bucket)
	b := &s.buckets[mod(id, j.nBuckets)]
	if b.id != id {
		*b = bucket{id: id, pairs: b.pairs[:0]}
	}
	return b
}

func mod(a int64, n int) int { return int((a%int64(n) + int64(n)) % int64(n)) }

// RecordComparison records one comparison that reached a result (match or mismatch) with each
// form's duration. A zero duration (a form that failed) leaves the pair out of the latency test.
func (j *Judge) RecordComparison(migration string, mismatch bool, oldDur, newDur time.Duration) {
	j.RecordSampledComparison(migration, time.Time{}, mismatch, oldDur, newDur)
}

// RecordSampledComparison is RecordComparison for a read sampled at sampled: one sampled before
// the window's last Reset is left out.
func (j *Judge) RecordSampledComparison(migration string, sampled time.Time, mismatch bool, oldDur, newDur time.Duration) {
	s := j.state(migration)
	s.mu.Lock()
	defer s.mu.Unlock()
	if !sampled.IsZero() && sampled.Before(s.resetAt) {
		return
	}
	b := j.current(s, j.opts.Now())
	b.comparisons++
	if mismatch {
		b.mismatches++
	}
	if oldDur <= 0 || newDur <= 0 {
		return
	}
	// Reservoir sampling (Algorithm R) keeps a uniform sample of the bucket's pairs in bounded memory.
	b.pairsSeen++
	p := latencyPair{old: oldDur, new: newDur}
	if len(b.pairs) < j.perSlot {
		b.pairs = append(b.pairs, p)
	} else if k := s.rng.IntN(b.pairsSeen); k < j.perSlot {
		b.pairs[k] = p
	}
}

// RecordRoutedRead records a read the proxy served from route ("old" or "new") and whether it
// failed. The proxy calls it for every routed read; it takes only the migration's own lock.
func (j *Judge) RecordRoutedRead(migration, route string, failed bool) {
	j.metrics.RoutedRead(migration, route, failed)
	s := j.state(migration)
	s.mu.Lock()
	defer s.mu.Unlock()
	b := j.current(s, j.opts.Now())
	switch route {
	case SideNew:
		b.newReads++
		if failed {
			b.newErrors++
		}
	case SideOld:
		b.oldReads++
		if failed {
			b.oldErrors++
		}
	}
}

// SetAutoRollback sets whether a fail engages migration's kill switch (on by default).
func (j *Judge) SetAutoRollback(migration string, on bool) {
	s := j.state(migration)
	s.mu.Lock()
	s.autoRollback = on
	s.mu.Unlock()
}

// Reset forgets migration's window, for an operator who resumes after a fix and wants the verdict
// to rest on new evidence only.
func (j *Judge) Reset(migration string) {
	s := j.state(migration)
	s.mu.Lock()
	for i := range s.buckets {
		s.buckets[i] = bucket{}
	}
	s.lastStatus, s.rolledBack = "", false
	s.resetAt = j.opts.Now()
	s.mu.Unlock()
	j.metrics.Verdict(migration, StatusInconclusive)
}

// Verdict evaluates migration's verdict now. It only reads: transitions and the kill switch are
// handled by Evaluate (and Run).
func (j *Judge) Verdict(migration string) Verdict {
	j.mu.RLock()
	s := j.migrations[migration]
	j.mu.RUnlock()
	now := j.opts.Now()
	if s == nil {
		return Verdict{Migration: migration, Status: StatusInconclusive, At: now, Window: j.opts.Window, LatencyP: 1,
			Reasons: []string{"no comparisons or routed reads recorded yet"}}
	}
	s.mu.Lock()
	w := j.collect(s, now)
	s.mu.Unlock()
	return j.decide(migration, w, now)
}

// Verdicts returns the current verdict of every migration the judge has seen, by name.
func (j *Judge) Verdicts() []Verdict {
	var out []Verdict
	for _, m := range j.names() {
		out = append(out, j.Verdict(m))
	}
	return out
}

func (j *Judge) names() []string {
	j.mu.RLock()
	defer j.mu.RUnlock()
	names := make([]string, 0, len(j.migrations))
	for m := range j.migrations {
		names = append(names, m)
	}
	slices.Sort(names)
	return names
}

// Run re-evaluates every migration each Interval until ctx ends.
func (j *Judge) Run(ctx context.Context) {
	t := time.NewTicker(j.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			j.Evaluate()
		}
	}
}

// Evaluate re-evaluates every migration, updates pgcanary_canary_verdict, logs changes, and on a
// turn to fail engages the kill switch of a migration whose auto-rollback is on. It returns the
// verdicts.
func (j *Judge) Evaluate() []Verdict {
	var out []Verdict
	for _, m := range j.names() {
		v := j.Verdict(m)
		j.metrics.Verdict(m, v.Status)
		j.act(m, v)
		out = append(out, v)
	}
	return out
}

// act handles a migration's status transition.
func (j *Judge) act(migration string, v Verdict) {
	s := j.state(migration)
	s.mu.Lock()
	prev := s.lastStatus
	s.lastStatus = v.Status
	engage := false
	if v.Status != StatusFail {
		s.rolledBack = false
	} else if !s.rolledBack && s.autoRollback && j.opts.KillSwitch != nil {
		s.rolledBack, engage = true, true
	}
	auto := s.autoRollback
	s.mu.Unlock()

	reasons := strings.Join(v.Reasons, "; ")
	if v.Status == StatusFail && prev != StatusFail {
		j.log.Warn("canary failed", "migration", migration, "reasons", reasons, "auto_rollback", auto && j.opts.KillSwitch != nil)
	} else if v.Status != prev {
		j.log.Info("canary verdict changed", "migration", migration, "from", prev, "to", v.Status, "reasons", reasons)
	}
	if engage {
		j.opts.KillSwitch.Engage(migration, "canary failed: "+reasons)
	}
}

// window is the sum of a migration's buckets within the window.
type window struct {
	comparisons, mismatches                  int
	oldReads, newReads, oldErrors, newErrors int
	oldDur, newDur                           []time.Duration
}

// collect sums the buckets that lie within the window ending now, and samples their latency
// pairs down to LatencyReservoir, taking from each bucket in proportion to the pairs it saw so
// the sample stays about uniform over the window. Call with s.mu.
func (j *Judge) collect(s *judgeState, now time.Time) window {
	var w window
	cur := now.UnixNano() / int64(j.opts.Bucket)
	var live []*bucket
	kept, seen := 0, 0
	for i := range s.buckets {
		b := &s.buckets[i]
		if b.id <= cur-int64(j.nBuckets) || b.id > cur {
			continue
		}
		live = append(live, b)
		w.comparisons += b.comparisons
		w.mismatches += b.mismatches
		w.oldReads += b.oldReads
		w.newReads += b.newReads
		w.oldErrors += b.oldErrors
		w.newErrors += b.newErrors
		kept += len(b.pairs)
		seen += b.pairsSeen
	}
	target := min(kept, j.opts.LatencyReservoir)
	for _, b := range live {
		take := len(b.pairs)
		if kept > target {
			take = min(take, int(math.Round(float64(target)*float64(b.pairsSeen)/float64(seen))))
		}
		// A partial Fisher–Yates shuffle picks take pairs at random from the bucket's sample.
		for i := range take {
			k := i + s.rng.IntN(len(b.pairs)-i)
			b.pairs[i], b.pairs[k] = b.pairs[k], b.pairs[i]
			w.oldDur = append(w.oldDur, b.pairs[i].old)
			w.newDur = append(w.newDur, b.pairs[i].new)
		}
	}
	return w
}

// decide applies the rules (see JudgeOptions) to a window.
func (j *Judge) decide(migration string, w window, now time.Time) Verdict {
	o := &j.opts
	v := Verdict{
		Migration: migration, At: now, Window: o.Window,
		Comparisons: w.comparisons, Mismatches: w.mismatches,
		OldReads: w.oldReads, NewReads: w.newReads, OldErrors: w.oldErrors, NewErrors: w.newErrors,
		LatencyPairs: len(w.oldDur), LatencyP: 1,
	}
	var fails, missing, evidence []string

	// Mismatches.
	_, v.MismatchUpper = Wilson(w.mismatches, w.comparisons)
	if w.comparisons > 0 {
		v.MismatchRate = float64(w.mismatches) / float64(w.comparisons)
	}
	switch {
	case w.mismatches > 0 && w.comparisons >= o.MinComparisonsToFail && v.MismatchUpper > o.MaxMismatchRate:
		fails = append(fails, fmt.Sprintf("mismatches: %d of %d comparisons (rate %.4g, 95%% upper bound %.4g above %.4g)",
			w.mismatches, w.comparisons, v.MismatchRate, v.MismatchUpper, o.MaxMismatchRate))
	case w.comparisons < o.MinSamples:
		missing = append(missing, fmt.Sprintf("comparisons: %d of the %d needed (%d mismatches)", w.comparisons, o.MinSamples, w.mismatches))
	default:
		evidence = append(evidence, fmt.Sprintf("mismatches: %d of %d comparisons (95%% upper bound %.4g, at most %.4g)",
			w.mismatches, w.comparisons, v.MismatchUpper, o.MaxMismatchRate))
	}

	// Errors of routed reads.
	if w.newReads >= o.MinRoutedReads {
		oldRate := 0.0
		if w.oldReads > 0 {
			oldRate = float64(w.oldErrors) / float64(w.oldReads)
		}
		newRate := float64(w.newErrors) / float64(w.newReads)
		newLower, _ := Wilson(w.newErrors, w.newReads)
		if newLower-oldRate > o.MaxErrorRateIncrease {
			fails = append(fails, fmt.Sprintf("new shape's reads fail more: %d of %d (%.3g, 95%% lower bound %.3g) vs old %d of %d (%.3g), more than %.3g apart",
				w.newErrors, w.newReads, newRate, newLower, w.oldErrors, w.oldReads, oldRate, o.MaxErrorRateIncrease))
		} else {
			evidence = append(evidence, fmt.Sprintf("read errors: new %d of %d, old %d of %d", w.newErrors, w.newReads, w.oldErrors, w.oldReads))
		}
	}

	// Latency.
	if len(w.oldDur) >= o.LatencyMinPairs {
		lt, err := latencyTest(w.oldDur, w.newDur)
		if err != nil {
			j.log.Error("latency test failed", "migration", migration, "err", err)
		}
		v.LatencyP, v.LatencyEffect, v.OldMedian, v.NewMedian = lt.P, lt.Effect, lt.OldMedian, lt.NewMedian
		ratio := 0.0
		if lt.OldMedian > 0 {
			ratio = float64(lt.NewMedian) / float64(lt.OldMedian)
		}
		desc := fmt.Sprintf("median %v new vs %v old (×%.2f), Cliff's delta %.2f, p=%.2g over %d pairs",
			lt.NewMedian, lt.OldMedian, ratio, lt.Effect, lt.P, lt.N)
		if lt.P < o.LatencyAlpha && lt.Effect >= o.LatencyMinEffect && ratio >= o.LatencyMinRatio &&
			lt.NewMedian-lt.OldMedian >= o.LatencyMinIncrease {
			fails = append(fails, "new form slower: "+desc)
		} else {
			evidence = append(evidence, "latency: "+desc)
		}
	} else if len(w.oldDur) > 0 {
		v.OldMedian, v.NewMedian = median(w.oldDur), median(w.newDur)
	}

	switch {
	case len(fails) > 0:
		v.Status, v.Reasons = StatusFail, fails
	case len(missing) > 0:
		v.Status, v.Reasons = StatusInconclusive, missing
	default:
		v.Status, v.Reasons = StatusPass, evidence
	}
	return v
}
