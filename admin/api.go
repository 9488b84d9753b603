package admin

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// Migrations is what the JSON API serves about migrations; package canary implements it. Values
// are returned as JSON-encodable structs so this package needs no knowledge of their shape.
type Migrations interface {
	List() any
	// Status returns one migration's summary; ErrUnknownMigration when it is not configured.
	Status(name string) (any, error)
	// Mismatches returns the newest mismatch records, newest first, at most limit.
	Mismatches(name string, limit int) (any, error)
	// Rollback engages the migration's kill switch; Resume releases it.
	Rollback(name, reason string) error
	Resume(name string) error
}

// ErrUnknownMigration answers 404.
var ErrUnknownMigration = errors.New("no such migration")

// auth decides which requests need the bearer token: mutating requests always; every request
// beyond loopback. Health probes stay open: they reveal nothing and orchestrators probe without
// credentials.
type auth struct {
	token    string // "" when admin.token_file is not set
	loopback bool   // the admin address is a loopback address
}

func (a auth) wrap(next http.Handler, probe bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mutating := r.Method != http.MethodGet && r.Method != http.MethodHead
		if probe || (!mutating && a.loopback) {
			next.ServeHTTP(w, r)
			return
		}
		if a.token == "" {
			if !mutating && r.URL.Path == "/metrics" {
				next.ServeHTTP(w, r) // scraping stays possible; serve warns at startup
				return
			}
			writeError(w, http.StatusForbidden, "this endpoint needs a bearer token and admin.token_file is not set")
			return
		}
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(a.token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pgcanary"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token (Authorization: Bearer <admin.token_file contents>)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// IsLoopback reports whether a listen address only accepts local connections.
func IsLoopback(listen string) bool {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func mountAPI(mux *http.ServeMux, m Migrations, a auth) {
	handle := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, a.wrap(h, false)) }
	handle("GET /v1/migrations", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, m.List())
	})
	handle("GET /v1/migrations/{name}", func(w http.ResponseWriter, r *http.Request) {
		v, err := m.Status(r.PathValue("name"))
		respond(w, v, err)
	})
	handle("GET /v1/migrations/{name}/mismatches", func(w http.ResponseWriter, r *http.Request) {
		limit := 100
		if s := r.URL.Query().Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 {
				writeError(w, http.StatusBadRequest, fmt.Sprintf("limit %q: want a positive integer", s))
				return
			}
			limit = n
		}
		v, err := m.Mismatches(r.PathValue("name"), limit)
		respond(w, v, err)
	})
	handle("POST /v1/migrations/{name}/rollback", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Reason string `json:"reason"`
		}
		if r.ContentLength != 0 {
			if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&body); err != nil {
				writeError(w, http.StatusBadRequest, "body: "+err.Error())
				return
			}
		}
		if body.Reason == "" {
			body.Reason = "rolled back by an operator"
		}
		name := r.PathValue("name")
		if err := m.Rollback(name, body.Reason); err != nil {
			respond(w, nil, err)
			return
		}
		v, err := m.Status(name)
		respond(w, v, err)
	})
	handle("POST /v1/migrations/{name}/resume", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if err := m.Resume(name); err != nil {
			respond(w, nil, err)
			return
		}
		v, err := m.Status(name)
		respond(w, v, err)
	})
}

func respond(w http.ResponseWriter, v any, err error) {
	switch {
	case errors.Is(err, ErrUnknownMigration):
		writeError(w, http.StatusNotFound, err.Error())
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
	default:
		writeJSON(w, http.StatusOK, v)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
