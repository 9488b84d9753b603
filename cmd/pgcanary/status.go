package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/spf13/cobra"

	"github.com/pgcanary/pgcanary/canary"
	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/flags"
)

func newStatusCmd() *cobra.Command {
	var configFile, adminAddr string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status --config FILE",
		Short: "Show each migration's flag, effective read percentage, kill switch, verdict and counters",
		Long: `Show, per migration known to the running pgcanary (its admin API, GET /v1/migrations): whether
writes are mirrored, the read-percent flag's value, the effective read percentage (0 while the kill
switch is engaged), the kill switch, the canary verdict with its comparisons and mismatches in the
judge's window, and the counters since start: reads by route, mirrored and unmirrored writes.
Engaged kill switches are listed under the table with their reason. --json prints the API's
answer as it is, with every field (verdict reasons, error rates, latencies, all counters).

The bearer token from admin.token_file is sent when the file sets one (needed when the admin
address is beyond loopback). A pgcanary that serves no migrations API (started without
migrations or side_dsn, or an older version) gets the table of its /metrics instead: mirror,
flag default in the flag file, effective %, reads by route, writes, flag errors.

Exit 0, 1 when pgcanary is unreachable or refuses, 2 on a configuration error.`,
		Example: `  pgcanary status --config examples/pgcanary.yaml
  pgcanary status --config pgcanary.yaml --admin 10.0.0.7:9187
  pgcanary status --config pgcanary.yaml --json | jq '.[] | {name, verdict: .verdict.status}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile == "" {
				return &exitError{code: 2, err: errors.New("--config is required")}
			}
			cfg, err := config.Load(configFile)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			token, err := adminToken(cfg)
			if err != nil {
				return &exitError{code: 2, err: fmt.Errorf("status: %w", err)}
			}
			client := newAPIClient(cfg, adminAddr, token)
			ctx, cancel := context.WithTimeout(cmd.Context(), apiTimeout)
			defer cancel()
			var raw json.RawMessage
			err = client.call(ctx, http.MethodGet, "/v1/migrations", nil, &raw)
			var ae *apiError
			switch {
			case errors.As(err, &ae) && ae.Code == http.StatusNotFound && !asJSON:
				return metricsTable(ctx, cmd.OutOrStdout(), cfg, configFile, client)
			case ae != nil:
				return client.failure("status", err)
			case err != nil:
				return &exitError{code: 1, err: fmt.Errorf("read metrics and migration state from pgcanary at %s: %w", client.addr, err)}
			}
			if asJSON {
				_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s\n", raw)
				return err
			}
			var list []canary.Status
			if err := json.Unmarshal(raw, &list); err != nil {
				return &exitError{code: 1, err: fmt.Errorf("status: decode the answer of pgcanary at %s: %w", client.addr, err)}
			}
			return migrationsTable(cmd.OutOrStdout(), list)
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "the configuration file (required)")
	cmd.Flags().StringVar(&adminAddr, "admin", "", "admin address of the running pgcanary (default: admin.listen from the file)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the JSON array of GET /v1/migrations instead of the table")
	return cmd
}

// migrationsTable prints the admin API's migrations, then the reasons of engaged kill switches.
func migrationsTable(out io.Writer, list []canary.Status) error {
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "MIGRATION\tMIRROR\tFLAG\tEFFECTIVE %\tKILL SWITCH\tVERDICT\tCOMPARISONS\tMISMATCHES\tREADS OLD\tREADS NEW\tMIRRORED\tUNMIRRORED")
	for _, st := range list {
		flag := "-"
		switch {
		case st.FlagValue != nil:
			flag = formatNumber(*st.FlagValue)
		case st.FlagError != "":
			flag = "error"
		}
		verdict := st.Verdict.Status
		if verdict == "" {
			verdict = "-"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\n", st.Name, onOff(st.Mirror), flag,
			formatNumber(st.EffectivePercent), onOff(st.KillSwitch.Engaged), verdict, st.Verdict.Comparisons, st.Verdict.Mismatches,
			formatNumber(sumSeries(st.Counters, "pgcanary_statements_total", map[string]string{"kind": "read", "route": "old"})),
			formatNumber(sumSeries(st.Counters, "pgcanary_statements_total", map[string]string{"kind": "read", "route": "new"})),
			formatNumber(sumSeries(st.Counters, "pgcanary_mirrored_writes_total", nil)),
			formatNumber(sumSeries(st.Counters, "pgcanary_unmirrored_writes_total", nil)))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	for _, st := range list {
		if ks := st.KillSwitch; ks.Engaged {
			since := ""
			if ks.Since != nil {
				since = " since " + ks.Since.Format(time.RFC3339)
			}
			if _, err := fmt.Fprintf(out, "%s: kill switch engaged%s: %s\n", st.Name, since, ks.Reason); err != nil {
				return err
			}
		}
		if st.Stale != "" {
			if _, err := fmt.Fprintf(out, "%s: reads held on the old shape: the live schema changed (%s) and the configuration does not validate against it\n", st.Name, st.Stale); err != nil {
				return err
			}
		}
	}
	return nil
}

// sumSeries adds the counters of the admin API (keyed name{label=value,...}) of family name whose
// labels include sel.
func sumSeries(counters map[string]float64, name string, sel map[string]string) float64 {
	total := 0.0
	for key, v := range counters {
		family, labels, _ := strings.Cut(key, "{")
		if family != name {
			continue
		}
		have := map[string]string{}
		for _, kv := range strings.Split(strings.TrimSuffix(labels, "}"), ",") {
			k, val, _ := strings.Cut(kv, "=")
			have[k] = val
		}
		ok := true
		for k, want := range sel {
			ok = ok && have[k] == want
		}
		if ok {
			total += v
		}
	}
	return total
}

// metricsTable is the status of a pgcanary without the migrations API, from its /metrics and the
// flag file.
func metricsTable(ctx context.Context, out io.Writer, cfg *config.Config, configFile string, client *apiClient) error {
	families, err := scrape(ctx, client)
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("read metrics from pgcanary at %s: %w", client.addr, err)}
	}
	w := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "MIGRATION\tMIRROR\tFLAG\tEFFECTIVE %\tREADS OLD\tREADS NEW\tMIRRORED\tUNMIRRORED\tFLAG ERRORS")
	for _, m := range cfg.Migrations {
		flagValue := "-"
		if cfg.Flags.File != "" {
			path := cfg.Flags.File
			if !filepath.IsAbs(path) {
				path = filepath.Join(filepath.Dir(configFile), path)
			}
			if v, err := flags.DefaultValue(path, m.ReadPercentFlag); err == nil {
				flagValue = fmt.Sprint(v)
			} else {
				flagValue = "error"
			}
		}
		mirror := "off"
		if m.Mirrors() {
			mirror = "on"
		}
		sel := map[string]string{"migration": m.Name}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%v\t%v\t%v\t%v\t%v\n", m.Name, mirror, flagValue,
			gaugeOr(families, "pgcanary_read_percent", sel, "-"),
			sum(families, "pgcanary_statements_total", map[string]string{"migration": m.Name, "kind": "read", "route": "old"}),
			sum(families, "pgcanary_statements_total", map[string]string{"migration": m.Name, "kind": "read", "route": "new"}),
			sum(families, "pgcanary_mirrored_writes_total", sel),
			sum(families, "pgcanary_unmirrored_writes_total", sel),
			sum(families, "pgcanary_flag_errors_total", sel))
	}
	return w.Flush()
}

func scrape(ctx context.Context, client *apiClient) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, client.base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	if client.token != "" {
		req.Header.Set("Authorization", "Bearer "+client.token)
	}
	resp, err := client.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(resp.Body)
}

// matching yields the samples of a family whose labels include sel.
func matching(families map[string]*dto.MetricFamily, name string, sel map[string]string) []*dto.Metric {
	f, ok := families[name]
	if !ok {
		return nil
	}
	var out []*dto.Metric
	for _, m := range f.Metric {
		ok := true
		for k, v := range sel {
			found := false
			for _, l := range m.Label {
				if l.GetName() == k && l.GetValue() == v {
					found = true
				}
			}
			ok = ok && found
		}
		if ok {
			out = append(out, m)
		}
	}
	return out
}

func sum(families map[string]*dto.MetricFamily, name string, sel map[string]string) float64 {
	total := 0.0
	for _, m := range matching(families, name, sel) {
		total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return total
}

func gaugeOr(families map[string]*dto.MetricFamily, name string, sel map[string]string, none string) string {
	ms := matching(families, name, sel)
	if len(ms) == 0 {
		return none
	}
	return fmt.Sprint(ms[0].GetGauge().GetValue())
}
