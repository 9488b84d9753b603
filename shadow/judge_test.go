package shadow

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func newTestJudge(t *testing.T, opts JudgeOptions) (*Judge, *fakeClock, *countMetrics) {
	t.Helper()
	clock := newFakeClock()
	m := newCountMetrics()
	opts.Now, opts.Metrics = clock.Now, m
	return NewJudge(opts), clock, m
}

// record records n comparisons, the first mismatches of them mismatched, with durations drawn
// around oldMedian and newMedian.
func record(j *Judge, migration string, n, mismatches int, rng *rand.Rand, oldMedian, newMedian time.Duration) {
	noise := func(d time.Duration) time.Duration {
		return time.Duration(float64(d) * math.Exp(rng.NormFloat64()*0.2))
	}
	for i := range n {
		j.RecordComparison(migration, i < mismatches, noise(oldMedian), noise(newMedian))
	}
}

func TestJudgeVerdicts(t *testing.T) {
	const ms = time.Millisecond
	tests := []struct {
		name        string
		comparisons int
		mismatches  int
		newMedian   time.Duration
		want        string
		reason      string // a substring of the first reason
	}{
		{"no mismatch in 10000", 10000, 0, ms, StatusPass, "mismatches: 0 of 10000"},
		{"one mismatch in 10000", 10000, 1, ms, StatusPass, "mismatches: 1 of 10000"},
		{"too few comparisons", 100, 0, ms, StatusInconclusive, "comparisons: 100 of the 200 needed"},
		{"too few to fail", 10, 5, ms, StatusInconclusive, "comparisons: 10 of the 200 needed (5 mismatches)"},
		{"mismatches: 5 of 20", 20, 5, ms, StatusFail, "mismatches: 5 of 20"},
		{"20% mismatches after 50", 50, 10, ms, StatusFail, "mismatches: 10 of 50"},
		{"one mismatch in 1000", 1000, 1, ms, StatusFail, "mismatches: 1 of 1000 "},
		{"twice slower", 300, 0, 2 * ms, StatusFail, "new form slower"},
		{"slightly slower", 300, 0, ms * 105 / 100, StatusPass, "latency: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, _, _ := newTestJudge(t, JudgeOptions{})
			record(j, "m", tt.comparisons, tt.mismatches, rand.New(rand.NewPCG(5, 6)), ms, tt.newMedian)
			v := j.Verdict("m")
			if v.Status != tt.want || v.Comparisons != tt.comparisons || v.Mismatches != tt.mismatches {
				t.Fatalf("got %s with %d/%d (reasons %q), want %s", v.Status, v.Mismatches, v.Comparisons, v.Reasons, tt.want)
			}
			if !strings.Contains(strings.Join(v.Reasons, "; "), tt.reason) {
				t.Errorf("reasons %q do not mention %q", v.Reasons, tt.reason)
			}
		})
	}
}

func TestJudgeLatencyVerdictFields(t *testing.T) {
	j, _, _ := newTestJudge(t, JudgeOptions{})
	record(j, "m", 400, 0, rand.New(rand.NewPCG(7, 8)), time.Millisecond, 3*time.Millisecond)
	v := j.Verdict("m")
	if v.Status != StatusFail || v.LatencyP > 1e-6 || v.LatencyEffect < 0.9 || v.LatencyPairs < 200 {
		t.Errorf("got %+v, want a fail with p ~0, effect ~1 over at least 200 pairs", v)
	}
	if v.NewMedian < 2*v.OldMedian {
		t.Errorf("medians %v new vs %v old", v.NewMedian, v.OldMedian)
	}
}

func TestJudgeErrorRate(t *testing.T) {
	tests := []struct {
		name                                     string
		oldReads, oldErrors, newReads, newErrors int
		fail                                     bool
	}{
		{"new fails 10%", 1000, 1, 200, 20, true},
		{"all new reads fail", 0, 0, 60, 60, true},
		{"one failure in 200", 1000, 1, 200, 1, false},
		{"as bad as old", 1000, 100, 200, 20, false},
		{"too few new reads", 1000, 0, 40, 40, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, _, m := newTestJudge(t, JudgeOptions{})
			reads := func(route string, n, failed int) {
				for i := range n {
					j.RecordRoutedRead("m", route, i < failed)
				}
			}
			reads(SideOld, tt.oldReads, tt.oldErrors)
			reads(SideNew, tt.newReads, tt.newErrors)
			record(j, "m", 500, 0, rand.New(rand.NewPCG(1, 1)), time.Millisecond, time.Millisecond)
			v := j.Verdict("m")
			if got := v.Status == StatusFail; got != tt.fail {
				t.Errorf("status %s (reasons %q), want fail=%v", v.Status, v.Reasons, tt.fail)
			}
			if v.NewReads != tt.newReads || v.NewErrors != tt.newErrors || v.OldReads != tt.oldReads || v.OldErrors != tt.oldErrors {
				t.Errorf("counts %+v", v)
			}
			if got := m.get("routed/m/new/true"); got != tt.newErrors {
				t.Errorf("routed reads metric: %d failed new reads, want %d", got, tt.newErrors)
			}
		})
	}
}

func TestJudgeWindowExpiry(t *testing.T) {
	j, clock, _ := newTestJudge(t, JudgeOptions{Window: 10 * time.Minute, Bucket: 10 * time.Second})
	rng := rand.New(rand.NewPCG(9, 9))
	record(j, "m", 20, 5, rng, time.Millisecond, time.Millisecond)
	if v := j.Verdict("m"); v.Status != StatusFail {
		t.Fatalf("status %s, want fail", v.Status)
	}
	clock.Advance(5 * time.Minute)
	record(j, "m", 300, 0, rng, time.Millisecond, time.Millisecond)
	if v := j.Verdict("m"); v.Status != StatusFail || v.Comparisons != 320 {
		t.Fatalf("5 minutes later: %s with %d comparisons, want fail with 320", v.Status, v.Comparisons)
	}
	// The mismatches leave the window; the clean comparisons are still in it.
	clock.Advance(5*time.Minute + 10*time.Second)
	if v := j.Verdict("m"); v.Status != StatusPass || v.Comparisons != 300 || v.Mismatches != 0 {
		t.Fatalf("after the mismatches expired: %s with %d/%d, want pass with 0/300", v.Status, v.Mismatches, v.Comparisons)
	}
	clock.Advance(10 * time.Minute)
	if v := j.Verdict("m"); v.Status != StatusInconclusive || v.Comparisons != 0 || v.LatencyPairs != 0 {
		t.Fatalf("after everything expired: %+v, want inconclusive and empty", v)
	}
}

func TestJudgeReservoirBounded(t *testing.T) {
	j, clock, _ := newTestJudge(t, JudgeOptions{Window: time.Minute, Bucket: 10 * time.Second, LatencyReservoir: 60})
	rng := rand.New(rand.NewPCG(2, 2))
	for range 6 {
		record(j, "m", 5000, 0, rng, time.Millisecond, time.Millisecond)
		clock.Advance(10 * time.Second)
	}
	v := j.Verdict("m")
	if v.LatencyPairs > 60 || v.LatencyPairs < 50 {
		t.Errorf("%d latency pairs kept, want at most 60 and about that many", v.LatencyPairs)
	}
	if v.Comparisons != 25000 { // the window holds the last 5 buckets and the current one (empty)
		t.Errorf("%d comparisons in the window, want 25000", v.Comparisons)
	}
}

func TestJudgeKillSwitch(t *testing.T) {
	ks, err := NewKillSwitch(KillSwitchOptions{})
	if err != nil {
		t.Fatal(err)
	}
	j, clock, m := newTestJudge(t, JudgeOptions{KillSwitch: ks})
	rng := rand.New(rand.NewPCG(1, 2))
	record(j, "auto", 20, 5, rng, time.Millisecond, time.Millisecond)
	record(j, "manual", 20, 5, rng, time.Millisecond, time.Millisecond)
	record(j, "healthy", 300, 0, rng, time.Millisecond, time.Millisecond)
	j.SetAutoRollback("manual", false)

	j.Evaluate()
	if on, reason, _ := ks.Engaged("auto"); !on || !strings.Contains(reason, "mismatches: 5 of 20") {
		t.Errorf("auto: engaged %v (%q), want engaged naming the mismatches", on, reason)
	}
	if on, _, _ := ks.Engaged("manual"); on {
		t.Error("manual: engaged with auto-rollback off")
	}
	if on, _, _ := ks.Engaged("healthy"); on {
		t.Error("healthy: engaged")
	}
	for mig, want := range map[string]string{"auto": StatusFail, "manual": StatusFail, "healthy": StatusPass} {
		if got := m.gauge("verdict/" + mig); got != want {
			t.Errorf("verdict gauge of %s: %q, want %q", mig, got, want)
		}
	}

	// An operator's release holds while the verdict stays fail...
	ks.Release("auto")
	j.Evaluate()
	if on, _, _ := ks.Engaged("auto"); on {
		t.Error("re-engaged during the same fail after the operator released it")
	}
	// ...and a new fail after the verdict recovered engages again.
	clock.Advance(11 * time.Minute)
	j.Evaluate()
	record(j, "auto", 20, 5, rng, time.Millisecond, time.Millisecond)
	j.Evaluate()
	if on, _, _ := ks.Engaged("auto"); !on {
		t.Error("a new fail did not engage the kill switch")
	}

	// Reset forgets the window.
	j.Reset("auto")
	if v := j.Verdict("auto"); v.Comparisons != 0 || v.Status != StatusInconclusive {
		t.Errorf("after Reset: %+v", v)
	}
}

func TestJudgeUnknownMigration(t *testing.T) {
	j, _, _ := newTestJudge(t, JudgeOptions{})
	v := j.Verdict("nobody")
	if v.Status != StatusInconclusive || len(v.Reasons) == 0 {
		t.Errorf("got %+v", v)
	}
	if len(j.Verdicts()) != 0 {
		t.Error("Verdict created state for an unknown migration")
	}
}

func TestVerdictJSON(t *testing.T) {
	j, _, _ := newTestJudge(t, JudgeOptions{})
	record(j, "m", 300, 0, rand.New(rand.NewPCG(1, 2)), time.Millisecond, time.Millisecond)
	v := j.Verdict("m")
	raw, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"migration", "status", "reasons", "comparisons", "mismatch_upper", "latency_p", "old_median_seconds", "window_seconds", "new_errors"} {
		if _, ok := fields[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, raw)
		}
	}
	if fields["window_seconds"] != 600.0 {
		t.Errorf("window_seconds %v, want 600", fields["window_seconds"])
	}
	var back Verdict
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	if back.Status != v.Status || back.Window != v.Window || back.Comparisons != v.Comparisons || !back.At.Equal(v.At) {
		t.Errorf("round trip: %+v, want %+v", back, v)
	}
}

// TestResetIgnoresEarlierSamples: comparisons sampled before a Reset (queued under the
// configuration being fixed) do not count in the fresh window.
func TestResetIgnoresEarlierSamples(t *testing.T) {
	now := time.Unix(5000, 0)
	j := NewJudge(JudgeOptions{Now: func() time.Time { return now }})
	before := now.Add(-time.Second)
	j.Reset("m")
	j.RecordSampledComparison("m", before, true, time.Millisecond, time.Millisecond)
	j.RecordSampledComparison("m", now, false, time.Millisecond, time.Millisecond)
	j.RecordComparison("m", false, time.Millisecond, time.Millisecond)
	if v := j.Verdict("m"); v.Comparisons != 2 || v.Mismatches != 0 {
		t.Fatalf("after reset: %d comparisons, %d mismatches; want 2 and 0", v.Comparisons, v.Mismatches)
	}
}
