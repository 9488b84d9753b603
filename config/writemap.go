package config

import (
	"fmt"

	"github.com/jackc/pgx/v5"
)

// MappedColumn is one new-shape column as the write map derives it from an old row.
type MappedColumn struct {
	Name string // the new column
	// Expr is SQL over the old row's (unqualified) columns, cast to the new column's type: the
	// write map's expression, or the old column of the same name.
	Expr string
	Key  bool // one of the migration's key columns
}

// WriteMapColumns lists, in the new relation's attribute order, every new column the write map
// fills (its expressions, and same-named copies of old columns), skipping generated columns. In a
// same-table migration only the columns that differ from the old shape (the write map's targets)
// are listed, with the key. Backfill and verify build their SQL from it.
func (m *Migration) WriteMapColumns(mc *MigrationCatalog) ([]MappedColumn, error) {
	write := map[string]string{}
	for col, expr := range m.Write {
		write[UnquoteIdent(col)] = expr
	}
	isKey := map[string]bool{}
	for _, k := range m.Key {
		isKey[UnquoteIdent(k)] = true
	}
	var out []MappedColumn
	for _, col := range mc.New.Columns {
		if col.Generated {
			continue
		}
		expr, mapped := write[col.Name]
		if !mapped {
			if m.SameTable() && !isKey[col.Name] {
				continue // an old column of the same table: not part of the new shape's delta
			}
			if _, ok := mc.Old.Column(col.Name); !ok {
				continue // filled by its default (check warns when it must not be)
			}
			expr = pgx.Identifier{col.Name}.Sanitize()
		}
		out = append(out, MappedColumn{Name: col.Name, Expr: fmt.Sprintf("(%s)::%s", expr, col.TypeSQL), Key: isKey[col.Name]})
	}
	for k := range isKey {
		found := false
		for _, c := range out {
			found = found || c.Name == k
		}
		if !found {
			return nil, fmt.Errorf("migration %s: key column %s is not a column of both shapes", m.Name, k)
		}
	}
	return out, nil
}
