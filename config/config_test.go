package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseDefaultsAndValues(t *testing.T) {
	t.Setenv("PGC_UPSTREAM", "db.internal:5433")
	cfg, err := Parse("c.yaml", []byte(`
listen: 0.0.0.0:7000
upstream: ${PGC_UPSTREAM}
upstream_tls: {sslmode: verify-full, sslrootcert: /etc/ca.pem}
drain_timeout: 5s
max_message_size: 64MiB
`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Upstream != "db.internal:5433" || cfg.Listen != "0.0.0.0:7000" || cfg.DrainTimeout != 5*time.Second ||
		cfg.MaxMessageSize != 64<<20 || cfg.Admin.Listen != "127.0.0.1:9187" || cfg.UpstreamTLS.SSLMode != "verify-full" {
		t.Fatalf("unexpected config: %+v", cfg)
	}
	if _, err := Parse("empty.yaml", nil); err != nil {
		t.Fatalf("empty file: %v", err)
	}
}

func TestParseErrorsNameFileAndLine(t *testing.T) {
	cases := []struct {
		name, yaml, want string
	}{
		{"unknown key", "listen: a:1\nlistne: b\n", "c.yaml:2: error: field listne not found"},
		{"wrong type", "listen: a:1\ndrain_timeout: [1]\n", "c.yaml:2:"},
		{"bad size", "max_message_size: lots\n", "c.yaml:1: error: invalid size"},
		{"unset env", "listen: a\nupstream: ${PGC_SURELY_UNSET}\n", "c.yaml:2: error: environment variable PGC_SURELY_UNSET is not set"},
		{"bad sslmode", "upstream_tls: {sslmode: maybe}\n", `sslmode "maybe"`},
		{"cert without key", "tls: {cert: a.pem}\n", "tls.cert and tls.key go together"},
		{"syntax", "listen: [\n", "c.yaml:"},
		{"no listener", "listen: \"\"\n", "listen and listen_unix are both empty"},
		{"relative socket", "listen_unix: run/pgcanary\n", "c.yaml:1: error: listen_unix \"run/pgcanary\": want an absolute path"},
		{"event loops", "listen: a:1\nevent_loops: -2\n", "c.yaml:2: error: event_loops -2: want 0 (one per two CPUs), -1 (none) or a positive count"},
		{"busy poll", "listen: a:1\nbusy_poll: soon\n", `c.yaml:2: error: invalid busy_poll "soon": want auto, off, or a duration such as 50us`},
		{"negative busy poll", "busy_poll: -5us\n", `c.yaml:1: error: invalid busy_poll "-5us"`},
		{"TLS on a socket", "upstream: /var/run/postgresql\nupstream_tls: {sslmode: require}\n", "is a Unix socket, where Postgres offers no TLS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("c.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestDollarInSQLIsLeftAlone(t *testing.T) {
	raw, err := expandEnv("c.yaml", []byte("x: $1 || $$a$$\n"))
	if err != nil || string(raw) != "x: $1 || $$a$$\n" {
		t.Fatalf("got %q, %v", raw, err)
	}
}
