package router

import (
	"reflect"
	"testing"
)

func TestSessionChangesOf(t *testing.T) {
	cases := []struct {
		sql  string
		want SessionChanges
	}{
		{"SELECT 1", SessionChanges{}},
		{"SET search_path TO app, public", SessionChanges{Paths: []PathChange{{Value: "app, public"}}}},
		{"set search_path = \"$user\", \"My Schema\"", SessionChanges{Paths: []PathChange{{Value: `"$user", "My Schema"`}}}},
		{"SET LOCAL search_path TO app", SessionChanges{Paths: []PathChange{{Value: "app", Local: true}}}},
		{"SET SESSION search_path TO 'app'", SessionChanges{Paths: []PathChange{{Value: "app"}}}},
		{"RESET search_path", SessionChanges{Paths: []PathChange{{Reset: true}}}},
		{"SET search_path TO DEFAULT", SessionChanges{Paths: []PathChange{{Reset: true}}}},
		{"RESET ALL", SessionChanges{Paths: []PathChange{{Reset: true}}}},
		{"SET statement_timeout = 5", SessionChanges{}},
		{"DISCARD ALL", SessionChanges{Paths: []PathChange{{Reset: true}}, DeallocateAll: true}},
		{"DISCARD PLANS", SessionChanges{}},
		{"DEALLOCATE s1; DEALLOCATE PREPARE s2", SessionChanges{Deallocate: []string{"s1", "s2"}}},
		{"DEALLOCATE ALL", SessionChanges{DeallocateAll: true}},
		{"SELECT 'search_path'", SessionChanges{}},
	}
	for _, tc := range cases {
		got := SessionChangesOf(tc.sql)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SessionChangesOf(%q) = %+v, want %+v", tc.sql, got, tc.want)
		}
	}
}
