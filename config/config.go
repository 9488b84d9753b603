package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the whole configuration file. Zero values mean "use the default" (see Defaults).
type Config struct {
	Listen         string        `yaml:"listen"`
	ListenUnix     string        `yaml:"listen_unix"` // the socket file, DIR:PORT, or a directory (.s.PGSQL.<listen's port>)
	Upstream       string        `yaml:"upstream"`
	UpstreamTLS    UpstreamTLS   `yaml:"upstream_tls"`
	TLS            ClientTLS     `yaml:"tls"`
	Admin          Admin         `yaml:"admin"`
	LogLevel       string        `yaml:"log_level"`
	LogFormat      string        `yaml:"log_format"`
	DrainTimeout   time.Duration `yaml:"drain_timeout"`
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	MaxMessageSize ByteSize      `yaml:"max_message_size"`
	// EventLoops is how many event loops relay plain (non-TLS) sessions: 0 for one per two CPUs,
	// -1 for none (a goroutine per direction of each session).
	EventLoops int `yaml:"event_loops"`
	// BusyPoll is how long an event loop polls before it sleeps: auto (0, the default), off, or a
	// duration.
	BusyPoll BusyPoll `yaml:"busy_poll"`

	// SideDSN is the proxy's own connection (catalog, comparisons, backfill); a migration's
	// database replaces the DSN's database name.
	SideDSN    string      `yaml:"side_dsn"`
	Flags      FlagSource  `yaml:"flags"`
	RoutingKey string      `yaml:"routing_key"`
	Shadow     Shadow      `yaml:"shadow"`
	Migrations []Migration `yaml:"migrations"`

	src *source
}

// FlagSource says where feature flags come from: a local flag file (hot-reloaded) or a flagd daemon.
type FlagSource struct {
	File  string `yaml:"file"`
	Flagd string `yaml:"flagd"` // host:port
}

// UpstreamTLS is the proxy's TLS policy towards Postgres.
type UpstreamTLS struct {
	SSLMode     string `yaml:"sslmode"`
	SSLRootCert string `yaml:"sslrootcert"`
}

// ClientTLS is the certificate offered to clients that ask for TLS.
type ClientTLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// Shadow configures comparisons and the canary judge (shared by all migrations; each migration's
// compare section says how its results are compared).
type Shadow struct {
	Workers     int           `yaml:"workers"`      // comparisons run at once; default 4
	QueueSize   int           `yaml:"queue_size"`   // sampled reads waiting; beyond it they are dropped; default 1000
	Timeout     time.Duration `yaml:"timeout"`      // per form, as statement_timeout on the side connection; default 5s
	MismatchLog string        `yaml:"mismatch_log"` // JSONL file mismatch records are appended to (relative to the config file)
	StateFile   string        `yaml:"state_file"`   // where engaged kill switches are kept across restarts (relative to the config file)
	// The judge: a sliding window, a minimum sample count, and the rates that fail a canary.
	Window               time.Duration `yaml:"window"`                  // default 10m
	MinSamples           int           `yaml:"min_samples"`             // comparisons needed to pass; default 200
	MaxMismatchRate      float64       `yaml:"max_mismatch_rate"`       // Wilson 95% upper bound above this fails; default 0.001
	MaxErrorRateIncrease float64       `yaml:"max_error_rate_increase"` // new-route error rate minus old above this fails; default 0.01
}

// Admin configures the operator HTTP endpoint.
type Admin struct {
	Listen    string `yaml:"listen"`
	TokenFile string `yaml:"token_file"`
	Pprof     bool   `yaml:"pprof"` // serve /debug/pprof/ (off by default)
}

// Defaults returns the configuration used when neither file nor flags say otherwise.
func Defaults() Config {
	return Config{
		Listen:         "127.0.0.1:6432",
		UpstreamTLS:    UpstreamTLS{SSLMode: "prefer"},
		Admin:          Admin{Listen: "127.0.0.1:9187"},
		LogLevel:       "info",
		LogFormat:      "text",
		DrainTimeout:   30 * time.Second,
		ConnectTimeout: 10 * time.Second,
		MaxMessageSize: 1 << 30,
		RoutingKey:     "session",
	}
}

// Load reads path over the defaults. YAML, type and value errors come back as a Report naming
// file:line for each; warnings are kept in Warnings.
func Load(path string) (*Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, raw)
}

// Parse decodes raw (named path in findings) over the defaults and lints it.
func Parse(path string, raw []byte) (*Config, error) {
	cfg := Defaults()
	expanded, err := expandEnv(path, raw)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(expanded))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlError(path, err)
	}
	// A second pass keeps the node tree, so findings about values can name their lines.
	var doc yaml.Node
	if err := yaml.Unmarshal(expanded, &doc); err != nil {
		return nil, yamlError(path, err)
	}
	cfg.src = &source{path: path}
	if len(doc.Content) > 0 {
		cfg.src.root = doc.Content[0]
	}
	cfg.applyDefaults()
	if report := cfg.Lint(); report.HasErrors() {
		return &cfg, report // decoded, but not usable: `check` still runs the live checks on it
	}
	return &cfg, nil
}

// Path is the file the configuration was read from ("" when built in code).
func (c *Config) Path() string {
	if c.src == nil {
		return ""
	}
	return c.src.path
}

// finding builds a finding located at the value under path.
func (c *Config) finding(sev Severity, migration string, path []any, format string, args ...any) Finding {
	return Finding{Severity: sev, File: c.Path(), Line: c.src.line(path...), Migration: migration, Message: fmt.Sprintf(format, args...)}
}

// Validate checks the settings the command line can override; Lint covers the rest.
func (c *Config) Validate() error {
	var errs []error
	for _, f := range c.lintSettings() {
		if f.Severity == Error {
			errs = append(errs, errors.New(f.Message))
		}
	}
	return errors.Join(errs...)
}

// Lint checks everything that can be checked without a database: settings, and each migration's
// shape. The live checks (relations, columns, types, privileges) are in Check.
func (c *Config) Lint() Report {
	r := c.lintSettings()
	return append(r, c.lintMigrations()...)
}

func (c *Config) lintSettings() Report {
	var r Report
	bad := func(key string, format string, args ...any) {
		r = append(r, c.finding(Error, "", []any{key}, format, args...))
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "log_level %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		bad("log_format", "log_format %q: want text or json", c.LogFormat)
	}
	switch strings.ToLower(c.UpstreamTLS.SSLMode) {
	case "disable", "prefer", "require", "verify-ca", "verify-full":
	default:
		bad("upstream_tls", "upstream_tls.sslmode %q: want disable, prefer, require, verify-ca or verify-full", c.UpstreamTLS.SSLMode)
	}
	if c.Listen == "" && c.ListenUnix == "" {
		bad("listen", "listen and listen_unix are both empty: clients would have nowhere to connect")
	}
	if c.ListenUnix != "" && !strings.HasPrefix(c.ListenUnix, "/") {
		bad("listen_unix", "listen_unix %q: want an absolute path (the socket, DIR:PORT or a directory)", c.ListenUnix)
	}
	if strings.HasPrefix(c.Upstream, "/") {
		switch strings.ToLower(c.UpstreamTLS.SSLMode) {
		case "require", "verify-ca", "verify-full":
			bad("upstream_tls", "upstream %s is a Unix socket, where Postgres offers no TLS: upstream_tls.sslmode %s cannot be met (use disable or prefer)", c.Upstream, c.UpstreamTLS.SSLMode)
		}
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		bad("tls", "tls.cert and tls.key go together: set both or neither")
	}
	if c.DrainTimeout < 0 {
		bad("drain_timeout", "drain_timeout %s is negative", c.DrainTimeout)
	}
	if c.EventLoops < -1 {
		bad("event_loops", "event_loops %d: want 0 (one per two CPUs), -1 (none) or a positive count", c.EventLoops)
	}
	if c.MaxMessageSize < 1024 {
		bad("max_message_size", "max_message_size %d is below 1024 bytes", c.MaxMessageSize)
	}
	if err := ValidRoutingKey(c.RoutingKey); err != nil {
		bad("routing_key", "%v", err)
	}
	sh := c.Shadow
	if sh.Workers < 0 || sh.QueueSize < 0 || sh.Timeout < 0 || sh.Window < 0 || sh.MinSamples < 0 {
		bad("shadow", "shadow: workers, queue_size, timeout, window and min_samples cannot be negative")
	}
	if sh.MaxMismatchRate < 0 || sh.MaxMismatchRate >= 1 || sh.MaxErrorRateIncrease < 0 || sh.MaxErrorRateIncrease >= 1 {
		bad("shadow", "shadow: max_mismatch_rate and max_error_rate_increase are rates in [0, 1)")
	}
	if c.Flags.File != "" && c.Flags.Flagd != "" {
		bad("flags", "flags: set file or flagd, not both")
	}
	if len(c.Migrations) > 0 && c.SideDSN == "" {
		bad("side_dsn", "side_dsn is required when migrations are configured (the proxy reads the catalog through it)")
	}
	return r
}

// ValidRoutingKey checks a routing_key value.
func ValidRoutingKey(k string) error {
	switch k {
	case "session", "statement", "user", "application_name", "client_addr":
		return nil
	}
	for _, prefix := range []string{"startup:", "comment:"} {
		if rest, ok := strings.CutPrefix(k, prefix); ok {
			if rest == "" {
				return fmt.Errorf("routing_key %q: name the %s after the colon", k, strings.TrimSuffix(prefix, ":"))
			}
			return nil
		}
	}
	return fmt.Errorf("routing_key %q: want session, statement, user, application_name, client_addr, startup:<param> or comment:<key>", k)
}

// envRef matches ${NAME}. Bare $NAME is left alone: SQL expressions in the file may contain $.
var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandEnv replaces ${NAME} with the environment's value line by line, so YAML line numbers stay
// right; an unset variable is an error naming where it is used.
func expandEnv(path string, raw []byte) ([]byte, error) {
	var report Report
	lines := bytes.Split(raw, []byte("\n"))
	for i, line := range lines {
		lines[i] = envRef.ReplaceAllFunc(line, func(m []byte) []byte {
			name := string(envRef.FindSubmatch(m)[1])
			v, ok := os.LookupEnv(name)
			if !ok {
				report = append(report, Finding{Severity: Error, File: path, Line: i + 1, Message: "environment variable " + name + " is not set"})
				return m
			}
			return []byte(v)
		})
	}
	if len(report) > 0 {
		return nil, report
	}
	return bytes.Join(lines, []byte("\n")), nil
}

var yamlLine = regexp.MustCompile(`^(?:yaml: )?line (\d+): `)

// yamlError turns yaml.v3's "line N: msg" errors into findings at path:N.
func yamlError(path string, err error) error {
	msgs := []string{err.Error()}
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	}
	report := make(Report, 0, len(msgs))
	for _, msg := range msgs {
		f := Finding{Severity: Error, File: path, Message: strings.TrimPrefix(msg, "yaml: ")}
		if m := yamlLine.FindStringSubmatch(msg); m != nil {
			f.Line, _ = strconv.Atoi(m[1])
			f.Message = msg[len(m[0]):]
		}
		report = append(report, f)
	}
	return report
}

// BusyPoll is busy_poll: 0 for auto (the proxy's default: 200µs, none under a CPU quota), -1 for
// off, or how long an event loop polls its sockets before it sleeps.
type BusyPoll time.Duration

// BusyPollOff is the BusyPoll of busy_poll: off.
const BusyPollOff = BusyPoll(-1)

// UnmarshalYAML accepts auto, off, or a duration (0 is off).
func (b *BusyPoll) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseBusyPoll(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// ParseBusyPoll parses "auto", "off", "0" (off) or a positive duration such as "50us".
func ParseBusyPoll(s string) (BusyPoll, error) {
	switch s = strings.TrimSpace(s); s {
	case "auto", "":
		return 0, nil
	case "off", "0":
		return BusyPollOff, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("invalid busy_poll %q: want auto, off, or a duration such as 50us", s)
	}
	if d == 0 {
		return BusyPollOff, nil
	}
	return BusyPoll(d), nil
}

// String is how busy_poll is written.
func (b BusyPoll) String() string {
	switch {
	case b == 0:
		return "auto"
	case b < 0:
		return "off"
	}
	return time.Duration(b).String()
}

// ByteSize is a size in bytes, written as a number or with a unit: 512KiB, 64MiB, 1GiB (also kB,
// MB, GB as powers of 1024, as Postgres reads them).
type ByteSize int

// UnmarshalYAML accepts an integer or a string with a unit.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*b = v
	return nil
}

// ParseByteSize parses "1073741824", "1GiB", "64MB", "512kB".
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"kB", 1 << 10}, {"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: want bytes or a number with KiB, MiB or GiB", s)
	}
	if n > (1<<31-1)/mult {
		return 0, fmt.Errorf("size %q is larger than 2 GiB", s)
	}
	return ByteSize(n * mult), nil
}
