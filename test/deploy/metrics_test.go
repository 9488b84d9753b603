package deploy

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// metric is one metric the code registers.
type metric struct {
	kind   string          // CounterOpts, GaugeOpts, HistogramOpts, SummaryOpts
	labels map[string]bool // nil when the label names could not be read from the code
	file   string
}

// documented are the metrics the README and docs/metrics.md promise: the scan must find them all,
// so that it cannot pass by finding nothing.
var documented = []string{
	"pgcanary_comparisons_total", "pgcanary_mismatches_total", "pgcanary_compare_duration_seconds",
	"pgcanary_canary_verdict", "pgcanary_kill_switch_active", "pgcanary_routed_reads_total",
	"pgcanary_statements_total", "pgcanary_statement_duration_seconds", "pgcanary_statement_errors_total",
	"pgcanary_read_fallbacks_total", "pgcanary_mirrored_writes_total", "pgcanary_unmirrored_writes_total",
	"pgcanary_read_percent", "pgcanary_flag_errors_total", "pgcanary_client_connections",
	"pgcanary_client_connections_total", "pgcanary_upstream_connect_errors_total", "pgcanary_bytes_total",
	"pgcanary_config_generation", "pgcanary_config_reload_failures_total", "pgcanary_plan_cache_hits_total",
	"pgcanary_plan_cache_misses_total", "pgcanary_unrewritten_statements_total",
}

var optsTypes = map[string]bool{"CounterOpts": true, "GaugeOpts": true, "HistogramOpts": true, "SummaryOpts": true}

// codeMetrics scans the repository's Go files (tests excluded) for prometheus.*Opts literals whose
// Name is a "pgcanary_..." string, and the label names passed next to them (NewCounterVec(opts,
// []string{...})).
func codeMetrics(t *testing.T) map[string]metric {
	t.Helper()
	root := repoRoot(t)
	out := map[string]metric{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" || name == "node_modules" || name == "deploy") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		record := func(lit *ast.CompositeLit, labels map[string]bool) {
			kind, name := optsName(lit)
			if name == "" {
				return
			}
			if prev, ok := out[name]; ok && prev.labels != nil && labels == nil {
				return // already known with its labels
			}
			out[name] = metric{kind: kind, labels: labels, file: rel}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				// prometheus.NewCounter(opts) / prometheus.NewCounterVec(opts, []string{...})
				if len(n.Args) == 0 {
					return true
				}
				lit, ok := n.Args[0].(*ast.CompositeLit)
				if !ok {
					return true
				}
				labels := map[string]bool{}
				if len(n.Args) > 1 {
					ls, ok := n.Args[1].(*ast.CompositeLit)
					if !ok {
						labels = nil
					} else {
						for _, e := range ls.Elts {
							if s, ok := stringLit(e); ok {
								labels[s] = true
							} else {
								labels = nil
								break
							}
						}
					}
				}
				record(lit, labels)
			case *ast.CompositeLit:
				record(n, nil) // an Opts literal not passed directly: labels unknown
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// optsName returns the Opts type and the "pgcanary_..." Name of a prometheus.*Opts literal.
func optsName(lit *ast.CompositeLit) (kind, name string) {
	sel, ok := lit.Type.(*ast.SelectorExpr)
	if !ok || !optsTypes[sel.Sel.Name] {
		return "", ""
	}
	for _, e := range lit.Elts {
		kv, ok := e.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		if key, ok := kv.Key.(*ast.Ident); ok && key.Name == "Name" {
			if s, ok := stringLit(kv.Value); ok && strings.HasPrefix(s, "pgcanary_") {
				return sel.Sel.Name, s
			}
		}
	}
	return "", ""
}

func stringLit(e ast.Expr) (string, bool) {
	bl, ok := e.(*ast.BasicLit)
	if !ok || bl.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(bl.Value)
	return s, err == nil
}

func TestCodeMetricsScan(t *testing.T) {
	known := codeMetrics(t)
	for _, name := range documented {
		if _, ok := known[name]; !ok {
			t.Errorf("%s is documented but the scan of the Go source did not find it registered", name)
		}
	}
	for name, m := range known {
		if m.labels == nil {
			t.Logf("%s (%s): label names not read from the code; its label matchers are not checked", name, m.file)
		}
	}
}

// An expression found in a deploy file, with where it came from.
type promExpr struct {
	where string
	expr  string
}

type ruleFile struct {
	Groups []struct {
		Name     string `yaml:"name"`
		Interval string `yaml:"interval"`
		Rules    []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	var rf ruleFile
	if err := yaml.Unmarshal(readFile(t, deployPath(t, "prometheus", "rules.yml")), &rf); err != nil {
		t.Fatalf("rules.yml: %v", err)
	}
	return rf
}

// ruleExprs returns the expressions of rules.yml and the recording rules it defines.
func ruleExprs(t *testing.T) ([]promExpr, map[string]bool) {
	t.Helper()
	rf := loadRules(t)
	var exprs []promExpr
	records := map[string]bool{}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			name := r.Record + r.Alert
			exprs = append(exprs, promExpr{"rules.yml " + g.Name + "/" + name, r.Expr})
			if r.Record != "" {
				records[r.Record] = true
			}
		}
	}
	return exprs, records
}

// dashboardExprs returns every target expression of the dashboard, and the template variable
// queries.
func dashboardExprs(t *testing.T) []promExpr {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal(readFile(t, deployPath(t, "grafana", "pgcanary-dashboard.json")), &d); err != nil {
		t.Fatalf("pgcanary-dashboard.json: %v", err)
	}
	var exprs []promExpr
	for _, p := range allPanels(d) {
		for i, tg := range list(p, "targets") {
			exprs = append(exprs, promExpr{fmt.Sprintf("dashboard panel %q target %d", str(p, "title"), i), str(tg, "expr")})
		}
	}
	return exprs
}

// allPanels flattens the dashboard's panels, rows' nested panels included (rows themselves are left
// out).
func allPanels(d map[string]any) []map[string]any {
	var out []map[string]any
	var walk func([]any)
	walk = func(ps []any) {
		for _, p := range ps {
			m, ok := p.(map[string]any)
			if !ok {
				continue
			}
			if str(m, "type") == "row" {
				walk(list(m, "panels"))
				continue
			}
			out = append(out, m)
		}
	}
	walk(list(d, "panels"))
	return out
}

// argoExprs returns the Prometheus queries of the Argo Rollouts analysis templates.
func argoExprs(t *testing.T) []promExpr {
	t.Helper()
	var exprs []promExpr
	for _, doc := range yamlDocs(t, deployPath(t, "argo", "analysis-template.yaml")) {
		for _, m := range list(doc, "spec", "metrics") {
			if q := str(m, "provider", "prometheus", "query"); q != "" {
				exprs = append(exprs, promExpr{"argo " + str(doc, "metadata", "name") + "/" + str(m, "name"), q})
			}
		}
	}
	return exprs
}

// rulesTestExprs returns the PromQL of rules_test.yml (promql_expr_test) and its input series, so a
// misspelt series there cannot make a test pass vacuously.
func rulesTestExprs(t *testing.T) []promExpr {
	t.Helper()
	var rt struct {
		Tests []struct {
			InputSeries []struct {
				Series string `yaml:"series"`
			} `yaml:"input_series"`
			PromQLExprTest []struct {
				Expr string `yaml:"expr"`
			} `yaml:"promql_expr_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(readFile(t, deployPath(t, "prometheus", "rules_test.yml")), &rt); err != nil {
		t.Fatalf("rules_test.yml: %v", err)
	}
	var exprs []promExpr
	for i, tc := range rt.Tests {
		for _, s := range tc.InputSeries {
			exprs = append(exprs, promExpr{fmt.Sprintf("rules_test.yml test %d input series", i), s.Series})
		}
		for _, e := range tc.PromQLExprTest {
			exprs = append(exprs, promExpr{fmt.Sprintf("rules_test.yml test %d", i), e.Expr})
		}
	}
	return exprs
}

var (
	quoted     = regexp.MustCompile("\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'|`[^`]*`")
	ranges     = regexp.MustCompile(`\[[^\]]*\]`)
	matchers   = regexp.MustCompile(`\{[^}]*\}`)
	selector   = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}`)
	matcher    = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	identifier = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
)

// checkExpr lists the problems of one expression: pgcanary metric names the code does not register
// (histogram suffixes allowed on histograms only), label matchers naming a label the metric does not
// have, and recording-rule names (level:metric:operation) that rules.yml does not define.
func checkExpr(e promExpr, known map[string]metric, records map[string]bool) []string {
	var problems []string
	// Label matchers: checked on the text with its strings blanked (a value may contain "}").
	blanked := quoted.ReplaceAllStringFunc(e.expr, func(s string) string { return `""` })
	for _, m := range selector.FindAllStringSubmatch(blanked, -1) {
		name, base := m[1], resolve(m[1], known)
		if base == "" {
			continue // reported below
		}
		labels := known[base].labels
		if labels == nil {
			continue
		}
		for _, lm := range matcher.FindAllStringSubmatch(m[2], -1) {
			l := lm[1]
			if l == "__name__" || labels[l] || targetLabels[l] || l == "le" && strings.HasSuffix(name, "_bucket") {
				continue
			}
			problems = append(problems, fmt.Sprintf("%s: %s has no label %q (the code registers %v)", e.where, name, l, sortedKeys(labels)))
		}
	}
	for _, id := range identifier.FindAllString(names(e.expr), -1) {
		switch {
		case strings.HasPrefix(id, "pgcanary_"):
			if resolve(id, known) == "" {
				problems = append(problems, fmt.Sprintf("%s: unknown metric %s", e.where, id))
			}
		case strings.Contains(id, ":"):
			if !records[id] {
				problems = append(problems, fmt.Sprintf("%s: recording rule %s is not defined in rules.yml", e.where, id))
			}
		}
	}
	return problems
}

// names blanks what is not a name in an expression: strings, label matchers and range selectors.
func names(expr string) string {
	s := quoted.ReplaceAllString(expr, `""`)
	s = matchers.ReplaceAllString(s, "{}")
	return ranges.ReplaceAllString(s, "")
}

// targetLabels are attached by Prometheus' service discovery (job, instance) and the Prometheus
// Operator (namespace, pod, container, endpoint, service), not by pgcanary.
var targetLabels = map[string]bool{"job": true, "instance": true, "namespace": true, "pod": true, "container": true, "endpoint": true, "service": true}

// resolve maps a series name to the registered metric it belongs to ("" when none): the name
// itself, or a histogram's _bucket/_sum/_count (a summary's _sum/_count).
func resolve(name string, known map[string]metric) string {
	if _, ok := known[name]; ok {
		return name
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		m, found := known[base]
		if found && (m.kind == "HistogramOpts" || m.kind == "SummaryOpts" && suffix != "_bucket") {
			return base
		}
	}
	return ""
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestMetricNamesExist: every metric that rules.yml, its unit tests, the dashboard and the Argo
// templates query is registered by the code, with the labels they match on.
func TestMetricNamesExist(t *testing.T) {
	known := codeMetrics(t)
	rules, records := ruleExprs(t)
	sets := map[string][]promExpr{
		"rules.yml":               rules,
		"rules_test.yml":          rulesTestExprs(t),
		"pgcanary-dashboard.json": dashboardExprs(t),
		"analysis-template.yaml":  argoExprs(t),
	}
	used := map[string]bool{}
	for file, exprs := range sets {
		if len(exprs) == 0 {
			t.Errorf("%s: no expressions found", file)
		}
		for _, e := range exprs {
			if strings.TrimSpace(e.expr) == "" {
				t.Errorf("%s: empty expression", e.where)
				continue
			}
			for _, p := range checkExpr(e, known, records) {
				t.Error(p)
			}
			for _, id := range identifier.FindAllString(names(e.expr), -1) {
				if base := resolve(id, known); base != "" {
					used[base] = true
				}
			}
		}
	}
	var unused []string
	for name := range known {
		if !used[name] {
			unused = append(unused, name)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Logf("registered metrics no rule or panel uses: %v", unused)
	}
}

// TestCheckExprCatchesMistakes guards the checker itself.
func TestCheckExprCatchesMistakes(t *testing.T) {
	known := map[string]metric{
		"pgcanary_comparisons_total":        {kind: "CounterOpts", labels: map[string]bool{"migration": true, "result": true}},
		"pgcanary_compare_duration_seconds": {kind: "HistogramOpts", labels: map[string]bool{"migration": true, "side": true}},
		"pgcanary_bytes_total":              {kind: "CounterOpts"},
	}
	records := map[string]bool{"migration:pgcanary_mismatch_ratio:rate10m": true}
	for _, tc := range []struct {
		expr string
		want int
	}{
		{`sum by (migration) (rate(pgcanary_comparisons_total{result="mismatch"}[10m]))`, 0},
		{`histogram_quantile(0.99, sum by (le) (rate(pgcanary_compare_duration_seconds_bucket{side="new", le!=""}[$__rate_interval])))`, 0},
		{`migration:pgcanary_mismatch_ratio:rate10m > 0.001`, 0},
		{`rate(pgcanary_bytes_total{direction="in"}[5m:1m])`, 0}, // labels unknown: not checked
		{`max(pgcanary_comparisons_total{migration="{{args.migration}}"}) or vector(1)`, 0},
		{`rate(pgcanary_comparison_total[5m])`, 1},                    // misspelt
		{`rate(pgcanary_comparisons_total_bucket[5m])`, 1},            // not a histogram
		{`rate(pgcanary_comparisons_total{outcome="x"}[5m])`, 1},      // no such label
		{`migration:pgcanary_mismatch_rate:rate10m > 0`, 1},           // undefined recording rule
		{`sum(pgcanary_nope{pgcanary_label="pgcanary_x"}) by (a)`, 1}, // strings are not names
	} {
		got := checkExpr(promExpr{"test", tc.expr}, known, records)
		if len(got) != tc.want {
			t.Errorf("checkExpr(%s) = %q, want %d problem(s)", tc.expr, got, tc.want)
		}
	}
}

// TestRulesShape: the required alerts and recording rules exist, and each rule is well formed.
func TestRulesShape(t *testing.T) {
	rf := loadRules(t)
	names := map[string]bool{}
	for _, g := range rf.Groups {
		if g.Name == "" || len(g.Rules) == 0 {
			t.Errorf("group %q: a name and rules are needed", g.Name)
		}
		for _, r := range g.Rules {
			if (r.Record == "") == (r.Alert == "") {
				t.Errorf("group %s: a rule needs exactly one of record and alert (record %q, alert %q)", g.Name, r.Record, r.Alert)
			}
			if r.Alert != "" {
				if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
					t.Errorf("alert %s: wants a severity label and summary and description annotations", r.Alert)
				}
			}
			if r.Record != "" && strings.Count(r.Record, ":") != 2 {
				t.Errorf("recording rule %s: name it level:metric:operations", r.Record)
			}
			names[r.Record+r.Alert] = true
		}
	}
	for _, want := range []string{
		"PgcanaryMismatchRateHigh", "PgcanaryVerdictFail", "PgcanaryKillSwitchEngaged", "PgcanaryComparisonsDropped",
		"PgcanaryFlagErrors", "PgcanaryUnmirroredWrites", "PgcanaryUpstreamConnectErrors", "PgcanaryConfigReloadFailed",
		"migration:pgcanary_mismatch_ratio:rate10m", "migration_route:pgcanary_routed_read_error_ratio:rate5m",
		"migration_side:pgcanary_compare_duration_seconds:p50_5m", "migration_side:pgcanary_compare_duration_seconds:p99_5m",
		"migration:pgcanary_reads_on_new:ratio_rate5m",
	} {
		if !names[want] {
			t.Errorf("rules.yml: %s is missing", want)
		}
	}
}

// TestDashboard: the dashboard is importable (a DS_PROMETHEUS input, a migration variable) and every
// panel has a datasource and at least one query.
func TestDashboard(t *testing.T) {
	raw := readFile(t, deployPath(t, "grafana", "pgcanary-dashboard.json"))
	var d map[string]any
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("pgcanary-dashboard.json does not parse: %v", err)
	}
	if v, _ := get(d, "schemaVersion").(float64); v < 36 {
		t.Errorf("schemaVersion %v: want 36 or later", get(d, "schemaVersion"))
	}
	if str(d, "uid") == "" || str(d, "title") == "" {
		t.Error("dashboard needs a uid and a title")
	}
	hasInput := false
	for _, in := range list(d, "__inputs") {
		if str(in, "name") == "DS_PROMETHEUS" && str(in, "pluginId") == "prometheus" {
			hasInput = true
		}
	}
	if !hasInput {
		t.Error("__inputs: no DS_PROMETHEUS prometheus datasource input")
	}
	var migrationVar map[string]any
	for _, v := range list(d, "templating", "list") {
		if str(v, "name") == "migration" {
			migrationVar, _ = v.(map[string]any)
		}
	}
	if migrationVar == nil {
		t.Fatal("templating: no migration variable")
	}
	if q := str(migrationVar, "query", "query") + str(migrationVar, "query"); !strings.Contains(q, "label_values(pgcanary_statements_total, migration)") {
		t.Errorf("migration variable query %q: want label_values(pgcanary_statements_total, migration)", q)
	}

	ids := map[float64]bool{}
	perMigration := 0
	panels := allPanels(d)
	if len(panels) < 10 {
		t.Errorf("%d panels: expected the per-migration set", len(panels))
	}
	for _, p := range panels {
		title := str(p, "title")
		id, _ := get(p, "id").(float64)
		if id == 0 || ids[id] {
			t.Errorf("panel %q: id %v missing or repeated", title, get(p, "id"))
		}
		ids[id] = true
		if get(p, "gridPos") == nil {
			t.Errorf("panel %q: no gridPos", title)
		}
		if uid := str(p, "datasource", "uid"); uid != "${DS_PROMETHEUS}" {
			t.Errorf("panel %q: datasource uid %q, want ${DS_PROMETHEUS}", title, uid)
		}
		targets := list(p, "targets")
		if len(targets) == 0 {
			t.Errorf("panel %q: no targets", title)
		}
		for i, tg := range targets {
			if strings.TrimSpace(str(tg, "expr")) == "" {
				t.Errorf("panel %q target %d: empty expr", title, i)
			}
			if uid := str(tg, "datasource", "uid"); uid != "" && uid != "${DS_PROMETHEUS}" {
				t.Errorf("panel %q target %d: datasource uid %q", title, i, uid)
			}
			if strings.Contains(str(tg, "expr"), `migration="$migration"`) {
				perMigration++
			}
		}
	}
	if perMigration == 0 {
		t.Error("no panel filters on migration=\"$migration\"")
	}
	// The panels the dashboard is for.
	var all strings.Builder
	for _, e := range dashboardExprs(t) {
		all.WriteString(e.expr + "\n")
	}
	for _, want := range []string{
		"pgcanary_read_percent", "pgcanary_statements_total", "pgcanary_compare_duration_seconds_bucket",
		"pgcanary_statement_errors_total", `result="dropped"`, "pgcanary_canary_verdict", "pgcanary_kill_switch_active",
		"pgcanary_read_fallbacks_total", "pgcanary_mirrored_writes_total", "pgcanary_unmirrored_writes_total",
	} {
		if !strings.Contains(all.String(), want) {
			t.Errorf("dashboard: no panel queries %s", want)
		}
	}
}

// TestArgoTemplates: both analysis templates exist; the web one reads $.verdict.status with the
// bearer token from Secret pgcanary-admin, as docs/canary.md shows.
func TestArgoTemplates(t *testing.T) {
	docs := yamlDocs(t, deployPath(t, "argo", "analysis-template.yaml"))
	var web, prom bool
	for _, doc := range docs {
		if str(doc, "kind") != "AnalysisTemplate" || str(doc, "apiVersion") != "argoproj.io/v1alpha1" {
			t.Errorf("%s: want an argoproj.io/v1alpha1 AnalysisTemplate, got %s %s", str(doc, "metadata", "name"), str(doc, "apiVersion"), str(doc, "kind"))
		}
		for _, m := range list(doc, "spec", "metrics") {
			if w := get(m, "provider", "web"); w != nil {
				web = true
				if str(w, "jsonPath") != "{$.verdict.status}" || !strings.HasSuffix(str(w, "url"), "/v1/migrations/{{args.migration}}") {
					t.Errorf("web metric %s: url %q jsonPath %q", str(m, "name"), str(w, "url"), str(w, "jsonPath"))
				}
				auth := false
				for _, h := range list(w, "headers") {
					auth = auth || str(h, "key") == "Authorization" && strings.HasPrefix(str(h, "value"), "Bearer {{args.")
				}
				if !auth {
					t.Errorf("web metric %s: no Authorization: Bearer header", str(m, "name"))
				}
				secret := false
				for _, a := range list(doc, "spec", "args") {
					secret = secret || str(a, "valueFrom", "secretKeyRef", "name") == "pgcanary-admin"
				}
				if !secret {
					t.Errorf("%s: the token arg should come from Secret pgcanary-admin", str(doc, "metadata", "name"))
				}
			}
			if q := str(m, "provider", "prometheus", "query"); strings.Contains(q, "pgcanary_canary_verdict") {
				prom = true
				if !strings.Contains(str(m, "failureCondition"), "== 2") {
					t.Errorf("prometheus metric %s: failureCondition %q should fail on 2", str(m, "name"), str(m, "failureCondition"))
				}
			}
		}
	}
	if !web || !prom {
		t.Errorf("want a web metric on the admin API (found %v) and a Prometheus metric on pgcanary_canary_verdict (found %v)", web, prom)
	}
}

// TestDeployReadme: the README names every file under deploy/.
func TestDeployReadme(t *testing.T) {
	readme := string(readFile(t, deployPath(t, "README.md")))
	err := filepath.WalkDir(deployPath(t), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "README.md" {
			return err
		}
		rel, _ := filepath.Rel(deployPath(t), path)
		if !strings.Contains(readme, filepath.ToSlash(rel)) {
			t.Errorf("deploy/README.md does not mention %s", filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
}
