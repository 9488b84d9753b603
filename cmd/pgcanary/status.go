package main

import (
	"context"
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

	"github.com/pgcanary/pgcanary/config"
	"github.com/pgcanary/pgcanary/flags"
)

func newStatusCmd() *cobra.Command {
	var configFile, adminAddr string
	cmd := &cobra.Command{
		Use:   "status --config FILE",
		Short: "Show each migration's mirror state, flag value, effective read percentage and counters",
		Long: `Show, per migration: whether writes are mirrored, the read-percent flag's default value in the flag
file, the effective percentage the running pgcanary last evaluated, and its counters (reads by
route, mirrored and unmirrored writes), read from the running pgcanary's admin endpoint.`,
		Example: `  pgcanary status --config examples/pgcanary.yaml`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile == "" {
				return &exitError{code: 2, err: errors.New("--config is required")}
			}
			cfg, err := config.Load(configFile)
			if err != nil {
				return &exitError{code: 2, err: err}
			}
			if adminAddr == "" {
				adminAddr = cfg.Admin.Listen
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Second)
			defer cancel()
			families, err := scrape(ctx, adminAddr)
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("read metrics from pgcanary at %s: %w", adminAddr, err)}
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 2, 4, 2, ' ', 0)
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
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "the configuration file (required)")
	cmd.Flags().StringVar(&adminAddr, "admin", "", "admin address of the running pgcanary (default: admin.listen from the file)")
	return cmd
}

func scrape(ctx context.Context, addr string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
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
