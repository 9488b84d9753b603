package router

import (
	"reflect"
	"testing"
)

func TestSessionChangesOf(t *testing.T) {
	type sc = SettingChange
	path := func(c sc) sc { c.Setting = SettingSearchPath; return c }
	role := func(c sc) sc { c.Setting = SettingRole; return c }
	auth := func(c sc) sc { c.Setting = SettingSessionAuthorization; return c }
	set := func(cs ...sc) SessionChanges { return SessionChanges{Settings: cs} }
	cases := []struct {
		sql  string
		want SessionChanges
	}{
		{"SELECT 1", SessionChanges{}},
		{"SET search_path TO app, public", set(path(sc{Value: "app, public"}))},
		{"set search_path = \"$user\", \"My Schema\"", set(path(sc{Value: `"$user", "My Schema"`}))},
		{"SET LOCAL search_path TO app", set(path(sc{Value: "app", Local: true}))},
		{"SET SESSION search_path TO 'app'", set(path(sc{Value: "app"}))},
		{"SET SCHEMA 'app'", set(path(sc{Value: "app"}))},
		{"RESET search_path", set(path(sc{Reset: true}))},
		{"SET search_path TO DEFAULT", set(path(sc{Reset: true}))},
		{"RESET ALL", set(path(sc{Reset: true}))},
		{"SET statement_timeout = 5", SessionChanges{}},
		{"DISCARD ALL", SessionChanges{Settings: []sc{path(sc{Reset: true}), auth(sc{Reset: true}), role(sc{Reset: true})}, Drops: []Drop{{All: true}}, DiscardAll: true}},
		{"SELECT 1; DISCARD ALL", SessionChanges{}}, // refused in an implicit transaction block
		{"DISCARD PLANS", SessionChanges{}},
		{"DEALLOCATE s1; DEALLOCATE PREPARE s2", SessionChanges{Drops: []Drop{{Name: "s1"}, {Statement: 1, Name: "s2"}}}},
		{"DEALLOCATE ALL", SessionChanges{Drops: []Drop{{All: true}}}},
		{"SELECT 1; PREPARE q1 AS SELECT $1::int; /* x */ PREPARE q2 (int) AS SELECT $1", SessionChanges{Prepared: []PreparedName{{Name: "q1", Statement: 1}, {Name: "q2", Statement: 2}}}},
		{"PREPARE TRANSACTION 't1'", SessionChanges{Settings: []sc{{Op: ChangeCommit}}}},
		{"SELECT 'search_path'", SessionChanges{}},
		// the role, for "$user"
		{"SET ROLE tenant_7", set(role(sc{Value: "tenant_7"}))},
		{"SET LOCAL ROLE tenant_7", set(role(sc{Value: "tenant_7", Local: true}))},
		{"SET ROLE NONE", set(role(sc{}))},
		{"RESET ROLE", set(role(sc{Reset: true}))},
		{"SET SESSION AUTHORIZATION bob", set(auth(sc{Value: "bob"}), role(sc{}))},
		{"SET SESSION AUTHORIZATION DEFAULT", set(auth(sc{Reset: true}), role(sc{Reset: true}))},
		{"RESET SESSION AUTHORIZATION", set(auth(sc{Reset: true}), role(sc{Reset: true}))},
		{"SET LOCAL SESSION AUTHORIZATION bob", set(auth(sc{Value: "bob", Local: true}), role(sc{Local: true}))},
		{"SELECT set_config('session_authorization', 'bob', false)", set(auth(sc{Value: "bob"}), role(sc{}))},
		{"SELECT role FROM members", SessionChanges{}},
		// savepoints scope the changes made after them
		{"SAVEPOINT a; SET search_path = x; ROLLBACK TO SAVEPOINT a; RELEASE a", set(sc{Op: ChangeSavepoint, Savepoint: "a"},
			path(sc{Value: "x", Statement: 1}), sc{Op: ChangeRollbackTo, Savepoint: "a", Statement: 2}, sc{Op: ChangeRelease, Savepoint: "a", Statement: 3})},
		{"ROLLBACK TO \"Sp 1\"", set(sc{Op: ChangeRollbackTo, Savepoint: "Sp 1"})},
		// transaction control, known without parsing when it is the whole text
		{"ROLLBACK", set(sc{Op: ChangeRollback})},
		{"  /* tenant='1' */ COMMIT AND CHAIN;", set(sc{Op: ChangeCommit}, sc{Op: ChangeBegin})},
		{"commit and no chain", set(sc{Op: ChangeCommit})},
		{"BEGIN ISOLATION LEVEL REPEATABLE READ", set(sc{Op: ChangeBegin})},
		{"START TRANSACTION READ ONLY", set(sc{Op: ChangeBegin})},
		{"END", set(sc{Op: ChangeCommit})},
		{"ABORT", set(sc{Op: ChangeRollback})},
		{"COMMIT PREPARED 'x'", SessionChanges{}},
		{"SELECT CASE WHEN true THEN 1 END", SessionChanges{}},
		{"SET search_path = a; COMMIT; SELECT 1", set(path(sc{Value: "a"}), sc{Op: ChangeCommit, Statement: 1})},
		{"COMMIT; UPDATE t SET x = 1", set(sc{Op: ChangeCommit})},
		{"BEGIN; PREPARE TRANSACTION 'g'", set(sc{Op: ChangeBegin}, sc{Op: ChangeCommit, Statement: 1})},
		// set_config: known only as a plain SELECT of constant calls
		{"SELECT set_config('search_path', 'tenant_1, public', false)", set(path(sc{Value: "tenant_1, public"}))},
		{"select pg_catalog.set_config('search_path', 'x', true)", set(path(sc{Value: "x", Local: true}))},
		{"SELECT set_config('role', 'none', false)", set(role(sc{}))},
		{"SELECT set_config('statement_timeout', '5s', false)", SessionChanges{}},
		{"SELECT set_config('search_path', $1, false)", set(path(sc{Unknown: true}))},
		{"SELECT set_config('search_path', 'x', $1)", set(path(sc{Unknown: true}))},
		{"SELECT set_config($1, 'x', false)", set(path(sc{Unknown: true}), role(sc{Unknown: true}), auth(sc{Unknown: true}))},
		{"SELECT set_config('search_path', s, false) FROM tenants WHERE id = 1", set(path(sc{Unknown: true}))},
		{"SELECT 1 WHERE false AND set_config('search_path', 'x', true) IS NULL", set(path(sc{Unknown: true, Local: true}))},
	}
	for _, tc := range cases {
		_, txControl := transactionControl(tc.sql)
		if !reflect.DeepEqual(tc.want, SessionChanges{}) && !txControl && !mayChangeSession(tc.sql) {
			t.Errorf("mayChangeSession(%q) = false for a statement that changes the session", tc.sql)
		}
		got := SessionChangesOf(tc.sql)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SessionChangesOf(%q) = %+v, want %+v", tc.sql, got, tc.want)
		}
	}
}

// TestMayChangeSessionSkipsOrdinarySQL: the text test keeps the parser away from ordinary
// statements, including ones that merely contain a keyword inside a longer word.
func TestMayChangeSessionSkipsOrdinarySQL(t *testing.T) {
	for _, sql := range []string{
		"SELECT full_name, email, tier FROM users WHERE id = $1",
		"SELECT role FROM members WHERE user_role_set = 1",
		"INSERT INTO resets (schema_name, released) VALUES ($1, $2)",
		"UPDATE t SET x = 1",
		"ROLLBACK",
		"",
	} {
		if mayChangeSession(sql) {
			t.Errorf("mayChangeSession(%q) = true", sql)
		}
	}
}

func BenchmarkMayChangeSession(b *testing.B) {
	const sql = "SELECT u.id, u.full_name, u.email, o.amount FROM users u JOIN orders o ON o.user_id = u.id WHERE u.id = $1 AND o.status = 'paid' ORDER BY o.placed_on DESC LIMIT 10"
	b.SetBytes(int64(len(sql)))
	for b.Loop() {
		if mayChangeSession(sql) {
			b.Fatal("true")
		}
	}
}

// BEGIN and COMMIT run once per transaction: knowing them must not allocate.
func TestTransactionControlDoesNotAllocate(t *testing.T) {
	for _, sql := range []string{"BEGIN", "COMMIT", "/* tenant='1' */ ROLLBACK;", "commit and chain"} {
		if n := testing.AllocsPerRun(100, func() { SessionChangesOf(sql) }); n != 0 {
			t.Errorf("SessionChangesOf(%q): %v allocations", sql, n)
		}
	}
}
