package proxy

import (
	"bytes"
	"slices"

	"github.com/pgcanary/pgcanary/router"
)

// defaultSearchPath is PostgreSQL's default, used until the server says otherwise.
const defaultSearchPath = `"$user", public`

var (
	tagBegin    = []byte("BEGIN")
	tagStart    = []byte("START TRANSACTION")
	tagCommit   = []byte("COMMIT")
	tagPrepare  = []byte("PREPARE TRANSACTION")
	tagRollback = []byte("ROLLBACK")
	// DISCARD ALL cannot run in a transaction block, so Postgres commits it as soon as it
	// completes, in the extended protocol too (all branches since the minor releases of August
	// 2022): an error later in the same batch does not undo its RESET.
	tagDiscardAll = []byte("DISCARD ALL")
)

// unknownSetting is the value of a followed setting that a statement changed in a way the proxy
// cannot know (set_config with a computed argument). No real value contains a NUL.
const unknownSetting = "\x00unknown"

// settingState follows one session setting (search_path, role) with Postgres's scoping, because
// planning resolves unqualified names with it and Postgres before 18 does not report it. The
// client loop applies changes as it sends them; the server loop ends transactions as
// ReadyForQuery reports them. Guarded by session.mu.
type settingState struct {
	base      string  // the session default, asked for after startup (role, database, options)
	committed string  // the value outside any transaction
	tx        *string // set by SET inside the current transaction: kept if it commits
	local     *string // set by SET LOCAL: gone when the transaction ends
	saves     []savedSetting
}

// userState follows who the current user is, for "$user" in the search_path: the role while one
// is set (SET ROLE), else the session user (SET SESSION AUTHORIZATION, which also sets the role
// to none). Guarded by session.mu.
type userState struct {
	auth settingState // the session user
	role settingState // the role; "" for none
}

// newUserState starts from the session user and the current user read after startup: they
// differ when a default role applies (ALTER ROLE ... SET role).
func newUserState(sessionUser, currentUser string) userState {
	role := ""
	if currentUser != sessionUser {
		role = currentUser
	}
	return userState{auth: newSettingState(sessionUser), role: newSettingState(role)}
}

func (u *userState) current() string {
	if r := u.role.current(); r != "" {
		return r // a role, or unknownSetting
	}
	return u.auth.current()
}

// apply records a change of the role, the session user, or the savepoints scoping both.
func (u *userState) apply(c router.SettingChange) {
	switch c.Setting {
	case router.SettingRole:
		u.role.apply(c)
	case router.SettingSessionAuthorization:
		u.auth.apply(c)
	default:
		u.role.apply(c)
		u.auth.apply(c)
	}
}

func (u *userState) endTransaction(commit bool) {
	u.role.endTransaction(commit)
	u.auth.endTransaction(commit)
}

// savedSetting is the transaction's view of a setting when a savepoint was taken: ROLLBACK TO
// returns to it.
type savedSetting struct {
	name      string
	tx, local *string
}

// clone copies the state for a what-if: apply replaces the pointers, never what they point to.
func (p *settingState) clone() settingState {
	c := *p
	c.saves = slices.Clone(p.saves)
	return c
}

func (u *userState) clone() userState { return userState{auth: u.auth.clone(), role: u.role.clone()} }

func newSettingState(base string) settingState {
	return settingState{base: base, committed: base}
}

func (p *settingState) current() string {
	switch {
	case p.local != nil:
		return *p.local
	case p.tx != nil:
		return *p.tx
	}
	return p.committed
}

// apply records a statement's change as it is sent.
func (p *settingState) apply(c router.SettingChange) {
	switch c.Op {
	case router.ChangeSavepoint:
		p.saves = append(p.saves, savedSetting{name: c.Savepoint, tx: p.tx, local: p.local})
		return
	case router.ChangeRelease, router.ChangeRollbackTo:
		i := p.savepoint(c.Savepoint)
		if i < 0 {
			return // no such savepoint: the statement fails and changes nothing
		}
		if c.Op == router.ChangeRelease {
			p.saves = p.saves[:i] // what was set since stays, in the enclosing (sub)transaction
			return
		}
		p.tx, p.local = p.saves[i].tx, p.saves[i].local
		p.saves = p.saves[:i+1] // the savepoint itself remains
		return
	}
	v := c.Value
	switch {
	case c.Unknown:
		v = unknownSetting
	case c.Reset:
		v = p.base
	}
	if c.Local {
		p.local = &v
		return
	}
	p.tx, p.local = &v, nil
}

// savepoint is the index of the latest savepoint named name (names compare as Postgres folds
// them: the parser already did), or -1.
func (p *settingState) savepoint(name string) int {
	for i := len(p.saves) - 1; i >= 0; i-- {
		if p.saves[i].name == name {
			return i
		}
	}
	return -1
}

// endTransaction applies how the current transaction ended: a SET in it stays if it committed.
func (p *settingState) endTransaction(commit bool) {
	if commit && p.tx != nil {
		p.committed = *p.tx
	}
	p.tx, p.local, p.saves = nil, nil, p.saves[:0]
}

// confirmedSettings follows search_path and the current user in the server's order: each
// statement's changes when the server completes it, each transaction's end as the server reports
// it (a COMMIT or ROLLBACK tag, or a ReadyForQuery that ends an implicit transaction). Sessions
// plan with a projection of it (session.reproject): the confirmed state plus the changes of the
// statements sent and not yet answered. Guarded by session.mu.
type confirmedSettings struct {
	path settingState
	role userState
	// failed: an error since the last ReadyForQuery or transaction end. An implicit transaction
	// that ends at a ReadyForQuery then rolled back.
	failed bool
	inTx   bool // an explicit transaction is open (BEGIN answered, or ReadyForQuery T or E)
	// aborted: that transaction failed; until it ends (or ROLLBACK TO a savepoint recovers it)
	// every statement but those fails, and its COMMIT rolls back.
	aborted bool
}

// complete applies one completed statement: its changes, then the end of the transaction its
// command tag reports. It reports whether a transaction end changed the state (the projection,
// which does not foresee transaction ends, must then be made again).
func (c *confirmedSettings) complete(changes []router.SettingChange, tag []byte) (ended bool) {
	rollbackTo, ending, chain := false, false, false
	for _, ch := range changes {
		switch ch.Op {
		case router.ChangeCommit, router.ChangeRollback:
			ending = true
			continue // the tag says how the transaction ended (COMMIT of a failed one rolls back)
		case router.ChangeBegin:
			chain = chain || ending // COMMIT or ROLLBACK AND CHAIN: a new transaction is open
			continue
		}
		applySetting(&c.path, &c.role, ch)
		rollbackTo = rollbackTo || ch.Op == router.ChangeRollbackTo
	}
	if rollbackTo {
		c.aborted = false
	}
	tag = bytes.TrimRight(tag, "\x00") // compared as bytes: this runs for every statement
	switch {
	case bytes.Equal(tag, tagBegin), bytes.Equal(tag, tagStart):
		c.inTx = true
	case bytes.Equal(tag, tagCommit), bytes.Equal(tag, tagPrepare):
		ended = c.end(true) // COMMIT of a failed transaction answers ROLLBACK
		c.inTx = chain
		return ended
	case bytes.Equal(tag, tagRollback) && !rollbackTo: // ROLLBACK TO answers ROLLBACK too
		ended = c.end(false)
		c.inTx = chain
		return ended
	case bytes.Equal(tag, tagDiscardAll):
		return c.end(true)
	}
	return false
}

// ready takes a ReadyForQuery: outside any transaction now, an implicit one (if any) ended, and
// committed unless it failed.
func (c *confirmedSettings) ready(status byte) (ended bool) {
	if status == 'I' {
		ended = c.end(!c.failed)
	}
	c.failed, c.inTx, c.aborted = false, status != 'I', status == 'E'
	return ended
}

// end ends the transaction; it reports whether that changed anything.
func (c *confirmedSettings) end(commit bool) bool {
	c.failed, c.inTx, c.aborted = false, false, false
	if !c.path.inTransaction() && !c.role.role.inTransaction() && !c.role.auth.inTransaction() {
		return false
	}
	c.path.endTransaction(commit)
	c.role.endTransaction(commit)
	return true
}

// inTransaction reports whether the current transaction changed the setting or took savepoints.
func (p *settingState) inTransaction() bool {
	return p.tx != nil || p.local != nil || len(p.saves) > 0
}

// inTransaction reports whether the current transaction changed the role or the session user,
// or took savepoints.
func (u *userState) inTransaction() bool { return u.role.inTransaction() || u.auth.inTransaction() }

// projection is the session's settings as planning foresees them: the confirmed ones plus the
// changes of the statements sent and not yet answered, assuming they succeed. Guarded by
// session.mu.
type projection struct {
	path    settingState
	role    userState
	inTx    bool // an explicit transaction is open
	aborted bool // and it failed (confirmedSettings.aborted)
	// failing: a statement of the batch is foreseen to fail (a DISCARD ALL Postgres refuses):
	// the server skips the rest of the batch, and the batch's end rolls back its implicit
	// transaction, or leaves the explicit one failed.
	failing bool
}

// apply foresees one change: setting changes and savepoints as they are, transaction control as
// if it succeeds; in a failed transaction, what Postgres does there (the statement fails, COMMIT
// rolls back, ROLLBACK TO recovers).
func (p *projection) apply(c router.SettingChange) {
	if p.failing {
		return // skipped by the server
	}
	switch c.Op {
	case router.ChangeBegin:
		p.inTx = p.inTx || !p.aborted
	case router.ChangeCommit, router.ChangeRollback:
		commit := c.Op == router.ChangeCommit && !p.aborted
		p.inTx, p.aborted = false, false
		p.path.endTransaction(commit)
		p.role.endTransaction(commit)
	case router.ChangeRollbackTo:
		p.aborted = false
		applySetting(&p.path, &p.role, c)
	default:
		if !p.aborted {
			applySetting(&p.path, &p.role, c)
		}
	}
}

// batchEnd foresees a Sync or the end of a Query: outside an explicit transaction, the implicit
// one commits.
func (p *projection) batchEnd() {
	failed := p.failing
	p.failing = false
	switch {
	case p.inTx && failed:
		p.aborted = true
	case !p.inTx:
		p.path.endTransaction(!failed)
		p.role.endTransaction(!failed)
	}
}

func (p *projection) clone() projection {
	return projection{path: p.path.clone(), role: p.role.clone(), inTx: p.inTx, aborted: p.aborted, failing: p.failing}
}
