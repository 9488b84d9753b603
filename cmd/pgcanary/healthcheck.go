package main

import (
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"
)

// newHealthcheckCmd probes a running pgcanary's admin endpoint. Container images without curl use
// it for HEALTHCHECK; it exits 0 when healthy and 1 otherwise.
func newHealthcheckCmd() *cobra.Command {
	var addr, path string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "healthcheck",
		Short: "Probe a running pgcanary's /healthz (or --path /readyz); exit 0 when it answers 200",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client := &http.Client{Timeout: timeout}
			url := "http://" + addr + path
			resp, err := client.Get(url)
			if err != nil {
				return &exitError{code: 1, err: fmt.Errorf("healthcheck %s: %w", url, err)}
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			if resp.StatusCode != http.StatusOK {
				return &exitError{code: 1, err: fmt.Errorf("healthcheck %s: %s: %s", url, resp.Status, body)}
			}
			fmt.Fprint(cmd.OutOrStdout(), string(body))
			return nil
		},
	}
	cmd.Flags().StringVar(&addr, "admin", "127.0.0.1:9187", "admin address of the pgcanary to probe")
	cmd.Flags().StringVar(&path, "path", "/healthz", "endpoint to probe: /healthz or /readyz")
	cmd.Flags().DurationVar(&timeout, "timeout", 3*time.Second, "how long to wait for an answer")
	return cmd
}
