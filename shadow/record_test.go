package shadow

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestRecorderRing(t *testing.T) {
	r, err := NewRecorder(RecorderOptions{PerMigration: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if got := r.Recent("a", 0); len(got) != 0 {
		t.Errorf("Recent of an unknown migration: %v", got)
	}
	for i := range 5 {
		r.Record(Mismatch{Migration: "a", Fingerprint: fmt.Sprint(i)})
	}
	r.Record(Mismatch{Migration: "b", Fingerprint: "b0"})
	fingerprints := func(ms []Mismatch) string {
		var out []string
		for _, m := range ms {
			out = append(out, m.Fingerprint)
		}
		return strings.Join(out, ",")
	}
	if got := fingerprints(r.Recent("a", 0)); got != "4,3,2" {
		t.Errorf("Recent(a, all) = %s, want 4,3,2 (newest first, 3 kept)", got)
	}
	if got := fingerprints(r.Recent("a", 2)); got != "4,3" {
		t.Errorf("Recent(a, 2) = %s, want 4,3", got)
	}
	if got := fingerprints(r.Recent("b", 10)); got != "b0" {
		t.Errorf("Recent(b, 10) = %s, want b0", got)
	}
	r.Record(Mismatch{Migration: "c", Fingerprint: "c0"})
	r.Record(Mismatch{Migration: "c", Fingerprint: "c1"})
	if got := fingerprints(r.Recent("c", 0)); got != "c1,c0" {
		t.Errorf("Recent(c) while filling = %s, want c1,c0", got)
	}
}

func TestRecorderJSONL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mismatches.jsonl")
	if err := os.WriteFile(path, []byte(`{"migration":"earlier","kind":"values","old_seconds":0,"new_seconds":0}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := NewRecorder(RecorderOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	want := Mismatch{
		Time: time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC), Migration: "users-split-name", Fingerprint: "abc",
		Query: "SELECT full_name FROM users WHERE id = $1", Kind: KindValues,
		Key: map[string]string{"id": redact("42")}, Row: 3, Columns: []string{"full_name"},
		OldDuration: 1500 * time.Microsecond, NewDuration: 2 * time.Millisecond,
	}
	r.Record(want)
	r.Record(Mismatch{Migration: "m", Kind: KindErrorNew, Row: -1, NewError: "42703: column \"x\" does not exist"})
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	r.Record(Mismatch{Migration: "late"}) // after Close: memory only, no panic

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) != 3 {
		t.Fatalf("%d lines, want 3 (one kept from before, two appended):\n%s", len(lines), strings.Join(lines, "\n"))
	}
	var got Mismatch
	if err := json.Unmarshal([]byte(lines[1]), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("read back %+v\nwant %+v", got, want)
	}
	for _, field := range []string{`"old_seconds":0.0015`, `"new_seconds":0.002`, `"key":{"id":"sha256:`, `"row":3`} {
		if !strings.Contains(lines[1], field) {
			t.Errorf("line %s lacks %s", lines[1], field)
		}
	}
	if strings.Contains(lines[1], "old_values") {
		t.Errorf("values written though none were kept: %s", lines[1])
	}
	if strings.Contains(lines[2], `"row"`) {
		t.Errorf("row written for a mismatch without one: %s", lines[2])
	}
}

func TestRedact(t *testing.T) {
	got := redact("42")
	if !strings.HasPrefix(got, "sha256:") || len(got) != len("sha256:")+12 {
		t.Errorf("redact = %q, want sha256: and 12 hex digits", got)
	}
	if got != redact("42") || got == redact("43") {
		t.Error("redaction is not a function of the value")
	}
	// sha256("42") = 73475cb40a568e8da8a045ced110137e159f890ac4da883b6b17dc651b3a8049
	if got != "sha256:73475cb40a56" {
		t.Errorf("redact(42) = %s", got)
	}
}
