package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// promtool returns promtool's path, or skips the test saying why.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool is not installed (Debian: apt-get install prometheus); skipping the promtool checks")
	}
	return p
}

func runPromtool(t *testing.T, dir string, args ...string) string {
	t.Helper()
	cmd := exec.Command(promtool(t), args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestPromtoolCheckRules(t *testing.T) {
	out := runPromtool(t, deployPath(t, "prometheus"), "check", "rules", "rules.yml")
	t.Log(strings.TrimSpace(out))
}

func TestPromtoolTestRules(t *testing.T) {
	out := runPromtool(t, deployPath(t, "prometheus"), "test", "rules", "rules_test.yml")
	t.Log(strings.TrimSpace(out))
}

// grafanaVars are the dashboard's and the Argo templates' placeholders, replaced by values PromQL
// accepts so that promtool can parse the expressions.
var grafanaVars = strings.NewReplacer(
	"$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "$migration", "users-split-name",
	"{{args.migration}}", "users-split-name",
)

// TestPromtoolParsesQueries parses every PromQL expression of the dashboard and the Argo templates:
// they are written as recording rules into a temporary file for `promtool check rules`.
func TestPromtoolParsesQueries(t *testing.T) {
	pt := promtool(t)
	exprs := append(dashboardExprs(t), argoExprs(t)...)
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for i, e := range exprs {
		rules = append(rules, rule{Record: fmt.Sprintf("deploy_test:expr_%d:check", i), Expr: grafanaVars.Replace(e.expr)})
	}
	raw, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "queries", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "queries.yml")
	if err := os.WriteFile(file, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(pt, "check", "rules", file).CombinedOutput()
	if err != nil {
		// Name the panels whose expressions failed.
		for _, m := range regexp.MustCompile(`expr_(\d+)`).FindAllStringSubmatch(string(out), -1) {
			var i int
			fmt.Sscan(m[1], &i)
			if i < len(exprs) {
				t.Errorf("%s: %s", exprs[i].where, exprs[i].expr)
			}
		}
		t.Fatalf("promtool check rules on the dashboard's and templates' queries: %v\n%s", err, out)
	}
}

// TestPromtoolCheckScrapeConfig checks deploy/prometheus/scrape-config.yml with `promtool check
// config`, the token file pointed at a temporary one (promtool insists that it exists). Debian's
// promtool is built without Kubernetes service discovery: then the kubernetes_sd_configs block is
// swapped for a static target so that the rest (authorization, relabeling, rule_files) is checked.
func TestPromtoolCheckScrapeConfig(t *testing.T) {
	pt := promtool(t)
	dir := t.TempDir()
	token := filepath.Join(dir, "token")
	if err := os.WriteFile(token, []byte("example\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rules := readFile(t, deployPath(t, "prometheus", "rules.yml"))
	if err := os.WriteFile(filepath.Join(dir, "rules.yml"), rules, 0o644); err != nil {
		t.Fatal(err)
	}
	src := string(readFile(t, deployPath(t, "prometheus", "scrape-config.yml")))
	cred := regexp.MustCompile(`credentials_file: \S+`)
	if !cred.MatchString(src) {
		t.Fatal("scrape-config.yml: no credentials_file")
	}
	src = cred.ReplaceAllString(src, "credentials_file: "+token)
	check := func(text string) (string, error) {
		file := filepath.Join(dir, "prometheus.yml")
		if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(pt, "check", "config", file).CombinedOutput()
		return string(out), err
	}
	out, err := check(src)
	if err != nil && strings.Contains(out, "kubernetes_sd_configs not found") {
		t.Log("this promtool has no Kubernetes service discovery; checking the rest with a static target")
		sd := regexp.MustCompile(`kubernetes_sd_configs:\n\s+- role: pod`)
		if !sd.MatchString(src) {
			t.Fatal("scrape-config.yml: kubernetes_sd_configs block not in the expected form")
		}
		out, err = check(sd.ReplaceAllString(src, "static_configs:\n      - targets: [\"127.0.0.1:9187\"]"))
	}
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(out))
}
