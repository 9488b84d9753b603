package router

import (
	"slices"
	"strings"

	lru "github.com/hashicorp/golang-lru/v2"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"
)

// Metrics is what the planner reports.
type Metrics interface {
	PlanCacheHit()
	PlanCacheMiss()
	Unrewritten(migration, reason string)
}

// Planner turns SQL text into plans and caches them. It is safe for concurrent use.
type Planner struct {
	cache  *lru.Cache[cacheKey, *Plan]
	shapes *lru.Cache[cacheKey, *shapePlan] // plans of normalized texts (shape.go)
	// instances holds plans made from a shape for one text: a repeated text with constant
	// literals hits here, while a flood of one-off texts churns only this cache, not the others.
	instances *lru.Cache[cacheKey, *Plan]
	metrics   Metrics
}

// cacheKey: the same text can mean other relations under another search_path or user ($user),
// and another generation may migrate other relations.
type cacheKey struct {
	generation int64
	database   string
	searchPath string
	user       string
	sql        string
	// lifted: in the shape cache, how many of the normalized text's parameters are lifted
	// literals. The same shape may have client parameters in their place ("SET a = $1" and
	// "SET a = 'x'" both normalize to "SET a = $1"), and a template holes only lifted ones.
	// Normalize numbers literals after the client's highest parameter, so the count tells which.
	lifted int
}

// NewPlanner returns a planner caching up to size plans.
func NewPlanner(size int, metrics Metrics) (*Planner, error) {
	c, err := lru.New[cacheKey, *Plan](size)
	if err != nil {
		return nil, err
	}
	shapes, err := lru.New[cacheKey, *shapePlan](size)
	if err != nil {
		return nil, err
	}
	instances, err := lru.New[cacheKey, *Plan](size)
	if err != nil {
		return nil, err
	}
	if metrics == nil {
		metrics = nopMetrics{}
	}
	return &Planner{cache: c, shapes: shapes, instances: instances, metrics: metrics}, nil
}

// Plan plans sql for a session with the given search_path setting and user. It never fails:
// SQL it cannot parse or rewrite passes through unchanged (KindOther, no forms).
func (p *Planner) Plan(cat *Catalog, searchPath, user, sql string) *Plan {
	key := cacheKey{generation: cat.Generation, database: cat.Database, searchPath: searchPath, user: user, sql: sql}
	if plan, ok := p.cache.Get(key); ok {
		p.metrics.PlanCacheHit()
		return plan
	}
	if plan, ok := p.instances.Get(key); ok {
		p.metrics.PlanCacheHit()
		return plan
	}
	p.metrics.PlanCacheMiss()
	var plan *Plan
	if cat.mayReference(sql) {
		// A text with literals is planned by its shape and not cached as itself: interpolated
		// values would fill the cache with texts seen once.
		if shaped := p.planByShape(cat, searchPath, user, sql); shaped != nil {
			p.instances.Add(key, shaped)
			return shaped
		}
		plan = build(cat, ParseSearchPath(searchPath, user), sql)
	} else {
		// Nothing migrated is named: the text goes to Postgres as it is, unparsed (a parse and
		// deparse costs far more than relaying; Postgres reports any syntax error itself).
		plan = &Plan{Generation: cat.Generation, Untouched: true, Statements: []*StatementPlan{{Kind: KindOther, SQL: sql}}}
	}
	p.countPlan(plan)
	p.cache.Add(key, plan)
	return plan
}

// countPlan counts a new plan's statements that keep their old form.
func (p *Planner) countPlan(plan *Plan) {
	for _, st := range plan.Statements {
		for _, u := range st.Unrewritten {
			p.metrics.Unrewritten(u.Migration, u.Reason)
		}
		for _, u := range st.Unmirrored {
			p.metrics.Unrewritten(u.Migration, u.Reason)
		}
	}
}

// build plans every statement of sql.
func build(cat *Catalog, searchPath []string, sql string) *Plan {
	plan := &Plan{Generation: cat.Generation}
	tree, err := pg_query.Parse(sql)
	if err != nil {
		// Postgres will report the syntax error itself; the proxy only passes the text on.
		plan.Statements = []*StatementPlan{{Kind: KindOther, SQL: sql}}
		plan.unparsable = true
		return plan
	}
	if len(tree.Stmts) == 0 {
		plan.Statements = []*StatementPlan{{Kind: KindEmpty, SQL: sql}}
		return plan
	}
	for _, raw := range tree.Stmts {
		plan.Statements = append(plan.Statements, planStatement(cat, searchPath, tree.Version, raw, statementText(sql, raw)))
	}
	return plan
}

// statementText is the client's own text of one statement of a multi-statement string.
func statementText(sql string, raw *pg_query.RawStmt) string {
	start := int(raw.StmtLocation)
	end := len(sql)
	if raw.StmtLen > 0 {
		end = start + int(raw.StmtLen)
	}
	if start < 0 || start > end || end > len(sql) {
		return sql
	}
	return strings.TrimSpace(sql[start:end])
}

func planStatement(cat *Catalog, searchPath []string, version int32, raw *pg_query.RawStmt, text string) *StatementPlan {
	st := &StatementPlan{Kind: classify(raw.Stmt), SQL: text}
	if tr := raw.Stmt.GetTruncateStmt(); tr != nil {
		planTruncate(cat, searchPath, version, raw.Stmt, tr, st)
		return st
	}
	if cp := raw.Stmt.GetCopyStmt(); cp != nil && cp.IsFrom && cp.Relation != nil {
		if t := resolveTarget(cat, cp.Relation, searchPath); t.mig != nil && t.mig.Config.Mirrors() {
			st.Migrations = []string{t.mig.Name}
			st.Unmirrored = append(st.Unmirrored, Unrewritten{Migration: t.mig.Name, Reason: ReasonCopy})
		}
		return st
	}
	if ps := raw.Stmt.GetPrepareStmt(); ps != nil && ps.Query != nil && classify(ps.Query) == KindWrite {
		planPrepare(cat, searchPath, version, ps, st)
		return st
	}
	refs := findReferences(raw.Stmt, cat, searchPath)
	if st.Kind == KindWrite {
		planWrite(cat, searchPath, version, raw.Stmt, st)
		st.Migrations = mergeNames(migrationNames(refs), st)
		return st
	}
	if len(refs) == 0 {
		return st
	}
	st.Migrations = migrationNames(refs)
	unrewritten := func(reason string) *StatementPlan {
		for _, m := range st.Migrations {
			st.Unrewritten = append(st.Unrewritten, Unrewritten{Migration: m, Reason: reason})
		}
		return st
	}
	switch st.Kind {
	case KindRead:
	case KindWrite:
		planWrite(cat, searchPath, version, raw.Stmt, st)
		return st
	default:
		return st
	}
	for _, r := range refs {
		if r.mig.projection == nil {
			return unrewritten(ReasonNoProjection)
		}
	}
	if reason := readBlocker(raw.Stmt, refs); reason != "" {
		if reason == ReasonLocking {
			st.Compare = compareWithoutLocks(cat, searchPath, version, raw.Stmt, st.Migrations)
		}
		return unrewritten(reason)
	}
	// Of the client's statement, before the rewrite changes it in place:
	origins, unstableWhy := readOrigins(raw.Stmt, refs), unstable(raw.Stmt)
	if unstableWhy == "" {
		unstableWhy = partialOrder(raw.Stmt, refs)
	}
	// Row order is part of the answer when the ORDER BY tells every row apart; otherwise ties
	// fall as the plan puts them, and the comparison takes the rows as a multiset.
	totalOrder := orderIsTotal(raw.Stmt.GetSelectStmt(), refs)
	if !flattenRead(raw.Stmt, refs) {
		rewriteRead(raw.Stmt, refs)
	}
	out, err := deparse(version, raw.Stmt)
	if err != nil {
		return unrewritten(ReasonDeparse)
	}
	flags := make([]string, len(st.Migrations))
	for i, name := range st.Migrations {
		for _, r := range refs {
			if r.mig.Name == name {
				flags[i] = r.mig.Config.ReadPercentFlag
			}
		}
	}
	ordered := len(raw.Stmt.GetSelectStmt().GetSortClause()) > 0 && totalOrder
	mayFail := false
	var moves []ColumnMove
	seen := map[*Migration]bool{}
	for _, r := range refs {
		mayFail = mayFail || r.mig.readMayFail
		if !seen[r.mig] {
			seen[r.mig] = true
			moves = append(moves, r.mig.moves...)
		}
	}
	st.Read = &ReadForm{SQL: out, Migrations: st.Migrations, Flags: flags, Ordered: ordered, Unstable: unstableWhy,
		Origins: origins, MayFail: mayFail, Moves: moves}
	return st
}

// compareWithoutLocks builds the comparison forms of a locking read (SELECT ... FOR UPDATE),
// which is never routed: both forms without their locking clauses, since a comparison runs read
// only. nil when the read has another blocker.
func compareWithoutLocks(cat *Catalog, searchPath []string, version int32, stmt *pg_query.Node, migrations []string) *ReadForm {
	clone := proto.Clone(stmt).(*pg_query.Node)
	walkNodes(clone, func(n *pg_query.Node) bool {
		if sel := n.GetSelectStmt(); sel != nil {
			sel.LockingClause = nil
		}
		return true
	})
	refs := findReferences(clone, cat, searchPath)
	if len(refs) == 0 || readBlocker(clone, refs) != "" {
		return nil
	}
	for _, r := range refs {
		if r.mig.projection == nil {
			return nil
		}
	}
	old, err := deparse(version, clone)
	if err != nil {
		return nil
	}
	unstableWhy := unstable(clone) // before the rewrite changes it in place
	if unstableWhy == "" {
		unstableWhy = partialOrder(clone, refs)
	}
	totalOrder := orderIsTotal(clone.GetSelectStmt(), refs)
	if !flattenRead(clone, refs) {
		rewriteRead(clone, refs)
	}
	out, err := deparse(version, clone)
	if err != nil {
		return nil
	}
	ordered := len(clone.GetSelectStmt().GetSortClause()) > 0 && totalOrder
	return &ReadForm{SQL: out, OldSQL: old, Migrations: migrations, Ordered: ordered, Unstable: unstableWhy}
}

// planPrepare plans `PREPARE name AS <write>`: the write is planned as if sent alone, and when it
// is mirrored, the PREPARE is sent with the mirrored form in its place, so that every EXECUTE
// changes both shapes. A write that is not mirrored keeps the client's PREPARE, and its reasons.
func planPrepare(cat *Catalog, searchPath []string, version int32, ps *pg_query.PrepareStmt, st *StatementPlan) {
	text, err := deparse(version, ps.Query)
	if err != nil {
		return
	}
	inner := &StatementPlan{Kind: KindWrite, SQL: text}
	refs := findReferences(ps.Query, cat, searchPath)
	planWrite(cat, searchPath, version, ps.Query, inner)
	inner.Migrations = mergeNames(migrationNames(refs), inner)
	st.Migrations, st.Unmirrored = inner.Migrations, inner.Unmirrored
	if inner.Write == nil {
		return
	}
	form, err := pg_query.Parse(inner.Write.SQL)
	if err != nil || len(form.Stmts) != 1 {
		st.Unmirrored = append(st.Unmirrored, Unrewritten{Migration: inner.Write.Migration, Reason: ReasonDeparse})
		return
	}
	prepared := proto.Clone(ps).(*pg_query.PrepareStmt)
	prepared.Query = form.Stmts[0].Stmt
	out, err := deparse(version, &pg_query.Node{Node: &pg_query.Node_PrepareStmt{PrepareStmt: prepared}})
	if err != nil {
		st.Unmirrored = append(st.Unmirrored, Unrewritten{Migration: inner.Write.Migration, Reason: ReasonDeparse})
		return
	}
	st.Prepare = &PreparedWrite{Name: ps.Name, SQL: out, Statement: inner}
}

// ExecutedNames parses sql and returns, per statement, the name of the prepared statement an
// EXECUTE runs ("" for any other statement); nil when sql does not parse.
func ExecutedNames(sql string) []string {
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return nil
	}
	names := make([]string, len(tree.Stmts))
	for i, raw := range tree.Stmts {
		if ex := raw.Stmt.GetExecuteStmt(); ex != nil {
			names[i] = ex.Name
		}
	}
	return names
}

// deparse renders a statement and proves the text parses again: pg_query's deparser has corners
// (an invalid $0 comes out as "?") where the client's own text must be kept instead.
func deparse(version int32, stmt *pg_query.Node) (string, error) {
	out, err := pg_query.Deparse(&pg_query.ParseResult{Version: version, Stmts: []*pg_query.RawStmt{{Stmt: stmt}}})
	if err != nil {
		return "", err
	}
	if _, err := pg_query.Parse(out); err != nil {
		return "", err
	}
	return out, nil
}

type nopMetrics struct{}

func (nopMetrics) PlanCacheHit()                   {}
func (nopMetrics) PlanCacheMiss()                  {}
func (nopMetrics) Unrewritten(migration, r string) {}

// mergeNames adds the migrations a write's form or reasons name to the read references' list.
func mergeNames(names []string, st *StatementPlan) []string {
	add := func(n string) {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	if st.Write != nil {
		add(st.Write.Migration)
	}
	for _, u := range st.Unmirrored {
		add(u.Migration)
	}
	return names
}
