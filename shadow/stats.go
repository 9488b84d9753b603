package shadow

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/aclements/go-moremath/stats"
)

// z95 is the standard normal quantile for a two-sided 95 % interval.
const z95 = 1.959963984540054

// Wilson returns the Wilson score interval at 95 % for k events in n trials. Unlike the normal
// approximation it stays inside [0, 1] and is useful at k = 0, which is the usual case here: with
// no mismatch in n comparisons the upper bound is about 3.84/n.
func Wilson(k, n int) (lower, upper float64) {
	if n <= 0 {
		return 0, 1
	}
	p := float64(k) / float64(n)
	nf := float64(n)
	z2 := z95 * z95
	denom := 1 + z2/nf
	center := (p + z2/(2*nf)) / denom
	half := z95 / denom * math.Sqrt(p*(1-p)/nf+z2/(4*nf*nf))
	return max(0, center-half), min(1, center+half)
}

// latencyResult is the outcome of comparing new-form durations with old-form ones.
type latencyResult struct {
	// P is the one-sided p-value of a Mann–Whitney U test against the alternative that the new
	// form tends to be slower; 1 when the test cannot tell (too few samples, all equal).
	P float64
	// Effect is Cliff's delta, P(new > old) − P(new < old) over all pairs of samples: 0 when
	// neither tends to be slower, 1 when every new duration exceeds every old one.
	Effect               float64
	OldMedian, NewMedian time.Duration
	N                    int
}

// latencyTest compares the durations of the new form with those of the old form. The samples come
// in pairs (both forms of one read, one after the other), but the rank-sum test treats them as
// two samples: it is what benchstat uses, robust to the heavy tails of query latencies, and its
// U statistic gives the effect size directly.
func latencyTest(oldD, newD []time.Duration) (latencyResult, error) {
	r := latencyResult{P: 1, N: min(len(oldD), len(newD))}
	if len(oldD) == 0 || len(newD) == 0 {
		return r, nil
	}
	oldS, newS := seconds(oldD), seconds(newD)
	r.OldMedian, r.NewMedian = median(oldD), median(newD)
	res, err := stats.MannWhitneyUTest(newS, oldS, stats.LocationGreater)
	switch {
	case errors.Is(err, stats.ErrSamplesEqual):
		return r, nil
	case err != nil:
		return r, fmt.Errorf("mann-whitney u test: %w", err)
	}
	r.P = res.P
	// res.U counts the pairs where the first sample (new) is larger, ties as one half.
	r.Effect = 2*res.U/float64(res.N1*res.N2) - 1
	return r, nil
}

func seconds(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = d.Seconds()
	}
	return out
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
