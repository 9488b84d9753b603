package shadow

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Mismatch kinds: how the new form's answer differs from the old form's.
const (
	KindColumns   = "columns"    // column names or types differ
	KindRowCount  = "row_count"  // the number of rows differs
	KindValues    = "values"     // same rows count, different values
	KindErrorOld  = "error_old"  // only the old form failed
	KindErrorNew  = "error_new"  // only the new form failed
	KindErrorBoth = "error_both" // both failed, with different SQLSTATEs
)

// Type OIDs whose values are compared with CompareOptions.FloatTolerance.
const (
	oidFloat4  = 700
	oidFloat8  = 701
	oidNumeric = 1700
)

// maxPairedRows bounds how many differing rows are paired up to name the differing columns: the
// first few show the pattern (a wrong read map differs on every row), and pairing in an unordered
// result costs a scan of the unmatched rows each.
const maxPairedRows = 10

// maxExactMatchGroup bounds the size of a group of rows that agree on every exactly compared
// column for which a perfect matching under the float tolerance is searched (O(n³) at worst);
// larger groups keep the greedy matching.
const maxExactMatchGroup = 256

// Column is one column of a result, as the server's RowDescription names and types it.
type Column struct {
	Name    string
	TypeOID uint32
}

// ResultSet is one side's answer with every value in text format. A nil value is SQL NULL (an
// empty non-nil value is the empty string).
type ResultSet struct {
	Columns []Column
	Rows    [][][]byte
}

// CompareOptions are the rules of one comparison.
type CompareOptions struct {
	// Ordered compares rows position by position (the statement's top level has ORDER BY);
	// otherwise the results are compared as multisets of rows.
	Ordered bool
	// IgnoreColumns are left out of the type and value comparisons (they must still be present
	// with the same names in the same positions).
	IgnoreColumns []string
	// FloatTolerance, when positive, is the absolute tolerance for float4, float8 and numeric
	// columns: their text is parsed and two values within it are equal; NaN equals NaN. At zero
	// those columns compare as text, as every other column does, since that text is what the
	// client sees.
	FloatTolerance float64
	// KeyColumns name the migration key, to identify the first differing row.
	KeyColumns []string
}

// Diff says how two results differ. Kind is empty when they agree.
type Diff struct {
	Kind string
	// Columns names the differing columns: for KindColumns the columns whose name or type differs
	// (or that only one side has); for KindValues those differing in the first few differing rows.
	Columns []string
	// Row is the position (0-based, in the order the server returned them) of the first differing
	// row: in the old result, or in the new one when that row exists only there (RowInNew). It is
	// -1 when no row is involved (KindColumns).
	Row      int
	RowInNew bool
	// Key holds the text values of the key columns in the first differing row, nil when the result
	// does not hold every key column. A nil value (SQL NULL) is absent from the map and listed in
	// NullKey.
	Key     map[string]string
	NullKey []string
	// OldValues and NewValues hold the differing columns' values in the first differing pair of
	// rows (KindValues only); SQL NULL is absent from the maps.
	OldValues, NewValues map[string]string
}

// Equal reports whether the results agree.
func (d Diff) Equal() bool { return d.Kind == "" }

// Compare compares the new form's result with the old form's: column names and types first
// (KindColumns), then the number of rows (KindRowCount), then the values (KindValues).
//
// Unordered results are matched as multisets. Rows are grouped by the bytes of their exactly
// compared columns (every compared column but the float ones when a tolerance applies); a group of
// the old result must meet a group of the same size in the new one. Inside a group, which is
// usually one row when the key is among the columns, rows are matched under the tolerance greedily
// after a numeric sort of the float columns, and when that leaves rows unmatched in a group of at
// most maxExactMatchGroup rows, by a maximum bipartite matching, so that no pairing order can turn
// equal multisets into a false mismatch.
func Compare(oldRS, newRS *ResultSet, opts CompareOptions) Diff {
	c := newComparer(oldRS, newRS, opts)
	if cols := c.columnDiff(); len(cols) > 0 {
		return Diff{Kind: KindColumns, Columns: cols, Row: -1}
	}
	c.prepare()
	if opts.Ordered {
		return c.compareOrdered()
	}
	return c.compareUnordered()
}

// comparer holds what one comparison derives from its options and the old result's columns.
type comparer struct {
	old, new *ResultSet
	opts     CompareOptions
	ignored  map[string]bool
	exact    []int // compared column positions matched byte for byte
	approx   []int // compared float column positions matched within the tolerance
	key      []int // positions of the key columns; nil when one is missing
}

func newComparer(oldRS, newRS *ResultSet, opts CompareOptions) *comparer {
	c := &comparer{old: oldRS, new: newRS, opts: opts, ignored: map[string]bool{}}
	for _, name := range opts.IgnoreColumns {
		c.ignored[normalizeIdent(name)] = true
	}
	return c
}

// columnDiff returns the columns whose name or type differs, and those only one side has.
func (c *comparer) columnDiff() []string {
	var out []string
	for i := range max(len(c.old.Columns), len(c.new.Columns)) {
		switch {
		case i >= len(c.old.Columns):
			out = appendUnique(out, c.new.Columns[i].Name)
		case i >= len(c.new.Columns):
			out = appendUnique(out, c.old.Columns[i].Name)
		default:
			o, n := c.old.Columns[i], c.new.Columns[i]
			if o.Name != n.Name {
				out = appendUnique(appendUnique(out, o.Name), n.Name)
			} else if o.TypeOID != n.TypeOID && !c.ignored[o.Name] {
				out = appendUnique(out, o.Name)
			}
		}
	}
	return out
}

// prepare sorts the (identical) columns into exact, approximate and ignored, and finds the key.
func (c *comparer) prepare() {
	for i, col := range c.old.Columns {
		switch {
		case c.ignored[col.Name]:
		case c.opts.FloatTolerance > 0 && isFloatType(col.TypeOID):
			c.approx = append(c.approx, i)

		default:
			c.exact = append(c.exact, i)
		}
	}
	for _, name := range c.opts.KeyColumns {
		i := slices.IndexFunc(c.old.Columns, func(col Column) bool { return col.Name == normalizeIdent(name) })
		if i < 0 {
			c.key = nil
			return
		}
		c.key = append(c.key, i)
	}
}

func isFloatType(oid uint32) bool {
	return oid == oidFloat4 || oid == oidFloat8 || oid == oidNumeric
}

// rowsEqual compares two rows on every compared column.
func (c *comparer) rowsEqual(a, b [][]byte) bool {
	for _, i := range c.exact {
		if !exactEqual(a[i], b[i]) {
			return false
		}
	}
	for _, i := range c.approx {
		if !approxEqual(a[i], b[i], c.opts.FloatTolerance) {
			return false
		}
	}
	return true
}

// diffColumns returns the positions of the compared columns on which a and b differ, in order.
func (c *comparer) diffColumns(a, b [][]byte) []int {
	var out []int
	for _, i := range c.exact {
		if !exactEqual(a[i], b[i]) {
			out = append(out, i)
		}
	}
	for _, i := range c.approx {
		if !approxEqual(a[i], b[i], c.opts.FloatTolerance) {
			out = append(out, i)
		}
	}
	slices.Sort(out)
	return out
}

// exactEqual compares two text values; nil (NULL) equals only nil.
func exactEqual(a, b []byte) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	return bytes.Equal(a, b)
}

// approxEqual compares two float or numeric text values within tol. NaN equals NaN, an infinity
// equals the same infinity; a value that does not parse compares as text.
func approxEqual(a, b []byte, tol float64) bool {
	if (a == nil) != (b == nil) {
		return false
	}
	if bytes.Equal(a, b) {
		return true
	}
	fa, okA := parseFloat(a)
	fb, okB := parseFloat(b)
	if !okA || !okB {
		return false
	}
	if math.IsNaN(fa) || math.IsNaN(fb) {
		return math.IsNaN(fa) && math.IsNaN(fb)
	}
	return fa == fb || math.Abs(fa-fb) <= tol
}

// parseFloat parses PostgreSQL's text form of float4, float8 and numeric ("NaN", "Infinity",
// "-Infinity" included). A numeric beyond float64's range parses as an infinity.
func parseFloat(b []byte) (float64, bool) {
	if b == nil {
		return 0, false
	}
	f, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		if ne, ok := err.(*strconv.NumError); !ok || ne.Err != strconv.ErrRange {
			return 0, false
		}
	}
	return f, true
}

func (c *comparer) compareOrdered() Diff {
	oldRows, newRows := c.old.Rows, c.new.Rows
	n := min(len(oldRows), len(newRows))
	first := -1
	for i := range n {
		if !c.rowsEqual(oldRows[i], newRows[i]) {
			first = i
			break
		}
	}
	if len(oldRows) != len(newRows) {
		d := Diff{Kind: KindRowCount}
		switch {
		case first >= 0:
			c.setRow(&d, first, false)
		case len(oldRows) > n:
			c.setRow(&d, n, false)
		default:
			c.setRow(&d, n, true)
		}
		return d
	}
	if first < 0 {
		return Diff{}
	}
	d := Diff{Kind: KindValues}
	c.setRow(&d, first, false)
	var cols []int
	paired := 0
	for i := first; i < n && paired < maxPairedRows; i++ {
		diff := c.diffColumns(oldRows[i], newRows[i])
		if len(diff) == 0 {
			continue
		}
		if paired == 0 {
			c.setValues(&d, oldRows[i], newRows[i], diff)
		}
		cols = mergeSorted(cols, diff)
		paired++
	}
	d.Columns = c.names(cols)
	return d
}

func (c *comparer) compareUnordered() Diff {
	oldMatched, newMatched := c.match()
	firstOld := slices.Index(oldMatched, false)
	firstNew := slices.Index(newMatched, false)
	if len(c.old.Rows) != len(c.new.Rows) {
		d := Diff{Kind: KindRowCount}
		if firstOld >= 0 {
			c.setRow(&d, firstOld, false)
		} else {
			c.setRow(&d, firstNew, true)
		}
		return d
	}
	if firstOld < 0 {
		return Diff{}
	}
	d := Diff{Kind: KindValues}
	c.setRow(&d, firstOld, false)
	// Pair each of the first unmatched old rows with the unmatched new row closest to it: the
	// same key if there is one, else the fewest differing columns.
	var cols []int
	used := map[int]bool{}
	paired := 0
	for i := firstOld; i < len(oldMatched) && paired < maxPairedRows; i++ {
		if oldMatched[i] {
			continue
		}
		best, bestDiff, bestSameKey := -1, []int(nil), false
		for j, m := range newMatched {
			if m || used[j] {
				continue
			}
			diff := c.diffColumns(c.old.Rows[i], c.new.Rows[j])
			sameKey := c.key != nil && c.sameKey(c.old.Rows[i], c.new.Rows[j])
			if best < 0 || (sameKey && !bestSameKey) || (sameKey == bestSameKey && len(diff) < len(bestDiff)) {
				best, bestDiff, bestSameKey = j, diff, sameKey
			}
		}
		if best < 0 {
			break
		}
		used[best] = true
		if paired == 0 {
			c.setValues(&d, c.old.Rows[i], c.new.Rows[best], bestDiff)
		}
		cols = mergeSorted(cols, bestDiff)
		paired++
	}
	d.Columns = c.names(cols)
	return d
}

func (c *comparer) sameKey(a, b [][]byte) bool {
	for _, i := range c.key {
		if !exactEqual(a[i], b[i]) {
			return false
		}
	}
	return true
}

// match pairs equal rows of the two unordered results and reports which rows found a partner.
func (c *comparer) match() (oldMatched, newMatched []bool) {
	oldMatched = make([]bool, len(c.old.Rows))
	newMatched = make([]bool, len(c.new.Rows))
	type group struct{ old, new []int }
	groups := map[string]*group{}
	var order []string // groups in order of first appearance, for a deterministic walk
	add := func(rows [][][]byte, isNew bool) {
		var buf []byte
		for i, row := range rows {
			buf = encodeColumns(buf[:0], row, c.exact)
			g := groups[string(buf)]
			if g == nil {
				g = &group{}
				groups[string(buf)] = g
				order = append(order, string(buf))
			}
			if isNew {
				g.new = append(g.new, i)
			} else {
				g.old = append(g.old, i)
			}
		}
	}
	add(c.old.Rows, false)
	add(c.new.Rows, true)
	for _, k := range order {
		g := groups[k]
		if len(c.approx) == 0 {
			// Every compared column is in the group's bytes: its rows are all equal.
			for i := range min(len(g.old), len(g.new)) {
				oldMatched[g.old[i]] = true
				newMatched[g.new[i]] = true
			}
			continue
		}
		c.matchApprox(g.old, g.new, oldMatched, newMatched)
	}
	return oldMatched, newMatched
}

// matchApprox matches the rows of one group, which agree on every exact column, under the float
// tolerance.
func (c *comparer) matchApprox(oldIdx, newIdx []int, oldMatched, newMatched []bool) {
	// A numeric sort makes the greedy pass pair values in order, which is optimal for one float
	// column; several float columns can still defeat it, hence the bipartite matching below.
	oldIdx = c.sortApprox(c.old.Rows, oldIdx)
	newIdx = c.sortApprox(c.new.Rows, newIdx)
	partner := make([]int, len(oldIdx)) // index into newIdx, or -1
	taken := make([]bool, len(newIdx))
	unmatched := 0
	for i, oi := range oldIdx {
		partner[i] = -1
		for j, nj := range newIdx {
			if !taken[j] && c.rowsEqual(c.old.Rows[oi], c.new.Rows[nj]) {
				partner[i], taken[j] = j, true
				break
			}
		}
		if partner[i] < 0 {
			unmatched++
		}
	}
	if unmatched > 0 && len(oldIdx) <= maxExactMatchGroup && len(newIdx) <= maxExactMatchGroup {
		partner = c.maxMatching(oldIdx, newIdx)
	}
	for i, j := range partner {
		if j >= 0 {
			oldMatched[oldIdx[i]] = true
			newMatched[newIdx[j]] = true
		}
	}
}

// maxMatching finds a maximum matching between the rows of a group (Kuhn's augmenting paths).
func (c *comparer) maxMatching(oldIdx, newIdx []int) []int {
	adj := make([][]int, len(oldIdx))
	for i, oi := range oldIdx {
		for j, nj := range newIdx {
			if c.rowsEqual(c.old.Rows[oi], c.new.Rows[nj]) {
				adj[i] = append(adj[i], j)
			}
		}
	}
	matchNew := make([]int, len(newIdx)) // new → old, or -1
	for j := range matchNew {
		matchNew[j] = -1
	}
	var try func(i int, seen []bool) bool
	try = func(i int, seen []bool) bool {
		for _, j := range adj[i] {
			if seen[j] {
				continue
			}
			seen[j] = true
			if matchNew[j] < 0 || try(matchNew[j], seen) {
				matchNew[j] = i
				return true
			}
		}
		return false
	}
	for i := range oldIdx {
		try(i, make([]bool, len(newIdx)))
	}
	partner := make([]int, len(oldIdx))
	for i := range partner {
		partner[i] = -1
	}
	for j, i := range matchNew {
		if i >= 0 {
			partner[i] = j
		}
	}
	return partner
}

// sortApprox orders rows of a group by their float columns: NULL first, then numbers, then NaN;
// text that does not parse sorts last, by its bytes.
func (c *comparer) sortApprox(rows [][][]byte, idx []int) []int {
	if len(idx) < 2 {
		return idx
	}
	out := slices.Clone(idx)
	slices.SortStableFunc(out, func(a, b int) int {
		for _, col := range c.approx {
			if r := compareFloatText(rows[a][col], rows[b][col]); r != 0 {
				return r
			}
		}
		return 0
	})
	return out
}

func compareFloatText(a, b []byte) int {
	rank := func(v []byte) (int, float64) {
		if v == nil {
			return 0, 0
		}
		f, ok := parseFloat(v)
		switch {
		case !ok:
			return 3, 0
		case math.IsNaN(f):
			return 2, 0
		default:
			return 1, f
		}
	}
	ra, fa := rank(a)
	rb, fb := rank(b)
	if r := cmp.Compare(ra, rb); r != 0 {
		return r
	}
	if r := cmp.Compare(fa, fb); r != 0 {
		return r
	}
	return bytes.Compare(a, b)
}

// encodeColumns appends the values of cols to buf unambiguously: a NULL marker or a length-prefixed
// value each.
func encodeColumns(buf []byte, row [][]byte, cols []int) []byte {
	for _, i := range cols {
		if row[i] == nil {
			buf = append(buf, 0)
			continue
		}
		buf = append(buf, 1)
		buf = binary.AppendUvarint(buf, uint64(len(row[i])))
		buf = append(buf, row[i]...)
	}
	return buf
}

// setRow points d at row i of the old result (or of the new one) and fills in its key.
func (c *comparer) setRow(d *Diff, i int, inNew bool) {
	d.Row, d.RowInNew = i, inNew
	if c.key == nil {
		return
	}
	rows := c.old.Rows
	if inNew {
		rows = c.new.Rows
	}
	row := rows[i]
	d.Key = map[string]string{}
	for _, k := range c.key {
		name := c.old.Columns[k].Name
		if row[k] == nil {
			d.NullKey = append(d.NullKey, name)
			continue
		}
		d.Key[name] = string(row[k])
	}
}

func (c *comparer) setValues(d *Diff, oldRow, newRow [][]byte, cols []int) {
	d.OldValues, d.NewValues = map[string]string{}, map[string]string{}
	for _, i := range cols {
		name := c.old.Columns[i].Name
		if oldRow[i] != nil {
			d.OldValues[name] = string(oldRow[i])
		}
		if newRow[i] != nil {
			d.NewValues[name] = string(newRow[i])
		}
	}
}

func (c *comparer) names(cols []int) []string {
	var out []string
	for _, i := range cols {
		out = appendUnique(out, c.old.Columns[i].Name)
	}
	return out
}

// mergeSorted returns the sorted union of two sorted position lists.
func mergeSorted(a, b []int) []int {
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return slices.Compact(out)
}

func appendUnique(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// normalizeIdent turns a configured column name into the name the server reports: a quoted
// identifier loses its quotes, an unquoted one is folded to lower case, as PostgreSQL does.
func normalizeIdent(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return strings.ReplaceAll(s[1:len(s)-1], `""`, `"`)
	}
	return strings.ToLower(s)
}
