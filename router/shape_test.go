package router

import (
	"maps"
	"testing"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// TestLiftedLiteralsMatchScanner: the constants plainConstantEnd reads end where Postgres's
// scanner ends them, and whatever it declines the scanner reads: liftedLiterals agrees with the
// scanner-only version on every text, and takes the quick path on plain ones.
func TestLiftedLiteralsMatchScanner(t *testing.T) {
	texts := []struct {
		sql   string
		quick bool // every constant is plain
	}{
		{"SELECT * FROM users WHERE id = 42", true},
		{"SELECT full_name FROM users WHERE id = 42 AND tier = 'gold'", true},
		{"SELECT 3.14, 1e10, 1.5E-3, 2e+7, 1., 007", true},
		{"UPDATE t SET name = 'it''s', note = '' WHERE id IN (1, 2, 3)", true},
		{"SELECT * FROM t LIMIT 10 OFFSET 5", true},
		{"SELECT * FROM t WHERE a BETWEEN 1 AND 2 AND b = 'é€'", true},
		{"SELECT '--not a comment', '/* nor this */' FROM t WHERE x = 1--a comment", true},
		{"SELECT 'a'\t, 'b'\n, 1", true},
		{"SELECT * FROM t1 WHERE t1.c2 = 5 AND \"col 1\" = 'x'", true},
		{"SELECT ARRAY[1,2], '{1,2}'::int[], 1::text, interval '1 day', date '2024-01-01'", true},
		{"SELECT * FROM t WHERE a = $1 AND b = 7", true},
		{"SELECT .5, 2", false},
		{"SELECT -5, - 5, -3.2, 1 - 2", false},
		{"SELECT 0x1F, 0o17, 0b101, 1_000", false},
		{"SELECT E'a\\nb', 'a\\b'", false},
		{"SELECT $$x$$, $tag$y'z$tag$", false},
		{"SELECT B'101', X'1F', N'abc', U&'d\\0061t'", false},
		{"SELECT 'a'\n'b' AS joined", false},
		{"SELECT 'a' \r\n  'b', 2", false},
		{"INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y''z')", true},
		{"SELECT /* 1 */ 2, 'q' FROM t", true},
	}
	for _, tc := range texts {
		norm, err := pg_query.Normalize(tc.sql)
		if err != nil {
			t.Fatalf("%q: normalize: %v", tc.sql, err)
		}
		got, gotOK := liftedLiterals(tc.sql, norm)
		want, wantOK := liftedLiteralsScanned(tc.sql, norm)
		if gotOK != wantOK || !maps.Equal(got, want) {
			t.Errorf("%q: lifted %v (%v), the scanner %v (%v)", tc.sql, got, gotOK, want, wantOK)
		}
		if !wantOK {
			t.Errorf("%q: the scanner cannot align it with %q", tc.sql, norm)
		}
		_, quick := alignLiterals(tc.sql, norm, func(i int) (int, bool) { return plainConstantEnd(tc.sql, i) })
		if quick != tc.quick {
			t.Errorf("%q: quick path %v, want %v", tc.sql, quick, tc.quick)
		}
	}
}

func BenchmarkLiftedLiterals(b *testing.B) {
	sql := "SELECT full_name, email, tier FROM users WHERE id = 12345 AND tier = 'gold'"
	norm, err := pg_query.Normalize(sql)
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		lift func(orig, norm string) (map[int]string, bool)
	}{{"quick", liftedLiterals}, {"scanner", liftedLiteralsScanned}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if _, ok := tc.lift(sql, norm); !ok {
					b.Fatal("not aligned")
				}
			}
		})
	}
}
