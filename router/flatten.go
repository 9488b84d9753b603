package router

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
)

// Flattened reads. The general rewrite puts the compatibility projection in place of the old
// relation, as a subquery. Postgres pulls such a subquery up into the outer query anyway, but it
// parses, analyses and pulls it up again at every execution of an unnamed statement, which cost
// 5-25 % of the throughput of short single-row reads (bench/routing.sh, simple and extended
// protocol). For the most common shape, a SELECT over one migrated relation and nothing else, the
// planner does that pull-up itself: each column reference is replaced by its read expression, cast
// to the old type, and the relation by the new one:
//
//	SELECT full_name FROM users WHERE id = $1
//	→ SELECT concat_ws(' ', first_name, last_name)::text AS full_name FROM public.users_v2 users WHERE id = $1
//
// It is exactly Postgres's own pull-up, so it is done only where Postgres would do it (no
// volatile or set-returning read expression: the read expression must be built from known
// functions) and where names resolve the same way in both texts. Anything else keeps the
// subquery form.

// flatColumns are a migration's read expressions usable inline: old column → `(expr)::old type`.
// all is true when every old column has one (a `*` can be expanded).
type flatColumns struct {
	cols   map[string]*pg_query.Node
	all    bool
	newRel *pg_query.RangeVar
	// newCols are the new relation's columns: a name the flat text leaves alone must not be one.
	newCols map[string]bool
	// order is the old columns in attribute order, for `*`.
	order []string
}

// buildFlatColumns picks the projection's columns whose expressions can be inlined.
func buildFlatColumns(projection *pg_query.Node, newCols []string) *flatColumns {
	sel := projection.GetSelectStmt()
	if sel == nil || len(sel.FromClause) != 1 || sel.FromClause[0].GetRangeVar() == nil {
		return nil
	}
	f := &flatColumns{cols: map[string]*pg_query.Node{}, all: true, newRel: sel.FromClause[0].GetRangeVar(), newCols: map[string]bool{}}
	for _, c := range newCols {
		f.newCols[c] = true
	}
	for _, t := range sel.TargetList {
		rt := t.GetResTarget()
		f.order = append(f.order, rt.GetName())
		if inlinable(rt.GetVal()) {
			f.cols[rt.GetName()] = rt.GetVal()
		} else {
			f.all = false
		}
	}
	return f
}

// inlinable reports whether an expression can be copied into the outer query as Postgres's
// pull-up would: made only of the new row's unqualified columns, constants, operators, casts,
// conditionals and functions known to be neither volatile nor set-returning.
func inlinable(expr *pg_query.Node) bool {
	ok := expr != nil
	walkNodes(expr, func(n *pg_query.Node) bool {
		switch x := n.Node.(type) {
		case *pg_query.Node_ColumnRef:
			ok = len(x.ColumnRef.Fields) == 1 && x.ColumnRef.Fields[0].GetString_() != nil
		case *pg_query.Node_FuncCall:
			ok = inlinableCall(x.FuncCall)
		case *pg_query.Node_TypeCast, *pg_query.Node_AConst, *pg_query.Node_AExpr, *pg_query.Node_BoolExpr,
			*pg_query.Node_NullTest, *pg_query.Node_BooleanTest, *pg_query.Node_CaseExpr, *pg_query.Node_CaseWhen,
			*pg_query.Node_CoalesceExpr, *pg_query.Node_MinMaxExpr, *pg_query.Node_AArrayExpr,
			*pg_query.Node_CollateClause, *pg_query.Node_AIndirection, *pg_query.Node_AIndices,
			*pg_query.Node_String_, *pg_query.Node_Integer, *pg_query.Node_Float, *pg_query.Node_Boolean,
			*pg_query.Node_List:
		default:
			ok = false
		}
		return ok
	})
	return ok
}

// inlinableFunctions are built-in functions that are immutable or stable and return one value:
// Postgres pulls up a subquery whose select list calls them. Anything else (a user's function, a
// volatile or set-returning one) keeps the subquery form.
var inlinableFunctions = map[string]bool{
	"concat": true, "concat_ws": true, "lower": true, "upper": true, "initcap": true, "btrim": true,
	"ltrim": true, "rtrim": true, "substring": true, "substr": true, "split_part": true, "replace": true,
	"translate": true, "left": true, "right": true, "lpad": true, "rpad": true, "length": true,
	"char_length": true, "octet_length": true, "strpos": true, "position": true, "reverse": true,
	"repeat": true, "md5": true, "format": true, "to_char": true, "to_date": true, "to_timestamp": true,
	"to_number": true, "date_trunc": true, "date_part": true, "extract": true, "make_date": true,
	"make_time": true, "make_timestamp": true, "make_timestamptz": true, "make_interval": true,
	"timezone": true, "abs": true, "round": true, "trunc": true, "floor": true, "ceil": true,
	"ceiling": true, "mod": true, "div": true, "sign": true, "nullif": true, "jsonb_build_object": true,
	"json_build_object": true, "jsonb_build_array": true, "json_build_array": true, "to_jsonb": true,
	"to_json": true, "jsonb_extract_path": true, "jsonb_extract_path_text": true,
	"json_extract_path": true, "json_extract_path_text": true, "jsonb_set": true,
	"jsonb_strip_nulls": true, "array_to_string": true, "string_to_array": true, "array_length": true,
	"cardinality": true, "array_append": true, "array_prepend": true, "array_cat": true,
	"array_remove": true, "array_replace": true, "regexp_replace": true, "regexp_match": true,
	"encode": true, "decode": true, "quote_ident": true, "quote_literal": true, "quote_nullable": true,
	"bool": true, "int2": true, "int4": true, "int8": true, "float4": true, "float8": true,
	"numeric": true, "text": true, "varchar": true, "date": true, "timestamptz": true, "timestamp": true,
}

func inlinableCall(fc *pg_query.FuncCall) bool {
	if fc.Over != nil || fc.AggStar || fc.AggDistinct || fc.AggFilter != nil || len(fc.AggOrder) > 0 || fc.AggWithinGroup {
		return false
	}
	switch len(fc.Funcname) {
	case 1:
	case 2:
		if fc.Funcname[0].GetString_().GetSval() != "pg_catalog" {
			return false
		}
	default:
		return false
	}
	return inlinableFunctions[fc.Funcname[len(fc.Funcname)-1].GetString_().GetSval()]
}

// flattenRead rewrites a read over a single migrated relation in place, inlining the read
// expressions. It reports false, leaving stmt as it was, when the read is not one whose flat form
// is sure to mean the same; the caller then uses the subquery form.
func flattenRead(stmt *pg_query.Node, refs []reference) bool {
	sel := stmt.GetSelectStmt()
	if sel == nil || len(refs) != 1 || sel.Op != pg_query.SetOperation_SETOP_NONE || sel.WithClause != nil ||
		sel.IntoClause != nil || len(sel.ValuesLists) > 0 || len(sel.FromClause) != 1 || sel.FromClause[0] != refs[0].node {
		return false
	}
	r := refs[0]
	f := r.mig.flat
	if f == nil || r.rv.Alias != nil && len(r.rv.Alias.Colnames) > 0 {
		return false
	}
	// Anything that opens another query level or another relation: its names could reach the
	// flattened relation from inside (correlation) or resolve against another relation.
	nested := false
	walkNodes(stmt, func(n *pg_query.Node) bool {
		switch n.Node.(type) {
		case *pg_query.Node_SubLink, *pg_query.Node_RangeSubselect, *pg_query.Node_RangeFunction,
			*pg_query.Node_JoinExpr, *pg_query.Node_RangeTableFunc, *pg_query.Node_CommonTableExpr,
			*pg_query.Node_RangeTableSample, *pg_query.Node_LockingClause:
			nested = true
		}
		return !nested
	})
	if nested {
		return false
	}

	c := proto.Clone(stmt).(*pg_query.Node)
	sel = c.GetSelectStmt()
	isStar := func(cr *pg_query.ColumnRef) bool {
		names := columnRefNames(cr)
		return len(names) == 1 && names[0] == "*" || len(names) == 2 && names[0] == r.alias && names[1] == "*"
	}

	// The select list's output names, as Postgres figures them; a name that came from a column
	// reference is written out, because the reference is about to become an expression. (c is a
	// copy: changes made before a check fails are dropped with it.)
	var outputs []string
	skip := map[*pg_query.ColumnRef]bool{}
	for _, t := range sel.TargetList {
		rt := t.GetResTarget()
		if cr := rt.GetVal().GetColumnRef(); cr != nil && isStar(cr) {
			if !f.all {
				return false
			}
			outputs = append(outputs, f.order...)
			skip[cr] = true
			continue
		}
		if rt.GetName() != "" {
			outputs = append(outputs, rt.GetName())
			continue
		}
		name, _, fromColumn, ok := figureName(rt.GetVal())
		if !ok {
			return false
		}
		outputs = append(outputs, name)
		if fromColumn {
			rt.Name = name
		}
	}
	isOutput := func(name string) bool {
		for _, o := range outputs {
			if o == name {
				return true
			}
		}
		return false
	}
	// A bare name at the top of an ORDER BY or DISTINCT ON item means the output column of that
	// name first; in GROUP BY, an input column first. Such a name stays as it is when it means an
	// output column, which the flat text keeps under the same name.
	bare := func(n *pg_query.Node) (*pg_query.ColumnRef, string) {
		cr := n.GetColumnRef()
		if cr == nil {
			return nil, ""
		}
		if names := columnRefNames(cr); len(names) == 1 && names[0] != "*" {
			return cr, names[0]
		}
		return nil, ""
	}
	for _, s := range sel.SortClause {
		if cr, name := bare(s.GetSortBy().GetNode()); cr != nil && isOutput(name) {
			skip[cr] = true
		}
	}
	for _, d := range sel.DistinctClause {
		if cr, name := bare(d); cr != nil && isOutput(name) {
			skip[cr] = true
		}
	}
	for _, g := range sel.GroupClause {
		if cr, name := bare(g); cr != nil && !r.mig.oldCols[name] && isOutput(name) {
			if f.newCols[name] {
				return false // in the flat text the new relation's column would win
			}
			skip[cr] = true
		}
	}

	// Every other column reference must name an old column of the relation, and be inlinable.
	type site struct {
		n   *pg_query.Node
		col string
	}
	var sites []site
	ok := true
	walkNodes(c, func(n *pg_query.Node) bool {
		cr := n.GetColumnRef()
		if cr == nil || skip[cr] {
			return true
		}
		var col string
		switch names := columnRefNames(cr); {
		case len(names) == 1:
			col = names[0]
		case len(names) == 2 && names[0] == r.alias:
			col = names[1]
		}
		if !r.mig.oldCols[col] || f.cols[col] == nil {
			ok = false
		}
		sites = append(sites, site{n, col})
		return ok
	})
	if !ok {
		return false
	}

	for _, s := range sites {
		s.n.Node = proto.Clone(f.cols[s.col]).(*pg_query.Node).Node
	}
	var targets []*pg_query.Node
	for _, t := range sel.TargetList {
		if cr := t.GetResTarget().GetVal().GetColumnRef(); cr != nil && skip[cr] && isStar(cr) {
			for _, col := range f.order {
				targets = append(targets, &pg_query.Node{Node: &pg_query.Node_ResTarget{ResTarget: &pg_query.ResTarget{
					Name: col, Val: proto.Clone(f.cols[col]).(*pg_query.Node),
				}}})
			}
			continue
		}
		targets = append(targets, t)
	}
	for _, t := range targets {
		// A column read as itself names its output already: `email`, not `email AS email`.
		rt := t.GetResTarget()
		if cr := rt.GetVal().GetColumnRef(); cr != nil {
			if names := columnRefNames(cr); len(names) == 1 && names[0] == rt.GetName() {
				rt.Name = ""
			}
		}
	}
	sel.TargetList = targets
	rel := proto.Clone(f.newRel).(*pg_query.RangeVar)
	rel.Alias = &pg_query.Alias{Aliasname: r.alias}
	sel.FromClause[0] = &pg_query.Node{Node: &pg_query.Node_RangeVar{RangeVar: rel}}
	stmt.Node = c.Node
	return true
}

// figureName is Postgres's FigureColname for the expressions it knows: the output name of an
// unnamed select-list entry, its strength (2 a real name, 1 a type or keyword, 0 "?column?"), and
// whether the name came from a column reference. ok is false for an expression it does not know.
func figureName(n *pg_query.Node) (name string, strength int, fromColumn, ok bool) {
	switch x := n.GetNode().(type) {
	case *pg_query.Node_ColumnRef:
		names := columnRefNames(x.ColumnRef)
		if len(names) == 0 || names[len(names)-1] == "*" {
			return "", 0, false, false
		}
		return names[len(names)-1], 2, true, true
	case *pg_query.Node_AIndirection:
		for i := len(x.AIndirection.Indirection) - 1; i >= 0; i-- {
			if s := x.AIndirection.Indirection[i].GetString_(); s != nil {
				return s.Sval, 2, false, true
			}
		}
		return figureName(x.AIndirection.Arg)
	case *pg_query.Node_FuncCall:
		fn := x.FuncCall.Funcname
		if len(fn) == 0 {
			return "", 0, false, false
		}
		return fn[len(fn)-1].GetString_().GetSval(), 2, false, true
	case *pg_query.Node_TypeCast:
		name, strength, fromColumn, ok := figureName(x.TypeCast.Arg)
		if !ok {
			return "", 0, false, false
		}
		if tn := x.TypeCast.TypeName; strength <= 1 && tn != nil && len(tn.Names) > 0 {
			return tn.Names[len(tn.Names)-1].GetString_().GetSval(), 1, false, true
		}
		return name, strength, fromColumn, true
	case *pg_query.Node_CollateClause:
		return figureName(x.CollateClause.Arg)
	case *pg_query.Node_CaseExpr:
		if d := x.CaseExpr.Defresult; d != nil {
			name, strength, fromColumn, ok := figureName(d)
			if !ok {
				return "", 0, false, false
			}
			if strength > 1 {
				return name, strength, fromColumn, true
			}
		}
		return "case", 1, false, true
	case *pg_query.Node_AExpr:
		if x.AExpr.Kind == pg_query.A_Expr_Kind_AEXPR_NULLIF {
			return "nullif", 2, false, true
		}
		return "?column?", 0, false, true
	case *pg_query.Node_AConst, *pg_query.Node_BoolExpr, *pg_query.Node_NullTest, *pg_query.Node_BooleanTest,
		*pg_query.Node_ParamRef:
		return "?column?", 0, false, true
	case *pg_query.Node_CoalesceExpr:
		return "coalesce", 2, false, true
	case *pg_query.Node_MinMaxExpr:
		if x.MinMaxExpr.Op == pg_query.MinMaxOp_IS_GREATEST {
			return "greatest", 2, false, true
		}
		return "least", 2, false, true
	case *pg_query.Node_AArrayExpr:
		return "array", 2, false, true
	case *pg_query.Node_RowExpr:
		return "row", 2, false, true
	}
	return "", 0, false, false
}
