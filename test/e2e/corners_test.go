package e2e

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// diffCorner is a fixed program of the differential test: a protocol corner it once found
// answered otherwise through pgcanary than by Postgres.
type diffCorner struct {
	name string
	mode pgx.QueryExecMode // how pgx sends the program's pgx steps
	prog []diffStep
	// fallbacks: the routed reads the program makes fall back on purpose (the others would
	// mean the proxy sent something that could not run).
	fallbacks float64
}

// TestProtocolCorners replays, as fixed programs, the corners the randomized differential test
// (TestDifferential, off by default) found: each runs against the reference database directly and
// through pgcanary with every read of both migrations routed to the new shape, and every answer,
// then both databases, must be the same on both sides.
func TestProtocolCorners(t *testing.T) {
	env := newDiffEnv(t)
	for _, c := range diffCorners() {
		t.Run(c.name, func(t *testing.T) {
			env.session.setFlags(map[string]float64{usersMigration: 100, "orders-cents": 100})
			replay := "go test -race -count=1 -run 'TestProtocolCorners/" + c.name + "$' -v ./test/e2e/"
			before := fallbacks(t, env.session.proxy.reg)
			env.run(t, replay, c.name, env.session, c.prog, c.mode)
			env.compareDatabases(t, c.name, c.prog)
			// A fallback re-runs a routed read whose new form failed: the answer is right, but
			// unless the program asks for it, the proxy sent something that could not run (a
			// variant the server had closed).
			if n := fallbacks(t, env.session.proxy.reg) - before; n != c.fallbacks {
				t.Fatalf("%s: %v routed reads fell back to the old form; want %v", c.name, n, c.fallbacks)
			}
		})
	}
}

// fallbacks sums pgcanary_read_fallbacks_total over the migrations.
func fallbacks(t *testing.T, reg prometheus.Gatherer) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() == "pgcanary_read_fallbacks_total" {
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// prepareStep prepares a named statement, alone in its batch, before a program's corner.
func prepareStep(name, query string) diffStep {
	return rawStep("", []pgproto3.FrontendMessage{&pgproto3.Parse{Name: name, Query: query}, &pgproto3.Sync{}}, false)
}

// textBind binds portal to stmt with text parameters.
func textBind(portal, stmt string, params ...string) *pgproto3.Bind {
	values := make([][]byte, len(params))
	for i, p := range params {
		values[i] = []byte(p)
	}
	return &pgproto3.Bind{DestinationPortal: portal, PreparedStatement: stmt, Parameters: values}
}

func diffCorners() []diffCorner {
	const countOnlyUpdate = "UPDATE users SET full_name = full_name || ' ' || $1 WHERE id BETWEEN $2 AND $3"
	return []diffCorner{
		{
			// A mirrored write without RETURNING runs as a SELECT of its count: a row limit
			// must not suspend it, and its finished portal cannot run again.
			name: "count_only_write_with_row_limit",
			mode: pgx.QueryExecModeCacheStatement,
			prog: []diffStep{
				rawStep("Execute with a row limit, then again", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: countOnlyUpdate},
					textBind("", "", "Jr", "34", "35"),
					&pgproto3.Execute{MaxRows: 1},
					&pgproto3.Execute{},
					&pgproto3.Close{ObjectType: 'P'},
					&pgproto3.Sync{},
				}, false),
				rawStep("in a transaction, a named portal, Describe and a row limit of 2", []pgproto3.FrontendMessage{
					&pgproto3.Query{String: "BEGIN"},
				}, false),
				rawStep("", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "w", Query: countOnlyUpdate},
					textBind("pp", "w", "Sr", "3", "5"),
					&pgproto3.Describe{ObjectType: 'P', Name: "pp"},
					&pgproto3.Execute{Portal: "pp", MaxRows: 2},
					&pgproto3.Sync{},
				}, false),
				rawStep("the finished portal again, in the same transaction", []pgproto3.FrontendMessage{
					&pgproto3.Execute{Portal: "pp"},
					&pgproto3.Sync{},
				}, false),
				simpleStep("ROLLBACK"),
				rawStep("a RETURNING write resumes like Postgres's", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: countOnlyUpdate + " RETURNING id"},
					textBind("", "", "Jr", "6", "9"),
					&pgproto3.Execute{MaxRows: 1},
					&pgproto3.Execute{MaxRows: 2},
					&pgproto3.Execute{},
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
			},
		},
		{
			// A named prepared statement that sets search_path changes it when it runs, not
			// when it is parsed: the statements after it resolve users to app.users.
			name: "search_path_set_by_named_statement",
			mode: pgx.QueryExecModeCacheStatement,
			prog: []diffStep{
				rawStep("prepare both, run neither", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "to_app", Query: "SET search_path TO app, public"},
					&pgproto3.Parse{Name: "sc", Query: "SELECT set_config('search_path', $1, false)"},
					&pgproto3.Sync{},
				}, false),
				simpleStep("SELECT full_name FROM users WHERE id = 2"),
				rawStep("SET through the named statement", []pgproto3.FrontendMessage{
					textBind("", "to_app"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("UPDATE users SET full_name = 'App Renamed' WHERE id = 1001"),
				simpleStep("SELECT u.* FROM users u WHERE u.id IN (2, 1001) ORDER BY id"),
				simpleStep("RESET search_path"),
				rawStep("set_config with a parameter through the named statement", []pgproto3.FrontendMessage{
					textBind("", "sc", "app, public"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SELECT u.* FROM users u WHERE u.id IN (3, 1002) ORDER BY id"),
				simpleStep("RESET search_path"),
				simpleStep("SELECT full_name FROM users WHERE id IN (3, 1002)"),
			},
		},
		{
			// A Bind pipelined behind a Parse that fails (the name exists) or is skipped (an
			// error before it) runs what the server holds under the name, as directly.
			name: "bind_behind_failed_parse",
			mode: pgx.QueryExecModeCacheStatement,
			prog: []diffStep{
				prepareStep("s0", "SELECT full_name FROM users WHERE id = $1"),
				rawStep("Parse of an existing name, then Bind of it", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "s0", Query: "SELECT email, 1 AS one FROM users WHERE id = $1 AND $2::int = 1"},
					&pgproto3.Sync{},
					textBind("", "s0", "2"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				rawStep("Parse skipped after an error, then Bind of it", []pgproto3.FrontendMessage{
					&pgproto3.Query{String: "SELECT 1/0"},
					&pgproto3.Parse{Name: "s1", Query: "SELECT full_name FROM users WHERE id = 1/0"}, &pgproto3.Execute{Portal: "nope"},
					&pgproto3.Parse{Name: "s1", Query: "SELECT full_name FROM users WHERE id = $1"},
					&pgproto3.Sync{},
					textBind("", "s1", "3"), &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				rawStep("a write prepared again under its name, then bound behind the failing Parse", []pgproto3.FrontendMessage{
					&pgproto3.Close{ObjectType: 'S', Name: "w"},
					&pgproto3.Parse{Name: "w", Query: "INSERT INTO users (full_name, email) VALUES ($1, $2) RETURNING id, full_name"},
					&pgproto3.Parse{Name: "w", Query: "UPDATE orders SET amount = $1 WHERE id = $2 RETURNING amount, amount_cents"},
					&pgproto3.Sync{},
					textBind("", "w", "Pipe Cher", "pipecher@example.com"), &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				rawStep("the statement as the server holds it", []pgproto3.FrontendMessage{
					textBind("", "s0", "4"), &pgproto3.Execute{},
					&pgproto3.Parse{Name: "s1", Query: "SELECT full_name FROM users WHERE id = $1"},
					textBind("", "s1", "5"), &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
			},
		},
		{
			// pgx's describe mode parses and describes every statement of a batch before it
			// runs any: a SET among them changes search_path when it runs, not when described.
			name: "search_path_set_in_described_batch",
			mode: pgx.QueryExecModeCacheDescribe,
			prog: []diffStep{
				batchStep([]diffStmt{
					{sql: "UPDATE users SET full_name = 'Batch Before' WHERE id = 5"},
					{sql: "SELECT set_config('search_path', 'app, public', false)"},
					{sql: "UPDATE users SET full_name = 'Batch After' WHERE id IN (5, 1003)"},
					{sql: "SELECT id, full_name FROM users WHERE id IN (5, 1003)"},
				}, pgx.QueryExecModeCacheDescribe),
				simpleStep("RESET search_path"),
				simpleStep("SELECT id, full_name FROM users WHERE id IN (5, 1003)"),
			},
		},
		{
			// search_path follows transactions in the server's order, even when several end
			// before one ReadyForQuery: a SET after a ROLLBACK stays, and a COMMIT of a failed
			// transaction rolls back.
			name: "search_path_across_transaction_ends",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				simpleStep("BEGIN; SET LOCAL search_path TO app, public; ROLLBACK; SET search_path TO app, public"),
				simpleStep("SELECT u.* FROM users u WHERE u.id IN (2, 1001) ORDER BY id"),
				simpleStep("RESET search_path"),
				simpleStep("BEGIN"),
				simpleStep("SET search_path TO app, public"),
				simpleStep("SELECT 1/0"),
				batchStep([]diffStmt{{sql: "COMMIT"}, {sql: "COMMIT"}}, pgx.QueryExecModeExec),
				simpleStep("SELECT u.* FROM users u WHERE u.id IN (2, 1001) ORDER BY id"),
				simpleStep("UPDATE users SET full_name = 'After Rollback' WHERE id = 2"),
			},
		},
		{
			// In a failed transaction a Bind is still checked against its statement (08P01)
			// before the transaction's state (25P02).
			name: "bind_in_failed_transaction",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("rd", "SELECT full_name FROM users WHERE id = $1"),
				simpleStep("BEGIN"),
				simpleStep("SELECT 1/0"),
				rawStep("", []pgproto3.FrontendMessage{textBind("", "rd", "1", "2"), &pgproto3.Execute{}, &pgproto3.Sync{}}, false),
				rawStep("", []pgproto3.FrontendMessage{textBind("", "rd", "1"), &pgproto3.Execute{}, &pgproto3.Sync{}}, false),
				simpleStep("ROLLBACK"),
				rawStep("", []pgproto3.FrontendMessage{textBind("", "rd", "1"), &pgproto3.Execute{}, &pgproto3.Sync{}}, false),
			},
		},
		{
			// A pipeline: the statements after a Sync are planned before the server answers the
			// batch before it, whose implicit transaction takes a SET LOCAL with it.
			name: "set_local_then_sync_in_pipeline",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				rawStep("", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SET LOCAL search_path TO app, public"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Sync{},
					&pgproto3.Parse{Name: "ins", Query: "INSERT INTO users (full_name, email) VALUES ($1, $2)"},
					textBind("", "ins", "Pipe Lined", "pipelined@example.com"), &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				simpleStep("BEGIN; SET LOCAL search_path TO app, public; COMMIT; UPDATE users SET full_name = 'Pipe Three' WHERE email = 'pipelined@example.com'"),
				simpleStep("SELECT full_name FROM users WHERE email = 'pipelined@example.com'"),
			},
		},
		{
			// A write prepared while users meant app.users, run after users means public.users
			// again, is mirrored: Postgres resolves the statement's names afresh.
			name: "write_prepared_under_another_search_path",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				simpleStep("SET search_path TO app, public"),
				rawStep("", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "mv", Query: "UPDATE users SET full_name = $1 WHERE id = $2"},
					&pgproto3.Parse{Name: "mvr", Query: "UPDATE users SET full_name = $1 WHERE id = $2 RETURNING id, full_name"},
					&pgproto3.Sync{},
				}, false),
				simpleStep("RESET search_path"),
				rawStep("", []pgproto3.FrontendMessage{
					textBind("", "mv", "Moved Write", "7"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					textBind("", "mvr", "Moved Returning", "8"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				simpleStep("SET search_path TO app, public"),
				rawStep("", []pgproto3.FrontendMessage{textBind("", "mv", "App Again", "1002"), &pgproto3.Execute{}, &pgproto3.Sync{}}, false),
				simpleStep("RESET search_path"),
				rawStep("", []pgproto3.FrontendMessage{textBind("", "mvr", "Moved Twice", "9"), &pgproto3.Execute{}, &pgproto3.Sync{}}, false),
			},
		},
		{
			// DISCARD ALL cannot run in a transaction block, so Postgres commits it as soon as it
			// completes: an error later in the same batch does not undo its RESET of search_path.
			name: "discard_all_then_error_in_batch",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				simpleStep("SET search_path TO app, public"),
				rawStep("DISCARD ALL, then its finished portal again", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "DISCARD ALL"}, textBind("", ""), &pgproto3.Execute{MaxRows: 2}, &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				simpleStep("UPDATE users SET full_name = 'After Discard' WHERE id = 10"),
				simpleStep("SELECT u.* FROM users u WHERE u.id IN (10, 1004) ORDER BY id"),
				simpleStep("SET search_path TO app, public"),
				rawStep("DISCARD ALL, then SET and a failing statement", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "DISCARD ALL"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "SET search_path TO app, public"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "SELECT 1/0"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				simpleStep("UPDATE users SET full_name = 'Discard Again' WHERE id = 11"),
				simpleStep("SELECT u.* FROM users u WHERE u.id IN (11, 1005) ORDER BY id"),
			},
		},
		{
			// An error aborts the implicit transaction at once, its SET with it: a statement the
			// client sends behind the Sync, having read the error, runs under the old path.
			name: "error_then_statement_pipelined_behind_sync",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				rawStep("SET, a failing statement, the answers read, then Sync and a write", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SET search_path TO app, public"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "SELECT 1/0"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Sync{},
					&pgproto3.Query{String: "UPDATE users SET full_name = 'Pipelined After' WHERE id = 12"},
				}, true),
				simpleStep("SELECT u.* FROM users u WHERE u.id IN (12, 1006) ORDER BY id"),
			},
		},
		{
			// SQL PREPARE and the protocol's Parse share one namespace: a Parse of a name a
			// PREPARE created fails (42P05), and later Binds run the PREPAREd statement.
			name: "parse_of_a_name_prepared_in_sql",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				simpleStep("PREPARE sq AS SELECT full_name FROM users WHERE id = $1"),
				rawStep("Parse of the name, then Bind of it", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "sq", Query: "UPDATE users SET full_name = $1 WHERE id = 14 RETURNING id"},
					&pgproto3.Sync{},
					textBind("", "sq", "14"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				simpleStep("DEALLOCATE sq"),
				rawStep("the name is free again", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "sq", Query: "UPDATE users SET full_name = $1 WHERE id = 14 RETURNING id"},
					textBind("", "sq", "Freed Name"), &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				simpleStep("SELECT u.* FROM users u WHERE u.id = 14"),
			},
		},
		{
			// DISCARD ALL after another statement of a pipeline, or in a transaction block, is
			// refused (25001) and changes nothing: search_path stays for the statements pipelined
			// behind it, and the prepared statements stay, a mirrored write among them.
			name: "discard_all_refused_in_pipeline",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("wn", "UPDATE users SET full_name = $1 WHERE id = 15"),
				simpleStep("SET search_path TO app, public"),
				rawStep("a statement, then DISCARD ALL, then a read pipelined behind the Sync", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT 1"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "DISCARD ALL"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Sync{},
					&pgproto3.Parse{Query: "SELECT id, full_name FROM users ORDER BY id LIMIT 3"}, textBind("", ""),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				simpleStep("BEGIN"),
				simpleStep("DISCARD ALL"),
				simpleStep("ROLLBACK"),
				simpleStep("RESET search_path"),
				rawStep("the write prepared before", []pgproto3.FrontendMessage{
					textBind("", "wn", "Not Discarded"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SELECT u.* FROM users u WHERE u.id = 15"),
			},
		},
		{
			// A DEALLOCATE skipped after an error leaves its statement prepared: a write bound
			// to it later is still mirrored.
			name: "deallocate_skipped_after_error",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("wd", "UPDATE users SET full_name = $1 WHERE id = 16"),
				simpleStep("SELECT 1/0; DEALLOCATE wd"),
				rawStep("DEALLOCATE behind a failing statement of a pipeline", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT 1/0"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "DEALLOCATE wd"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				rawStep("the write still prepared", []pgproto3.FrontendMessage{
					textBind("", "wd", "Still Prepared"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SELECT u.* FROM users u WHERE u.id = 16"),
			},
		},
		{
			// After an error in the extended protocol, the server discards what the client sends
			// until Sync, even what it sends after reading the error: a Close and a SET then have
			// no effect, and get no answer.
			name: "requests_between_error_and_sync",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("wz", "UPDATE users SET full_name = $1 WHERE id = 17"),
				afterErrorStep("a Close of the write and a SET, then a Query", []pgproto3.FrontendMessage{
					&pgproto3.Close{ObjectType: 'S', Name: "wz"},
					&pgproto3.Parse{Query: "SET search_path TO app, public"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Query{String: "SET search_path TO app, public"},
				}),
				rawStep("the write, still prepared, under the path unchanged", []pgproto3.FrontendMessage{
					textBind("", "wz", "After Discard"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SELECT u.* FROM users u WHERE u.id = 17"),
			},
		},
		{
			// A search_path pgcanary cannot follow, set in a transaction that then fails: the
			// COMMIT that ends it rolls back, so the statements after it in the same Query are
			// planned under the path as it was, and a write among them is mirrored.
			name: "unknown_path_ended_by_commit_of_failed_transaction",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				simpleStep("BEGIN"),
				rawStep("set_config with a parameter", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT set_config('search_path', $1, false)"}, textBind("", "", "app, public"),
					&pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SELECT 1/0"),
				simpleStep("SET search_path TO public"),
				simpleStep("COMMIT; INSERT INTO users (full_name, email) VALUES (' Leading', 'lead@example.com') RETURNING id, full_name"),
				simpleStep("SELECT u.* FROM users u WHERE u.email = 'lead@example.com'"),
			},
		},
		{
			// A DEALLOCATE skipped in a failing Query leaves the statement; a Sync pipelined
			// behind the Query closes the variant the DEALLOCATE orphaned, so the next routed
			// Bind prepares it again.
			name: "variant_closed_behind_skipped_deallocate",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("sr", "SELECT full_name FROM users WHERE id = $1"),
				rawStep("routed: its variant is prepared", []pgproto3.FrontendMessage{
					textBind("", "sr", "1"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				rawStep("DEALLOCATE behind an error, a Sync pipelined behind it", []pgproto3.FrontendMessage{
					&pgproto3.Query{String: "SELECT 1/0; DEALLOCATE sr"}, &pgproto3.Sync{},
				}, false),
				rawStep("the statement, routed again", []pgproto3.FrontendMessage{
					textBind("", "sr", "2"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
			},
		},
		{
			// Dropping a prepared statement is not rolled back: in a Query whose middle statement
			// fails, the DEALLOCATE before the error ran and the one after it did not. A Bind of
			// the first must fail as it does on Postgres, not reach its routed variant.
			name: "deallocate_before_error_in_query_stays",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("da", "SELECT full_name FROM users WHERE id = $1"),
				prepareStep("db", "SELECT full_name FROM users WHERE id = $1"),
				rawStep("both routed: their variants are prepared", []pgproto3.FrontendMessage{
					textBind("", "da", "1"), &pgproto3.Execute{}, textBind("", "db", "2"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("DEALLOCATE da; SELECT 1/0; DEALLOCATE db"),
				rawStep("the first is gone", []pgproto3.FrontendMessage{
					textBind("", "da", "3"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				rawStep("the second stays", []pgproto3.FrontendMessage{
					textBind("", "db", "4"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
			},
		},
		{
			// A batch that redefines a statement name twice and then falls back (its routed read
			// fails): the re-run keeps the name's last definition, and still describes each one
			// the name held at that point of the batch.
			name: "describe_between_redefinitions_in_fallback",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("rd", "SELECT full_name FROM users WHERE id = $1"),
				rawStep("a read, describe, redefine, describe, redefine, describe, then a read that fails", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT id, full_name FROM users WHERE id = $1"}, textBind("", "", "3"),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Describe{ObjectType: 'S', Name: "rd"},
					&pgproto3.Close{ObjectType: 'S', Name: "rd"},
					&pgproto3.Parse{Name: "rd", Query: "WITH x AS (SELECT id, full_name FROM users WHERE id > $1) SELECT count(*), max(full_name) FROM x"},
					&pgproto3.Describe{ObjectType: 'S', Name: "rd"},
					&pgproto3.Close{ObjectType: 'S', Name: "rd"},
					&pgproto3.Parse{Name: "rd", Query: "COMMIT"},
					&pgproto3.Describe{ObjectType: 'S', Name: "rd"},
					&pgproto3.Parse{Query: "SELECT full_name, 1 / (id - id) AS boom FROM users WHERE id = $1"}, textBind("", "", "7"),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				rawStep("the name holds the last definition", []pgproto3.FrontendMessage{
					&pgproto3.Describe{ObjectType: 'S', Name: "rd"}, &pgproto3.Sync{},
				}, false),
			},
			fallbacks: 1,
		},
		{
			// The same, for a statement pgcanary does not plan, whose text it does not keep: a
			// re-run could not describe it once redefined, so the batch runs without a fallback
			// (the routed read fails the same way in either form).
			name: "describe_unplanned_statement_then_redefine",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("ru", "SELECT 1 AS one"),
				rawStep("a read, describe, redefine, then a read that fails", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT id, full_name FROM users WHERE id = $1"}, textBind("", "", "3"),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Describe{ObjectType: 'S', Name: "ru"},
					&pgproto3.Close{ObjectType: 'S', Name: "ru"},
					&pgproto3.Parse{Name: "ru", Query: "SELECT 2 AS two"},
					&pgproto3.Describe{ObjectType: 'S', Name: "ru"},
					&pgproto3.Parse{Query: "SELECT full_name, 1 / (id - id) AS boom FROM users WHERE id = $1"}, textBind("", "", "7"),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
			},
		},
		{
			// COMMIT AND CHAIN of a failed transaction that had set search_path rolls it back
			// and starts another, where SET LOCAL search_path holds: a read then means the
			// relation the path finds.
			name: "set_local_after_commit_and_chain_of_failed_transaction",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				simpleStep("BEGIN"),
				simpleStep("SET LOCAL search_path TO public"),
				simpleStep("SELECT 1/0"),
				rawStep("COMMIT AND CHAIN", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "/* c */ COMMIT AND CHAIN"}, textBind("", ""), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SET LOCAL search_path TO app, public"),
				rawStep("a read under the local path", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT count(*), max(full_name) FROM users WHERE id > $1"}, textBind("", "", "1"),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("COMMIT"),
			},
		},
		{
			// A batch behind the proxy's savepoint (its routed read of orders may fail) that fails
			// with the client's own error leaves the transaction failed as Postgres would: not
			// only the savepoint, or COMMIT AND CHAIN would start a READ ONLY transaction where
			// Postgres starts a read-write one.
			name: "client_error_behind_savepoint_then_commit_and_chain",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				simpleStep("START TRANSACTION READ ONLY"),
				rawStep("a routed read, then a write the transaction refuses", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT status, count(*) FROM orders GROUP BY status ORDER BY status"}, textBind("", ""),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Parse{Query: "INSERT INTO users (full_name, email) VALUES ('Read Only', 'ro@example.com')"}, textBind("", ""),
					&pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				simpleStep("COMMIT AND CHAIN"),
				simpleStep("SHOW transaction_read_only"),
				simpleStep("ROLLBACK"),
			},
		},
		{
			// A variant prepared in a batch that then fails is skipped with it; a routed Bind of
			// the next batch, pipelined behind, must not count on it.
			name: "variant_prepared_in_failing_batch",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("sv", "SELECT full_name FROM users WHERE id = $1"),
				rawStep("a failing batch that routes sv, and one behind it", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "sv", Query: "SELECT 1"},
					textBind("", "sv", "1"), &pgproto3.Execute{}, &pgproto3.Sync{},
					textBind("", "sv", "2"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
			},
		},
		{
			// In a failed transaction, a Bind of a statement whose names moved (another
			// search_path) still goes to the client's name: Postgres checks it against its
			// statement (08P01) before it refuses it for the transaction (25P02).
			name: "moved_statement_bound_in_failed_transaction",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("pm", "UPDATE users SET full_name = $1 WHERE id = $2"),
				simpleStep("SET search_path TO app, public"),
				simpleStep("BEGIN"),
				simpleStep("SELECT 1/0"),
				rawStep("a Bind with too few parameters", []pgproto3.FrontendMessage{
					textBind("", "pm", "Too Few"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("ROLLBACK"),
				simpleStep("RESET search_path"),
			},
		},
		{
			// A Close skipped behind an error, and the same Close in the next batch, which runs:
			// the statement is gone, and a Parse of its name makes a new one.
			name: "close_skipped_then_close_again",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("sx", "INSERT INTO users (full_name, email) VALUES ($1, $2) RETURNING id"),
				rawStep("two Closes, the first behind an error", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT 1/0"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Close{ObjectType: 'S', Name: "sx"}, &pgproto3.Sync{},
					&pgproto3.Close{ObjectType: 'S', Name: "sx"}, &pgproto3.Sync{},
				}, false),
				rawStep("the name made anew", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "sx", Query: "SELECT full_name FROM users WHERE id = $1"},
					textBind("", "sx", "3"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
			},
		},
		{
			// In a failed transaction a Close runs and the Parse after it fails; a second Close,
			// skipped in the next batch, must not bring back the refused Parse's statement: the
			// name is free, and a write prepared under it later is mirrored.
			name: "close_after_refused_parse_skipped",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("sd", "SELECT 1"),
				simpleStep("BEGIN"),
				simpleStep("SELECT 1/0"),
				rawStep("Close, a refused Parse; then a skipped Close", []pgproto3.FrontendMessage{
					&pgproto3.Close{ObjectType: 'S', Name: "sd"}, &pgproto3.Parse{Name: "sd", Query: "SELECT 2"}, &pgproto3.Sync{},
					&pgproto3.Parse{Query: "ROLLBACK TO SAVEPOINT nope"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Close{ObjectType: 'S', Name: "sd"}, &pgproto3.Sync{},
				}, false),
				simpleStep("ROLLBACK"),
				rawStep("a write prepared under the free name", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "sd", Query: "UPDATE users SET full_name = $1 WHERE id = 19"},
					textBind("", "sd", "Freed Again"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SELECT u.* FROM users u WHERE u.id = 19"),
			},
		},
		{
			// A Parse of a name that a Parse still in flight takes: if that one is skipped (an
			// error before it in its batch), this one makes the statement. Planned as though the
			// first had succeeded, its Describe came back as the first's (a write: NoData), and a
			// write it made ran in the client's text, unmirrored.
			name: "parse_of_a_name_whose_parse_is_skipped",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				rawStep("a read prepared under the name of a skipped write, pipelined", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT 1/0"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Name: "pk", Query: "DELETE FROM users WHERE id = $1"},
					&pgproto3.Describe{ObjectType: 'S', Name: "pk"}, &pgproto3.Sync{},
					&pgproto3.Parse{Name: "pk", Query: "SELECT full_name FROM users WHERE id = $1"},
					&pgproto3.Describe{ObjectType: 'S', Name: "pk"}, &pgproto3.Sync{},
				}, false),
				rawStep("the read", []pgproto3.FrontendMessage{
					textBind("", "pk", "20"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				rawStep("a write prepared under the name of a skipped read, pipelined", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT 1/0"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Name: "pw", Query: "SELECT full_name FROM users WHERE id = $1"}, &pgproto3.Sync{},
					&pgproto3.Parse{Name: "pw", Query: "UPDATE users SET full_name = $1 WHERE id = 21"},
					&pgproto3.Describe{ObjectType: 'S', Name: "pw"}, &pgproto3.Sync{},
				}, false),
				rawStep("the write", []pgproto3.FrontendMessage{
					textBind("", "pw", "Claimed Name"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SELECT u.* FROM users u WHERE u.id = 21"),
			},
		},
		{
			// In a transaction, a routed read that may fail (a read map of orders) runs behind the
			// proxy's savepoint; its Bind fails on a parameter the client sent wrong. The re-run
			// fails the same way: the client must get that error.
			name: "bind_error_of_routed_read_in_transaction",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				simpleStep("BEGIN"),
				rawStep("set_config", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "sc", Query: "SELECT set_config('search_path', $1, false)"}, &pgproto3.Sync{},
					textBind("", "sc", "app, public"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("RESET search_path"),
				rawStep("prepare", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Name: "sb", Query: "SELECT id, full_name FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.amount > $1) ORDER BY id LIMIT 10",
						ParameterOIDs: []uint32{20}},
					&pgproto3.Describe{ObjectType: 'S', Name: "sb"}, &pgproto3.Sync{},
				}, false),
				rawStep("a parameter that is not a bigint", []pgproto3.FrontendMessage{
					&pgproto3.Bind{PreparedStatement: "sb", Parameters: [][]byte{[]byte("1e3")}, ResultFormatCodes: []int16{1}},
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("ROLLBACK"),
			},
			fallbacks: 2, // one per migration the read touches
		},
		{
			// A batch behind the proxy's savepoint that fails with the client's own error leaves
			// the transaction failed through a statement of the proxy's own that fails on
			// purpose. Its Closes, skipped with it, left the proxy's statement prepared: the next
			// savepoint, in the next transaction, failed (42P05), and the client got no answer.
			name: "savepoint_after_a_failed_transaction_restored",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				simpleStep("BEGIN"),
				rawStep("a routed read that may fail, then the client's own error", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT amount FROM orders WHERE id = $1"}, textBind("", "", "1"), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "SELECT 1/0"}, textBind("", ""), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("ROLLBACK"),
				simpleStep("BEGIN"),
				rawStep("another routed read that may fail", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT amount FROM orders WHERE id = $1"}, textBind("", "", "2"),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("COMMIT"),
			},
		},
		{
			// A pipeline: a batch that fails (a duplicate email) before the Parse of s3 it holds,
			// then DEALLOCATE ALL, then a batch that prepares s3 again as a write. When the first
			// failure came back, undoing the skipped Parse of s3 deleted the record the later
			// Parse had made: the write ran in its mirrored form with nothing to restore its
			// answers (the client got the form's count row), and executions after a re-prepare
			// would have gone unmirrored.
			name: "skipped_parse_undone_after_a_later_parse_of_the_name",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("s2", "DEALLOCATE ALL"),
				rawStep("three batches pipelined", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "UPDATE users SET email = (SELECT email FROM users WHERE id = $1) WHERE id = $2"}, textBind("", "", "37", "1"),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Close{ObjectType: 'S', Name: "s3"},
					&pgproto3.Parse{Name: "s3", Query: "SELECT u.* FROM users u WHERE u.id = $1"}, &pgproto3.Describe{ObjectType: 'S', Name: "s3"},
					&pgproto3.Sync{},
					textBind("", "s2"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
					&pgproto3.Close{ObjectType: 'S', Name: "s3"},
					&pgproto3.Parse{Name: "s3", Query: "UPDATE users SET profile = profile || jsonb_build_object('k', $1::text) WHERE id = $2"}, &pgproto3.Describe{ObjectType: 'S', Name: "s3"},
					&pgproto3.Sync{},
				}, false),
				rawStep("the write prepared last", []pgproto3.FrontendMessage{
					textBind("", "s3", " Leading", "3"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
			},
		},
		{
			// DISCARD ALL is refused in a pipeline (25001): the batch fails, and the SET before it
			// in the batch rolls back with it. The batch pipelined behind was planned as though
			// the SET held: its write resolved users to app.users and went unmirrored, where
			// Postgres wrote public.users.
			name: "set_rolled_back_by_a_refused_discard_all",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				rawStep("SET, DISCARD ALL, Sync, then a write, Sync", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SET search_path TO app, public"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "DISCARD ALL"}, textBind("", ""), &pgproto3.Execute{}, &pgproto3.Sync{},
					&pgproto3.Parse{Query: "UPDATE users SET full_name = 'After Discard' WHERE id = 27"}, textBind("", ""),
					&pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SHOW search_path"),
				simpleStep("SELECT u.* FROM users u WHERE u.id = 27"),
			},
		},
		{
			// A routed read that fails in either form (the client's own cast, re-run in the old
			// form, which fails too), then a SET the failure skips, Sync, then a write, pipelined.
			// The write was planned as though the SET held: it resolved users to app.users and
			// went unmirrored, where Postgres wrote public.users. It is now planned once the
			// batch before it is answered.
			name: "set_skipped_behind_a_failing_routed_read",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				rawStep("failing read, SET, Sync, then a write, Sync", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT full_name::int FROM users WHERE id = $1"}, textBind("", "", "3"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Parse{Query: "SET search_path TO app, public"}, textBind("", ""), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Sync{},
					&pgproto3.Parse{Query: "UPDATE users SET full_name = upper(full_name) WHERE id = $1 RETURNING full_name AS n, id"}, textBind("", "", "3"),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SHOW search_path"),
				simpleStep("SELECT u.* FROM users u WHERE u.id = 3"),
			},
			fallbacks: 1,
		},
		{
			// In a READ ONLY transaction, a batch behind the proxy's savepoint (a read whose new
			// form may fail) that rolls back to a savepoint of the client's (so the proxy keeps
			// its savepoint) fails on the client's own statement. The transaction was left
			// failed inside the proxy's savepoint, where READ ONLY outlives the failure: the
			// transaction COMMIT AND CHAIN began then was read only, where Postgres's is not.
			name: "failure_behind_kept_savepoint_then_commit_and_chain",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				simpleStep("START TRANSACTION READ ONLY"),
				rawStep("read, FETCH of no cursor, ROLLBACK TO b, Sync", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT sum(amount) FROM orders WHERE user_id <= $1"}, textBind("", "", "40"), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "FETCH 3 FROM c1"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "ROLLBACK TO b"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				rawStep("COMMIT AND CHAIN, a write, Sync", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "COMMIT AND CHAIN"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "INSERT INTO notes (body, n) VALUES ('chained', 1) RETURNING id"}, textBind("", ""),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SHOW transaction_read_only"),
				simpleStep("ROLLBACK"),
			},
		},
		{
			// A batch binds s3, then closes s3 and parses it anew; a routed read at its end fails
			// in its new form (the client's own division by zero, so the re-run in the old form
			// fails too). The close and the new s3 ran before the failure and outlive it: the
			// re-run bound the new s3, so the client got its rows for the first statement. The
			// re-run binds a copy of the s3 the batch bound. s4, whose text the session does not
			// know, is bound (not run) and closed the same way: that batch is not re-run (its
			// re-run failed on the Bind of the closed s4).
			name: "statement_bound_then_redefined_in_rerun_batch",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("s3", "SELECT full_name FROM users WHERE id = $1"),
				rawStep("Bind s3, Close s3, Parse s3 anew, a read that fails, Sync", []pgproto3.FrontendMessage{
					textBind("", "s3", "1"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Close{ObjectType: 'S', Name: "s3"},
					&pgproto3.Parse{Name: "s3", Query: "SELECT email AS contact FROM users WHERE id = $1"}, &pgproto3.Describe{ObjectType: 'S', Name: "s3"},
					&pgproto3.Parse{Query: "SELECT id, 1 / (40 - id) AS late FROM users ORDER BY id"}, textBind("", ""),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				rawStep("s3 as it is now", []pgproto3.FrontendMessage{
					textBind("", "s3", "2"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				prepareStep("s4", "SELECT 1 AS one"),
				rawStep("a read, Bind and Describe s4 (not run), Close s4, a read that fails, Sync", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT full_name FROM users WHERE id = 1"}, textBind("", ""), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					textBind("p4", "s4"), &pgproto3.Describe{ObjectType: 'P', Name: "p4"},
					&pgproto3.Close{ObjectType: 'S', Name: "s4"},
					&pgproto3.Parse{Query: "SELECT id, 1 / (40 - id) AS late FROM users ORDER BY id"}, textBind("", ""),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
			},
			fallbacks: 1,
		},
		{
			// The same without a gate: a failing write skips the SET. A named write prepared
			// before is bound behind it (its names are resolved again at Bind), and a SET that
			// commits with a transaction the batch's failure rolls back.
			name: "set_skipped_behind_a_failing_write",
			mode: pgx.QueryExecModeExec,
			prog: []diffStep{
				prepareStep("w1", "UPDATE users SET full_name = full_name || '!' WHERE id = $1"),
				rawStep("failing write, SET, Sync, then writes, Sync", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "UPDATE users SET email = (SELECT email FROM users WHERE id = $1) WHERE id = $2"}, textBind("", "", "37", "1"),
					&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
					&pgproto3.Parse{Query: "SET search_path TO app, public"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Sync{},
					textBind("", "w1", "4"), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "UPDATE users SET full_name = upper(full_name) WHERE id = $1"}, textBind("", "", "3"), &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				rawStep("BEGIN, SET, failing write, COMMIT, Sync, then a write, Sync", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "BEGIN"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "SET search_path TO app, public"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "UPDATE users SET email = (SELECT email FROM users WHERE id = $1) WHERE id = $2"}, textBind("", "", "37", "1"), &pgproto3.Execute{},
					&pgproto3.Sync{},
					&pgproto3.Parse{Query: "COMMIT"}, textBind("", ""), &pgproto3.Execute{}, &pgproto3.Sync{},
					&pgproto3.Parse{Query: "UPDATE users SET full_name = lower(full_name) WHERE id = $1"}, textBind("", "", "5"), &pgproto3.Execute{},
					&pgproto3.Sync{},
				}, false),
				simpleStep("SHOW search_path"),
				simpleStep("SELECT u.* FROM users u WHERE u.id BETWEEN 3 AND 5 ORDER BY u.id"),
				// A named write prepared under public, bound while the projection foresees public
				// again (a SET that the batch's failure skips): under the path that holds, app,
				// Postgres resolves it to app.users, so it must go as the client's own text.
				simpleStep("SET search_path TO public"),
				prepareStep("w2", "UPDATE users SET full_name = full_name || '?' WHERE id = $1"),
				simpleStep("SET search_path TO app, public"),
				rawStep("failing statement, SET, Sync, then the named write, Sync", []pgproto3.FrontendMessage{
					&pgproto3.Parse{Query: "SELECT 1/0"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Parse{Query: "SET search_path TO public"}, textBind("", ""), &pgproto3.Execute{},
					&pgproto3.Sync{},
					textBind("", "w2", "1001"), &pgproto3.Execute{}, &pgproto3.Sync{},
				}, false),
				simpleStep("SHOW search_path"),
				simpleStep("SELECT u.id, u.full_name FROM app.users u WHERE u.id = 1001"),
				simpleStep("RESET search_path"),
			},
		},
	}
}

// afterErrorStep sends a Parse that fails and a Flush, reads the error, then sends msgs and Sync:
// a client that goes on before it syncs.
func afterErrorStep(title string, msgs []pgproto3.FrontendMessage) diffStep {
	return diffStep{desc: "after an error, before Sync: " + title, run: func(ctx context.Context, s *diffSide, o *diffObs) {
		fe := s.pc.Frontend()
		fe.Send(&pgproto3.Parse{Query: "SELEC 1"})
		fe.Send(&pgproto3.Flush{})
		if err := fe.Flush(); err != nil {
			o.err("flush", err)
			return
		}
		for {
			msg, err := s.pc.ReceiveMessage(ctx)
			if err != nil {
				o.err("receive before Sync", err)
				return
			}
			o.message(msg)
			if _, ok := msg.(*pgproto3.ErrorResponse); ok {
				break
			}
		}
		for _, m := range msgs {
			fe.Send(m)
		}
		fe.Send(&pgproto3.Sync{})
		if err := fe.Flush(); err != nil {
			o.err("flush", err)
			return
		}
		for {
			msg, err := s.pc.ReceiveMessage(ctx)
			if err != nil {
				o.err("receive", err)
				return
			}
			o.message(msg)
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				return
			}
		}
	}}
}
