package router

import (
	"fmt"
	"testing"
)

// TestBucketIsStable pins the hash: a change would silently move every cohort.
func TestBucketIsStable(t *testing.T) {
	got := []int{Bucket("users-split-name", "tenant-42"), Bucket("users-split-name", ""), Bucket("orders-cents", "tenant-42")}
	want := []int{Bucket("users-split-name", "tenant-42"), Bucket("users-split-name", ""), Bucket("orders-cents", "tenant-42")}
	for i := range got {
		if got[i] != want[i] || got[i] < 0 || got[i] >= Buckets {
			t.Fatalf("bucket %d: %d", i, got[i])
		}
	}
	// Known values (FNV-1a 64 of "m\x00k" mod 10000), so the documented hash stays the hash.
	if b := Bucket("m", "k"); b != knownBucket {
		t.Fatalf("Bucket(m, k) = %d, want %d: the routing hash changed", b, knownBucket)
	}
}

func TestRaisingPercentOnlyMovesKeysToNew(t *testing.T) {
	moved, stayed := 0, 0
	for i := range 20000 {
		key := fmt.Sprint("session-", i)
		b := Bucket("users-split-name", key)
		at10, at30 := RoutesNew(b, 10), RoutesNew(b, 30)
		if at10 && !at30 {
			t.Fatalf("key %s went back to old when the percentage rose", key)
		}
		if !at10 && at30 {
			moved++
		}
		if at10 {
			stayed++
		}
	}
	// About 10% new at 10, about 20% more moved at 30.
	if stayed < 1700 || stayed > 2300 || moved < 3500 || moved > 4500 {
		t.Fatalf("distribution off: %d new at 10%%, %d moved at 30%%", stayed, moved)
	}
	if RoutesNew(0, 0) || !RoutesNew(Buckets-1, 100) || RoutesNew(2500, 25) || !RoutesNew(2499, 25) {
		t.Fatal("bounds")
	}
}

// knownBucket is FNV-1a 64 of "m\x00k" mod 10000, computed independently.
const knownBucket = 4873
