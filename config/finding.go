package config

import (
	"errors"
	"fmt"
	"strings"
)

// Severity ranks a finding: errors stop a configuration from being used, warnings do not.
type Severity int

const (
	Warning Severity = iota
	Error
)

func (s Severity) String() string {
	if s == Error {
		return "error"
	}
	return "warning"
}

// Finding is one problem found in a configuration, located by file and line.
type Finding struct {
	Severity  Severity
	File      string
	Line      int    // 0 when no line applies
	Migration string // empty for settings outside a migration
	Message   string
}

// String renders "file:line: error: migration NAME: message", the format every command prints.
func (f Finding) String() string {
	var b strings.Builder
	if f.File != "" {
		b.WriteString(f.File)
		if f.Line > 0 {
			fmt.Fprintf(&b, ":%d", f.Line)
		}
		b.WriteString(": ")
	}
	b.WriteString(f.Severity.String())
	b.WriteString(": ")
	if f.Migration != "" {
		fmt.Fprintf(&b, "migration %s: ", f.Migration)
	}
	b.WriteString(f.Message)
	return b.String()
}

// Report is a list of findings; as an error it lists them one per line.
type Report []Finding

// HasErrors reports whether any finding is an error.
func (r Report) HasErrors() bool {
	for _, f := range r {
		if f.Severity == Error {
			return true
		}
	}
	return false
}

// Error lists every finding, one per line.
func (r Report) Error() string {
	lines := make([]string, len(r))
	for i, f := range r {
		lines[i] = f.String()
	}
	return strings.Join(lines, "\n")
}

// Err returns the report as an error when it holds an error finding, else nil.
func (r Report) Err() error {
	if r.HasErrors() {
		return r
	}
	return nil
}

// AsReport extracts the findings from an error returned by this package.
func AsReport(err error) (Report, bool) {
	var r Report
	if errors.As(err, &r) {
		return r, true
	}
	return nil, false
}
