package e2e

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// setConfigPreparedStep sets search_path through a prepared statement (pgx's Prepare and
// ExecPrepared).
func setConfigPreparedStep() diffStep {
	return diffStep{desc: "Prepare s2 + ExecPrepared s2: SELECT set_config('search_path', 'app, public', false)", run: func(ctx context.Context, s *diffSide, o *diffObs) {
		sd, err := s.pc.Prepare(ctx, "s2", "SELECT set_config('search_path', 'app, public', false)", nil)
		if err != nil {
			o.err("prepare", err)
		} else {
			o.description(sd)
		}
		o.result(s.pc.ExecPrepared(ctx, "s2", nil, nil, nil))
	}}
}

// TestFallbackCorners replays, as fixed programs, the corners the differential test found in
// poisoned seeds (one order whose new-form amount overflows, so that orders reads at 100 % fail on
// the new shape and are re-run in the old form): a Flush before the failure came back, setting
// changes and DEALLOCATE ALL in a re-run batch, a transaction that goes on after a fallback.
// Answers and data must be Postgres's own.
func TestFallbackCorners(t *testing.T) {
	const poisoned = "SELECT status, count(*), sum(amount) FROM orders GROUP BY status ORDER BY status"
	read := diffStmt{sql: "SELECT id, full_name FROM users WHERE id <= $1 ORDER BY id", params: []diffVal{{s: "3", k: diffInt}}}
	cases := []struct {
		name string
		prog []diffStep
	}{
		{"flush_after_failing_read", []diffStep{
			rawStep("P/B/E of a read the poison fails, Flush, read, Sync", []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: poisoned}, textBind("", ""), &pgproto3.Execute{}, &pgproto3.Flush{}, &pgproto3.Sync{}}, true),
		}},
		{"tx_fallback_then_set_config_prepared", []diffStep{
			simpleStep("BEGIN"),
			simpleStep(poisoned),
			setConfigPreparedStep(),
			execParamsStep(read, false, false),
			simpleStep("ROLLBACK"),
		}},
		{"tx_fallback_then_set_config_simple", []diffStep{
			simpleStep("BEGIN"),
			simpleStep(poisoned),
			simpleStep("SELECT set_config('search_path', 'app, public', false)"),
			execParamsStep(read, false, false),
			simpleStep("ROLLBACK"),
		}},
		{"tx_fallback_then_set", []diffStep{
			simpleStep("BEGIN"),
			simpleStep(poisoned),
			simpleStep("SET search_path TO app, public"),
			execParamsStep(read, false, false),
			simpleStep("ROLLBACK"),
		}},
		{"tx_no_fallback_then_set_config_prepared", []diffStep{
			simpleStep("BEGIN"),
			simpleStep("SELECT sum(amount) FROM orders WHERE id = 1"),
			setConfigPreparedStep(),
			execParamsStep(read, false, false),
			simpleStep("ROLLBACK"),
		}},
		{"no_tx_fallback_then_set", []diffStep{
			simpleStep(poisoned),
			simpleStep("SET search_path TO app, public"),
			execParamsStep(read, false, false),
			simpleStep("RESET search_path"),
		}},
		{"tx_fallback_commit_then_set", []diffStep{
			simpleStep("BEGIN"),
			simpleStep(poisoned),
			simpleStep("COMMIT"),
			simpleStep("SET search_path TO app, public"),
			execParamsStep(read, false, false),
			simpleStep("RESET search_path"),
		}},
		{"tx_fallback_then_set_local", []diffStep{
			simpleStep("BEGIN"),
			simpleStep(poisoned),
			simpleStep("SET LOCAL search_path TO app, public"),
			execParamsStep(read, false, false),
			simpleStep("ROLLBACK"),
		}},
		{"tx_fallback_then_set_commit_read", []diffStep{
			simpleStep("BEGIN"),
			simpleStep(poisoned),
			simpleStep("SET search_path TO app, public"),
			simpleStep("COMMIT"),
			execParamsStep(read, false, false),
			simpleStep("RESET search_path"),
		}},
		{"batch_read_set_config", []diffStep{
			rawStep("P/B/E poisoned read, P/B/E set_config, Sync", []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: poisoned}, textBind("", ""), &pgproto3.Execute{},
				&pgproto3.Parse{Query: "SELECT set_config('search_path', 'app, public', false)"}, textBind("", ""), &pgproto3.Execute{},
				&pgproto3.Sync{}}, false),
			execParamsStep(read, false, false),
			simpleStep("RESET search_path"),
		}},
		{"batch_read_write_set_config", []diffStep{
			rawStep("P/B/E poisoned read, P/B/E write, P/B/E set_config, Sync", []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: poisoned}, textBind("", ""), &pgproto3.Execute{},
				&pgproto3.Parse{Query: "UPDATE users SET full_name = 'Ada Lovelace' WHERE id = 44"}, textBind("", ""), &pgproto3.Execute{},
				&pgproto3.Parse{Query: "SELECT set_config('search_path', 'app, public', false)"}, textBind("", ""), &pgproto3.Execute{},
				&pgproto3.Sync{}}, false),
			execParamsStep(read, false, false),
			simpleStep("RESET search_path"),
		}},
		{"batch_read_set", []diffStep{
			rawStep("P/B/E poisoned read, P/B/E SET, Sync", []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: poisoned}, textBind("", ""), &pgproto3.Execute{},
				&pgproto3.Parse{Query: "SET search_path TO app, public"}, textBind("", ""), &pgproto3.Execute{},
				&pgproto3.Sync{}}, false),
			execParamsStep(read, false, false),
			simpleStep("RESET search_path"),
		}},
		{"batch_read_deallocate_all", []diffStep{
			rawStep("Parse s0 (a read), Sync", []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "s0", Query: "SELECT 1"}, &pgproto3.Sync{}}, false),
			rawStep("P/B/E poisoned read, P/B/E DEALLOCATE ALL, Sync", []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: poisoned}, textBind("", ""), &pgproto3.Execute{},
				&pgproto3.Parse{Query: "DEALLOCATE ALL"}, textBind("", ""), &pgproto3.Execute{},
				&pgproto3.Sync{}}, false),
			rawStep("Parse s0 (a write), Bind, Execute, Sync", []pgproto3.FrontendMessage{
				&pgproto3.Parse{Name: "s0", Query: "INSERT INTO users (full_name, email) VALUES ('Ada Lovelace', 'z@example.com')"},
				textBind("", "s0"), &pgproto3.Execute{}, &pgproto3.Sync{}}, false),
		}},
		{"close_held_behind_a_rerun_batch", []diffStep{
			// The re-run makes s2 again; the Close pipelined behind the batch closes it: the
			// name is free afterwards.
			rawStep("P/B/E poisoned read, Close s2, Parse s2 (a write), Sync; Close s2, Sync", []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: poisoned}, textBind("", ""), &pgproto3.Execute{},
				&pgproto3.Close{ObjectType: 'S', Name: "s2"},
				&pgproto3.Parse{Name: "s2", Query: "UPDATE users SET full_name = $1 WHERE id = 23"}, &pgproto3.Sync{},
				&pgproto3.Close{ObjectType: 'S', Name: "s2"}, &pgproto3.Sync{}}, false),
			rawStep("Parse s2 (a read), Describe, Bind, Execute, Sync", []pgproto3.FrontendMessage{
				&pgproto3.Parse{Name: "s2", Query: "SELECT u.* FROM users u WHERE u.id = $1"},
				&pgproto3.Describe{ObjectType: 'S', Name: "s2"}, textBind("", "s2", "34"),
				&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}}, false),
		}},
		// A re-run batch drops s3 again before it prepares s3 anew (writePreparedAfterDropInRerun).
		{"write_prepared_after_close_in_rerun_batch", writePreparedAfterDropInRerun(poisoned, "Close s3",
			textBind("", "s3", "1"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
			&pgproto3.Parse{Query: "COMMIT"}, textBind("", ""), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
			&pgproto3.Close{ObjectType: 'S', Name: "s3"})},
		{"write_prepared_after_deallocate_in_rerun_batch", writePreparedAfterDropInRerun(poisoned, "DEALLOCATE s3",
			&pgproto3.Parse{Query: "DEALLOCATE s3"}, textBind("", ""), &pgproto3.Execute{})},
		// A Query re-run in its old form sets search_path again: the re-run did not carry the
		// change, so the session went on planning under the path the failure had restored.
		{"query_set_config_then_fallback", []diffStep{
			simpleStep("SELECT set_config('search_path', 'app, public', false); " + poisoned),
			execParamsStep(read, false, false),
			simpleStep("RESET search_path"),
		}},
		// A statement the session knows no text of, bound and then closed and prepared anew
		// after the failing read: none of that ran, so the batch is re-run (the Bind then
		// fails as it does without pgcanary). Refusing the re-run as soon as such a Close was
		// recorded gave the client the new form's error.
		{"unknown_statement_bound_then_redefined_after_failure", []diffStep{
			rawStep("poisoned read, Bind s9 (no such statement), Close s9, Parse s9, Sync", []pgproto3.FrontendMessage{
				&pgproto3.Parse{Query: poisoned}, textBind("", ""), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
				textBind("", "s9"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{},
				&pgproto3.Close{ObjectType: 'S', Name: "s9"},
				&pgproto3.Parse{Name: "s9", Query: "DEALLOCATE ALL"}, &pgproto3.Describe{ObjectType: 'S', Name: "s9"},
				&pgproto3.Sync{},
			}, false),
		}},
		{"tx_fallback_extended_then_set", []diffStep{
			simpleStep("BEGIN"),
			execParamsStep(diffStmt{sql: poisoned}, false, false),
			simpleStep("SET search_path TO app, public"),
			execParamsStep(read, false, false),
			simpleStep("ROLLBACK"),
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := newDiffEnv(t, 26)
			env.putBackPoison(t)
			env.session.setFlags(map[string]float64{usersMigration: 100, "orders-cents": 100})
			before := fallbacks(t, env.session.proxy.reg)
			env.run(t, "", c.name, env.session, c.prog, pgx.QueryExecModeCacheStatement)
			if n := fallbacks(t, env.session.proxy.reg) - before; n == 0 && !strings.Contains(c.name, "no_fallback") {
				t.Fatalf("%s: no read fell back: the program did not meet the poison", c.name)
			}
			env.compareDatabases(t, c.name, c.prog)
		})
	}
}

// writePreparedAfterDropInRerun: s3 is a read; a batch whose poisoned read falls back then drops
// s3 (drop, after the read) and prepares it again as a write, which the batch after it runs;
// then s3 runs once more. The re-run dropped s3 again in a planning position after the Parse's,
// so the Parse's record was left out: that last execution went unrestored (SELECT 0 for
// INSERT 0 0) and unmirrored.
func writePreparedAfterDropInRerun(poisoned, title string, drop ...pgproto3.FrontendMessage) []diffStep {
	batch := []pgproto3.FrontendMessage{&pgproto3.Parse{Query: poisoned}, textBind("", ""), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}}
	batch = append(batch, drop...)
	batch = append(batch,
		&pgproto3.Parse{Name: "s3", Query: "INSERT INTO users (full_name, email) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id, email"},
		&pgproto3.Describe{ObjectType: 'S', Name: "s3"}, &pgproto3.Sync{},
		textBind("", "s3", "Alan  Turing", "user5@example.com"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	return []diffStep{
		rawStep("Parse s3 (a read), Sync", []pgproto3.FrontendMessage{&pgproto3.Parse{Name: "s3", Query: "SELECT id FROM users WHERE id = $1"}, &pgproto3.Sync{}}, false),
		rawStep("poisoned read, "+title+", Parse s3 (a write), Sync; s3, Sync", batch, false),
		rawStep("s3 again", []pgproto3.FrontendMessage{
			textBind("", "s3", "Ada Lovelace", "user24@example.com"), &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
		}, false),
	}
}
