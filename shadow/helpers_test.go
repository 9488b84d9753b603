package shadow

import (
	"fmt"
	"sync"
	"testing"
	"time"
)

// countMetrics counts every call, by a key naming the metric and its labels.
type countMetrics struct {
	mu     sync.Mutex
	counts map[string]int
	gauges map[string]string
}

func newCountMetrics() *countMetrics {
	return &countMetrics{counts: map[string]int{}, gauges: map[string]string{}}
}

func (m *countMetrics) inc(key string) {
	m.mu.Lock()
	m.counts[key]++
	m.mu.Unlock()
}

func (m *countMetrics) get(key string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.counts[key]
}

func (m *countMetrics) gauge(key string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gauges[key]
}

// results sums the comparisons of migration over every result.
func (m *countMetrics) results(migration string) int {
	n := 0
	for _, r := range []string{ResultMatch, ResultMismatch, ResultError, ResultDropped, ResultSkipped} {
		n += m.get("comparison/" + migration + "/" + r)
	}
	return n
}

func (m *countMetrics) Comparison(migration, result string) {
	m.inc("comparison/" + migration + "/" + result)
}
func (m *countMetrics) Mismatch(migration, kind string) { m.inc("mismatch/" + migration + "/" + kind) }
func (m *countMetrics) CompareDuration(migration, side string, d time.Duration) {
	m.inc("duration/" + migration + "/" + side)
}
func (m *countMetrics) RoutedRead(migration, route string, failed bool) {
	m.inc(fmt.Sprintf("routed/%s/%s/%v", migration, route, failed))
}
func (m *countMetrics) Verdict(migration, status string) {
	m.mu.Lock()
	m.gauges["verdict/"+migration] = status
	m.mu.Unlock()
}
func (m *countMetrics) KillSwitch(migration string, active bool) {
	m.mu.Lock()
	m.gauges["kill/"+migration] = fmt.Sprint(active)
	m.mu.Unlock()
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// waitFor polls cond until it holds, failing the test after a generous deadline (a bound on a
// hang, not a timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
