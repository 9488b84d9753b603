package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/flags"
	"github.com/pgcanary/pgcanary/shadow"
	"github.com/pgcanary/pgcanary/test/pgtest"
)

// TestDifferential runs seeded random programs of client operations twice, step by step: against
// a reference database reached directly and, through pgcanary, against a clone of it whose
// migrations are live. The reference keeps its new shape up to date with triggers (what the
// mirrored writes promise), so every answer the client sees must be the same on both sides, and so
// must both databases after each program.
//
// In about half the seeds a few orders are poisoned so that new forms of orders reads fail, and
// pgcanary's fallbacks must hide it (diffPoisonFor).
//
// By default it replays a few fixed seeds that pass (a regression guard in make test).
// PGCANARY_DIFF=1 draws a new seed, PGCANARY_DIFF_SEED replays one; random seeds still find open
// bugs now and then (see the session notes), so make test does not draw them.
func TestDifferential(t *testing.T) {
	seeds := append(slices.Clone(diffRegressionSeeds), diffPoisonedRegressionSeeds...)
	if os.Getenv("PGCANARY_DIFF") == "1" {
		seeds = []uint64{uint64(time.Now().UnixNano())}
	}
	if s := os.Getenv("PGCANARY_DIFF_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("PGCANARY_DIFF_SEED=%q: %v", s, err)
		}
		seeds = []uint64{v}
	}
	for _, seed := range seeds {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) { runDifferential(t, seed) })
	}
}

// diffRegressionSeeds each once found a bug, fixed since.
var diffRegressionSeeds = []uint64{1795252750730773966, 1795253599410453395, 1795253896134569728, 1795253937250345352,
	1795257069719860467, 1795257391341769634, 1795258243103630155, 1795259090640678379, 1795259287119172850,
	1795259553883060977, 1795261194919126208, 1795281682365400252, 1795283304817227653}

// diffPoisonedRegressionSeeds are poisoned seeds (diffPoisonFor) that each found a fallback bug,
// fixed since: a Flush before a failure, a SET after a fallback in a transaction, DEALLOCATE ALL
// in a re-run batch, a read failing after an earlier one of its Query returned over 256 KB, a
// statement prepared after a Close of its name in a re-run batch, a set_config in a re-run Query,
// a statement bound and then redefined in a re-run batch (and one whose redefinition never ran).
var diffPoisonedRegressionSeeds = []uint64{1795272043618874889, 1795272267337031359, 1795272769059326663,
	1795272808799081988, 1795282646079362718, 1795283345755428821, 1795284326986170972,
	1795286854842648877}

// Poisoned seeds. The read map of orders-cents, (amount_cents / 100.0)::numeric(12, 2), fails at
// run time on an amount_cents whose amount does not fit numeric(12, 2) (SQLSTATE 22003). In about
// half the seeds a few orders hold such an amount_cents (diffPoison) and orders-cents reads go
// 100 % to the new shape, so that reads touching them fail in their new form and pgcanary must
// re-run them in their old form (the gate, docs/architecture.md "Fallback: the gate") or route
// them to the old shape where it could not re-run them: the client must see nothing of it, and
// every answer must still be the reference's.
//
// The poison is in both databases, not in the twin only: clients read amount_cents itself too
// (SELECT *, COPY, RETURNING), in the old form as in the new, and those answers must agree. The
// reference never routes a read, so there the poison is only ever read as the column it is. Its
// trigger (diffReferenceTriggers) re-derives amount_cents only in writes that assign amount or
// amount_cents, which is what pgcanary's mirrored forms do (router/augment.go: a write that
// assigns neither needs no form), so a poisoned row keeps its poison on both sides until a write
// assigns amount (amount_cents is derived from it again) or amount_cents, or deletes the row.
// Before each program the poison is put back (putBackPoison), and a poisoned order a program
// deleted is inserted again as it first was, so that the poison is read all along: programs
// delete orders by id and by user, and a third of them or more would be gone by the last phase.
//
// The regression seeds are never poisoned: they replay the conditions of the bugs they found.
// PGCANARY_DIFF_POISON=1 or =0 forces the choice for a seed.

// diffPoison is the amount_cents of a poisoned order: its new-form amount, 10^12, overflows
// numeric(12, 2), and no write of the generator makes it (argCents and argAmount are smaller).
const diffPoison = 100000000000000

// diffPoisonFor says which orders seed poisons (none: the seed runs as it always did). It draws
// from a stream of its own: the programs draw the same in a poisoned seed as in an unpoisoned one.
func diffPoisonFor(t *testing.T, seed uint64) []int {
	r := rand.New(rand.NewPCG(seed, 0x706f69736f6e))
	on := r.IntN(2) == 0 && !slices.Contains(diffRegressionSeeds, seed)
	switch v := os.Getenv("PGCANARY_DIFF_POISON"); v {
	case "":
	case "0", "1":
		on = v == "1"
	default:
		t.Fatalf("PGCANARY_DIFF_POISON=%q: want 0 or 1", v)
	}
	if !on {
		return nil
	}
	// Orders 1..120 exist from the start; each is read by id (argOrder), through its user
	// (users 1..30 have four orders each) and by every scan of the table.
	var ids []int
	for n := 1 + r.IntN(3); len(ids) < n; {
		if id := 1 + r.IntN(120); !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// diffPoisonEnv is the PGCANARY_DIFF_POISON setting to repeat in a replay command.
func diffPoisonEnv() string {
	if v := os.Getenv("PGCANARY_DIFF_POISON"); v != "" {
		return "PGCANARY_DIFF_POISON=" + v + " "
	}
	return ""
}

// percents are the read percentages to set: in a poisoned seed orders-cents reads stay at 100 %,
// so that every read of orders may meet the poison in its new form.
func (env *diffEnv) percents(p map[string]float64) map[string]float64 {
	if len(env.poison) > 0 {
		p = maps.Clone(p)
		p["orders-cents"] = 100
	}
	return p
}

// poisonProgram holds orders-cents at 100 % in the program's changes of percentages too (the
// generator drew them as in any seed).
func (env *diffEnv) poisonProgram(prog []diffStep) []diffStep {
	if len(env.poison) == 0 {
		return prog
	}
	for i, st := range prog {
		if st.flags != nil {
			prog[i].flags = env.percents(st.flags)
			prog[i].desc = fmt.Sprintf("read percentages become %v (through pgcanary only; orders-cents held at 100 %% in a poisoned seed)", prog[i].flags)
		}
	}
	return prog
}

// putBackPoison poisons the poisoned orders again in both databases, the same way in each (they
// were equal after the last program): a program's write that assigned amount derived
// amount_cents from it again, and one that deleted the order (by id, or with its user's) removed
// it; the order is then inserted again as it was at the start (env.poisonRows), if its user still
// exists (the foreign key, which the replica role below does not check). The reference's trigger
// is skipped (session_replication_role = replica); the twin has none (pgcanary's mirrored forms
// keep its shapes in step).
func (env *diffEnv) putBackPoison(t *testing.T) {
	t.Helper()
	if len(env.poison) == 0 {
		return
	}
	ctx := testCtx(t)
	for _, c := range []*pgx.Conn{env.refCheck, env.proxCheck} {
		err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "set local session_replication_role = replica"); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `insert into public.orders
				select r.* from json_populate_recordset(null::public.orders, $1::json) r
				where exists (select from public.users u where u.id = r.user_id)
				on conflict (id) do nothing`, env.poisonRows); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "update public.orders set amount_cents = $1 where id = any($2::int[]) and amount_cents is distinct from $1",
				int64(diffPoison), env.poison)
			return err
		})
		if err != nil {
			t.Fatalf("poison orders %v in %s: %v", env.poison, c.Config().Database, err)
		}
	}
}

// fallbacks are the reads of orders-cents each proxy re-ran in their old form (session, comment).
func (env *diffEnv) fallbacks() [2]float64 {
	var out [2]float64
	for i, cs := range []*customSetup{env.session, env.comment} {
		out[i] = cs.metric("pgcanary_read_fallbacks_total", map[string]string{"migration": "orders-cents"})
	}
	return out
}

func runDifferential(t *testing.T, seed uint64) {
	t.Logf("seed %d (replay with PGCANARY_DIFF_SEED=%d)", seed, seed)
	start := time.Now()
	poison := diffPoisonFor(t, seed)
	if len(poison) > 0 {
		t.Logf("seed %d: orders %v poisoned (amount_cents %d), orders-cents reads at 100 %%", seed, poison, int64(diffPoison))
	}
	env := newDiffEnv(t, poison...)
	rng := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))

	// The 50 % phase routes by a sqlcommenter tag the generator writes, not by a random session
	// key, so that a seed replays the same routes.
	phases := []struct {
		name     string
		percent  float64
		proxy    *customSetup
		programs int
	}{
		{"100% session", 100, env.session, 15},
		{"0% session", 0, env.session, 5},
		{"50% comment:tenant", 50, env.comment, 12},
	}
	steps := 0
	for _, ph := range phases {
		for p := range ph.programs {
			// Again before each program: a program may change the percentages between its steps.
			ph.proxy.setFlags(env.percents(map[string]float64{usersMigration: ph.percent, "orders-cents": ph.percent}))
			g := newDiffGen(rng)
			prog := env.poisonProgram(g.program(22 + rng.IntN(14)))
			env.putBackPoison(t)
			where := fmt.Sprintf("seed %d, phase %q, program %d", seed, ph.name, p)
			replay := fmt.Sprintf("%sPGCANARY_DIFF_SEED=%d go test -race -count=1 -run TestDifferential -v ./test/e2e/", diffPoisonEnv(), seed)
			env.run(t, replay, where, ph.proxy, prog, g.mode)
			env.compareDatabases(t, where, prog)
			if ph.proxy == env.comment {
				env.checkComparisons(t, where, prog)
			}
			steps += len(prog)
		}
		t.Logf("%s: %s", ph.name, diffMetricSummary(t, ph.proxy.proxy.reg))
	}
	if routed := env.session.metric("pgcanary_statements_total", map[string]string{"migration": usersMigration, "kind": "read", "route": "new"}); routed == 0 {
		t.Fatalf("seed %d: no read was served by the new shape: the test did not exercise routing", seed)
	}
	if len(poison) > 0 {
		// The point of the poison: reads whose new form failed on it were re-run in their old
		// form, invisibly. A poisoned seed in which none was would have tested nothing new.
		fallbacks := env.fallbacks()
		t.Logf("seed %d: orders %v poisoned: %v reads of orders-cents fell back to the old form (session proxy %v, comment proxy %v); "+
			"the comparator saw the poison fail %v new forms", seed, poison, fallbacks[0]+fallbacks[1], fallbacks[0], fallbacks[1],
			env.explained[usersMigration]+env.explained["orders-cents"])
		if fallbacks[0]+fallbacks[1] == 0 {
			t.Fatalf("seed %d: orders %v poisoned, yet no read fell back to the old form: the test did not exercise fallbacks", seed, poison)
		}
	}
	t.Logf("seed %d: %d programs, %d steps, equal on both sides, in %s", seed,
		phases[0].programs+phases[1].programs+phases[2].programs, steps, time.Since(start).Round(time.Millisecond))
}

// diffSchema is the example schema made deterministic: values made by defaults come from
// sequences, so the two databases make the same ones, and the data is small enough that random
// keys often hit.
const diffSchema = `
create type user_tier as enum ('free', 'pro', 'enterprise');
create type order_status as enum ('new', 'paid', 'shipped', 'cancelled');
create sequence users_ext_seq;
create sequence stamp_seq;
create table users (
    id          bigserial primary key,
    full_name   text not null,
    email       text not null unique,
    active      boolean not null default true,
    tier        user_tier not null default 'free',
    birthday    date,
    profile     jsonb not null default '{}',
    tags        text[] not null default '{}',
    external_id uuid not null default lpad(to_hex(nextval('users_ext_seq')), 32, '0')::uuid,
    created_at  timestamptz not null default timestamptz '2024-01-01 00:00:00+00' + nextval('stamp_seq') * interval '1 minute'
);
create table users_v2 (
    id          bigint primary key,
    first_name  text not null,
    last_name   text,
    email       text not null unique,
    active      boolean not null,
    tier        user_tier not null,
    birthday    date,
    profile     jsonb not null,
    tags        text[] not null,
    external_id uuid not null,
    created_at  timestamptz not null
);
create table orders (
    id           serial primary key,
    user_id      bigint not null references users (id),
    amount       numeric(12, 2) not null,
    amount_cents bigint,
    currency     char(3) not null default 'EUR',
    status       order_status not null default 'new',
    placed_on    date not null default date '2024-06-01',
    note         text,
    created_at   timestamptz not null default timestamptz '2024-01-01 00:00:00+00' + nextval('stamp_seq') * interval '1 second'
);
create index orders_user_id on orders (user_id);
create table notes (id serial primary key, body text not null unique, n int not null default 0);
-- A relation named like the migrated one, reached through search_path.
create schema app;
create table app.users (like public.users including all);

insert into users (full_name, email, active, tier, birthday, profile, tags)
select (array['Cher', 'Ada Lovelace', 'Grace Brewster Hopper', 'Alan  Turing', ' Leading Space',
              'Émile Zola', 'Mary Ann Evans', '', 'O''Brien'])[1 + g % 9],
       'user' || g || '@example.com', g % 5 <> 0, (array['free', 'pro', 'enterprise'])[1 + g % 3]::user_tier,
       case when g % 4 = 0 then null else date '1960-01-01' + g * 97 end,
       jsonb_build_object('theme', (array['dark', 'light'])[1 + g % 2], 'visits', g),
       case when g % 3 = 0 then '{}' else array['t' || g % 4] end
from generate_series(1, 40) g;
insert into users_v2 (id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at)
select id, split_part(full_name, ' ', 1), nullif(substr(full_name, length(split_part(full_name, ' ', 1)) + 2), ''),
       email, active, tier, birthday, profile, tags, external_id, created_at
from users;
-- Users 31..40 have no orders, so deleting them can succeed.
insert into orders (user_id, amount, currency, status, note)
select 1 + (g * 7) % 30, round(((g * 7919) % 100000) / 100.0, 2), (array['EUR', 'USD', 'GBP'])[1 + g % 3],
       (array['new', 'paid', 'shipped', 'cancelled'])[1 + g % 4]::order_status, case when g % 5 = 0 then 'gift' end
from generate_series(1, 120) g;
update orders set amount_cents = (amount * 100)::bigint;
insert into notes (body, n) select 'n' || g, g from generate_series(1, 5) g;
insert into app.users (id, full_name, email) select 1000 + g, 'App Person' || g, 'app' || g || '@example.com'
from generate_series(1, 5) g;
analyze;
`

// diffReferenceTriggers make the reference database keep both shapes, as pgcanary's mirrored
// writes do: the oracle for writes is the write map applied row by row in the same statement.
const diffReferenceTriggers = `
create function diff_mirror_users() returns trigger language plpgsql as $$
begin
    if tg_op = 'DELETE' or new.id <> old.id then
        delete from public.users_v2 where id = old.id;
    end if;
    if tg_op = 'DELETE' then
        return old;
    end if;
    insert into public.users_v2 (id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at)
    values (new.id, split_part(new.full_name, ' ', 1),
            nullif(substr(new.full_name, length(split_part(new.full_name, ' ', 1)) + 2), ''),
            new.email, new.active, new.tier, new.birthday, new.profile, new.tags, new.external_id, new.created_at)
    on conflict (id) do update set first_name = excluded.first_name, last_name = excluded.last_name,
        email = excluded.email, active = excluded.active, tier = excluded.tier, birthday = excluded.birthday,
        profile = excluded.profile, tags = excluded.tags, external_id = excluded.external_id,
        created_at = excluded.created_at;
    return new;
end $$;
create trigger diff_mirror after insert or update or delete on public.users
    for each row execute function diff_mirror_users();
create function diff_orders_cents() returns trigger language plpgsql as $$
begin
    if tg_op = 'INSERT' and new.amount is null and new.amount_cents is not null
       or tg_op = 'UPDATE' and new.amount is not distinct from old.amount and new.amount_cents is distinct from old.amount_cents then
        new.amount := (new.amount_cents / 100.0)::numeric(12, 2);
    else
        new.amount_cents := (new.amount * 100)::bigint;
    end if;
    return new;
end $$;
-- Only updates that assign amount or amount_cents derive the other column, as pgcanary's mirrored
-- forms do (router/augment.go); on rows whose shapes agree the other updates would derive what
-- is there already, but a poisoned order (diffPoison) keeps its amount_cents through them.
create trigger diff_cents before insert or update of amount, amount_cents on public.orders
    for each row execute function diff_orders_cents();
`

const diffMigrations = `  - name: users-split-name
    database: diff_proxied
    old: public.users
    new: public.users_v2
    key: [id]
    write:
      first_name: split_part(full_name, ' ', 1)
      last_name: nullif(substr(full_name, length(split_part(full_name, ' ', 1)) + 2), '')
    read:
      full_name: concat_ws(' ', first_name, last_name)
    compare: {ratio: 1}
  - name: orders-cents
    database: diff_proxied
    old: public.orders
    new: public.orders
    key: [id]
    write:
      amount_cents: (amount * 100)::bigint
    read:
      amount: (amount_cents / 100.0)::numeric(12, 2)
    compare: {ratio: 1}
`

// diffEnv is the reference database, its proxied twin and two proxies in front of the twin.
type diffEnv struct {
	referenceDSN string // reached directly: what Postgres alone answers
	proxiedDSN   string // the twin, reached directly, for the checks between programs
	proxiedDB    func(dsn string) string
	session      *customSetup // routing_key session
	comment      *customSetup // routing_key comment:tenant
	refCheck     *pgx.Conn
	proxCheck    *pgx.Conn
	wording      map[string]bool // error wordings already reported
	poison       []int           // the poisoned orders' ids, in a poisoned seed (diffPoisonFor)
	poisonRows   string          // those orders as they first were, a JSON array (putBackPoison)
	// explained counts, by migration, the comparator's mismatches the poison explains, all
	// checked (checkComparisons); they are expected, every other mismatch fails the test.
	explained map[string]float64
}

// newDiffEnv clones both databases from one template, so that they start with the same rows and
// even the same OIDs (type OIDs in RowDescription can then be compared as they are). poison are
// the orders a poisoned seed poisons (diffPoisonFor); putBackPoison sets them.
func newDiffEnv(t *testing.T, poison ...int) *diffEnv {
	t.Helper()
	ctx := testCtx(t)
	dbs := []string{"diff_reference", "diff_proxied", "diff_template"}
	for _, db := range dbs {
		_ = cluster.Exec(ctx, "drop database if exists "+db+" with (force)")
	}
	t.Cleanup(func() {
		for _, db := range dbs {
			_ = cluster.Exec(context.Background(), "drop database if exists "+db+" with (force)")
		}
	})
	if err := cluster.Exec(ctx, "create database diff_template"); err != nil {
		t.Fatal(err)
	}
	tmpl := connectDSN(t, cluster.DatabaseDSN("diff_template", pgtest.SuperUser, ""))
	if _, err := tmpl.Exec(ctx, diffSchema); err != nil {
		t.Fatalf("schema: %v", err)
	}
	tmpl.Close(ctx)
	for _, db := range dbs[:2] {
		if err := cluster.Exec(ctx, "create database "+db+" template diff_template"); err != nil {
			t.Fatal(err)
		}
	}
	env := &diffEnv{
		wording:      map[string]bool{},
		poison:       poison,
		explained:    map[string]float64{},
		referenceDSN: cluster.DatabaseDSN("diff_reference", pgtest.SuperUser, ""),
		proxiedDSN:   cluster.DatabaseDSN("diff_proxied", pgtest.SuperUser, ""),
		proxiedDB: func(dsn string) string {
			return strings.Replace(dsn, "/"+pgtest.TestDB+"?", "/diff_proxied?", 1)
		},
	}
	env.refCheck = connectDSN(t, env.referenceDSN)
	if err := env.refCheck.QueryRow(ctx, "select coalesce(json_agg(o), '[]')::text from public.orders o where id = any($1::int[])",
		append([]int{}, poison...)).Scan(&env.poisonRows); err != nil {
		t.Fatalf("poisoned orders: %v", err)
	}
	if _, err := env.refCheck.Exec(ctx, diffReferenceTriggers); err != nil {
		t.Fatalf("reference triggers: %v", err)
	}
	env.proxCheck = connectDSN(t, env.proxiedDSN)

	dir := t.TempDir()
	flagPath := filepath.Join(dir, "flags.json")
	(&customSetup{t: t, flagPath: flagPath}).setFlags(map[string]float64{})
	cfgPath := filepath.Join(dir, "pgcanary.yaml")
	migrations := diffMigrations
	if len(poison) > 0 {
		// The poison makes the comparator find new forms failing where the old ones do not
		// (error_new mismatches, of users-split-name too for reads joining orders), and the
		// canary's verdicts fail: without this, the comment proxy's kill switches would send the
		// reads back to the old shapes, and the poison would no longer be read in a new form there.
		migrations = strings.ReplaceAll(migrations, "    compare: {ratio: 1}\n", "    compare: {ratio: 1}\n    auto_rollback: false\n")
	}
	yaml := fmt.Sprintf("upstream: %s\nside_dsn: %s\nflags: {file: flags.json}\nshadow: {workers: 2, queue_size: 10000}\nmigrations:\n%s",
		cluster.Addr(), env.proxiedDSN, migrations)
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := flags.NewFile(context.Background(), flagPath, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	start := func(routingKey string, canary bool) *customSetup {
		cfg, err := config.Load(cfgPath)
		if err != nil {
			t.Fatalf("config: %v", err)
		}
		p := startConfiguredProxy(t, cfg, proxyOpts{flags: src, routingKey: routingKey, canary: canary})
		return &customSetup{t: t, proxy: p, flagPath: flagPath, flags: src}
	}
	// Every read through the second proxy is also compared old against new in one snapshot: the
	// comparator must find no mismatch where the shapes agree.
	env.session, env.comment = start("session", false), start("comment:tenant", true)
	return env
}

// diffSide is one client session: to the reference database or through pgcanary.
type diffSide struct {
	name    string
	conn    *pgx.Conn
	pc      *pgconn.PgConn
	notices []string
	trace   bytes.Buffer
}

func openDiffSide(ctx context.Context, name, dsn string, mode pgx.QueryExecMode) (*diffSide, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	s := &diffSide{name: name}
	cfg.DefaultQueryExecMode = mode
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		s.notices = append(s.notices, fmt.Sprintf("%s %s %s", n.Severity, n.Code, n.Message))
	}
	if s.conn, err = pgx.ConnectConfig(ctx, cfg); err != nil {
		return nil, err
	}
	s.pc = s.conn.PgConn()
	// The wire trace is only printed when a step differs: it is the reproduction.
	s.pc.Frontend().Trace(&s.trace, pgproto3.TracerOptions{SuppressTimestamps: true, RegressMode: true})
	return s, nil
}

// run executes a program step by step on both sides and stops at the first difference; replay
// is the command that runs it again.
func (env *diffEnv) run(t *testing.T, replay, where string, cs *customSetup, prog []diffStep, mode pgx.QueryExecMode) {
	t.Helper()
	ctx := testCtx(t)
	ref, err := openDiffSide(ctx, "reference", env.referenceDSN, mode)
	if err != nil {
		t.Fatalf("%s: connect to the reference: %v", where, err)
	}
	defer ref.conn.Close(context.Background())
	prox, err := openDiffSide(ctx, "pgcanary", env.proxiedDB(cs.proxy.dsn(pgtest.SuperUser, "")), mode)
	if err != nil {
		t.Fatalf("%s: connect through pgcanary: %v", where, err)
	}
	defer prox.conn.Close(context.Background())
	for i, st := range prog {
		if st.flags != nil {
			cs.setFlags(st.flags)
			continue
		}
		want := runDiffStep(ctx, ref, st)
		got := runDiffStep(ctx, prox, st)
		if os.Getenv("PGCANARY_DIFF_VERBOSE") != "" {
			t.Logf("%s, step %d: %s\n--- reference:\n%s\n--- through pgcanary:\n%s", where, i, st.desc, want, got)
		}
		if got.key() == want.key() {
			env.noteWording(t, where, i, st, want, got)
			if os.Getenv("PGCANARY_DIFF_CHECK_EACH") != "" {
				// Hunting a divergence: find the step after which the databases part.
				env.compareDatabases(t, fmt.Sprintf("%s, after step %d", where, i), prog[:i+1])
			}
			if ref.pc.IsClosed() && prox.pc.IsClosed() {
				t.Logf("%s, step %d: the client closed both connections; the rest of the program is skipped", where, i)
				return
			}
			continue
		}
		t.Fatalf("%s, step %d: pgcanary's answer differs (pgx mode %v)\nreplay: %s\n"+
			"program:\n%s\n--- reference (Postgres directly):\n%s\n--- through pgcanary:\n%s\n--- wire trace through pgcanary:\n%s\n--- wire trace of the reference:\n%s",
			where, i, mode, replay, diffListing(prog[:i+1], i), want, got, diffClip(prox.trace.String()), diffClip(ref.trace.String()))
	}
}

// noteWording logs error texts that differ where the SQLSTATEs agree, once per kind.
func (env *diffEnv) noteWording(t *testing.T, where string, step int, st diffStep, want, got *diffObs) {
	for i := range want.soft {
		if want.soft[i] == got.soft[i] {
			continue
		}
		k := diffStrip(want.soft[i]) + "\x00" + diffStrip(got.soft[i])
		if env.wording[k] {
			continue
		}
		env.wording[k] = true
		t.Logf("%s, step %d: same SQLSTATE, other wording through pgcanary (%s)\n  statement: %s\n  reference: %s\n  pgcanary:  %s",
			where, step, want.strict[i], st.desc, want.soft[i], got.soft[i])
	}
}

// diffStrip drops what varies within one kind of wording (quoted names and values, positions).
func diffStrip(s string) string {
	return diffQuoted.ReplaceAllString(s, "_")
}

var diffAddr = regexp.MustCompile(`\d+\.\d+\.\d+\.\d+:\d+`)

var diffQuoted = regexp.MustCompile(`"[^"]*"|\([^)]*\)|position \d+|\d+`)

// diffStepTimeout bounds one step: a proxy that loses a response must fail the test, not hang it.
var diffStepTimeout = 20 * time.Second

// runDiffStep runs one step and returns everything the client saw, as text.
func runDiffStep(ctx context.Context, s *diffSide, st diffStep) *diffObs {
	var o diffObs
	s.notices, s.trace = nil, bytes.Buffer{}
	s.pc.Frontend().Trace(&s.trace, pgproto3.TracerOptions{SuppressTimestamps: true, RegressMode: true})
	sctx, cancel := context.WithTimeout(ctx, diffStepTimeout)
	st.run(sctx, s, &o)
	cancel()
	if s.pc.IsClosed() {
		o.line("connection closed")
	} else {
		o.line("tx status %c", s.pc.TxStatus())
	}
	for _, n := range s.notices {
		o.line("notice %s", n)
	}
	return &o
}

// compareDatabases checks after a program that both databases hold the same rows and sequence
// positions, and that the proxied one's shapes agree (new shape = write map of the old).
func (env *diffEnv) compareDatabases(t *testing.T, where string, prog []diffStep) {
	t.Helper()
	ctx := testCtx(t)
	queries := []string{
		"select coalesce(string_agg(t::text, E'\\n' order by t.id), '') from public.users t",
		"select coalesce(string_agg(t::text, E'\\n' order by t.id), '') from public.users_v2 t",
		"select coalesce(string_agg(t::text, E'\\n' order by t.id), '') from public.orders t",
		"select coalesce(string_agg(t::text, E'\\n' order by t.id), '') from public.notes t",
		"select coalesce(string_agg(t::text, E'\\n' order by t.id), '') from app.users t",
		`select concat_ws(' ', (select last_value || '/' || is_called from users_id_seq), (select last_value || '/' || is_called from orders_id_seq),
		        (select last_value || '/' || is_called from notes_id_seq), (select last_value || '/' || is_called from users_ext_seq),
		        (select last_value || '/' || is_called from stamp_seq))`,
	}
	for _, q := range queries {
		var ref, prox string
		if err := env.refCheck.QueryRow(ctx, q).Scan(&ref); err != nil {
			t.Fatalf("%s: reference: %v", where, err)
		}
		if err := env.proxCheck.QueryRow(ctx, q).Scan(&prox); err != nil {
			t.Fatalf("%s: proxied: %v", where, err)
		}
		if ref != prox {
			t.Fatalf("%s: after the program the databases differ\n%s\n%s\nprogram:\n%s", where, q, diffLineDiff(ref, prox), diffListing(prog, -1))
		}
	}
	const shapes = `
		with wm as (select id, split_part(full_name, ' ', 1) as first_name,
		                   nullif(substr(full_name, length(split_part(full_name, ' ', 1)) + 2), '') as last_name,
		                   email, active, tier, birthday, profile, tags, external_id, created_at from public.users),
		     nw as (select id, first_name, last_name, email, active, tier, birthday, profile, tags, external_id, created_at from public.users_v2)
		select (select count(*) from (select * from wm except all select * from nw) a)
		     + (select count(*) from (select * from nw except all select * from wm) b)
		     + (select count(*) from public.orders where amount_cents is distinct from (amount * 100)::bigint
		                                            and not (id = any($1::int[]) and amount_cents = $2))`
	// A poisoned order whose poison no write replaced disagrees with its amount by design, on
	// both sides alike (the comparison above holds them equal); only there, and only with the
	// poison itself.
	for _, c := range []*pgx.Conn{env.refCheck, env.proxCheck} {
		var diff int
		if err := c.QueryRow(ctx, shapes, append([]int{}, env.poison...), int64(diffPoison)).Scan(&diff); err != nil {
			t.Fatalf("%s: shapes: %v", where, err)
		}
		if diff != 0 {
			t.Fatalf("%s: the shapes disagree on %d rows in %s\nprogram:\n%s", where, diff, c.Config().Database, diffListing(prog, -1))
		}
	}
}

// diffClip shortens a wire trace for a failure message: rows of large values are kilobytes each.
func diffClip(trace string) string {
	lines := strings.Split(trace, "\n")
	for i, l := range lines {
		if len(l) > 300 {
			lines[i] = l[:300] + fmt.Sprintf("... (%d bytes)", len(l))
		}
	}
	if len(lines) > 150 {
		lines = append(append(lines[:100:100], fmt.Sprintf("... %d lines ...", len(lines)-150)), lines[len(lines)-50:]...)
	}
	return strings.Join(lines, "\n")
}

// diffListing numbers a program's steps and marks step mark.
func diffListing(prog []diffStep, mark int) string {
	var b strings.Builder
	for j, s := range prog {
		marker := "  "
		if j == mark {
			marker = "> "
		}
		fmt.Fprintf(&b, "%s%2d: %s\n", marker, j, s.desc)
	}
	return b.String()
}

// diffLineDiff shows the lines only one side has.
func diffLineDiff(ref, prox string) string {
	count := map[string]int{}
	for _, l := range strings.Split(ref, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(prox, "\n") {
		count[l]--
	}
	var b strings.Builder
	for _, l := range strings.Split(ref, "\n") {
		if count[l] > 0 {
			b.WriteString("- reference: " + l + "\n")
		}
	}
	for _, l := range strings.Split(prox, "\n") {
		if count[l] < 0 {
			b.WriteString("+ proxied:   " + l + "\n")
		}
	}
	return b.String()
}

// checkComparisons waits for the comparator's queue to drain and requires that no sampled read
// found the two shapes answering differently in one snapshot.
func (env *diffEnv) checkComparisons(t *testing.T, where string, prog []diffStep) {
	t.Helper()
	total := func() float64 {
		var n float64
		for _, m := range []string{usersMigration, "orders-cents"} {
			for _, r := range []string{"match", "mismatch", "error", "dropped", "skipped"} {
				n += env.comment.metric("pgcanary_comparisons_total", map[string]string{"migration": m, "result": r})
			}
		}
		return n
	}
	for last, deadline := -1.0, time.Now().Add(5*time.Second); time.Now().Before(deadline); {
		n := total()
		if n == last {
			break
		}
		last = n
		time.Sleep(200 * time.Millisecond)
	}
	for _, m := range []string{usersMigration, "orders-cents"} {
		n := env.comment.metric("pgcanary_comparisons_total", map[string]string{"migration": m, "result": "mismatch"})
		if len(env.poison) > 0 {
			n -= env.explainMismatches(t, m, n)
		}
		if n > 0 {
			recs, err := env.comment.proxy.canary.Mismatches(m, 5)
			t.Fatalf("%s: the comparator found %s answering differently on its two shapes: %+v %v\nprogram:\n%s", where, m, recs, err, diffListing(prog, -1))
		}
	}
}

// explainMismatches returns how many of migration m's total mismatches the poison explains.
// In a poisoned seed a compared read that meets a poisoned order fails in its new form only
// (error_new), with 22003 (numeric field overflow): that is the poison, and expected; the client,
// whose read fell back (or went to the old shape), saw nothing of it. Such a read is recorded
// under its first migration: users-split-name for a read of users joined with orders (its own
// read map, concat_ws, cannot fail so). Every other mismatch is not explained: another kind,
// another error of the new form, or the old form failing with the same overflow. A read failing
// in both forms for different reasons, the new one for the poison, would show as error_both:
// explained too if its new form's error is the overflow and the old one's is not. The
// mismatches made since the last check are looked at: their kinds in pgcanary_mismatches_total
// (all of them), their errors in the canary's records (the newest 100 it keeps).
func (env *diffEnv) explainMismatches(t *testing.T, m string, total float64) float64 {
	t.Helper()
	fresh := total - env.explained[m]
	if fresh <= 0 {
		return env.explained[m]
	}
	var ofKinds float64
	for _, k := range []string{shadow.KindErrorNew, shadow.KindErrorBoth} {
		ofKinds += env.comment.metric("pgcanary_mismatches_total", map[string]string{"migration": m, "kind": k})
	}
	if ofKinds != total {
		return env.explained[m] // mismatches of other kinds
	}
	recs, err := env.comment.proxy.canary.Mismatches(m, int(fresh))
	if err != nil {
		t.Fatalf("mismatches of %s: %v", m, err)
	}
	for _, r := range recs.([]shadow.Mismatch) {
		if !strings.HasPrefix(r.NewError, "22003:") || strings.HasPrefix(r.OldError, "22003:") {
			return env.explained[m]
		}
	}
	env.explained[m] = total
	return total
}

// diffMetricSummary says where reads went and what was not rewritten, for the log.
func diffMetricSummary(t *testing.T, reg prometheus.Gatherer) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for _, mf := range mfs {
		switch mf.GetName() {
		case "pgcanary_statements_total", "pgcanary_unmirrored_writes_total", "pgcanary_unrewritten_statements_total",
			"pgcanary_read_fallbacks_total", "pgcanary_mirrored_writes_total", "pgcanary_comparisons_total", "pgcanary_mismatches_total":
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, lp.GetName()+"="+lp.GetValue())
			}
			parts = append(parts, fmt.Sprintf("%s{%s}=%v", strings.TrimPrefix(mf.GetName(), "pgcanary_"), strings.Join(labels, ","), m.GetCounter().GetValue()))
		}
	}
	return strings.Join(parts, " ")
}

// ---------------------------------------------------------------------------------------------
// Observations: what a client can see, as text, without what legitimately differs (the table
// OID and column number of a RowDescription field say where Postgres found the column).
//
// Error texts are kept apart from the rest: a mirrored write runs as a SELECT and a routed read
// as another text, so Postgres's wording and error positions may name what it ran. They are
// reported in the log, not failed on; the SQLSTATE and severity must be equal.

type diffObs struct {
	strict []string
	soft   []string // error wording, by line of strict
}

func (o *diffObs) line(format string, args ...any) {
	o.strict, o.soft = append(o.strict, fmt.Sprintf(format, args...)), append(o.soft, "")
}

// String is everything observed, for the failure message.
func (o *diffObs) String() string {
	var b strings.Builder
	for i, l := range o.strict {
		b.WriteString(l)
		if o.soft[i] != "" {
			b.WriteString(" " + o.soft[i])
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// key is what must be equal on both sides.
func (o *diffObs) key() string { return strings.Join(o.strict, "\n") }

func (o *diffObs) fields(fds []pgconn.FieldDescription) {
	if fds == nil {
		return
	}
	var b strings.Builder
	for _, f := range fds {
		fmt.Fprintf(&b, " %s(oid %d, size %d, typmod %d, format %d)", f.Name, f.DataTypeOID, f.DataTypeSize, f.TypeModifier, f.Format)
	}
	o.line("fields%s", b.String())
}

func (o *diffObs) row(values [][]byte) {
	var b strings.Builder
	for i, v := range values {
		if i > 0 {
			b.WriteString(" | ")
		}
		switch {
		case v == nil:
			b.WriteString("NULL")
		case len(v) > 300:
			fmt.Fprintf(&b, "<%d bytes, sha256 %x>", len(v), sha256.Sum256(v))
		default:
			fmt.Fprintf(&b, "%q", v)
		}
	}
	o.line("row %s", b.String())
}

func (o *diffObs) err(what string, err error) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		o.line("%s: %s %s", what, pe.Severity, pe.Code)
		o.soft[len(o.soft)-1] = fmt.Sprintf("%s (detail %q, hint %q, position %d)", pe.Message, pe.Detail, pe.Hint, pe.Position)
		return
	}
	o.line("%s: client error: %s", what, diffAddr.ReplaceAllString(err.Error(), "addr"))
}

func (o *diffObs) result(rr *pgconn.ResultReader) {
	o.fields(rr.FieldDescriptions())
	for rr.NextRow() {
		o.row(rr.Values())
	}
	tag, err := rr.Close()
	if err != nil {
		o.err("result", err)
		return
	}
	o.writeRowsUnordered(tag.String())
	o.line("tag %q", tag.String())
}

// writeRowsUnordered sorts the rows just recorded when tag ends a write: RETURNING rows come in
// the order the write found them, which follows where rows sit in the table, and the proxied
// database's tables may be laid out differently (a re-run batch's rolled-back rows take room).
func (o *diffObs) writeRowsUnordered(tag string) {
	verb, _, _ := strings.Cut(tag, " ")
	if verb != "INSERT" && verb != "UPDATE" && verb != "DELETE" && verb != "MERGE" {
		return
	}
	from := len(o.strict)
	for from > 0 && strings.HasPrefix(o.strict[from-1], "row ") {
		from--
	}
	slices.Sort(o.strict[from:]) // rows carry no soft text
}

func (o *diffObs) description(sd *pgconn.StatementDescription) {
	o.line("statement %q params %v", sd.Name, sd.ParamOIDs)
	o.fields(sd.Fields)
	if len(sd.Fields) == 0 {
		o.line("no data")
	}
}

// message records one backend message of a raw exchange.
func (o *diffObs) message(msg pgproto3.BackendMessage) {
	switch m := msg.(type) {
	case *pgproto3.RowDescription:
		fds := make([]pgconn.FieldDescription, len(m.Fields))
		for i, f := range m.Fields {
			fds[i] = pgconn.FieldDescription{Name: string(f.Name), DataTypeOID: f.DataTypeOID, DataTypeSize: f.DataTypeSize,
				TypeModifier: f.TypeModifier, Format: f.Format}
		}
		o.fields(fds)
	case *pgproto3.DataRow:
		o.row(m.Values)
	case *pgproto3.CommandComplete:
		o.writeRowsUnordered(string(m.CommandTag))
		o.line("CommandComplete %q", m.CommandTag)
	case *pgproto3.ErrorResponse:
		o.err("ErrorResponse", pgconn.ErrorResponseToPgError(m))
	case *pgproto3.ParameterDescription:
		o.line("ParameterDescription %v", m.ParameterOIDs)
	case *pgproto3.ParameterStatus:
		o.line("ParameterStatus %s=%s", m.Name, m.Value)
	case *pgproto3.ReadyForQuery:
		o.line("ReadyForQuery %c", m.TxStatus)
	case *pgproto3.NoticeResponse:
		// OnNotice records it.
	default:
		o.line("%T", msg)
	}
}

// ---------------------------------------------------------------------------------------------
// Statements and parameters

type diffKind int

const (
	diffRead diffKind = iota
	diffWrite
	diffTx
	diffSessionKind
)

type diffParamKind byte

const (
	diffInt diffParamKind = iota
	diffText
)

type diffVal struct {
	s    string
	null bool
	k    diffParamKind
}

// diffStmt is one SQL statement with its parameter values.
type diffStmt struct {
	sql    string
	params []diffVal
	kind   diffKind
}

var diffPlaceholder = regexp.MustCompile(`\$(\d+)`)

// inline is the statement with its parameters as literals, for the simple protocol.
func (st diffStmt) inline() string {
	return diffPlaceholder.ReplaceAllStringFunc(st.sql, func(m string) string {
		n, _ := strconv.Atoi(m[1:])
		if n < 1 || n > len(st.params) {
			return m
		}
		return st.params[n-1].literal()
	})
}

func (p diffVal) literal() string {
	if p.null {
		return "NULL"
	}
	if _, err := strconv.ParseInt(p.s, 10, 64); err == nil && p.k == diffInt {
		if strings.HasPrefix(p.s, "-") {
			return "(" + p.s + ")"
		}
		return p.s
	}
	return "'" + strings.ReplaceAll(p.s, "'", "''") + "'"
}

// wire encodes the parameters for Bind: all text with types left to the server, or (typed)
// integers as binary int8 with their OID, which also checks that a rewritten form keeps the
// parameter types the client's statement has.
func (st diffStmt) wire(typed bool) (values [][]byte, oids []uint32, formats []int16) {
	for _, p := range st.params {
		var v []byte
		if !p.null {
			v = []byte(p.s)
		}
		oid, format := uint32(0), int16(0)
		if n, err := strconv.ParseInt(p.s, 10, 64); typed && err == nil && p.k == diffInt && !p.null {
			v, oid, format = binary.BigEndian.AppendUint64(nil, uint64(n)), 20, 1
		}
		values, oids, formats = append(values, v), append(oids, oid), append(formats, format)
	}
	if !typed {
		return values, nil, nil
	}
	return values, oids, formats
}

// args are the parameters as Go values for pgx: strings, which pgx encodes for whatever type the
// server describes (an int64 for a parameter the server infers as text fails in pgx itself and
// closes the connection).
func (st diffStmt) args() []any {
	var out []any
	for _, p := range st.params {
		if p.null {
			out = append(out, nil)
		} else {
			out = append(out, p.s)
		}
	}
	return out
}

func (st diffStmt) String() string {
	if len(st.params) == 0 {
		return st.sql
	}
	var ps []string
	for _, p := range st.params {
		if p.null {
			ps = append(ps, "NULL")
		} else {
			ps = append(ps, strconv.Quote(p.s))
		}
	}
	return st.sql + "  [" + strings.Join(ps, ", ") + "]"
}

func diffResultFormats(binaryResults bool) []int16 {
	if binaryResults {
		return []int16{1}
	}
	return nil
}

type diffTmpl struct {
	kind   diffKind
	sql    string
	params []func(*diffGen) diffVal
}

func diffT(kind diffKind, sql string, params ...func(*diffGen) diffVal) diffTmpl {
	return diffTmpl{kind: kind, sql: sql, params: params}
}

// diffReads and diffWrites stay inside what the docs say is served and mirrored exactly. Left
// out on purpose, as documented limits (docs/sql-support.md, docs/architecture.md): writes passed
// through unmirrored (MERGE, COPY FROM, data-modifying CTEs, key updates, RETURNING with a join,
// volatile or DEFAULT values of a derived column's input, multi-column assignment), TRUNCATE,
// temporary tables shadowing a migrated one, views and functions over the migrated tables, writes
// while search_path is unknown (unknownPathStep), prepared writes executed under another
// search_path (diffGen.epoch), and names with a trailing space, which the example write map
// cannot keep (a property of the maps, not of the proxy). Errors are only made where every plan
// meets them (no division by zero in a WHERE clause, whose evaluation order the planner may
// change), and every result of several rows is ordered, INSERT ... SELECT included: its order is
// the order serial values are given in.
var diffReads = []diffTmpl{
	diffT(diffRead, "SELECT id, full_name, email FROM users WHERE id = $1", argUser),
	diffT(diffRead, "SELECT * FROM users WHERE id = $1", argUser),
	diffT(diffRead, "SELECT u.* FROM users u WHERE u.id = $1", argUser),
	diffT(diffRead, "SELECT full_name, active FROM users WHERE email = $1", argEmail),
	diffT(diffRead, "SELECT id, full_name, tier, active FROM users WHERE id BETWEEN $1 AND $2 ORDER BY id", argUser, argUser),
	diffT(diffRead, "SELECT count(*), count(DISTINCT full_name), max(full_name), min(length(full_name)) FROM users"),
	diffT(diffRead, "SELECT upper(full_name) AS shout, split_part(full_name, ' ', 2) AS second, length(full_name) FROM users WHERE id <= $1 ORDER BY id", argUser),
	diffT(diffRead, "SELECT full_name, count(*) FROM users GROUP BY full_name ORDER BY full_name"),
	diffT(diffRead, "SELECT u.id, u.full_name, sum(o.amount) AS total, count(o.id) FROM users u LEFT JOIN orders o ON o.user_id = u.id WHERE u.id <= $1 GROUP BY u.id, u.full_name ORDER BY u.id", argUser),
	diffT(diffRead, "SELECT u.id, u.full_name, count(*) FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.id ORDER BY u.id LIMIT 8"),
	diffT(diffRead, "SELECT id, full_name FROM users WHERE full_name LIKE $1 ORDER BY id", argLike),
	diffT(diffRead, "SELECT id FROM users WHERE full_name = $1 ORDER BY id", argName),
	diffT(diffRead, "SELECT string_agg(full_name, ',' ORDER BY id) FROM users WHERE active"),
	diffT(diffRead, "SELECT id, full_name, row_number() OVER (ORDER BY full_name, id) AS rn FROM users WHERE id <= $1 ORDER BY id", argUser),
	diffT(diffRead, "WITH x AS (SELECT id, full_name FROM users WHERE id > $1) SELECT count(*), max(full_name) FROM x", argUser),
	diffT(diffRead, "SELECT full_name FROM users WHERE id = $1 UNION ALL SELECT full_name FROM users WHERE id = $2 ORDER BY 1", argUser, argUser),
	diffT(diffRead, "SELECT id, full_name FROM users u WHERE EXISTS (SELECT 1 FROM orders o WHERE o.user_id = u.id AND o.amount > $1) ORDER BY id LIMIT 10", argAmount),
	diffT(diffRead, "TABLE users ORDER BY id LIMIT 3"),
	diffT(diffRead, "SELECT full_name FROM users WHERE id = $1 FOR UPDATE", argUser),
	diffT(diffRead, "SELECT id, full_name AS name FROM users ORDER BY name DESC, id LIMIT $1 OFFSET $2", argSmall, argSmall),
	diffT(diffRead, "SELECT DISTINCT ON (tier) tier, full_name FROM users ORDER BY tier, id"),
	diffT(diffRead, "SELECT email AS full_name, full_name AS email FROM users WHERE id <= $1 ORDER BY full_name", argUser),
	diffT(diffRead, "SELECT full_name || ' <' || email || '>' AS contact FROM users WHERE id = $1", argUser),
	diffT(diffRead, "SELECT id, full_name FROM users WHERE id = ANY($1::bigint[]) ORDER BY id", argIDList),
	diffT(diffRead, "SELECT count(*) FILTER (WHERE full_name LIKE '% %') AS spaced, count(*) FILTER (WHERE full_name = '') AS empty FROM users"),
	diffT(diffRead, "SELECT full_name, 1 / (id - id) AS boom FROM users WHERE id = $1", argUser),
	diffT(diffRead, "SELECT full_name::int FROM users WHERE id = $1", argUser),
	diffT(diffRead, `SELECT id, full_name FROM users ORDER BY full_name COLLATE "C", id LIMIT 5`),
	diffT(diffRead, "SELECT x.full_name, y.full_name FROM users x JOIN users y ON y.id = x.id + 1 WHERE x.id <= $1 ORDER BY x.id", argUser),
	diffT(diffRead, "SELECT (SELECT full_name FROM users WHERE id = $1) AS n, (SELECT count(*) FROM orders WHERE user_id = $1) AS c", argUser),
	diffT(diffRead, "SELECT profile->>'theme' AS theme, tags, birthday, external_id, created_at FROM users WHERE id = $1", argUser),
	diffT(diffRead, "SELECT nope FROM users WHERE id = $1", argUser),
	diffT(diffRead, "SELECT full_name FROM users WHERE"),
	diffT(diffRead, "SELECT full_name FROM users WHERE id = $1 AND tier = $2", argUser, argTier),
	diffT(diffRead, "SELECT ctid IS NOT NULL AS has_ctid, full_name FROM users WHERE id = $1", argUser),
	diffT(diffRead, "SELECT u FROM users u WHERE u.id = $1", argUser),
	diffT(diffRead, "SELECT pg_typeof(full_name)::text, full_name FROM users WHERE id = $1", argUser),
	diffT(diffRead, "SELECT CASE WHEN active THEN full_name ELSE 'inactive' END AS label FROM users WHERE id <= $1 ORDER BY id", argUser),
	diffT(diffRead, "SELECT full_name FROM users ORDER BY id DESC LIMIT 1"),
	diffT(diffRead, "SELECT count(*) FROM users WHERE full_name IN (SELECT full_name FROM users WHERE id < $1)", argUser),
	diffT(diffRead, "SELECT id, full_name FROM users NATURAL JOIN (SELECT $1::bigint AS id) k", argUser),
	diffT(diffRead, "SELECT a.id, a.nm FROM users AS a(id, nm) WHERE a.id = $1", argUser),
	diffT(diffRead, "SELECT id, full_name FROM public.users WHERE id = $1", argUser),
	diffT(diffRead, "SELECT public.users.full_name FROM public.users WHERE id = $1", argUser),
	diffT(diffRead, "SELECT id, user_id, amount, amount_cents, status FROM orders WHERE id = $1", argOrder),
	diffT(diffRead, "SELECT * FROM orders WHERE user_id = $1 ORDER BY id", argUser),
	diffT(diffRead, "SELECT sum(amount), avg(amount), max(amount), count(*) FROM orders WHERE user_id <= $1", argUser),
	diffT(diffRead, "SELECT id, amount * 2 AS doubled, round(amount) AS whole FROM orders WHERE amount > $1 ORDER BY id LIMIT 5", argAmount),
	diffT(diffRead, "SELECT status, count(*), sum(amount) FROM orders GROUP BY status ORDER BY status"),
	diffT(diffRead, "SELECT id, amount FROM orders WHERE amount = $1 ORDER BY id", argAmount),
	diffT(diffRead, "SELECT o.id, o.amount, u.full_name FROM orders o JOIN users u ON u.id = o.user_id WHERE o.id BETWEEN $1 AND $2 ORDER BY o.id", argOrder, argOrder),
	diffT(diffRead, "SELECT amount::text, amount_cents::text FROM orders WHERE id = $1", argOrder),
	diffT(diffRead, "SELECT user_id, sum(amount) AS total FROM orders GROUP BY user_id HAVING sum(amount) > $1 ORDER BY user_id", argAmount),
	diffT(diffRead, "SELECT id, body, n FROM notes ORDER BY id"),
	diffT(diffRead, "SELECT 1 / $1::int AS q", argSmall),
	diffT(diffRead, "SELECT $1::int + 1 AS bad", argIntish),
	diffT(diffRead, "VALUES (1, 'a'), (2, 'b')"),
	diffT(diffRead, "SELECT 1 / 0"),
	diffT(diffRead, ""),
	diffT(diffRead, "SELECT u.full_name, o.amount FROM users u JOIN LATERAL (SELECT amount FROM orders WHERE user_id = u.id ORDER BY id LIMIT 1) o ON true WHERE u.id <= $1 ORDER BY u.id", argUser),
	diffT(diffRead, "SELECT array_agg(full_name ORDER BY id), json_agg(email ORDER BY id) FROM users WHERE id BETWEEN $1 AND $2", argUser, argUser),
	diffT(diffRead, "SELECT users.full_name FROM users WHERE users.id = $1", argUser),
	diffT(diffRead, "SELECT row_to_json(u) FROM users u WHERE u.id = $1", argUser),
	diffT(diffRead, "SELECT tier, count(*), string_agg(split_part(full_name, ' ', 1), '/' ORDER BY id) FROM users GROUP BY ROLLUP (tier) ORDER BY tier NULLS LAST"),
	diffT(diffRead, "SELECT o.id, sum(o.amount) OVER (PARTITION BY o.user_id ORDER BY o.id) FROM orders o WHERE o.user_id = $1 ORDER BY o.id", argUser),
	diffT(diffRead, "SELECT id, repeat('x', 8000) || full_name AS big FROM users WHERE id <= $1 ORDER BY id", argUser),
	diffT(diffRead, "SELECT id, repeat('y', 8000) || full_name AS big, 1 / (40 - id) AS late FROM users ORDER BY id"),
	diffT(diffRead, "DECLARE c1 CURSOR WITH HOLD FOR SELECT id, full_name, email FROM users ORDER BY id"),
	diffT(diffRead, "FETCH 3 FROM c1"),
	diffT(diffRead, "CLOSE c1"),
	diffT(diffRead, "DO $$ BEGIN RAISE NOTICE 'notice from a DO block'; END $$"),
}

var diffWrites = []diffTmpl{
	diffT(diffWrite, "INSERT INTO users (full_name, email) VALUES ($1, $2)", argName, argEmail),
	diffT(diffWrite, "INSERT INTO users (full_name, email, tier, tags) VALUES ($1, $2, $3, $4) RETURNING id, full_name, external_id, created_at", argName, argEmail, argTier, argTags),
	diffT(diffWrite, "INSERT INTO users (full_name, email) VALUES ($1, $2), ($3, $4) RETURNING *", argName, argEmail, argName, argEmail),
	diffT(diffWrite, "INSERT INTO users (full_name, email, tier) SELECT full_name || ' Jr', 'jr' || id || '.' || $1 || '@example.com', tier FROM users WHERE id BETWEEN $2 AND $2 + 2 ORDER BY id", argSmall, argUser),
	diffT(diffWrite, "UPDATE users SET full_name = $1 WHERE id = $2", argName, argUser),
	diffT(diffWrite, "UPDATE users SET full_name = full_name || ' ' || $1 WHERE id BETWEEN $2 AND $3", argSuffix, argUser, argUser),
	diffT(diffWrite, "UPDATE users SET email = $1 WHERE id = $2 RETURNING id, email, full_name", argEmail, argUser),
	diffT(diffWrite, "UPDATE users SET active = NOT active, tier = $1 WHERE id % 7 = $2", argTier, argSmall),
	diffT(diffWrite, "UPDATE users SET full_name = upper(full_name) WHERE id = $1 RETURNING full_name AS n, id", argUser),
	diffT(diffWrite, "UPDATE users u SET full_name = $1 FROM orders o WHERE o.user_id = u.id AND o.id = $2", argName, argOrder),
	diffT(diffWrite, "DELETE FROM users WHERE id = $1", argUser),
	diffT(diffWrite, "DELETE FROM users WHERE email = $1 RETURNING id, full_name", argEmail),
	diffT(diffWrite, "INSERT INTO users (full_name, email) VALUES ($1, $2) ON CONFLICT (email) DO UPDATE SET full_name = excluded.full_name RETURNING id, full_name", argName, argEmail),
	diffT(diffWrite, "INSERT INTO users (full_name, email) VALUES ($1, $2) ON CONFLICT (email) DO NOTHING", argName, argEmail),
	diffT(diffWrite, "INSERT INTO users (full_name, email) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id, email", argName, argEmail),
	diffT(diffWrite, "UPDATE users SET email = (SELECT email FROM users WHERE id = $1) WHERE id = $2", argUser, argUser),
	diffT(diffWrite, "UPDATE users SET full_name = $1, active = 1 / (id - id) > 0 WHERE id = $2", argName, argUser),
	diffT(diffWrite, "UPDATE users SET birthday = $1 WHERE id = $2", argDate, argUser),
	diffT(diffWrite, "UPDATE users SET profile = profile || jsonb_build_object('k', $1::text) WHERE id = $2", argName, argUser),
	diffT(diffWrite, "WITH t AS (SELECT id FROM users WHERE id <= $1) UPDATE users SET active = true WHERE id IN (SELECT id FROM t)", argUser),
	diffT(diffWrite, "INSERT INTO users (full_name, email) VALUES ($1, $2) RETURNING id, upper(full_name) AS up, email", argName, argEmail),
	diffT(diffWrite, "UPDATE users SET tags = array_append(tags, $1) WHERE id = $2 RETURNING tags", argSuffix, argUser),
	diffT(diffWrite, "INSERT INTO orders (user_id, amount) VALUES ($1, $2)", argUser, argAmount),
	diffT(diffWrite, "INSERT INTO orders (user_id, amount, status, note) VALUES ($1, $2, $3, $4) RETURNING id, amount, amount_cents, status", argUser, argAmount, argStatus, argName),
	diffT(diffWrite, "UPDATE orders SET amount = $1 WHERE id = $2 RETURNING amount, amount_cents", argAmount, argOrder),
	diffT(diffWrite, "UPDATE orders SET amount = amount + $1 WHERE user_id = $2", argAmount, argUser),
	diffT(diffWrite, "UPDATE orders SET note = $1 WHERE id = $2", argName, argOrder),
	diffT(diffWrite, "DELETE FROM orders WHERE id = $1", argOrder),
	diffT(diffWrite, "DELETE FROM orders WHERE user_id = $1 RETURNING id, amount", argUser),
	diffT(diffWrite, "INSERT INTO orders (user_id, amount) SELECT user_id, amount / 3 FROM orders WHERE id BETWEEN $1 AND $1 + 1 ORDER BY id", argOrder),
	diffT(diffWrite, "INSERT INTO orders (id, user_id, amount) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET amount = excluded.amount RETURNING id, amount_cents", argOrder, argUser, argAmount),
	diffT(diffWrite, "UPDATE orders SET amount = amount * 2, note = 'doubled' WHERE id = $1", argOrder),
	diffT(diffWrite, "UPDATE orders SET status = $1 WHERE id = $2", argStatus, argOrder),
	diffT(diffWrite, "INSERT INTO orders (user_id, amount) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING amount_cents", argUser, argAmount),
	diffT(diffWrite, "UPDATE orders SET amount_cents = $1 WHERE id = $2 RETURNING amount, amount_cents", argCents, argOrder),
	diffT(diffWrite, "INSERT INTO orders (user_id, amount_cents) VALUES ($1, $2) RETURNING id, amount, amount_cents", argUser, argCents),
	diffT(diffWrite, "UPDATE orders SET amount = CASE WHEN status = 'paid' THEN amount + 1 ELSE amount - 1 END WHERE user_id = $1 RETURNING id, amount_cents", argUser),
	diffT(diffWrite, "INSERT INTO orders (user_id, amount, status) SELECT id, length(full_name), 'paid' FROM users WHERE id BETWEEN $1 AND $1 + 1 ORDER BY id RETURNING user_id, amount_cents", argUser),
	diffT(diffWrite, "INSERT INTO notes (body, n) VALUES ($1, $2) RETURNING id", argWord, argSmall),
	diffT(diffWrite, "UPDATE notes SET n = n + 1 WHERE id <= $1", argSmall),
	diffT(diffWrite, "DELETE FROM notes WHERE body = $1", argWord),
}

// diffSession changes what names mean (app.users is another relation named users, and the
// proxy must follow the session's search_path to plan as Postgres resolves) and what is prepared.
var diffSession = []diffTmpl{
	diffT(diffSessionKind, "SET search_path TO app, public"),
	diffT(diffSessionKind, "SET search_path TO public"),
	diffT(diffSessionKind, "RESET search_path"),
	diffT(diffSessionKind, "SET LOCAL search_path TO app, public"),
	diffT(diffSessionKind, "SELECT set_config('search_path', 'app, public', false)"),
	diffT(diffSessionKind, "SELECT set_config('search_path', 'public', true)"),
	diffT(diffSessionKind, "SHOW search_path"),
	diffT(diffSessionKind, `SET search_path TO "$user", public`),
	diffT(diffSessionKind, "DEALLOCATE ALL"),
	diffT(diffSessionKind, "DISCARD ALL"),
}

// ---------------------------------------------------------------------------------------------
// Parameter generators

func diffPick(g *diffGen, pool []string) string { return pool[g.r.IntN(len(pool))] }

func argUser(g *diffGen) diffVal {
	switch n := g.r.IntN(100); {
	case n < 2:
		return diffVal{null: true, k: diffInt}
	case n < 6:
		return diffVal{s: "9999", k: diffInt}
	case n < 80:
		return diffVal{s: strconv.Itoa(1 + g.r.IntN(45)), k: diffInt}
	default:
		return diffVal{s: strconv.Itoa(31 + g.r.IntN(30)), k: diffInt}
	}
}

func argOrder(g *diffGen) diffVal {
	if g.r.IntN(20) == 0 {
		return diffVal{s: "9999", k: diffInt}
	}
	return diffVal{s: strconv.Itoa(1 + g.r.IntN(135)), k: diffInt}
}

func argSmall(g *diffGen) diffVal { return diffVal{s: strconv.Itoa(g.r.IntN(7)), k: diffInt} }

func argIntish(g *diffGen) diffVal {
	return diffVal{s: diffPick(g, []string{"7", "-3", "abc", "1.5"}), k: diffText}
}

func argName(g *diffGen) diffVal {
	if g.r.IntN(30) == 0 {
		return diffVal{null: true}
	}
	return diffVal{s: diffPick(g, []string{"Ada Lovelace", "Cher", "Grace Brewster Hopper", "Alan  Turing", " Leading",
		"", "Zoë Ångström", "Jean-Luc Picard", "A B C D", "O'Neil", "tab\there", "Edsger W. Dijkstra"})}
}

func argSuffix(g *diffGen) diffVal {
	return diffVal{s: diffPick(g, []string{"Jr", "III", "von Neumann", "Ø"})}
}

func argEmail(g *diffGen) diffVal {
	if g.r.IntN(2) == 0 {
		return diffVal{s: fmt.Sprintf("user%d@example.com", 1+g.r.IntN(45))}
	}
	return diffVal{s: fmt.Sprintf("new%d@example.com", g.r.IntN(40))}
}

func argAmount(g *diffGen) diffVal {
	return diffVal{s: diffPick(g, []string{"12.34", "0", "-5.50", "99999.99", "12.345", "0.005", "1e3", "7", "abc", "12345678901"})}
}

func argTier(g *diffGen) diffVal {
	return diffVal{s: diffPick(g, []string{"free", "pro", "enterprise", "free", "gold"})}
}

func argStatus(g *diffGen) diffVal {
	return diffVal{s: diffPick(g, []string{"new", "paid", "shipped", "cancelled", "lost"})}
}

func argLike(g *diffGen) diffVal {
	return diffVal{s: diffPick(g, []string{"A%", "% %", "%a%", "Grace%", "", "%"})}
}

func argIDList(g *diffGen) diffVal {
	return diffVal{s: diffPick(g, []string{"{1,2,3}", "{}", "{40,41,9999}", "{5,NULL}"})}
}

func argTags(g *diffGen) diffVal {
	if g.r.IntN(15) == 0 {
		return diffVal{null: true}
	}
	return diffVal{s: diffPick(g, []string{"{a,b}", "{}", `{"x y"}`})}
}

func argDate(g *diffGen) diffVal {
	return diffVal{s: diffPick(g, []string{"1990-01-02", "2000-02-29", "notadate", "2001-02-29"})}
}

func argCents(g *diffGen) diffVal {
	return diffVal{s: diffPick(g, []string{"1234", "0", "-550", "99", "abc"}), k: diffInt}
}

func argWord(g *diffGen) diffVal { return diffVal{s: fmt.Sprintf("n%d", 1+g.r.IntN(12))} }

func argSearchPath(g *diffGen) diffVal {
	return diffVal{s: diffPick(g, []string{"public", "app, public"})}
}

// ---------------------------------------------------------------------------------------------
// Programs

// diffStep is one client operation, run the same way on each side.
type diffStep struct {
	desc string
	run  func(ctx context.Context, s *diffSide, o *diffObs)
	// flags, when set, makes the step a change of the read percentages between two steps: a
	// statement prepared before it must follow the flag from its next execution.
	flags map[string]float64
}

// diffGen draws programs; it models what the session has prepared so that most executions name
// a statement that exists (the others are errors worth comparing too).
//
// epoch counts the statements that may change what names mean (search_path settings, and the
// ends of transactions, which can undo them). A prepared write is executed only in the epoch it
// was prepared in, and pgx's statement cache never carries a write across epochs: statements
// prepared under another search_path are TestProtocolCorners's (write_prepared_under_another_search_path).
type diffGen struct {
	r          *rand.Rand
	mode       pgx.QueryExecMode
	inTx       bool
	epoch      int
	prepared   map[string]diffTmpl // protocol-level names
	preparedAt map[string]int      // their epochs
	sqlPrep    map[string]diffTmpl // PREPARE names
	sqlPrepAt  map[string]int      // their epochs
}

func newDiffGen(r *rand.Rand) *diffGen {
	modes := []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeCacheDescribe,
		pgx.QueryExecModeDescribeExec, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol}
	return &diffGen{r: r, mode: modes[r.IntN(len(modes))], prepared: map[string]diffTmpl{}, preparedAt: map[string]int{},
		sqlPrep: map[string]diffTmpl{}, sqlPrepAt: map[string]int{}}
}

// remember records a Parse of name: replace says the name was closed first, else a Parse of a
// name that exists fails and the old statement stays.
func (g *diffGen) remember(name string, t diffTmpl, replace bool) {
	if _, ok := g.prepared[name]; ok && !replace {
		return
	}
	g.prepared[name], g.preparedAt[name] = t, g.epoch
}

// executable picks a prepared name whose execution the docs say is exact, or "".
func (g *diffGen) executable() string {
	var names []string
	for _, n := range slices.Sorted(maps.Keys(g.prepared)) {
		if g.prepared[n].kind != diffWrite || g.preparedAt[n] == g.epoch {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return ""
	}
	return names[g.r.IntN(len(names))]
}

func (g *diffGen) program(n int) []diffStep {
	var prog []diffStep
	for range n {
		prog = append(prog, g.step())
	}
	return append(prog, simpleStep("ROLLBACK"))
}

// template picks a statement kind, and for transaction control one that fits the transaction
// the generator believes is open.
func (g *diffGen) template() diffTmpl {
	switch c := g.r.IntN(100); {
	case c < 44:
		return diffReads[g.r.IntN(len(diffReads))]
	case c < 76:
		return diffWrites[g.r.IntN(len(diffWrites))]
	case c < 92:
		g.epoch++
		var pool []string
		if g.inTx {
			pool = []string{"SAVEPOINT a", "SAVEPOINT b", "ROLLBACK TO SAVEPOINT a", "RELEASE SAVEPOINT a", "ROLLBACK TO b",
				"COMMIT", "COMMIT", "ROLLBACK", "ROLLBACK", "COMMIT AND CHAIN"}
		} else {
			pool = []string{"BEGIN", "BEGIN", "BEGIN", "BEGIN ISOLATION LEVEL REPEATABLE READ", "START TRANSACTION READ ONLY",
				"COMMIT", "SAVEPOINT a"}
		}
		sql := diffPick(g, pool)
		switch {
		case strings.HasPrefix(sql, "BEGIN"), strings.HasPrefix(sql, "START"):
			g.inTx = true
		case sql == "COMMIT", sql == "ROLLBACK":
			g.inTx = false
		}
		return diffT(diffTx, sql)
	default:
		g.epoch++
		t := diffSession[g.r.IntN(len(diffSession))]
		if t.sql == "DEALLOCATE ALL" || t.sql == "DISCARD ALL" {
			clear(g.prepared)
			clear(g.sqlPrep)
		}
		return t
	}
}

// instance fills a template; most statements carry a sqlcommenter tag, the routing key of the
// comment:tenant phase.
func (g *diffGen) instance(t diffTmpl) diffStmt {
	sql := t.sql
	if g.r.IntN(10) < 6 {
		sql = fmt.Sprintf("/* tenant='%d' */ %s", g.r.IntN(8), sql)
	}
	return diffStmt{sql: sql, params: g.params(t), kind: t.kind}
}

func (g *diffGen) params(t diffTmpl) []diffVal {
	var ps []diffVal
	for _, f := range t.params {
		ps = append(ps, f(g))
	}
	return ps
}

func (g *diffGen) stmt() diffStmt { return g.instance(g.template()) }

// step draws one operation; the weights give each protocol path a share of every program.
func (g *diffGen) step() diffStep {
	switch w := g.r.IntN(100); {
	case w < 22:
		return simpleStep(g.stmt().inline())
	case w < 30:
		var parts []string
		for range 2 + g.r.IntN(3) {
			parts = append(parts, g.stmt().inline())
		}
		return simpleStep(strings.Join(parts, "; "))
	case w < 47:
		return execParamsStep(g.stmt(), g.r.IntN(2) == 0, g.r.IntN(5) == 0)
	case w < 57:
		return g.prepareStep()
	case w < 65:
		if name := g.executable(); name != "" {
			return g.execPreparedStep(name)
		}
		return g.prepareStep()
	case w < 73:
		return g.pipelineStep()
	case w < 80:
		var sts []diffStmt
		for range 2 + g.r.IntN(4) {
			st := g.stmt()
			if st.kind == diffWrite {
				// pgx caches statements by their text: see diffGen.epoch.
				st.sql += fmt.Sprintf(" /* epoch %d */", g.epoch)
			}
			if st.sql == "" {
				st.sql = "SELECT 'pgx cannot cache an empty statement'"
			}
			sts = append(sts, st)
		}
		return batchStep(sts, g.mode)
	case w < 90:
		return g.rawMessagesStep()
	case w < 92:
		return g.sqlPrepareStep()
	case w < 93:
		percents := []float64{0, 50, 100}
		flags := map[string]float64{usersMigration: percents[g.r.IntN(3)], "orders-cents": percents[g.r.IntN(3)]}
		return diffStep{desc: fmt.Sprintf("read percentages become %v (through pgcanary only)", flags), flags: flags}
	case w < 94:
		return g.copyStep()
	case w < 97:
		return g.unknownPathStep()
	default:
		name := fmt.Sprintf("s%d", g.r.IntN(4))
		delete(g.prepared, name)
		if g.r.IntN(2) == 0 {
			return simpleStep("DEALLOCATE " + name)
		}
		return diffStep{desc: "Close statement " + name + " (pgconn Deallocate)", run: func(ctx context.Context, s *diffSide, o *diffObs) {
			if err := s.pc.Deallocate(ctx, name); err != nil {
				o.err("deallocate", err)
			}
		}}
	}
}

func simpleStep(sql string) diffStep {
	return diffStep{desc: "simple Query: " + sql, run: func(ctx context.Context, s *diffSide, o *diffObs) {
		mrr := s.pc.Exec(ctx, sql)
		for mrr.NextResult() {
			o.result(mrr.ResultReader())
		}
		if err := mrr.Close(); err != nil {
			o.err("query", err)
		}
	}}
}

func execParamsStep(st diffStmt, typed, binaryResults bool) diffStep {
	return diffStep{desc: fmt.Sprintf("ExecParams (typed %v, binary results %v): %s", typed, binaryResults, st),
		run: func(ctx context.Context, s *diffSide, o *diffObs) {
			values, oids, formats := st.wire(typed)
			o.result(s.pc.ExecParams(ctx, st.sql, values, oids, formats, diffResultFormats(binaryResults)))
		}}
}

func (g *diffGen) prepareStep() diffStep {
	name := fmt.Sprintf("s%d", g.r.IntN(4))
	t := g.template()
	st := g.instance(t)
	closeFirst := g.r.IntN(3) > 0
	g.remember(name, t, closeFirst)
	typed := g.r.IntN(2) == 0
	var execs []diffStmt
	for range g.r.IntN(3) {
		execs = append(execs, diffStmt{sql: st.sql, params: g.params(t)})
	}
	typedExec, binaryResults := g.r.IntN(2) == 0, g.r.IntN(5) == 0
	desc := fmt.Sprintf("Prepare %s (typed %v): %s", name, typed, st.sql)
	if closeFirst {
		desc = fmt.Sprintf("Close statement %s, then %s", name, desc)
	}
	for _, e := range execs {
		desc += fmt.Sprintf("\n      ExecPrepared %s (typed %v, binary results %v): %s", name, typedExec, binaryResults, e)
	}
	return diffStep{desc: desc, run: func(ctx context.Context, s *diffSide, o *diffObs) {
		_, oids, _ := st.wire(typed)
		if closeFirst {
			if err := s.pc.Deallocate(ctx, name); err != nil {
				o.err("deallocate", err)
			}
		}
		sd, err := s.pc.Prepare(ctx, name, st.sql, oids)
		if err != nil {
			o.err("prepare", err)
		} else {
			o.description(sd)
		}
		for _, e := range execs {
			values, _, formats := e.wire(typedExec)
			o.result(s.pc.ExecPrepared(ctx, name, values, formats, diffResultFormats(binaryResults)))
		}
	}}
}

func (g *diffGen) execPreparedStep(name string) diffStep {
	st := diffStmt{sql: g.prepared[name].sql, params: g.params(g.prepared[name])}
	typed, binaryResults := g.r.IntN(2) == 0, g.r.IntN(5) == 0
	return diffStep{desc: fmt.Sprintf("ExecPrepared %s (typed %v, binary results %v): %s", name, typed, binaryResults, st),
		run: func(ctx context.Context, s *diffSide, o *diffObs) {
			values, _, formats := st.wire(typed)
			o.result(s.pc.ExecPrepared(ctx, name, values, formats, diffResultFormats(binaryResults)))
		}}
}

// pipelineStep sends several requests and Syncs in one write, then reads every result.
func (g *diffGen) pipelineStep() diffStep {
	type item struct {
		kind       string // query, prepare, prepared, close
		name       string
		st         diffStmt
		typed      bool
		sync       bool
		closeFirst bool
	}
	var items []item
	var desc strings.Builder
	desc.WriteString("pipeline:")
	for i, n := 0, 2+g.r.IntN(5); i < n; i++ {
		it := item{typed: g.r.IntN(2) == 0, sync: i == n-1 || g.r.IntN(10) < 3}
		switch w := g.r.IntN(100); {
		case w < 55:
			it.kind, it.st = "query", g.stmt()
		case w < 75:
			t := g.template()
			it.kind, it.name, it.st = "prepare", fmt.Sprintf("s%d", g.r.IntN(4)), g.instance(t)
			it.closeFirst = g.r.IntN(3) > 0
			g.remember(it.name, t, it.closeFirst)
		case w < 90 && g.executable() != "":
			it.name = g.executable()
			it.kind, it.st = "prepared", diffStmt{sql: g.prepared[it.name].sql, params: g.params(g.prepared[it.name])}
		default:
			it.kind, it.name = "close", fmt.Sprintf("s%d", g.r.IntN(4))
			delete(g.prepared, it.name)
		}
		if it.closeFirst {
			fmt.Fprintf(&desc, "\n      close %s", it.name)
		}
		fmt.Fprintf(&desc, "\n      %s %s (typed %v): %s", it.kind, it.name, it.typed, it.st)
		if it.sync {
			desc.WriteString("\n      Sync")
		}
		items = append(items, it)
	}
	return diffStep{desc: desc.String(), run: func(ctx context.Context, s *diffSide, o *diffObs) {
		pl := s.pc.StartPipeline(ctx)
		syncs := 0
		for _, it := range items {
			values, oids, formats := it.st.wire(it.typed)
			switch it.kind {
			case "query":
				pl.SendQueryParams(it.st.sql, values, oids, formats, nil)
			case "prepare":
				if it.closeFirst {
					pl.SendDeallocate(it.name)
				}
				pl.SendPrepare(it.name, it.st.sql, oids)
			case "prepared":
				pl.SendQueryPrepared(it.name, values, formats, nil)
			case "close":
				pl.SendDeallocate(it.name)
			}
			if it.sync {
				pl.SendPipelineSync()
				syncs++
			}
		}
		if err := pl.Flush(); err != nil {
			o.err("pipeline flush", err)
		}
		for seen := 0; seen < syncs; {
			res, err := pl.GetResults()
			if err != nil {
				o.err("pipeline", err)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) {
					break
				}
				continue
			}
			switch r := res.(type) {
			case nil:
				o.line("pipeline: no more results")
				seen = syncs
			case *pgconn.ResultReader:
				o.result(r)
			case *pgconn.StatementDescription:
				o.description(r)
			case *pgconn.CloseComplete:
				o.line("close complete")
			case *pgconn.PipelineSync:
				o.line("sync")
				seen++
			}
		}
		if err := pl.Close(); err != nil {
			o.err("pipeline close", err)
		}
	}}
}

// batchStep goes through pgx itself (its statement cache and its own use of the protocol in the
// program's query exec mode, the simple one included).
func batchStep(sts []diffStmt, mode pgx.QueryExecMode) diffStep {
	desc := fmt.Sprintf("pgx.Batch (mode %v):", mode)
	for _, st := range sts {
		desc += "\n      " + st.String()
	}
	return diffStep{desc: desc, run: func(ctx context.Context, s *diffSide, o *diffObs) {
		b := &pgx.Batch{}
		for _, st := range sts {
			b.Queue(st.sql, st.args()...)
		}
		br := s.conn.SendBatch(ctx, b)
		for range sts {
			rows, err := br.Query()
			if err != nil {
				o.err("batch query", err)
				if rows != nil {
					rows.Close()
				}
				continue
			}
			o.fields(rows.FieldDescriptions())
			for rows.Next() {
				o.row(rows.RawValues())
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				o.err("batch rows", err)
			} else {
				o.writeRowsUnordered(rows.CommandTag().String())
				o.line("tag %q", rows.CommandTag().String())
			}
		}
		if err := br.Close(); err != nil {
			o.err("batch close", err)
		}
	}}
}

// rawMessagesStep writes extended-protocol messages pgconn's helpers never combine: named portals,
// Execute with a row limit and again to resume, Describe of statement and portal, Close of
// either, all before one Sync; every backend message is recorded.
func (g *diffGen) rawMessagesStep() diffStep {
	st := g.stmt()
	stmtName := ""
	if g.r.IntN(2) == 0 {
		stmtName = fmt.Sprintf("r%d", g.r.IntN(2))
	}
	portal := ""
	if g.r.IntN(2) == 0 {
		portal = "pp"
	}
	typed, binaryResults := g.r.IntN(2) == 0, g.r.IntN(5) == 0
	maxRows := []uint32{0, 0, 1, 2}[g.r.IntN(4)]
	values, oids, formats := st.wire(typed)
	msgs := []pgproto3.FrontendMessage{&pgproto3.Parse{Name: stmtName, Query: st.sql, ParameterOIDs: oids}}
	if g.r.IntN(2) == 0 {
		msgs = append(msgs, &pgproto3.Describe{ObjectType: 'S', Name: stmtName})
	}
	msgs = append(msgs, &pgproto3.Bind{DestinationPortal: portal, PreparedStatement: stmtName, ParameterFormatCodes: formats,
		Parameters: values, ResultFormatCodes: diffResultFormats(binaryResults)})
	if g.r.IntN(2) == 0 {
		msgs = append(msgs, &pgproto3.Describe{ObjectType: 'P', Name: portal})
	}
	msgs = append(msgs, &pgproto3.Execute{Portal: portal, MaxRows: maxRows})
	if maxRows > 0 && g.r.IntN(3) > 0 {
		msgs = append(msgs, &pgproto3.Execute{Portal: portal})
	}
	if g.r.IntN(2) == 0 {
		msgs = append(msgs, &pgproto3.Close{ObjectType: 'P', Name: portal})
	}
	if stmtName != "" && g.r.IntN(2) == 0 {
		msgs = append(msgs, &pgproto3.Close{ObjectType: 'S', Name: stmtName})
	}
	flushFirst := g.r.IntN(4) == 0
	if flushFirst {
		msgs = append(msgs, &pgproto3.Flush{})
	}
	msgs = append(msgs, &pgproto3.Sync{})
	return rawStep(fmt.Sprintf("raw messages (params %s):", st), msgs, flushFirst)
}

// rawStep sends msgs as they are and records every backend message up to ReadyForQuery. With
// flushFirst, the client sends Flush and reads the answers to its Executes before it sends Sync.
func rawStep(title string, msgs []pgproto3.FrontendMessage, flushFirst bool) diffStep {
	var desc strings.Builder
	desc.WriteString(title)
	for _, m := range msgs {
		switch m := m.(type) {
		case *pgproto3.Parse:
			fmt.Fprintf(&desc, "\n      Parse %q oids %v", m.Name, m.ParameterOIDs)
		case *pgproto3.Bind:
			fmt.Fprintf(&desc, "\n      Bind portal %q statement %q formats %v results %v", m.DestinationPortal, m.PreparedStatement, m.ParameterFormatCodes, m.ResultFormatCodes)
		case *pgproto3.Describe:
			fmt.Fprintf(&desc, "\n      Describe %c %q", m.ObjectType, m.Name)
		case *pgproto3.Execute:
			fmt.Fprintf(&desc, "\n      Execute %q max rows %d", m.Portal, m.MaxRows)
		case *pgproto3.Close:
			fmt.Fprintf(&desc, "\n      Close %c %q", m.ObjectType, m.Name)
		case *pgproto3.Flush:
			desc.WriteString("\n      Flush, then read the answers before sending Sync")
		case *pgproto3.Sync:
			desc.WriteString("\n      Sync")
		}
	}
	executes, readies := 0, 0 // a pipeline of several Syncs or Queries gets as many ReadyForQuery
	for _, m := range msgs {
		switch m.(type) {
		case *pgproto3.Execute:
			executes++
		case *pgproto3.Sync, *pgproto3.Query:
			readies++
		}
	}
	return diffStep{desc: desc.String(), run: func(ctx context.Context, s *diffSide, o *diffObs) {
		fe := s.pc.Frontend()
		for _, m := range msgs {
			if _, ok := m.(*pgproto3.Sync); ok && flushFirst {
				// A client that flushes waits for these answers before it sends Sync.
				if err := fe.Flush(); err != nil {
					o.err("raw flush", err)
					return
				}
				for done := 0; done < executes; {
					msg, err := s.pc.ReceiveMessage(ctx)
					if err != nil {
						o.err("raw receive before Sync", err)
						return
					}
					o.message(msg)
					switch msg.(type) {
					case *pgproto3.CommandComplete, *pgproto3.EmptyQueryResponse, *pgproto3.PortalSuspended:
						done++
					case *pgproto3.ErrorResponse:
						done = executes
					}
				}
				o.line("(Sync sent)")
			}
			fe.Send(m)
		}
		if err := fe.Flush(); err != nil {
			o.err("raw flush", err)
			return
		}
		for ready := 0; ready < readies; {
			msg, err := s.pc.ReceiveMessage(ctx)
			if err != nil {
				o.err("raw receive", err)
				return
			}
			o.message(msg)
			if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
				ready++
			}
		}
	}}
}

// sqlPrepareStep uses PREPARE / EXECUTE / DEALLOCATE statements.
func (g *diffGen) sqlPrepareStep() diffStep {
	name := fmt.Sprintf("q%d", g.r.IntN(3))
	t, ok := g.sqlPrep[name]
	if !ok || g.r.IntN(4) == 0 || t.kind == diffWrite && g.sqlPrepAt[name] != g.epoch {
		t = diffReads[g.r.IntN(len(diffReads))]
		if g.r.IntN(2) == 0 {
			t = diffWrites[g.r.IntN(len(diffWrites))]
		}
		if !ok {
			g.sqlPrep[name], g.sqlPrepAt[name] = t, g.epoch
		}
		return simpleStep(fmt.Sprintf("PREPARE %s AS %s", name, t.sql))
	}
	if g.r.IntN(6) == 0 {
		delete(g.sqlPrep, name)
		return simpleStep("DEALLOCATE " + name)
	}
	var lits []string
	for _, p := range g.params(t) {
		lits = append(lits, p.literal())
	}
	sql := "EXECUTE " + name
	if len(lits) > 0 {
		sql += "(" + strings.Join(lits, ", ") + ")"
	}
	return simpleStep(sql)
}

// unknownPathStep sets search_path to a value the proxy cannot read from the text (a parameter of
// set_config), reads, and sets it plainly again. Docs: while the path is unknown the session
// relays statements as written and leaves writes unmirrored, so only reads run in between (a
// write would make a documented drift).
func (g *diffGen) unknownPathStep() diffStep {
	g.epoch++
	set := diffStmt{sql: "SELECT set_config('search_path', $1, false)", params: []diffVal{argSearchPath(g)}, kind: diffSessionKind}
	var parts []diffStep
	switch n := g.r.IntN(3); {
	case n == 0:
		parts = append(parts, execParamsStep(set, g.r.IntN(2) == 0, false))
	case n == 1:
		parts = append(parts, diffStep{desc: "Prepare sc + ExecPrepared sc: " + set.String(), run: func(ctx context.Context, s *diffSide, o *diffObs) {
			if _, err := s.pc.Prepare(ctx, "sc", set.sql, nil); err != nil {
				o.err("prepare", err)
			}
			values, _, _ := set.wire(false)
			o.result(s.pc.ExecPrepared(ctx, "sc", values, nil, nil))
			if err := s.pc.Deallocate(ctx, "sc"); err != nil {
				o.err("deallocate", err)
			}
		}})
	default:
		parts = append(parts, batchStep([]diffStmt{set}, pgx.QueryExecModeExec))
	}
	for range 1 + g.r.IntN(3) {
		read := g.instance(diffReads[g.r.IntN(len(diffReads))])
		if g.r.IntN(2) == 0 {
			parts = append(parts, simpleStep(read.inline()))
		} else {
			parts = append(parts, execParamsStep(read, g.r.IntN(2) == 0, false))
		}
	}
	parts = append(parts, simpleStep(diffPick(g, []string{"RESET search_path", "SET search_path TO public", "SET search_path TO app, public"})))
	desc := "unknown search_path:"
	for _, p := range parts {
		desc += "\n      " + strings.ReplaceAll(p.desc, "\n", "\n  ")
	}
	return diffStep{desc: desc, run: func(ctx context.Context, s *diffSide, o *diffObs) {
		for _, p := range parts {
			p.run(ctx, s, o)
		}
	}}
}

// copyStep runs COPY out of the migrated tables (relayed as it is) and COPY into a table of no
// migration (COPY FROM into a migrated one is a documented unmirrored write).
func (g *diffGen) copyStep() diffStep {
	if g.r.IntN(2) == 0 {
		sql := diffPick(g, []string{"COPY (SELECT id, full_name, email FROM users ORDER BY id) TO STDOUT",
			"COPY (SELECT id, amount, amount_cents FROM orders WHERE id <= 20 ORDER BY id) TO STDOUT (FORMAT csv, HEADER)",
			"COPY users TO STDOUT"})
		return diffStep{desc: "CopyTo: " + sql, run: func(ctx context.Context, s *diffSide, o *diffObs) {
			var out bytes.Buffer
			tag, err := s.pc.CopyTo(ctx, &out, sql)
			if err != nil {
				o.err("copy to", err)
				return
			}
			o.line("copied %q: %s", tag.String(), diffSorted(out.String()))
		}}
	}
	data := fmt.Sprintf("c%d\t%d\nc%d\t%d\n", g.r.IntN(6), g.r.IntN(9), g.r.IntN(6), g.r.IntN(9))
	return diffStep{desc: fmt.Sprintf("CopyFrom notes (body, n): %q", data), run: func(ctx context.Context, s *diffSide, o *diffObs) {
		tag, err := s.pc.CopyFrom(ctx, strings.NewReader(data), "COPY notes (body, n) FROM STDIN")
		if err != nil {
			o.err("copy from", err)
			return
		}
		o.line("copied %q", tag.String())
	}}
}

// diffSorted orders COPY output lines: "COPY users TO STDOUT" has no ORDER BY.
func diffSorted(s string) string {
	lines := strings.Split(s, "\n")
	slices.Sort(lines)
	return fmt.Sprintf("%x", sha256.Sum256([]byte(strings.Join(lines, "\n"))))
}
