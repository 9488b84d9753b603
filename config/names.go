package config

import (
	"context"
	"fmt"
	"slices"
)

// The planner resolves an unqualified name with the list of schemas that hold a relation of that
// name (Relation.NameSchemas). A schema created after the configuration loaded (a new tenant's
// app.users, say) would otherwise go unseen until the next reload, and a session whose
// search_path puts it first would be planned against the migrated relation instead. Names are
// therefore read again now and then, and soon after a session sends DDL through the proxy.

// namesQuery lists, per relation name, the schemas holding a relation of that name, as the
// catalog query in catalog.go does.
const namesQuery = `
	select c.relname::text, coalesce(array_agg(n.nspname::text order by n.nspname), '{}')
	from pg_class c join pg_namespace n on n.oid = c.relnamespace
	where c.relname = any($1) and c.relkind in ('r', 'p', 'v', 'm', 'f')
	group by c.relname`

// RefreshNames reads again which schemas hold relations named like each migration's old and new
// relations. It returns a copy of gen with the new lists when any changed, or nil when none did.
// The copy keeps gen's number; the caller numbers it.
func RefreshNames(ctx context.Context, gen *Generation, connect Connector) (*Generation, error) {
	byDB := map[string][]string{} // database → relation names
	for _, m := range gen.Config.Migrations {
		mc := gen.Catalog[m.Name]
		if mc == nil {
			continue
		}
		for _, rel := range []*Relation{mc.Old, mc.New} {
			if !slices.Contains(byDB[m.Database], rel.Name) {
				byDB[m.Database] = append(byDB[m.Database], rel.Name)
			}
		}
	}
	fresh := map[string]map[string][]string{} // database → name → schemas
	for db, names := range byDB {
		got, err := readNameSchemas(ctx, connect, db, names)
		if err != nil {
			return nil, err
		}
		fresh[db] = got
	}
	var next *Generation
	for _, m := range gen.Config.Migrations {
		mc := gen.Catalog[m.Name]
		if mc == nil {
			continue
		}
		oldSchemas, newSchemas := fresh[m.Database][mc.Old.Name], fresh[m.Database][mc.New.Name]
		if slices.Equal(oldSchemas, mc.Old.NameSchemas) && slices.Equal(newSchemas, mc.New.NameSchemas) {
			continue
		}
		if next == nil {
			g := *gen
			g.Catalog = make(Catalog, len(gen.Catalog))
			for k, v := range gen.Catalog {
				g.Catalog[k] = v
			}
			next = &g
		}
		updated := &MigrationCatalog{Old: withNames(mc.Old, oldSchemas), New: withNames(mc.New, newSchemas), Stale: mc.Stale}
		if mc.Old == mc.New { // a same-table migration: one relation
			updated.New = updated.Old
		}
		next.Catalog[m.Name] = updated
	}
	return next, nil
}

func withNames(r *Relation, schemas []string) *Relation {
	c := *r
	c.NameSchemas = schemas
	return &c
}

func readNameSchemas(ctx context.Context, connect Connector, db string, names []string) (map[string][]string, error) {
	conn, err := connect(ctx, db)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, namesQuery, names)
	if err != nil {
		return nil, fmt.Errorf("read relation names in %s: %w", db, err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var name string
		var schemas []string
		if err := rows.Scan(&name, &schemas); err != nil {
			return nil, fmt.Errorf("read relation names in %s: %w", db, err)
		}
		out[name] = schemas
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read relation names in %s: %w", db, err)
	}
	for _, n := range names {
		if out[n] == nil {
			out[n] = []string{} // dropped everywhere: an empty list, as the catalog query gives
		}
	}
	return out, nil
}
