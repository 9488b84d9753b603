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
	reason := ""
	walkNodes(stmt, func(n *pg_query.Node) bool {
		switch x := n.Node.(type) {
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
			}
		}
		return reason == ""
	})
	return reason
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
// before, and every column keeps its old type.
func rewriteRead(refs []reference) {
	for _, r := range refs {
		alias := &pg_query.Alias{Aliasname: r.alias}
		if r.rv.Alias != nil {
			alias = proto.Clone(r.rv.Alias).(*pg_query.Alias)
		}
		sub := proto.Clone(r.mig.projection).(*pg_query.Node)
		r.node.Node = &pg_query.Node_RangeSubselect{RangeSubselect: &pg_query.RangeSubselect{Subquery: sub, Alias: alias}}
	}
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
