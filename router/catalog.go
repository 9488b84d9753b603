package router

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"
	"google.golang.org/protobuf/proto"

	"github.com/pgcanary/pgcanary/config"
)

// Catalog is what the planner knows of one configuration generation: the migrated relations and,
// for each, the compatibility projection that serves the old shape from the new one.
type Catalog struct {
	Generation int64
	Database   string // "" for a catalog of every database's migrations (NewCatalog)
	byOld      map[relName]*Migration
	byNew      map[relName]*Migration // new relations of new-table migrations (reverse mirroring)
	// schemasOf lists, for each migrated relation name, the schemas holding a relation of that
	// name: enough to resolve an unqualified reference under any search_path.
	schemasOf map[string][]string
	// names are the migrated relations' names, lower-cased, for the planner's cheap prefilter.
	names []string
}

type relName struct{ schema, name string }

// Migration is one migration as the planner uses it.
type Migration struct {
	Name    string
	Config  *config.Migration
	Catalog *config.MigrationCatalog
	oldCols map[string]bool
	// projection is `SELECT (read expr)::old type AS old column, ... FROM new relation`, parsed
	// once; each use clones it. nil when it could not be built (projErr says why).
	projection *pg_query.Node
	projErr    error
	// flat holds the projection's expressions that a single-relation read can inline (flatten.go).
	flat *flatColumns
	// readMayFail: a projection expression may raise an error for some rows (mayfail.go).
	readMayFail bool
	// moves: the columns the projection copies unchanged from the new relation (origins.go).
	moves []ColumnMove
	// writeExprs and readExprs are the maps' expressions (implied same-named copies included),
	// parsed once: target column → expression node over the source row.
	writeExprs, readExprs map[string]*pg_query.Node
	exprErr               error
}

// SameTable reports whether the migration adds columns to its old relation.
func (m *Migration) SameTable() bool { return m.Catalog.Old.OID == m.Catalog.New.OID }

// NewCatalog builds the planner's catalog for a generation. A migration whose projection cannot be
// built is kept (its writes can still be recognised) and its reads are never rewritten.
func NewCatalog(gen *config.Generation) *Catalog { return newCatalog(gen, "", true) }

// NewCatalogFor builds the catalog of the migrations that live in database.
func NewCatalogFor(gen *config.Generation, database string) *Catalog {
	return newCatalog(gen, database, false)
}

func (c *Catalog) empty() bool { return len(c.byOld) == 0 }

func newCatalog(gen *config.Generation, database string, all bool) *Catalog {
	c := &Catalog{Generation: gen.Number, Database: database, byOld: map[relName]*Migration{}, byNew: map[relName]*Migration{}, schemasOf: map[string][]string{}}
	for i := range gen.Config.Migrations {
		m := &gen.Config.Migrations[i]
		mc, ok := gen.Catalog[m.Name]
		if !ok || !all && m.Database != database {
			continue
		}
		mig := &Migration{Name: m.Name, Config: m, Catalog: mc, oldCols: map[string]bool{}}
		for _, col := range mc.Old.Columns {
			mig.oldCols[col.Name] = true
		}
		mig.projection, mig.projErr = buildProjection(m, mc)
		if mc.Stale != "" {
			// The live columns are not those the projection lists: reading through it would
			// answer with the old column list. Reads keep the old shape.
			mig.projection, mig.projErr = nil, fmt.Errorf("the live schema changed (%s) and the configuration does not validate against it", mc.Stale)
		}
		if mig.projection != nil {
			mig.readMayFail = projectionMayFail(mig.projection)
			newCols := make([]string, 0, len(mc.New.Columns))
			for _, col := range mc.New.Columns {
				newCols = append(newCols, col.Name)
			}
			mig.flat = buildFlatColumns(mig.projection, newCols)
		}
		mig.writeExprs, mig.readExprs, mig.exprErr = parseMaps(m, mc)
		mig.moves = columnMoves(mig)
		c.byOld[relName{mc.Old.Schema, mc.Old.Name}] = mig
		c.schemasOf[mc.Old.Name] = mc.Old.NameSchemas
		if !mig.SameTable() {
			c.byNew[relName{mc.New.Schema, mc.New.Name}] = mig
			c.schemasOf[mc.New.Name] = mc.New.NameSchemas
		}
		c.names = append(c.names, strings.ToLower(mc.Old.Name), strings.ToLower(mc.New.Name))
	}
	return c
}

// mayReference reports whether sql could name a migrated relation: a reference spells the name
// (unquoted in any case, or quoted exactly), so text without any of the names needs no parse.
// Unicode-escaped identifiers (U&"...") are the exception and always get the full parse.
func (c *Catalog) mayReference(sql string) bool {
	if len(c.names) == 0 {
		return false
	}
	lower := strings.ToLower(sql)
	if strings.Contains(lower, `u&"`) {
		return true
	}
	for _, n := range c.names {
		if strings.Contains(lower, n) {
			return true
		}
	}
	return false
}

// buildProjection renders the old shape over the new relation: every old column in attribute
// order, computed by the read map (or the same-named new column), cast to the old type.
func buildProjection(m *config.Migration, mc *config.MigrationCatalog) (*pg_query.Node, error) {
	read := map[string]string{}
	for col, expr := range m.Read {
		read[config.UnquoteIdent(col)] = expr
	}
	items := make([]string, 0, len(mc.Old.Columns))
	for _, col := range mc.Old.Columns {
		expr, ok := read[col.Name]
		if !ok {
			if _, same := mc.New.Column(col.Name); !same {
				return nil, fmt.Errorf("old column %s has no read expression", col.Name)
			}
			expr = pgx.Identifier{col.Name}.Sanitize()
		}
		alias := pgx.Identifier{col.Name}.Sanitize()
		if nc := columnNamed(mc.New, expr); nc != nil && nc.TypeOID == col.TypeOID && nc.Typmod == col.Typmod {
			// A new column of exactly the old type needs no cast: Postgres drops such a no-op
			// cast at parse analysis, but only after looking the type name up at every parse of
			// an unnamed statement; the text is also easier to read.
			items = append(items, fmt.Sprintf("%s AS %s", expr, alias))
			continue
		}
		if castsTo(expr, col.TypeSQL) {
			items = append(items, fmt.Sprintf("(%s) AS %s", expr, alias)) // cast by the user already
			continue
		}
		items = append(items, fmt.Sprintf("(%s)::%s AS %s", expr, col.TypeSQL, alias))
	}
	sql := "SELECT " + strings.Join(items, ", ") + " FROM " + mc.New.QuotedName()
	tree, err := pg_query.Parse(sql)
	if err != nil {
		return nil, fmt.Errorf("parse projection: %w", err)
	}
	if len(tree.Stmts) != 1 || tree.Stmts[0].Stmt.GetSelectStmt() == nil {
		return nil, fmt.Errorf("projection of %s is not a single SELECT", m.Name)
	}
	return tree.Stmts[0].Stmt, nil
}

// plainIdent matches a read expression that is only a column name, bare or quoted.
var plainIdent = regexp.MustCompile(`^(?:[A-Za-z_][A-Za-z0-9_$]*|"(?:[^"]|"")+")$`)

// columnNamed returns the column of rel that expr names when expr is only a column name.
func columnNamed(rel *config.Relation, expr string) *config.Column {
	expr = strings.TrimSpace(expr)
	if !plainIdent.MatchString(expr) {
		return nil
	}
	c, _ := rel.Column(config.UnquoteIdent(expr))
	return c
}

// castsTo reports whether expr ends in a cast to exactly typ, as the parser spells both.
func castsTo(expr, typ string) bool {
	tree, err := pg_query.Parse(fmt.Sprintf("SELECT (%s), NULL::%s", expr, typ))
	if err != nil || len(tree.Stmts) != 1 {
		return false
	}
	targets := tree.Stmts[0].Stmt.GetSelectStmt().GetTargetList()
	if len(targets) != 2 {
		return false
	}
	a := targets[0].GetResTarget().GetVal().GetTypeCast()
	b := targets[1].GetResTarget().GetVal().GetTypeCast()
	if a == nil || b == nil {
		return false
	}
	ta, tb := proto.Clone(a.TypeName).(*pg_query.TypeName), proto.Clone(b.TypeName).(*pg_query.TypeName)
	ta.Location, tb.Location = 0, 0
	for _, m := range append(ta.Typmods, tb.Typmods...) {
		if c := m.GetAConst(); c != nil {
			c.Location = 0
		}
	}
	return proto.Equal(ta, tb)
}

// resolve finds the migration whose old relation a reference names, under searchPath.
func (c *Catalog) resolve(schema, name string, searchPath []string) *Migration {
	if rel, ok := c.lookup(schema, name, searchPath); ok {
		return c.byOld[rel]
	}
	return nil
}

// resolveNew finds the new-table migration whose new relation a write target names.
func (c *Catalog) resolveNew(schema, name string, searchPath []string) *Migration {
	if rel, ok := c.lookup(schema, name, searchPath); ok {
		return c.byNew[rel]
	}
	return nil
}

// lookup resolves a possibly unqualified relation name among the names the catalog knows.
func (c *Catalog) lookup(schema, name string, searchPath []string) (relName, bool) {
	if schema != "" {
		return relName{schema, name}, true
	}
	schemas, known := c.schemasOf[name]
	if !known {
		return relName{}, false
	}
	for _, s := range searchPath {
		for _, have := range schemas {
			if have == s {
				return relName{s, name}, true // the first schema with the name wins, migrated or not
			}
		}
	}
	return relName{}, false
}

// parseMaps parses every write and read expression, implied same-named copies included.
func parseMaps(m *config.Migration, mc *config.MigrationCatalog) (write, read map[string]*pg_query.Node, err error) {
	write, read = map[string]*pg_query.Node{}, map[string]*pg_query.Node{}
	parse := func(expr string) (*pg_query.Node, error) {
		tree, err := pg_query.Parse("SELECT (" + expr + ")")
		if err != nil {
			return nil, err
		}
		sel := tree.Stmts[0].Stmt.GetSelectStmt()
		if len(tree.Stmts) != 1 || sel == nil || len(sel.TargetList) != 1 {
			return nil, fmt.Errorf("%q is not one expression", expr)
		}
		return sel.TargetList[0].GetResTarget().Val, nil
	}
	fill := func(dst map[string]*pg_query.Node, exprs map[string]string, target, source *config.Relation) error {
		given := map[string]string{}
		for col, e := range exprs {
			given[config.UnquoteIdent(col)] = e
		}
		for _, col := range target.Columns {
			if col.Generated {
				continue
			}
			expr, ok := given[col.Name]
			if !ok {
				if _, same := source.Column(col.Name); !same {
					continue // filled by its default
				}
				expr = pgx.Identifier{col.Name}.Sanitize()
			}
			n, err := parse(expr)
			if err != nil {
				return fmt.Errorf("%s: %w", col.Name, err)
			}
			dst[col.Name] = n
		}
		return nil
	}
	if mc.Old.OID == mc.New.OID {
		// Same table: only the listed expressions; every other column is itself.
		for col, e := range m.Write {
			n, err := parse(e)
			if err != nil {
				return nil, nil, err
			}
			write[config.UnquoteIdent(col)] = n
		}
		for col, e := range m.Read {
			n, err := parse(e)
			if err != nil {
				return nil, nil, err
			}
			read[config.UnquoteIdent(col)] = n
		}
		return write, read, nil
	}
	if err := fill(write, m.Write, mc.New, mc.Old); err != nil {
		return nil, nil, fmt.Errorf("write map: %w", err)
	}
	if err := fill(read, m.Read, mc.Old, mc.New); err != nil {
		return nil, nil, fmt.Errorf("read map: %w", err)
	}
	return write, read, nil
}

// ParseSearchPath turns a search_path setting ("$user", public) into schema names, with
// pg_catalog first unless the setting places it, as Postgres does. Temporary schemas are not
// known to the planner (see docs: a temp table shadowing a migrated one is not detected).
func ParseSearchPath(setting, user string) []string {
	var out []string
	hasCatalog := false
	for _, part := range config.SplitOutsideQuotes(setting, ',') {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		var s string
		switch {
		case part == `"$user"` || part == "$user":
			s = user
		default:
			s = config.UnquoteIdent(part)
		}
		if s == "pg_catalog" {
			hasCatalog = true
		}
		out = append(out, s)
	}
	if !hasCatalog {
		out = append([]string{"pg_catalog"}, out...)
	}
	return out
}
