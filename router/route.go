package router

import "hash/fnv"

// Buckets is how finely read percentages divide routing keys: 0.01 %.
const Buckets = 10000

// Bucket is the stable bucket of a routing key for a migration: FNV-1a (64-bit) of
// migration + "\x00" + key, modulo Buckets. It is the proxy's own, documented hash, so raising the
// percentage only moves keys from old to new, and no library upgrade can reshuffle cohorts.
func Bucket(migration, key string) int {
	h := fnv.New64a()
	_, _ = h.Write([]byte(migration))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(key))
	return int(h.Sum64() % Buckets)
}

// RoutesNew reports whether a key in bucket reads the new shape at percent (0 to 100).
func RoutesNew(bucket int, percent float64) bool {
	return float64(bucket) < percent*Buckets/100
}
