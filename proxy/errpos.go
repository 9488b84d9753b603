package proxy

import (
	"strconv"
	"strings"
	"unicode/utf8"

	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// rewriteText is a statement text the proxy sent in place of the client's (a mirrored write, a
// routed read). An error Postgres reports at a position of the sent text must point into the
// client's text instead: psql and other tools draw their caret under the client's query.
type rewriteText struct {
	sent, client string
}

func newRewriteText(sent, client string) *rewriteText {
	if sent == client {
		return nil
	}
	return &rewriteText{sent: sent, client: client}
}

// mapErrorPosition returns body with its position field ('P', a 1-based character index into the
// query) moved into the client's text. The proxy's forms keep the client's tokens in their order
// (a deparse of its statement, wrapped), so the position follows the token it names: the client
// token the sent one is paired with when the two token lists are aligned (alignedToken). A token
// the client's text does not have may be a copy the proxy made: a mirrored write's augment
// computes the new columns from the client's values, and Postgres, checking a cast of a literal
// there first, reports the copy; a literal or parameter the client's text holds exactly once is
// that one. Otherwise (the token is the proxy's own, a column of the new shape) the field is
// dropped: no caret is better than one under the wrong word.
func (r *rewriteText) mapErrorPosition(body []byte) []byte {
	fields, ok := responseFields(body)
	if !ok {
		return body
	}
	at := -1
	for i, f := range fields {
		if f.code == 'P' {
			at = i
		}
	}
	if at < 0 {
		return body
	}
	pos, err := strconv.Atoi(string(fields[at].value))
	if err != nil {
		return body
	}
	if mapped, ok := r.mapPosition(pos); ok {
		fields[at].value = []byte(strconv.Itoa(mapped))
	} else {
		fields = append(fields[:at], fields[at+1:]...)
	}
	return encodeFields(fields, len(body))
}

// mapPosition maps a 1-based character position of the sent text into the client's text.
func (r *rewriteText) mapPosition(pos int) (int, bool) {
	sent := sqlTokens(r.sent)
	target := -1
	for i, t := range sent {
		if t.start <= pos-1 && pos-1 < t.start+t.runes {
			target = i
			break
		}
	}
	if target < 0 {
		return 0, false
	}
	client := sqlTokens(r.client)
	if j, ok := alignedToken(sent, client, target); ok {
		return client[j].start + 1, true
	}
	want := sent[target].norm
	only, count := 0, 0
	for _, t := range client {
		if t.norm == want {
			only = t.start + 1
			count++
		}
	}
	if sent[target].literal && count == 1 {
		return only, true
	}
	return 0, false
}

// maxAlignCells bounds the alignment's table (sent tokens times client tokens, 4 bytes each):
// beyond it, the n-th occurrence of the token stands in for the alignment.
const maxAlignCells = 1 << 20

// alignedToken returns the client token that sent token target is, when it is one of the
// client's. The proxy's forms keep the client's tokens in their order and insert their own
// (a projection subquery, a mirrored write's CTE) among them, so the longest common subsequence
// of the two token lists pairs each kept token with its original: unlike the n-th occurrence of
// the same word, it is not misled by a copy the form inserted before it (a projection listing
// created_at ahead of the client's created_at).
func alignedToken(sent, client []sqlToken, target int) (int, bool) {
	n, m := len(sent), len(client)
	if n*m > maxAlignCells {
		nth := 0
		for _, t := range sent[:target] {
			if t.norm == sent[target].norm {
				nth++
			}
		}
		for j, t := range client {
			if t.norm == sent[target].norm {
				if nth == 0 {
					return j, true
				}
				nth--
			}
		}
		return 0, false
	}
	// lcs[i*(m+1)+j] is the length of the longest common subsequence of sent[i:] and client[j:].
	lcs := make([]int32, (n+1)*(m+1))
	at := func(i, j int) int32 { return lcs[i*(m+1)+j] }
	for i := n - 1; i >= 0; i-- {
		for j := m - 1; j >= 0; j-- {
			switch {
			case sent[i].norm == client[j].norm:
				lcs[i*(m+1)+j] = at(i+1, j+1) + 1
			case at(i+1, j) >= at(i, j+1):
				lcs[i*(m+1)+j] = at(i+1, j)
			default:
				lcs[i*(m+1)+j] = at(i, j+1)
			}
		}
	}
	for i, j := 0, 0; i < n && j < m; {
		switch {
		case sent[i].norm == client[j].norm && at(i, j) == at(i+1, j+1)+1:
			if i == target {
				return j, true
			}
			i, j = i+1, j+1
		case at(i+1, j) >= at(i, j+1):
			if i == target {
				return 0, false // a token of the proxy's own, or a copy
			}
			i++
		default:
			j++
		}
	}
	return 0, false
}

type responseField struct {
	code  byte
	value []byte
}

// responseFields splits an ErrorResponse or NoticeResponse body into its fields.
func responseFields(body []byte) ([]responseField, bool) {
	var fields []responseField
	for len(body) > 0 && body[0] != 0 {
		val, rest, ok := cstring(body[1:])
		if !ok {
			return nil, false
		}
		fields = append(fields, responseField{code: body[0], value: val})
		body = rest
	}
	return fields, true
}

// encodeFields is the body of an ErrorResponse or NoticeResponse with these fields.
func encodeFields(fields []responseField, sizeHint int) []byte {
	out := make([]byte, 0, sizeHint)
	for _, f := range fields {
		out = append(out, f.code)
		out = append(out, f.value...)
		out = append(out, 0)
	}
	return append(out, 0)
}

// isLiteral says whether a scanner token is a constant or a parameter.
func isLiteral(t pg_query.Token) bool {
	switch t {
	case pg_query.Token_SCONST, pg_query.Token_USCONST, pg_query.Token_ICONST, pg_query.Token_FCONST,
		pg_query.Token_BCONST, pg_query.Token_XCONST, pg_query.Token_PARAM:
		return true
	}
	return false
}

// sqlToken is one lexical token: where it starts (in characters, as Postgres counts positions),
// how many characters it spans, and the form two tokens are compared in (names and keywords
// folded to lower case unless quoted, as Postgres folds them).
type sqlToken struct {
	start, runes int
	norm         string
	literal      bool // a constant or a parameter ($n)
}

// sqlTokens splits SQL into tokens with Postgres's own scanner, comments left out. It runs only
// for an error that carries a position, so the scanner's cost (a cgo call) does not matter.
func sqlTokens(sql string) []sqlToken {
	res, err := pg_query.Scan(sql)
	if err != nil {
		return nil
	}
	toks := make([]sqlToken, 0, len(res.Tokens))
	chars, at := 0, 0 // characters before byte offset at
	for _, t := range res.Tokens {
		if t.Token == pg_query.Token_SQL_COMMENT || t.Token == pg_query.Token_C_COMMENT {
			continue
		}
		start, end := int(t.Start), int(t.End)
		if start < at || end > len(sql) || start > end {
			return nil
		}
		chars += utf8.RuneCountInString(sql[at:start])
		text := sql[start:end]
		if t.Token == pg_query.Token_IDENT && !strings.HasPrefix(text, `"`) || t.KeywordKind != pg_query.KeywordKind_NO_KEYWORD {
			text = strings.ToLower(text)
		}
		n := utf8.RuneCountInString(text)
		toks = append(toks, sqlToken{start: chars, runes: n, norm: text, literal: isLiteral(t.Token)})
		chars, at = chars+n, end
	}
	return toks
}
