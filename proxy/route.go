package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/pgcanary/pgcanary/flags"
	"github.com/pgcanary/pgcanary/router"
)

// flagTimeout bounds one flag evaluation: a slow flag daemon must not stall the client, and a
// flag that cannot be evaluated means 0 %.
const flagTimeout = 50 * time.Millisecond

// routing is a session's routing state, owned by the client loop.
type routing struct {
	mode       string // config routing_key
	sessionKey string // random per connection
	clientAddr string
	params     map[string]string
	// evalCtx caches each migration's evaluation attributes; application_name changes reset it.
	evalCtx map[string]map[string]any
	// pct caches each migration's last evaluation: reused while the routing key, the attributes
	// and the flags' version stay the same (a session-wide key evaluates once per flag change).
	pct      map[string]cachedPercent
	attrsGen uint64 // bumped whenever evalAttributes rebuilds an attribute map
	// After the session sends DDL naming a migrated relation, its reads stay on the old shape
	// until the configuration generation changes (the reloader read the columns again: a stale
	// mark, or a fresh catalog) or ddlHold passes: its next statement must not read the new shape
	// through a column list the DDL just changed.
	ddlHoldGen   int64
	ddlHoldUntil time.Time
}

// ddlHold bounds how long a session's reads stay on the old shape after its DDL when no new
// generation comes (the DDL changed no column): the reloader reads columns 250 ms and 1 s after.
const ddlHold = 3 * time.Second

type cachedPercent struct {
	version, attrsGen uint64
	key               string
	value             float64
	err               bool
}

func newRouting(mode string, params map[string]string, remote net.Addr) routing {
	var b [8]byte
	_, _ = rand.Read(b[:])
	host := remote.String()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if remote.Network() == "unix" {
		host = "local" // a Unix-socket client has no address; pg_hba.conf calls these "local"
	}
	if mode == "" {
		mode = "session"
	}
	return routing{mode: mode, sessionKey: hex.EncodeToString(b[:]), clientAddr: host, params: params}
}

// key returns the routing key for one statement.
func (s *session) routingKey(sql string) string {
	r := &s.route
	switch mode := r.mode; {
	case mode == "session":
		return r.sessionKey
	case mode == "statement":
		var b [8]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:])
	case mode == "user":
		return s.user
	case mode == "application_name":
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.appName
	case mode == "client_addr":
		return r.clientAddr
	case strings.HasPrefix(mode, "startup:"):
		return r.params[strings.TrimPrefix(mode, "startup:")]
	case strings.HasPrefix(mode, "comment:"):
		return commentValue(sql, strings.TrimPrefix(mode, "comment:"))
	}
	return r.sessionKey
}

var sqlComment = regexp.MustCompile(`/\*(.*?)\*/`)

// commentValue finds key='value' in a sqlcommenter comment (/* key='value',other='x' */) before
// or after the statement; values are URL-encoded by sqlcommenter.
func commentValue(sql, key string) string {
	for _, m := range sqlComment.FindAllStringSubmatch(sql, -1) {
		for _, pair := range strings.Split(m[1], ",") {
			k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
			if !ok || k != key {
				continue
			}
			v = strings.Trim(v, `'`)
			if dec, err := url.QueryUnescape(v); err == nil {
				v = dec
			}
			return v
		}
	}
	return ""
}

// routeNew decides whether one execution of a read is served by the new shape: for every
// migration it touches, the stable bucket of the routing key must fall below the migration's
// read percentage (a flag error counts as 0 %).
func (s *session) routeNew(rf *router.ReadForm, sql string) bool {
	if s.srv.flags == nil {
		return false
	}
	if r := &s.route; !r.ddlHoldUntil.IsZero() {
		if time.Now().Before(r.ddlHoldUntil) && s.srv.planner.Generation() == r.ddlHoldGen {
			return false
		}
		r.ddlHoldUntil = time.Time{}
	}
	key := s.routingKey(sql)
	for i, m := range rf.Migrations {
		pct := s.percent(m, rf.Flags[i], key)
		if !router.RoutesNew(router.Bucket(m, key), pct) {
			return false
		}
	}
	return true
}

// percent evaluates a migration's read-percent flag for key, or reuses the session's last
// evaluation when nothing it depends on changed. A flag error counts as 0 %.
func (s *session) percent(migration, flag, key string) float64 {
	if s.srv.shadow != nil && s.srv.shadow.Killed(migration) {
		s.srv.metrics.ReadPercent(migration, 0) // the kill switch holds reads on the old shape
		return 0
	}
	r := &s.route
	attrs := s.evalAttributes(migration)
	version := s.srv.flags.Version()
	if c, ok := r.pct[migration]; ok && c.version == version && c.key == key && c.attrsGen == r.attrsGen {
		if c.err {
			s.srv.metrics.FlagError(migration)
		}
		return c.value
	}
	ctx, cancel := context.WithTimeout(context.Background(), flagTimeout)
	pct, err := s.srv.flags.Float(ctx, flag, flags.EvalContext{TargetingKey: key, Attributes: attrs})
	cancel()
	if err != nil {
		s.srv.metrics.FlagError(migration)
		pct = 0
	}
	s.srv.metrics.ReadPercent(migration, pct)
	if r.pct == nil {
		r.pct = map[string]cachedPercent{}
	}
	r.pct[migration] = cachedPercent{version: version, attrsGen: r.attrsGen, key: key, value: pct, err: err != nil}
	return pct
}

// evalAttributes are the evaluation context's attributes for a migration, built once per session.
func (s *session) evalAttributes(migration string) map[string]any {
	r := &s.route
	s.mu.Lock()
	app := s.appName
	s.mu.Unlock()
	if attrs, ok := r.evalCtx[migration]; ok && attrs["application_name"] == app {
		return attrs
	}
	if r.evalCtx == nil {
		r.evalCtx = map[string]map[string]any{}
	}
	attrs := map[string]any{
		"user": s.user, "database": r.params["database"], "application_name": app,
		"client_addr": r.clientAddr, "migration": migration,
	}
	// Startup parameters are attributes too. A custom setting (app.tenant=42, the way a client can
	// pass one) is also exposed under its last segment (tenant): JSON-logic "var" reads dots as
	// nesting.
	settings := optionSettings(r.params["options"])
	for k, v := range r.params {
		settings[k] = v
	}
	for k, v := range settings {
		if _, taken := attrs[k]; !taken {
			attrs[k] = v
		}
		if i := strings.LastIndexByte(k, '.'); i >= 0 {
			if _, taken := attrs[k[i+1:]]; !taken {
				attrs[k[i+1:]] = v
			}
		}
	}
	r.evalCtx[migration] = attrs
	r.attrsGen++
	return attrs
}

// countRead records where a read touching migrations went.
func (s *session) countRead(rf *router.ReadForm, newShape bool) {
	route := "old"
	if newShape {
		route = "new"
	}
	for _, m := range rf.Migrations {
		s.srv.metrics.Statement(m, "read", route)
	}
}

// optionSettings parses the settings of a startup "options" parameter (libpq's PGOPTIONS):
// "-c name=value", "-cname=value" and "--name=value".
func optionSettings(options string) map[string]string {
	out := map[string]string{}
	fields := strings.Fields(options)
	for i := 0; i < len(fields); i++ {
		f := fields[i]
		switch {
		case f == "-c" && i+1 < len(fields):
			i++
			f = fields[i]
		case strings.HasPrefix(f, "-c"):
			f = f[2:]
		case strings.HasPrefix(f, "--"):
			f = f[2:]
		default:
			continue
		}
		if k, v, ok := strings.Cut(f, "="); ok {
			out[strings.ReplaceAll(k, "-", "_")] = v
		}
	}
	return out
}
