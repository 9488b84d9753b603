package flags

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	syncv1grpc "buf.build/gen/go/open-feature/flagd/grpc/go/flagd/sync/v1/syncv1grpc"
	syncv1 "buf.build/gen/go/open-feature/flagd/protocolbuffers/go/flagd/sync/v1"
	"google.golang.org/grpc"
)

const readPercent = "users-split-name.read-percent"

// logBuf collects a Source's log; handlers may log after the test returns, so not via t.Log.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLog() (*slog.Logger, *logBuf) {
	b := &logBuf{}
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})), b
}

// copyTestdata copies testdata/name into a fresh directory and returns the copy's path.
func copyTestdata(t *testing.T, name string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// oneFlag is a flag file with readPercent at value (a JSON number, e.g. "25" or "12.5").
func oneFlag(value string) string {
	return fmt.Sprintf(`{"flags": {%q: {"state": "ENABLED", "variants": {"v": %s}, "defaultVariant": "v"}}}`, readPercent, value)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func openFile(t *testing.T, path string) (Source, *logBuf) {
	t.Helper()
	log, buf := newLog()
	s, err := NewFile(context.Background(), path, log)
	if err != nil {
		t.Fatalf("NewFile: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, buf
}

func mustFloat(t *testing.T, s Source, flag string, ec EvalContext, want float64) {
	t.Helper()
	got, err := s.Float(context.Background(), flag, ec)
	if err != nil {
		t.Fatalf("Float(%s, %+v): %v", flag, ec, err)
	}
	if got != want {
		t.Fatalf("Float(%s, %+v) = %v, want %v", flag, ec, got, want)
	}
}

func attrs(kv ...any) EvalContext {
	ec := EvalContext{TargetingKey: "k", Attributes: map[string]any{}}
	for i := 0; i < len(kv); i += 2 {
		ec.Attributes[kv[i].(string)] = kv[i+1]
	}
	return ec
}

func TestFileValues(t *testing.T) {
	s, _ := openFile(t, copyTestdata(t, "flags.json"))

	// Default variants: an integer and a fractional number.
	mustFloat(t, s, readPercent, attrs("user", "app", "database", "shop"), 25)
	mustFloat(t, s, "orders-split.read-percent", attrs(), 12.5)
	// Targeting on an attribute selects another variant; a null result falls back to the default.
	mustFloat(t, s, readPercent, attrs("tenant", "42"), 100)
	mustFloat(t, s, readPercent, attrs("tenant", "7"), 25)
	mustFloat(t, s, "orders-split.read-percent", attrs("application_name", "batch"), 0)
	mustFloat(t, s, "unset.read-percent", attrs("tenant", "42"), 100)

	// The routing key buckets in fractional targeting: stable per key, and both buckets are used.
	seen := map[float64]int{}
	for i := range 200 {
		ec := EvalContext{TargetingKey: fmt.Sprintf("key-%d", i)}
		v1, err := s.Float(context.Background(), "bucketed.read-percent", ec)
		if err != nil {
			t.Fatal(err)
		}
		v2, _ := s.Float(context.Background(), "bucketed.read-percent", ec)
		if v1 != v2 {
			t.Fatalf("key %s: %v then %v", ec.TargetingKey, v1, v2)
		}
		seen[v1]++
	}
	if seen[0] < 50 || seen[100] < 50 || len(seen) != 2 {
		t.Errorf("fractional 50/50 over 200 keys: %v", seen)
	}

	for _, tc := range []struct{ flag, ec, want string }{
		{"no-such.read-percent", "", `"no-such.read-percent" not found`},
		{"users-split-name.owner", "", "not a number"},
		{"legacy.read-percent", "", "disabled"},
		{"unset.read-percent", "7", "no variant"},
	} {
		got, err := s.Float(context.Background(), tc.flag, attrs("tenant", tc.ec))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Float(%s) = %v, %v; want an error containing %q", tc.flag, got, err, tc.want)
		} else {
			t.Logf("Float(%s): %v", tc.flag, err)
		}
		if got != 0 {
			t.Errorf("Float(%s) with error = %v, want 0", tc.flag, got)
		}
	}
}

// waitFor polls s every 20 ms until readPercent is want, and returns how long that took since
// start. It fails after 5 s, and if it took more than 1 s.
func waitFor(t *testing.T, s Source, want float64, start time.Time) time.Duration {
	t.Helper()
	var got float64
	var err error
	for time.Since(start) < 5*time.Second {
		got, err = s.Float(context.Background(), readPercent, EvalContext{})
		if err == nil && got == want {
			d := time.Since(start)
			if d > time.Second {
				t.Errorf("new value after %v, want within 1s", d)
			}
			return d
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("still %v (err %v) 5s after the change, want %v", got, err, want)
	return 0
}

// still checks for 300 ms that readPercent stays want.
func still(t *testing.T, s Source, want float64) {
	t.Helper()
	for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); time.Sleep(20 * time.Millisecond) {
		mustFloat(t, s, readPercent, EvalContext{}, want)
	}
}

func TestFileHotReload(t *testing.T) {
	// Only the file watch may see the changes: no poll during these tests.
	defer func(d time.Duration) { filePollInterval = d }(filePollInterval)
	filePollInterval = time.Hour

	t.Run("in place", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "flags.json")
		writeFile(t, path, oneFlag("25"))
		s, _ := openFile(t, path)
		mustFloat(t, s, readPercent, EvalContext{}, 25)
		for i, v := range []float64{50, 12.5, 100} {
			start := time.Now()
			writeFile(t, path, oneFlag(fmt.Sprint(v)))
			t.Logf("rewrite %d in place (%v): new value after %v", i+1, v, waitFor(t, s, v, start))
		}
	})

	t.Run("rename", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "flags.json")
		writeFile(t, path, oneFlag("25"))
		s, _ := openFile(t, path)
		mustFloat(t, s, readPercent, EvalContext{}, 25)
		for i, v := range []float64{75, 0, 33.3} {
			tmp := filepath.Join(dir, fmt.Sprintf(".flags.json.%d.tmp", i))
			writeFile(t, tmp, oneFlag(fmt.Sprint(v)))
			start := time.Now()
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
			t.Logf("replace %d by rename (%v): new value after %v", i+1, v, waitFor(t, s, v, start))
		}
	})

	t.Run("symlink swap", func(t *testing.T) {
		// A Kubernetes ConfigMap volume: flags.json -> ..data/flags.json, ..data -> a directory
		// per version, swapped by renaming a new symlink over ..data.
		dir := t.TempDir()
		for i, v := range []string{"25", "60"} {
			d := filepath.Join(dir, fmt.Sprintf("..v%d", i))
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
			writeFile(t, filepath.Join(d, "flags.json"), oneFlag(v))
		}
		if err := os.Symlink("..v0", filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "flags.json")
		if err := os.Symlink(filepath.Join("..data", "flags.json"), path); err != nil {
			t.Fatal(err)
		}
		s, _ := openFile(t, path)
		mustFloat(t, s, readPercent, EvalContext{}, 25)
		if err := os.Symlink("..v1", filepath.Join(dir, "..data_tmp")); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		t.Logf("symlink swap: new value after %v", waitFor(t, s, 60, start))
	})

	t.Run("invalid version keeps the flags", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "flags.json")
		writeFile(t, path, oneFlag("25"))
		s, log := openFile(t, path)
		for _, bad := range []string{`{"flags": {`, ``, `{"flagz": {}}`, `{"flags": {"x": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}}}`} {
			writeFile(t, path, bad)
			still(t, s, 25)
		}
		if n := strings.Count(log.String(), "flag file rejected"); n < 3 {
			t.Errorf("%d rejections logged, want at least 3; log:\n%s", n, log)
		}
		start := time.Now()
		writeFile(t, path, oneFlag("40"))
		t.Logf("valid again: new value after %v", waitFor(t, s, 40, start))
	})

	t.Run("deleted and re-created", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "flags.json")
		writeFile(t, path, oneFlag("25"))
		s, _ := openFile(t, path)
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		still(t, s, 25)
		start := time.Now()
		writeFile(t, path, oneFlag("90"))
		t.Logf("re-created: new value after %v", waitFor(t, s, 90, start))
	})
}

func TestFilePoll(t *testing.T) {
	// A change the watch misses (here: the directory is no longer watched) is picked up by the
	// poll.
	defer func(d time.Duration) { filePollInterval = d }(filePollInterval)
	filePollInterval = 100 * time.Millisecond
	path := filepath.Join(t.TempDir(), "flags.json")
	writeFile(t, path, oneFlag("25"))
	s, _ := openFile(t, path)
	if err := s.(*source).file.watcher.Remove(filepath.Dir(path)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	writeFile(t, path, oneFlag("55"))
	t.Logf("poll: new value after %v", waitFor(t, s, 55, start))
}

func TestFileErrors(t *testing.T) {
	dir := t.TempDir()
	noFlags := filepath.Join(dir, "noflags.json")
	writeFile(t, noFlags, `{"metadata": {}}`)
	badState := filepath.Join(dir, "badstate.json")
	writeFile(t, badState, `{"flags": {"a": {"state": "ON", "variants": {"v": 1}, "defaultVariant": "v"}}}`)
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "missing.json"), "no such file"},
		{filepath.Join("testdata", "malformed.json"), "not a flagd flag file"},
		{noFlags, `no "flags"`},
		{badState, "state"},
	} {
		start := time.Now()
		s, err := NewFile(context.Background(), tc.path, nil)
		if err == nil {
			s.Close()
			t.Errorf("NewFile(%s): no error", tc.path)
			continue
		}
		if !strings.Contains(err.Error(), tc.path) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewFile(%s): %v; want the file named and %q", tc.path, err, tc.want)
		}
		t.Logf("after %v: %v", time.Since(start).Round(time.Microsecond), err)
	}
}

func TestTwoSources(t *testing.T) {
	defer func(d time.Duration) { filePollInterval = d }(filePollInterval)
	filePollInterval = time.Hour
	pathA := filepath.Join(t.TempDir(), "flags.json")
	pathB := filepath.Join(t.TempDir(), "flags.json")
	writeFile(t, pathA, oneFlag("10"))
	writeFile(t, pathB, oneFlag("20"))
	a, _ := openFile(t, pathA)
	b, _ := openFile(t, pathB)

	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			s, want := a, 10.0
			if i%2 == 1 {
				s, want = b, 20
			}
			for range 500 {
				got, err := s.Float(context.Background(), readPercent, EvalContext{TargetingKey: "x"})
				if err != nil || got != want {
					t.Errorf("source %d: %v, %v; want %v", i%2, got, err, want)
					return
				}
			}
		})
	}
	wg.Wait()

	start := time.Now()
	writeFile(t, pathB, oneFlag("30"))
	waitFor(t, b, 30, start)
	mustFloat(t, a, readPercent, EvalContext{}, 10)

	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Float(context.Background(), readPercent, EvalContext{}); err == nil {
		t.Error("Float after Close: no error")
	}
	mustFloat(t, b, readPercent, EvalContext{}, 30)
}

// syncServer is flagd's sync service, serving flag configurations pushed by the test.
type syncServer struct {
	syncv1grpc.UnimplementedFlagSyncServiceServer
	mu     sync.Mutex
	config string
	subs   map[chan string]struct{}
}

func (s *syncServer) SyncFlags(_ *syncv1.SyncFlagsRequest, stream grpc.ServerStreamingServer[syncv1.SyncFlagsResponse]) error {
	ch := make(chan string, 8)
	s.mu.Lock()
	s.subs[ch] = struct{}{}
	ch <- s.config
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case cfg := <-ch:
			if err := stream.Send(&syncv1.SyncFlagsResponse{FlagConfiguration: cfg}); err != nil {
				return err
			}
		}
	}
}

func (s *syncServer) FetchAllFlags(context.Context, *syncv1.FetchAllFlagsRequest) (*syncv1.FetchAllFlagsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return &syncv1.FetchAllFlagsResponse{FlagConfiguration: s.config}, nil
}

func (s *syncServer) push(cfg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.config = cfg
	for ch := range s.subs {
		ch <- cfg
	}
}

// serveSync serves flagd's sync service with config on lis.
func serveSync(t *testing.T, lis net.Listener, config string) *syncServer {
	srv := grpc.NewServer()
	sync := &syncServer{config: config, subs: map[chan string]struct{}{}}
	syncv1grpc.RegisterFlagSyncServiceServer(srv, sync)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return sync
}

func freeAddr(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func TestFlagd(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sync := serveSync(t, lis, oneFlag("25"))
	log, _ := newLog()
	s, err := NewFlagd(context.Background(), lis.Addr().String(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mustFloat(t, s, readPercent, EvalContext{}, 25)
	if _, err := s.Float(context.Background(), "no-such.read-percent", EvalContext{}); err == nil {
		t.Error("missing flag: no error")
	}
	start := time.Now()
	sync.push(oneFlag("12.5"))
	t.Logf("flagd push: new value after %v", waitFor(t, s, 12.5, start))
}

func TestFlagdStartingLate(t *testing.T) {
	addr := freeAddr(t)
	time.AfterFunc(time.Second, func() {
		lis, err := net.Listen("tcp", addr)
		if err != nil {
			t.Error(err)
			return
		}
		serveSync(t, lis, oneFlag("5"))
	})
	start := time.Now()
	log, buf := newLog()
	s, err := NewFlagd(context.Background(), addr, log)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t.Logf("flagd up after 1s: NewFlagd returned after %v", time.Since(start).Round(time.Millisecond))
	if n := strings.Count(buf.String(), "level=WARN"); n > 0 {
		t.Errorf("%d warnings while retrying:\n%s", n, buf)
	}
	mustFloat(t, s, readPercent, EvalContext{}, 5)
}

func TestFlagdErrors(t *testing.T) {
	if _, err := NewFlagd(context.Background(), "localhost", nil); err == nil {
		t.Error("address without port: no error")
	}
	// Nobody listening: an error within a few seconds, not a hang.
	start := time.Now()
	s, err := NewFlagd(context.Background(), freeAddr(t), nil)
	if err == nil {
		s.Close()
		t.Fatal("no flagd: no error")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("error after %v", d)
	}
	t.Logf("after %v: %v", time.Since(start).Round(time.Millisecond), err)
}

func BenchmarkFloat(b *testing.B) {
	raw, err := os.ReadFile(filepath.Join("testdata", "flags.json"))
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "flags.json")
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		b.Fatal(err)
	}
	s, err := NewFile(context.Background(), path, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	ec := EvalContext{
		TargetingKey: "customer-1234",
		Attributes: map[string]any{
			"user": "app", "database": "shop", "application_name": "web",
			"client_addr": "10.0.0.7", "migration": "users-split-name",
		},
	}
	ctx := context.Background()
	for _, bc := range []struct{ name, flag string }{
		{"targeting", readPercent},
		{"fractional", "bucketed.read-percent"},
		{"static", "static.read-percent"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := s.Float(ctx, bc.flag, ec); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
	b.Run("targeting-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Float(ctx, readPercent, ec); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
