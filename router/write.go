package router

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/pgcanary/pgcanary/config"
)

// WriteForm is a write rewritten so that it also changes the other shape, in the same statement.
type WriteForm struct {
	SQL       string `json:"sql"`
	Migration string `json:"migration"`
	Direction string `json:"direction"` // "forward": a write to the old relation mirrored into the new; "reverse": the other way
	Strategy  string `json:"strategy"`  // "capture" (new table) or "augment" (new columns of the same table)
	// Verb is the client's command (INSERT, UPDATE, DELETE, TRUNCATE): a capture form ends in a
	// SELECT, whose command tag the proxy replaces with "INSERT 0 n", "UPDATE n" or "DELETE n".
	Verb string `json:"verb"`
	// CountOnly: a capture form of a statement without RETURNING yields one row, count(*), that the
	// proxy consumes (RowDescription becomes NoData) and uses for the command tag.
	CountOnly bool `json:"count_only"`
	// Passthrough: the migration's on_mirror_error is passthrough, so when this form fails the
	// proxy re-runs the client's statement alone (and counts it unmirrored).
	Passthrough bool `json:"passthrough"`
}

// Reasons a write to a migrated relation passes through unmirrored (verify and repair close the
// drift it leaves).
const (
	ReasonMerge              = "merge"
	ReasonDataModifyingCTE   = "data_modifying_cte"
	ReasonKeyUpdate          = "key_update"
	ReasonReturningWithJoin  = "returning_with_join"
	ReasonVolatile           = "volatile_expression"
	ReasonDefaultValue       = "default_value"
	ReasonColumnNotGiven     = "write_map_column_not_given"
	ReasonMultiAssignment    = "multi_column_assignment"
	ReasonMapExpression      = "map_expression_invalid"
	ReasonNameClash          = "cte_name_clash"
	ReasonCopy               = "copy_from"
	ReasonInsertSelectShape  = "insert_select_shape"
	ReasonTruncateReferenced = "truncate_referenced_relation"
)

const (
	cteWrite  = "pgcanary_w"
	cteMirror = "pgcanary_m"
	valuesRel = "pgcanary_v"
)

// volatileFunctions change value per call: an expression the proxy would evaluate twice (the
// assigned value, and again inside a derived column) must not contain one.
var volatileFunctions = map[string]bool{
	"random": true, "nextval": true, "setval": true, "gen_random_uuid": true, "uuid_generate_v1": true,
	"uuid_generate_v1mc": true, "uuid_generate_v4": true, "clock_timestamp": true, "timeofday": true,
	"random_normal": true, "currval": true, "lastval": true, "txid_current": true, "pg_sleep": true,
}

// writeTarget is the relation a write statement changes.
type writeTarget struct {
	rv      *pg_query.RangeVar
	mig     *Migration
	reverse bool // the target is the migration's new relation
}

// planWrite fills st with the mirrored form of a write, or the reason it passes through.
func planWrite(cat *Catalog, searchPath []string, version int32, stmt *pg_query.Node, st *StatementPlan) {
	unmirrored := func(mig, reason string) {
		st.Unmirrored = append(st.Unmirrored, Unrewritten{Migration: mig, Reason: reason})
	}
	// Writes hidden in CTEs (of a SELECT or of another write) are not mirrored.
	var target writeTarget
	cteWrites := 0
	w := &walker{visit: func(n *pg_query.Node, _ *scope) bool { return true }}
	w.target = func(rv *pg_query.RangeVar, sc *scope) {
		t := resolveTarget(cat, rv, searchPath)
		if t.mig == nil {
			return
		}
		if target.mig == nil && isTopTarget(stmt, rv) {
			target = t
			return
		}
		cteWrites++
		unmirrored(t.mig.Name, ReasonDataModifyingCTE)
	}
	w.node(stmt, nil)
	if stmt.GetMergeStmt() != nil && target.mig != nil {
		unmirrored(target.mig.Name, ReasonMerge)
		return
	}
	if target.mig == nil || cteWrites > 0 || !target.mig.Config.Mirrors() {
		return
	}
	mig := target.mig
	if mig.exprErr != nil {
		unmirrored(mig.Name, ReasonMapExpression)
		return
	}
	var form *WriteForm
	var reason string
	if mig.SameTable() {
		form, reason = augment(mig, stmt)
	} else {
		form, reason = capture(mig, target, stmt)
	}
	if reason != "" {
		unmirrored(mig.Name, reason)
		return
	}
	if form == nil {
		return // nothing the other shape depends on changed
	}
	out, err := deparse(version, stmt)
	if err != nil {
		unmirrored(mig.Name, ReasonDeparse)
		return
	}
	form.SQL = out
	form.Passthrough = mig.Config.OnMirrorError == "passthrough"
	st.Write = form
}

func resolveTarget(cat *Catalog, rv *pg_query.RangeVar, searchPath []string) writeTarget {
	if mig := cat.resolve(rv.Schemaname, rv.Relname, searchPath); mig != nil {
		return writeTarget{rv: rv, mig: mig}
	}
	if mig := cat.resolveNew(rv.Schemaname, rv.Relname, searchPath); mig != nil {
		return writeTarget{rv: rv, mig: mig, reverse: true}
	}
	return writeTarget{}
}

// isTopTarget reports whether rv is the target of the statement itself (not of a CTE).
func isTopTarget(stmt *pg_query.Node, rv *pg_query.RangeVar) bool {
	switch s := stmt.Node.(type) {
	case *pg_query.Node_InsertStmt:
		return s.InsertStmt.Relation == rv
	case *pg_query.Node_UpdateStmt:
		return s.UpdateStmt.Relation == rv
	case *pg_query.Node_DeleteStmt:
		return s.DeleteStmt.Relation == rv
	case *pg_query.Node_MergeStmt:
		return s.MergeStmt.Relation == rv
	}
	return false
}

// parseStmt parses SQL the planner generated from the catalog and config (never client text).
func parseStmt(sql string) *pg_query.Node {
	tree, err := pg_query.Parse(sql)
	if err != nil || len(tree.Stmts) != 1 {
		panic(fmt.Sprintf("router: generated SQL does not parse: %v\n%s", err, sql))
	}
	return tree.Stmts[0].Stmt
}

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

func identList(cols []string) string {
	out := make([]string, len(cols))
	for i, c := range cols {
		out[i] = ident(c)
	}
	return strings.Join(out, ", ")
}

// capture turns stmt (a write to one shape of a new-table migration) into
//
//	WITH <the statement's own CTEs>,
//	     pgcanary_w AS (<the statement> RETURNING <target>.*),
//	     pgcanary_m AS (<upsert into, or delete from, the other shape, from pgcanary_w>)
//	SELECT <the statement's RETURNING list> | count(*) FROM pgcanary_w
//
// so both shapes change in one statement, and values made by defaults (serial, now(),
// gen_random_uuid()) are copied, not recomputed. It edits stmt in place.
func capture(mig *Migration, t writeTarget, stmt *pg_query.Node) (*WriteForm, string) {
	to := mig.Catalog.New
	exprs, direction := mig.writeExprs, "forward"
	if t.reverse {
		to = mig.Catalog.Old
		exprs, direction = mig.readExprs, "reverse"
	}
	alias := t.rv.Relname
	if t.rv.Alias != nil {
		alias = t.rv.Alias.Aliasname
	}
	key := config.UnquoteAllIdents(mig.Config.Key)
	var with **pg_query.WithClause
	var returning *[]*pg_query.Node
	var verb string
	switch s := stmt.Node.(type) {
	case *pg_query.Node_InsertStmt:
		verb, with, returning = "INSERT", &s.InsertStmt.WithClause, &s.InsertStmt.ReturningList
		if oc := s.InsertStmt.OnConflictClause; oc != nil {
			for _, tgt := range oc.TargetList {
				if rt := tgt.GetResTarget(); rt != nil && slices.Contains(key, rt.Name) {
					return nil, ReasonKeyUpdate
				}
			}
		}
	case *pg_query.Node_UpdateStmt:
		verb, with, returning = "UPDATE", &s.UpdateStmt.WithClause, &s.UpdateStmt.ReturningList
		if len(s.UpdateStmt.FromClause) > 0 && len(*returning) > 0 {
			return nil, ReasonReturningWithJoin
		}
		for _, tgt := range s.UpdateStmt.TargetList {
			rt := tgt.GetResTarget()
			if rt == nil {
				continue
			}
			if tgt.GetMultiAssignRef() != nil || rt.Val.GetMultiAssignRef() != nil {
				return nil, ReasonMultiAssignment
			}
			for _, k := range key {
				if rt.Name == k {
					return nil, ReasonKeyUpdate // the old key's row would stay behind in the other shape
				}
			}
		}
	case *pg_query.Node_DeleteStmt:
		verb, with, returning = "DELETE", &s.DeleteStmt.WithClause, &s.DeleteStmt.ReturningList
		if len(s.DeleteStmt.UsingClause) > 0 && len(*returning) > 0 {
			return nil, ReasonReturningWithJoin
		}
	default:
		return nil, ""
	}
	if reason := returningBlocker(*returning, alias); reason != "" {
		return nil, reason
	}
	hoisted := *with
	*with = nil
	if hoisted != nil {
		for _, c := range hoisted.Ctes {
			if name := c.GetCommonTableExpr().GetCtename(); name == cteWrite || name == cteMirror {
				return nil, ReasonNameClash
			}
		}
	}
	clientReturning := *returning
	*returning = []*pg_query.Node{{Node: &pg_query.Node_ResTarget{ResTarget: &pg_query.ResTarget{
		Val: &pg_query.Node{Node: &pg_query.Node_ColumnRef{ColumnRef: &pg_query.ColumnRef{Fields: []*pg_query.Node{
			{Node: &pg_query.Node_String_{String_: &pg_query.String{Sval: alias}}},
			{Node: &pg_query.Node_AStar{AStar: &pg_query.A_Star{}}},
		}}}},
	}}}}

	// The mirror: generated from the catalog, then the map expressions grafted in.
	var mirror *pg_query.Node
	if verb == "DELETE" {
		mirror = parseStmt(fmt.Sprintf("DELETE FROM %s WHERE (%s) IN (SELECT %s FROM %s)",
			to.QuotedName(), identList(key), identList(key), cteWrite))
	} else {
		var cols, placeholders, updates []string
		for _, col := range to.Columns {
			if _, ok := exprs[col.Name]; !ok {
				continue
			}
			cols = append(cols, col.Name)
			placeholders = append(placeholders, "NULL")
			if !slices.Contains(key, col.Name) {
				updates = append(updates, fmt.Sprintf("%s = EXCLUDED.%s", ident(col.Name), ident(col.Name)))
			}
		}
		conflict := "DO NOTHING"
		if len(updates) > 0 {
			conflict = "DO UPDATE SET " + strings.Join(updates, ", ")
		}
		mirror = parseStmt(fmt.Sprintf("INSERT INTO %s (%s) SELECT %s FROM %s ON CONFLICT (%s) %s",
			to.QuotedName(), identList(cols), strings.Join(placeholders, ", "), cteWrite, identList(key), conflict))
		sel := mirror.GetInsertStmt().SelectStmt.GetSelectStmt()
		for i, col := range cols {
			sel.TargetList[i].GetResTarget().Val = proto.Clone(exprs[col]).(*pg_query.Node)
		}
	}

	var final *pg_query.Node
	countOnly := len(clientReturning) == 0
	if countOnly {
		final = parseStmt("SELECT count(*) FROM " + cteWrite)
	} else {
		final = parseStmt(fmt.Sprintf("SELECT 1 FROM %s AS %s", cteWrite, ident(alias)))
		final.GetSelectStmt().TargetList = clientReturning
	}
	ctes := []*pg_query.Node{}
	recursive := false
	if hoisted != nil {
		ctes, recursive = hoisted.Ctes, hoisted.Recursive
	}
	ctes = append(ctes,
		cte(cteWrite, proto.Clone(stmt).(*pg_query.Node)),
		cte(cteMirror, mirror))
	final.GetSelectStmt().WithClause = &pg_query.WithClause{Ctes: ctes, Recursive: recursive}
	stmt.Node = final.Node
	return &WriteForm{Migration: mig.Name, Direction: direction, Strategy: "capture", Verb: verb, CountOnly: countOnly}, ""
}

// returningBlocker says why a RETURNING list cannot be evaluated over the captured rows: a CTE
// has no system columns, its whole row is a record rather than the table's row type, and a
// schema-qualified column cannot name it.
func returningBlocker(list []*pg_query.Node, alias string) string {
	expanded := map[*pg_query.ColumnRef]bool{}
	for _, t := range list {
		if cr := t.GetResTarget().GetVal().GetColumnRef(); cr != nil {
			expanded[cr] = true
		}
	}
	reason := ""
	for _, t := range list {
		walkNodes(t, func(n *pg_query.Node) bool {
			cr := n.GetColumnRef()
			if cr == nil {
				return true
			}
			names := columnRefNames(cr)
			last := names[len(names)-1]
			switch {
			case systemColumns[last]:
				reason = ReasonSystemColumn
			case len(names) >= 3:
				reason = ReasonQualifiedColumn
			case len(names) == 1 && last == alias:
				reason = ReasonWholeRow
			case last == "*" && len(names) == 2 && !expanded[cr]:
				reason = ReasonWholeRow
			}
			return reason == ""
		})
		if reason != "" {
			return reason
		}
	}
	return ""
}

func cte(name string, query *pg_query.Node) *pg_query.Node {
	return &pg_query.Node{Node: &pg_query.Node_CommonTableExpr{CommonTableExpr: &pg_query.CommonTableExpr{Ctename: name, Ctequery: query}}}
}
