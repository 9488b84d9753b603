// Package shadow runs sampled reads' old and new forms in one snapshot on a side connection,
// records mismatches, judges each migration's canary and holds its kill switch.
//
// # Where things are
//
//   - compare.go: the comparison rules, a pure function over two result sets ([Compare]).
//   - comparator.go: the [Comparator], a bounded queue and workers that run both forms of a read
//     on a side connection and feed the results to the rest.
//   - record.go: [Mismatch] records, kept per migration by the [Recorder] (and optionally
//     appended to a JSON-lines file).
//   - judge.go: the [Judge], which turns a sliding window of comparisons and routed reads into a
//     [Verdict] and engages the kill switch on a fail.
//   - stats.go: the Wilson interval and the latency rank test used by the judge.
//   - killswitch.go: the [KillSwitch], read by the proxy on every routed read.
//   - metrics.go: the [Metrics] interface and its Prometheus implementation.
//
// # Why one snapshot
//
// Writes to a migrated table are mirrored into its new shape in the same transaction, so old and
// new agree in every snapshot. Running both forms of a read inside one
// BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY transaction therefore makes every mismatch a real
// difference between the shapes, never a write that landed between the two reads. The judge relies
// on that: a single mismatch is evidence, not noise.
//
// # Off the client's path
//
// The proxy builds a [Request] and calls [Comparator.Submit], which never blocks: a full queue
// drops the request and counts it. Comparisons run on their own connections (the side DSN), with
// a statement timeout, so a slow or unreachable side database costs comparisons, never client
// latency.
//
// # Fleet-wide verdicts
//
// Every input of the judge is exported as a Prometheus series (see [PromMetrics]), so the
// mismatch rate and the error-rate difference can also be computed across all sidecars in PromQL;
// only the rank test of latencies needs the paired samples a single judge holds.
package shadow
