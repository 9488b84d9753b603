package proxy

import (
	"testing"

	"github.com/pgcanary/pgcanary/router"
)

// TestSettingStateScoping walks settingState through Postgres's scoping rules, one query at a
// time, ending each with the ReadyForQuery (and command tags) the server would send.
func TestSettingStateScoping(t *testing.T) {
	steps := []struct {
		sql    string // applied as sent
		tags   []string
		status byte // ReadyForQuery after it
		want   string
	}{
		{"SET search_path = a", []string{"SET"}, 'I', "a"},
		{"BEGIN", []string{"BEGIN"}, 'T', "a"},
		{"SAVEPOINT s1", []string{"SAVEPOINT"}, 'T', "a"},
		{"SET search_path = b", []string{"SET"}, 'T', "b"},
		{"SAVEPOINT s2", []string{"SAVEPOINT"}, 'T', "b"},
		{"SET LOCAL search_path = c", []string{"SET"}, 'T', "c"},
		{"ROLLBACK TO s2", []string{"ROLLBACK"}, 'T', "b"}, // s2 remains
		{"SET search_path = d", []string{"SET"}, 'T', "d"},
		{"ROLLBACK TO SAVEPOINT s2", []string{"ROLLBACK"}, 'T', "b"}, // again, to the same point
		{"RELEASE s2", []string{"RELEASE"}, 'T', "b"},
		{"SET search_path = e", []string{"SET"}, 'T', "e"},
		{"RELEASE s1", []string{"RELEASE"}, 'T', "e"},      // kept by the transaction
		{"ROLLBACK TO s1", []string{"ROLLBACK"}, 'T', "e"}, // released: fails, changes nothing
		{"COMMIT", []string{"COMMIT"}, 'I', "e"},
		{"BEGIN; SAVEPOINT x; SAVEPOINT x; SET search_path = f; ROLLBACK TO x", []string{"BEGIN", "SAVEPOINT", "SAVEPOINT", "SET", "ROLLBACK"}, 'T', "e"},
		// RELEASE takes the inner x, so ROLLBACK TO x returns to the outer one, before g.
		{"SET search_path = g; RELEASE x; ROLLBACK TO x", []string{"SET", "RELEASE", "ROLLBACK"}, 'T', "e"},
		{"ROLLBACK", []string{"ROLLBACK"}, 'I', "e"},
		{"SELECT set_config('search_path', 'h' || '', false)", []string{"SELECT 1"}, 'I', unknownSetting},
		{"BEGIN; SET search_path = i", []string{"BEGIN", "SET"}, 'T', "i"},
		{"ROLLBACK", []string{"ROLLBACK"}, 'I', unknownSetting},
		{"RESET search_path", []string{"RESET"}, 'I', "base"},
	}
	p := newSettingState("base")
	var tx txOutcome
	for _, st := range steps {
		for _, c := range router.SessionChangesOf(st.sql).Settings {
			if c.Setting == router.SettingSearchPath || c.Setting == "" {
				p.apply(c)
			}
		}
		for _, tag := range st.tags {
			tx.observe('C', append([]byte(tag), 0))
		}
		if ended, commit := tx.observe('Z', []byte{st.status}); ended {
			p.endTransaction(commit)
		}
		if got := p.current(); got != st.want {
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
