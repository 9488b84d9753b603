package verify

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// repair re-syncs the keys of diffs in one transaction and returns the number of rows it wrote.
// The old rows are locked first, so that a mirrored write running at the same time either
// happened before (and the copy sees it) or waits until the copy is committed (and then writes
// both shapes itself): the copy can neither be lost nor overwrite a newer row.
func (p *plan) repair(ctx context.Context, conn *pgx.Conn, diffs []KeyDiff) (int64, error) {
	keys := make([][]string, len(diffs))
	for i, d := range diffs {
		keys[i] = d.values
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("repair: begin: %w", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit this is a no-op; on error it undoes the repair
	var a params
	sql := fmt.Sprintf("select %s from %s where %s for update", p.keyText(""), p.rel(oldSide), p.keySetFilter(keys)(oldSide, &a))
	rows, err := tx.Query(ctx, sql, a.vals...)
	if err != nil {
		return 0, fmt.Errorf("repair: lock old rows: %w", err)
	}
	present, err := scanKeys(rows, len(p.keys))
	if err != nil {
		return 0, fmt.Errorf("repair: lock old rows: %w", err)
	}
	var written int64
	if p.same {
		if len(present) > 0 {
			sets := make([]string, len(p.valPos))
			for i, j := range p.valPos {
				sets[i] = qi(p.cols[j].Name) + " = " + p.cols[j].Expr
			}
			var a params
			sql := fmt.Sprintf("update %s set %s where %s", p.rel(oldSide), strings.Join(sets, ", "), p.keySetFilter(present)(oldSide, &a))
			tag, err := tx.Exec(ctx, sql, a.vals...)
			if err != nil {
				return 0, fmt.Errorf("repair: update %s: %w", p.mc.Old.Qualified(), err)
			}
			written += tag.RowsAffected()
		}
	} else {
		if len(present) > 0 {
			sql, args := p.upsertSQL(present)
			tag, err := tx.Exec(ctx, sql, args...)
			if err != nil {
				return 0, fmt.Errorf("repair: upsert into %s: %w", p.mc.New.Qualified(), err)
			}
			written += tag.RowsAffected()
		}
		if absent := minus(keys, present); len(absent) > 0 {
			var a params
			sql := fmt.Sprintf("delete from %s where %s", p.rel(newSide), p.keySetFilter(absent)(newSide, &a))
			tag, err := tx.Exec(ctx, sql, a.vals...)
			if err != nil {
				return 0, fmt.Errorf("repair: delete from %s: %w", p.mc.New.Qualified(), err)
			}
			written += tag.RowsAffected()
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("repair: commit: %w", err)
	}
	return written, nil
}

// upsertSQL copies write-map(old) of the given keys into new, replacing what new holds.
func (p *plan) upsertSQL(keys [][]string) (string, []any) {
	var a params
	where := p.keySetFilter(keys)(oldSide, &a)
	all := p.allPos()
	conflict := "do nothing"
	if len(p.valPos) > 0 {
		sets := make([]string, len(p.valPos))
		for i, j := range p.valPos {
			c := qi(p.cols[j].Name)
			sets[i] = c + " = excluded." + c
		}
		conflict = "do update set " + strings.Join(sets, ", ")
	}
	overriding := ""
	if p.identityAlways {
		overriding = " overriding system value" // the key is copied, never generated
	}
	return fmt.Sprintf("insert into %s (%s)%s select %s from %s where %s on conflict (%s) %s",
		p.rel(newSide), strings.Join(p.newCols(all), ", "), overriding, strings.Join(p.exprs(all), ", "),
		p.rel(oldSide), where, p.keyList(""), conflict), a.vals
}

func minus(all, some [][]string) [][]string {
	seen := make(map[string]bool, len(some))
	for _, k := range some {
		seen[strings.Join(k, "\x00")] = true
	}
	var out [][]string
	for _, k := range all {
		if !seen[strings.Join(k, "\x00")] {
			out = append(out, k)
		}
	}
	return out
}

func scanKeys(rows pgx.Rows, n int) ([][]string, error) {
	defer rows.Close()
	var out [][]string
	for rows.Next() {
		k := make([]string, n)
		dst := make([]any, n)
		for i := range k {
			dst[i] = &k[i]
		}
		if err := rows.Scan(dst...); err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, rows.Err()
}
