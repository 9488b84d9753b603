package config

import (
	"fmt"
	"regexp"
	"strings"
)

// Migration describes one schema migration: an old relation, its new shape, and how a row of one
// becomes a row of the other. Every feature (mirrored writes, routed reads, comparisons, backfill,
// verify) is derived from it.
type Migration struct {
	Name     string   `yaml:"name"`     // [a-z0-9-], unique
	Database string   `yaml:"database"` // the database both relations live in
	Old      string   `yaml:"old"`      // [schema.]relation the application uses today
	New      string   `yaml:"new"`      // its new shape; equal to Old for new columns of the same table
	Key      []string `yaml:"key"`      // columns identifying a row in both shapes
	// Write maps a new column to an SQL expression over the OLD row. An unlisted new column takes
	// the old column of the same name.
	Write map[string]string `yaml:"write"`
	// Read maps an old column to an SQL expression over the NEW row. An unlisted old column reads
	// the new column of the same name.
	Read   map[string]string `yaml:"read"`
	Mirror *bool             `yaml:"mirror"` // mirror writes into the new shape; default true
	// OnMirrorError: "fail" (default) fails the statement when its mirrored form fails, so both
	// shapes change or neither; "passthrough" runs the original alone and counts it unmirrored.
	OnMirrorError    string  `yaml:"on_mirror_error"`
	ReadPercentFlag  string  `yaml:"read_percent_flag"`  // default <name>.read-percent
	CompareRatioFlag string  `yaml:"compare_ratio_flag"` // default <name>.compare-ratio
	Compare          Compare `yaml:"compare"`
	// AutoRollback: a failing canary verdict engages the kill switch (reads back to the old
	// shape) on its own; default true.
	AutoRollback *bool `yaml:"auto_rollback"`
}

// RollsBackAutomatically reports whether a failing verdict engages the kill switch.
func (m *Migration) RollsBackAutomatically() bool { return m.AutoRollback == nil || *m.AutoRollback }

// Compare configures shadow comparisons of reads.
type Compare struct {
	Ratio          *float64 `yaml:"ratio"`           // share of reads compared when the flag is unset; default 0.1
	IgnoreColumns  []string `yaml:"ignore_columns"`  // old columns left out of comparisons
	FloatTolerance float64  `yaml:"float_tolerance"` // absolute tolerance for float columns
	MaxRows        int      `yaml:"max_rows"`        // comparisons of larger results are skipped; default 10000
	LogValues      bool     `yaml:"log_values"`      // keep differing values in mismatch records (else hashed)
}

// SameTable reports whether the new shape is new columns of the old relation.
func (m *Migration) SameTable() bool { return normalizeRel(m.Old) == normalizeRel(m.New) }

// Mirrors reports whether writes are mirrored.
func (m *Migration) Mirrors() bool { return m.Mirror == nil || *m.Mirror }

func (c *Config) applyDefaults() {
	for i := range c.Migrations {
		m := &c.Migrations[i]
		if m.ReadPercentFlag == "" {
			m.ReadPercentFlag = m.Name + ".read-percent"
		}
		if m.CompareRatioFlag == "" {
			m.CompareRatioFlag = m.Name + ".compare-ratio"
		}
		if m.OnMirrorError == "" {
			m.OnMirrorError = "fail"
		}
		if m.Compare.Ratio == nil {
			r := 0.1
			m.Compare.Ratio = &r
		}
		if m.Compare.MaxRows == 0 {
			m.Compare.MaxRows = 10000
		}
	}
}

var (
	migrationName = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)
	// identifier accepts a plain SQL identifier or a double-quoted one.
	identifier = regexp.MustCompile(`^([A-Za-z_][A-Za-z0-9_$]*|"([^"]|"")+")$`)
)

// lintMigrations checks each migration's shape without a database.
func (c *Config) lintMigrations() Report {
	var r Report
	names := map[string]int{}
	relations := map[string]string{} // normalized relation → migration using it
	for i := range c.Migrations {
		m := &c.Migrations[i]
		at := func(path ...any) []any { return append([]any{"migrations", i}, path...) }
		bad := func(path []any, format string, args ...any) {
			r = append(r, c.finding(Error, m.Name, path, format, args...))
		}
		switch {
		case m.Name == "":
			bad(at(), "name is required")
		case !migrationName.MatchString(m.Name):
			bad(at("name"), "name %q: use lower-case letters, digits and single dashes", m.Name)
		default:
			if first, dup := names[m.Name]; dup {
				bad(at("name"), "name %q is already used by migration #%d", m.Name, first+1)
			}
			names[m.Name] = i
		}
		if m.Database == "" {
			bad(at(), "database is required")
		}
		for _, field := range []struct{ key, val string }{{"old", m.Old}, {"new", m.New}} {
			if field.val == "" {
				bad(at(), "%s is required", field.key)
			} else if err := validRelation(field.val); err != nil {
				bad(at(field.key), "%s: %v", field.key, err)
			}
		}
		if len(m.Key) == 0 {
			bad(at(), "key is required: the columns that identify a row in both shapes")
		}
		for k, col := range m.Key {
			if !identifier.MatchString(col) {
				bad(at("key", k), "key column %q is not an identifier", col)
			}
		}
		for _, mp := range []struct {
			key  string
			cols map[string]string
		}{{"write", m.Write}, {"read", m.Read}} {
			for col, expr := range mp.cols {
				if !identifier.MatchString(col) {
					bad(at(mp.key, col), "%s: %q is not a column name", mp.key, col)
				}
				if strings.TrimSpace(expr) == "" {
					bad(at(mp.key, col), "%s.%s: the expression is empty", mp.key, col)
				}
			}
		}
		if m.SameTable() {
			for col := range m.Read {
				if _, alsoWritten := m.Write[col]; alsoWritten {
					bad(at("read", col), "column %s is both written (write map) and read (read map) in the same table", col)
				}
			}
		}
		switch m.OnMirrorError {
		case "fail", "passthrough":
		default:
			bad(at("on_mirror_error"), "on_mirror_error %q: want fail or passthrough", m.OnMirrorError)
		}
		if ratio := *m.Compare.Ratio; ratio < 0 || ratio > 1 {
			bad(at("compare", "ratio"), "compare.ratio %v: want a share between 0 and 1", ratio)
		}
		if m.Compare.FloatTolerance < 0 {
			bad(at("compare", "float_tolerance"), "compare.float_tolerance %v is negative", m.Compare.FloatTolerance)
		}
		if m.Compare.MaxRows < 0 {
			bad(at("compare", "max_rows"), "compare.max_rows %d is negative", m.Compare.MaxRows)
		}
		seen := map[string]bool{}
		for _, rel := range []string{m.Old, m.New} {
			key := m.Database + "/" + normalizeRel(rel)
			if rel == "" || seen[key] {
				continue
			}
			seen[key] = true
			if other, taken := relations[key]; taken {
				bad(at(), "relation %s is already part of migration %s: one relation, one migration", normalizeRel(rel), other)
			}
			relations[key] = m.Name
		}
	}
	return r
}

// validRelation accepts relation or schema.relation, each part an identifier.
func validRelation(s string) error {
	parts := splitQualified(s)
	if len(parts) == 0 || len(parts) > 2 {
		return fmt.Errorf("%q: want relation or schema.relation", s)
	}
	for _, p := range parts {
		if !identifier.MatchString(p) {
			return fmt.Errorf("%q: %q is not an identifier", s, p)
		}
	}
	return nil
}

// splitQualified splits schema.relation at dots outside double quotes.
func splitQualified(s string) []string { return SplitOutsideQuotes(s, '.') }

// SplitOutsideQuotes splits s at sep wherever sep is not inside double quotes (SQL identifiers:
// schema.relation, or a search_path list).
func SplitOutsideQuotes(s string, sep rune) []string {
	var parts []string
	var cur strings.Builder
	quoted := false
	for _, r := range s {
		switch {
		case r == '"':
			quoted = !quoted
			cur.WriteRune(r)
		case r == sep && !quoted:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	return append(parts, cur.String())
}

// normalizeRel folds unquoted identifiers to lower case, as Postgres does, so that users and
// public.USERS compare equal for the static checks (the live checks compare resolved OIDs).
func normalizeRel(s string) string {
	parts := splitQualified(s)
	for i, p := range parts {
		if strings.HasPrefix(p, `"`) {
			parts[i] = strings.ReplaceAll(strings.Trim(p, `"`), `""`, `"`)
		} else {
			parts[i] = strings.ToLower(p)
		}
	}
	if len(parts) == 1 {
		parts = []string{"public", parts[0]} // statically, unqualified means the default schema
	}
	return strings.Join(parts, ".")
}
