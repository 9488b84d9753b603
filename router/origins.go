package router

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgcanary/pgcanary/config"
)

// ColumnOrigin is where a column of a read's answer comes from, as a RowDescription field
// reports it: the table's OID and the column's number, both zero when it is no table's column.
type ColumnOrigin struct {
	TableOID uint32
	AttNum   int16
}

// ColumnMove is a column a new-table migration copies unchanged: its new relation's column (where
// the new form finds it) and the old relation's (where the client's text does).
type ColumnMove struct {
	New, Old ColumnOrigin
}

// columnMoves lists the columns of a new-table migration that its projection reads unchanged from
// a same-named column of the new relation.
func columnMoves(m *Migration) []ColumnMove {
	mc := m.Catalog
	if m.SameTable() {
		return nil // the same table: its columns are reported as they are
	}
	var out []ColumnMove
	for _, c := range mc.Old.Columns {
		if _, mapped := m.readExprs[c.Name]; mapped && !isPlainCopy(m.readExprs[c.Name], c.Name) {
			continue
		}
		if nc, ok := mc.New.Column(c.Name); ok {
			out = append(out, ColumnMove{New: ColumnOrigin{mc.New.OID, nc.Num}, Old: ColumnOrigin{mc.Old.OID, c.Num}})
		}
	}
	return out
}

// isPlainCopy reports whether a read expression is only the column name itself.
func isPlainCopy(expr *pg_query.Node, name string) bool {
	f := expr.GetColumnRef().GetFields()
	return len(f) == 1 && f[0].GetString_().GetSval() == name
}

// readOrigins returns, for each top-level output column of a read, the old relation's column it
// is a plain reference to: the origin Postgres reports for the client's text. The new form
// reports the new relation's column instead, or none for a read-mapped one, and drivers use the
// origin (JDBC's ResultSetMetaData and updatable result sets look the column up by it). A
// column whose origin pgcanary cannot tell is zero, and keeps what the new form reports; so are
// all columns after a star it cannot expand. nil when no column's origin is known. It must run
// before the rewrite, on the client's statement.
func readOrigins(stmt *pg_query.Node, refs []reference) []ColumnOrigin {
	sel := stmt.GetSelectStmt()
	if sel == nil || sel.Op != pg_query.SetOperation_SETOP_NONE || len(sel.ValuesLists) > 0 {
		return nil
	}
	// The top-level FROM items, in order: a migrated relation's reference, or nil for anything
	// else. Joins that merge columns (USING, NATURAL) or rename them (an alias) end the analysis
	// of stars; plain joins list their sides in order.
	var items []*reference
	mergesColumns := false
	var addItem func(n *pg_query.Node)
	addItem = func(n *pg_query.Node) {
		switch x := n.Node.(type) {
		case *pg_query.Node_RangeVar:
			var ref *reference
			for i := range refs {
				if refs[i].rv == x.RangeVar {
					ref = &refs[i]
				}
			}
			items = append(items, ref)
		case *pg_query.Node_JoinExpr:
			j := x.JoinExpr
			if len(j.UsingClause) > 0 || j.IsNatural || j.Alias != nil {
				mergesColumns = true
			}
			addItem(j.Larg)
			addItem(j.Rarg)
		default:
			items = append(items, nil)
		}
	}
	for _, n := range sel.FromClause {
		addItem(n)
	}
	byAlias := map[string]*reference{}
	var migrated []*reference
	for _, it := range items {
		if it != nil {
			byAlias[it.alias] = it
			migrated = append(migrated, it)
		}
	}
	if len(migrated) == 0 {
		return nil
	}

	var out []ColumnOrigin
	known := false
	origin := func(ref *reference, col string) ColumnOrigin {
		if ref == nil {
			return ColumnOrigin{}
		}
		old := ref.mig.Catalog.Old
		c, ok := old.Column(col)
		if !ok {
			return ColumnOrigin{}
		}
		known = true
		return ColumnOrigin{TableOID: old.OID, AttNum: c.Num}
	}
	expand := func(ref *reference) {
		old := ref.mig.Catalog.Old
		for _, c := range old.Columns {
			out = append(out, ColumnOrigin{TableOID: old.OID, AttNum: c.Num})
		}
		known = known || len(old.Columns) > 0
	}
	for _, t := range sel.TargetList {
		rt := t.GetResTarget()
		if rt == nil {
			return nil
		}
		cr := rt.Val.GetColumnRef()
		if cr == nil {
			out = append(out, ColumnOrigin{})
			continue
		}
		f := cr.Fields
		star := len(f) > 0 && f[len(f)-1].GetAStar() != nil
		switch {
		case star && len(f) == 1:
			// *: every FROM item's columns in order, which only migrated relations' lists give.
			if mergesColumns {
				return finish(out, known)
			}
			for _, it := range items {
				if it == nil {
					return finish(out, known)
				}
				expand(it)
			}
		case star && len(f) == 2:
			ref := byAlias[f[0].GetString_().GetSval()]
			if ref == nil {
				return finish(out, known)
			}
			expand(ref)
		case star:
			return finish(out, known)
		case len(f) == 1:
			// An unqualified name: the one migrated relation of the FROM that has such a column
			// (another relation with one too would make the statement ambiguous, an error).
			col := f[0].GetString_().GetSval()
			var from *reference
			for _, ref := range migrated {
				if _, ok := ref.mig.Catalog.Old.Column(col); ok {
					if from != nil {
						from = nil
						break
					}
					from = ref
				}
			}
			out = append(out, origin(from, col))
		case len(f) == 2:
			out = append(out, origin(byAlias[f[0].GetString_().GetSval()], f[1].GetString_().GetSval()))
		default:
			out = append(out, ColumnOrigin{})
		}
	}
	return finish(out, known)
}

// finish returns origins, or nil when none is known.
func finish(origins []ColumnOrigin, known bool) []ColumnOrigin {
	if !known {
		return nil
	}
	return origins
}

// partialOrder returns why a read that takes some of its rows (LIMIT, OFFSET, DISTINCT ON) may
// take others on another run although it has an ORDER BY: the order does not tell every row
// apart, so ties fall as the plan puts them. "" when the read takes all its rows, or orders a
// single migrated relation by all of its key columns.
func partialOrder(stmt *pg_query.Node, refs []reference) string {
	sel := stmt.GetSelectStmt()
	if sel == nil || len(sel.SortClause) == 0 {
		return ""
	}
	distinctOn := len(sel.DistinctClause) > 0 && sel.DistinctClause[0].GetNode() != nil // not plain DISTINCT
	if sel.LimitCount == nil && sel.LimitOffset == nil && !distinctOn {
		return ""
	}
	if orderIsTotal(sel, refs) {
		return ""
	}
	return "limit_with_partial_order"
}

// orderIsTotal reports whether a SELECT's ORDER BY tells every row apart: its FROM is one
// migrated relation and the ORDER BY names all of that migration's key columns.
func orderIsTotal(sel *pg_query.SelectStmt, refs []reference) bool {
	if sel == nil || len(sel.FromClause) != 1 {
		return false
	}
	rv := sel.FromClause[0].GetRangeVar()
	var ref *reference
	for i := range refs {
		if refs[i].rv == rv {
			ref = &refs[i]
		}
	}
	if rv == nil || ref == nil {
		return false
	}
	ordered := map[string]bool{}
	for _, s := range sel.SortClause {
		cr := s.GetSortBy().GetNode().GetColumnRef()
		if cr == nil {
			continue
		}
		f := cr.Fields
		switch {
		case len(f) == 1:
			ordered[f[0].GetString_().GetSval()] = true
		case len(f) == 2 && f[0].GetString_().GetSval() == ref.alias:
			ordered[f[1].GetString_().GetSval()] = true
		}
	}
	for _, k := range ref.mig.Config.Key {
		if !ordered[config.UnquoteIdent(k)] {
			return false
		}
	}
	return len(ref.mig.Config.Key) > 0
}
