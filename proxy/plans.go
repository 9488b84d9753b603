package proxy

import (
	"bytes"
	"encoding/binary"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcanary/pgcanary/router"
)

// Planner gives sessions the plan of a statement; nil plans mean "relay untouched".
type Planner interface {
	// Active reports whether a migration is configured now in database; when not, its sessions
	// skip planning (and the text conversion it needs) entirely.
	Active(database string) bool
	Plan(database, searchPath, user, sql string) *router.Plan
	// Generation is the configuration generation plans are made with now (0 before the first).
	Generation() int64
}

// searchPathOf finds a search_path given at startup, directly or in options (-c search_path=...):
// the planning default until the server's own answer arrives.
func searchPathOf(params map[string]string) string {
	if sp, ok := params["search_path"]; ok {
		return sp
	}
	if sp, ok := optionSettings(params["options"])["search_path"]; ok {
		return sp
	}
	return defaultSearchPath
}

// stmtInfo is what the session knows of a client prepared statement that touches a migration.
// A statement is parsed once and executed many times while its route is chosen per execution,
// so a read keeps its old form under the client's name and gets its new-shape form as a variant
// under a derived name, prepared on first need.
type stmtInfo struct {
	name      string
	plan      *router.StatementPlan
	query     string   // the client's own text
	paramOIDs []uint32 // the client's declared parameter types, for variants
	// routed: the server holds the new-shape form under the client's name (an unnamed statement
	// decides at Parse). original: it holds the client's own text even though a mirrored form
	// exists (a passthrough write that was re-run).
	routed, original bool
	sqlPrepared      bool // created by a SQL PREPARE of a mirrored write (executed by EXECUTE)
	// executes: the text is an EXECUTE of this SQL-prepared statement, which the session
	// resolves at each Bind (executedWrite): it answers as that statement's form does.
	executes string
	// confirmed: the server answered its Parse with ParseComplete. Until then a pipelined Bind
	// cannot know whether the server holds this text under the name (the Parse may yet fail
	// or be skipped), so it binds the client's own name (planBind). Guarded by session.mu.
	confirmed    bool
	newVariant   *variant // the read's new-shape form
	origVariant  *variant // the client's own text, prepared when its mirror failed or its names moved
	movedVariant *variant // the mirrored form of the text under a later search_path (bindMovedWrite)
	movedSQL     string   // that form's text
	// path and role it was planned under: Postgres resolves a prepared statement's names again
	// when they change, so the proxy plans it again (see bindMoved).
	path, role string
	// gen is the configuration generation it was planned with (0: unknown). A later one may have
	// another catalog (columns added, a migration marked stale): planned again at its next Bind.
	gen int64
	// paramTypes are the parameter types Postgres inferred, from a Describe's ParameterDescription:
	// a variant parsed with them accepts the client's binary parameters whatever its names
	// resolve to now. Guarded by session.mu.
	paramTypes []uint32
}

// learnParamTypes records a ParameterDescription of the statement. Holds session.mu.
func (i *stmtInfo) learnParamTypes(body []byte) {
	var pd pgproto3.ParameterDescription
	if err := pd.Decode(body); err == nil {
		i.paramTypes = pd.ParameterOIDs
	}
}

// variantParamTypes are the types to parse a variant of the client's text with: those Postgres
// inferred for the statement when known, else those the client declared. Holds session.mu.
func (i *stmtInfo) variantParamTypes() []uint32 {
	if len(i.paramTypes) > 0 {
		return i.paramTypes
	}
	return i.paramOIDs
}

// variant is a form of a client statement prepared under a name the proxy derives.
type variant struct {
	name      string
	sent      bool   // its Parse went out (reset when it fails or the variant is closed)
	confirmed bool   // the server answered that Parse with ParseComplete
	batch     uint64 // the session's batch (session.batch) its Parse went out in
	newShape  bool   // the read's new-shape form (not the client's own text)
}

// unsettled reports whether v's Parse went out in an earlier batch (before a Sync) and is not
// answered yet: that batch may still fail and skip it, so a Bind in this batch cannot count on
// it, nor send its Parse again (42P05 if it succeeds). Holds mu.
func (s *session) unsettled(v *variant) bool {
	return v != nil && v.sent && !v.confirmed && v.batch != s.batch
}

// replaceUnsettled gives the statement a new variant of the same kind in place of an unsettled
// one; the old one, if its Parse succeeds, is closed at the next Sync. Holds mu.
func (s *session) replaceUnsettled(v *variant, prefix string) *variant {
	if !s.unsettled(v) {
		return v
	}
	s.orphans = append(s.orphans, v)
	s.variantSeq++
	return &variant{name: prefix + strconv.FormatUint(s.variantSeq, 10), newShape: v.newShape}
}

// portalInfo is what the session knows of a portal bound from a statement that touches a
// migration: which form it runs, for response transforms and metrics.
type portalInfo struct {
	info  *stmtInfo
	route string            // "old" or "new" for reads, "write" for writes
	write *router.WriteForm // the capture form whose responses need restoring, if any
	ran   bool              // a count-only write form was executed: the client's portal is finished
}

// variants returns the statement's variants, nil where it has none of a kind.
func (i *stmtInfo) variants() [3]*variant {
	return [3]*variant{i.newVariant, i.origVariant, i.movedVariant}
}

// hasVariant reports whether v is one of the statement's variants.
func (i *stmtInfo) hasVariant(v *variant) bool {
	for _, w := range i.variants() {
		if w != nil && w == v {
			return true
		}
	}
	return false
}

// knowsStatement reports whether the session holds anything on statement name. Holds mu.
func (s *session) knowsStatement(name string) bool {
	_, changer := s.changers[name]
	_, named := s.names[name]
	return s.stmts[name] != nil || changer || named || s.dropping[name] != nil
}

// controlsTransaction reports whether a statement's changes say it is BEGIN, COMMIT or ROLLBACK
// (with or without AND CHAIN): Postgres commits such a statement's work at once.
func controlsTransaction(ops []router.SettingChange) bool {
	for _, c := range ops {
		switch c.Op {
		case router.ChangeBegin, router.ChangeCommit, router.ChangeRollback:
			return true
		}
	}
	return false
}

// writeForm is the mirrored form a statement runs when sent under the client's name.
func (i *stmtInfo) writeForm() *router.WriteForm {
	if i == nil || i.original || i.plan == nil {
		return nil
	}
	return i.plan.Write
}

// captureOf returns the write form whose responses need restoring (capture forms end in a
// SELECT); augment and TRUNCATE forms answer like the client's statement and need nothing.
func captureOf(w *router.WriteForm) *router.WriteForm {
	if w != nil && w.Strategy == "capture" {
		return w
	}
	return nil
}

// observation is a statement touching migrations, timed from send to completion.
type observation struct {
	migrations []string
	route      string
	start      time.Time
	write      *router.WriteForm // counted as mirrored when the statement succeeds
	unmirrored []router.Unrewritten
}

func (s *session) observe(st *router.StatementPlan, route string, w *router.WriteForm) *observation {
	if st == nil || len(st.Migrations) == 0 {
		return nil
	}
	return &observation{migrations: st.Migrations, route: route, start: time.Now(), write: w, unmirrored: st.Unmirrored}
}

// planAndEmit plans a client message that carries or uses SQL and sends it, with whatever the
// plan needs sent around it (variants, savepoints, closes).
func (s *session) planAndEmit(typ byte, body []byte, e expected) error {
	switch typ {
	case 'Q':
		return s.planQuery(body, e)
	case 'P':
		return s.planParse(body, e)
	case 'B':
		return s.planBind(body, e)
	case 'D', 'C':
		return s.planDescribeClose(typ, body, e)
	case 'E':
		return s.planExecute(body, e)
	case 'S':
		s.closeOrphans()
		s.mu.Lock()
		s.proj.batchEnd()
		s.pipelining = false
		s.mu.Unlock()
		if err := s.emit(typ, body, e, nil); err != nil {
			return err
		}
		s.mu.Lock()
		g := s.gate
		release := g != nil && g.savepoint && !g.sealed
		restore := s.restoreAtSync
		s.restoreAtSync = false
		s.mu.Unlock()
		if release { // a batch in a transaction: its savepoint ends with the batch
			return s.emitOwnSealing("RELEASE SAVEPOINT " + savepointName)
		}
		if restore {
			return s.emitAll(restoreFailedMessages())
		}
		return nil
	}
	return s.emit(typ, body, e, nil)
}

// planExecute gives an Execute the transform and observation of the portal's form. A count-only
// capture form (a write without RETURNING, sent as a SELECT of its count) must behave like the
// client's statement, which runs to completion whatever the row limit and cannot run again.
func (s *session) planExecute(body []byte, e expected) error {
	portal, _, _ := cstring(body)
	s.mu.Lock()
	var ch router.SessionChanges
	if len(s.portalChanges) > 0 {
		ch = s.portalChanges[string(portal)]
	}
	// The confirmed view takes the changes if the server completes the statement, whatever
	// planning foresees.
	e.ops = ch.Settings
	s.noteClientSavepoints(ch.Settings)
	if ch.DiscardAll && (s.proj.inTx || s.pipelining) {
		ch, e.refused = router.SessionChanges{}, true // Postgres refuses it there (25001)
	}
	for _, c := range ch.Settings {
		s.proj.apply(c)
	}
	if e.refused {
		s.proj.failing = true // the rest of the batch is skipped, its SETs rolled back
	}
	if len(ch.Drops) > 0 {
		e.drops = &dropUndo{drops: ch.Drops}
		s.dropStatements(e.drops)
	}
	// Postgres marks the implicit transaction a pipeline once a statement other than transaction
	// control completes in it (XACT_FLAGS_PIPELINING); DISCARD ALL commits at once.
	s.pipelining = !ch.DiscardAll && !controlsTransaction(ch.Settings)
	e.created = ch.Prepared
	p := s.portals[string(portal)]
	ranBefore := false
	if p != nil && p.info != nil && p.info.plan != nil && p.info.plan.Prepare != nil {
		pw := p.info.plan.Prepare
		e.prepares = []*stmtInfo{{name: pw.Name, plan: pw.Statement, query: pw.Statement.SQL, path: p.info.path, role: p.info.role, sqlPrepared: true}}
	}
	if p != nil {
		e.write = captureOf(p.write)
		if e.write != nil && e.write.CountOnly {
			ranBefore, p.ran = p.ran, true
		}
	}
	s.mu.Unlock()
	switch {
	case p == nil:
	case ranBefore:
		// Postgres fails a finished portal's Execute with 55000 and skips to Sync. The form's
		// SELECT would run again instead, so the proxy executes a portal that does not exist,
		// which fails the same way, and words the error as Postgres does.
		e.write = nil
		e.reword = errorBody(severityError, codeNotInPrerequisiteState, "portal \""+string(portal)+"\" cannot be run")
		body = executeBody(noPortal, 0)
	default:
		if e.write != nil && e.write.CountOnly && executeLimit(body) != 0 {
			body = executeBody(string(portal), 0) // the count row would suspend the portal
		}
		if p.info != nil {
			e.obs = s.observe(p.info.plan, p.route, p.write)
		}
	}
	return s.emit('E', body, e, nil)
}

// noPortal names a portal the proxy never binds: executing it fails (see planExecute).
const noPortal = "pgcanary_no_portal"

// noStatement names a statement the proxy never prepares: closing it answers CloseComplete and
// changes nothing (buildReplay).
const noStatement = "pgcanary_no_statement"

// executeBody builds an Execute message body.
func executeBody(portal string, limit uint32) []byte {
	out := make([]byte, 0, len(portal)+5)
	out = append(out, portal...)
	out = append(out, 0)
	return binary.BigEndian.AppendUint32(out, limit)
}

// executeLimit reads an Execute's row limit (0: none).
func executeLimit(body []byte) uint32 {
	_, rest, ok := cstring(body)
	if !ok || len(rest) < 4 {
		return 0
	}
	return binary.BigEndian.Uint32(rest)
}

// planQuery plans a simple Query: each statement is sent in its mirrored or routed form, and the
// responses are restored statement by statement.
func (s *session) planQuery(body []byte, e expected) error {
	sql := string(body[:len(body)-1])
	plan, path, role, unknown := s.planWithView(sql)
	changes := router.SessionChangesOf(sql)
	compareOff := false
	ops := changes.Settings // confirmed if the server completes them, whatever is foreseen
	if unknown != nil && len(unknown.Statements) > 1 && len(changes.Settings) > 0 && !unknown.Untouched {
		// The path cannot be followed now, but a statement of the text may make it known again
		// (a COMMIT or ROLLBACK ending the transaction that set it, a plain SET): the statements
		// after it are planned under it, those before relayed as written.
		if seq := s.planInSequence(sql, relayedAsWritten(unknown)); seq != nil {
			plan, compareOff = seq, true
		}
	}
	s.countUnfollowed(unknown, plan)
	if changes.DiscardAll {
		s.mu.Lock()
		if s.proj.inTx || s.pipelining {
			// Refused in a transaction block or a pipeline (25001).
			changes, e.refused = router.SessionChanges{}, true
		}
		s.mu.Unlock()
	}
	e.ops, e.created = ops, changes.Prepared
	e.drops = queryDrops(changes.Drops)
	defer func() { // after planning: the text's own statements are planned in sequence
		s.applyChanges(changes, e.drops)
		s.mu.Lock()
		if e.refused {
			s.proj.failing = true
		}
		s.proj.batchEnd() // a Query ends its implicit transaction
		s.pipelining = false
		s.mu.Unlock()
	}()
	if plan == nil {
		return s.emit('Q', body, e, nil)
	}
	compare := !compareOff
	if len(plan.Statements) > 1 && !plan.Untouched && unknown == nil {
		sequenced := s.planInSequence(sql, plan)
		// Statements after a SET in the text resolve names under another search_path than
		// path: not compared (comparisons are a sample; such texts are rare).
		compare = sequenced == plan
		plan = sequenced
	}
	executes := s.executedWrites(sql, plan)
	if plan.Untouched {
		if executes != nil {
			e.writes, e.obsList = make([]*router.WriteForm, len(executes)), make([]*observation, len(executes))
			for i, info := range executes {
				if info != nil {
					e.writes[i] = captureOf(info.writeForm())
					e.obsList[i] = s.observe(info.plan, "write", info.writeForm())
				}
			}
		}
		return s.emit('Q', body, e, nil)
	}
	changed := false
	forms := make([]*router.WriteForm, len(plan.Statements))
	obs := make([]*observation, len(plan.Statements))
	texts := make([]string, len(plan.Statements))
	var prepares []*stmtInfo
	var gateKind string
	var gateMigs []string
	gateInTx := false // a savepoint can buy a fallback inside a transaction
	onlyReads := true // a re-run of reads repeats nothing a rollback does not undo
	// Whether a failure of this Query could be re-run, asked only for a read that may fail.
	reRunnable, reRunKnown := false, false
	for i, st := range plan.Statements {
		texts[i] = st.SQL
		onlyReads = onlyReads && (st.Kind == router.KindRead || st.Kind == router.KindEmpty)
		switch {
		case executes != nil && executes[i] != nil:
			// EXECUTE of a write prepared in SQL in its mirrored form: it answers as that form does.
			forms[i] = captureOf(executes[i].writeForm())
			obs[i] = s.observe(executes[i].plan, "write", executes[i].writeForm())
		case st.Prepare != nil:
			texts[i], changed = st.Prepare.SQL, true
			if prepares == nil {
				prepares = make([]*stmtInfo, len(plan.Statements))
			}
			s.mu.Lock()
			path, role := s.proj.path.current(), s.proj.role.current()
			s.mu.Unlock()
			prepares[i] = &stmtInfo{name: st.Prepare.Name, plan: st.Prepare.Statement, query: st.Prepare.Statement.SQL, path: path, role: role, sqlPrepared: true}
		case st.Write != nil:
			texts[i], changed = st.Write.SQL, true
			forms[i] = captureOf(st.Write)
			obs[i] = s.observe(st, "write", st.Write)
			if st.Write.Passthrough {
				gateKind, gateMigs, gateInTx = "write", st.Migrations, true
			}
		case st.Read != nil:
			routed := s.routeNew(st.Read, st.SQL)
			if routed && st.Read.MayFail {
				if !reRunKnown {
					reRunnable, reRunKnown = (len(plan.Statements) == 1 || allReads(plan)) && s.fallbackPossible(), true
				}
				routed = reRunnable
			}
			s.countRead(st.Read, routed)
			if compare {
				s.maybeCompare(st.Read, st.SQL, nil, nil, path, role)
			}
			obs[i] = s.observe(st, routeName(routed), nil)
			if routed {
				texts[i], changed = st.Read.SQL, true
				gateKind, gateMigs = "read", st.Read.Migrations
				gateInTx = gateInTx || st.Read.MayFail
				if st.Read.Origins != nil || st.Read.Moves != nil {
					if e.routedReads == nil {
						e.routedReads = make([]*router.ReadForm, len(plan.Statements))
					}
					e.routedReads[i] = st.Read
				}
			}
		default:
			if st.Compare != nil && compare {
				s.maybeCompare(st.Compare, st.Compare.OldSQL, nil, nil, path, role)
			}
			obs[i] = s.observe(st, "old", nil)
			if obs[i] != nil {
				obs[i].unmirrored = st.Unmirrored
			}
		}
	}
	e.obsList = obs
	if !changed {
		if executes != nil {
			e.writes = forms
		}
		return s.emit('Q', body, e, nil)
	}
	e.writes, e.prepares = forms, prepares
	// Statements are joined on their own lines: a statement may end in a -- comment.
	joined := strings.Join(texts, "\n;\n")
	e.rewrite = newRewriteText(joined, sql)
	out := append([]byte(joined), 0)
	// A Query of several statements is re-run only when all of them are reads: a write would run
	// again with effects a rollback does not undo (serial values), a mirrored one in the client's
	// own text, and PREPARE and the like would collide with themselves.
	if gateKind != "" && (len(plan.Statements) == 1 || onlyReads) {
		return s.emitGatedQuery(out, body, e, gateKind, gateMigs, gateInTx)
	}
	return s.emit('Q', out, e, nil)
}

// allReads reports whether every statement of a plan is a read (or empty).
func allReads(plan *router.Plan) bool {
	for _, st := range plan.Statements {
		if st.Kind != router.KindRead && st.Kind != router.KindEmpty {
			return false
		}
	}
	return true
}

func routeName(newShape bool) string {
	if newShape {
		return "new"
	}
	return "old"
}

// plan plans sql with the session's search_path and role. When a statement set either to a value
// the proxy cannot know (set_config with a computed argument), names cannot be resolved as the
// server will: the statement is relayed as written, and a write that would have been mirrored is
// counted unmirrored (verify --repair closes the drift) until the session sets them plainly again.
func (s *session) plan(sql string) *router.Plan {
	plan, _, _, unknown := s.planWithView(sql)
	s.countUnfollowed(unknown, nil)
	return plan
}

// planWithView is plan, also returning the search_path and role it planned under.
// When the path or role cannot be followed, it returns no plan, and as unknown the text's plan
// under the session's startup path: what it would have done, whose writes the caller counts
// unmirrored (countUnfollowed) as it relays them.
func (s *session) planWithView(sql string) (_ *router.Plan, path, user string, unknown *router.Plan) {
	plan, path, user, unknown := s.planUnderProjection(sql)
	touched := plan != nil && !plan.Untouched || unknown != nil && !unknown.Untouched
	if !touched {
		return plan, path, user, unknown
	}
	// An earlier batch may yet change what the names mean (settle.go): plan once it is answered.
	// On an error the session is closing, and nothing more is sent.
	if waited, err := s.awaitSettled(); waited && err == nil {
		return s.planUnderProjection(sql)
	}
	return plan, path, user, unknown
}

// planUnderProjection plans sql under the session's projected search_path and role (see
// planWithView).
func (s *session) planUnderProjection(sql string) (_ *router.Plan, path, user string, unknown *router.Plan) {
	s.mu.Lock()
	path, user = s.proj.path.current(), s.proj.role.current()
	known := path != unknownSetting && (user != unknownSetting || !strings.Contains(path, "$user"))
	base, warn := s.proj.path.base, !known && !s.pathWarned
	s.pathWarned = s.pathWarned || warn
	s.mu.Unlock()
	if known {
		plan := s.srv.planner.Plan(s.database, path, user, sql)
		s.noteDDL(plan)
		return plan, path, user, nil
	}
	if warn {
		s.log.Warn("the session set search_path or its role to a value pgcanary cannot follow (set_config with a computed argument); its statements are relayed unrewritten and unmirrored until it sets them plainly")
	}
	return nil, path, user, s.srv.planner.Plan(s.database, base, s.user, sql)
}

// countUnfollowed counts the writes of a text planned under an unfollowed path as unmirrored,
// but for the statements sequenced planned anew (a COMMIT or SET earlier in the text made the
// path known again).
func (s *session) countUnfollowed(unknown, sequenced *router.Plan) {
	if unknown == nil {
		return
	}
	for i, st := range unknown.Statements {
		if st.Write == nil {
			continue
		}
		if sequenced != nil && i < len(sequenced.Statements) && sequenced.Statements[i].Write != nil {
			continue
		}
		s.srv.metrics.UnmirroredWrite(st.Write.Migration, reasonSettingUnknown)
	}
}

// relayedAsWritten is a plan that sends every statement of p as the client wrote it.
func relayedAsWritten(p *router.Plan) *router.Plan {
	out := &router.Plan{Generation: p.Generation, Statements: make([]*router.StatementPlan, len(p.Statements))}
	for i, st := range p.Statements {
		out.Statements[i] = &router.StatementPlan{Kind: st.Kind, SQL: st.SQL}
	}
	return out
}

// noteDDL tells the server when a plan holds DDL that names a migrated relation's name (only
// such texts are parsed): the schemas holding those names, or the relations' columns, may change.
// The session's own reads stay on the old shape meanwhile (routing.ddlHoldUntil).
func (s *session) noteDDL(plan *router.Plan) {
	if plan == nil || plan.Untouched || s.srv.namesChanged == nil {
		return
	}
	for _, st := range plan.Statements {
		if st.Kind == router.KindDDL {
			s.srv.namesChanged()
			s.route.ddlHoldGen, s.route.ddlHoldUntil = s.srv.planner.Generation(), time.Now().Add(ddlHold)
			return
		}
	}
}

// reasonSettingUnknown labels writes left unmirrored because the session's search_path or role
// could not be followed.
const reasonSettingUnknown = "search_path_unknown"

// planInSequence plans each statement of a multi-statement Query under the search_path and role
// that the statements before it leave: `SET search_path TO app, public; UPDATE users ...` must
// not mirror the UPDATE as if users were still public.users. It returns plan itself when no
// statement but the last changes either.
func (s *session) planInSequence(sql string, plan *router.Plan) *router.Plan {
	if ch := router.SessionChangesOf(sql); len(ch.Settings) == 0 {
		return plan
	}
	s.mu.Lock()
	proj := s.proj.clone()
	s.mu.Unlock()
	startPath, startRole := proj.path.current(), proj.role.current()
	out := &router.Plan{Generation: plan.Generation, Statements: make([]*router.StatementPlan, len(plan.Statements))}
	moved := false // the statements before this one left another search_path or role
	for i, st := range plan.Statements {
		if moved {
			p, u := proj.path.current(), proj.role.current()
			if p == unknownSetting || u == unknownSetting && strings.Contains(p, "$user") {
				// Names cannot be resolved as Postgres will: relayed as written, like any
				// statement after a setting pgcanary cannot follow.
				if st.Write != nil {
					s.srv.metrics.UnmirroredWrite(st.Write.Migration, reasonSettingUnknown)
				}
				st = &router.StatementPlan{Kind: st.Kind, SQL: st.SQL}
			} else if sub := s.srv.planner.Plan(s.database, p, u, st.SQL); sub != nil && len(sub.Statements) == 1 {
				st = sub.Statements[0]
			} else {
				st = &router.StatementPlan{Kind: st.Kind, SQL: st.SQL}
			}
		}
		out.Statements[i] = st
		for _, c := range router.SessionChangesOf(st.SQL).Settings {
			proj.apply(c)
		}
		moved = proj.path.current() != startPath || proj.role.current() != startRole
	}
	return out
}

// executedWrites returns, per statement of sql, the SQL-prepared mirrored write that an EXECUTE
// runs (nil for other statements), or nil when no statement executes one. Only a session that
// prepared such a write in SQL, or a text that prepares one, is parsed for EXECUTE. A PREPARE
// earlier in the same text counts: the server runs it before the EXECUTE.
func (s *session) executedWrites(sql string, plan *router.Plan) []*stmtInfo {
	var inText map[string]*stmtInfo // nil, allocation-free, for every Query without a PREPARE
	for _, st := range plan.Statements {
		if st.Prepare != nil {
			if inText == nil {
				inText = map[string]*stmtInfo{}
			}
			inText[st.Prepare.Name] = &stmtInfo{name: st.Prepare.Name, plan: st.Prepare.Statement, sqlPrepared: true}
		}
	}
	s.mu.Lock()
	prepared := s.sqlPrepared
	s.mu.Unlock()
	if !prepared && len(inText) == 0 || !strings.Contains(strings.ToLower(sql), "execute") {
		return nil
	}
	names := router.ExecutedNames(sql)
	if len(names) == 0 || !plan.Untouched && len(names) != len(plan.Statements) {
		return nil
	}
	var out []*stmtInfo
	s.mu.Lock()
	defer s.mu.Unlock()
	var seen map[string]bool // PREPAREs of this text that run before statement i
	for i, name := range names {
		if i < len(plan.Statements) && plan.Statements[i].Prepare != nil {
			if seen == nil {
				seen = map[string]bool{}
			}
			seen[plan.Statements[i].Prepare.Name] = true
		}
		info := s.stmts[name]
		if seen[name] {
			info = inText[name]
		}
		if name != "" && info != nil && info.sqlPrepared && info.writeForm() != nil {
			if out == nil {
				out = make([]*stmtInfo, len(names))
			}
			out[i] = info
		}
	}
	return out
}

// routedRead returns a routed read's form, as a Describe's entry holds it for setOrigins (nil when
// its RowDescription needs nothing).
func routedRead(info *stmtInfo) *router.ReadForm {
	if info.plan == nil || info.plan.Read == nil || info.plan.Read.Origins == nil && info.plan.Read.Moves == nil {
		return nil
	}
	return info.plan.Read
}

// setOrigins gives a routed read's RowDescription fields, in place, the table OID and column
// number the client's text would report for them: the origin the planner found for the column
// (router.ReadForm.Origins), or, for a field the new form reports as a column the projection
// copies unchanged, that column's old one (router.ReadForm.Moves). Other fields stay as they are.
func setOrigins(body []byte, rf *router.ReadForm) {
	if len(body) < 2 {
		return
	}
	n := int(binary.BigEndian.Uint16(body))
	pos := 2
	for i := 0; i < n; i++ {
		end := bytes.IndexByte(body[pos:], 0)
		if end < 0 || pos+end+1+18 > len(body) {
			return
		}
		pos += end + 1
		o := router.ColumnOrigin{}
		if i < len(rf.Origins) {
			o = rf.Origins[i]
		}
		if o.TableOID == 0 {
			at := router.ColumnOrigin{TableOID: binary.BigEndian.Uint32(body[pos:]), AttNum: int16(binary.BigEndian.Uint16(body[pos+4:]))}
			for _, m := range rf.Moves {
				if m.New == at {
					o = m.Old
				}
			}
		}
		if o.TableOID != 0 {
			binary.BigEndian.PutUint32(body[pos:], o.TableOID)
			binary.BigEndian.PutUint16(body[pos+4:], uint16(o.AttNum))
		}
		pos += 18 // table OID, column number, type OID, size, modifier, format
	}
}

// executedName returns the name of the SQL-prepared statement a protocol statement's text
// EXECUTEs, when the session has prepared a mirrored write in SQL ("" otherwise, without parsing).
func (s *session) executedName(sql string) string {
	s.mu.Lock()
	prepared := s.sqlPrepared
	s.mu.Unlock()
	if !prepared || !containsFold(sql, "execute") {
		return ""
	}
	if names := router.ExecutedNames(sql); len(names) == 1 {
		return names[0]
	}
	return ""
}

// executedWrite resolves an EXECUTE statement to the SQL-prepared mirrored write it runs now
// (nil if it runs none: the name was deallocated, or prepares something else).
func (s *session) executedWrite(info *stmtInfo) *stmtInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.executedWriteLocked(info)
}

// executedWriteLocked is executedWrite holding mu.
func (s *session) executedWriteLocked(info *stmtInfo) *stmtInfo {
	if info.executes == "" {
		return nil
	}
	if x := s.stmts[info.executes]; x != nil && x.sqlPrepared && x.writeForm() != nil {
		return x
	}
	return nil
}

// containsFold reports whether s contains the lower-case ASCII word w in any case, without
// allocating.
func containsFold(s, w string) bool {
	for i := 0; i+len(w) <= len(s); i++ {
		j := 0
		for j < len(w) && s[i+j]|0x20 == w[j] {
			j++
		}
		if j == len(w) {
			return true
		}
	}
	return false
}

// applySetting applies one change to the search_path or the role; savepoints scope both.
func applySetting(path *settingState, role *userState, c router.SettingChange) {
	switch c.Setting {
	case router.SettingSearchPath:
		path.apply(c)
	case router.SettingRole, router.SettingSessionAuthorization:
		role.apply(c)
	default:
		path.apply(c)
		role.apply(c)
	}
}

// changesNothing reports whether ch leaves the session's settings and statements alone.
func changesNothing(ch router.SessionChanges) bool {
	return len(ch.Settings) == 0 && len(ch.Drops) == 0
}

// applyChanges keeps the session's projected search_path and its statement records in step with
// what a Query sent now does to them; drops (queryDrops) keeps what it drops, for undoDrops.
func (s *session) applyChanges(ch router.SessionChanges, drops *dropUndo) {
	if changesNothing(ch) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.noteClientSavepoints(ch.Settings)
	for _, c := range ch.Settings {
		s.proj.apply(c)
	}
	for u := drops; u != nil; u = u.next {
		s.dropStatements(u)
	}
}

// dropUndo is what a Close, DEALLOCATE or DISCARD ALL removed from the session's records when it
// was sent, to bring back if the server does not run it (an error before or at it skips it, and a
// prepared statement outlives the transaction's rollback).
type dropUndo struct {
	drops    []router.Drop // what the request drops (one statement's)
	stmt     int           // in a Query: the index of the statement dropping them
	next     *dropUndo     // in a Query: the next statement's (queryDrops)
	applied  bool          // dropStatements ran
	void     bool          // the request failed before dropStatements ran: it must not
	resolved bool          // the server answered: dropsDone or undoDrops ran
	records  []*droppedRecord
	orphans  []*variant // variants queued for closing that DEALLOCATE ALL took off the queue
	// seq, when set, is the planning position the records take (droppedRecord.seq) in place of
	// a new one: a re-run batch drops again what its first run dropped, in its first run's
	// place among the Parses of the batch (redoParse).
	seq uint64
}

// droppedRecord is what the session knew of one statement name that requests not yet answered
// dropped. Several may drop the same name (a Close pipelined behind another that the server may
// skip): the name is gone once one of them runs, and back only if every one of them fails.
type droppedRecord struct {
	name       string
	info       *stmtInfo
	changes    router.SessionChanges
	hadChanges bool
	named      bool
	pending    int    // requests dropping it still unanswered
	gone       bool   // one of them ran
	seq        uint64 // session.recordSeq when it was dropped
}

// queryDrops makes one dropUndo per statement of a Query that drops prepared statements, chained
// in statement order: an error undoes only the drops at and after the failed statement, since
// prepared statements outlive the implicit transaction's rollback.
func queryDrops(drops []router.Drop) *dropUndo {
	var first, last *dropUndo
	for i, d := range drops {
		if last != nil && last.stmt == d.Statement {
			continue
		}
		j := i + 1
		for j < len(drops) && drops[j].Statement == d.Statement {
			j++
		}
		u := &dropUndo{drops: drops[i:j], stmt: d.Statement}
		if last == nil {
			first = u
		} else {
			last.next = u
		}
		last = u
	}
	return first
}

// dropStatements removes the statements u drops from the session's records, keeping them in u.
// Holds mu.
func (s *session) dropStatements(u *dropUndo) {
	if u.void {
		return
	}
	u.applied = true
	all := false
	for _, d := range u.drops {
		if d.All {
			all = true
		} else if info := s.dropRecord(d.Name, u); info != nil {
			s.orphanVariants(info)
		}
	}
	if all {
		// The server drops every prepared statement, variants included: none is left to close.
		u.orphans = slices.Clone(s.orphans)
		s.orphans = s.orphans[:0]
		names := maps.Clone(s.names)
		if names == nil {
			names = map[string]struct{}{}
		}
		for name := range s.stmts {
			names[name] = struct{}{}
		}
		for name := range s.changers {
			names[name] = struct{}{}
		}
		for name := range s.dropping {
			names[name] = struct{}{}
		}
		for name := range names {
			s.dropRecord(name, u)
		}
	}
}

// dropRecord removes what the session knows of statement name, keeping it for u; it returns the
// statement's record, whose variants the caller closes (nil when it was dropped already, by a
// request not yet answered, which u then joins). Holds mu.
func (s *session) dropRecord(name string, u *dropUndo) *stmtInfo {
	info := s.stmts[name]
	c, hadChanges := s.changers[name]
	_, named := s.names[name]
	if info == nil && !hadChanges && !named {
		if r := s.dropping[name]; r != nil {
			r.pending++
			u.records = append(u.records, r)
		}
		return nil
	}
	seq := u.seq
	if seq == 0 {
		s.recordSeq++
		seq = s.recordSeq
	}
	r := &droppedRecord{name: name, info: info, changes: c, hadChanges: hadChanges, named: named, pending: 1, seq: seq}
	delete(s.stmts, name)
	delete(s.changers, name)
	delete(s.names, name)
	if s.dropping == nil {
		s.dropping = map[string]*droppedRecord{}
	}
	s.dropping[name] = r
	u.records = append(u.records, r)
	return info
}

// dropsDone takes the server's answer to a request that dropped statements: they are gone.
// Holds mu.
func (s *session) dropsDone(u *dropUndo) {
	if !u.applied || u.resolved {
		return
	}
	u.resolved = true
	for _, r := range u.records {
		r.gone = true
		s.settleDrop(r)
	}
}

// undoDrops brings back what a request the server did not run dropped, unless another request
// dropping the same name ran or may still run. Records made since (a Parse of a freed name)
// stand. Holds mu.
func (s *session) undoDrops(u *dropUndo) {
	if !u.applied {
		u.void = true
		return
	}
	if u.resolved {
		return
	}
	u.resolved = true
	for _, r := range u.records {
		if s.settleDrop(r) && !r.gone {
			s.restoreRecord(r)
		}
	}
	s.orphans = append(u.orphans, s.orphans...)
}

// settleDrop counts one answered request dropping r; it reports whether none is left. Holds mu.
func (s *session) settleDrop(r *droppedRecord) bool {
	r.pending--
	if r.pending > 0 {
		return false
	}
	if s.dropping[r.name] == r {
		delete(s.dropping, r.name)
	}
	return true
}

// restoreRecord puts back what the session knew of a statement whose drops all failed. Holds mu.
func (s *session) restoreRecord(r *droppedRecord) {
	if s.stmts[r.name] != nil || s.dropping[r.name] != nil {
		return // a record made since stands
	}
	if r.info != nil {
		s.stmts[r.name] = r.info
		// Its variants stay as they are: Closes still queued for the next Sync are withdrawn;
		// one already sent marks its variant unsent when the server answers it (not when the
		// server skips it behind the failure).
		s.orphans = slices.DeleteFunc(s.orphans, r.info.hasVariant)
	}
	if r.hadChanges {
		if s.changers == nil {
			s.changers = map[string]router.SessionChanges{}
		}
		s.changers[r.name] = r.changes
	}
	if r.named {
		if s.names == nil {
			s.names = map[string]struct{}{}
		}
		s.names[r.name] = struct{}{}
	}
}

// orphanVariants queues a dropped statement's variants for closing at the next Sync. Holds mu.
func (s *session) orphanVariants(info *stmtInfo) {
	for _, v := range info.variants() {
		if v != nil && v.sent {
			s.orphans = append(s.orphans, v)
		}
	}
}

// closeOrphans closes the variants of statements the client dropped, just before its Sync.
func (s *session) closeOrphans() {
	s.mu.Lock()
	if s.discarding.Load() {
		s.mu.Unlock()
		return // the server would discard the Closes: they wait for the Sync after this one
	}
	orphans := s.orphans
	s.orphans = nil
	s.mu.Unlock()
	for _, v := range orphans {
		_ = s.emit('C', closeStatementBody(v.name), expected{kind: reqClose, suppress: true, closes: v}, nil)
	}
}

// planParse plans a Parse. A named read keeps its old form (routes are chosen at Bind); an
// unnamed one is executed right after it is parsed, so it is routed now; a write is sent in its
// mirrored form.
func (s *session) planParse(body []byte, e expected) error {
	var msg pgproto3.Parse
	if err := msg.Decode(body); err != nil {
		return s.emit('P', body, e, &recorded{typ: 'P'})
	}
	plan, path, role, unknown := s.planWithView(msg.Query)
	s.countUnfollowed(unknown, nil)
	// What the statement does to prepared statements happens at each Bind (planBind), and to
	// search_path and the role at each Execute (planExecute): a client may Parse and Describe
	// statements ahead of running them (pgx's describe mode), and run one several times.
	changes := router.SessionChangesOf(msg.Query)
	var info *stmtInfo
	// A named statement is recorded when it touches a migration, or when its text names a
	// migrated relation's name (the planner parsed it) that resolves elsewhere now: under
	// another search_path at a later Bind it may mean the migrated relation (bindMoved).
	if plan != nil && !plan.Untouched && len(plan.Statements) == 1 && (len(plan.Statements[0].Migrations) > 0 || msg.Name != "") {
		st := plan.Statements[0]
		info = &stmtInfo{name: msg.Name, plan: st, query: msg.Query, paramOIDs: msg.ParameterOIDs, path: path, role: role, gen: plan.Generation}
	} else if name := s.executedName(msg.Query); name != "" {
		st := &router.StatementPlan{SQL: msg.Query}
		if plan != nil && len(plan.Statements) == 1 {
			st = plan.Statements[0]
		}
		info = &stmtInfo{name: msg.Name, plan: st, query: msg.Query, paramOIDs: msg.ParameterOIDs, path: path, role: role, executes: name}
	}
	s.mu.Lock()
	claim := false
	if _, exists := s.names[msg.Name]; exists && msg.Name != "" {
		if !s.parseInFlight(msg.Name) {
			// Postgres refuses a Parse of a name it holds (42P05) and keeps the statement it
			// has: the session keeps its record too, for the Binds pipelined behind this Parse.
			s.mu.Unlock()
			return s.emit('P', body, e, &recorded{typ: 'P', body: body})
		}
		// The name is taken by a Parse still in flight, which the server skips if something
		// before it in its batch fails: this Parse then makes the statement. So it is planned
		// and sent as any, and recorded only if the server completes it (parseUndo, claim).
		claim = true
	}
	s.recordSeq++
	u := &parseUndo{name: msg.Name, prev: s.stmts[msg.Name], had: s.stmts[msg.Name] != nil, made: info, seq: s.recordSeq}
	u.prevChanges, u.hadChanges = s.changers[msg.Name]
	if !changesNothing(changes) {
		u.madeChanges, u.madeHasChanges = changes, true
	}
	if claim {
		e.claim = u
		s.claims++
	} else {
		e.undo = u
		s.applyParse(u) // not redoParse: this Parse is the newest, no FIFO scan on every Parse
	}
	s.mu.Unlock()
	rec := &recorded{typ: 'P', body: body, info: info}
	e.parses = info
	if info == nil {
		return s.emit('P', body, e, rec)
	}
	st := info.plan
	sendAs := func(query string) []byte {
		m := msg
		m.Query = query
		out, err := m.Encode(nil)
		if err != nil {
			return body
		}
		return out[headerLen:]
	}
	switch {
	case st.Prepare != nil:
		// A SQL PREPARE of a mirrored write, sent as a protocol statement: it prepares the
		// mirrored form when executed (planExecute records it then).
		e.rewrite = newRewriteText(st.Prepare.SQL, msg.Query)
		return s.emit('P', sendAs(st.Prepare.SQL), e, rec)
	case st.Write != nil:
		e.write = captureOf(st.Write)
		e.rewrite = newRewriteText(st.Write.SQL, msg.Query)
		out := sendAs(st.Write.SQL)
		if msg.Name == "" && st.Write.Passthrough {
			return s.emitGatable('P', out, e, rec, "write", st.Migrations, true)
		}
		return s.emit('P', out, e, rec)
	case st.Read != nil && msg.Name == "":
		routed := s.routeNew(st.Read, st.SQL) && (!st.Read.MayFail || s.fallbackPossible())
		info.routed = routed
		s.countRead(st.Read, routed)
		if !routed {
			return s.emit('P', body, e, rec)
		}
		e.rewrite = newRewriteText(st.Read.SQL, msg.Query)
		return s.emitGatable('P', sendAs(st.Read.SQL), e, rec, "read", st.Read.Migrations, st.Read.MayFail)
	}
	return s.emit('P', body, e, rec)
}

// planBind plans a Bind: a named read statement picks its route for this execution, switching to
// its new-shape variant (prepared now if it has not been) when routed to new.
func (s *session) planBind(body []byte, e expected) error {
	portal, rest, ok := cstring(body)
	if !ok {
		return s.emit('B', body, e, &recorded{typ: 'B'})
	}
	stmt, _, _ := cstring(rest)
	s.mu.Lock()
	if len(stmt) > 0 && s.stmts[string(stmt)] != nil && s.settingsUnsettled() {
		// A named statement's names are resolved again at Bind under the settings then
		// (bindMoved): an earlier batch may yet change them (settle.go).
		s.mu.Unlock()
		if _, err := s.awaitSettled(); err != nil {
			return err
		}
		s.mu.Lock()
	}
	info := s.stmts[string(stmt)]
	changes, changer := s.changers[string(stmt)]
	if info == nil && len(s.portals) > 0 {
		delete(s.portals, string(portal))
	}
	// In a failed transaction the Bind cannot run (below): its names are not looked at again.
	pathChanged := info != nil && info.name != "" && s.txStatus != 'E' && (s.proj.path.current() != info.path || s.proj.role.current() != info.role)
	genChanged := info != nil && info.name != "" && s.txStatus != 'E' && info.gen != 0 && info.gen != s.srv.planner.Generation()
	// In a failed transaction the statement cannot run, but Postgres checks the Bind against it
	// first (08P01 for a wrong parameter count): the client's own name must get that Bind, since
	// a variant's Parse would fail with 25P02 before it.
	confirmed := info != nil && info.confirmed && s.txStatus != 'E'
	// Setting changes and drops of prepared statements apply when the portal runs (planExecute).
	if changer {
		if s.portalChanges == nil {
			s.portalChanges = map[string]router.SessionChanges{}
		}
		s.portalChanges[string(portal)] = changes
	} else if len(s.portalChanges) > 0 {
		delete(s.portalChanges, string(portal))
	}
	s.mu.Unlock()
	rec := &recorded{typ: 'B', body: body, info: info, portal: string(portal)}
	if info == nil {
		return s.emit('B', body, e, rec)
	}
	if pathChanged || genChanged {
		now := s.plan(info.query)
		if namesMoved(info, now) {
			return s.bindMoved(body, e, rec, info, string(portal), now)
		}
		if genChanged && now != nil {
			s.mu.Lock()
			info.gen = now.Generation // the same forms: no need to plan it again at every Bind
			s.mu.Unlock()
		}
	}
	st := info.plan
	p := &portalInfo{info: info, route: "old"}
	switch {
	case info.executes != "":
		if x := s.executedWrite(info); x != nil {
			p.info, p.route, p.write = x, "write", x.writeForm()
		}
	case st.Write != nil:
		p.route, p.write = "write", info.writeForm()
	case st.Read != nil && info.name == "":
		p.route = routeName(info.routed)
	case st.Read != nil:
		// An unconfirmed statement runs as whatever the server holds under its name: the
		// client's own text if its Parse succeeds, else what Postgres would run or refuse.
		// (confirmed is false in a failed transaction too.)
		routed := confirmed && s.routeNew(st.Read, st.SQL) && (!st.Read.MayFail || s.fallbackPossible())
		s.countRead(st.Read, routed)
		p.route = routeName(routed)
	}
	s.mu.Lock()
	s.portals[string(portal)] = p
	s.mu.Unlock()
	if st.Read != nil {
		s.maybeCompare(st.Read, st.SQL, body, info.paramOIDs, info.path, info.role)
	} else if st.Compare != nil {
		s.maybeCompare(st.Compare, st.Compare.OldSQL, body, info.paramOIDs, info.path, info.role)
	}
	switch {
	case st.Read != nil && info.name != "" && p.route == "new":
		e.newForm = "read"
		return s.emitRoutedBind(body, e, rec, info, string(portal))
	case st.Read != nil && info.name == "" && info.routed:
		e.newForm = "read"
		return s.emitGatable('B', body, e, rec, "read", st.Read.Migrations, st.Read.MayFail)
	case p.write != nil && p.write.Passthrough:
		e.newForm = "write"
		return s.emitGatable('B', body, e, rec, "write", st.Migrations, true)
	}
	return s.emit('B', body, e, rec)
}

// namesMoved reports whether a named statement, planned under another search_path or role than
// the session's now, resolves its names otherwise: now, its text planned again, has other forms.
func namesMoved(info *stmtInfo, now *router.Plan) bool {
	if now == nil || now.Untouched || len(now.Statements) != 1 {
		return true
	}
	a, b := info.plan, now.Statements[0]
	switch {
	case a.Write != nil:
		return b.Write == nil || b.Write.SQL != a.Write.SQL
	case a.Read != nil:
		return b.Read == nil || b.Read.SQL != a.Read.SQL
	}
	return !slices.Equal(a.Migrations, b.Migrations)
}

// bindMoved binds a statement whose names moved (namesMoved). When its text is now a mirrored
// write, it runs in that mirrored form (bindMovedWrite). Otherwise it runs as the client's own
// text, which Postgres resolves afresh: a read is not routed or compared, and a write is not
// mirrored (its mirrored form under the client's name would change another table's rows into a
// new shape); such a write is counted by the reasons its current plan gives.
func (s *session) bindMoved(body []byte, e expected, rec *recorded, info *stmtInfo, portal string, now *router.Plan) error {
	var st *router.StatementPlan
	if now != nil && len(now.Statements) == 1 {
		st = now.Statements[0]
	}
	if st != nil && st.Write != nil {
		return s.bindMovedWrite(body, e, rec, info, portal, st)
	}
	if st != nil {
		for _, u := range st.Unmirrored {
			s.srv.metrics.UnmirroredWrite(u.Migration, u.Reason)
		}
	}
	s.mu.Lock()
	delete(s.portals, portal) // executed as the client's own statement: nothing to restore
	if info.plan.Write != nil && info.origVariant == nil {
		s.variantSeq++
		info.origVariant = &variant{name: "pgcanary_o" + strconv.FormatUint(s.variantSeq, 10)}
	}
	v := info.origVariant
	types := info.variantParamTypes()
	s.mu.Unlock()
	if info.plan.Write == nil {
		return s.emit('B', body, e, rec) // the client's name holds its own text
	}
	if err := s.ensureVariant(v, info.query, info.query, types); err != nil {
		return err
	}
	return s.emit('B', rebindStatement(body, portal, v.name), e, rec)
}

// boundVariant notes, for a gated batch's re-run, the text and parameter types of the variant a
// write's Bind is sent through (rec is nil when no gate may record it).
func boundVariant(rec *recorded, sql string, oids []uint32) {
	if rec != nil {
		rec.boundSQL, rec.boundOIDs = sql, oids
	}
}

// bindMovedWrite binds a statement whose names now mean a migrated relation with mirrored writes
// (say users is public.users again after RESET search_path, though it was app.users when the
// client prepared it) to that write's mirrored form under the current search_path, prepared as a
// variant (pgcanary_mN; made again when the form changes).
func (s *session) bindMovedWrite(body []byte, e expected, rec *recorded, info *stmtInfo, portal string, st *router.StatementPlan) error {
	s.mu.Lock()
	v := s.replaceUnsettled(info.movedVariant, "pgcanary_m")
	info.movedVariant = v
	if v == nil || info.movedSQL != st.Write.SQL {
		if v != nil && v.sent {
			s.orphans = append(s.orphans, v)
		}
		s.variantSeq++
		v = &variant{name: "pgcanary_m" + strconv.FormatUint(s.variantSeq, 10)}
		info.movedVariant, info.movedSQL = v, st.Write.SQL
	}
	now := &stmtInfo{name: info.name, plan: st, query: info.query, paramOIDs: info.paramOIDs, confirmed: true}
	s.portals[portal] = &portalInfo{info: now, route: "write", write: st.Write}
	types := info.variantParamTypes()
	s.mu.Unlock()
	if err := s.ensureVariant(v, st.Write.SQL, info.query, types); err != nil {
		return err
	}
	out := rebindStatement(body, portal, v.name)
	boundVariant(rec, st.Write.SQL, types)
	if st.Write.Passthrough {
		e.newForm = "write" // a failure re-runs the client's own Bind: its text, unmirrored
		return s.emitGatable('B', out, e, rec, "write", st.Migrations, true)
	}
	return s.emit('B', out, e, rec)
}

// emitRoutedBind sends a Bind to a read's new-shape variant, preparing the variant first when
// this session has not yet.
func (s *session) emitRoutedBind(body []byte, e expected, rec *recorded, info *stmtInfo, portal string) error {
	s.mu.Lock()
	if info.newVariant == nil {
		s.variantSeq++
		info.newVariant = &variant{name: "pgcanary_r" + strconv.FormatUint(s.variantSeq, 10), newShape: true}
	}
	info.newVariant = s.replaceUnsettled(info.newVariant, "pgcanary_r")
	v := info.newVariant
	types := info.variantParamTypes()
	s.mu.Unlock()
	if _, err := s.maybeStartGate("read", info.plan.Read.Migrations, true, info.plan.Read.MayFail); err != nil {
		return err
	}
	if err := s.ensureVariant(v, info.plan.Read.SQL, info.query, types); err != nil {
		return err
	}
	return s.emit('B', rebindStatement(body, portal, v.name), e, rec)
}

// ensureVariant sends the Parse of a variant unless it went out already; client is the text of
// the client's statement it stands for (its failure is the client's, positions included).
func (s *session) ensureVariant(v *variant, query, client string, oids []uint32) error {
	s.mu.Lock()
	sent := v.sent
	v.sent, v.batch = true, s.batch
	if !sent {
		v.confirmed = false
	}
	s.mu.Unlock()
	if sent {
		return nil
	}
	msg := pgproto3.Parse{Name: v.name, Query: query, ParameterOIDs: oids}
	out, err := msg.Encode(nil)
	if err != nil {
		return err
	}
	return s.emit('P', out[headerLen:], expected{kind: reqParse, suppress: true, variant: v, rewrite: newRewriteText(query, client)}, nil)
}

// rebindStatement returns a Bind body that binds portal to statement stmt instead.
func rebindStatement(body []byte, portal, stmt string) []byte {
	_, rest, _ := cstring(body)
	_, params, _ := cstring(rest)
	out := make([]byte, 0, len(portal)+len(stmt)+2+len(params))
	out = append(out, portal...)
	out = append(out, 0)
	out = append(out, stmt...)
	out = append(out, 0)
	return append(out, params...)
}

func closeStatementBody(name string) []byte {
	out := make([]byte, 0, len(name)+2)
	out = append(out, 'S')
	out = append(out, name...)
	return append(out, 0)
}

// describeStatement gives a Describe of a statement the transform of the form the server holds
// under its name (info: the session's record of it; nil for a statement it does not plan). Holds mu.
func (s *session) describeStatement(e *expected, info *stmtInfo) {
	if info == nil {
		return
	}
	e.write = captureOf(info.writeForm())
	if info.routed { // an unnamed statement the server holds in its new form
		e.routedRead = routedRead(info)
	}
	if x := s.executedWriteLocked(info); x != nil {
		e.write = captureOf(x.writeForm())
	}
	e.describes = info
}

// parseInFlight reports whether a Parse of the named statement is sent (or held in a gate) and
// not yet answered. Holds mu.
func (s *session) parseInFlight(name string) bool {
	return s.anyInFlight(func(e *expected) bool {
		u := e.undo
		if u == nil {
			u = e.claim
		}
		return e.kind == reqParse && u != nil && u.name == name
	})
}

// claimInFlight reports whether a Parse that makes the named statement only if an earlier one
// fails (planParse) is not yet answered. Holds mu.
func (s *session) claimInFlight(name string) bool {
	return s.anyInFlight(func(e *expected) bool { return e.claim != nil && e.claim.name == name })
}

// anyInFlight reports whether a request not yet answered, sent or held in a gate, satisfies f.
// Holds mu.
func (s *session) anyInFlight(f func(*expected) bool) bool {
	if s.fifo.any(f) {
		return true
	}
	if g := s.gate; g != nil {
		for i := range g.heldEnts {
			if f(&g.heldEnts[i]) {
				return true
			}
		}
	}
	return false
}

// planDescribeClose gives a Describe the transform of the form it describes, and makes a Close
// of a statement close its variants too.
func (s *session) planDescribeClose(typ byte, body []byte, e expected) error {
	if len(body) < 2 {
		return s.emit(typ, body, e, &recorded{typ: typ})
	}
	name, _, _ := cstring(body[1:])
	rec := &recorded{typ: typ, body: body}
	s.mu.Lock()
	var closeVariants []*variant
	if body[0] == 'P' {
		p := s.portals[string(name)]
		if typ == 'D' && p != nil {
			e.write = captureOf(p.write)
			if p.route == "new" && p.info != nil {
				e.routedRead = routedRead(p.info)
			}
		} else if typ == 'C' {
			delete(s.portals, string(name))
			delete(s.portalChanges, string(name))
		}
	} else {
		info := s.stmts[string(name)]
		rec.info = info
		if typ == 'D' && s.claims > 0 && s.claimInFlight(string(name)) {
			// Which statement the name holds when the server describes it depends on how a
			// Parse in flight ends (planParse): the answer is read as what the name holds then.
			e.describeLater = string(name)
		} else if typ == 'D' {
			s.describeStatement(&e, info)
		} else if typ == 'C' {
			// A Close skipped after an earlier error leaves the statement prepared: its record
			// comes back then (failedRequest). Its variants' Closes, sent right behind it, are
			// skipped with it.
			if s.knowsStatement(string(name)) {
				e.drops = &dropUndo{applied: true}
				if info := s.dropRecord(string(name), e.drops); info != nil {
					for _, v := range info.variants() {
						if v != nil && v.sent {
							closeVariants = append(closeVariants, v)
						}
					}
				}
			}
		}
	}
	s.mu.Unlock()
	if err := s.emit(typ, body, e, rec); err != nil {
		return err
	}
	for _, v := range closeVariants {
		if err := s.emit('C', closeStatementBody(v.name), expected{kind: reqClose, suppress: true, closes: v}, nil); err != nil {
			return err
		}
	}
	return nil
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
	case 'E':
		if w.Strategy == "capture" {
			return 'E', nameClientCommand(body, w.Verb)
		}
	}
	return typ, body
}

// nameClientCommand words a capture form's refusal as the client's statement's: the form is a
// SELECT, so "cannot execute SELECT in a read-only transaction" (and "during recovery", 25006)
// names it, where Postgres names the client's INSERT, UPDATE or DELETE. The command name is not
// translated, whatever lc_messages says.
func nameClientCommand(body []byte, verb string) []byte {
	if errorField(body, 'C') != "25006" {
		return body
	}
	fields, ok := responseFields(body)
	if !ok {
		return body
	}
	for i, f := range fields {
		if f.code == 'M' && bytes.Count(f.value, []byte("SELECT")) == 1 {
			fields[i].value = bytes.Replace(f.value, []byte("SELECT"), []byte(verb), 1)
		}
	}
	return encodeFields(fields, len(body)+len(verb))
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
