package router

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// A routed read inside a transaction can only fall back to its old form behind a savepoint,
// which costs two statements per read. The savepoint buys something only when the new form can
// fail where the old one would not, on some rows: a read expression that raises for some values
// (a cast of text to numeric, a division, an overflow). A projection built only of column
// references, constants and functions that raise for no value cannot, so its reads go without.

// neverRaising are functions that return a value for every input (NULL included).
var neverRaising = map[string]bool{
	"concat_ws": true, "concat": true, "lower": true, "upper": true, "btrim": true, "ltrim": true,
	"rtrim": true, "initcap": true, "replace": true, "md5": true, "length": true, "char_length": true,
	"octet_length": true,
}

// neverRaisingCasts are the types a cast to never fails for: every value has a text form.
var neverRaisingCasts = map[string]bool{"text": true, "varchar": true}

// projectionMayFail reports whether a migration's projection has an expression that may raise an
// error for some rows.
func projectionMayFail(projection *pg_query.Node) bool {
	for _, t := range projection.GetSelectStmt().GetTargetList() {
		if mayRaise(t.GetResTarget().GetVal()) {
			return true
		}
	}
	return false
}

// mayRaise reports whether evaluating expr may raise an error for some input: anything but the
// node kinds and functions known not to.
func mayRaise(expr *pg_query.Node) bool {
	if expr == nil {
		return false
	}
	switch x := expr.Node.(type) {
	case *pg_query.Node_ColumnRef, *pg_query.Node_AConst:
		return false
	case *pg_query.Node_FuncCall:
		f := x.FuncCall
		name := f.Funcname[len(f.Funcname)-1].GetString_().GetSval()
		if !neverRaising[name] || f.AggStar || f.Over != nil {
			return true
		}
		return anyMayRaise(f.Args)
	case *pg_query.Node_TypeCast:
		names := x.TypeCast.GetTypeName().GetNames()
		if len(names) == 0 || !neverRaisingCasts[names[len(names)-1].GetString_().GetSval()] {
			return true
		}
		return mayRaise(x.TypeCast.Arg)
	case *pg_query.Node_CoalesceExpr:
		return anyMayRaise(x.CoalesceExpr.Args)
	case *pg_query.Node_NullTest:
		return mayRaise(x.NullTest.Arg)
	case *pg_query.Node_BoolExpr:
		return anyMayRaise(x.BoolExpr.Args)
	case *pg_query.Node_AExpr:
		a := x.AExpr
		if a.Kind != pg_query.A_Expr_Kind_AEXPR_NULLIF {
			return true // operators: arithmetic overflows and divides by zero
		}
		return mayRaise(a.Lexpr) || mayRaise(a.Rexpr)
	}
	return true
}

func anyMayRaise(nodes []*pg_query.Node) bool {
	for _, n := range nodes {
		if mayRaise(n) {
			return true
		}
	}
	return false
}
