package proxy

import "testing"

// TestFIFOProtocol drives the FIFO with request/response sequences as Postgres produces them and
// checks what is still outstanding afterwards.
func TestFIFOProtocol(t *testing.T) {
	cases := []struct {
		name      string
		requests  []requestKind
		responses string // backend message types, in order
		left      int
	}{
		{"simple query", []requestKind{reqQuery}, "TDDCZ", 0},
		{"multi-statement query", []requestKind{reqQuery}, "TDCCTCZ", 0},
		{"query error", []requestKind{reqQuery}, "TDEZ", 0},
		{"extended", []requestKind{reqParse, reqBind, reqDescribe, reqExecute, reqSync}, "12TDDCZ", 0},
		{"describe statement", []requestKind{reqParse, reqDescribe, reqSync}, "1tTZ", 0},
		{"pipeline with error skips to sync", []requestKind{reqParse, reqBind, reqExecute, reqSync, reqBind, reqExecute, reqSync}, "12EZ2DCZ", 0},
		{"error in parse", []requestKind{reqParse, reqBind, reqExecute, reqSync}, "EZ", 0},
		{"portal suspended", []requestKind{reqBind, reqExecute, reqExecute, reqSync}, "2DsDCZ", 0},
		{"close", []requestKind{reqClose, reqSync}, "3Z", 0},
		{"copy in via query", []requestKind{reqQuery}, "GCZ", 0},
		{"copy out via execute", []requestKind{reqParse, reqBind, reqExecute, reqSync}, "12HddcCZ", 0},
		{"function call", []requestKind{reqFunctionCall}, "VZ", 0},
		{"async messages", []requestKind{reqQuery}, "NSATDCNZ", 0},
		{"flush before sync", []requestKind{reqParse, reqBind, reqExecute}, "12DC", 0},
		{"outstanding", []requestKind{reqParse, reqBind, reqExecute, reqSync}, "12D", 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var q fifo
			for _, r := range tc.requests {
				q.push(expected{kind: r})
			}
			for i := 0; i < len(tc.responses); i++ {
				head, _ := q.front()
				switch effectOf(tc.responses[i], head.kind) {
				case effPop:
					q.pop()
				case effPopToSync:
					q.skipToSync(nil)
				}
			}
			if q.len() != tc.left {
				t.Fatalf("outstanding = %d, want %d", q.len(), tc.left)
			}
		})
	}
}

func TestFIFOGrowsAndWraps(t *testing.T) {
	var q fifo
	for round := 0; round < 5; round++ {
		for i := 0; i < 37; i++ {
			q.push(expected{kind: requestKind(i%8 + 1)})
		}
		for i := 0; i < 37; i++ {
			e, ok := q.front()
			if !ok || e.kind != requestKind(i%8+1) {
				t.Fatalf("round %d item %d: got %v %v", round, i, e.kind, ok)
			}
			q.pop()
		}
	}
	if _, ok := q.front(); ok {
		t.Fatal("fifo not empty")
	}
}

func TestOptionSettings(t *testing.T) {
	got := optionSettings("-c app.tenant=42 -csearch_path=a,b --statement-timeout=5s -x")
	if got["app.tenant"] != "42" || got["search_path"] != "a,b" || got["statement_timeout"] != "5s" || len(got) != 3 {
		t.Fatalf("%v", got)
	}
	if sp := searchPathOf(map[string]string{"options": "-c search_path=myschema"}); sp != "myschema" {
		t.Fatalf("search path %q", sp)
	}
}

// skipToSync hands the failed head and the skipped requests to the undo last first: a request's
// record may have been made over an earlier one's.
func TestSkipToSyncUndoesLastFirst(t *testing.T) {
	var q fifo
	for i, k := range []requestKind{reqExecute, reqClose, reqParse, reqSync, reqParse} {
		q.push(expected{kind: k, name: string(rune('a' + i))})
	}
	var order string
	q.skipToSync(func(e *expected) { order += e.name })
	if order != "cba" || q.len() != 2 {
		t.Fatalf("undone %q leaving %d, want cba leaving the Sync and what follows it (2)", order, q.len())
	}
}
