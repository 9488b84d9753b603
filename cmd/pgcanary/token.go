package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pgcanary/pgcanary/config"
)

// adminToken reads admin.token_file (relative to the configuration file), or "" when unset.
func adminToken(cfg *config.Config) (string, error) {
	path := cfg.Admin.TokenFile
	if path == "" {
		return "", nil
	}
	if !filepath.IsAbs(path) && cfg.Path() != "" {
		path = filepath.Join(filepath.Dir(cfg.Path()), path)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("admin.token_file: %w", err)
	}
	token := strings.TrimSpace(string(raw))
	if token == "" {
		return "", fmt.Errorf("admin.token_file %s is empty", path)
	}
	return token, nil
}
