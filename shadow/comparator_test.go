package shadow

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// newBlockedComparator returns a comparator whose comparisons wait until release is closed (or
// their context ends), and a channel that receives each request as a worker starts it.
func newBlockedComparator(t *testing.T, opts Options) (c *Comparator, started chan Request, release chan struct{}, m *countMetrics) {
	t.Helper()
	m = newCountMetrics()
	opts.Metrics = m
	if opts.SideDSN == "" {
		opts.SideDSN = "postgres://nobody@127.0.0.1:1/nowhere?sslmode=disable"
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	started = make(chan Request, 100)
	release = make(chan struct{})
	// Set before the first Submit: the queue's channel orders this write before the workers read it.
	c.compare = func(ctx context.Context, req Request) outcome {
		select {
		case started <- req:
		default: // nobody is watching (TestSubmitConcurrent)
		}
		select {
		case <-release:
			return outcome{result: ResultMatch}
		case <-ctx.Done():
			return outcome{result: ResultError, reason: "canceled", err: ctx.Err()}
		}
	}
	return c, started, release, m
}

func TestSubmitDropsWhenFull(t *testing.T) {
	c, started, release, m := newBlockedComparator(t, Options{Workers: 1, QueueSize: 2})
	if !c.Submit(Request{Migration: "m"}) {
		t.Fatal("first request refused")
	}
	<-started // the only worker is now busy
	for i := range 2 {
		if !c.Submit(Request{Migration: "m"}) {
			t.Fatalf("request %d refused with room in the queue", i+2)
		}
	}
	for i := range 10 {
		if c.Submit(Request{Migration: "m"}) {
			t.Fatalf("request %d accepted by a full queue", i+4)
		}
	}
	if got := m.get("comparison/m/dropped"); got != 10 {
		t.Errorf("%d dropped, want 10", got)
	}
	close(release)
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := m.get("comparison/m/match"); got != 3 {
		t.Errorf("%d run, want the 3 accepted (Close drains the queue)", got)
	}
	if c.Submit(Request{Migration: "m"}) {
		t.Error("accepted after Close")
	}
	if got := m.get("comparison/m/dropped"); got != 11 {
		t.Errorf("%d dropped, want 11 with the one after Close", got)
	}
}

func TestSubmitConcurrent(t *testing.T) {
	c, _, release, m := newBlockedComparator(t, Options{Workers: 2, QueueSize: 5})
	close(release)
	var accepted atomic.Int64
	done := make(chan struct{})
	for g := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 500 {
				if c.Submit(Request{Migration: fmt.Sprint("m", g%2)}) {
					accepted.Add(1)
				}
			}
		}()
	}
	for range 8 {
		<-done
	}
	if err := c.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	total := m.results("m0") + m.results("m1")
	if total != 4000 {
		t.Errorf("%d requests accounted for, want 4000", total)
	}
	if ran := m.get("comparison/m0/match") + m.get("comparison/m1/match"); int64(ran) != accepted.Load() {
		t.Errorf("%d ran, %d accepted", ran, accepted.Load())
	}
}

func TestCloseAbandons(t *testing.T) {
	c, started, _, m := newBlockedComparator(t, Options{Workers: 1, QueueSize: 10})
	for range 5 {
		c.Submit(Request{Migration: "m"})
	}
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("Close = %v, want the context's error", err)
	}
	if got := m.get("comparison/m/error"); got != 1 {
		t.Errorf("%d errors, want the running comparison cancelled", got)
	}
	if got := m.get("comparison/m/dropped"); got != 4 {
		t.Errorf("%d dropped, want the 4 queued ones", got)
	}
}

func TestBuildMismatch(t *testing.T) {
	req := Request{Migration: "m", Fingerprint: "fp", Normalized: "SELECT $1", KeyColumns: []string{"id"}}
	out := outcome{
		result: ResultMismatch, oldDur: time.Millisecond, newDur: 2 * time.Millisecond,
		diff: Diff{Kind: KindValues, Columns: []string{"name", "note"}, Row: 4,
			Key: map[string]string{"id": "42"}, NullKey: []string{"tenant"},
			OldValues: map[string]string{"name": "Ada", "note": "x"}, NewValues: map[string]string{"name": "Alan"}},
	}
	m := buildMismatch(req, out, time.Time{})
	if !reflect.DeepEqual(m.Key, map[string]string{"id": "sha256:73475cb40a56", "tenant": "NULL"}) {
		t.Errorf("redacted key %v", m.Key)
	}
	if m.OldValues != nil || m.NewValues != nil {
		t.Errorf("values kept without log_values: %v %v", m.OldValues, m.NewValues)
	}
	if m.Kind != KindValues || m.Row != 4 || m.Query != "SELECT $1" || m.OldDuration != time.Millisecond {
		t.Errorf("record %+v", m)
	}

	req.LogValues = true
	m = buildMismatch(req, out, time.Time{})
	if m.Key["id"] != "42" {
		t.Errorf("key %v, want the value with log_values", m.Key)
	}
	if !reflect.DeepEqual(m.NewValues, map[string]string{"name": "Alan", "note": "NULL"}) || m.OldValues["name"] != "Ada" {
		t.Errorf("values old %v new %v", m.OldValues, m.NewValues)
	}

	out = outcome{result: ResultMismatch, newErr: &pgconn.PgError{Code: "42703", Message: `column "x" does not exist`}}
	m = buildMismatch(req, out, time.Time{})
	if m.Kind != KindErrorNew || m.NewError != `42703: column "x" does not exist` || m.Row != -1 || m.OldError != "" {
		t.Errorf("error record %+v", m)
	}
	out.oldErr = &pgconn.PgError{Code: "22012", Message: "division by zero"}
	if m := buildMismatch(req, out, time.Time{}); m.Kind != KindErrorBoth {
		t.Errorf("kind %s, want error_both", m.Kind)
	}
}

func TestSetConfigQuery(t *testing.T) {
	req := Request{SearchPath: `"$user", public`, Settings: map[string]string{"TimeZone": "UTC", "DateStyle": "ISO, MDY"}}
	sql, params := setConfigQuery(req, 1500*time.Millisecond)
	if want := "SELECT set_config($1, $2, true), set_config($3, $4, true), set_config($5, $6, true), set_config($7, $8, true)"; sql != want {
		t.Errorf("sql %q", sql)
	}
	var got []string
	for _, p := range params {
		got = append(got, string(p))
	}
	want := []string{"statement_timeout", "1500ms", "search_path", `"$user", public`, "DateStyle", "ISO, MDY", "TimeZone", "UTC"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("params %q, want %q", got, want)
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		err  error
		kind int
	}{
		{&pgconn.PgError{Code: "42703"}, errQuery},
		{&pgconn.PgError{Code: "22012"}, errQuery},
		{&pgconn.PgError{Code: "57014", Message: "canceling statement due to statement timeout"}, errSide},
		{&pgconn.PgError{Code: "57P01"}, errSide},
		{&pgconn.PgError{Code: "53300"}, errSide},
		{&pgconn.PgError{Code: "25006"}, errNotComparable},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), errSide},
		{errors.New("dial tcp: connection refused"), errSide},
	}
	for _, tt := range tests {
		if kind, reason := classify(tt.err); kind != tt.kind || reason == "" {
			t.Errorf("classify(%v) = %d %q, want %d", tt.err, kind, reason, tt.kind)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Request{Migration: "m", OldSQL: "SELECT 1", NewSQL: "SELECT 1", Params: [][]byte{nil, nil}}
	for _, formats := range [][]int16{nil, {0}, {1, 0}} {
		r := ok
		r.ParamFormats = formats
		if err := validate(r); err != nil {
			t.Errorf("formats %v: %v", formats, err)
		}
	}
	bad := ok
	bad.ParamFormats = []int16{0, 0, 0}
	if err := validate(bad); err == nil || !strings.Contains(err.Error(), "3 parameter formats for 2") {
		t.Errorf("3 formats for 2 parameters: %v", err)
	}
}

// TestBreakers: a side failure opens the database's breaker for a second, doubling while it keeps
// failing up to half a minute; a comparison that reaches a result closes it.
func TestBreakers(t *testing.T) {
	var b breakers
	now := time.Unix(1000, 0)
	down := outcome{result: ResultError, reason: "connect"}
	if b.open("db", now) {
		t.Fatal("open before any failure")
	}
	b.record("db", down, now)
	if !b.open("db", now.Add(500*time.Millisecond)) || b.open("db", now.Add(time.Second)) {
		t.Fatal("first failure: want one second of backoff")
	}
	b.record("db", down, now.Add(time.Second))
	if !b.open("db", now.Add(2900*time.Millisecond)) || b.open("db", now.Add(3*time.Second)) {
		t.Fatal("second failure: want two seconds")
	}
	for i := range 10 {
		b.record("db", down, now.Add(time.Duration(100+i*100)*time.Second))
	}
	if !b.open("db", now.Add(1029*time.Second)) || b.open("db", now.Add(1031*time.Second)) {
		t.Fatal("backoff not capped at 30 s")
	}
	if b.open("other", now) {
		t.Fatal("another database is affected")
	}
	b.record("db", outcome{result: ResultError, reason: "statement_timeout"}, now.Add(2000*time.Second))
	if b.open("db", now.Add(2000*time.Second)) {
		t.Fatal("a slow statement opened the breaker")
	}
	b.record("db", outcome{result: ResultMatch}, now.Add(2000*time.Second))
	b.record("db", down, now.Add(2001*time.Second))
	if b.open("db", now.Add(2002*time.Second)) {
		t.Fatal("a success did not reset the backoff")
	}
}
