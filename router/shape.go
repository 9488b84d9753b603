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
// normalized text is the original with each constant's span replaced by $N. Where each constant
// ends is read by plainConstantEnd for plain numbers and strings, the usual case, and otherwise by
// pg_query's scanner, which costs a call into C and a protobuf per text (about half of planning a
// short statement by its shape). Any disagreement returns !ok.
func liftedLiterals(orig, norm string) (map[int]string, bool) {
	if lits, ok := alignLiterals(orig, norm, func(i int) (int, bool) { return plainConstantEnd(orig, i) }); ok {
		return lits, true
	}
	return liftedLiteralsScanned(orig, norm)
}

// liftedLiteralsScanned is liftedLiterals with every constant's span from the scanner.
func liftedLiteralsScanned(orig, norm string) (map[int]string, bool) {
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
	return alignLiterals(orig, norm, func(i int) (int, bool) {
		end, ok := tokenEnd[i]
		if ok && orig[i] == '-' { // a negative number is one constant to the parser
			if n, found := next[i]; found {
				end = tokenEnd[n]
			}
		}
		return end, ok
	})
}

// alignLiterals walks the original and normalized texts together; at each $N of the normalized
// text that the original does not have itself, constantEnd(i) says where the constant that starts
// at orig[i] ends.
func alignLiterals(orig, norm string, constantEnd func(i int) (int, bool)) (map[int]string, bool) {
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
			if i >= len(orig) {
				return nil, false
			}
			end, ok := constantEnd(i)
			if !ok {
				return nil, false
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

// plainConstantEnd returns where the constant at orig[i] ends when it is a plain number
// (digits, a fraction, an exponent) or a plain string ('...' with ” for a quote), as Postgres's
// scanner would end it; !ok for any other form (negative, prefixed, dollar-quoted, continued on a
// later line, holding a backslash, followed by what could extend it), which the scanner then reads.
func plainConstantEnd(orig string, i int) (int, bool) {
	n := len(orig)
	switch c := orig[i]; {
	case isDigit(c):
		j := i
		for j < n && isDigit(orig[j]) {
			j++
		}
		if j < n && orig[j] == '.' {
			j++
			for j < n && isDigit(orig[j]) {
				j++
			}
		}
		if j+1 < n && (orig[j] == 'e' || orig[j] == 'E') {
			k := j + 1
			if orig[k] == '+' || orig[k] == '-' {
				k++
			}
			if k < n && isDigit(orig[k]) {
				for k < n && isDigit(orig[k]) {
					k++
				}
				j = k
			}
		}
		// A letter, digit, underscore, dollar or dot here would make it another token (0x1F,
		// 1_000, 1..2, trailing junk): leave those to the scanner.
		if j < n && (isIdentChar(orig[j]) || orig[j] == '.') {
			return 0, false
		}
		return j, true
	case c == '\'':
		j := i + 1
		for {
			if j >= n {
				return 0, false // unterminated: Postgres reports it
			}
			switch orig[j] {
			case '\\':
				return 0, false // an escape only where standard_conforming_strings is off
			case '\'':
				if j+1 < n && orig[j+1] == '\'' {
					j += 2
					continue
				}
				j++
				if continuedString(orig[j:]) {
					return 0, false
				}
				return j, true
			}
			j++
		}
	}
	return 0, false
}

// continuedString reports whether rest, what follows a string constant, continues it: Postgres
// joins 'a' and 'b' into one constant when only whitespace holding a line break separates them.
func continuedString(rest string) bool {
	newline := false
	for k := 0; k < len(rest); k++ {
		switch rest[k] {
		case '\n', '\r':
			newline = true
		case ' ', '\t', '\f', '\v':
		case '\'':
			return newline
		default:
			return false
		}
	}
	return false
}

func isIdentChar(c byte) bool {
	return c == '_' || c == '$' || isDigit(c) || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
