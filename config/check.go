package config

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Connector opens a connection to a database through the side DSN.
type Connector func(ctx context.Context, database string) (*pgx.Conn, error)

// ErrUnreachable marks a database that could not be reached; `pgcanary check` exits 2 on it.
var ErrUnreachable = errors.New("database unreachable")

// DSNConnector connects with dsn, its database name replaced by the migration's.
func DSNConnector(dsn string) Connector {
	return func(ctx context.Context, database string) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(dsn)
		if err != nil {
			return nil, fmt.Errorf("side_dsn: %w", err)
		}
		if database != "" {
			cfg.Database = database
		}
		conn, err := pgx.ConnectConfig(ctx, cfg)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "3D000" {
			return nil, pgErr // the server answered: the database named in the file does not exist
		}
		if err != nil {
			return nil, fmt.Errorf("%w: database %q at %s:%d: %v", ErrUnreachable, cfg.Database, cfg.Host, cfg.Port, err)
		}
		return conn, nil
	}
}

// Check validates cfg against the live databases and returns every finding with the catalog of
// each migration it could resolve. It fails only when a database cannot be reached.
func Check(ctx context.Context, cfg *Config, connect Connector) (Report, Catalog, error) {
	report := cfg.Lint()
	catalog := Catalog{}
	byDB := map[string][]int{}
	var dbs []string
	for i, m := range cfg.Migrations {
		if m.Database == "" || m.Old == "" || m.New == "" || len(m.Key) == 0 {
			continue // Lint reported it
		}
		if _, ok := byDB[m.Database]; !ok {
			dbs = append(dbs, m.Database)
		}
		byDB[m.Database] = append(byDB[m.Database], i)
	}
	for _, db := range dbs {
		conn, err := connect(ctx, db)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "3D000" { // invalid_catalog_name: a mistake in the file
			for _, i := range byDB[db] {
				report = append(report, cfg.finding(Error, cfg.Migrations[i].Name, []any{"migrations", i, "database"},
					"database %s does not exist on the server side_dsn reaches", db))
			}
			continue
		}
		if err != nil {
			return report, catalog, err
		}
		owners := map[uint32]string{} // relation OID → migration using it
		for _, i := range byDB[db] {
			c := &checker{cfg: cfg, conn: conn, idx: i, m: &cfg.Migrations[i]}
			mc, err := c.run(ctx)
			report = append(report, c.report...)
			if err != nil {
				conn.Close(ctx)
				return report, catalog, err
			}
			if mc == nil {
				continue
			}
			for _, rel := range []*Relation{mc.Old, mc.New} {
				if other, taken := owners[rel.OID]; taken && other != c.m.Name {
					report = append(report, cfg.finding(Error, c.m.Name, []any{"migrations", i},
						"relation %s is already part of migration %s: one relation, one migration", rel.Qualified(), other))
				}
				owners[rel.OID] = c.m.Name
			}
			if !c.failed {
				catalog[c.m.Name] = mc
			}
		}
		conn.Close(ctx)
	}
	sort.SliceStable(report, func(a, b int) bool { return report[a].Line < report[b].Line })
	return dedupe(report), catalog, nil
}

func dedupe(r Report) Report {
	seen := map[string]bool{}
	out := r[:0]
	for _, f := range r {
		if s := f.String(); !seen[s] {
			seen[s] = true
			out = append(out, f)
		}
	}
	return out
}

// checker runs the live checks of one migration.
type checker struct {
	cfg    *Config
	conn   *pgx.Conn
	idx    int
	m      *Migration
	report Report
	failed bool // an error finding: the migration's catalog is not usable
}

func (c *checker) at(path ...any) []any { return append([]any{"migrations", c.idx}, path...) }

func (c *checker) errorf(path []any, format string, args ...any) {
	c.failed = true
	c.report = append(c.report, c.cfg.finding(Error, c.m.Name, path, format, args...))
}

func (c *checker) warnf(path []any, format string, args ...any) {
	c.report = append(c.report, c.cfg.finding(Warning, c.m.Name, path, format, args...))
}

// run returns the migration's catalog, nil when a relation is missing. Its error is a lost
// connection; problems with the migration are findings.
func (c *checker) run(ctx context.Context) (*MigrationCatalog, error) {
	m := c.m
	old, err := c.relation(ctx, "old", m.Old)
	if err != nil {
		return nil, err
	}
	newRel := old
	if !m.SameTable() {
		if newRel, err = c.relation(ctx, "new", m.New); err != nil {
			return nil, err
		}
	}
	if old == nil || newRel == nil {
		return nil, nil
	}
	mc := &MigrationCatalog{Old: old, New: newRel}
	c.checkColumns(mc)
	if err := c.checkExpressions(ctx, mc); err != nil {
		return mc, err
	}
	if err := c.checkPrivileges(ctx, mc); err != nil {
		return mc, err
	}
	return mc, nil
}

func (c *checker) relation(ctx context.Context, field, name string) (*Relation, error) {
	rel, err := LoadRelation(ctx, c.conn, name)
	switch {
	case errors.Is(err, errNoRelation):
		c.errorf(c.at(field), "%s relation %s does not exist in database %s", field, name, c.m.Database)
		return nil, nil
	case err != nil:
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			c.errorf(c.at(field), "%s relation %s: %s", field, name, pgErr.Message)
			return nil, nil
		}
		return nil, err
	case rel.Kind != "r" && rel.Kind != "p":
		c.errorf(c.at(field), "%s relation %s is not a table (relkind %q): views are not looked through", field, name, rel.Kind)
		return nil, nil
	}
	return rel, nil
}

// checkColumns checks keys, maps and unique indexes against the catalog.
func (c *checker) checkColumns(mc *MigrationCatalog) {
	m := c.m
	keysExist := true
	for k, col := range m.Key {
		name := unquote(col)
		if _, ok := mc.Old.Column(name); !ok {
			keysExist = false
			c.errorf(c.at("key", k), "key column %s does not exist in old relation %s", col, mc.Old.Qualified())
		}
		if _, ok := mc.New.Column(name); !ok && !m.SameTable() {
			keysExist = false
			c.errorf(c.at("key", k), "key column %s does not exist in new relation %s", col, mc.New.Qualified())
		}
	}
	keys := unquoteAll(m.Key)
	if keysExist && !mc.New.HasUniqueKey(keys) {
		c.errorf(c.at("key"), "key (%s) has no unique index on new relation %s: mirrored upserts need one", strings.Join(m.Key, ", "), mc.New.Qualified())
	}
	if keysExist && !m.SameTable() && !mc.Old.HasUniqueKey(keys) {
		c.errorf(c.at("key"), "key (%s) has no unique index on old relation %s: a key must name one row", strings.Join(m.Key, ", "), mc.Old.Qualified())
	}
	c.checkNullableKey(mc)
	for _, col := range sortedKeys(m.Write) {
		nc, ok := mc.New.Column(unquote(col))
		switch {
		case !ok:
			c.errorf(c.at("write", col), "write: column %s does not exist in new relation %s", col, mc.New.Qualified())
		case nc.Generated:
			c.errorf(c.at("write", col), "write: column %s of %s is generated and cannot be written", col, mc.New.Qualified())
		case nc.Identity == "a":
			c.warnf(c.at("write", col), "write: column %s of %s is GENERATED ALWAYS AS IDENTITY: mirrored writes must override it", col, mc.New.Qualified())
		}
	}
	for _, col := range sortedKeys(m.Read) {
		if _, ok := mc.Old.Column(unquote(col)); !ok {
			c.errorf(c.at("read", col), "read: column %s does not exist in old relation %s", col, mc.Old.Qualified())
		}
	}
	for k, col := range m.Compare.IgnoreColumns {
		if _, ok := mc.Old.Column(unquote(col)); !ok {
			c.errorf(c.at("compare", "ignore_columns", k), "compare.ignore_columns: column %s does not exist in old relation %s", col, mc.Old.Qualified())
		}
	}
	if m.SameTable() {
		return
	}
	write, read := unquotedMap(m.Write), unquotedMap(m.Read)
	for _, nc := range mc.New.Columns {
		if _, mapped := write[nc.Name]; mapped || nc.Generated {
			continue
		}
		if _, same := mc.Old.Column(nc.Name); same {
			continue
		}
		if nc.NotNull && nc.Default == "" && nc.Identity == "" {
			c.errorf(c.at("write"), "new column %s of %s is NOT NULL without a default, and the write map leaves it unfilled (no write entry, no old column of that name)", nc.Name, mc.New.Qualified())
		}
	}
	for _, oc := range mc.Old.Columns {
		if _, mapped := read[oc.Name]; mapped {
			continue
		}
		if _, same := mc.New.Column(oc.Name); !same {
			c.errorf(c.at("read"), "old column %s of %s is not mapped: no read entry and no new column of that name, so reads served by the new shape could not produce it", oc.Name, mc.Old.Qualified())
		}
	}
}

// checkNullableKey warns about each key column that may hold NULL (attnotnull false) in the old
// or the new relation. A primary key is never nullable, but a unique index on nullable columns
// passes the unique-key check, and it lets any number of rows have a NULL in the key: such a row
// is named by no key, so a mirrored write cannot find its counterpart by key, backfill cannot
// copy it (an upsert on a NULL key never conflicts) and verify cannot match it with a row of the
// other shape.
//
// A warning, not an error: the column being nullable does not mean any row has a NULL there
// (often none does, and the application never writes one), and an error would make serve,
// backfill and verify refuse a migration that works. The rows that do have one are not lost
// silently either: backfill and verify count them, and verify fails while any exist.
func (c *checker) checkNullableKey(mc *MigrationCatalog) {
	rels := []*Relation{mc.Old}
	sides := []string{"old"}
	if !c.m.SameTable() {
		rels, sides = append(rels, mc.New), append(sides, "new")
	}
	for k, col := range c.m.Key {
		for i, rel := range rels {
			rc, ok := rel.Column(unquote(col))
			if !ok || rc.NotNull {
				continue // a missing column is reported by checkColumns
			}
			c.warnf(c.at("key", k), "key column %s is nullable in %s relation %s: rows with a NULL in the key cannot be mirrored by key, backfilled or verified (backfill skips and counts them; verify counts them and fails); make it NOT NULL if no row needs a NULL there",
				col, sides[i], rel.Qualified())
		}
	}
}

// mapEntry is one column of a write or read map, explicit or implied by a same-named column.
type mapEntry struct {
	side     string // "write" or "read"
	column   string // target column (new for write, old for read)
	expr     string
	explicit bool
}

// entries lists the expressions the migration relies on: every explicit entry and every implied
// same-named copy.
func (c *checker) entries(mc *MigrationCatalog) []mapEntry {
	m := c.m
	var out []mapEntry
	for _, col := range sortedKeys(m.Write) {
		if _, ok := mc.New.Column(unquote(col)); ok {
			out = append(out, mapEntry{"write", unquote(col), m.Write[col], true})
		}
	}
	for _, col := range sortedKeys(m.Read) {
		if _, ok := mc.Old.Column(unquote(col)); ok {
			out = append(out, mapEntry{"read", unquote(col), m.Read[col], true})
		}
	}
	if m.SameTable() {
		return out
	}
	write, read := unquotedMap(m.Write), unquotedMap(m.Read)
	for _, nc := range mc.New.Columns {
		if _, ok := write[nc.Name]; !ok && !nc.Generated {
			if _, same := mc.Old.Column(nc.Name); same {
				out = append(out, mapEntry{"write", nc.Name, pgx.Identifier{nc.Name}.Sanitize(), false})
			}
		}
	}
	for _, oc := range mc.Old.Columns {
		if _, ok := read[oc.Name]; !ok {
			if _, same := mc.New.Column(oc.Name); same {
				out = append(out, mapEntry{"read", oc.Name, pgx.Identifier{oc.Name}.Sanitize(), false})
			}
		}
	}
	return out
}

// checkExpressions proves every map entry parses, type-checks against its source relation, and is
// assignable to its target column. Each runs as EXPLAIN of an INSERT into a temporary copy of the
// target (no privilege on the target needed, nothing executed), inside a transaction that is
// rolled back. The extended protocol refuses a second statement smuggled into an expression.
func (c *checker) checkExpressions(ctx context.Context, mc *MigrationCatalog) error {
	tx, err := c.conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("check %s: begin: %w", c.m.Name, err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // rolled back on purpose: the check leaves nothing behind
	for _, t := range []struct{ name, like string }{{"pgcanary_check_new", mc.New.QuotedName()}, {"pgcanary_check_old", mc.Old.QuotedName()}} {
		if _, err := tx.Exec(ctx, "create temp table "+t.name+" (like "+t.like+") on commit drop", pgx.QueryExecModeExec); err != nil {
			return fmt.Errorf("check %s: create temporary copy of %s: %w", c.m.Name, t.like, err)
		}
	}
	for _, e := range c.entries(mc) {
		target, source, targetRel := "pgcanary_check_new", mc.Old, mc.New
		if e.side == "read" {
			target, source, targetRel = "pgcanary_check_old", mc.New, mc.Old
		}
		col := pgx.Identifier{e.column}.Sanitize()
		sql := fmt.Sprintf("explain insert into pg_temp.%s (%s) select (%s) from %s", target, col, e.expr, source.QuotedName())
		if err := c.trySavepoint(ctx, tx, sql); err != nil {
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				return fmt.Errorf("check %s: %w", c.m.Name, err)
			}
			c.expressionFinding(e, pgErr, targetRel, source.Qualified())
			continue
		}
		if e.side == "write" && e.explicit && c.m.SameTable() {
			if err := c.checkVolatileDependencies(ctx, tx, e, mc.Old); err != nil {
				return err
			}
		}
	}
	return nil
}

// trySavepoint runs sql so that its failure does not abort the enclosing transaction.
func (c *checker) trySavepoint(ctx context.Context, tx pgx.Tx, sql string) error {
	if _, err := tx.Exec(ctx, "savepoint pgcanary_check", pgx.QueryExecModeExec); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, sql, pgx.QueryExecModeExec); err != nil {
		if _, rbErr := tx.Exec(ctx, "rollback to savepoint pgcanary_check", pgx.QueryExecModeExec); rbErr != nil {
			return rbErr
		}
		return err
	}
	_, err := tx.Exec(ctx, "release savepoint pgcanary_check", pgx.QueryExecModeExec)
	return err
}

func (c *checker) expressionFinding(e mapEntry, pgErr *pgconn.PgError, target *Relation, source string) {
	path := c.at(e.side, e.column)
	if !e.explicit {
		path = c.at(e.side)
	}
	what := fmt.Sprintf("%s.%s", e.side, e.column)
	if !e.explicit {
		what = fmt.Sprintf("%s (implied, same-named column %s)", e.side, e.column)
	}
	tc, _ := target.Column(e.column)
	switch {
	case pgErr.Code == "42601": // syntax_error
		c.errorf(path, "%s: expression does not parse: %s", what, pgErr.Message)
	case pgErr.Code == "42804" && tc != nil: // datatype_mismatch: no assignment cast
		c.errorf(path, "%s: expression type is not assignable to column %s %s of %s: %s", what, e.column, tc.TypeName, target.Qualified(), pgErr.Message)
	default:
		c.errorf(path, "%s: expression does not type-check against %s: %s (SQLSTATE %s)", what, source, pgErr.Message, pgErr.Code)
	}
}

// volatileDefault names functions whose value differs per call: a write map that reads a column
// filled by one cannot see the value in an augmented INSERT that leaves the column out.
var volatileDefault = []string{"nextval(", "random(", "gen_random_uuid(", "uuid_generate_", "clock_timestamp(", "timeofday("}

// checkVolatileDependencies warns when a same-table write expression reads a column whose
// default is volatile (serial, identity, random, ...). Column dependencies come from a temporary
// view's pg_depend entries, so the server resolves them, not a parser of ours.
func (c *checker) checkVolatileDependencies(ctx context.Context, tx pgx.Tx, e mapEntry, rel *Relation) error {
	view := fmt.Sprintf("create temp view pgcanary_check_deps as select (%s) as v from %s", e.expr, rel.QuotedName())
	if err := c.trySavepoint(ctx, tx, view); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return nil // the expression check reported it
		}
		return fmt.Errorf("check %s: %w", c.m.Name, err)
	}
	rows, err := tx.Query(ctx, `
		select distinct a.attname,
		       exists (select 1 from pg_depend pd join pg_proc p on p.oid = pd.refobjid
		               join pg_attrdef ad on ad.oid = pd.objid
		               where pd.classid = 'pg_attrdef'::regclass and pd.refclassid = 'pg_proc'::regclass
		                 and ad.adrelid = a.attrelid and ad.adnum = a.attnum and p.provolatile = 'v')
		from pg_depend d
		join pg_rewrite r on r.oid = d.objid and d.classid = 'pg_rewrite'::regclass
		join pg_attribute a on a.attrelid = d.refobjid and a.attnum = d.refobjsubid
		where r.ev_class = 'pg_temp.pgcanary_check_deps'::regclass and d.refobjid = $1 and d.refobjsubid > 0
		order by 1`, rel.OID)
	if err != nil {
		return fmt.Errorf("check %s: read dependencies: %w", c.m.Name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var userVolatile bool
		if err := rows.Scan(&name, &userVolatile); err != nil {
			return fmt.Errorf("check %s: read dependencies: %w", c.m.Name, err)
		}
		col, _ := rel.Column(name)
		volatile := userVolatile || col.Identity != ""
		for _, fn := range volatileDefault {
			volatile = volatile || strings.Contains(col.Default, fn)
		}
		if volatile {
			c.warnf(c.at("write", e.column), "write.%s reads column %s, whose default is volatile (%s): an INSERT that leaves %s out cannot be mirrored exactly and passes through unmirrored", e.column, name, defaultText(col), name)
		}
	}
	if err := rows.Err(); err != nil {
		return err
	}
	rows.Close()
	_, err = tx.Exec(ctx, "drop view pgcanary_check_deps", pgx.QueryExecModeExec)
	return err
}

func defaultText(c *Column) string {
	if c.Identity != "" {
		return "identity"
	}
	return c.Default
}

// checkPrivileges warns about roles whose writes (or reads) of the old relation would fail once
// mirrored to (or routed to) the new shape.
func (c *checker) checkPrivileges(ctx context.Context, mc *MigrationCatalog) error {
	if c.m.SameTable() {
		return c.checkColumnPrivileges(ctx, mc)
	}
	rows, err := c.conn.Query(ctx, `
		select r.rolname, p.priv
		from pg_roles r cross join unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p(priv)
		where not r.rolsuper and r.rolname !~ '^pg_'
		  and has_table_privilege(r.oid, $1::oid, p.priv) and not has_table_privilege(r.oid, $2::oid, p.priv)
		order by 1, 2`, mc.Old.OID, mc.New.OID)
	if err != nil {
		return fmt.Errorf("check %s: privileges: %w", c.m.Name, err)
	}
	missing, err := collectPrivileges(rows)
	if err != nil {
		return fmt.Errorf("check %s: privileges: %w", c.m.Name, err)
	}
	for _, role := range sortedKeys(missing) {
		privs := missing[role]
		effect := "its mirrored writes would fail"
		if slices.Equal(privs, []string{"SELECT"}) {
			effect = "its reads served by the new shape would fail (and fall back)"
		}
		c.warnf(c.at("new"), "role %s has %s on %s but not on %s: %s", role, strings.Join(privs, ", "), mc.Old.Qualified(), mc.New.Qualified(), effect)
	}
	return nil
}

// checkColumnPrivileges covers the same-table case, where only column grants can differ.
func (c *checker) checkColumnPrivileges(ctx context.Context, mc *MigrationCatalog) error {
	cols := make([]string, 0, len(c.m.Write))
	for col := range unquotedMap(c.m.Write) {
		cols = append(cols, col)
	}
	if len(cols) == 0 {
		return nil
	}
	rows, err := c.conn.Query(ctx, `
		select r.rolname, p.priv || ' (' || col || ')'
		from pg_roles r cross join unnest(array['INSERT', 'UPDATE']) p(priv) cross join unnest($2::text[]) col
		where not r.rolsuper and r.rolname !~ '^pg_'
		  and has_any_column_privilege(r.oid, $1::oid, p.priv) and not has_column_privilege(r.oid, $1::oid, col, p.priv)
		order by 1, 2`, mc.Old.OID, cols)
	if err != nil {
		return fmt.Errorf("check %s: column privileges: %w", c.m.Name, err)
	}
	missing, err := collectPrivileges(rows)
	if err != nil {
		return fmt.Errorf("check %s: column privileges: %w", c.m.Name, err)
	}
	for _, role := range sortedKeys(missing) {
		c.warnf(c.at("write"), "role %s may write %s but lacks %s: its mirrored writes would fail", role, mc.Old.Qualified(), strings.Join(missing[role], ", "))
	}
	return nil
}

func collectPrivileges(rows pgx.Rows) (map[string][]string, error) {
	out := map[string][]string{}
	for rows.Next() {
		var role, priv string
		if err := rows.Scan(&role, &priv); err != nil {
			return nil, err
		}
		out[role] = append(out[role], priv)
	}
	return out, rows.Err()
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// unquote turns an identifier as written in the config into the catalog's name.
func unquote(ident string) string { return UnquoteIdent(ident) }

// UnquoteIdent turns an SQL identifier as written (Users, "Users") into the catalog's spelling
// (users, Users): quoted keeps its case, unquoted folds to lower case.
func UnquoteIdent(ident string) string {
	if strings.HasPrefix(ident, `"`) && strings.HasSuffix(ident, `"`) && len(ident) >= 2 {
		return strings.ReplaceAll(ident[1:len(ident)-1], `""`, `"`)
	}
	return strings.ToLower(ident)
}

func unquoteAll(idents []string) []string {
	out := make([]string, len(idents))
	for i, s := range idents {
		out[i] = unquote(s)
	}
	return out
}

func unquotedMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[unquote(k)] = v
	}
	return out
}

// UnquoteAllIdents applies UnquoteIdent to each identifier.
func UnquoteAllIdents(idents []string) []string { return unquoteAll(idents) }
