package proxy

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcanary/pgcanary/router"
)

// A gate keeps a routed read (or a passthrough write's mirrored form) undecided until its answer
// is known, so that when the new form fails before anything reached the client, the batch can be
// re-run in its old form and the client sees only the old form's answer.
//
// A gate opens on the first message of a batch sent while the session is idle: nothing in flight,
// and outside an explicit transaction, or inside one, where the batch is wrapped in a savepoint
// that a failure rolls back to. From then on:
//   - the client loop records the batch's messages (to replay them) up to its Sync, or the Query
//     itself, and holds any later message back, so that nothing overtakes a replay;
//   - the server loop holds the batch's output back until the gated statement completes (then
//     it releases everything) or fails (then it drops the output up to the batch's last answer
//     and sends the replay, then the held messages).
//
// Output beyond maxGateOutput goes to a temporary file when a new form may fail part-way through
// its rows, and is released early otherwise (heldout.go). A session that is not idle, a pipeline,
// or a batch mixing in other protocol messages simply runs without a fallback.
type gate struct {
	kind       string // "read" or "write"
	migrations []string
	savepoint  bool // inside a transaction: SAVEPOINT before, RELEASE after
	// keepSavepoint: the client's batch ends the transaction (the proxy's savepoint with it;
	// a RELEASE would then fail, in the next transaction if the batch began one) or takes,
	// releases or rolls back to savepoints of its own, nested in the proxy's, which releasing
	// the proxy's would release too. The proxy does not release its savepoint then: it ends
	// with its transaction. A failure while the gate is open comes before any of those
	// commands ran, so it still leaves the transaction failed at the client's level
	// (restoreFailedTransaction), as Postgres would.
	keepSavepoint bool
	extended      bool // the batch uses the extended protocol
	sealed        bool // the batch is complete: later client messages wait in held
	noFallback    bool // the batch cannot be replayed: release at the next server message
	gatedSet      bool // an entry of the batch carries gated
	// executes counts the batch's statements; notRead says one of them is not a read of a
	// migration (mayRerun). A write that ran before the failure would run again with effects a
	// rollback does not undo (its serial values, say).
	executes int
	notRead  bool
	// ranNotRead: a statement other than a read of a migration completed in the batch (it may
	// have written). A read's failure after it cannot be re-run. Before it, the batch can be,
	// with its writes sent again as they were sent (mirrored), unless one of them cannot be
	// (noWriteReplay: changing session settings, dropping statements, or rebound in a way the
	// re-run cannot make again; a Bind through a variant of the proxy's records its text for that).
	ranNotRead    bool
	noWriteReplay bool
	recorded      []*recorded
	recSize       int
	held          []byte // client messages after the batch
	heldEnts      []expected
	out           heldOutput // the batch's output, held back
	// spill: a new form of the batch may fail part-way through its rows (a read expression that
	// raises, a passthrough write's mirrored form), so its output is held to the end however
	// large, beyond maxGateOutput in a temporary file. Other batches fail, if at all, before
	// their first row, and release output past maxGateOutput early.
	spill       bool
	failed      bool   // the gated statement failed: drop output until the batch ends, then replay
	failErr     []byte // the failure's ErrorResponse body
	flushed     bool   // answers go through as they come; the gate ends the savepoint (passAnswers)
	flushWanted bool   // the client sent a Flush: its answers go out at the flush point (flushGate)
	// skipped: requests of the batch sent after its failure (awaitBatchEnd), which the server
	// discards. Their records stand for the re-run; they are undone if there is none.
	skipped []expected
	done    chan struct{}
}

const (
	// maxGateOutput bounds the output held back in memory while a fallback is possible.
	maxGateOutput = 256 << 10
	// maxGateBatch bounds the recorded batch; larger batches run without a fallback.
	maxGateBatch = 1 << 20
	// maxGateHeld bounds client messages held behind a gate before the client loop waits.
	maxGateHeld = 256 << 10
	// savepointName wraps a gated batch inside a transaction.
	savepointName = "pgcanary_mirror"
)

// recorded is one client message of a gated batch, kept to build its replay.
type recorded struct {
	typ    byte
	body   []byte    // the client's own message
	info   *stmtInfo // Parse, Bind, Describe/Close of a statement
	portal string    // Bind
	parsed bool      // Parse: its ParseComplete arrived (a named statement then exists)
	closed bool      // Close: its CloseComplete arrived (prepared statements outlive the rollback)
	// undo: a Parse's record of the statement, made again when the Parse is re-run (the
	// failure undid it, since the server skipped or rolled back the Parse).
	undo *parseUndo
	// entry is the response the message expected when it was sent (kept for writes, Executes and
	// Closes). write marks a message of a mirrored write (or a PREPARE of one), and sent what was
	// sent for it: a re-run after a read's failure sends it again, as it was (buildReplay).
	entry      expected
	write      bool
	sent       []byte
	portalInfo *portalInfo // a write's Bind: the portal it made
	// boundSQL and boundOIDs: a write's Bind sent through a variant of the proxy's (boundVariant)
	// binds that variant's text, with these parameter types.
	boundSQL  string
	boundOIDs []uint32
}

// maybeStartGate opens a gate when the session is idle: nothing in flight, outside a transaction,
// or, when inTx allows (the new form may fail where the old would not: router.ReadForm.MayFail,
// a passthrough write), inside one that has not failed, with a savepoint.
// extended says which protocol the batch uses, and so how to send the savepoint.
// It returns the gate it opened, or nil.
func (s *session) maybeStartGate(kind string, migrations []string, extended, inTxToo bool) (*gate, error) {
	s.mu.Lock()
	if g := s.gate; g != nil && inTxToo {
		g.spill = true // the batch under way gains a form that may fail late
	}
	if s.gate != nil || !s.fifo.idleAfterOwn() || !s.ready || s.inBatch {
		s.mu.Unlock()
		return nil, nil
	}
	inTx := s.txStatus == 'T'
	if s.txStatus != 'I' && !(inTx && inTxToo) {
		s.mu.Unlock()
		return nil, nil // in a failed transaction everything fails anyway
	}
	g := &gate{kind: kind, migrations: migrations, savepoint: inTx, extended: extended, spill: inTxToo, done: make(chan struct{})}
	s.gate = g
	s.mu.Unlock()
	if inTx {
		return g, s.emitOwn("SAVEPOINT "+savepointName, extended, false)
	}
	return g, nil
}

// emitOwn sends a statement of the proxy's own, its answers suppressed. In an extended batch it
// goes through a named statement and portal, closed right after: a simple Query would drop the
// client's unnamed statement. sync ends it with a Sync of its own, so that its failure cannot
// make the server skip the client's next messages.
func (s *session) emitOwn(sql string, extended, sync bool) error {
	msgs, ents := ownStatement(nil, nil, sql, extended, sync)
	return s.emitAll(msgs, ents)
}

// emitOwnSealing sends the RELEASE that ends an extended batch's savepoint, with its own Sync,
// and seals the gate with it.
func (s *session) emitOwnSealing(sql string) error {
	msgs, ents := ownStatement(nil, nil, sql, true, true)
	ents[len(ents)-1].sealsGate = true
	return s.emitAll(msgs, ents)
}

// emitAll emits encoded messages, each with its entry (every message here expects an answer).
func (s *session) emitAll(msgs []byte, ents []expected) error {
	for len(msgs) > 0 {
		typ, n := msgs[0], int(binary.BigEndian.Uint32(msgs[1:5]))
		body := msgs[5 : 1+n]
		msgs = msgs[1+n:]
		e := ents[0]
		ents = ents[1:]
		if err := s.emit(typ, body, e, nil); err != nil {
			return err
		}
	}
	return nil
}

// ownStatement appends the messages and entries of a statement of the proxy's own.
func ownStatement(out []byte, ents []expected, sql string, extended, sync bool) ([]byte, []expected) {
	own := expected{suppress: true}
	add := func(typ byte, body []byte, kind requestKind) {
		out = appendMessage(out, typ, body)
		e := own
		e.kind = kind
		ents = append(ents, e)
	}
	if !extended {
		add('Q', queryBody(sql), reqQuery)
		return out, ents
	}
	const name = "pgcanary_own"
	add('P', parseBody(name, sql, nil), reqParse)
	add('B', []byte(name+"\x00"+name+"\x00\x00\x00\x00\x00\x00\x00"), reqBind)
	add('E', []byte(name+"\x00\x00\x00\x00\x00"), reqExecute)
	// A Sync before the Closes: when the statement fails (restoreFailedSQL always does; a
	// ROLLBACK TO can), the server skips only to it, and the Closes still run. Skipped, they left
	// the statement prepared, and the proxy's next one failed (42P05). Own statements go out
	// between the client's batches, where a Sync ends nothing of the client's.
	add('S', nil, reqSync)
	add('C', append([]byte("P"+name), 0), reqClose)
	add('C', closeStatementBody(name), reqClose)
	if sync {
		add('S', nil, reqSync)
	}
	return out, ents
}

// fallbackPossible reports whether a read sent now could be re-run if its new form failed: a gate
// records the batch it belongs to (one opens for a batch starting now, as maybeStartGate checks,
// or one records the batch under way, which holds only reads so far). A read whose new form may
// fail where the old would not (router.ReadForm.MayFail) is routed only then: pipelined behind
// another batch, after a write or a Flush in its own, it takes the old shape rather than risk an
// error Postgres would not have raised.
func (s *session) fallbackPossible() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g := s.gate; g != nil {
		return !g.sealed && !g.noFallback && !g.notRead && !g.flushWanted
	}
	return s.fifo.idleAfterOwn() && s.ready && !s.inBatch && (s.txStatus == 'I' || s.txStatus == 'T')
}

// noteClientSavepoints marks a savepoint gate whose batch controls the transaction or
// savepoints of the client's own (gate.keepSavepoint). Holds mu.
func (s *session) noteClientSavepoints(ops []router.SettingChange) {
	g := s.gate
	if g == nil || !g.savepoint {
		return
	}
	for _, c := range ops {
		switch c.Op {
		case router.ChangeSavepoint, router.ChangeRelease, router.ChangeRollbackTo,
			router.ChangeBegin, router.ChangeCommit, router.ChangeRollback:
			g.keepSavepoint = true
		}
	}
}

// emitGatable sends the first message of a routed or passthrough batch, opening a gate if it can.
func (s *session) emitGatable(typ byte, body []byte, e expected, rec *recorded, kind string, migrations []string, inTxToo bool) error {
	if _, err := s.maybeStartGate(kind, migrations, true, inTxToo); err != nil {
		return err
	}
	return s.emit(typ, body, e, rec)
}

// emitGatedQuery sends a Query whose new (or mirrored) forms may fail; orig is the client's own
// Query body, replayed on failure. A Query of several statements comes here only when all of them
// are reads (planQuery).
func (s *session) emitGatedQuery(out, orig []byte, e expected, kind string, migrations []string, inTxToo bool) error {
	g, err := s.maybeStartGate(kind, migrations, false, inTxToo)
	if err != nil {
		return err
	}
	if g == nil {
		return s.emit('Q', out, e, nil)
	}
	s.mu.Lock()
	g.gatedSet = true
	s.mu.Unlock()
	e.gated, e.sealsGate = true, !g.savepoint
	if err := s.emit('Q', out, e, &recorded{typ: 'Q', body: orig}); err != nil {
		return err
	}
	if g.savepoint {
		return s.emit('Q', queryBody("RELEASE SAVEPOINT "+savepointName), expected{kind: reqQuery, suppress: true, sealsGate: true}, nil)
	}
	return nil
}

// emit sends one message to the server and records the response it expects. While a gate
// records a batch, the message is recorded too (rec, when nil, is made then: most messages
// replay as they are); once the batch is sealed, it waits in the gate.
func (s *session) emit(typ byte, body []byte, e expected, rec *recorded) error {
	hasEntry := e.kind != 0
	releasedOnFlush, syncAfter := false, false
	s.mu.Lock()
	s.noteSent(typ, e.suppress)
	if hasEntry && !e.suppress {
		if s.closing {
			s.mu.Unlock()
			return errStopPump
		}
		if s.draining && s.fifo.len() == 0 && s.txStatus == 'I' && s.gate == nil && !s.discarding.Load() {
			s.closing = true
			s.mu.Unlock()
			s.fatalToClient(codeAdminShutdown, "terminating connection because pgcanary is shutting down")
			return errStopPump
		}
	}
	if g := s.gate; g != nil {
		if g.sealed {
			g.held = appendMessage(g.held, typ, body)
			if hasEntry {
				g.heldEnts = append(g.heldEnts, e)
			}
			wait := len(g.held) > maxGateHeld
			s.mu.Unlock()
			if wait {
				s.waitGate(g) // the client loop pauses until the gate opens: backpressure
			}
			return nil
		}
		s.recordInGate(g, typ, body, &e, rec)
		if typ == 'H' {
			releasedOnFlush, syncAfter = s.flushGate(g)
		}
	}
	if hasEntry && s.discarding.Load() && typ != 'S' {
		// The server discards it unanswered: what planning it did to the session's records is
		// void, as for a request skipped behind an error. When a re-run of the failed batch may
		// still bring it, that waits for the batch's end (awaitBatchEnd).
		if g := s.gate; g != nil && g.failed && !g.sealed {
			g.skipped = append(g.skipped, e)
		} else {
			s.failedRequest(&e)
			if len(e.ops) > 0 {
				s.reproject()
			}
		}
		hasEntry = false
	}
	if typ == 'S' {
		s.discarding.Store(false)
	}
	if hasEntry {
		s.fifo.push(e)
	}
	if syncAfter {
		s.fifo.push(endAttempt)
		s.discarding.Store(false)
	}
	// smu is taken before mu is let go: the server loop also writes to the server (sendLocked,
	// under mu), and messages must reach it in the order of their entries.
	s.smu.Lock()
	s.mu.Unlock()
	s.toServerLocked(typ, body)
	if syncAfter {
		s.toServerLocked('S', nil)
	}
	var err error
	if len(s.sout) >= flushThreshold || syncAfter {
		err = s.flushServerLocked()
	}
	s.smu.Unlock()
	if err != nil {
		return err
	}
	if releasedOnFlush {
		return s.flushClient()
	}
	return nil
}

// noteSent counts the batches sent and whether the client's extended-protocol batch is under way,
// for a message about to go to the server. Holds mu.
func (s *session) noteSent(typ byte, suppress bool) {
	if typ == 'S' || typ == 'Q' {
		s.batch++ // what follows is planned in the next batch, held by a gate or not
	}
	if !suppress {
		switch typ {
		case 'S':
			s.inBatch = false
		case 'P', 'B', 'E', 'D', 'C', 'H':
			s.inBatch = true
		}
	}
}

// endAttempt is the entry of a Sync of the proxy's own that ends a failed attempt of a batch the
// client flushed (flushGate): its ReadyForQuery ends the batch, which is re-run then.
var endAttempt = expected{kind: reqSync, suppress: true, batchEnd: true}

// recordInGate adds a message to the gate's batch and marks the entries the server loop acts on.
// Holds mu.
func (s *session) recordInGate(g *gate, typ byte, body []byte, e *expected, rec *recorded) {
	switch {
	case e.suppress && !e.sealsGate:
	case e.sealsGate:
		if !g.gatedSet {
			e.gated, g.gatedSet = true, true
		}
		e.batchEnd, g.sealed = true, true
	case typ == 'S':
		if !g.gatedSet {
			e.gated, g.gatedSet = true, true
		}
		if g.savepoint && !g.keepSavepoint {
			// RELEASE SAVEPOINT follows the Sync and ends the batch (planAndEmit sends it).
			break
		}
		e.batchEnd, g.sealed = true, true
	case e.suppress || e.gated:
	case typ == 'Q', typ == 'F', typ == 'd', typ == 'c', typ == 'f':
		g.noFallback = true // another protocol flow inside the batch: no replay
	}
	if typ == 'E' && !e.suppress {
		g.executes++
		g.notRead = g.notRead || e.obs == nil || e.obs.route == "write"
	}
	if e.suppress || g.noFallback {
		return
	}
	if rec == nil { // a message whose replay is itself: recorded only while a gate records
		rec = &recorded{typ: typ}
	}
	if rec.body == nil {
		rec.body = body
	}
	rec.body = bytes.Clone(rec.body)
	rec.undo = e.undo
	write := s.writesMessage(typ, e, rec)
	if write || typ == 'E' || typ == 'C' || typ == 'Q' {
		// What buildReplay reads: a write's whole entry, the effects of an Execute, a Close or
		// a Query.
		rec.entry = *e
	}
	if write {
		rec.write, rec.sent = true, bytes.Clone(body)
		if typ == 'B' {
			rec.portalInfo = s.portals[rec.portal]
		}
		if len(e.ops) > 0 || e.drops != nil || typ == 'B' && !bytes.Equal(body, rec.body) && rec.boundSQL == "" {
			g.noWriteReplay = true
		}
	}
	g.recSize += len(rec.body)
	if g.recSize > maxGateBatch {
		g.noFallback = true
		return
	}
	if typ == 'P' && len(body) > 1 && body[0] != 0 && describesUnknownBeforeParse(g.recorded, parseName(body)) {
		g.noFallback = true
		return
	}
	g.recorded = append(g.recorded, rec)
	e.rec = rec
}

// gateOnServer decides what happens to one server message while a gate is open. It returns the
// type to forward now (0: held or dropped). Holds mu.
func (s *session) gateOnServer(g *gate, origTyp, typ byte, body []byte, head *expected, effect responseEffect, batchEnded bool) byte {
	if g.failed {
		if origTyp == 'A' || origTyp == 'S' {
			return typ
		}
		if typ != 0 {
			s.holdOutput(g, typ, body)
		}
		if batchEnded {
			s.settleFailed(g, origTyp, body)
		}
		return 0
	}
	if g.flushed {
		return s.gateFlushed(g, origTyp, typ, head, batchEnded)
	}
	if g.noFallback {
		s.release(g)
		return typ
	}
	if origTyp == 'C' && typ != 0 && isTransactionControl(body) {
		// A COMMIT, BEGIN or savepoint command of the client's inside the batch: a failure after
		// it would not roll the whole batch back, so the batch cannot be re-run.
		s.release(g)
		return typ
	}
	if origTyp == 'E' {
		if kind, migrations := newFormOf(head, g); fallbackable(body) && kind != "" && g.mayRerun(kind) {
			g.failed, g.kind, g.migrations = true, kind, migrations
			g.failErr = append([]byte(nil), body...)
			if typ != 0 {
				s.holdOutput(g, typ, body) // kept in case the batch cannot be re-run
			}
			switch {
			case g.sealed:
			case g.flushWanted && s.mayRerunNow(g):
				s.endFailedFlushedAttempt(g)
			default:
				s.awaitBatchEnd(g)
			}
			return 0
		}
		if g.savepoint {
			// keepSavepoint too: the gate is open, so no transaction control or savepoint
			// command of the client's in the batch has run (the first one to complete releases
			// the gate), and the error skips them.
			s.restoreFailedTransaction(g)
		}
		s.release(g)
		return typ
	}
	if (origTyp == 'C' || origTyp == 's') && head.kind == reqExecute && !head.suppress && (head.obs == nil || head.obs.route == "write") {
		g.ranNotRead = true
	}
	if typ != 0 {
		s.holdOutput(g, typ, body)
	}
	switch {
	case head.gated && effect == effPop:
		s.release(g)
	case head.flushPoint && effect == effPop, g.out.mustRelease(g.spill):
		if g.out.err != nil && !s.warnedSpill {
			s.warnedSpill = true // once per session: the cause is the machine's, not the batch's
			s.log.Warn("could not hold a routed batch's output in a temporary file (set TMPDIR to a writable directory): it goes to the client before the batch ends, and a failure of its new form after this point reaches the client",
				"err", g.out.err, "migrations", g.migrations)
		}
		s.passAnswers(g)
	}
	return 0
}

// flushGate answers a client's Flush in a gated batch. The client may wait for every answer so far
// before it sends its Sync. So the answers up to the Flush go to it as soon as they are all in
// (passAtFlush), and from then on the batch cannot be re-run (the answers it got may be of work a
// failure would undo). If a new form fails before that, nothing has reached the client: the
// failed attempt is ended at once with a Sync of the proxy's own (the client will not send its
// Sync before it has answers), and the batch so far is re-run (settleFailed), the Flush with it;
// what the client sends meanwhile waits behind it. It reports whether answers are to be sent to
// the client now, and whether that Sync is to follow the Flush. Holds mu.
func (s *session) flushGate(g *gate) (flushNow, syncAfter bool) {
	switch {
	case g.failed:
		if !s.mayRerunNow(g) {
			s.giveUpRerun(g)
			return true, false
		}
		g.sealed = true
		return false, true
	case g.noFallback:
		s.passAnswers(g)
		return true, false
	}
	g.flushWanted = true
	tail := s.fifo.tailRef()
	if tail == nil || tail.suppress && !tail.gated {
		s.passAnswers(g) // nothing of the batch is unanswered
		return true, false
	}
	tail.flushPoint = true
	return false, false
}

// mayRerunNow reports whether a failed batch can be re-run as it stands (settleFailed). Holds mu.
func (s *session) mayRerunNow(g *gate) bool {
	return !g.noFallback && g.mayRerun(g.kind) && !g.redefinesUnknown()
}

// endFailedFlushedAttempt ends the failed attempt of a batch whose client flushed and waits for
// answers (flushGate): a Sync of the proxy's own ends the server's skipping, and the batch is
// re-run at its ReadyForQuery. Later client messages wait in the gate. Holds mu; runs in the
// server loop.
func (s *session) endFailedFlushedAttempt(g *gate) {
	g.sealed = true
	s.discarding.Store(false)
	s.sendLocked(appendMessage(nil, 'S', nil), []expected{endAttempt})
}

// passAnswers gives up a gated batch's re-run and lets its answers through: held ones now, the
// rest as they come. A batch behind the proxy's savepoint keeps its gate to end the savepoint
// with the batch (gateFlushed): left open, it would nest every later such batch one
// subtransaction deeper, and a later error would leave the transaction failed inside it (where
// COMMIT AND CHAIN keeps the failed transaction's characteristics). Holds mu.
func (s *session) passAnswers(g *gate) {
	if !g.savepoint || g.keepSavepoint {
		s.release(g)
		return
	}
	g.flushed, g.noFallback = true, true
	s.releaseOutput(g)
}

// gateFlushed passes one server message of a batch whose answers go through (passAnswers). The
// gate ends with the batch: at the answer to the RELEASE of the proxy's savepoint, or at an
// error, after which the transaction is left failed as Postgres would leave it
// (restoreFailedTransaction). Holds mu.
func (s *session) gateFlushed(g *gate, origTyp, typ byte, head *expected, batchEnded bool) byte {
	switch {
	case origTyp == 'E' && !head.suppress:
		if !g.keepSavepoint {
			s.restoreFailedTransaction(g)
		}
		s.release(g)
	case batchEnded:
		s.release(g)
	}
	return typ
}

// mayRerun reports whether the batch can be re-run after a failure of kind ("read" or "write",
// newFormOf). A batch of one statement, or of reads only, can. A read's failure before any other
// statement completed can too: the failure stopped the batch before its writes ran (the server
// skips to Sync, or the savepoint is rolled back to), so they run once, in the re-run, sent as
// they were (mirrored). A passthrough write's failure re-runs the batch with writes in the
// client's text, so only a batch of that one statement.
func (g *gate) mayRerun(kind string) bool {
	if kind == "read" {
		return !g.ranNotRead && !g.noWriteReplay
	}
	return g.executes <= 1 || !g.notRead
}

// writesMessage reports whether a client message of a gated batch belongs to a mirrored write,
// sent in its mirrored form: the Parse of one (or of a SQL PREPARE of one), the Bind of a portal
// that runs one, a Describe or Execute that restores its answers. Holds mu.
func (s *session) writesMessage(typ byte, e *expected, rec *recorded) bool {
	switch typ {
	case 'P':
		return rec.info != nil && rec.info.plan != nil && (rec.info.writeForm() != nil || rec.info.plan.Prepare != nil)
	case 'B':
		p := s.portals[rec.portal]
		return p != nil && p.route == "write"
	case 'D':
		return e.write != nil
	case 'E':
		return e.write != nil || e.obs != nil && e.obs.route == "write" || len(e.prepares) > 0
	}
	return false
}

// settleFailed ends a batch whose new form failed, at its last answer: the batch is re-run in its
// old form when the failure rolled all of it back, which the ReadyForQuery tells: outside a
// transaction again (the implicit transaction of the batch ended), or, with a savepoint, about to
// be rolled back to it. Otherwise the held answers, error included, go to the client. Holds mu.
func (s *session) settleFailed(g *gate, origTyp byte, body []byte) {
	rolledBack := g.savepoint || origTyp == 'Z' && len(body) == 1 && body[0] == 'I'
	if !rolledBack || !s.mayRerunNow(g) {
		// Messages that came after the failure (awaitBatchEnd) made the batch one that cannot
		// be re-run.
		s.giveUpRerun(g)
		return
	}
	for _, m := range g.migrations {
		if g.kind == "read" {
			s.srv.metrics.ReadFallback(m)
		} else {
			s.srv.metrics.UnmirroredWrite(m, "mirror_failed")
		}
	}
	s.log.Debug("new form failed; re-running the old form", "kind", g.kind, "migrations", g.migrations, "error", errorMessage(g.failErr))
	s.replay(g)
}

// awaitBatchEnd holds a new form's failure that arrived before the client finished sending its
// batch: Postgres sends an error at once, without waiting for the Sync, and a client that sends
// its pipeline in pieces (psycopg) may not have sent the rest yet. The server skips what comes
// until the Sync, so the batch can still be re-run once its end arrives. If the end has not come
// within Config.BatchEndWait, the client may be waiting for the error before it goes on: it gets
// it then, as it would from Postgres. A Flush releases it at once. Holds mu.
func (s *session) awaitBatchEnd(g *gate) {
	time.AfterFunc(s.srv.batchEndWait, func() {
		s.mu.Lock()
		waiting := s.gate == g && g.failed && !g.sealed
		if waiting {
			s.giveUpRerun(g)
		}
		s.mu.Unlock()
		if waiting {
			if err := s.flushClient(); err != nil {
				s.log.Debug("send a failure held for the batch's end", "err", err)
			}
		}
	})
}

// awaitingBatchEnd reports whether a failed batch waits for its end to be re-run (awaitBatchEnd).
func (s *session) awaitingBatchEnd() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gate != nil && s.gate.failed && !s.gate.sealed
}

// giveUpRerun ends a failed batch that is not re-run: the client gets the answers held, error
// included, and a transaction the proxy's savepoint kept going is left failed, as Postgres
// would leave it. Holds mu.
func (s *session) giveUpRerun(g *gate) {
	reproject := false
	for i := len(g.skipped) - 1; i >= 0; i-- { // the latest first: each undo restores what was before it
		s.failedRequest(&g.skipped[i])
		reproject = reproject || len(g.skipped[i].ops) > 0
	}
	g.skipped = nil
	if reproject {
		s.reproject()
	}
	if g.savepoint { // keepSavepoint too, as in gateOnServer
		s.restoreFailedTransaction(g)
	}
	s.release(g)
}

// newFormOf tells whether an error answering e may come from a form the proxy sent in place of
// the client's own, and which: "read" (a routed read or its new-shape variant) or "write" (a
// passthrough write's mirrored form), with the migrations it serves; "" for the client's own
// form. Only a new form's failure is re-run; an error of the client's own statement is the
// client's.
func newFormOf(e *expected, g *gate) (kind string, migrations []string) {
	of := func(o *observation) (string, []string) {
		switch {
		case o == nil:
		case o.route == "new":
			return "read", o.migrations
		case o.route == "write" && o.write != nil && o.write.Passthrough:
			return "write", o.migrations
		}
		return "", nil
	}
	switch {
	case e.newForm != "":
		return e.newForm, g.migrations
	case e.variant != nil && e.variant.newShape:
		return "read", g.migrations
	case e.kind == reqExecute:
		return of(e.obs)
	case e.kind == reqQuery && e.stmt < len(e.obsList):
		return of(e.obsList[e.stmt])
	case e.kind == reqParse && e.rec != nil && e.rec.info != nil:
		info := e.rec.info
		switch {
		case info.routed && info.plan.Read != nil:
			return "read", info.plan.Read.Migrations
		case info.writeForm() != nil && info.writeForm().Passthrough:
			return "write", info.plan.Migrations
		}
	}
	return "", nil
}

// isTransactionControl reports whether a CommandComplete tag ends or starts a transaction or a
// savepoint.
func isTransactionControl(body []byte) bool {
	tag, _, _ := cstring(body)
	for _, p := range []string{"BEGIN", "START", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PREPARE TRANSACTION"} {
		if bytes.HasPrefix(tag, []byte(p)) {
			return true
		}
	}
	return false
}

// fallbackable reports whether a failed new form may be re-run: not a fatal error (the session
// is ending), not a cancel or statement timeout (the client asked for it to stop), not a
// connection or operator-intervention error.
func fallbackable(body []byte) bool {
	if isFatalError(body) {
		return false
	}
	code := errorField(body, 'C')
	return len(code) == 5 && code != "57014" && code[:2] != "57" && code[:2] != "08"
}

// restoreFailedTransaction leaves the transaction as Postgres would after an error the client
// hears (a batch behind a savepoint of the proxy's, not re-run). The error aborted only the
// proxy's savepoint, and an aborted savepoint is not quite an aborted transaction: COMMIT AND
// CHAIN then starts the next one with the failed one's characteristics (READ ONLY), where it
// would not otherwise. So the savepoint is rolled back to and released, and a statement of the
// proxy's own fails in its place, before anything the client sent after the batch. When the
// batch's end is not sent yet, the client's Sync brings them (session.restoreAtSync). Holds mu.
func (s *session) restoreFailedTransaction(g *gate) {
	if !g.sealed {
		s.restoreAtSync = true // the RELEASE is not sent either: planAndEmit sends these instead
		return
	}
	msgs, ents := restoreFailedMessages()
	g.held, g.heldEnts = append(msgs, g.held...), append(ents, g.heldEnts...)
}

// restoreFailedMessages are the proxy's own statements of restoreFailedTransaction, with a Sync.
func restoreFailedMessages() ([]byte, []expected) {
	out, ents := ownStatement(nil, nil, "ROLLBACK TO SAVEPOINT "+savepointName, true, false)
	out, ents = ownStatement(out, ents, "RELEASE SAVEPOINT "+savepointName, true, false)
	return ownStatement(out, ents, restoreFailedSQL, true, true)
}

// restoreFailedSQL fails on purpose, with words a DBA reading the server's log can place.
const restoreFailedSQL = "DO $pgcanary$ BEGIN RAISE EXCEPTION 'pgcanary: the client''s transaction failed, and stays failed'; END $pgcanary$"

// release opens the gate: held output goes to the client, held messages to the server. Holds mu.
func (s *session) release(g *gate) {
	s.gate = nil
	close(g.done)
	s.releaseOutput(g)
	s.sendLocked(g.held, g.heldEnts)
}

// holdOutput adds one server message to the gate's held output. Holds mu.
func (s *session) holdOutput(g *gate, typ byte, body []byte) {
	if n := g.out.add(typ, body, g.spill, s.beforeBlock); n > 0 {
		s.srv.metrics.GateSpill(n)
	}
}

// releaseOutput queues the gate's held output for the client, after what is queued already. Output
// held in memory joins the client buffer; a file goes out at the next flush (flushClientLocked),
// outside mu. Holds mu.
func (s *session) releaseOutput(g *gate) {
	if g.out.len() == 0 {
		return
	}
	if !s.runHoldsCmu { // a run of server messages holds it already (onServerMessages)
		s.cmu.Lock()
		defer s.cmu.Unlock()
	}
	if g.out.file == nil {
		s.cout = append(s.cout, g.out.mem...)
		g.out.drop()
		return
	}
	if s.coutHeld != nil { // one file at a time: the earlier one goes first
		if err := s.flushClientLocked(); err != nil {
			s.log.Debug("send a gated batch's held output", "err", err)
		}
	}
	held := g.out
	g.out = heldOutput{}
	s.coutHeld = &held
}

// replay re-runs the gated batch in its old form, then sends what the client sent after it.
// Holds mu; runs when the failed batch's last answer arrived, so the server is idle.
func (s *session) replay(g *gate) {
	g.out.drop()
	s.gate = nil
	close(g.done)
	out, ents := s.buildReplay(g)
	s.sendLocked(append(out, g.held...), append(ents, g.heldEnts...))
	s.reproject() // the re-run's setting changes, which the failure undid, are foreseen again
}

// sendLocked writes messages from the server loop, pushing their entries first. Holds mu.
func (s *session) sendLocked(msgs []byte, ents []expected) {
	for _, e := range ents {
		s.fifo.push(e)
	}
	if len(msgs) == 0 {
		return
	}
	s.smu.Lock()
	defer s.smu.Unlock()
	s.sout = append(s.sout, msgs...)
	if err := s.flushServerLocked(); err != nil {
		s.log.Debug("send replay", "err", err)
	}
}

// buildReplay turns the recorded batch into its old form: reads bind their statement's old form;
// after a read's failure, writes go as they were sent (mirrored); after a passthrough write's
// failure, in their client's own text. Statements the server holds in a new or mirrored form
// under the client's name are parsed again in the client's text (unnamed) or bound through a
// variant of the client's text (named). Parses the failure undid are recorded again. Holds mu.
func (s *session) buildReplay(g *gate) ([]byte, []expected) {
	var out []byte
	var ents []expected
	add := func(typ byte, body []byte, e expected) {
		out = appendMessage(out, typ, body)
		if e.kind != 0 {
			ents = append(ents, e)
		}
	}
	if g.savepoint {
		out, ents = ownStatement(out, ents, "ROLLBACK TO SAVEPOINT "+savepointName, g.extended, false)
		out, ents = ownStatement(out, ents, "RELEASE SAVEPOINT "+savepointName, g.extended, false)
	}
	reparsed := false // the unnamed statement holds the client's text again
	for i, r := range g.recorded {
		kind, name, _ := classifyFrontend(r.typ, r.body)
		e := expected{kind: kind, name: name}
		body := r.body
		if g.kind == "read" && r.write && !(r.typ == 'P' && r.parsed && name != "") {
			s.rerunAsSent(r)
			sent := r.sent
			if r.typ == 'B' && r.boundSQL != "" {
				// Bound through a variant of the proxy's, whose Parse the failure may have
				// skipped, and which later batches may be preparing again already: the re-run
				// binds a copy under a name of its own, closed at the next Sync.
				s.variantSeq++
				own := "pgcanary_noop_" + strconv.FormatUint(s.variantSeq, 10)
				add('P', parseBody(own, r.boundSQL, r.boundOIDs), expected{kind: reqParse, suppress: true})
				sent = rebindStatement(sent, r.portal, own)
				s.orphans = append(s.orphans, &variant{name: own, sent: true})
			}
			add(r.typ, sent, rerunEntry(r))
			reparsed = reparsed || r.typ == 'P' && name == ""
			continue
		}
		switch r.typ {
		case 'C':
			if r.closed && len(body) > 0 && body[0] == 'S' {
				// The statement is closed already, and a Parse after it in the batch may have
				// made its name anew: closing it again would drop that one. A Close of a name
				// that holds nothing still answers CloseComplete, as the client expects.
				body = closeStatementBody(noStatement)
			} else if len(body) > 1 && body[0] == 'S' && r.entry.drops != nil {
				// The failure brought the statement's record back (undoDrops): drop it again.
				e.drops = &dropUndo{applied: true, seq: r.entry.drops.firstSeq()}
				if info := s.dropRecord(parseName(body[1:]), e.drops); info != nil {
					s.orphanVariants(info)
				}
			}
		case 'Q':
			e.obsList = []*observation{{migrations: g.migrations, route: "old", start: time.Now()}}
			// Its setting changes (a set_config among its reads) were undone with the failure and
			// are done again, as for an Execute below. A gated Query holds only reads, so it
			// drops, creates and prepares nothing.
			e.ops, e.refused = r.entry.ops, r.entry.refused
		case 'P':
			if r.parsed && name != "" {
				// The named statement exists (prepared statements outlive the rollback); its
				// form stands. The client still expects a ParseComplete here: a Parse of an
				// empty statement under a name of the proxy's own gives one, and is closed.
				s.variantSeq++
				own := "pgcanary_noop_" + strconv.FormatUint(s.variantSeq, 10)
				add('P', parseBody(own, "", nil), e)
				add('C', closeStatementBody(own), expected{kind: reqClose, suppress: true})
				continue
			}
			if r.info != nil {
				r.info.routed = false
				r.info.original = r.info.plan.Write != nil
			}
			if r.undo != nil {
				s.redoParse(r.undo)
				e.undo, e.parses = r.undo, r.undo.made
			}
			reparsed = reparsed || name == ""
		case 'B':
			info := r.info
			if query, oids, ok := boundBeforeRedefinition(g.recorded, i); ok && (info == nil || info.writeForm() == nil) {
				// The batch closed or parsed the statement anew after binding it, and that ran
				// before the failure (prepared statements outlive the rollback): the name no
				// longer holds what was bound. Bind a copy of it under a name of the proxy's
				// own, closed at the next Sync (portals die with their statement). A write is
				// bound to its own text's variant below anyway.
				s.variantSeq++
				own := "pgcanary_noop_" + strconv.FormatUint(s.variantSeq, 10)
				add('P', parseBody(own, query, oids), expected{kind: reqParse, suppress: true})
				body = rebindStatement(body, r.portal, own)
				s.orphans = append(s.orphans, &variant{name: own, sent: true})
			}
			if info == nil {
				break
			}
			switch {
			case info.name == "" && !reparsed && (info.routed || info.writeForm() != nil):
				add('P', parseBody("", info.query, info.paramOIDs), expected{kind: reqParse, suppress: true})
				info.routed, info.original = false, info.plan.Write != nil
				reparsed = true
			case info.name != "" && info.writeForm() != nil:
				if info.origVariant == nil {
					s.variantSeq++
					info.origVariant = &variant{name: "pgcanary_o" + strconv.FormatUint(s.variantSeq, 10)}
				}
				if v := info.origVariant; !v.sent {
					v.sent = true
					add('P', parseBody(v.name, info.query, info.variantParamTypes()), expected{kind: reqParse, suppress: true, variant: v})
				}
				body = rebindStatement(body, r.portal, info.origVariant.name)
			}
			route := "old"
			if info.plan.Write != nil {
				route = "write"
			}
			s.portals[r.portal] = &portalInfo{info: info, route: route}
		case 'D':
			if r.body[0] != 'S' {
				break
			}
			if query, oids, ok := describedBeforeRedefinition(g.recorded, i); ok {
				// The name held another statement at this point of the first run than the one
				// it holds now: describe that one's text through a statement of the proxy's own.
				s.variantSeq++
				own := "pgcanary_noop_" + strconv.FormatUint(s.variantSeq, 10)
				add('P', parseBody(own, query, oids), expected{kind: reqParse, suppress: true})
				add('D', describeStatementBody(own), e)
				add('C', closeStatementBody(own), expected{kind: reqClose, suppress: true})
				continue
			}
			if r.info != nil {
				e.write = captureOf(r.info.writeForm())
			}
		case 'E':
			if o := r.entry.obs; o != nil {
				e.obs = &observation{migrations: o.migrations, route: "old", start: time.Now()}
				if g.kind == "write" {
					e.obs.route = "write"
				}
			}
			// What the statement does to the session (a SET, DEALLOCATE, a SQL PREPARE) was
			// undone with the failure: it is done again, as the statement runs again.
			e.ops, e.refused, e.created, e.prepares = r.entry.ops, r.entry.refused, r.entry.created, r.entry.prepares
			if d := r.entry.drops; d != nil {
				e.drops = &dropUndo{drops: d.drops, seq: d.firstSeq()}
				s.dropStatements(e.drops)
			}
		}
		add(r.typ, body, e)
	}
	return out, ents
}

// firstSeq is the planning position of what the request dropped when it was first sent (0 when it
// dropped nothing then).
func (u *dropUndo) firstSeq() uint64 {
	if u == nil || len(u.records) == 0 {
		return 0
	}
	return u.records[0].seq
}

// rerunAsSent prepares the session for a message of a mirrored write sent again as it was: the
// record its Parse made, the portal its Bind made, a count-only portal's single run. Holds mu.
func (s *session) rerunAsSent(r *recorded) {
	switch r.typ {
	case 'P':
		if r.undo != nil {
			s.redoParse(r.undo)
		}
	case 'B':
		if r.portalInfo != nil {
			p := *r.portalInfo
			p.ran = false
			s.portals[r.portal] = &p
		}
	case 'E':
		if w := r.entry.write; w != nil && w.CountOnly {
			if p := s.portals[parseName(r.sent)]; p != nil {
				p.ran = true
			}
		}
	}
}

// rerunEntry is the response a write's message sent again expects: the one it expected when it
// was sent, without what belonged to the first run (the gate's marks, its timing, its count).
func rerunEntry(r *recorded) expected {
	e := r.entry
	e.gated, e.batchEnd, e.sealsGate, e.rec = false, false, false, nil
	e.count, e.stmt, e.opsDone = 0, 0, 0
	if r.typ == 'P' {
		e.undo = r.undo
	}
	if e.obs != nil {
		o := *e.obs
		o.start = time.Now()
		e.obs = &o
	}
	return e
}

// laterParse returns the record of the first Parse of u's name made after u and not yet
// answered, if any. Holds mu.
func (s *session) laterParse(u *parseUndo) *parseUndo {
	var later *parseUndo
	s.anyInFlight(func(e *expected) bool {
		if v := e.undo; v != nil && v.name == u.name && v.seq > u.seq && (later == nil || v.seq < later.seq) {
			later = v
		}
		return false
	})
	return later
}

// redoParse makes again the record of a statement that a Parse made (planParse), for the Parse's
// re-run: the failed batch undid it (failedRequest). Holds mu.
func (s *session) redoParse(u *parseUndo) {
	// A Close, DEALLOCATE or Parse of the name planned after this Parse (held behind a re-run
	// batch, or pipelined behind a claim) acts on what this Parse makes: its record is patched,
	// and the name's current record stands.
	if r := s.dropping[u.name]; r != nil && r.seq > u.seq {
		r.info, r.changes, r.hadChanges, r.named = u.made, u.madeChanges, u.madeHasChanges, u.name != ""
		return
	}
	if later := s.laterParse(u); later != nil {
		later.prev, later.had = u.made, u.made != nil
		later.prevChanges, later.hadChanges = u.madeChanges, u.madeHasChanges
		return
	}
	s.applyParse(u)
}

// applyParse makes the session's record of a statement what a Parse made: the newest Parse of
// its name (planParse), so nothing planned after it needs patching. Holds mu.
func (s *session) applyParse(u *parseUndo) {
	if u.name != "" {
		if s.names == nil {
			s.names = map[string]struct{}{}
		}
		s.names[u.name] = struct{}{}
	}
	if u.made != nil {
		s.stmts[u.name] = u.made
	} else {
		delete(s.stmts, u.name)
	}
	if u.madeHasChanges {
		if s.changers == nil {
			s.changers = map[string]router.SessionChanges{}
		}
		s.changers[u.name] = u.madeChanges
	} else {
		delete(s.changers, u.name)
	}
}

// describedBeforeRedefinition reports whether the recorded Describe of a statement at index i
// precedes a Close or Parse of the same name later in the batch that ran before the failure, and
// if so the text and declared parameter types the name held at i: the batch's last Parse of it
// before i, or the statement the session knew before the batch. A batch where that is unknown is
// not re-run (recordInGate, redefinesUnknown).
func describedBeforeRedefinition(recs []*recorded, i int) (query string, oids []uint32, ok bool) {
	name := parseName(recs[i].body[1:]) // 'S', then the name
	if !redefinedAfter(recs, i, name) {
		return "", nil, false
	}
	return textBefore(recs, i, name)
}

// redefinedAfter reports whether a message of the batch after index i closed statement name or
// parsed it anew, and ran before the failure.
func redefinedAfter(recs []*recorded, i int, name string) bool {
	for _, r := range recs[i+1:] {
		if r.typ == 'P' && r.parsed && parseName(r.body) == name ||
			r.typ == 'C' && r.closed && len(r.body) > 1 && r.body[0] == 'S' && parseName(r.body[1:]) == name {
			return true
		}
	}
	return false
}

// boundBeforeRedefinition reports whether the recorded Bind at index i binds a named statement
// that a later message of the batch closed or parsed anew, and that change ran before the
// failure, and if so the text and declared parameter types the name held at i (as
// describedBeforeRedefinition finds them). A batch where that is unknown is not re-run
// (redefinesUnknown).
func boundBeforeRedefinition(recs []*recorded, i int) (query string, oids []uint32, ok bool) {
	_, rest, _ := cstring(recs[i].body)
	name := parseName(rest)
	if name == "" || !redefinedAfter(recs, i, name) {
		return "", nil, false // the re-run parses the unnamed statement again, in order
	}
	return textBefore(recs, i, name)
}

// textBefore returns the text and declared parameter types statement name held at index i of a
// recorded batch: the batch's last completed Parse of it before i, or the session's record of
// it (recs[i].info).
func textBefore(recs []*recorded, i int, name string) (query string, oids []uint32, ok bool) {
	for j := i - 1; j >= 0; j-- {
		if r := recs[j]; r.typ == 'P' && r.parsed && parseName(r.body) == name {
			var msg pgproto3.Parse
			if err := msg.Decode(r.body); err != nil {
				return "", nil, false
			}
			return msg.Query, msg.ParameterOIDs, true
		}
	}
	if info := recs[i].info; info != nil {
		return info.query, info.paramOIDs, true
	}
	return "", nil, false
}

// redefinesUnknown reports whether the batch bound or described a named statement whose text
// the session does not know (one it does not plan, prepared before the batch) and then closed or
// parsed it anew before the failure: a re-run could not bind or describe it as the first run did.
// Holds mu.
func (g *gate) redefinesUnknown() bool {
	for i, r := range g.recorded {
		var name string
		switch {
		case r.typ == 'B':
			_, rest, _ := cstring(r.body)
			name = parseName(rest)
		case r.typ == 'D' && len(r.body) > 1 && r.body[0] == 'S':
			name = parseName(r.body[1:])
		default:
			continue
		}
		if name == "" || !redefinedAfter(g.recorded, i, name) {
			continue
		}
		if _, _, known := textBefore(g.recorded, i, name); !known {
			return true
		}
	}
	return false
}

// describesUnknownBeforeParse reports whether the batch described statement name, as the session
// knew it before the batch without knowing its text, before this Parse of the name: a replay could
// not describe it again once the Parse has replaced it.
func describesUnknownBeforeParse(recs []*recorded, name string) bool {
	for _, r := range recs {
		switch {
		case r.typ == 'P' && parseName(r.body) == name:
			return false
		case r.typ == 'D' && len(r.body) > 1 && r.body[0] == 'S' && r.info == nil:
			if parseName(r.body[1:]) == name {
				return true
			}
		}
	}
	return false
}

// parseName reads the statement name at the start of a Parse message, or after the 'S' of a
// Describe or Close.
func parseName(body []byte) string {
	name, _, _ := cstring(body)
	return string(name)
}

// describeStatementBody is the body of a Describe of a statement.
func describeStatementBody(name string) []byte {
	return append(append([]byte{'S'}, name...), 0)
}

// queryBody is a Query message's body.
func queryBody(sql string) []byte { return append([]byte(sql), 0) }

// parseBody is a Parse message's body.
func parseBody(name, query string, oids []uint32) []byte {
	msg := pgproto3.Parse{Name: name, Query: query, ParameterOIDs: oids}
	out, _ := msg.Encode(nil)
	return out[headerLen:]
}
