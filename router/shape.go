package router

import (
	"strconv"
	"strings"
	"unicode/utf8"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Plans by shape. A client that interpolates values into its SQL (simple protocol, no $n) sends a
// new text for every row it touches, and each would be parsed, rewritten and deparsed anew. Such a
// text is normalized instead (pg_query lifts its literals into parameters, in C, in a few µs): the
// plan of the normalized text is cached once per shape, its forms compiled into templates, and each
// execution puts its own literals back. The client's literal text goes back verbatim, so the form
// means exactly what a form built from the client's text would.

// shapePlan is the plan of a normalized statement with its forms as templates.
type shapePlan struct {
	plan        *Plan
	read, write template
}

// template is SQL text with holes for lifted literals.
type template struct {
	parts []string // text around the holes; len(parts) == len(holes)+1
	holes []int    // lifted parameter numbers
}

// planByShape plans a single-statement text with literals through the shape cache. It returns nil
// when the text has no literals, is not one statement, or cannot be aligned with its shape; the
// caller then plans the text itself.
func (p *Planner) planByShape(cat *Catalog, searchPath, user, sql string) *Plan {
	if !utf8.ValidString(sql) {
		return nil // Postgres rejects it; the exact path passes it through untouched
	}
	norm, err := pg_query.Normalize(sql)
	if err != nil || norm == sql {
		return nil
	}
	lits, ok := liftedLiterals(sql, norm)
	if !ok {
		return nil
	}
	key := cacheKey{generation: cat.Generation, database: cat.Database, searchPath: searchPath, user: user, sql: norm, lifted: len(lits)}
	sp, hit := p.shapes.Get(key)
	if !hit {
		plan := build(cat, ParseSearchPath(searchPath, user), norm)
		sp = compileShape(plan, lits)
		p.shapes.Add(key, sp)
		if sp != nil {
			p.countPlan(plan)
		}
	}
	if sp == nil {
		return nil
	}
	return sp.instantiate(sql, lits)
}

// compileShape turns a normalized plan into templates; nil when the shape cannot be used (several
// statements, or a form whose holes cannot be found).
func compileShape(plan *Plan, lits map[int]string) *shapePlan {
	if len(plan.Statements) != 1 || plan.Untouched || plan.unparsable {
		return nil
	}
	st := plan.Statements[0]
	if st.Compare != nil || st.Prepare != nil {
		return nil // comparison and PREPARE forms are not templated: plan such texts exactly
	}
	sp := &shapePlan{plan: plan}
	var ok bool
	if st.Read != nil {
		if sp.read, ok = compileTemplate(st.Read.SQL, lits); !ok {
			return nil
		}
	}
	if st.Write != nil {
		if sp.write, ok = compileTemplate(st.Write.SQL, lits); !ok {
			return nil
		}
	}
	return sp
}

// compileTemplate finds the lifted parameters in a form (by the scanner, so a "$1" inside a
// string is not one).
func compileTemplate(sql string, lits map[int]string) (template, bool) {
	res, err := pg_query.Scan(sql)
	if err != nil {
		return template{}, false
	}
	var t template
	last := 0
	for _, tok := range res.Tokens {
		if tok.Token != pg_query.Token_PARAM {
			continue
		}
		n, err := strconv.Atoi(sql[tok.Start+1 : tok.End])
		if err != nil {
			return template{}, false
		}
		if _, lifted := lits[n]; !lifted {
			continue // the client's own parameter
		}
		t.parts = append(t.parts, sql[last:tok.Start])
		t.holes = append(t.holes, n)
		last = int(tok.End)
	}
	t.parts = append(t.parts, sql[last:])
	return t, true
}

func (t template) fill(lits map[int]string) string {
	var b strings.Builder
	for i, part := range t.parts {
		b.WriteString(part)
		if i < len(t.holes) {
			b.WriteString(lits[t.holes[i]])
		}
	}
	return b.String()
}

// instantiate is the shape's plan for one text: the client's own SQL, forms with its literals.
func (sp *shapePlan) instantiate(sql string, lits map[int]string) *Plan {
	src := sp.plan.Statements[0]
	st := *src
	st.SQL = strings.TrimSpace(sql)
	if src.Read != nil {
		rf := *src.Read
		rf.SQL = sp.read.fill(lits)
		st.Read = &rf
	}
	if src.Write != nil {
		wf := *src.Write
		wf.SQL = sp.write.fill(lits)
		st.Write = &wf
	}
	return &Plan{Generation: sp.plan.Generation, Statements: []*StatementPlan{&st}}
}

// liftedLiterals recovers, by parameter number, the literal text that Normalize replaced: the
// normalized text is the original with each constant's span replaced by $N, and the scanner gives
// each constant's exact span. Any disagreement returns !ok.
func liftedLiterals(orig, norm string) (map[int]string, bool) {
	res, err := pg_query.Scan(orig)
	if err != nil {
		return nil, false
	}
	tokenEnd := make(map[int]int, len(res.Tokens))
	next := make(map[int]int, len(res.Tokens))
	for i, tok := range res.Tokens {
		tokenEnd[int(tok.Start)] = int(tok.End)
		if i+1 < len(res.Tokens) {
			next[int(tok.Start)] = int(res.Tokens[i+1].Start)
		}
	}
	lits := map[int]string{}
	i, j := 0, 0
	for j < len(norm) {
		if norm[j] == '$' && j+1 < len(norm) && isDigit(norm[j+1]) {
			k := j + 1
			for k < len(norm) && isDigit(norm[k]) {
				k++
			}
			param := norm[j:k]
			if strings.HasPrefix(orig[i:], param) && (i+len(param) == len(orig) || !isDigit(orig[i+len(param)])) {
				i, j = i+len(param), k // the client's own parameter
				continue
			}
			end, ok := tokenEnd[i]
			if !ok {
				return nil, false
			}
			if orig[i] == '-' { // a negative number is one constant to the parser
				if n, ok := next[i]; ok {
					end = tokenEnd[n]
				}
			}
			n, _ := strconv.Atoi(param[1:])
			lits[n] = orig[i:end]
			i, j = end, k
			continue
		}
		if i >= len(orig) || orig[i] != norm[j] {
			return nil, false
		}
		i++
		j++
	}
	return lits, i == len(orig) && len(lits) > 0
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
