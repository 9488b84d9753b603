// Package config loads pgcanary's YAML configuration strictly (unknown keys, wrong types and bad
// values are errors naming file:line) and expands ${VAR} references from the environment.
package config
