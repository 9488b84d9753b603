package proxy

import "github.com/pgcanary/pgcanary/router"

// requestKind names the frontend message that an expected response belongs to.
type requestKind uint8

const (
	reqQuery        requestKind = iota + 1 // simple Query: everything up to ReadyForQuery
	reqParse                               // ParseComplete
	reqBind                                // BindComplete
	reqExecute                             // DataRow*, then CommandComplete, EmptyQueryResponse or PortalSuspended
	reqDescribe                            // [ParameterDescription], then RowDescription or NoData
	reqClose                               // CloseComplete
	reqSync                                // ReadyForQuery
	reqFunctionCall                        // FunctionCallResponse, then ReadyForQuery
)

func (k requestKind) String() string {
	switch k {
	case reqQuery:
		return "Query"
	case reqParse:
		return "Parse"
	case reqBind:
		return "Bind"
	case reqExecute:
		return "Execute"
	case reqDescribe:
		return "Describe"
	case reqClose:
		return "Close"
	case reqSync:
		return "Sync"
	case reqFunctionCall:
		return "FunctionCall"
	}
	return "unknown"
}

// expected is one FIFO entry: the request a response belongs to and how to treat it.
type expected struct {
	kind requestKind
	name string // Parse and Close of a named statement
	// write is the capture form whose responses the proxy restores (Parse, Describe, Execute);
	// writes holds one per statement of a simple Query (nil where the statement is untouched).
	write  *router.WriteForm
	writes []*router.WriteForm
	stmt   int   // Query: index of the statement whose responses arrive now
	count  int64 // rows counted by a capture form's count row

	suppress  bool // the proxy's own request: its answers never reach the client
	gated     bool // its completion opens the session's gate (gate.go)
	batchEnd  bool // the last entry of a gated batch: a failed batch is replayed after it
	sealsGate bool // the message ends the gated batch (set by the sender)

	undo *parseUndo // Parse of a client statement: restores the session's record if it fails
	// claim: a Parse of a name an earlier Parse in flight takes: the record it makes if the
	// server completes it (the earlier one failed), applied then (planParse).
	claim *parseUndo
	// describeLater: a Describe of this statement, whose transform is chosen when its answer
	// arrives, from what the name holds then (a claim in flight decides it).
	describeLater string
	// flushPoint: the last request before a client's Flush in a gated batch: its answer
	// releases the answers held so far (flushGate).
	flushPoint bool
	parses     *stmtInfo // Parse of a client statement touching a migration: ParseComplete confirms it
	variant    *variant  // Parse of a variant: marks it unsent if it fails
	closes     *variant  // Close of a variant: marks it unsent when the server closes it
	rec        *recorded // the gated batch's record of this message
	// newForm: a Bind of a routed read ("read") or of a passthrough write's mirrored form
	// ("write"). Postgres checks privileges and plans at Bind, so the new form can fail there.
	newForm string
	// describes: a Describe of this client statement, whose ParameterDescription it learns.
	describes *stmtInfo
	// obs times a statement touching migrations (Execute); obsList, per statement (Query).
	obs     *observation
	obsList []*observation
	// ops: the setting changes the request's statements make (search_path, role, savepoints),
	// confirmed as the server completes each statement; opsDone of them are confirmed or void.
	ops     []router.SettingChange
	opsDone int
	refused bool // planning foresees the server refusing the statement (DISCARD ALL): ops unforeseen
	// reword: the ErrorResponse body the client gets instead of the server's, for an Execute the
	// proxy made fail on purpose (planExecute).
	reword []byte
	// rewrite: the text sent in place of the client's (Parse, Query), to map error positions.
	rewrite *rewriteText
	// prepares: per statement of a Query, a SQL PREPARE of a mirrored write, recorded in the
	// session's statements once the server confirms it.
	prepares []*stmtInfo
	// created: the statement names the Query's SQL PREPAREs create, taken as the session's once
	// the server completes each PREPARE.
	created []router.PreparedName
	// routedRead (a Describe's) and routedReads (per statement of a Query): the routed read whose
	// RowDescription reports its columns' origins as the client's text does (setOrigins).
	routedRead  *router.ReadForm
	routedReads []*router.ReadForm
	// drops: what the request's DEALLOCATE or DISCARD ALL removed from the session's records,
	// brought back if the server does not run it; a Query's, one per statement (queryDrops).
	drops *dropUndo
}

// parseUndo restores what the session knew of a statement name when its Parse fails.
type parseUndo struct {
	name string
	prev *stmtInfo
	had  bool
	made *stmtInfo // the record the Parse made (nil for a statement the session does not plan)
	seq  uint64    // session.recordSeq when it was made
	// the statement's earlier session changes (session.changers), restored with it
	prevChanges router.SessionChanges
	hadChanges  bool
	// the changes the Parse recorded (madeHasChanges: any), made again when it is re-run
	madeChanges    router.SessionChanges
	madeHasChanges bool
}

// tailRef returns the last entry, for in-place updates; nil when empty.
func (q *fifo) tailRef() *expected {
	if q.size == 0 {
		return nil
	}
	return &q.buf[(q.head+q.size-1)%len(q.buf)]
}

// any reports whether an entry satisfies f.
func (q *fifo) any(f func(*expected) bool) bool {
	for i := range q.size {
		if f(&q.buf[(q.head+i)%len(q.buf)]) {
			return true
		}
	}
	return false
}

// headRef returns the head entry for in-place updates (a Query's statement index).
func (q *fifo) headRef() *expected {
	if q.size == 0 {
		return nil
	}
	return &q.buf[q.head]
}

// fifo is a growable ring of expected responses. Postgres answers requests strictly in order, so
// the server reader only ever looks at the head. Callers serialize access (session.mu). Entries
// outside the ring's live part are zero (pop clears them).
type fifo struct {
	buf        []expected
	head, size int
}

func (q *fifo) push(e expected) { *q.add() = e }

// pushRequest pushes the entry of a plain client request: its kind and, for Parse and Close of a
// statement, the name. Cheaper than push: an entry is 368 bytes, and only two of its fields are
// written.
func (q *fifo) pushRequest(kind requestKind, name string) {
	e := q.add()
	e.kind, e.name = kind, name
}

// add makes room for one more entry at the tail and returns it (zero).
func (q *fifo) add() *expected {
	if q.size == len(q.buf) {
		n := 2 * len(q.buf)
		if n == 0 {
			n = 16
		}
		nb := make([]expected, n)
		for i := 0; i < q.size; i++ {
			nb[i] = q.buf[(q.head+i)%len(q.buf)]
		}
		q.buf, q.head = nb, 0
	}
	e := &q.buf[(q.head+q.size)%len(q.buf)]
	q.size++
	return e
}

func (q *fifo) len() int { return q.size }

// idleAfterOwn reports whether the next request starts a batch on a settled session: nothing
// outstanding, or only the proxy's own requests ending at a batch boundary (Sync or Query), as
// after a savepoint's RELEASE. Their answers cannot change what the client was told.
func (q *fifo) idleAfterOwn() bool {
	if q.size == 0 {
		return true
	}
	for i := 0; i < q.size; i++ {
		if !q.buf[(q.head+i)%len(q.buf)].suppress {
			return false
		}
	}
	last := q.buf[(q.head+q.size-1)%len(q.buf)].kind
	return last == reqSync || last == reqQuery
}

// each calls f with every entry, head first.
func (q *fifo) each(f func(*expected)) {
	for i := 0; i < q.size; i++ {
		f(&q.buf[(q.head+i)%len(q.buf)])
	}
}

// front returns the head entry; ok is false when nothing is outstanding.
func (q *fifo) front() (e expected, ok bool) {
	if q.size == 0 {
		return expected{}, false
	}
	return q.buf[q.head], true
}

func (q *fifo) pop() {
	if q.size == 0 {
		return
	}
	q.buf[q.head] = expected{}
	q.head = (q.head + 1) % len(q.buf)
	q.size--
	if q.size == 0 {
		// Start again at the first entry: a session that sends one request at a time then
		// uses the same entry (and cache lines) every time, rather than all of the ring in turn.
		q.head = 0
	}
}

// skipToSync drops the entries up to the next Sync: after an error in the extended protocol, the
// failed request at the head and those the server skips. skipped sees them last first: each undoes
// what planning its request did to the session's records, and a later request's record may have
// been made over an earlier one's (a Close, then a Parse of the same name).
// It reports whether a Sync was found: if not, the client has not sent it yet, and the server
// discards whatever comes before it.
func (q *fifo) skipToSync(skipped func(*expected)) (syncFound bool) {
	n := 0
	for n < q.size && q.buf[(q.head+n)%len(q.buf)].kind != reqSync {
		n++
	}
	if skipped != nil {
		for i := n - 1; i >= 0; i-- {
			skipped(&q.buf[(q.head+i)%len(q.buf)])
		}
	}
	for range n {
		q.pop()
	}
	return q.size > 0
}

// responseEffect says how one backend message moves the FIFO.
type responseEffect uint8

const (
	effNone      responseEffect = iota // part of the head's response, or asynchronous
	effPop                             // completes the head's response
	effPopToSync                       // an error in the extended protocol: the head and all up to Sync
)

// effectOf classifies backend message typ against the request at the head of the FIFO. It is a
// pure function so the protocol rules are testable on their own (fifo_test.go).
func effectOf(typ byte, head requestKind) responseEffect {
	switch typ {
	case 'Z': // ReadyForQuery ends Query, Sync and FunctionCall
		return effPop
	case '1', '2', '3': // ParseComplete, BindComplete, CloseComplete
		return effPop
	case 'T', 'n': // RowDescription, NoData
		if head == reqDescribe {
			return effPop
		}
	case 'C', 'I', 's': // CommandComplete, EmptyQueryResponse, PortalSuspended
		if head == reqExecute {
			return effPop
		}
	case 'E':
		switch head {
		case reqQuery, reqSync, reqFunctionCall:
			return effNone // ReadyForQuery still follows
		case 0:
			return effNone // an error outside any request (e.g. FATAL on shutdown)
		default:
			return effPopToSync
		}
	}
	return effNone
}
