package proxy

import (
	"sync"

	"github.com/pgcanary/pgcanary/router"
)

// Planning foresees that the statements sent and not yet answered succeed (the projection,
// searchpath.go). Inside one batch a wrong guess does no harm: a failure makes the server skip
// the rest of the batch, the statements planned on the guess with it. A batch pipelined behind
// another one runs whatever happened to the first, so a statement planned while an earlier
// batch's change of search_path or role (or a transaction end that keeps or undoes one) is still
// in flight is planned on a guess that may prove wrong: a write that would resolve users to
// app.users after an earlier SET runs against public.users if the SET was skipped, unmirrored.
// Such statements, those naming a migrated relation's name, wait until the earlier batches are
// answered (awaitSettled); statements that name none, and every statement when no such change is
// in flight, are planned at once.

// settleWait lets the client loop wait for the server loop to settle the session's settings.
type settleWait struct {
	cond    *sync.Cond // on session.mu; broadcast by the server loop while waiters > 0
	waiters int
}

// settingsUnsettled reports whether an earlier batch still in flight may leave search_path or the role
// otherwise than the projection foresees: it changes one of them, ends a transaction or rolls
// back to a savepoint while changes scoped to the transaction exist, or the server confirmed such
// a change inside the implicit transaction of a batch whose end has not been answered (a failure
// later in that batch rolls it back). The current batch (the entries after the last Sync or
// Query) does not count: its own failures skip what follows them. Holds mu.
func (s *session) settingsUnsettled() bool {
	txScoped := s.conf.path.inTransaction() || s.conf.role.inTransaction() ||
		s.proj.path.inTransaction() || s.proj.role.inTransaction()
	relevant := func(e *expected) bool {
		if e.suppress {
			return false
		}
		for _, c := range e.ops[e.opsDone:] {
			switch c.Op {
			case router.ChangeSet:
				return true
			case router.ChangeCommit, router.ChangeRollback, router.ChangeRollbackTo:
				if txScoped {
					return true
				}
			}
		}
		return false
	}
	found, ended, inBatch := false, false, false
	visit := func(e *expected) {
		inBatch = inBatch || relevant(e)
		if e.kind == reqSync || e.kind == reqQuery {
			found, ended, inBatch = found || inBatch, true, false
		}
	}
	s.fifo.each(visit)
	if g := s.gate; g != nil {
		for i := range g.heldEnts {
			visit(&g.heldEnts[i])
		}
	}
	if !ended {
		return false
	}
	return found || !s.conf.inTx && (s.conf.path.inTransaction() || s.conf.role.inTransaction())
}

// awaitSettled waits, in the client loop, until no earlier batch in flight may change search_path
// or the role otherwise than foreseen (settingsUnsettled), so that the statement planned next resolves
// its names as Postgres will. What is buffered for the server goes out first: the server answers
// the earlier batches only once it has them. It reports whether it waited; it returns errStopPump
// if the session closes.
func (s *session) awaitSettled() (waited bool, err error) {
	s.mu.Lock()
	wait := s.settingsUnsettled()
	s.mu.Unlock()
	if !wait {
		return false, nil
	}
	if err := s.flushServer(); err != nil {
		return true, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.settle.cond == nil {
		s.settle.cond = sync.NewCond(&s.mu)
	}
	s.settle.waiters++
	for s.settingsUnsettled() && !s.closing {
		s.beforeBlock()
		s.settle.cond.Wait()
	}
	s.settle.waiters--
	if s.closing {
		return true, errStopPump
	}
	return true, nil
}

// settleChanged wakes a client loop waiting in awaitSettled; the server loop calls it after each
// message, the session's close too. Holds mu.
func (s *session) settleChanged() {
	if s.settle.waiters > 0 {
		s.settle.cond.Broadcast()
	}
}
