package router

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/pgcanary/pgcanary/config"
)

// augment rewrites a write to a same-table migration so that it also sets the columns the other
// shape derives from what it changes (one statement cannot update a row twice, so the mirror
// joins the statement itself):
//
//   - UPDATE: SET gains each derived column, computed with the assigned columns replaced by the
//     values assigned to them (the rest of the expression reads the row as it was).
//   - INSERT: the rows are computed once, in a subquery, and the derived columns from them.
//   - ON CONFLICT DO UPDATE: like UPDATE, the assigned values coming from EXCLUDED.
//
// A write that changes only columns no derived column depends on needs no form (nil, "").
func augment(mig *Migration, stmt *pg_query.Node) (*WriteForm, string) {
	switch s := stmt.Node.(type) {
	case *pg_query.Node_UpdateStmt:
		dir := direction(mig, setNames(s.UpdateStmt.TargetList)) // before the SET list grows
		changed, reason := augmentSet(mig, &s.UpdateStmt.TargetList)
		if reason != "" || !changed {
			return nil, reason
		}
		return &WriteForm{Migration: mig.Name, Direction: dir, Strategy: "augment", Verb: "UPDATE"}, ""
	case *pg_query.Node_InsertStmt:
		ins := s.InsertStmt
		dir := direction(mig, setNames(ins.Cols))
		changed, reason := augmentInsert(mig, ins)
		if reason != "" {
			return nil, reason
		}
		if oc := ins.OnConflictClause; oc != nil && oc.Action == pg_query.OnConflictAction_ONCONFLICT_UPDATE {
			c, reason := augmentSet(mig, &oc.TargetList)
			if reason != "" {
				return nil, reason
			}
			changed = changed || c
		}
		if !changed {
			return nil, ""
		}
		return &WriteForm{Migration: mig.Name, Direction: dir, Strategy: "augment", Verb: "INSERT"}, ""
	}
	return nil, "" // DELETE removes both shapes' columns at once
}

// setNames lists the column names of a SET or insert column list.
func setNames(list []*pg_query.Node) map[string]bool {
	out := map[string]bool{}
	for _, n := range list {
		if rt := n.GetResTarget(); rt != nil {
			out[rt.Name] = true
		}
	}
	return out
}

// direction names which shape a same-table write came from.
func direction(mig *Migration, assigned map[string]bool) string {
	for col := range assigned {
		if _, derived := mig.writeExprs[col]; derived {
			return "reverse"
		}
	}
	return "forward"
}

// derivedFrom returns, for the columns a statement assigns, the map (new columns from old, or old
// from new) whose expressions read them, and the direction; both sides assigned means the client
// already writes both shapes.
func derivedFrom(mig *Migration, assigned map[string]bool) (map[string]*pg_query.Node, bool) {
	writesNew, writesOld := false, false
	for col := range assigned {
		if _, ok := mig.writeExprs[col]; ok {
			writesNew = true
		}
		if _, ok := mig.readExprs[col]; ok {
			writesOld = true
		}
	}
	switch {
	case writesNew && writesOld:
		return nil, false
	case writesNew:
		return mig.readExprs, true // a newer application writes the new columns: derive the old
	default:
		return mig.writeExprs, true
	}
}

// augmentSet adds derived columns to a SET list (UPDATE, or ON CONFLICT DO UPDATE).
func augmentSet(mig *Migration, list *[]*pg_query.Node) (bool, string) {
	assigned := map[string]*pg_query.Node{}
	names := map[string]bool{}
	for _, n := range *list {
		rt := n.GetResTarget()
		if rt == nil || rt.Val.GetMultiAssignRef() != nil {
			return false, ReasonMultiAssignment
		}
		if len(rt.Indirection) > 0 {
			names[rt.Name] = true // a[1] = ... or comp.field = ...: the column changes, unknown how
			continue
		}
		assigned[rt.Name] = rt.Val
		names[rt.Name] = true
	}
	exprs, ok := derivedFrom(mig, names)
	if !ok {
		return false, ""
	}
	changed := false
	for _, col := range slices.Sorted(maps.Keys(exprs)) {
		if names[col] {
			continue // assigned explicitly
		}
		reads := columnsRead(exprs[col])
		touches := false
		for c := range reads {
			if names[c] {
				touches = true
				if _, plain := assigned[c]; !plain {
					return false, ReasonMultiAssignment
				}
				if v := assigned[c]; v.GetSetToDefault() != nil {
					return false, ReasonDefaultValue
				} else if isVolatile(v) {
					return false, ReasonVolatile
				}
			}
		}
		if !touches {
			continue
		}
		// Each assigned value enters the derivation as the column stores it: cast to the column's
		// type, so a parameter gets one type and a float is rounded to numeric(12,2) first.
		typed := map[string]*pg_query.Node{}
		for c, v := range assigned {
			if rc, ok := mig.Catalog.Old.Column(c); ok {
				typed[c] = castTo(proto.Clone(v).(*pg_query.Node), rc.TypeSQL)
			}
		}
		expr := substitute(exprs[col], typed)
		*list = append(*list, &pg_query.Node{Node: &pg_query.Node_ResTarget{ResTarget: &pg_query.ResTarget{Name: col, Val: expr}}})
		changed = true
	}
	return changed, ""
}

// augmentInsert computes derived columns for each inserted row:
//
//	INSERT INTO t (a, b, derived) SELECT pgcanary_v.a, pgcanary_v.b, <expr over pgcanary_v>
//	FROM (<VALUES, cast to the column types, or the original SELECT>) AS pgcanary_v(a, b)
func augmentInsert(mig *Migration, ins *pg_query.InsertStmt) (bool, string) {
	rel := mig.Catalog.Old
	var cols []string
	for _, c := range ins.Cols {
		cols = append(cols, c.GetResTarget().Name)
	}
	sel := ins.SelectStmt.GetSelectStmt()
	if sel == nil {
		return false, "" // INSERT ... DEFAULT VALUES: derived columns take their defaults
	}
	width := len(sel.TargetList)
	if len(sel.ValuesLists) > 0 {
		width = len(sel.ValuesLists[0].GetList().GetItems())
	}
	if len(cols) == 0 { // INSERT INTO t VALUES (...): the first columns in order
		for i := 0; i < width && i < len(rel.Columns); i++ {
			cols = append(cols, rel.Columns[i].Name)
		}
	}
	// A statement Postgres will reject (more values than columns, an unknown column) passes
	// through as it is: the client gets Postgres's own error.
	if width != len(cols) {
		return false, ""
	}
	for _, row := range sel.ValuesLists {
		if len(row.GetList().GetItems()) != len(cols) {
			return false, ""
		}
	}
	names := map[string]bool{}
	for _, c := range cols {
		if _, ok := rel.Column(c); !ok {
			return false, ""
		}
		names[c] = true
	}
	exprs, ok := derivedFrom(mig, names)
	if !ok {
		return false, ""
	}
	var derived []string
	for _, col := range slices.Sorted(maps.Keys(exprs)) {
		if names[col] {
			continue
		}
		for c := range columnsRead(exprs[col]) {
			if !names[c] {
				return false, ReasonColumnNotGiven // its value comes from a default the statement cannot see
			}
		}
		derived = append(derived, col)
	}
	if len(derived) == 0 {
		return false, ""
	}
	if len(sel.ValuesLists) > 0 {
		return augmentValues(mig, ins, sel, cols, derived, exprs)
	}
	return augmentSelect(mig, ins, sel, cols, derived, exprs)
}

// augmentValues adds the derived columns to each VALUES row, computed from that row's own values
// (cast to their columns' types). The client's values stay where they were, assigned as before; a
// value a derivation reads is evaluated twice, so it must not be volatile or DEFAULT.
func augmentValues(mig *Migration, ins *pg_query.InsertStmt, sel *pg_query.SelectStmt, cols, derived []string, exprs map[string]*pg_query.Node) (bool, string) {
	read := map[string]bool{}
	for _, d := range derived {
		for c := range columnsRead(exprs[d]) {
			read[c] = true
		}
	}
	for _, row := range sel.ValuesLists {
		items := row.GetList().GetItems()
		values := map[string]*pg_query.Node{}
		for i, item := range items {
			if !read[cols[i]] {
				continue
			}
			if item.GetSetToDefault() != nil {
				return false, ReasonDefaultValue
			}
			if isVolatile(item) {
				return false, ReasonVolatile
			}
			col, _ := mig.Catalog.Old.Column(cols[i])
			values[cols[i]] = castTo(proto.Clone(item).(*pg_query.Node), col.TypeSQL)
		}
		for _, d := range derived {
			items = append(items, substitute(exprs[d], values))
		}
		row.GetList().Items = items
	}
	setInsertCols(ins, append(cols, derived...))
	return true, ""
}

// augmentSelect computes INSERT ... SELECT rows once, in a subquery, and the derived columns from
// them:
//
//	INSERT INTO t (a, b, derived) SELECT pgcanary_v.a, pgcanary_v.b, <expr over pgcanary_v>
//	FROM (<the client's SELECT, each output cast to its column's type>) AS pgcanary_v(a, b)
//
// The casts keep untyped literals and parameters typed as the columns (in a subquery they would
// resolve to text).
func augmentSelect(mig *Migration, ins *pg_query.InsertStmt, sel *pg_query.SelectStmt, cols, derived []string, exprs map[string]*pg_query.Node) (bool, string) {
	if sel.Op != pg_query.SetOperation_SET_OPERATION_UNDEFINED && sel.Op != pg_query.SetOperation_SETOP_NONE {
		return false, ReasonInsertSelectShape
	}
	for i, t := range sel.TargetList {
		rt := t.GetResTarget()
		if cr := rt.GetVal().GetColumnRef(); cr != nil {
			if names := columnRefNames(cr); names[len(names)-1] == "*" {
				return false, ReasonInsertSelectShape
			}
		}
		col, _ := mig.Catalog.Old.Column(cols[i])
		rt.Val = castTo(rt.Val, col.TypeSQL)
	}
	targets := make([]string, 0, len(cols)+len(derived))
	for _, c := range cols {
		targets = append(targets, valuesRel+"."+ident(c))
	}
	for range derived {
		targets = append(targets, "NULL")
	}
	wrapper := parseStmt(fmt.Sprintf("SELECT %s FROM (SELECT 1) AS %s(%s)", strings.Join(targets, ", "), valuesRel, identList(cols)))
	ws := wrapper.GetSelectStmt()
	ws.FromClause[0].GetRangeSubselect().Subquery = ins.SelectStmt
	refs := map[string]*pg_query.Node{}
	for _, c := range cols {
		refs[c] = columnRef(valuesRel, c)
	}
	for i, col := range derived {
		ws.TargetList[len(cols)+i].GetResTarget().Val = substitute(exprs[col], refs)
	}
	ins.SelectStmt = wrapper
	setInsertCols(ins, append(cols, derived...))
	return true, ""
}

func setInsertCols(ins *pg_query.InsertStmt, cols []string) {
	ins.Cols = nil
	for _, c := range cols {
		ins.Cols = append(ins.Cols, &pg_query.Node{Node: &pg_query.Node_ResTarget{ResTarget: &pg_query.ResTarget{Name: c}}})
	}
}

// castTo wraps an inserted value in a cast to its column's type: moved into a subquery, an
// untyped literal or parameter would otherwise resolve to text.
func castTo(n *pg_query.Node, typeSQL string) *pg_query.Node {
	tc := parseStmt("SELECT NULL::" + typeSQL).GetSelectStmt().TargetList[0].GetResTarget().Val.GetTypeCast()
	tc.Arg = n
	return &pg_query.Node{Node: &pg_query.Node_TypeCast{TypeCast: tc}}
}

func columnRef(parts ...string) *pg_query.Node {
	fields := make([]*pg_query.Node, len(parts))
	for i, p := range parts {
		fields[i] = &pg_query.Node{Node: &pg_query.Node_String_{String_: &pg_query.String{Sval: p}}}
	}
	return &pg_query.Node{Node: &pg_query.Node_ColumnRef{ColumnRef: &pg_query.ColumnRef{Fields: fields}}}
}

// columnsRead lists the unqualified column names an expression reads.
func columnsRead(expr *pg_query.Node) map[string]bool {
	out := map[string]bool{}
	walkNodes(expr, func(n *pg_query.Node) bool {
		if cr := n.GetColumnRef(); cr != nil {
			if names := columnRefNames(cr); len(names) > 0 {
				out[names[len(names)-1]] = true
			}
		}
		return true
	})
	return out
}

// substitute returns a copy of expr with each column reference named in values replaced by a
// copy of its value.
func substitute(expr *pg_query.Node, values map[string]*pg_query.Node) *pg_query.Node {
	out := proto.Clone(expr).(*pg_query.Node)
	walkPruned(out, func(n *pg_query.Node) bool {
		if cr := n.GetColumnRef(); cr != nil {
			names := columnRefNames(cr)
			if v, ok := values[names[len(names)-1]]; ok && len(names) == 1 {
				n.Node = proto.Clone(v).(*pg_query.Node).Node
			}
			return false
		}
		return true
	})
	return out
}

// isVolatile reports whether an expression may change value when evaluated twice in one
// statement. A subquery may: every subquery of a statement reads the same snapshot, which does not
// show the statement's own changes, so it gives the same answer twice unless it calls a volatile
// function or takes rows in no defined order (LIMIT without ORDER BY: a synchronized scan may
// start elsewhere the second time).
func isVolatile(expr *pg_query.Node) bool {
	found := false
	walkNodes(expr, func(n *pg_query.Node) bool {
		switch x := n.Node.(type) {
		case *pg_query.Node_FuncCall:
			name := x.FuncCall.Funcname[len(x.FuncCall.Funcname)-1].GetString_().GetSval()
			found = volatileFunctions[name]
		case *pg_query.Node_SelectStmt:
			found = limitsUnordered(x.SelectStmt)
		}
		return !found
	})
	return found
}

// limitsUnordered reports whether a SELECT takes some of its rows (LIMIT, OFFSET, FETCH FIRST)
// without ORDER BY: which rows is then up to the plan and where scans start.
func limitsUnordered(sel *pg_query.SelectStmt) bool {
	return (sel.LimitCount != nil || sel.LimitOffset != nil) && len(sel.SortClause) == 0
}

// unstable reports why a read's answer may differ between two runs over the same data: a volatile
// function, or a LIMIT without ORDER BY anywhere in it. Comparing its old and new forms would
// report mismatches that are not the migration's ("" when it is stable).
func unstable(stmt *pg_query.Node) string {
	reason := ""
	walkNodes(stmt, func(n *pg_query.Node) bool {
		switch x := n.Node.(type) {
		case *pg_query.Node_FuncCall:
			if volatileFunctions[x.FuncCall.Funcname[len(x.FuncCall.Funcname)-1].GetString_().GetSval()] {
				reason = "volatile_function"
			}
		case *pg_query.Node_SelectStmt:
			if limitsUnordered(x.SelectStmt) {
				reason = "limit_without_order"
			}
		}
		return reason == ""
	})
	return reason
}

// planTruncate adds the other shape of a new-table migration to a TRUNCATE of one shape.
func planTruncate(cat *Catalog, searchPath []string, version int32, stmt *pg_query.Node, tr *pg_query.TruncateStmt, st *StatementPlan) {
	var add []*pg_query.Node
	var migs []string
	dir := "forward"
	for _, r := range tr.Relations {
		rv := r.GetRangeVar()
		if rv == nil {
			continue
		}
		t := resolveTarget(cat, rv, searchPath)
		if t.mig == nil || t.mig.SameTable() || !t.mig.Config.Mirrors() {
			continue
		}
		other := t.mig.Catalog.New
		if t.reverse {
			other = t.mig.Catalog.Old
		}
		if referencedFromOutside(other, tr.Relations, searchPath) {
			st.Migrations = append(st.Migrations, t.mig.Name)
			st.Unmirrored = append(st.Unmirrored, Unrewritten{Migration: t.mig.Name, Reason: ReasonTruncateReferenced})
			return
		}
		if t.reverse {
			dir = "reverse"
		}
		add = append(add, &pg_query.Node{Node: &pg_query.Node_RangeVar{RangeVar: &pg_query.RangeVar{
			Schemaname: other.Schema, Relname: other.Name, Inh: true, Relpersistence: "p"}}})
		migs = append(migs, t.mig.Name)
	}
	if len(add) == 0 {
		return
	}
	tr.Relations = append(tr.Relations, add...)
	out, err := deparse(version, stmt)
	st.Migrations = migs
	if err != nil {
		for _, m := range migs {
			st.Unmirrored = append(st.Unmirrored, Unrewritten{Migration: m, Reason: ReasonDeparse})
		}
		return
	}
	st.Write = &WriteForm{SQL: out, Migration: strings.Join(migs, ","), Direction: dir, Strategy: "truncate", Verb: "TRUNCATE"}
}

// referencedFromOutside reports whether a foreign key from a relation not being truncated points
// at rel: adding rel would make the TRUNCATE fail (or, with CASCADE, empty that relation too).
func referencedFromOutside(rel *config.Relation, list []*pg_query.Node, searchPath []string) bool {
	listed := map[string]bool{}
	for _, r := range list {
		if rv := r.GetRangeVar(); rv != nil {
			if rv.Schemaname != "" {
				listed[rv.Schemaname+"."+rv.Relname] = true
				continue
			}
			for _, s := range searchPath {
				listed[s+"."+rv.Relname] = true // generous: a listed name in any path schema counts
			}
		}
	}
	for _, ref := range rel.ReferencedBy {
		if !listed[ref] {
			return true
		}
	}
	return false
}
