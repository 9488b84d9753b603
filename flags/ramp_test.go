package flags

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSetPercentKeepsEverythingElse ramps one flag of examples/flags.json and checks that the
// other flags and the targeting rule survive, and that a running Source sees the new value.
func TestSetPercentKeepsEverythingElse(t *testing.T) {
	raw, err := os.ReadFile("../examples/flags.json")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "flags.json")
	if err := os.WriteFile(path, raw, 0o640); err != nil {
		t.Fatal(err)
	}
	src, err := NewFile(context.Background(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	const flag = "users-split-name.read-percent"
	for _, step := range []struct{ old, new float64 }{{0, 5}, {5, 25}, {25, 37.5}, {37.5, 100}, {100, 0}} {
		before := src.Version()
		old, err := SetPercent(path, flag, step.new)
		if err != nil || old != step.old {
			t.Fatalf("ramp to %v: old %v, %v", step.new, old, err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			v, err := src.Float(context.Background(), flag, EvalContext{TargetingKey: "k"})
			if err == nil && v == step.new && src.Version() != before {
				break // the value and the version both moved: cached evaluations are invalidated
			}
			if time.Now().After(deadline) {
				t.Fatalf("the source never saw %v (last %v, %v)", step.new, v, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The targeting rule still sends tenant 42 to 100, and the other flags are untouched.
	v, err := src.Float(context.Background(), flag, EvalContext{TargetingKey: "k", Attributes: map[string]any{"tenant": "42"}})
	if err != nil || v != 100 {
		t.Fatalf("targeting rule lost: %v %v", v, err)
	}
	if v, err := src.Float(context.Background(), "orders-cents.compare-ratio", EvalContext{TargetingKey: "k"}); err != nil || v != 0.1 {
		t.Fatalf("other flag changed: %v %v", v, err)
	}
	var doc map[string]any
	after, _ := os.ReadFile(path)
	if err := json.Unmarshal(after, &doc); err != nil {
		t.Fatal(err)
	}
	if info, _ := os.Stat(path); info.Mode().Perm() != 0o640 {
		t.Fatalf("file mode changed to %v", info.Mode().Perm())
	}
	if _, err := SetPercent(path, flag, 101); err == nil {
		t.Fatal("101 % accepted")
	}
	if _, err := SetPercent(filepath.Join(t.TempDir(), "missing.json"), flag, 5); err == nil {
		t.Fatal("a missing file accepted")
	}
}
