package shadow

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"testing"
)

const (
	oidInt4 = 23
	oidText = 25
	oidInt8 = 20
)

// result builds a ResultSet: cols as "name:oid" pairs via col, rows of strings where nil is NULL.
func result(cols []Column, rows ...[]any) *ResultSet {
	rs := &ResultSet{Columns: cols}
	for _, r := range rows {
		row := make([][]byte, len(r))
		for i, v := range r {
			switch v := v.(type) {
			case nil:
			case string:
				row[i] = []byte(v)
			default:
				panic(fmt.Sprintf("value %v: want string or nil", v))
			}
		}
		rs.Rows = append(rs.Rows, row)
	}
	return rs
}

func cols(spec ...any) []Column {
	var out []Column
	for i := 0; i < len(spec); i += 2 {
		out = append(out, Column{Name: spec[i].(string), TypeOID: uint32(spec[i+1].(int))})
	}
	return out
}

func row(v ...any) []any { return v }

var userCols = cols("id", oidInt4, "full_name", oidText)

func TestCompareEqual(t *testing.T) {
	old := result(userCols, row("1", "Ada Lovelace"), row("2", "Alan Turing"))
	for _, ordered := range []bool{false, true} {
		d := Compare(old, result(userCols, row("1", "Ada Lovelace"), row("2", "Alan Turing")), CompareOptions{Ordered: ordered})
		if !d.Equal() {
			t.Errorf("ordered=%v: equal results differ: %+v", ordered, d)
		}
	}
	if d := Compare(result(userCols), result(userCols), CompareOptions{}); !d.Equal() {
		t.Errorf("empty results differ: %+v", d)
	}
}

func TestCompareColumns(t *testing.T) {
	old := result(userCols, row("1", "Ada"))
	tests := []struct {
		name string
		new  []Column
		want []string
	}{
		{"renamed", cols("id", oidInt4, "name", oidText), []string{"full_name", "name"}},
		{"retyped", cols("id", oidInt8, "full_name", oidText), []string{"id"}},
		{"extra", cols("id", oidInt4, "full_name", oidText, "email", oidText), []string{"email"}},
		{"missing", cols("id", oidInt4), []string{"full_name"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			newRS := &ResultSet{Columns: tt.new, Rows: [][][]byte{make([][]byte, len(tt.new))}}
			d := Compare(old, newRS, CompareOptions{})
			if d.Kind != KindColumns || !reflect.DeepEqual(d.Columns, tt.want) || d.Row != -1 {
				t.Errorf("got %+v, want kind columns naming %v", d, tt.want)
			}
		})
	}
	t.Run("ignored column's type", func(t *testing.T) {
		newRS := result(cols("id", oidInt8, "full_name", oidText), row("1", "Ada"))
		if d := Compare(old, newRS, CompareOptions{IgnoreColumns: []string{"ID"}}); !d.Equal() {
			t.Errorf("the type of an ignored column counted: %+v", d)
		}
	})
}

func TestCompareRowCount(t *testing.T) {
	old := result(userCols, row("1", "Ada"), row("2", "Alan"), row("3", "Grace"))
	newRS := result(userCols, row("1", "Ada"), row("3", "Grace"))
	for _, ordered := range []bool{false, true} {
		d := Compare(old, newRS, CompareOptions{Ordered: ordered, KeyColumns: []string{"id"}})
		if d.Kind != KindRowCount || d.Row != 1 || d.RowInNew || d.Key["id"] != "2" {
			t.Errorf("ordered=%v: got %+v, want row_count at old row 1 (id 2)", ordered, d)
		}
	}
	// A row only the new result has.
	d := Compare(newRS, old, CompareOptions{KeyColumns: []string{"id"}})
	if d.Kind != KindRowCount || d.Row != 1 || !d.RowInNew || d.Key["id"] != "2" {
		t.Errorf("got %+v, want row_count at new row 1 (id 2)", d)
	}
	// The extra new row lies past the end of the old result.
	d = Compare(result(userCols, row("1", "Ada")), result(userCols, row("1", "Ada"), row("2", "Alan"), row("3", "Grace")), CompareOptions{KeyColumns: []string{"id"}})
	if d.Kind != KindRowCount || d.Row != 1 || !d.RowInNew || d.Key["id"] != "2" {
		t.Errorf("got %+v, want row_count at new row 1 (id 2)", d)
	}
}

func TestCompareValues(t *testing.T) {
	old := result(userCols, row("1", "Ada Lovelace"), row("2", "Alan Turing"), row("3", "Grace Hopper"))
	newRS := result(userCols, row("3", "Grace Hopper"), row("1", "Ada Lovelace"), row("2", "Alan  Turing"))
	d := Compare(old, newRS, CompareOptions{KeyColumns: []string{"id"}})
	want := Diff{Kind: KindValues, Columns: []string{"full_name"}, Row: 1, Key: map[string]string{"id": "2"},
		OldValues: map[string]string{"full_name": "Alan Turing"}, NewValues: map[string]string{"full_name": "Alan  Turing"}}
	if !reflect.DeepEqual(d, want) {
		t.Errorf("got %+v\nwant %+v", d, want)
	}
}

func TestCompareOrderedVsUnordered(t *testing.T) {
	old := result(userCols, row("1", "Ada"), row("2", "Alan"))
	swapped := result(userCols, row("2", "Alan"), row("1", "Ada"))
	if d := Compare(old, swapped, CompareOptions{}); !d.Equal() {
		t.Errorf("unordered: the same rows in another order differ: %+v", d)
	}
	d := Compare(old, swapped, CompareOptions{Ordered: true, KeyColumns: []string{"id"}})
	if d.Kind != KindValues || d.Row != 0 || d.Key["id"] != "1" || !reflect.DeepEqual(d.Columns, []string{"id", "full_name"}) {
		t.Errorf("ordered: got %+v, want values at row 0 naming both columns", d)
	}
}

func TestCompareMultiset(t *testing.T) {
	// Duplicates count: {a, a, b} is not {a, b, b}.
	c := cols("v", oidText)
	d := Compare(result(c, row("a"), row("a"), row("b")), result(c, row("a"), row("b"), row("b")), CompareOptions{})
	if d.Kind != KindValues || d.Row != 1 {
		t.Errorf("got %+v, want values at old row 1", d)
	}
}

func TestCompareNullVsEmpty(t *testing.T) {
	c := cols("v", oidText)
	d := Compare(result(c, row(nil)), result(c, row("")), CompareOptions{})
	if d.Kind != KindValues {
		t.Errorf("NULL and '' compare equal: %+v", d)
	}
	if _, ok := d.OldValues["v"]; ok || d.NewValues["v"] != "" {
		t.Errorf("values: old %v new %v, want NULL absent and '' present", d.OldValues, d.NewValues)
	}
	if d := Compare(result(c, row(nil)), result(c, row(nil)), CompareOptions{}); !d.Equal() {
		t.Errorf("NULL differs from NULL: %+v", d)
	}
}

func TestCompareFloatTolerance(t *testing.T) {
	c := cols("id", oidInt4, "f8", oidFloat8, "num", oidNumeric, "f4", oidFloat4)
	tests := []struct {
		name   string
		old    []any
		new    []any
		tol    float64
		differ []string
	}{
		{"within", row("1", "0.1", "1.000", "2.5"), row("1", "0.10000000000000002", "1.0004", "2.5001"), 0.001, nil},
		{"beyond", row("1", "0.1", "1.0", "2.5"), row("1", "0.2", "1.0", "2.5"), 0.001, []string{"f8"}},
		{"text at zero tolerance", row("1", "0.1", "1.0", "2.5"), row("1", "0.1", "1.00", "2.5"), 0, []string{"num"}},
		{"NaN equals NaN", row("1", "NaN", "NaN", "NaN"), row("1", "NaN", "NaN", "NaN"), 0.001, nil},
		{"NaN vs number", row("1", "NaN", "1", "1"), row("1", "0", "1", "1"), 0.001, []string{"f8"}},
		{"infinities", row("1", "Infinity", "-Infinity", "1"), row("1", "Infinity", "-Infinity", "1"), 0.001, nil},
		{"infinity vs max", row("1", "Infinity", "1", "1"), row("1", "1.7976931348623157e308", "1", "1"), 0.001, []string{"f8"}},
		{"NULL vs number", row("1", nil, "1", "1"), row("1", "0", "1", "1"), 0.001, []string{"f8"}},
		{"NULL vs NULL", row("1", nil, nil, nil), row("1", nil, nil, nil), 0.001, nil},
		{"numeric beyond float64", row("1", "1", "1e400", "1"), row("1", "1", "1e400", "1"), 0.001, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Compare(result(c, tt.old), result(c, tt.new), CompareOptions{FloatTolerance: tt.tol})
			if len(tt.differ) == 0 {
				if !d.Equal() {
					t.Errorf("differ: %+v", d)
				}
				return
			}
			if d.Kind != KindValues || !reflect.DeepEqual(d.Columns, tt.differ) {
				t.Errorf("got %+v, want values naming %v", d, tt.differ)
			}
		})
	}
}

// TestCompareToleranceUnordered: rows that are equal within the tolerance match whatever their
// order, even when a sort by their exact bytes would pair them wrongly.
func TestCompareToleranceUnordered(t *testing.T) {
	c := cols("grp", oidText, "x", oidFloat8, "y", oidFloat8)
	old := result(c, row("a", "1.0", "5"), row("a", "1.0000001", "7"), row("b", "2", "2"))
	// Sorted by x the pairs would be (1.0,5)-(1.0,7): the second column disagrees.
	newRS := result(c, row("b", "2.0000001", "2"), row("a", "1.0", "7"), row("a", "1.0000001", "5"))
	if d := Compare(old, newRS, CompareOptions{FloatTolerance: 0.001}); !d.Equal() {
		t.Errorf("equal within tolerance, reordered: %+v", d)
	}
	// A greedy pass in sorted order pairs (1.00,1.10) with (1.00,1.20) and leaves (1.05,1.30)
	// without a partner; only the matching that pairs it with (1.00,1.20) finds them equal.
	old2 := result(c, row("a", "1.00", "1.10"), row("a", "1.05", "1.30"))
	new2 := result(c, row("a", "1.00", "1.20"), row("a", "1.10", "1.00"))
	if d := Compare(old2, new2, CompareOptions{FloatTolerance: 0.15}); !d.Equal() {
		t.Errorf("greedy pairing defeated the comparison: %+v", d)
	}
	// And a real difference is still found and named.
	newRS = result(c, row("b", "2", "2"), row("a", "1.0", "7"), row("a", "1.0", "6"))
	d := Compare(old, newRS, CompareOptions{FloatTolerance: 0.001})
	if d.Kind != KindValues || !reflect.DeepEqual(d.Columns, []string{"y"}) {
		t.Errorf("got %+v, want values naming y", d)
	}
}

// TestCompareToleranceShuffled: many rows with float noise, shuffled, still match.
func TestCompareToleranceShuffled(t *testing.T) {
	c := cols("id", oidInt4, "amount", oidNumeric)
	rng := rand.New(rand.NewPCG(1, 2))
	var oldRows, newRows [][]any
	for i := range 500 {
		v := float64(i%7) + 0.5 // many equal amounts
		oldRows = append(oldRows, row(fmt.Sprint(i%50), fmt.Sprint(v)))
		newRows = append(newRows, row(fmt.Sprint(i%50), fmt.Sprint(v+(rng.Float64()-0.5)*1e-6)))
	}
	rng.Shuffle(len(newRows), func(i, j int) { newRows[i], newRows[j] = newRows[j], newRows[i] })
	if d := Compare(result(c, oldRows...), result(c, newRows...), CompareOptions{FloatTolerance: 1e-5}); !d.Equal() {
		t.Errorf("shuffled rows within tolerance differ: %+v", d)
	}
}

func TestCompareIgnoreColumns(t *testing.T) {
	c := cols("id", oidInt4, "updated_at", oidText, "Name", oidText)
	old := result(c, row("1", "2024-01-01", "Ada"))
	newRS := result(c, row("1", "2025-06-30", "Ada"))
	if d := Compare(old, newRS, CompareOptions{IgnoreColumns: []string{"updated_at"}}); !d.Equal() {
		t.Errorf("ignored column compared: %+v", d)
	}
	newRS = result(c, row("1", "2024-01-01", "Alan"))
	// A quoted name keeps its case; an unquoted one folds to lower case and does not match "Name".
	if d := Compare(old, newRS, CompareOptions{IgnoreColumns: []string{`"Name"`}}); !d.Equal() {
		t.Errorf(`"Name" not ignored: %+v`, d)
	}
	if d := Compare(old, newRS, CompareOptions{IgnoreColumns: []string{"Name"}}); d.Kind != KindValues {
		t.Errorf("unquoted Name matched column \"Name\": %+v", d)
	}
}

func TestCompareKey(t *testing.T) {
	c := cols("tenant", oidInt4, "id", oidInt4, "v", oidText)
	old := result(c, row("7", "1", "a"), row("7", nil, "b"))
	newRS := result(c, row("7", "1", "a"), row("7", nil, "c"))
	d := Compare(old, newRS, CompareOptions{KeyColumns: []string{"tenant", "id"}})
	if d.Row != 1 || !reflect.DeepEqual(d.Key, map[string]string{"tenant": "7"}) || !reflect.DeepEqual(d.NullKey, []string{"id"}) {
		t.Errorf("got %+v, want key tenant=7, id NULL at row 1", d)
	}
	// Without every key column in the result, the row's position identifies it.
	d = Compare(old, newRS, CompareOptions{KeyColumns: []string{"tenant", "missing"}})
	if d.Row != 1 || d.Key != nil {
		t.Errorf("got %+v, want no key and row 1", d)
	}
}

func TestCompareColumnsUnionOverRows(t *testing.T) {
	c := cols("id", oidInt4, "a", oidText, "b", oidText)
	old := result(c, row("1", "x", "x"), row("2", "x", "x"), row("3", "x", "x"))
	newRS := result(c, row("1", "x", "x"), row("2", "y", "x"), row("3", "x", "y"))
	for _, ordered := range []bool{false, true} {
		d := Compare(old, newRS, CompareOptions{Ordered: ordered, KeyColumns: []string{"id"}})
		if d.Kind != KindValues || !reflect.DeepEqual(d.Columns, []string{"a", "b"}) || d.Key["id"] != "2" {
			t.Errorf("ordered=%v: got %+v, want columns a and b, first key 2", ordered, d)
		}
		if !reflect.DeepEqual(d.OldValues, map[string]string{"a": "x"}) {
			t.Errorf("ordered=%v: values of the first differing row: %v", ordered, d.OldValues)
		}
	}
}
