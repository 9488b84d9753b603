package proxy

import (
	"testing"

	"github.com/pgcanary/pgcanary/router"
)

// TestSettingStateScoping walks the confirmed settings through Postgres's scoping rules, one
// query at a time: each statement's changes with its command tag, then an error if the query
// failed, then the ReadyForQuery the server would send.
func TestSettingStateScoping(t *testing.T) {
	steps := []struct {
		sql    string
		tags   []string // of the statements that completed
		failed bool     // the next statement failed
		status byte     // ReadyForQuery after it
		want   string
	}{
		{"SET search_path = a", []string{"SET"}, false, 'I', "a"},
		{"BEGIN", []string{"BEGIN"}, false, 'T', "a"},
		{"SAVEPOINT s1", []string{"SAVEPOINT"}, false, 'T', "a"},
		{"SET search_path = b", []string{"SET"}, false, 'T', "b"},
		{"SAVEPOINT s2", []string{"SAVEPOINT"}, false, 'T', "b"},
		{"SET LOCAL search_path = c", []string{"SET"}, false, 'T', "c"},
		{"ROLLBACK TO s2", []string{"ROLLBACK"}, false, 'T', "b"}, // s2 remains
		{"SET search_path = d", []string{"SET"}, false, 'T', "d"},
		{"ROLLBACK TO SAVEPOINT s2", []string{"ROLLBACK"}, false, 'T', "b"}, // again, to the same point
		{"RELEASE s2", []string{"RELEASE"}, false, 'T', "b"},
		{"SET search_path = e", []string{"SET"}, false, 'T', "e"},
		{"RELEASE s1", []string{"RELEASE"}, false, 'T', "e"}, // kept by the transaction
		{"ROLLBACK TO s1", nil, true, 'E', "e"},              // released: fails, changes nothing
		{"COMMIT", []string{"ROLLBACK"}, false, 'I', "a"},    // a failed transaction rolls back
		{"BEGIN; SET search_path = e; COMMIT", []string{"BEGIN", "SET", "COMMIT"}, false, 'I', "e"},
		{"BEGIN; SAVEPOINT x; SAVEPOINT x; SET search_path = f; ROLLBACK TO x", []string{"BEGIN", "SAVEPOINT", "SAVEPOINT", "SET", "ROLLBACK"}, false, 'T', "e"},
		// RELEASE takes the inner x, so ROLLBACK TO x returns to the outer one, before g.
		{"SET search_path = g; RELEASE x; ROLLBACK TO x", []string{"SET", "RELEASE", "ROLLBACK"}, false, 'T', "e"},
		{"ROLLBACK", []string{"ROLLBACK"}, false, 'I', "e"},
		{"SELECT set_config('search_path', 'h' || '', false)", []string{"SELECT 1"}, false, 'I', unknownSetting},
		{"BEGIN; SET search_path = i", []string{"BEGIN", "SET"}, false, 'T', "i"},
		{"ROLLBACK", []string{"ROLLBACK"}, false, 'I', unknownSetting},
		{"RESET search_path", []string{"RESET"}, false, 'I', "base"},
		// Several transactions end before one ReadyForQuery: each end applies in its place.
		{"BEGIN; SET search_path = j; ROLLBACK; SET search_path = k", []string{"BEGIN", "SET", "ROLLBACK", "SET"}, false, 'I', "k"},
		{"BEGIN; SET search_path = l; COMMIT; BEGIN; SET LOCAL search_path = m; ROLLBACK", []string{"BEGIN", "SET", "COMMIT", "BEGIN", "SET", "ROLLBACK"}, false, 'I', "l"},
		{"BEGIN; SET search_path = n; COMMIT AND CHAIN; SET LOCAL search_path = o", []string{"BEGIN", "SET", "COMMIT", "SET"}, false, 'T', "o"},
		{"ROLLBACK", []string{"ROLLBACK"}, false, 'I', "n"},
		// An implicit transaction that fails rolls back what ran before the error, and the
		// statements after it do not run.
		{"SET search_path = p; SELECT 1/0; SET search_path = q", []string{"SET"}, true, 'I', "n"},
		{"BEGIN; SET search_path = r; COMMIT; SELECT 1/0", []string{"BEGIN", "SET", "COMMIT"}, true, 'I', "r"},
	}
	c := confirmedSettings{path: newSettingState("base"), role: newUserState("u", "u")}
	for _, st := range steps {
		changes := router.SessionChangesOf(st.sql).Settings
		for i, tag := range st.tags {
			var mine []router.SettingChange
			for _, ch := range changes {
				if ch.Statement == i {
					mine = append(mine, ch)
				}
			}
			c.complete(mine, append([]byte(tag), 0))
		}
		if st.failed {
			c.failed = true
		}
		c.ready(st.status)
		if got := c.path.current(); got != st.want {
			t.Fatalf("after %q: search_path %q, want %q", st.sql, got, st.want)
		}
	}
}

// TestExpandUser: comparisons run as the side connection's role, so "$user" is spelled out.
func TestExpandUser(t *testing.T) {
	for _, c := range []struct{ path, role, want string }{
		{`"$user", public`, "alice", `"alice", public`},
		{`public, $user`, `Bob "B"`, `public, "Bob ""B"""`},
		{`app, "a,b"`, "alice", `app, "a,b"`},
	} {
		if got := expandUser(c.path, c.role); got != c.want {
			t.Errorf("expandUser(%q, %q) = %q, want %q", c.path, c.role, got, c.want)
		}
	}
}

// TestUserState: the current user is the role while one is set, else the session user; SET
// SESSION AUTHORIZATION sets the role to none; RESET ROLE returns to the default role, which a
// login's ALTER ROLE ... SET role can make another role than none.
func TestUserState(t *testing.T) {
	role := func(v string, reset bool) router.SettingChange {
		return router.SettingChange{Setting: router.SettingRole, Value: v, Reset: reset}
	}
	auth := func(v string, reset bool) router.SettingChange {
		return router.SettingChange{Setting: router.SettingSessionAuthorization, Value: v, Reset: reset}
	}
	u := newUserState("alice", "alice")
	steps := []struct {
		changes []router.SettingChange
		want    string
	}{
		{nil, "alice"},
		{[]router.SettingChange{role("r1", false)}, "r1"},
		{[]router.SettingChange{auth("bob", false), role("", false)}, "bob"},
		{[]router.SettingChange{role("", true)}, "bob"},
		{[]router.SettingChange{auth("", true), role("", true)}, "alice"},
	}
	for i, s := range steps {
		for _, c := range s.changes {
			u.apply(c)
		}
		if got := u.current(); got != s.want {
			t.Fatalf("step %d: current user %q, want %q", i, got, s.want)
		}
	}
	d := newUserState("alice", "admins") // ALTER ROLE alice SET role = admins
	d.apply(role("", false))             // SET ROLE NONE
	if got := d.current(); got != "alice" {
		t.Fatalf("SET ROLE NONE: %q, want alice", got)
	}
	d.apply(role("", true)) // RESET ROLE
	if got := d.current(); got != "admins" {
		t.Fatalf("RESET ROLE: %q, want the default role admins", got)
	}
	// As PostgreSQL 15 does: SET SESSION AUTHORIZATION sets the role to none, and RESET SESSION
	// AUTHORIZATION brings back the default role, even after SET ROLE NONE.
	d.apply(role("", false))
	d.apply(auth("bob", false))
	d.apply(role("", false))
	if got := d.current(); got != "bob" {
		t.Fatalf("SET SESSION AUTHORIZATION bob: %q, want bob", got)
	}
	d.apply(auth("", true))
	d.apply(role("", true))
	if got := d.current(); got != "admins" {
		t.Fatalf("RESET SESSION AUTHORIZATION: %q, want the default role admins", got)
	}
}
