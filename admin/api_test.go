package admin

import (
	"context"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

type fakeMigrations struct{ rolledBack, resumed string }

func (f *fakeMigrations) List() any { return []string{"m"} }
func (f *fakeMigrations) Status(name string) (any, error) {
	if name != "m" {
		return nil, fmt.Errorf("%w: %q", ErrUnknownMigration, name)
	}
	return map[string]string{"name": name}, nil
}
func (f *fakeMigrations) Mismatches(name string, limit int) (any, error) { return f.Status(name) }
func (f *fakeMigrations) Rollback(name, reason string) error {
	f.rolledBack = name + ":" + reason
	_, err := f.Status(name)
	return err
}
func (f *fakeMigrations) Resume(name string) error {
	f.resumed = name
	_, err := f.Status(name)
	return err
}

// TestAuthRules: POSTs always need the token; beyond loopback every endpoint but the probes
// does; without a token file the API refuses what needs one and /metrics stays open.
func TestAuthRules(t *testing.T) {
	ready := func(context.Context) error { return nil }
	cases := []struct {
		listen, token string
		method, path  string
		bearer        string
		want          int
	}{
		{"127.0.0.1:9187", "s3cret", "GET", "/v1/migrations", "", 200},
		{"127.0.0.1:9187", "s3cret", "GET", "/v1/migrations/m", "", 200},
		{"127.0.0.1:9187", "s3cret", "GET", "/v1/migrations/x", "", 404},
		{"127.0.0.1:9187", "s3cret", "POST", "/v1/migrations/m/rollback", "", 401},
		{"127.0.0.1:9187", "s3cret", "POST", "/v1/migrations/m/rollback", "wrong", 401},
		{"127.0.0.1:9187", "s3cret", "POST", "/v1/migrations/m/rollback", "s3cret", 200},
		{"127.0.0.1:9187", "s3cret", "POST", "/v1/migrations/m/resume", "s3cret", 200},
		{"127.0.0.1:9187", "", "POST", "/v1/migrations/m/rollback", "anything", 403},
		{"0.0.0.0:9187", "s3cret", "GET", "/v1/migrations", "", 401},
		{"0.0.0.0:9187", "s3cret", "GET", "/v1/migrations", "s3cret", 200},
		{"0.0.0.0:9187", "s3cret", "GET", "/metrics", "", 401},
		{"0.0.0.0:9187", "s3cret", "GET", "/metrics", "s3cret", 200},
		{"0.0.0.0:9187", "s3cret", "GET", "/healthz", "", 200},
		{"0.0.0.0:9187", "s3cret", "GET", "/readyz", "", 200},
		{"0.0.0.0:9187", "", "GET", "/v1/migrations", "", 403},
		{"0.0.0.0:9187", "", "GET", "/metrics", "", 200},
		{"[::1]:9187", "", "GET", "/v1/migrations", "", 200},
		{"localhost:9187", "", "GET", "/v1/migrations", "", 200},
	}
	for _, tc := range cases {
		fm := &fakeMigrations{}
		s := NewWithOptions(Options{Listen: tc.listen, Gatherer: prometheus.NewRegistry(), Ready: ready, Migrations: fm, Token: tc.token})
		req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(`{"reason": "test"}`))
		if tc.bearer != "" {
			req.Header.Set("Authorization", "Bearer "+tc.bearer)
		}
		rec := httptest.NewRecorder()
		s.http.Handler.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("%s %s on %s (token %q, bearer %q): %d %s, want %d", tc.method, tc.path, tc.listen, tc.token, tc.bearer, rec.Code, rec.Body, tc.want)
		}
		if tc.want == 200 && strings.HasSuffix(tc.path, "/rollback") && fm.rolledBack != "m:test" {
			t.Errorf("rollback reached the service as %q", fm.rolledBack)
		}
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "[::1]:1": true, "localhost:1": true,
		"0.0.0.0:1": false, ":9187": false, "10.0.0.1:1": false, "bad": false} {
		if got := IsLoopback(addr); got != want {
			t.Errorf("IsLoopback(%q) = %v", addr, got)
		}
	}
}
