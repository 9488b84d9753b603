package proxy

import (
	"bytes"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcanary/pgcanary/router"
	"github.com/pgcanary/pgcanary/shadow"
)

// Shadow is the canary machinery as sessions see it: comparisons of sampled reads, the judge's
// inputs, and the kill switches. Every method is called on a client's path and must not block.
type Shadow interface {
	// Killed reports whether a migration's kill switch holds its reads on the old shape.
	Killed(migration string) bool
	// Sample reports whether one read of migration is to be compared.
	Sample(migration string) bool
	// Compare submits a sampled read.
	Compare(req shadow.Request)
	// ReadDone reports how a read touching migration ended on route (old or new).
	ReadDone(migration, route string, failed bool)
}

// reportedSettings are the ParameterStatus settings that change how values print, replayed on
// the comparison's side connection.
var reportedSettings = map[string]bool{"TimeZone": true, "DateStyle": true, "IntervalStyle": true}

// maybeCompare submits a read for comparison when it is sampled. bind, when set, is the Bind
// message whose parameters the read runs with.
func (s *session) maybeCompare(rf *router.ReadForm, sql string, bind []byte, oids []uint32, path, role string) {
	sh := s.srv.shadow
	if sh == nil || rf == nil || len(rf.Migrations) == 0 || rf.Unstable != "" {
		return // an unstable read's two answers may differ whatever the migration does
	}
	m := rf.Migrations[0]
	if !sh.Sample(m) {
		return
	}
	req := shadow.Request{Migration: m, OldSQL: sql, NewSQL: rf.SQL, Ordered: rf.Ordered, ParamOIDs: oids}
	if bind != nil {
		var b pgproto3.Bind
		if err := b.Decode(bind); err != nil {
			return
		}
		req.ParamFormats = b.ParameterFormatCodes
		req.Params = make([][]byte, len(b.Parameters))
		for i, p := range b.Parameters {
			if p != nil {
				req.Params[i] = bytes.Clone(p) // the Bind aliases the read buffer
			}
		}
	}
	// The search_path and role the statement was planned under, which resolved its names: the
	// session's may have moved since (the server loop follows them). The side connection's role
	// is not the client's, so "$user" is spelled out.
	req.SearchPath = expandUser(path, role)
	s.mu.Lock()
	req.Settings = make(map[string]string, len(s.settings))
	for k, v := range s.settings {
		req.Settings[k] = v
	}
	s.mu.Unlock()
	req.Database = s.database
	sh.Compare(req)
}

// expandUser replaces "$user" in a search_path setting with the role's name, quoted: the schema
// Postgres would take for it (none, when no schema has that name).
func expandUser(path, role string) string {
	if !strings.Contains(path, "$user") {
		return path
	}
	quoted := `"` + strings.ReplaceAll(role, `"`, `""`) + `"`
	items := strings.Split(path, ",")
	for i, it := range items {
		if t := strings.TrimSpace(it); t == `"$user"` || t == "$user" {
			items[i] = " " + quoted
		}
	}
	return strings.TrimSpace(strings.Join(items, ","))
}
