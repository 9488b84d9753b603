package proxy

import (
	"strings"
	"testing"
)

func TestSQLTokens(t *testing.T) {
	sql := "SELECT \"Full Name\", 'it''s', E'a\\'b', $1, $$x$$ -- c\n/* d /* e */ */ FROM Zoë_t WHERE a>=1.5e3"
	var got []string
	for _, tok := range sqlTokens(sql) {
		got = append(got, tok.norm)
	}
	want := []string{"select", `"Full Name"`, ",", "'it''s'", ",", `E'a\'b'`, ",", "$1", ",", "$$x$$", "from", "zoë_t", "where", "a", ">=", "1.5e3"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("tokens\n got %q\nwant %q", got, want)
	}
	// Starts count characters, as Postgres's positions do, not bytes.
	toks := sqlTokens("SELECT 'ë', x")
	if last := toks[len(toks)-1]; last.start != 12 {
		t.Fatalf("start of x: %d characters, want 12", last.start)
	}
}

func TestMapErrorPosition(t *testing.T) {
	r := newRewriteText(
		"WITH pgcanary_w AS (UPDATE users SET active = 'maybe' WHERE id = 1 RETURNING users.*) SELECT count(*) FROM pgcanary_w",
		"update users set active = 'maybe' where id = 1")
	sentPos := strings.Index(r.sent, "'maybe'") + 1
	if got, ok := r.mapPosition(sentPos); !ok || got != strings.Index(r.client, "'maybe'")+1 {
		t.Fatalf("position of 'maybe': %d %v", got, ok)
	}
	// Case folds as Postgres folds unquoted names; the second "id" maps to the second.
	r = newRewriteText("SELECT ID FROM t WHERE ID = 1", "select  id from t where id = 1")
	if got, ok := r.mapPosition(strings.LastIndex(r.sent, "ID") + 1); !ok || got != strings.LastIndex(r.client, "id")+1 {
		t.Fatalf("second id: %d %v", got, ok)
	}
	// A token of the proxy's own form: the field is dropped, the others kept in order.
	body := []byte("SERROR\x00C22P02\x00Mbad\x00P8\x00\x00")
	out := r.mapErrorPosition([]byte(strings.Replace(string(body), "P8", "P100", 1)))
	if string(out) != "SERROR\x00C22P02\x00Mbad\x00\x00" {
		t.Fatalf("unmapped position kept: %q", out)
	}
	out = r.mapErrorPosition(body) // position 8 is the first "ID"
	if string(out) != "SERROR\x00C22P02\x00Mbad\x00P9\x00\x00" {
		t.Fatalf("mapped body %q", out)
	}
	// A copy the augment made of a literal the client wrote once maps to it; a column of the
	// proxy's own still maps nowhere.
	r = newRewriteText(
		"UPDATE orders SET amount = 'x1', amount_cents = ('x1'::numeric(12, 2) * 100)::bigint WHERE id = 3",
		"UPDATE orders SET amount = 'x1' WHERE id = 3")
	if got, ok := r.mapPosition(strings.LastIndex(r.sent, "'x1'") + 1); !ok || got != strings.Index(r.client, "'x1'")+1 {
		t.Fatalf("copied literal: %d %v", got, ok)
	}
	if got, ok := r.mapPosition(strings.Index(r.sent, "amount_cents") + 1); ok {
		t.Fatalf("the proxy's own column mapped to %d", got)
	}
	r = newRewriteText("SELECT 'a', 'a' || x", "SELECT 'a', 'b'")
	if got, ok := r.mapPosition(strings.LastIndex(r.sent, "'a'") + 1); !ok || got != 8 {
		t.Fatalf("second copy of a literal the client wrote once: %d %v", got, ok)
	}
	// A projection that lists the column before the client's own use of it: the alignment of
	// the two token lists, not the n-th occurrence, finds the client's.
	r = newRewriteText(
		"SELECT amount FROM orders o, (SELECT id, concat_ws(' ', first_name, last_name) AS full_name, created_at FROM public.users_v2) u WHERE o.user_id = u.id AND created_at > now()",
		"select amount from orders o, users u where o.user_id = u.id and created_at > now()")
	if got, ok := r.mapPosition(strings.LastIndex(r.sent, "created_at") + 1); !ok || got != strings.Index(r.client, "created_at")+1 {
		t.Fatalf("created_at after a projection listing it: %d %v", got, ok)
	}
	if got, ok := r.mapPosition(strings.Index(r.sent, "created_at") + 1); ok {
		t.Fatalf("the projection's own created_at mapped to %d", got)
	}
	if newRewriteText("same", "same") != nil {
		t.Fatal("a text sent as written needs no mapping")
	}
}
