package router

import (
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	pg_query "github.com/pganalyze/pg_query_go/v6"

	"github.com/pgcanary/pgcanary/config"
)

// Catalog is what the planner knows of one configuration generation: the migrated relations and,
// for each, the compatibility projection that serves the old shape from the new one.
type Catalog struct {
	Generation int64
	byOld      map[relName]*Migration
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
}

// NewCatalog builds the planner's catalog for a generation. A migration whose projection cannot be
// built is kept (its writes can still be recognised) and its reads are never rewritten.
func NewCatalog(gen *config.Generation) *Catalog {
	c := &Catalog{Generation: gen.Number, byOld: map[relName]*Migration{}, schemasOf: map[string][]string{}}
	for i := range gen.Config.Migrations {
		m := &gen.Config.Migrations[i]
		mc, ok := gen.Catalog[m.Name]
		if !ok {
			continue
		}
		mig := &Migration{Name: m.Name, Config: m, Catalog: mc, oldCols: map[string]bool{}}
		for _, col := range mc.Old.Columns {
			mig.oldCols[col.Name] = true
		}
		mig.projection, mig.projErr = buildProjection(m, mc)
		c.byOld[relName{mc.Old.Schema, mc.Old.Name}] = mig
		c.schemasOf[mc.Old.Name] = mc.Old.NameSchemas
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
		items = append(items, fmt.Sprintf("(%s)::%s AS %s", expr, col.TypeSQL, pgx.Identifier{col.Name}.Sanitize()))
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

// resolve finds the migration whose old relation a reference names, under searchPath.
func (c *Catalog) resolve(schema, name string, searchPath []string) *Migration {
	if schema != "" {
		return c.byOld[relName{schema, name}]
	}
	schemas, migrated := c.schemasOf[name]
	if !migrated {
		return nil
	}
	for _, s := range searchPath {
		for _, have := range schemas {
			if have == s {
				return c.byOld[relName{s, name}] // the first schema with the name wins, migrated or not
			}
		}
	}
	return nil
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
