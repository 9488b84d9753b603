package router

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Settings the proxy follows: planning resolves unqualified names with search_path, and
// "$user" in it with the current role.
const (
	SettingSearchPath = "search_path"
	SettingRole       = "role"
	// SettingSessionAuthorization is the session user, who is the current user while no role is
	// set (SET SESSION AUTHORIZATION also sets the role to none).
	SettingSessionAuthorization = "session_authorization"
)

// ChangeOp is what a SettingChange does.
type ChangeOp uint8

const (
	ChangeSet        ChangeOp = iota // set Setting (to Value, to its default, or to an unknown value)
	ChangeSavepoint                  // SAVEPOINT Savepoint: the settings as they are now can be returned to
	ChangeRelease                    // RELEASE Savepoint: it and the savepoints after it are gone
	ChangeRollbackTo                 // ROLLBACK TO Savepoint: the settings return to what they were then
	// Transaction control, for sessions that foresee where a transaction ends before the
	// server says (a pipeline): BEGIN or START TRANSACTION, COMMIT (or PREPARE TRANSACTION),
	// ROLLBACK. AND CHAIN adds a ChangeBegin after the end.
	ChangeBegin
	ChangeCommit
	ChangeRollback
)

// SettingChange is one statement's effect on a setting the proxy follows, or on the savepoints
// that scope such effects inside a transaction.
type SettingChange struct {
	Op      ChangeOp
	Setting string // ChangeSet: SettingSearchPath, SettingRole or SettingSessionAuthorization
	// Value is the new value ("" for the role means none: SET ROLE NONE); Reset means "back to
	// the session default" (RESET, SET ... TO DEFAULT, RESET ALL, DISCARD ALL).
	Value string
	Reset bool
	// Unknown: the statement sets the value to something its text does not tell (set_config with
	// a computed argument, or a call the proxy cannot tell will run).
	Unknown bool
	// Local: SET LOCAL (or set_config(..., true)), which lasts until the end of the transaction.
	Local     bool
	Savepoint string // the savepoint's name, for the savepoint operations
	// Statement is the index of the statement making the change in a multi-statement text: the
	// server confirms each statement apart, and an error cancels the ones after it.
	Statement int
}

// SessionChanges are a query's effects on session state the proxy keeps in step with the server.
type SessionChanges struct {
	Settings []SettingChange // in statement order; read-only (may be shared)
	// Drops: the prepared statements the text's DEALLOCATE and DISCARD ALL statements drop, in
	// statement order. Dropping a prepared statement is not transactional: an error in a text of
	// several statements undoes only the drops at and after the failed statement.
	Drops []Drop
	// DiscardAll: the text is DISCARD ALL, which Postgres refuses inside a transaction block and
	// after another statement of a pipeline (25001); then it changes nothing.
	DiscardAll bool
	// Prepared: the names SQL PREPARE creates, with their statements' indexes. They share the
	// namespace of the protocol's named statements: a Parse of one fails (42P05).
	Prepared []PreparedName
}

// Drop is what one statement of a text drops: the prepared statement Name, or All of them
// (DEALLOCATE ALL, DISCARD ALL).
type Drop struct {
	Statement int
	Name      string
	All       bool
}

// PreparedName is a statement name a PREPARE in a text creates.
type PreparedName struct {
	Name      string
	Statement int
}

// SessionChangesOf finds the statements of sql that change search_path or the current role,
// scope such changes (savepoints), or create or drop prepared statements. Planning depends on search_path,
// and Postgres before 18 does not report it, so sessions track it from what they send; prepared
// statement variants follow their statement. A cheap text test keeps the parser away from every
// other statement.
func SessionChangesOf(sql string) SessionChanges {
	var out SessionChanges
	if ops, ok := transactionControl(sql); ok {
		out.Settings = ops // the frequent BEGIN, COMMIT and ROLLBACK, known without parsing
		return out
	}
	if !mayChangeSession(sql) {
		return out
	}
	res, err := pg_query.Parse(sql)
	if err != nil {
		return out
	}
	for i, raw := range res.Stmts {
		first := len(out.Settings)
		switch n := raw.Stmt.Node.(type) {
		case *pg_query.Node_VariableSetStmt:
			out.Settings = append(out.Settings, settingChanges(n.VariableSetStmt)...)
		case *pg_query.Node_DiscardStmt:
			// In a text of several statements, DISCARD ALL runs in an implicit transaction
			// block, where Postgres refuses it: it changes nothing.
			if n.DiscardStmt.Target == pg_query.DiscardMode_DISCARD_ALL && len(res.Stmts) == 1 {
				out.DiscardAll = true
				// DISCARD ALL is RESET ALL plus SET SESSION AUTHORIZATION DEFAULT, among others, which
				// brings back the default role too (checked against PostgreSQL 15).
				out.Settings = append(out.Settings, SettingChange{Setting: SettingSearchPath, Reset: true},
					SettingChange{Setting: SettingSessionAuthorization, Reset: true}, SettingChange{Setting: SettingRole, Reset: true})
				out.Drops = append(out.Drops, Drop{Statement: i, All: true})
			}
		case *pg_query.Node_PrepareStmt:
			out.Prepared = append(out.Prepared, PreparedName{Name: n.PrepareStmt.Name, Statement: i})
		case *pg_query.Node_DeallocateStmt:
			d := n.DeallocateStmt
			out.Drops = append(out.Drops, Drop{Statement: i, Name: d.Name, All: d.Name == "" || d.Isall})
		case *pg_query.Node_TransactionStmt:
			t := n.TransactionStmt
			switch t.Kind {
			case pg_query.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
				out.Settings = append(out.Settings, SettingChange{Op: ChangeSavepoint, Savepoint: t.SavepointName})
			case pg_query.TransactionStmtKind_TRANS_STMT_RELEASE:
				out.Settings = append(out.Settings, SettingChange{Op: ChangeRelease, Savepoint: t.SavepointName})
			case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
				out.Settings = append(out.Settings, SettingChange{Op: ChangeRollbackTo, Savepoint: t.SavepointName})
			case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN, pg_query.TransactionStmtKind_TRANS_STMT_START:
				out.Settings = append(out.Settings, SettingChange{Op: ChangeBegin})
			case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT, pg_query.TransactionStmtKind_TRANS_STMT_PREPARE:
				out.Settings = append(out.Settings, SettingChange{Op: ChangeCommit})
				if t.Chain {
					out.Settings = append(out.Settings, SettingChange{Op: ChangeBegin})
				}
			case pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK:
				out.Settings = append(out.Settings, SettingChange{Op: ChangeRollback})
				if t.Chain {
					out.Settings = append(out.Settings, SettingChange{Op: ChangeBegin})
				}
			}
		default:
			out.Settings = append(out.Settings, setConfigChanges(raw.Stmt)...)
		}
		for j := first; j < len(out.Settings); j++ {
			out.Settings[j].Statement = i
		}
	}
	return out
}

// transactionControl recognizes a text that is one transaction control statement (BEGIN,
// START TRANSACTION, COMMIT, END, ROLLBACK, ABORT, with their options and leading comments) without
// parsing it; ok is false for anything else, ROLLBACK TO included.
func transactionControl(sql string) (ops []SettingChange, ok bool) {
	rest := skipSpaceAndComments(sql)
	word, rest := firstWord(rest)
	var op ChangeOp
	switch {
	case strings.EqualFold(word, "begin"), strings.EqualFold(word, "start"):
		op = ChangeBegin
	case strings.EqualFold(word, "commit"), strings.EqualFold(word, "end"):
		op = ChangeCommit
	case strings.EqualFold(word, "rollback"), strings.EqualFold(word, "abort"):
		op = ChangeRollback
	default:
		return nil, false
	}
	chain, lastWord := false, ""
	for rest != "" {
		rest = skipSpaceAndComments(rest)
		var w string
		if w, rest = firstWord(rest); w == "" {
			if rest == "" || rest[0] == ';' && strings.TrimSpace(rest[1:]) == "" {
				break
			}
			return nil, false // another statement, a string, a parenthesis: let the parser tell
		}
		switch {
		case strings.EqualFold(w, "to"), strings.EqualFold(w, "prepared"), strings.EqualFold(w, "savepoint"):
			return nil, false // ROLLBACK TO, COMMIT PREPARED: not this transaction's end
		case strings.EqualFold(w, "chain"):
			chain = !strings.EqualFold(lastWord, "no")
		}
		lastWord = w
	}
	switch {
	case op == ChangeBegin:
		return opsBegin, true
	case op == ChangeCommit && chain:
		return opsCommitAndChain, true
	case op == ChangeCommit:
		return opsCommit, true
	case chain:
		return opsRollbackAndChain, true
	}
	return opsRollback, true
}

// Shared, read-only answers of transactionControl: BEGIN and COMMIT run once per transaction,
// and planning them must not allocate.
var (
	opsBegin            = []SettingChange{{Op: ChangeBegin}}
	opsCommit           = []SettingChange{{Op: ChangeCommit}}
	opsRollback         = []SettingChange{{Op: ChangeRollback}}
	opsCommitAndChain   = []SettingChange{{Op: ChangeCommit}, {Op: ChangeBegin}}
	opsRollbackAndChain = []SettingChange{{Op: ChangeRollback}, {Op: ChangeBegin}}
)

// skipSpaceAndComments skips leading white space and comments (a sqlcommenter tag before BEGIN).
func skipSpaceAndComments(s string) string {
	for {
		s = strings.TrimLeft(s, " \t\r\n\f")
		switch {
		case strings.HasPrefix(s, "--"):
			i := strings.IndexByte(s, '\n')
			if i < 0 {
				return ""
			}
			s = s[i+1:]
		case strings.HasPrefix(s, "/*"):
			i := strings.Index(s, "*/") // nested comments are rare here; the parser takes them
			if i < 0 || strings.Contains(s[2:i], "/*") {
				return s
			}
			s = s[i+2:]
		default:
			return s
		}
	}
}

// firstWord splits a leading SQL word (keyword or identifier) off s.
func firstWord(s string) (word, rest string) {
	i := 0
	for i < len(s) && isWordByte(s[i]) {
		i++
	}
	return s[:i], s[i:]
}

// mayChangeSession is the text test: false when sql certainly changes nothing SessionChangesOf
// reports. It runs for every statement, so it reads the text once, word by word, without
// allocating: a statement can only change what it names.
func mayChangeSession(sql string) bool {
	var set, role, rollback, to bool // SET with ROLE; ROLLBACK only with TO (a plain ROLLBACK is frequent)
	txWord := false                  // BEGIN, COMMIT, ...: in a text of several statements (transactionControl takes one)
	for i := 0; i < len(sql); {
		if !isWordByte(sql[i]) {
			i++
			continue
		}
		j := i
		for j < len(sql) && isWordByte(sql[j]) {
			j++
		}
		switch w := sql[i:j]; len(w) {
		case 2:
			to = to || strings.EqualFold(w, "to")
		case 3:
			set = set || strings.EqualFold(w, "set")
			txWord = txWord || strings.EqualFold(w, "end")
		case 4:
			role = role || strings.EqualFold(w, "role")
		case 5:
			if strings.EqualFold(w, "reset") {
				return true
			}
			txWord = txWord || strings.EqualFold(w, "begin") || strings.EqualFold(w, "start") || strings.EqualFold(w, "abort")
		case 6:
			if strings.EqualFold(w, "schema") {
				return true
			}
			txWord = txWord || strings.EqualFold(w, "commit")
		case 7:
			if strings.EqualFold(w, "discard") || strings.EqualFold(w, "release") || strings.EqualFold(w, "prepare") {
				return true
			}
		case 8:
			rollback = rollback || strings.EqualFold(w, "rollback")
		case 9:
			if strings.EqualFold(w, "savepoint") {
				return true
			}
		case 10:
			if strings.EqualFold(w, "deallocate") || strings.EqualFold(w, "set_config") {
				return true
			}
		case 11:
			if strings.EqualFold(w, "search_path") {
				return true
			}
		case 13:
			role = role || strings.EqualFold(w, "authorization")
		}
		if set && role || rollback && to {
			return true
		}
		i = j
	}
	return (txWord || rollback) && strings.IndexByte(strings.TrimRight(sql, " \t\r\n;"), ';') >= 0
}

// isWordByte reports whether b can be part of an SQL word (identifier or keyword).
func isWordByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '$' || b >= 0x80
}

// settingChanges is what a SET or RESET does to the followed settings.
func settingChanges(v *pg_query.VariableSetStmt) []SettingChange {
	name := strings.ToLower(v.Name)
	switch name {
	case SettingSearchPath, SettingRole, SettingSessionAuthorization:
	default:
		if v.Kind == pg_query.VariableSetKind_VAR_RESET_ALL {
			// RESET ALL leaves the role alone (Postgres exempts it).
			return []SettingChange{{Setting: SettingSearchPath, Reset: true}}
		}
		return nil
	}
	c := SettingChange{Setting: name, Local: v.IsLocal}
	switch v.Kind {
	case pg_query.VariableSetKind_VAR_SET_DEFAULT, pg_query.VariableSetKind_VAR_RESET:
		c.Reset = true
	case pg_query.VariableSetKind_VAR_SET_VALUE:
		value, ok := setValue(name, v.Args)
		switch {
		case !ok:
			c.Unknown = true
		case name == SettingRole && strings.EqualFold(value, "none"):
			// SET ROLE NONE: no role, so the session user (RESET ROLE returns to the default,
			// which ALTER ROLE ... SET role can make another role).
		default:
			c.Value = value
		}
	default:
		return nil
	}
	if name == SettingSessionAuthorization {
		// The named user becomes the current user too: the role is set to none. Back to the
		// default, the role returns to its default as well (checked against PostgreSQL 15).
		return []SettingChange{c, {Setting: SettingRole, Local: c.Local, Reset: c.Reset}}
	}
	return []SettingChange{c}
}

// setValue flattens SET's arguments as Postgres does: for search_path each element quoted as an
// identifier when it needs quoting, joined with ", "; for the role, the name itself.
func setValue(name string, args []*pg_query.Node) (string, bool) {
	items := make([]string, 0, len(args))
	for _, a := range args {
		c := a.GetAConst()
		if c == nil || c.GetSval() == nil {
			return "", false
		}
		if name == SettingRole || name == SettingSessionAuthorization {
			return c.GetSval().Sval, len(args) == 1
		}
		items = append(items, quoteIdentIfNeeded(c.GetSval().Sval))
	}
	return strings.Join(items, ", "), len(items) > 0
}

// setConfigChanges finds set_config calls in a statement. Only the plain form, a SELECT of
// set_config calls with constant arguments and nothing else, has a value the proxy can know; a
// call anywhere else, with computed arguments, may set anything or nothing, so it is Unknown.
func setConfigChanges(stmt *pg_query.Node) []SettingChange {
	var calls []*pg_query.FuncCall
	walkNodes(stmt, func(x *pg_query.Node) bool {
		if fc := x.GetFuncCall(); fc != nil && isSetConfig(fc) {
			calls = append(calls, fc)
		}
		return true
	})
	if len(calls) == 0 {
		return nil
	}
	plain := plainSelectOfCalls(stmt, len(calls))
	var out []SettingChange
	for _, fc := range calls {
		name, nameKnown := constText(fc.Args, 0)
		name = strings.ToLower(name)
		if nameKnown && name != SettingSearchPath && name != SettingRole && name != SettingSessionAuthorization {
			continue
		}
		value, valueKnown := constText(fc.Args, 1)
		local, localKnown := constBool(fc.Args, 2)
		switch {
		case !nameKnown:
			// It may set either.
			out = append(out, SettingChange{Setting: SettingSearchPath, Unknown: true},
				SettingChange{Setting: SettingRole, Unknown: true}, SettingChange{Setting: SettingSessionAuthorization, Unknown: true})
		case !plain || !valueKnown || !localKnown:
			out = append(out, SettingChange{Setting: name, Unknown: true, Local: localKnown && local})
		case name == SettingRole && strings.EqualFold(value, "none"):
			out = append(out, SettingChange{Setting: name, Local: local})
		default:
			out = append(out, SettingChange{Setting: name, Value: value, Local: local})
		}
		if name == SettingSessionAuthorization && plain && valueKnown && localKnown {
			out = append(out, SettingChange{Setting: SettingRole, Local: local})
		}
	}
	return out
}

func isSetConfig(fc *pg_query.FuncCall) bool {
	n := len(fc.Funcname)
	if n == 0 || n > 2 || fc.Funcname[n-1].GetString_().GetSval() != "set_config" {
		return false
	}
	return n == 1 || fc.Funcname[0].GetString_().GetSval() == "pg_catalog"
}

// plainSelectOfCalls reports whether stmt is "SELECT f(...), ..." with calls as its whole target
// list and no FROM, WHERE or other clause that could run a call any number of times but once.
func plainSelectOfCalls(stmt *pg_query.Node, calls int) bool {
	sel := stmt.GetSelectStmt()
	if sel == nil || len(sel.FromClause) > 0 || sel.WhereClause != nil || sel.HavingClause != nil ||
		len(sel.GroupClause) > 0 || sel.LimitCount != nil || sel.LimitOffset != nil || sel.WithClause != nil ||
		sel.Op != pg_query.SetOperation_SETOP_NONE || len(sel.TargetList) != calls {
		return false
	}
	for _, t := range sel.TargetList {
		if fc := t.GetResTarget().GetVal().GetFuncCall(); fc == nil || !isSetConfig(fc) {
			return false
		}
	}
	return true
}

func constText(args []*pg_query.Node, i int) (string, bool) {
	if i >= len(args) {
		return "", false
	}
	a := args[i]
	if tc := a.GetTypeCast(); tc != nil { // 'search_path'::text
		a = tc.Arg
	}
	if c := a.GetAConst(); c != nil && c.GetSval() != nil {
		return c.GetSval().Sval, true
	}
	return "", false
}

func constBool(args []*pg_query.Node, i int) (bool, bool) {
	if i >= len(args) {
		return false, false
	}
	if c := args[i].GetAConst(); c != nil && c.GetBoolval() != nil {
		return c.GetBoolval().Boolval, true
	}
	return false, false
}

// quoteIdentIfNeeded quotes a schema name the way Postgres's quote_identifier does for the
// lower-case-letters-digits-underscores case; "$user" stays quoted.
func quoteIdentIfNeeded(s string) string {
	plain := s != ""
	for i, r := range s {
		if !(r >= 'a' && r <= 'z' || r == '_' || i > 0 && (r >= '0' && r <= '9' || r == '$')) {
			plain = false
			break
		}
	}
	if plain {
		return s
	}
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}
