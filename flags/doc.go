// Package flags evaluates the per-migration feature flags (read percentage, compare ratio) through
// OpenFeature, from a local flagd flag file (hot-reloaded) or a flagd daemon.
//
// # Sources
//
// [NewFile] evaluates in process (the flagd provider's in-process resolver) from a flag-definition
// file. The file's directory is watched, so a change is picked up whether the file is rewritten in
// place, replaced by rename (as editors and configuration tools do) or swapped through a symlink (a
// Kubernetes ConfigMap); the file is also re-read every few seconds in case an event is missed. A
// new version that cannot be read or is not a valid flag file is rejected with a warning, and the
// flags loaded last stay in force.
//
// [NewFlagd] evaluates in process too, with the flags streamed from a flagd daemon's sync service
// (flagd's --sync-port, 8015 by default), so a statement never waits for the network. The usual
// FLAGD_* environment variables (FLAGD_TLS, FLAGD_SERVER_CERT_PATH, FLAGD_SOURCE_SELECTOR, ...)
// apply to that connection.
//
// # Flag file format
//
// The file is flagd's JSON flag definition (https://flagd.dev/reference/flag-definitions/). Each
// flag names its variants, the variant served by default, and optional targeting, a JsonLogic
// expression over the evaluation context that returns a variant name:
//
//	{
//	  "flags": {
//	    "users-split-name.read-percent": {
//	      "state": "ENABLED",
//	      "variants": {"off": 0, "quarter": 25, "all": 100},
//	      "defaultVariant": "quarter",
//	      "targeting": {"if": [{"==": [{"var": "tenant"}, "42"]}, "all", null]}
//	    }
//	  }
//	}
//
// The targeting sees [EvalContext.Attributes] by name ({"var": "database"}; pass strings, numbers
// or booleans) and the routing key as "targetingKey", which flagd's {"fractional": ...} operator
// buckets on by default. A targeting
// result of null falls back to defaultVariant. A flag whose state is "DISABLED", whose targeting
// selects no variant while defaultVariant is null, or whose variant is not a number yields an error
// from [Source.Float], as does a flag that is not in the file: the caller then uses its default.
// Integer and fractional variants (25, 12.5) are both numbers.
package flags
