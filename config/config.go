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
	Upstream       string        `yaml:"upstream"`
	UpstreamTLS    UpstreamTLS   `yaml:"upstream_tls"`
	TLS            ClientTLS     `yaml:"tls"`
	Admin          Admin         `yaml:"admin"`
	LogLevel       string        `yaml:"log_level"`
	LogFormat      string        `yaml:"log_format"`
	DrainTimeout   time.Duration `yaml:"drain_timeout"`
	ConnectTimeout time.Duration `yaml:"connect_timeout"`
	MaxMessageSize ByteSize      `yaml:"max_message_size"`
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
	}
}

// Load reads path over the defaults.
func Load(path string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return Parse(path, raw)
}

// Parse decodes raw (named path in errors) over the defaults.
func Parse(path string, raw []byte) (Config, error) {
	cfg := Defaults()
	expanded, err := expandEnv(path, raw)
	if err != nil {
		return Config{}, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(expanded))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return cfg, nil // an empty file is all defaults
		}
		return Config{}, yamlError(path, err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Validate checks values that YAML types cannot.
func (c *Config) Validate() error {
	var errs []error
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel))
	}
	switch c.LogFormat {
	case "text", "json":
	default:
		errs = append(errs, fmt.Errorf("log_format %q: want text or json", c.LogFormat))
	}
	switch strings.ToLower(c.UpstreamTLS.SSLMode) {
	case "disable", "prefer", "require", "verify-ca", "verify-full":
	default:
		errs = append(errs, fmt.Errorf("upstream_tls.sslmode %q: want disable, prefer, require, verify-ca or verify-full", c.UpstreamTLS.SSLMode))
	}
	if (c.TLS.Cert == "") != (c.TLS.Key == "") {
		errs = append(errs, errors.New("tls.cert and tls.key go together: set both or neither"))
	}
	if c.DrainTimeout < 0 {
		errs = append(errs, fmt.Errorf("drain_timeout %s is negative", c.DrainTimeout))
	}
	if c.MaxMessageSize < 1024 {
		errs = append(errs, fmt.Errorf("max_message_size %d is below 1024 bytes", c.MaxMessageSize))
	}
	return errors.Join(errs...)
}

// envRef matches ${NAME}. Bare $NAME is left alone: SQL expressions in the file may contain $.
var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// expandEnv replaces ${NAME} with the environment's value line by line, so YAML line numbers stay
// right; an unset variable is an error naming where it is used.
func expandEnv(path string, raw []byte) ([]byte, error) {
	var errs []error
	lines := bytes.Split(raw, []byte("\n"))
	for i, line := range lines {
		lines[i] = envRef.ReplaceAllFunc(line, func(m []byte) []byte {
			name := string(envRef.FindSubmatch(m)[1])
			v, ok := os.LookupEnv(name)
			if !ok {
				errs = append(errs, fmt.Errorf("%s:%d: environment variable %s is not set", path, i+1, name))
				return m
			}
			return []byte(v)
		})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return bytes.Join(lines, []byte("\n")), nil
}

var yamlLine = regexp.MustCompile(`line (\d+): `)

// yamlError rewrites yaml.v3's "line N: msg" errors as "path:N: msg", one per line.
func yamlError(path string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		errs := make([]error, 0, len(te.Errors))
		for _, e := range te.Errors {
			errs = append(errs, errors.New(withPath(path, e)))
		}
		return errors.Join(errs...)
	}
	return errors.New(withPath(path, strings.TrimPrefix(err.Error(), "yaml: ")))
}

func withPath(path, msg string) string {
	if m := yamlLine.FindStringSubmatchIndex(msg); m != nil && m[0] == 0 {
		return path + ":" + msg[m[2]:m[3]] + ": " + msg[m[1]:]
	}
	return path + ": " + msg
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
