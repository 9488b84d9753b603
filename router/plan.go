package router

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Kind classifies a statement.
type Kind uint8

const (
	KindOther       Kind = iota // SET, SHOW, LISTEN, COPY, EXPLAIN, unparsable SQL, ...
	KindRead                    // a SELECT (or VALUES, TABLE) without side effects
	KindWrite                   // INSERT, UPDATE, DELETE, MERGE, or a data-modifying CTE
	KindDDL                     // CREATE, ALTER, DROP, SELECT INTO, TRUNCATE, ...
	KindTransaction             // BEGIN, COMMIT, ROLLBACK, SAVEPOINT, ...
	KindEmpty                   // an empty query string
)

func (k Kind) String() string {
	return [...]string{"other", "read", "write", "ddl", "transaction", "empty"}[k]
}

// Plan is the planner's answer for one query string: one statement plan per statement, in order.
type Plan struct {
	Generation int64
	// Untouched: the text names no migrated relation, so it was not parsed; Statements then holds
	// the whole text as one statement of unknown kind.
	Untouched  bool
	Statements []*StatementPlan
	// unparsable: the parser rejected the text. A normalized text can be unparsable where the
	// client's is not (DO $1), so such a plan is no shape for other texts (planByShape).
	unparsable bool
}

// StatementPlan says what one statement is and the forms it can be sent in.
type StatementPlan struct {
	Kind Kind
	// SQL is the statement as the client wrote it: the old form is always the client's own text.
	SQL string
	// Migrations lists the migrations whose old relation the statement references.
	Migrations []string
	// Read is the statement served by the new shape, when it is a read that can be rewritten.
	Read *ReadForm
	// Unrewritten says, per migration, why a statement touching it keeps only its old form.
	Unrewritten []Unrewritten
	// Compare, for a read that is never routed because it locks rows, holds the forms a
	// comparison runs instead: both without their locking clauses (OldSQL set).
	Compare *ReadForm
	// Write is the mirrored form of a write to a migrated relation with mirror on.
	Write *WriteForm
	// Unmirrored says why a write to a migrated relation passes through without its mirror.
	Unmirrored []Unrewritten
	// Prepare: a SQL PREPARE of a mirrored write, sent so that the server holds the mirrored form
	// under the statement's name; each EXECUTE of it then answers as the mirrored form does.
	Prepare *PreparedWrite
}

// PreparedWrite is the plan of `PREPARE name AS <write>` for a write that is mirrored.
type PreparedWrite struct {
	Name string // the prepared statement's name
	SQL  string // PREPARE name [(types)] AS <the mirrored form>
	// Statement is the plan of the prepared write itself (SQL: its text; Write: its form).
	Statement *StatementPlan
}

// ReadForm is a read rewritten to take the listed migrations from their new shape.
type ReadForm struct {
	SQL        string   `json:"sql"`
	Migrations []string `json:"migrations"`
	// Flags are the migrations' read-percent flag keys, in the order of Migrations.
	Flags []string `json:"flags"`
	// Ordered: the statement's top level has ORDER BY, so row order is part of its answer.
	Ordered bool `json:"ordered"`
	// Unstable says why the read's answer may differ between two runs over the same data (a
	// volatile function, LIMIT without ORDER BY): it is not compared ("" when it is stable).
	Unstable string `json:"unstable,omitempty"`
	// MayFail: a read expression of one of its migrations may raise an error for some rows, so
	// the new form may fail where the old would not. Inside a transaction the proxy then wraps it
	// in a savepoint to fall back to.
	MayFail bool `json:"may_fail,omitempty"`
	// Origins are the table and column numbers the client's text reports for its output columns
	// (readOrigins), which the new form's RowDescription gets in place of its own; nil when
	// none is known.
	Origins []ColumnOrigin `json:"origins,omitempty"`
	// Moves say, for the columns its migrations copy unchanged, which old column a new one
	// stands for: a RowDescription field the new form reports as a new relation's column, whose
	// origin Origins does not give, is one of these (a plain reference, through the projection).
	Moves []ColumnMove `json:"moves,omitempty"`
	// OldSQL, when set, is the old form a comparison runs instead of the client's text.
	OldSQL string `json:"old_sql,omitempty"`
}

// Unrewritten records a statement that touches a migration but is not rewritten.
type Unrewritten struct {
	Migration string `json:"migration"`
	Reason    string `json:"reason"` // a short label, also the metric's reason label
}

// Reasons a statement keeps its old form.
const (
	ReasonLocking         = "locking_clause"
	ReasonSystemColumn    = "system_column"
	ReasonWholeRow        = "whole_row_reference"
	ReasonQualifiedColumn = "schema_qualified_column"
	ReasonTableSample     = "tablesample"
	ReasonGroupByKey      = "group_by_primary_key"
	ReasonNoProjection    = "no_read_projection"
	ReasonDeparse         = "deparse_failed"
)

// classify names a parsed statement's kind.
func classify(stmt *pg_query.Node) Kind {
	switch n := stmt.Node.(type) {
	case *pg_query.Node_SelectStmt:
		if n.SelectStmt.IntoClause != nil {
			return KindDDL // SELECT INTO creates a table
		}
		if modifiesData(stmt) {
			return KindWrite
		}
		return KindRead
	case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
		return KindWrite
	case *pg_query.Node_TransactionStmt:
		return KindTransaction
	case *pg_query.Node_VariableSetStmt, *pg_query.Node_VariableShowStmt, *pg_query.Node_ListenStmt,
		*pg_query.Node_UnlistenStmt, *pg_query.Node_NotifyStmt, *pg_query.Node_CopyStmt, *pg_query.Node_ExplainStmt,
		*pg_query.Node_PrepareStmt, *pg_query.Node_ExecuteStmt, *pg_query.Node_DeallocateStmt,
		*pg_query.Node_DiscardStmt, *pg_query.Node_DoStmt, *pg_query.Node_CallStmt, *pg_query.Node_LockStmt,
		*pg_query.Node_VacuumStmt, *pg_query.Node_CheckPointStmt, *pg_query.Node_LoadStmt,
		*pg_query.Node_DeclareCursorStmt, *pg_query.Node_FetchStmt, *pg_query.Node_ClosePortalStmt,
		*pg_query.Node_ConstraintsSetStmt:
		return KindOther
	case nil:
		return KindEmpty
	}
	if strings.HasSuffix(nodeTypeName(stmt), "Stmt") {
		return KindDDL // CREATE, ALTER, DROP, GRANT, TRUNCATE, COMMENT, ...
	}
	return KindOther
}

// modifiesData reports whether a tree holds an INSERT, UPDATE, DELETE or MERGE (a data-modifying
// CTE inside a SELECT).
func modifiesData(n *pg_query.Node) bool {
	found := false
	walkNodes(n, func(x *pg_query.Node) bool {
		switch x.Node.(type) {
		case *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt, *pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
			found = true
		}
		return !found
	})
	return found
}
