package proxy

import (
	"strconv"
	"strings"
	"unicode/utf8"
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
// (a deparse of its statement, wrapped), so the position follows the token it names: the n-th
// occurrence of that token in the sent text becomes the n-th in the client's. When the client's
// text has no such occurrence (the token is the proxy's own, a column of the new shape), the
// field is dropped: no caret is better than one under the wrong word.
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
	want := sent[target].norm
	nth := 0
	for _, t := range sent[:target] {
		if t.norm == want {
			nth++
		}
	}
	for _, t := range sqlTokens(r.client) {
		if t.norm != want {
			continue
		}
		if nth == 0 {
			return t.start + 1, true
		}
		nth--
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

// sqlToken is one lexical token: where it starts (in characters, as Postgres counts positions),
// how many characters it spans, and the form two tokens are compared in (unquoted names folded to
// lower case, as Postgres folds them).
type sqlToken struct {
	start, runes int
	norm         string
}

// sqlTokens splits SQL into tokens, skipping spaces and comments. It knows just enough of the
// lexer to keep string literals, quoted names and dollar quotes whole; an unterminated one runs
// to the end of the text.
func sqlTokens(sql string) []sqlToken {
	var toks []sqlToken
	chars := 0 // characters before i
	for i := 0; i < len(sql); {
		c := sql[i]
		start := i
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			i++
		case c == '-' && strings.HasPrefix(sql[i:], "--"):
			if j := strings.IndexByte(sql[i:], '\n'); j >= 0 {
				i += j + 1
			} else {
				i = len(sql)
			}
		case c == '/' && strings.HasPrefix(sql[i:], "/*"):
			i = skipBlockComment(sql, i)
		case c == '\'':
			i = skipQuoted(sql, i, '\'', false)
		case (c == 'e' || c == 'E') && i+1 < len(sql) && sql[i+1] == '\'':
			i = skipQuoted(sql, i+1, '\'', true)
		case c == '"':
			i = skipQuoted(sql, i, '"', false)
		case c == '$' && i+1 < len(sql) && isDigit(sql[i+1]):
			i++
			for i < len(sql) && isDigit(sql[i]) {
				i++
			}
		case c == '$':
			i = skipDollarQuoted(sql, i)
		case isIdentStart(c):
			for i < len(sql) && isIdentPart(sql[i]) {
				i++
			}
		case isDigit(c) || (c == '.' && i+1 < len(sql) && isDigit(sql[i+1])):
			for i < len(sql) && (isIdentPart(sql[i]) || sql[i] == '.') {
				i++
			}
		case strings.IndexByte(opChars, c) >= 0:
			for i < len(sql) && strings.IndexByte(opChars, sql[i]) >= 0 &&
				!strings.HasPrefix(sql[i:], "--") && !strings.HasPrefix(sql[i:], "/*") {
				i++
			}
		default:
			_, size := utf8.DecodeRuneInString(sql[i:])
			i += size
		}
		n := utf8.RuneCountInString(sql[start:i])
		if c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\f' &&
			!strings.HasPrefix(sql[start:], "--") && !strings.HasPrefix(sql[start:], "/*") {
			text := sql[start:i]
			if isIdentStart(c) && !(i > start+1 && (c == 'e' || c == 'E') && sql[start+1] == '\'') {
				text = strings.ToLower(text)
			}
			toks = append(toks, sqlToken{start: chars, runes: n, norm: text})
		}
		chars += n
	}
	return toks
}

const opChars = "+-*/<>=~!@#%^&|`?"

func isDigit(c byte) bool      { return c >= '0' && c <= '9' }
func isIdentStart(c byte) bool { return c == '_' || c >= 0x80 || (c|0x20 >= 'a' && c|0x20 <= 'z') }
func isIdentPart(c byte) bool  { return isIdentStart(c) || isDigit(c) || c == '$' }

// skipQuoted returns the index after a quoted token opened at i; a doubled quote stays inside,
// and with backslashes (E'...') so does an escaped one.
func skipQuoted(sql string, i int, q byte, backslashes bool) int {
	for i++; i < len(sql); i++ {
		switch {
		case backslashes && sql[i] == '\\':
			i++
		case sql[i] == q:
			if i+1 < len(sql) && sql[i+1] == q {
				i++
				continue
			}
			return i + 1
		}
	}
	return len(sql)
}

func skipBlockComment(sql string, i int) int {
	depth := 0
	for i < len(sql) {
		switch {
		case strings.HasPrefix(sql[i:], "/*"):
			depth++
			i += 2
		case strings.HasPrefix(sql[i:], "*/"):
			depth--
			i += 2
			if depth == 0 {
				return i
			}
		default:
			i++
		}
	}
	return len(sql)
}

// skipDollarQuoted returns the index after $tag$...$tag$ opened at i, or after a lone '$'.
func skipDollarQuoted(sql string, i int) int {
	j := i + 1
	for j < len(sql) && isIdentPart(sql[j]) && sql[j] != '$' {
		j++
	}
	if j >= len(sql) || sql[j] != '$' {
		return i + 1
	}
	tag := sql[i : j+1]
	if k := strings.Index(sql[j+1:], tag); k >= 0 {
		return j + 1 + k + len(tag)
	}
	return len(sql)
}
