package config

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Relation is a relation as the live catalog describes it.
type Relation struct {
	OID     uint32
	Schema  string
	Name    string
	Kind    string // pg_class.relkind: r table, p partitioned table, v view, ...
	Columns []Column
	// PrimaryKey and UniqueKeys list column sets of unique, non-partial indexes on plain columns;
	// the primary key is also among UniqueKeys.
	PrimaryKey []string
	UniqueKeys [][]string
	// ReferencedBy lists the relations (schema.name) with a foreign key to this one.
	ReferencedBy []string
	// NameSchemas lists every schema holding a relation of this name, so a planner can resolve an
	// unqualified reference under a session's search_path as Postgres would.
	NameSchemas []string
}

// Column is a column in attribute order.
type Column struct {
	Name      string
	Num       int16
	TypeOID   uint32
	TypeName  string // format_type(atttypid, atttypmod), e.g. numeric(12,2)
	TypeSQL   string // the same, schema-qualified wherever not in pg_catalog: safe in SQL under any search_path
	Typmod    int32
	NotNull   bool
	Default   string // the default expression, "" when none
	Generated bool   // GENERATED ALWAYS AS (...) STORED
	Identity  string // "", "a" (ALWAYS) or "d" (BY DEFAULT)
}

// Qualified returns schema.name for messages.
func (r *Relation) Qualified() string { return r.Schema + "." + r.Name }

// QuotedName returns "schema"."name" for SQL text.
func (r *Relation) QuotedName() string { return pgx.Identifier{r.Schema, r.Name}.Sanitize() }

// Column returns the named column.
func (r *Relation) Column(name string) (*Column, bool) {
	for i := range r.Columns {
		if r.Columns[i].Name == name {
			return &r.Columns[i], true
		}
	}
	return nil, false
}

// HasUniqueKey reports whether some unique index covers exactly the columns of key.
func (r *Relation) HasUniqueKey(key []string) bool {
	want := map[string]bool{}
	for _, k := range key {
		want[k] = true
	}
	for _, uk := range r.UniqueKeys {
		if len(uk) != len(want) {
			continue
		}
		all := true
		for _, c := range uk {
			all = all && want[c]
		}
		if all {
			return true
		}
	}
	return false
}

// errNoRelation reports a relation that does not resolve.
var errNoRelation = errors.New("relation does not exist")

// LoadRelation resolves name (as the connection's search_path would) and reads its columns and
// unique keys.
func LoadRelation(ctx context.Context, conn *pgx.Conn, name string) (*Relation, error) {
	rel := &Relation{}
	var oid *uint32
	err := conn.QueryRow(ctx, `select to_regclass($1)::oid`, name).Scan(&oid)
	if err != nil {
		return nil, fmt.Errorf("resolve %s: %w", name, err)
	}
	if oid == nil {
		return nil, fmt.Errorf("%s: %w", name, errNoRelation)
	}
	rel.OID = *oid
	err = conn.QueryRow(ctx, `
		select n.nspname, c.relname, c.relkind::text
		from pg_class c join pg_namespace n on n.oid = c.relnamespace
		where c.oid = $1`, rel.OID).Scan(&rel.Schema, &rel.Name, &rel.Kind)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	// format_type qualifies a type name whenever its schema is not on the search_path: with only
	// pg_catalog on it, every user type comes out schema-qualified.
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read-only
	if _, err := tx.Exec(ctx, "set local search_path = pg_catalog"); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	rows, err := tx.Query(ctx, `
		select a.attname, a.attnum, a.atttypid, pg_catalog.format_type(a.atttypid, a.atttypmod),
		       a.atttypmod,
		       a.attnotnull, coalesce(pg_get_expr(d.adbin, d.adrelid), ''), a.attgenerated <> '',
		       a.attidentity::text
		from pg_attribute a
		left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
		where a.attrelid = $1 and a.attnum > 0 and not a.attisdropped
		order by a.attnum`, rel.OID)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", name, err)
	}
	for rows.Next() {
		var c Column
		if err := rows.Scan(&c.Name, &c.Num, &c.TypeOID, &c.TypeSQL, &c.Typmod, &c.NotNull, &c.Default, &c.Generated, &c.Identity); err != nil {
			return nil, fmt.Errorf("read columns of %s: %w", name, err)
		}
		if c.Generated {
			c.Default = "" // the generation expression is not a default
		}
		rel.Columns = append(rel.Columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	// The readable type names, under the connection's own search_path.
	names := map[int16]string{}
	rows, err = conn.Query(ctx, `select attnum, format_type(atttypid, atttypmod) from pg_attribute where attrelid = $1 and attnum > 0 and not attisdropped`, rel.OID)
	if err != nil {
		return nil, fmt.Errorf("read column types of %s: %w", name, err)
	}
	for rows.Next() {
		var num int16
		var tn string
		if err := rows.Scan(&num, &tn); err != nil {
			return nil, fmt.Errorf("read column types of %s: %w", name, err)
		}
		names[num] = tn
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read column types of %s: %w", name, err)
	}
	for i := range rel.Columns {
		rel.Columns[i].TypeName = names[rel.Columns[i].Num]
	}
	if err := conn.QueryRow(ctx, `
		select coalesce(array_agg(n.nspname::text order by n.nspname), '{}')
		from pg_class c join pg_namespace n on n.oid = c.relnamespace
		where c.relname = $1 and c.relkind in ('r', 'p', 'v', 'm', 'f')`, rel.Name).Scan(&rel.NameSchemas); err != nil {
		return nil, fmt.Errorf("read relations named %s: %w", rel.Name, err)
	}
	if err := conn.QueryRow(ctx, `
		select coalesce(array_agg(distinct n.nspname || '.' || c.relname), '{}')
		from pg_constraint k join pg_class c on c.oid = k.conrelid join pg_namespace n on n.oid = c.relnamespace
		where k.contype = 'f' and k.confrelid = $1 and k.conrelid <> $1`, rel.OID).Scan(&rel.ReferencedBy); err != nil {
		return nil, fmt.Errorf("read foreign keys to %s: %w", name, err)
	}
	rows, err = conn.Query(ctx, `
		select i.indisprimary,
		       array(select a.attname from unnest(i.indkey::int2[]) with ordinality k(attnum, ord)
		             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
		             order by k.ord)
		from pg_index i
		where i.indrelid = $1 and i.indisunique and i.indisvalid and i.indpred is null
		  and i.indexprs is null and 0 <> all (i.indkey::int2[])
		order by i.indisprimary desc, i.indexrelid`, rel.OID)
	if err != nil {
		return nil, fmt.Errorf("read indexes of %s: %w", name, err)
	}
	for rows.Next() {
		var primary bool
		var cols []string
		if err := rows.Scan(&primary, &cols); err != nil {
			return nil, fmt.Errorf("read indexes of %s: %w", name, err)
		}
		if primary {
			rel.PrimaryKey = cols
		}
		rel.UniqueKeys = append(rel.UniqueKeys, cols)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read indexes of %s: %w", name, err)
	}
	return rel, nil
}

// MigrationCatalog is the live catalog of one migration's relations.
type MigrationCatalog struct {
	Old, New *Relation
	// Stale says how the live relations changed since this catalog was read, when the
	// configuration does not validate against them (drift.go): the migration's reads are not
	// routed then. "" when the catalog is current.
	Stale string
}

// Catalog is the live catalog of every migration, by migration name.
type Catalog map[string]*MigrationCatalog
