package proxy

import (
	"bytes"

	"github.com/pgcanary/pgcanary/router"
)

// defaultSearchPath is PostgreSQL's default, used until the server says otherwise.
const defaultSearchPath = `"$user", public`

var (
	tagCommit   = []byte("COMMIT")
	tagPrepare  = []byte("PREPARE TRANSACTION")
	tagRollback = []byte("ROLLBACK")
)

// pathState follows the session's search_path with Postgres's scoping, because planning resolves
// unqualified names with it and Postgres before 18 does not report it. The client loop applies
// changes as it sends them; the server loop ends transactions as ReadyForQuery reports them.
// Guarded by session.mu.
type pathState struct {
	base      string  // the session default: SHOW search_path after startup (role, database, options)
	committed string  // the value outside any transaction
	tx        *string // set by SET inside the current transaction: kept if it commits
	local     *string // set by SET LOCAL: gone when the transaction ends
	// outcome of the current transaction, from the responses since the last ReadyForQuery
	sawCommit, sawRollback, sawError bool
}

func newPathState(base string) pathState { return pathState{base: base, committed: base} }

func (p *pathState) current() string {
	switch {
	case p.local != nil:
		return *p.local
	case p.tx != nil:
		return *p.tx
	}
	return p.committed
}

// apply records a statement's change as it is sent.
func (p *pathState) apply(c router.PathChange) {
	v := c.Value
	if c.Reset {
		v = p.base
	}
	if c.Local {
		p.local = &v
		return
	}
	p.tx, p.local = &v, nil
}

// observe follows a server message to learn how the current transaction ends.
func (p *pathState) observe(typ byte, body []byte) {
	switch typ {
	case 'C': // compared as bytes: this runs for every statement, migrations or not
		tag := bytes.TrimRight(body, "\x00")
		switch {
		case bytes.Equal(tag, tagCommit), bytes.Equal(tag, tagPrepare):
			p.sawCommit = true
		case bytes.Equal(tag, tagRollback):
			p.sawRollback = true
		}
	case 'E':
		p.sawError = true
	case 'Z':
		if len(body) == 1 && body[0] == 'I' {
			// Outside a transaction again: an implicit transaction commits unless it failed; an
			// explicit one says COMMIT or ROLLBACK (COMMIT of a failed one answers ROLLBACK).
			commit := p.sawCommit || !p.sawRollback && !p.sawError
			if commit && p.tx != nil {
				p.committed = *p.tx
			}
			p.tx, p.local = nil, nil
		}
		p.sawCommit, p.sawRollback, p.sawError = false, false, false
	}
}
