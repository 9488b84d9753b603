package config

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// A generation's catalog describes the migrated relations as they were when it loaded. DDL on
// them afterwards (a column added to the old table, a type changed) would leave the planner
// reading the new shape through a projection of the old column list: `SELECT *` would lose the
// new column without an error. The reloader therefore compares the live columns with the
// catalog's now and then, loads the configuration again when they differ, and, when the file no
// longer validates against the live schema, keeps the generation but marks the drifted
// migrations stale: their reads stay on the old shape until the configuration validates again.

// columnsQuery lists the live columns of relations by OID, in attribute order.
const columnsQuery = `
	select a.attrelid::int8, a.attname::text, a.atttypid::int8, a.atttypmod
	from pg_attribute a
	where a.attrelid = any($1::oid[]) and a.attnum > 0 and not a.attisdropped
	order by a.attrelid, a.attnum`

// liveColumn is one column as columnsQuery reads it.
type liveColumn struct {
	name    string
	typeOID uint32
	typmod  int32
}

// DetectDrift compares the live columns of every migration's relations with gen's catalog. It
// returns, by migration, what changed ("column nickname added to public.users"), or nil when
// nothing did.
func DetectDrift(ctx context.Context, gen *Generation, connect Connector) (map[string]string, error) {
	byDB := map[string][]uint32{}
	for _, m := range gen.Config.Migrations {
		if mc := gen.Catalog[m.Name]; mc != nil {
			byDB[m.Database] = append(byDB[m.Database], mc.Old.OID, mc.New.OID)
		}
	}
	live := map[string]map[uint32][]liveColumn{} // database → relation OID → columns
	for db, oids := range byDB {
		cols, err := readColumns(ctx, connect, db, oids)
		if err != nil {
			return nil, err
		}
		live[db] = cols
	}
	var out map[string]string
	for _, m := range gen.Config.Migrations {
		mc := gen.Catalog[m.Name]
		if mc == nil {
			continue
		}
		var changes []string
		for _, rel := range []*Relation{mc.Old, mc.New} {
			if c := columnChanges(rel, live[m.Database][rel.OID]); c != "" && !slices.Contains(changes, c) {
				changes = append(changes, c)
			}
		}
		if len(changes) > 0 {
			if out == nil {
				out = map[string]string{}
			}
			out[m.Name] = strings.Join(changes, "; ")
		}
	}
	return out, nil
}

// columnChanges describes how rel's live columns differ from the catalog's ("" when they do not).
func columnChanges(rel *Relation, live []liveColumn) string {
	if len(live) == 0 {
		return fmt.Sprintf("%s was dropped or replaced", rel.Qualified())
	}
	known := map[string]Column{}
	for _, c := range rel.Columns {
		known[c.Name] = c
	}
	var parts []string
	seen := map[string]bool{}
	for _, l := range live {
		seen[l.name] = true
		c, ok := known[l.name]
		switch {
		case !ok:
			parts = append(parts, fmt.Sprintf("column %s added", l.name))
		case c.TypeOID != l.typeOID || c.Typmod != l.typmod:
			parts = append(parts, fmt.Sprintf("column %s changed type", l.name))
		}
	}
	for _, c := range rel.Columns {
		if !seen[c.Name] {
			parts = append(parts, fmt.Sprintf("column %s dropped", c.Name))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return fmt.Sprintf("%s: %s", rel.Qualified(), strings.Join(parts, ", "))
}

func readColumns(ctx context.Context, connect Connector, db string, oids []uint32) (map[uint32][]liveColumn, error) {
	conn, err := connect(ctx, db)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, columnsQuery, oids)
	if err != nil {
		return nil, fmt.Errorf("read columns in %s: %w", db, err)
	}
	defer rows.Close()
	out := map[uint32][]liveColumn{}
	for rows.Next() {
		var rel, typ int64
		var c liveColumn
		if err := rows.Scan(&rel, &c.name, &typ, &c.typmod); err != nil {
			return nil, fmt.Errorf("read columns in %s: %w", db, err)
		}
		c.typeOID = uint32(typ)
		out[uint32(rel)] = append(out[uint32(rel)], c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns in %s: %w", db, err)
	}
	return out, nil
}

// WithStale returns a copy of gen whose catalog marks the given migrations stale, with why; nil
// when every one of them is marked so already.
func WithStale(gen *Generation, stale map[string]string) *Generation {
	changed := false
	for name, why := range stale {
		if mc := gen.Catalog[name]; mc != nil && mc.Stale != why {
			changed = true
		}
	}
	if !changed {
		return nil
	}
	g := *gen
	g.Catalog = make(Catalog, len(gen.Catalog))
	for name, mc := range gen.Catalog {
		if why, ok := stale[name]; ok {
			c := *mc
			c.Stale = why
			mc = &c
		}
		g.Catalog[name] = mc
	}
	return &g
}
