package router

import (
	"slices"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
)

// systemColumns exist on every table but not on a subquery: a statement naming one keeps its old
// form.
var systemColumns = map[string]bool{"ctid": true, "xmin": true, "xmax": true, "cmin": true, "cmax": true, "tableoid": true}

// reference is one place a statement names a migrated old relation.
type reference struct {
	node  *pg_query.Node // the RangeVar's Node wrapper, replaced in place by the rewrite; nil for a write target
	rv    *pg_query.RangeVar
	mig   *Migration
	alias string // the name the statement's columns use for it
}

// findReferences lists the statement's references to migrated old relations, honouring CTE
// shadowing and the search_path.
func findReferences(stmt *pg_query.Node, cat *Catalog, searchPath []string) []reference {
	var refs []reference
	add := func(n *pg_query.Node, rv *pg_query.RangeVar, sc *scope) {
		if rv.Schemaname == "" && sc.has(rv.Relname) {
			return // a CTE of that name
		}
		if mig := cat.resolve(rv.Schemaname, rv.Relname, searchPath); mig != nil {
			alias := rv.Relname
			if rv.Alias != nil {
				alias = rv.Alias.Aliasname
			}
			refs = append(refs, reference{node: n, rv: rv, mig: mig, alias: alias})
		}
	}
	w := &walker{
		visit: func(n *pg_query.Node, sc *scope) bool {
			if rv := n.GetRangeVar(); rv != nil {
				add(n, rv, sc)
			}
			return true
		},
		target: func(rv *pg_query.RangeVar, sc *scope) {
			if rv.Schemaname == "" && sc.has(rv.Relname) {
				return
			}
			add(nil, rv, nil) // a write target: a CTE cannot be one, so no scope applies
		},
	}
	w.node(stmt, nil)
	return refs
}

// readBlocker returns why a read touching refs cannot be served by the new shape, or "".
func readBlocker(stmt *pg_query.Node, refs []reference) string {
	aliases := map[string]*Migration{}
	for _, r := range refs {
		aliases[r.alias] = r.mig
	}
	// `alias.*` as a select-list entry expands to the columns, which the projection reproduces.
	// Anywhere else it is the whole row as one value, typed as the table's row type: a subquery's
	// row is an anonymous record (pg_typeof, array_agg, column aliases in row_to_json all show it).
	expanded := map[*pg_query.ColumnRef]bool{}
	walkNodes(stmt, func(n *pg_query.Node) bool {
		if sel := n.GetSelectStmt(); sel != nil {
			for _, t := range sel.TargetList {
				if cr := t.GetResTarget().GetVal().GetColumnRef(); cr != nil {
					expanded[cr] = true
				}
			}
		}
		return true
	})
	reason := ""
	walkNodes(stmt, func(n *pg_query.Node) bool {
		switch x := n.Node.(type) {
		case *pg_query.Node_SelectStmt:
			if groupsByKey(x.SelectStmt, refs) {
				reason = ReasonGroupByKey
			}
		case *pg_query.Node_LockingClause:
			reason = ReasonLocking
		case *pg_query.Node_RangeTableSample:
			if rv := x.RangeTableSample.Relation.GetRangeVar(); rv != nil {
				for _, r := range refs {
					if r.rv == rv {
						reason = ReasonTableSample
					}
				}
			}
		case *pg_query.Node_ColumnRef:
			names := columnRefNames(x.ColumnRef)
			if len(names) == 0 {
				return true
			}
			last := names[len(names)-1]
			switch {
			case systemColumns[last]:
				reason = ReasonSystemColumn
			case len(names) == 1:
				// A bare name that is no column of the old relation but is its alias: the whole row,
				// whose type (the table's composite type) a subquery cannot reproduce.
				if mig, ok := aliases[last]; ok && !mig.oldCols[last] {
					reason = ReasonWholeRow
				}
			case len(names) >= 3:
				if _, ok := aliases[names[len(names)-2]]; ok {
					reason = ReasonQualifiedColumn
				}
			case last == "*" && !expanded[x.ColumnRef]:
				if _, ok := aliases[names[0]]; ok {
					reason = ReasonWholeRow
				}
			}
		}
		return reason == ""
	})
	return reason
}

// groupsByKey reports whether sel groups by every primary-key column of a migrated reference and
// uses another column of it ungrouped. Postgres allows that for a table (the other columns depend
// functionally on the primary key); a subquery has no primary key, so the rewrite would fail.
func groupsByKey(sel *pg_query.SelectStmt, refs []reference) bool {
	if len(sel.GroupClause) == 0 {
		return false
	}
	grouped := map[[2]string]bool{} // {qualifier, column}; qualifier "" when unqualified
	for _, g := range sel.GroupClause {
		if cr := g.GetColumnRef(); cr != nil {
			switch names := columnRefNames(cr); len(names) {
			case 1:
				grouped[[2]string{"", names[0]}] = true
			case 2:
				grouped[[2]string{names[0], names[1]}] = true
			}
		}
	}
	isGrouped := func(r reference, col string) bool {
		return grouped[[2]string{r.alias, col}] || grouped[[2]string{"", col}]
	}
	for _, r := range refs {
		pk := r.mig.Catalog.Old.PrimaryKey
		if len(pk) == 0 || !allOf(pk, func(col string) bool { return isGrouped(r, col) }) {
			continue
		}
		if usesUngrouped(sel, r, isGrouped) {
			return true
		}
	}
	return false
}

// usesUngrouped reports whether sel's output, HAVING or ORDER BY names a column of r that is not
// grouped, outside aggregate calls and subqueries.
func usesUngrouped(sel *pg_query.SelectStmt, r reference, isGrouped func(reference, string) bool) bool {
	found := false
	visit := func(n *pg_query.Node) bool {
		switch x := n.Node.(type) {
		case *pg_query.Node_SubLink, *pg_query.Node_RangeSubselect:
			return false // another query level
		case *pg_query.Node_FuncCall:
			if isAggregateCall(x.FuncCall) {
				return false
			}
		case *pg_query.Node_ColumnRef:
			names := columnRefNames(x.ColumnRef)
			var col string
			switch {
			case len(names) == 2 && names[0] == r.alias:
				col = names[1]
			case len(names) == 1 && r.mig.oldCols[names[0]]:
				col = names[0]
			}
			if col == "*" || (col != "" && !isGrouped(r, col)) {
				found = true
			}
		}
		return !found
	}
	for _, list := range [][]*pg_query.Node{sel.TargetList, sel.SortClause, {sel.HavingClause}} {
		for _, n := range list {
			walkPruned(n, visit)
		}
	}
	return found
}

// aggregates are the built-in aggregate functions; a call with an aggregate-only clause (ORDER BY
// inside, FILTER, DISTINCT, *, WITHIN GROUP) is one whatever its name. An unknown aggregate is
// taken for a plain function: the read is then declined, never wrongly rewritten.
var aggregates = map[string]bool{
	"count": true, "sum": true, "avg": true, "min": true, "max": true, "array_agg": true, "string_agg": true,
	"bool_and": true, "bool_or": true, "every": true, "bit_and": true, "bit_or": true, "bit_xor": true,
	"json_agg": true, "jsonb_agg": true, "json_object_agg": true, "jsonb_object_agg": true, "xmlagg": true,
	"stddev": true, "stddev_pop": true, "stddev_samp": true, "variance": true, "var_pop": true, "var_samp": true,
	"corr": true, "covar_pop": true, "covar_samp": true, "regr_avgx": true, "regr_avgy": true, "regr_count": true,
	"regr_intercept": true, "regr_r2": true, "regr_slope": true, "regr_sxx": true, "regr_sxy": true, "regr_syy": true,
	"percentile_cont": true, "percentile_disc": true, "mode": true, "range_agg": true, "range_intersect_agg": true,
}

func isAggregateCall(fc *pg_query.FuncCall) bool {
	if fc.Over != nil {
		return false // a window function: its arguments follow the grouping rules
	}
	if fc.AggStar || fc.AggDistinct || fc.AggFilter != nil || len(fc.AggOrder) > 0 || fc.AggWithinGroup {
		return true
	}
	if len(fc.Funcname) == 0 {
		return false
	}
	name := fc.Funcname[len(fc.Funcname)-1].GetString_().GetSval()
	return aggregates[name]
}

func allOf(items []string, ok func(string) bool) bool {
	for _, it := range items {
		if !ok(it) {
			return false
		}
	}
	return true
}

// columnRefNames returns a column reference's name parts, "*" for a star.
func columnRefNames(cr *pg_query.ColumnRef) []string {
	out := make([]string, 0, len(cr.Fields))
	for _, f := range cr.Fields {
		switch {
		case f.GetString_() != nil:
			out = append(out, f.GetString_().Sval)
		case f.GetAStar() != nil:
			out = append(out, "*")
		}
	}
	return out
}

// rewriteRead replaces each reference with its migration's compatibility projection under the
// reference's own alias (column aliases included), so names, `*` and qualified columns resolve as
// before, and every column keeps its old type. When the statement cannot expand the reference
// (no `*` that could reach it, no column aliases, no NATURAL join), the projection keeps only the
// columns the statement names: less for Postgres to parse and plan at every execution of an
// unnamed statement, and no read expression computed for a column nobody reads.
func rewriteRead(stmt *pg_query.Node, refs []reference) {
	needed, all := referencedColumns(stmt)
	for _, r := range refs {
		alias := &pg_query.Alias{Aliasname: r.alias}
		if r.rv.Alias != nil {
			alias = proto.Clone(r.rv.Alias).(*pg_query.Alias)
		}
		sub := proto.Clone(r.mig.projection).(*pg_query.Node)
		if !all && (r.rv.Alias == nil || len(r.rv.Alias.Colnames) == 0) {
			prune(sub.GetSelectStmt(), needed[r.alias], needed[""])
		}
		r.node.Node = &pg_query.Node_RangeSubselect{RangeSubselect: &pg_query.RangeSubselect{Subquery: sub, Alias: alias}}
	}
}

// referencedColumns collects the column names a statement uses, by qualifier ("" for unqualified
// names and USING lists). all is true when something may expand a whole relation: a `*` of any
// kind, or a NATURAL join.
func referencedColumns(stmt *pg_query.Node) (map[string]map[string]bool, bool) {
	needed := map[string]map[string]bool{}
	add := func(qual, col string) {
		if needed[qual] == nil {
			needed[qual] = map[string]bool{}
		}
		needed[qual][col] = true
	}
	all := false
	walkNodes(stmt, func(n *pg_query.Node) bool {
		switch x := n.Node.(type) {
		case *pg_query.Node_ColumnRef:
			names := columnRefNames(x.ColumnRef)
			switch {
			case len(names) == 0:
			case names[len(names)-1] == "*":
				all = true
			case len(names) == 1:
				add("", names[0])
			default:
				add(names[len(names)-2], names[len(names)-1])
			}
		case *pg_query.Node_JoinExpr:
			if x.JoinExpr.IsNatural {
				all = true
			}
			for _, u := range x.JoinExpr.UsingClause {
				add("", u.GetString_().GetSval())
			}
		}
		return !all
	})
	return needed, all
}

// prune drops the projection's columns that neither qualified nor unqualified names reach.
func prune(sel *pg_query.SelectStmt, qualified, unqualified map[string]bool) {
	kept := sel.TargetList[:0]
	for _, t := range sel.TargetList {
		name := t.GetResTarget().GetName()
		if qualified[name] || unqualified[name] {
			kept = append(kept, t)
		}
	}
	if len(kept) == 0 {
		// Nothing named (SELECT count(*) FROM users): keep one cheap column so the subquery
		// still yields the relation's rows.
		kept = append(kept, sel.TargetList[0])
	}
	sel.TargetList = kept
}

func migrationNames(refs []reference) []string {
	var out []string
	for _, r := range refs {
		if !slices.Contains(out, r.mig.Name) {
			out = append(out, r.mig.Name)
		}
	}
	return out
}
