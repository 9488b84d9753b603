package router

import (
	"strings"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// PathChange is one statement's effect on the session's search_path.
type PathChange struct {
	// Value is the new search_path; Reset means "back to the session default" (RESET, SET ... TO
	// DEFAULT, RESET ALL, DISCARD ALL).
	Value string
	Reset bool
	// Local: SET LOCAL, which lasts until the end of the transaction.
	Local bool
}

// SessionChanges are a query's effects on session state the proxy keeps in step with the server.
type SessionChanges struct {
	Paths []PathChange // search_path changes, in order
	// Deallocate names prepared statements dropped by DEALLOCATE; DeallocateAll: DEALLOCATE ALL
	// or DISCARD ALL dropped every one.
	Deallocate    []string
	DeallocateAll bool
}

// SessionChangesOf finds the statements of sql that change search_path or drop prepared
// statements. Planning depends on search_path, and Postgres before 18 does not report it, so
// sessions track it from what they send; prepared statement variants follow their statement. A
// cheap text test keeps the parser away from every other statement.
func SessionChangesOf(sql string) SessionChanges {
	var out SessionChanges
	if !containsFold(sql, "search_path") && !containsFold(sql, "discard") && !containsFold(sql, "reset") &&
		!containsFold(sql, "deallocate") {
		return out
	}
	res, err := pg_query.Parse(sql)
	if err != nil {
		return out
	}
	for _, raw := range res.Stmts {
		switch n := raw.Stmt.Node.(type) {
		case *pg_query.Node_VariableSetStmt:
			if c, ok := pathChange(n.VariableSetStmt); ok {
				out.Paths = append(out.Paths, c)
			}
		case *pg_query.Node_DiscardStmt:
			if n.DiscardStmt.Target == pg_query.DiscardMode_DISCARD_ALL {
				out.Paths = append(out.Paths, PathChange{Reset: true})
				out.DeallocateAll = true
			}
		case *pg_query.Node_DeallocateStmt:
			if n.DeallocateStmt.Name == "" || n.DeallocateStmt.Isall {
				out.DeallocateAll = true
			} else {
				out.Deallocate = append(out.Deallocate, n.DeallocateStmt.Name)
			}
		}
	}
	return out
}

func pathChange(v *pg_query.VariableSetStmt) (PathChange, bool) {
	switch v.Kind {
	case pg_query.VariableSetKind_VAR_RESET_ALL:
		return PathChange{Reset: true}, true
	case pg_query.VariableSetKind_VAR_SET_DEFAULT, pg_query.VariableSetKind_VAR_RESET:
		if strings.EqualFold(v.Name, "search_path") {
			return PathChange{Reset: true, Local: v.IsLocal}, true
		}
	case pg_query.VariableSetKind_VAR_SET_VALUE:
		if !strings.EqualFold(v.Name, "search_path") {
			return PathChange{}, false
		}
		// Postgres flattens the list the same way: each element quoted as an identifier when it
		// needs quoting, joined with ", ".
		items := make([]string, 0, len(v.Args))
		for _, a := range v.Args {
			c := a.GetAConst()
			if c == nil {
				return PathChange{}, false
			}
			switch {
			case c.GetSval() != nil:
				items = append(items, quoteIdentIfNeeded(c.GetSval().Sval))
			default:
				return PathChange{}, false
			}
		}
		return PathChange{Value: strings.Join(items, ", "), Local: v.IsLocal}, true
	}
	return PathChange{}, false
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

// containsFold reports whether s contains the lower-case ASCII word sub, in any case, without
// allocating.
func containsFold(s, sub string) bool {
	n := len(sub)
	for i := 0; i+n <= len(s); i++ {
		match := true
		for j := 0; j < n; j++ {
			c := s[i+j]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != sub[j] {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}
