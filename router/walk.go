package router

import (
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// walkNodes calls visit for every *pg_query.Node in the tree under root, parents before children.
// visit returns false to stop the walk. Nodes may be changed in place (their oneof replaced).
func walkNodes(root *pg_query.Node, visit func(*pg_query.Node) bool) {
	w := &walker{visit: func(n *pg_query.Node, _ *scope) bool { return visit(n) }}
	w.node(root, nil)
}

// walkPruned is walkNodes where visit returning false skips that node's subtree and goes on.
func walkPruned(root *pg_query.Node, visit func(*pg_query.Node) bool) {
	w := &walker{visit: func(n *pg_query.Node, _ *scope) bool { return visit(n) }, prune: true}
	w.node(root, nil)
}

// scope is the chain of CTE names visible at a point of a statement: a CTE shadows a table of the
// same name within the statement that declares it.
type scope struct {
	names  map[string]bool
	parent *scope
}

func (s *scope) has(name string) bool {
	for ; s != nil; s = s.parent {
		if s.names[name] {
			return true
		}
	}
	return false
}

// walker traverses pg_query trees generically through protobuf reflection, so every node type is
// covered without listing them, and opens a CTE scope at each WITH clause.
type walker struct {
	visit func(*pg_query.Node, *scope) bool
	// target, when set, sees relations named directly rather than through a Node: the targets of
	// INSERT, UPDATE, DELETE and MERGE, and SELECT INTO's new table.
	target  func(*pg_query.RangeVar, *scope)
	prune   bool // visit returning false skips the subtree instead of ending the walk
	stopped bool
}

func (w *walker) node(n *pg_query.Node, sc *scope) {
	if n == nil || w.stopped {
		return
	}
	if !w.visit(n, sc) {
		w.stopped = !w.prune
		return
	}
	if n.Node == nil || n.GetRangeVar() != nil {
		return // a RangeVar holds nothing more to walk; descending would report it again as a target
	}
	w.message(n.ProtoReflect(), sc)
}

// message walks the fields of m; statements with a WITH clause get a new scope first.
func (w *walker) message(m protoreflect.Message, sc *scope) {
	if wc := withClauseOf(m.Interface()); wc != nil {
		sc = w.withScope(wc, sc)
	}
	// Fields are walked in declaration order, which follows Postgres's own structs (a SELECT's
	// target list, FROM, WHERE, ...). protoreflect's Range order is unspecified and, in
	// protobuf-go, differs from one binary to another, so references (and the migrations a plan
	// lists) would come out in another order after a rebuild.
	if n, ok := m.Interface().(*pg_query.Node); ok {
		if fd := m.WhichOneof(m.Descriptor().Oneofs().Get(0)); fd != nil && n.Node != nil {
			w.field(fd, m.Get(fd), sc)
		}
		return
	}
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len() && !w.stopped; i++ {
		if fd := fields.Get(i); m.Has(fd) {
			w.field(fd, m.Get(fd), sc)
		}
	}
}

// field walks one populated field: messages and lists of them.
func (w *walker) field(fd protoreflect.FieldDescriptor, v protoreflect.Value, sc *scope) {
	if fd.Kind() != protoreflect.MessageKind || fd.IsMap() {
		return
	}
	if fd.IsList() {
		l := v.List()
		for i := 0; i < l.Len() && !w.stopped; i++ {
			w.dispatch(l.Get(i).Message(), sc)
		}
		return
	}
	if fd.Name() == "with_clause" {
		return // walked by withScope, with the right visibility per CTE
	}
	w.dispatch(v.Message(), sc)
}

func (w *walker) dispatch(m protoreflect.Message, sc *scope) {
	switch x := m.Interface().(type) {
	case *pg_query.Node:
		w.node(x, sc)
		return
	case *pg_query.RangeVar:
		if w.target != nil {
			w.target(x, sc)
		}
	}
	w.message(m, sc)
}

// withScope walks a WITH clause's CTEs and returns the scope for the statement's body. Without
// RECURSIVE a CTE sees only the CTEs before it; with it, all of them.
func (w *walker) withScope(wc *pg_query.WithClause, parent *scope) *scope {
	all := &scope{names: map[string]bool{}, parent: parent}
	for _, c := range wc.Ctes {
		if cte := c.GetCommonTableExpr(); cte != nil {
			all.names[cte.Ctename] = true
		}
	}
	seen := &scope{names: map[string]bool{}, parent: parent}
	for _, c := range wc.Ctes {
		cte := c.GetCommonTableExpr()
		if cte == nil {
			continue
		}
		visible := seen
		if wc.Recursive {
			visible = all
		}
		w.node(cte.Ctequery, visible)
		seen = &scope{names: copyAdd(seen.names, cte.Ctename), parent: parent}
	}
	return all
}

func copyAdd(m map[string]bool, name string) map[string]bool {
	out := make(map[string]bool, len(m)+1)
	for k := range m {
		out[k] = true
	}
	out[name] = true
	return out
}

func withClauseOf(m any) *pg_query.WithClause {
	switch s := m.(type) {
	case *pg_query.SelectStmt:
		return s.WithClause
	case *pg_query.InsertStmt:
		return s.WithClause
	case *pg_query.UpdateStmt:
		return s.WithClause
	case *pg_query.DeleteStmt:
		return s.WithClause
	case *pg_query.MergeStmt:
		return s.WithClause
	}
	return nil
}

// nodeTypeName is the name of the message inside a Node's oneof, e.g. "CreateStmt".
func nodeTypeName(n *pg_query.Node) string {
	m := n.ProtoReflect()
	od := m.Descriptor().Oneofs().ByName("node")
	if od == nil {
		return ""
	}
	fd := m.WhichOneof(od)
	if fd == nil {
		return ""
	}
	return string(fd.Message().Name())
}
