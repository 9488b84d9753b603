package verify

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/config"
)

// side is one of the two shapes being compared.
type side int

const (
	oldSide side = iota
	newSide
)

// plan holds what the SQL of one migration's comparison is built from.
type plan struct {
	m      *config.Migration
	mc     *config.MigrationCatalog
	same   bool                  // same-table migration: both sides are one row
	cols   []config.MappedColumn // the write-map projection, in the new relation's order
	keys   []string              // key columns (catalog spelling) in the order of their unique index
	keyPos []int                 // position of each key column in cols
	valPos []int                 // positions of the compared non-key columns in cols
	oldKT  []string              // SQL type of each key column in old
	newKT  []string              // ... and in new
	// oldNull and newNull list the key columns that may hold NULL in old and in new. A row with a
	// NULL in its key is named by no key: every comparison leaves it out, and run counts it.
	oldNull, newNull []string
	// identityAlways: new has a GENERATED ALWAYS identity column that the upsert writes.
	identityAlways bool
}

func newPlan(m *config.Migration, mc *config.MigrationCatalog) (*plan, error) {
	cols, err := m.WriteMapColumns(mc)
	if err != nil {
		return nil, err
	}
	p := &plan{m: m, mc: mc, same: m.SameTable(), cols: cols, keys: config.UnquoteAllIdents(m.Key)}
	// Order the key as its unique index does, so that row comparisons and ORDER BY on the key walk
	// that index instead of sorting.
	for _, uk := range mc.Old.UniqueKeys {
		if len(uk) == len(p.keys) && sameSet(uk, p.keys) {
			p.keys = slices.Clone(uk)
			break
		}
	}
	for _, k := range p.keys {
		i := slices.IndexFunc(cols, func(c config.MappedColumn) bool { return c.Name == k })
		oc, okOld := mc.Old.Column(k)
		nc, okNew := mc.New.Column(k)
		if i < 0 || !okOld || !okNew {
			return nil, fmt.Errorf("migration %s: key column %s is not a column of both shapes", m.Name, k)
		}
		p.keyPos = append(p.keyPos, i)
		p.oldKT = append(p.oldKT, oc.TypeSQL)
		p.newKT = append(p.newKT, nc.TypeSQL)
		if !oc.NotNull {
			p.oldNull = append(p.oldNull, k)
		}
		if !nc.NotNull {
			p.newNull = append(p.newNull, k)
		}
	}
	for i, c := range cols {
		if !slices.Contains(p.keyPos, i) {
			p.valPos = append(p.valPos, i)
		}
		if nc, _ := mc.New.Column(c.Name); nc != nil && nc.Identity == "a" {
			p.identityAlways = true
		}
	}
	if p.same && len(p.valPos) == 0 {
		return nil, fmt.Errorf("migration %s: the write map fills no new column of %s, so there is nothing to verify", m.Name, mc.Old.Qualified())
	}
	return p, nil
}

func sameSet(a, b []string) bool {
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

func qi(name string) string { return pgx.Identifier{name}.Sanitize() }

func (p *plan) rel(s side) string {
	if s == oldSide {
		return p.mc.Old.QuotedName()
	}
	return p.mc.New.QuotedName()
}

func (p *plan) keyTypes(s side) []string {
	if s == oldSide {
		return p.oldKT
	}
	return p.newKT
}

// notNull is one "column is not null" condition per key column that is nullable on side s.
func (p *plan) notNull(s side) []string {
	cols := p.oldNull
	if s == newSide {
		cols = p.newNull
	}
	out := make([]string, len(cols))
	for i, k := range cols {
		out[i] = qi(k) + " is not null"
	}
	return out
}

// nullKeySQL counts the rows of old and of new with a NULL in a key column, which no comparison
// sees; "" when no key column is nullable on either side. A same-table migration's rows are
// counted once, as old's.
func (p *plan) nullKeySQL() string {
	count := func(s side, cols []string) string {
		if len(cols) == 0 || s == newSide && p.same {
			return "0::bigint"
		}
		isNull := make([]string, len(cols))
		for i, k := range cols {
			isNull[i] = qi(k) + " is null"
		}
		return fmt.Sprintf("(select count(*) from %s where %s)", p.rel(s), strings.Join(isNull, " or "))
	}
	if len(p.oldNull) == 0 && (p.same || len(p.newNull) == 0) {
		return ""
	}
	return fmt.Sprintf("select %s, %s", count(oldSide, p.oldNull), count(newSide, p.newNull))
}

// keyList is the key columns, quoted, each with prefix ("o." or "").
func (p *plan) keyList(prefix string) string {
	parts := make([]string, len(p.keys))
	for i, k := range p.keys {
		parts[i] = prefix + qi(k)
	}
	return strings.Join(parts, ", ")
}

// keyText is the key columns as text, each with prefix. The outputs are named k1, k2, ...: named
// after their columns, they would be what an ORDER BY on the key sorts by, as text.
func (p *plan) keyText(prefix string) string {
	parts := make([]string, len(p.keys))
	for i, k := range p.keys {
		parts[i] = fmt.Sprintf("%s%s::text as k%d", prefix, qi(k), i+1)
	}
	return strings.Join(parts, ", ")
}

// exprs lists the write-map expressions (over the old row) of the columns at positions pos.
func (p *plan) exprs(pos []int) []string {
	out := make([]string, len(pos))
	for i, j := range pos {
		out[i] = p.cols[j].Expr
	}
	return out
}

// newCols lists the new columns at positions pos, quoted.
func (p *plan) newCols(pos []int) []string {
	out := make([]string, len(pos))
	for i, j := range pos {
		out[i] = qi(p.cols[j].Name)
	}
	return out
}

func (p *plan) allPos() []int {
	out := make([]int, len(p.cols))
	for i := range out {
		out[i] = i
	}
	return out
}

// colNames names the compared non-key columns, in valPos order.
func (p *plan) colNames() []string {
	out := make([]string, len(p.valPos))
	for i, j := range p.valPos {
		out[i] = p.cols[j].Name
	}
	return out
}

// params collects the arguments of one statement. Every value travels as text and is cast by
// the server to the column's type ($n::text::type): key values are read back as text, and this
// keeps one parameter type whatever the key's type (enum, uuid, timestamptz, domains).
type params struct{ vals []any }

func (a *params) add(v any) string {
	a.vals = append(a.vals, v)
	return fmt.Sprintf("$%d", len(a.vals))
}

// filter renders a WHERE condition over one side's unqualified key columns.
type filter func(s side, a *params) string

// keyRange is the keys k with lo < k <= hi; a nil bound is open. Keys with a NULL belong to no
// range.
type keyRange struct{ lo, hi []string }

func (p *plan) rangeFilter(r keyRange) filter {
	return func(s side, a *params) string {
		tuple := "(" + p.keyList("") + ")"
		var conds []string
		if r.lo != nil {
			conds = append(conds, tuple+" > "+p.tuple(s, r.lo, a))
		}
		if r.hi != nil {
			conds = append(conds, tuple+" <= "+p.tuple(s, r.hi, a))
		}
		// Neither an open bound nor a row comparison leaves out every key with a NULL
		// ((1, NULL) > (0, 5) is true), and such a key can match no row of the other side, nor
		// be a range's bound. Only nullable key columns get the condition, so a NOT NULL key's
		// statements are unchanged.
		conds = append(conds, p.notNull(s)...)
		if len(conds) == 0 {
			return "true"
		}
		return strings.Join(conds, " and ")
	}
}

func (p *plan) tuple(s side, vals []string, a *params) string {
	types := p.keyTypes(s)
	parts := make([]string, len(vals))
	for i, v := range vals {
		parts[i] = a.add(v) + "::text::" + types[i]
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// keySetFilter matches exactly the given keys (each one value per key column, as text).
func (p *plan) keySetFilter(keys [][]string) filter {
	return func(s side, a *params) string {
		types := p.keyTypes(s)
		cols := make([]string, len(p.keys))
		sel := make([]string, len(p.keys))
		args := make([]string, len(p.keys))
		for i := range p.keys {
			column := make([]string, len(keys))
			for j, k := range keys {
				column[j] = k[i]
			}
			cols[i] = fmt.Sprintf("v%d", i+1)
			sel[i] = fmt.Sprintf("u.v%d::%s", i+1, types[i])
			args[i] = a.add(column) + "::text[]"
		}
		return fmt.Sprintf("(%s) in (select %s from unnest(%s) u(%s))",
			p.keyList(""), strings.Join(sel, ", "), strings.Join(args, ", "), strings.Join(cols, ", "))
	}
}

// aggregateSQL: count and hash aggregate of both sides (new table), or count and the number of
// rows whose new columns differ from their expressions (same table).
func (p *plan) aggregateSQL(f filter) (string, []any) {
	var a params
	if p.same {
		return fmt.Sprintf("select count(*), count(*) filter (where %s) from %s where %s",
			p.sameDiffers(), p.rel(oldSide), f(oldSide, &a)), a.vals
	}
	all := p.allPos()
	side := func(s side, cols []string) string {
		return fmt.Sprintf("select count(*) as n, coalesce(sum(hashtextextended(row(%s)::text, 0)), 0)::text as h from %s where %s",
			strings.Join(cols, ", "), p.rel(s), f(s, &a))
	}
	sql := fmt.Sprintf("select o.n, o.h, n.n, n.h from (%s) o, (%s) n", side(oldSide, p.exprs(all)), side(newSide, p.newCols(all)))
	return sql, a.vals
}

// sameDiffers is true for a same-table row whose stored new columns differ from their write-map
// expressions, compared as text like the new-table hashes.
func (p *plan) sameDiffers() string {
	return fmt.Sprintf("row(%s)::text is distinct from row(%s)::text",
		strings.Join(p.exprs(p.valPos), ", "), strings.Join(p.newCols(p.valPos), ", "))
}

// diffSQL lists the differing keys under f: key values as text, present in old, present in new,
// and one flag per compared column (valPos order) telling whether it differs.
func (p *plan) diffSQL(f filter) (string, []any) {
	var a params
	if p.same {
		flags := make([]string, len(p.valPos))
		for i, j := range p.valPos {
			flags[i] = fmt.Sprintf("(%s)::text is distinct from %s::text", p.cols[j].Expr, qi(p.cols[j].Name))
		}
		return fmt.Sprintf("select %s, true, true, %s from %s where %s and %s order by %s",
			p.keyText(""), boolArray(flags), p.rel(oldSide), f(oldSide, &a), p.sameDiffers(), p.keyList("")), a.vals
	}
	alias := func(i int) string { return fmt.Sprintf("c%d", i+1) }
	oldSel := make([]string, len(p.cols))
	newSel := make([]string, len(p.cols))
	for i, c := range p.cols {
		oldSel[i] = c.Expr + " as " + alias(i)
		newSel[i] = qi(c.Name) + " as " + alias(i)
	}
	keyOut := make([]string, len(p.keyPos))
	join := make([]string, len(p.keyPos))
	for i, j := range p.keyPos {
		keyOut[i] = fmt.Sprintf("coalesce(o.%s, n.%s)::text", alias(j), alias(j))
		join[i] = fmt.Sprintf("o.%s = n.%s", alias(j), alias(j))
	}
	flags := make([]string, len(p.valPos))
	oRow := make([]string, len(p.valPos))
	nRow := make([]string, len(p.valPos))
	for i, j := range p.valPos {
		flags[i] = fmt.Sprintf("o.%s::text is distinct from n.%s::text", alias(j), alias(j))
		oRow[i], nRow[i] = "o."+alias(j), "n."+alias(j)
	}
	k0 := alias(p.keyPos[0])
	differs := "false"
	if len(p.valPos) > 0 {
		differs = fmt.Sprintf("row(%s)::text is distinct from row(%s)::text", strings.Join(oRow, ", "), strings.Join(nRow, ", "))
	}
	order := make([]string, len(p.keyPos))
	for i := range order {
		order[i] = fmt.Sprint(i + 1)
	}
	sql := fmt.Sprintf(`select %s, o.%s is not null, n.%s is not null, %s
from (select %s from %s where %s) o
full join (select %s from %s where %s) n on %s
where o.%s is null or n.%s is null or %s
order by %s`,
		strings.Join(keyOut, ", "), k0, k0, boolArray(flags),
		strings.Join(oldSel, ", "), p.rel(oldSide), f(oldSide, &a),
		strings.Join(newSel, ", "), p.rel(newSide), f(newSide, &a), strings.Join(join, " and "),
		k0, k0, differs, strings.Join(order, ", "))
	return sql, a.vals
}

func boolArray(elems []string) string {
	if len(elems) == 0 {
		return "'{}'::boolean[]"
	}
	return "array[" + strings.Join(elems, ", ") + "]"
}

// boundarySQL finds the key n rows after lo (the next range's upper bound) on the old side.
func (p *plan) boundarySQL(lo []string, n int) (string, []any) {
	var a params
	where := p.rangeFilter(keyRange{lo: lo})(oldSide, &a)
	return fmt.Sprintf("select %s from %s where %s order by %s offset %d limit 1",
		p.keyText(""), p.rel(oldSide), where, p.keyList(""), n-1), a.vals
}

// medianSQL finds the key at offset n within range r on side s, where drill-down splits it.
func (p *plan) medianSQL(s side, r keyRange, n int64) (string, []any) {
	var a params
	return fmt.Sprintf("select %s from %s where %s order by %s offset %d limit 1",
		p.keyText(""), p.rel(s), p.rangeFilter(r)(s, &a), p.keyList(""), n), a.vals
}
