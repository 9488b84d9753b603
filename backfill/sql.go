package backfill

import (
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgcanary/pgcanary/config"
)

// checkpointDDL creates the checkpoint table. One row per migration; last_key holds the key
// values of the last row copied, as text in key order, so that any key type survives a restart
// (each value is cast back to its column's type in the chunk statement). IF NOT EXISTS is not
// safe against a concurrent CREATE (two backfills starting at once both try): an advisory lock,
// held by the implicit transaction of this one simple-protocol string, serializes them.
const checkpointDDL = `select pg_advisory_xact_lock(hashtext('pgcanary.backfill_checkpoint'));
create schema if not exists pgcanary;
create table if not exists pgcanary.backfill_checkpoint (
    migration   text primary key,
    key_columns text[] not null,
    last_key    text[],
    rows        bigint not null default 0,
    chunks      bigint not null default 0,
    done        boolean not null default false,
    started_at  timestamptz not null default now(),
    updated_at  timestamptz not null default now()
)`

// plan is the SQL of one migration's backfill, derived from its write map and live catalog.
type plan struct {
	migration string
	database  string
	sameTable bool
	old, new  *config.Relation
	keys      []string // key columns (unquoted) in chunk order
	keyTypes  []string // their types in the old relation, schema-qualified (TypeSQL)
	cols      []config.MappedColumn
	// nullable lists the key columns (in key order) that may hold NULL in the old relation. A row
	// with a NULL in its key is named by no key: the walk skips it, and Run counts it.
	nullable []string
	// The chunk statements: first has no lower bound, next starts after the last key. Parameters:
	// the last key (next only), the upper bound key, then limit, migration, key columns.
	first, next string
}

// newPlan builds the chunk statements. Keys are walked in the column order of a unique index of
// the old relation covering them (the primary key first), so that the row-value comparison and
// ORDER BY are one index range scan whatever order the configuration lists them in.
func newPlan(m *config.Migration, mc *config.MigrationCatalog) (*plan, error) {
	cols, err := m.WriteMapColumns(mc)
	if err != nil {
		return nil, err
	}
	keys := make([]string, len(m.Key))
	for i, k := range m.Key {
		keys[i] = config.UnquoteIdent(k)
	}
	for _, uk := range mc.Old.UniqueKeys {
		if len(uk) == len(keys) && !slices.ContainsFunc(uk, func(c string) bool { return !slices.Contains(keys, c) }) {
			keys = slices.Clone(uk)
			break
		}
	}
	p := &plan{migration: m.Name, database: m.Database, sameTable: m.SameTable(), old: mc.Old, new: mc.New, keys: keys, cols: cols}
	for _, k := range keys {
		c, ok := mc.Old.Column(k)
		if !ok {
			return nil, fmt.Errorf("migration %s: key column %s is not a column of %s", m.Name, k, mc.Old.Qualified())
		}
		p.keyTypes = append(p.keyTypes, c.TypeSQL)
		if !c.NotNull {
			p.nullable = append(p.nullable, k)
		}
	}
	if p.sameTable && !slices.ContainsFunc(cols, func(c config.MappedColumn) bool { return !c.Key }) {
		return nil, fmt.Errorf("migration %s: the write map names no new column of %s: nothing to backfill", m.Name, mc.Old.Qualified())
	}
	p.first = p.chunkSQL(false)
	p.next = p.chunkSQL(true)
	return p, nil
}

func ident(name string) string { return pgx.Identifier{name}.Sanitize() }

func keyAlias(i int) string { return fmt.Sprintf("pgcanary_k%d", i) }

// chunkSQL is one chunk as a single statement, so one transaction and one round trip:
//
//	src      the next rows of old after the last key, in key order, locked;
//	w        their write-map image into the new shape;
//	summary  how many rows and the last key;
//	cp       the checkpoint advanced to that key, atomically with the copy.
func (p *plan) chunkSQL(bounded bool) string {
	n := 0
	param := func() string { n++; return fmt.Sprintf("$%d", n) }
	lhs := make([]string, len(p.keys))
	for i, k := range p.keys {
		lhs[i] = ident(k)
	}
	// Key values are passed as text and cast here, so they compare in the key's own type
	// (numbers as numbers, text under its collation) whatever the type is.
	keyParams := func() string {
		rhs := make([]string, len(p.keys))
		for i := range p.keys {
			rhs[i] = fmt.Sprintf("(%s::text)::%s", param(), p.keyTypes[i])
		}
		return strings.Join(rhs, ", ")
	}
	var conds []string
	if bounded {
		conds = append(conds, fmt.Sprintf("(%s) > (%s)", strings.Join(lhs, ", "), keyParams()))
	}
	// The walk stops at the highest key when the run started: rows inserted after that are
	// written through the proxy, which mirrors them, and chasing them would never end under a
	// steady insert rate.
	conds = append(conds, fmt.Sprintf("(%s) <= (%s)", strings.Join(lhs, ", "), keyParams()))
	// A row comparison does not skip every key with a NULL: (1, NULL) > (0, 5) is true. Such a
	// row must not be copied (its upsert would never conflict, so every run would add it again)
	// nor end a chunk (its key cannot be a checkpoint). Only nullable key columns get the
	// condition, so a NOT NULL key's statement is unchanged.
	conds = append(conds, p.notNull()...)
	where := "\n  where " + strings.Join(conds, " and ")
	limit, migration, keyCols := param(), param(), param()

	var sel, order, orderDesc, lastKey []string
	for i, k := range p.keys {
		sel = append(sel, fmt.Sprintf("%s as %s", ident(k), keyAlias(i)))
		order = append(order, keyAlias(i))
		orderDesc = append(orderDesc, keyAlias(i)+" desc")
		lastKey = append(lastKey, keyAlias(i)+"::text")
	}
	var b strings.Builder
	if p.sameTable {
		// The UPDATE would lock its rows anyway; locking them in src first, in key order, gives
		// the chunk exactly the rows it counts and the same lock order as a new-table chunk.
		fmt.Fprintf(&b, "with src as materialized (\n  select %s\n  from %s%s\n  order by %s\n  limit %s\n  for no key update\n)",
			strings.Join(sel, ", "), p.old.QuotedName(), where, strings.Join(order, ", "), limit)
		var set, match []string
		for _, c := range p.cols {
			if !c.Key {
				set = append(set, fmt.Sprintf("%s = %s", ident(c.Name), c.Expr))
			}
		}
		for i, k := range p.keys {
			match = append(match, fmt.Sprintf("t.%s = src.%s", ident(k), keyAlias(i)))
		}
		fmt.Fprintf(&b, ",\nw as (\n  update %s as t set %s\n  from src where %s\n)",
			p.old.QuotedName(), strings.Join(set, ", "), strings.Join(match, " and "))
	} else {
		for i, c := range p.cols {
			sel = append(sel, fmt.Sprintf("%s as pgcanary_c%d", c.Expr, i))
		}
		fmt.Fprintf(&b, "with src as materialized (\n  select %s\n  from %s%s\n  order by %s\n  limit %s\n  for share\n)",
			strings.Join(sel, ", "), p.old.QuotedName(), where, strings.Join(order, ", "), limit)
		var names, vals, set, conflict []string
		for i, c := range p.cols {
			names = append(names, ident(c.Name))
			vals = append(vals, fmt.Sprintf("pgcanary_c%d", i))
			if !c.Key {
				set = append(set, fmt.Sprintf("%s = excluded.%s", ident(c.Name), ident(c.Name)))
			}
		}
		for _, k := range p.keys {
			conflict = append(conflict, ident(k))
		}
		action := "do nothing"
		if len(set) > 0 {
			action = "do update set " + strings.Join(set, ", ")
		}
		fmt.Fprintf(&b, ",\nw as (\n  insert into %s (%s)\n  select %s from src\n  on conflict (%s) %s\n)",
			p.new.QuotedName(), strings.Join(names, ", "), strings.Join(vals, ", "), strings.Join(conflict, ", "), action)
	}
	fmt.Fprintf(&b, `,
summary as (
  select count(*) as n, (select array[%s] from src order by %s limit 1) as last_key from src
),
cp as (
  insert into pgcanary.backfill_checkpoint as c (migration, key_columns, last_key, rows, chunks)
  select %s, %s::text[], last_key, n, 1 from summary where n > 0
  on conflict (migration) do update
    set last_key = excluded.last_key, rows = c.rows + excluded.rows, chunks = c.chunks + 1, updated_at = now()
)
select n, last_key from summary`, strings.Join(lastKey, ", "), strings.Join(orderDesc, ", "), migration, keyCols)
	return b.String()
}

// args are the parameters of a chunk statement after lastKey (nil: the first chunk), up to and
// including upper (nil, for an empty relation: nulls, which no key is below).
func (p *plan) args(lastKey, upper []string, limit int) []any {
	var out []any
	for _, v := range lastKey {
		out = append(out, v)
	}
	for i := range p.keys {
		if upper == nil {
			out = append(out, nil)
		} else {
			out = append(out, upper[i])
		}
	}
	return append(out, limit, p.migration, p.keys)
}

// upperSQL reads the highest key of the old relation, where a run stops. Keys with a NULL are
// left out: NULL sorts first in descending order, and is no key to stop at.
func (p *plan) upperSQL() string {
	var cols, desc []string
	for _, k := range p.keys {
		cols = append(cols, ident(k)+"::text")
		desc = append(desc, ident(k)+" desc")
	}
	where := ""
	if nn := p.notNull(); len(nn) > 0 {
		where = " where " + strings.Join(nn, " and ")
	}
	return fmt.Sprintf("select array[%s] from %s%s order by %s limit 1", strings.Join(cols, ", "), p.old.QuotedName(), where, strings.Join(desc, ", "))
}

// notNull is one "column is not null" condition per nullable key column.
func (p *plan) notNull() []string {
	out := make([]string, len(p.nullable))
	for i, k := range p.nullable {
		out[i] = ident(k) + " is not null"
	}
	return out
}

// nullKeySQL counts the rows of old that have a NULL in a key column, which the walk skips; ""
// when no key column is nullable (there are none to count).
func (p *plan) nullKeySQL() string {
	if len(p.nullable) == 0 {
		return ""
	}
	isNull := make([]string, len(p.nullable))
	for i, k := range p.nullable {
		isNull[i] = ident(k) + " is null"
	}
	return fmt.Sprintf("select count(*) from %s where %s", p.old.QuotedName(), strings.Join(isNull, " or "))
}

// sql is the chunk statement for a walk that has reached lastKey.
func (p *plan) sql(lastKey []string) string {
	if lastKey == nil {
		return p.first
	}
	return p.next
}
