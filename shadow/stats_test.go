package shadow

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

func TestWilson(t *testing.T) {
	tests := []struct {
		k, n         int
		lower, upper float64
	}{
		// Reference values from the closed form (e.g. statsmodels proportion_confint(method="wilson")).
		{0, 10000, 0, 0.000384},
		{5, 20, 0.1119, 0.4687},
		{10, 50, 0.1124, 0.3304},
		{1, 10000, 0.00001765, 0.000566},
		{0, 20, 0, 0.1611},
		{20, 20, 0.8389, 1},
	}
	for _, tt := range tests {
		lower, upper := Wilson(tt.k, tt.n)
		if !near(lower, tt.lower) || !near(upper, tt.upper) {
			t.Errorf("Wilson(%d, %d) = [%.7f, %.7f], want [%.7f, %.7f]", tt.k, tt.n, lower, upper, tt.lower, tt.upper)
		}
	}
	if lower, upper := Wilson(0, 0); lower != 0 || upper != 1 {
		t.Errorf("Wilson(0, 0) = [%v, %v], want [0, 1]", lower, upper)
	}
}

// near compares to the given significant digits (about 3).
func near(got, want float64) bool {
	if want == 0 {
		return math.Abs(got) < 1e-9
	}
	return math.Abs(got-want)/want < 0.002
}

func TestLatencyTest(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	sample := func(n int, median time.Duration) []time.Duration {
		out := make([]time.Duration, n)
		for i := range out {
			// Log-normal noise around the median, like query latencies.
			out[i] = time.Duration(float64(median) * math.Exp(rng.NormFloat64()*0.2))
		}
		return out
	}
	slower, err := latencyTest(sample(300, time.Millisecond), sample(300, 2*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if slower.P > 1e-6 || slower.Effect < 0.8 || slower.NewMedian < slower.OldMedian*3/2 {
		t.Errorf("twice slower not detected: %+v", slower)
	}
	same, err := latencyTest(sample(300, time.Millisecond), sample(300, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if same.P < 0.01 || math.Abs(same.Effect) > 0.2 {
		t.Errorf("same distribution judged different: %+v", same)
	}
	faster, err := latencyTest(sample(300, 2*time.Millisecond), sample(300, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	if faster.P < 0.5 || faster.Effect > -0.8 {
		t.Errorf("faster new form judged slower: %+v", faster)
	}
	equal := []time.Duration{time.Millisecond, time.Millisecond, time.Millisecond}
	if r, err := latencyTest(equal, equal); err != nil || r.P != 1 || r.Effect != 0 {
		t.Errorf("all-equal samples: %+v, %v; want p 1, effect 0", r, err)
	}
}
