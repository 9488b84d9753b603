package proxy

import (
	"encoding/binary"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcanary/pgcanary/router"
)

// Planner gives sessions the plan of a statement; nil plans mean "relay untouched".
type Planner interface {
	// Active reports whether any migration is configured now; when not, sessions skip planning
	// (and the text conversion it needs) entirely.
	Active() bool
	Plan(searchPath, user, sql string) *router.Plan
}

// defaultSearchPath is PostgreSQL's default; a session's own comes from its startup parameters.
// (Role and database defaults, and SET search_path, are not tracked yet: see docs.)
const defaultSearchPath = `"$user", public`

// searchPathOf finds a search_path given at startup, directly or in options (-c search_path=...).
func searchPathOf(params map[string]string) string {
	if sp, ok := params["search_path"]; ok {
		return sp
	}
	if sp, ok := optionSettings(params["options"])["search_path"]; ok {
		return sp
	}
	return defaultSearchPath
}

// captureOf returns the write form whose responses need restoring (capture forms end in a
// SELECT); augment and TRUNCATE forms answer like the client's statement and need nothing.
func captureOf(st *router.StatementPlan) *router.WriteForm {
	if st != nil && st.Write != nil && st.Write.Strategy == "capture" {
		return st.Write
	}
	return nil
}

// planQuery rewrites a simple Query's text when one of its statements has a mirrored form, and
// returns the per-statement forms the responses must be restored for (nil: untouched).
func (s *session) planQuery(body []byte) ([]byte, []*router.WriteForm) {
	sql := string(body[:len(body)-1])
	plan := s.srv.planner.Plan(s.searchPath, s.user, sql)
	if plan == nil || plan.Untouched {
		return body, nil
	}
	changed := false
	forms := make([]*router.WriteForm, len(plan.Statements))
	texts := make([]string, len(plan.Statements))
	for i, st := range plan.Statements {
		s.countPlan(st)
		texts[i] = st.SQL
		switch {
		case st.Write != nil:
			texts[i], changed = st.Write.SQL, true
			forms[i] = captureOf(st)
		case st.Read != nil:
			routed := s.routeNew(st.Read, st.SQL)
			s.countRead(st.Read, routed)
			if routed {
				texts[i], changed = st.Read.SQL, true
			}
		}
	}
	if !changed {
		return body, nil
	}
	// Statements are joined on their own lines: a statement may end in a -- comment.
	out := strings.Join(texts, "\n;\n")
	return append([]byte(out), 0), forms
}

// planParse rewrites a Parse message's query when it has a mirrored form, and returns its plan
// (nil when untouched); its executions are counted at Execute.
func (s *session) planParse(body []byte) ([]byte, *router.StatementPlan) {
	var msg pgproto3.Parse
	if err := msg.Decode(body); err != nil {
		return body, nil // classifyFrontend reports malformed messages
	}
	plan := s.srv.planner.Plan(s.searchPath, s.user, msg.Query)
	if plan == nil || plan.Untouched || len(plan.Statements) != 1 {
		return body, nil
	}
	st := plan.Statements[0]
	if st.Read != nil && msg.Name == "" {
		// An unnamed statement is executed right after it is parsed: route it now. (A named
		// statement keeps its old form: per-execution variants are not built yet.)
		routed := s.routeNew(st.Read, st.SQL)
		s.countRead(st.Read, routed)
		if !routed {
			return body, nil
		}
		msg.Query = st.Read.SQL
		out, err := msg.Encode(nil)
		if err != nil {
			return body, nil
		}
		return out[headerLen:], nil
	}
	if st.Write == nil {
		if len(st.Unmirrored) > 0 {
			return body, st
		}
		return body, nil
	}
	msg.Query = st.Write.SQL
	out, err := msg.Encode(nil)
	if err != nil {
		return body, nil
	}
	return out[headerLen:], st
}

func (s *session) countPlan(st *router.StatementPlan) {
	if st == nil {
		return
	}
	if st.Write != nil {
		s.srv.metrics.MirroredWrite(st.Write.Migration, st.Write.Direction)
	}
	for _, u := range st.Unmirrored {
		s.srv.metrics.UnmirroredWrite(u.Migration, u.Reason)
	}
}

// restore applies a capture form's response transform to one server message: the client sees
// what its own statement would have returned. It returns the message to send (typ 0: none).
// e is the FIFO head, whose progress through a multi-statement Query it advances.
func restore(e *expected, typ byte, body []byte) (byte, []byte) {
	w := e.write
	if e.kind == reqQuery {
		if e.stmt < len(e.writes) {
			w = e.writes[e.stmt]
		} else {
			w = nil
		}
		if typ == 'C' || typ == 'I' {
			defer func() { e.stmt++ }()
		}
	}
	if w == nil {
		return typ, body
	}
	switch typ {
	case 'T': // RowDescription of the form's final SELECT
		if w.CountOnly {
			if e.kind == reqDescribe {
				return 'n', nil // the client's statement returns no rows: NoData
			}
			return 0, nil
		}
	case 'D':
		if w.CountOnly {
			e.count = parseCount(body)
			return 0, nil // the count row is the proxy's, not the client's
		}
	case 'C':
		n := e.count
		if !w.CountOnly {
			n = tagCount(body)
		}
		return 'C', commandTag(w.Verb, n)
	}
	return typ, body
}

// parseCount reads the single bigint of the count row, in text or binary format.
func parseCount(body []byte) int64 {
	if len(body) < 6 {
		return 0
	}
	n := int(int32(binary.BigEndian.Uint32(body[2:6])))
	if n < 0 || len(body) < 6+n {
		return 0
	}
	v := body[6 : 6+n]
	if c, err := strconv.ParseInt(string(v), 10, 64); err == nil {
		return c
	}
	if len(v) == 8 {
		return int64(binary.BigEndian.Uint64(v))
	}
	return 0
}

// tagCount reads n from a "SELECT n" command tag.
func tagCount(body []byte) int64 {
	tag := strings.TrimRight(string(body), "\x00")
	if i := strings.LastIndexByte(tag, ' '); i >= 0 {
		n, _ := strconv.ParseInt(tag[i+1:], 10, 64)
		return n
	}
	return 0
}

// commandTag is the tag the client's own statement would have produced.
func commandTag(verb string, n int64) []byte {
	var tag string
	switch verb {
	case "INSERT":
		tag = "INSERT 0 " + strconv.FormatInt(n, 10)
	default:
		tag = verb + " " + strconv.FormatInt(n, 10)
	}
	return append([]byte(tag), 0)
}

// planMessage plans a client message that carries or uses SQL and records in entry the response
// transform it needs. It returns the body to send.
func (s *session) planMessage(typ byte, body []byte, entry *expected) []byte {
	if (typ == 'Q' || typ == 'P') && !s.srv.planner.Active() {
		return body
	}
	switch typ {
	case 'Q':
		out, writes := s.planQuery(body)
		entry.writes = writes
		return out
	case 'P':
		out, st := s.planParse(body)
		name, _, _ := cstring(body)
		if st != nil {
			s.stmtPlans[string(name)] = st
		} else if len(s.stmtPlans) > 0 {
			delete(s.stmtPlans, string(name))
		}
		entry.write = captureOf(st)
		return out
	case 'B':
		portal, rest, ok := cstring(body)
		if !ok {
			return body
		}
		stmt, _, _ := cstring(rest)
		if st := s.stmtPlans[string(stmt)]; st != nil {
			s.portalPlans[string(portal)] = st
		} else if len(s.portalPlans) > 0 {
			delete(s.portalPlans, string(portal))
		}
	case 'D', 'C':
		if len(body) < 2 {
			return body
		}
		name, _, _ := cstring(body[1:])
		plans := s.stmtPlans
		if body[0] == 'P' {
			plans = s.portalPlans
		}
		if typ == 'D' {
			entry.write = captureOf(plans[string(name)])
		} else {
			delete(plans, string(name))
		}
	case 'E':
		portal, _, _ := cstring(body)
		st := s.portalPlans[string(portal)]
		s.countPlan(st)
		entry.write = captureOf(st)
	}
	return body
}
