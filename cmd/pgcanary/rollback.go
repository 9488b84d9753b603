package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgcanary/pgcanary/canary"
	"github.com/pgcanary/pgcanary/config"
)

// apiTimeout bounds one admin API request of the operator commands.
const apiTimeout = 10 * time.Second

func newRollbackCmd() *cobra.Command {
	var configFile, adminAddr, reason string
	cmd := &cobra.Command{
		Use:   "rollback --config FILE MIGRATION",
		Short: "Engage a migration's kill switch in the running pgcanary: reads go back to the old shape",
		Long: `Engage MIGRATION's kill switch in the running pgcanary, through its admin API
(POST /v1/migrations/MIGRATION/rollback). From then on every read of the migration is served by
the old shape, whatever the read-percent flag says; writes stay mirrored. The switch holds until
'pgcanary resume' (and across restarts when shadow.state_file is set). An engaged switch keeps its
first reason.

The request carries the bearer token read from the configuration's admin.token_file, which must
be the file the running pgcanary reads. Exit 0 when the switch is engaged, 1 when pgcanary is
unreachable or refuses (unknown migration, wrong token), 2 on a usage or configuration error.`,
		Example: `  pgcanary rollback --config examples/pgcanary.yaml users-split-name
  pgcanary rollback --config pgcanary.yaml --reason "wrong last names for 3 users" users-split-name
  pgcanary rollback --config pgcanary.yaml --admin 10.0.0.7:9187 orders-cents`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			client, err := operatorClient(configFile, adminAddr, "rollback")
			if err != nil {
				return err
			}
			var body any
			if reason != "" {
				body = map[string]string{"reason": reason}
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), apiTimeout)
			defer cancel()
			var st canary.Status
			if err := client.call(ctx, http.MethodPost, "/v1/migrations/"+url.PathEscape(name)+"/rollback", body, &st); err != nil {
				return client.failure("roll back "+name, err)
			}
			ks := st.KillSwitch
			if !ks.Engaged {
				return &exitError{code: 1, err: fmt.Errorf("roll back %s: pgcanary at %s answered, but its kill switch is not engaged", name, client.addr)}
			}
			if reason != "" && ks.Reason != reason && ks.Since != nil {
				fmt.Fprintf(cmd.OutOrStdout(), "%s: kill switch already engaged since %s (reason: %s): reads go to the old shape\n",
					st.Name, ks.Since.Format(time.RFC3339), ks.Reason)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: kill switch engaged (reason: %s): reads go to the old shape\n", st.Name, ks.Reason)
			return nil
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "the configuration file (required)")
	cmd.Flags().StringVar(&adminAddr, "admin", "", "admin address of the running pgcanary (default: admin.listen from the file)")
	cmd.Flags().StringVar(&reason, "reason", "", `why, kept with the switch and shown by status (default "rolled back by an operator")`)
	return cmd
}

func newResumeCmd() *cobra.Command {
	var configFile, adminAddr string
	cmd := &cobra.Command{
		Use:   "resume --config FILE MIGRATION",
		Short: "Release a migration's kill switch in the running pgcanary: reads follow the flag again",
		Long: `Release MIGRATION's kill switch in the running pgcanary, through its admin API
(POST /v1/migrations/MIGRATION/resume), whether an operator ('pgcanary rollback') or the canary
judge engaged it. Reads follow the read-percent flag again, and the judge starts a fresh window,
so the evidence from before the fix cannot fail the canary again. Prints the read percentage now
in effect; lower the flag first ('pgcanary ramp') to resume carefully.

The request carries the bearer token read from the configuration's admin.token_file. Exit codes
as for rollback: 0 done, 1 unreachable or refused, 2 usage or configuration error.`,
		Example: `  pgcanary ramp --config examples/pgcanary.yaml users-split-name 5
  pgcanary resume --config examples/pgcanary.yaml users-split-name`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := args[0]
			client, err := operatorClient(configFile, adminAddr, "resume")
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), apiTimeout)
			defer cancel()
			var st canary.Status
			if err := client.call(ctx, http.MethodPost, "/v1/migrations/"+url.PathEscape(name)+"/resume", nil, &st); err != nil {
				return client.failure("resume "+name, err)
			}
			if st.KillSwitch.Engaged { // the judge failed the fresh window at once
				return &exitError{code: 1, err: fmt.Errorf("resume %s: the kill switch is engaged again (reason: %s)", name, st.KillSwitch.Reason)}
			}
			msg := fmt.Sprintf("%s: kill switch released: reads follow the flag again (%s%%)", st.Name, formatNumber(st.EffectivePercent))
			if st.FlagError != "" {
				msg += "; flag " + st.ReadPercentFlag + ": " + st.FlagError
			}
			fmt.Fprintln(cmd.OutOrStdout(), msg)
			return nil
		},
	}
	cmd.Flags().StringVar(&configFile, "config", "", "the configuration file (required)")
	cmd.Flags().StringVar(&adminAddr, "admin", "", "admin address of the running pgcanary (default: admin.listen from the file)")
	return cmd
}

// operatorClient loads the configuration for a mutating command: the token is required.
func operatorClient(configFile, adminAddr, command string) (*apiClient, error) {
	if configFile == "" {
		return nil, &exitError{code: 2, err: errors.New("--config is required")}
	}
	cfg, err := config.Load(configFile)
	if err != nil {
		return nil, &exitError{code: 2, err: err}
	}
	if cfg.Admin.TokenFile == "" {
		return nil, &exitError{code: 2, err: fmt.Errorf("%s: %s needs the admin bearer token, and %s sets no admin.token_file: set admin.token_file to the token file of the running pgcanary",
			command, command, configFile)}
	}
	token, err := adminToken(cfg)
	if err != nil {
		return nil, &exitError{code: 2, err: fmt.Errorf("%s: %w", command, err)}
	}
	return newAPIClient(cfg, adminAddr, token), nil
}

// apiClient talks to the admin JSON API of a running pgcanary.
type apiClient struct {
	addr  string // as given (host:port), for messages
	base  string // http://host:port
	token string // "" sends no Authorization header
	http  *http.Client
}

// newAPIClient addresses adminAddr, or the configuration's admin.listen when it is empty.
func newAPIClient(cfg *config.Config, adminAddr, token string) *apiClient {
	if adminAddr == "" {
		adminAddr = cfg.Admin.Listen
	}
	base := adminAddr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &apiClient{addr: adminAddr, base: strings.TrimSuffix(base, "/"), token: token, http: &http.Client{}}
}

// apiError is an answer other than 2xx; Message is the server's {"error": ...} or the body's start.
type apiError struct {
	Code    int
	Status  string
	Message string
}

func (e *apiError) Error() string { return e.Status + ": " + e.Message }

// call sends body (JSON; nil for none) and decodes a 2xx answer into out (nil: ignore it). An
// answer other than 2xx comes back as *apiError.
func (c *apiClient) call(ctx context.Context, method, path string, body, out any) error {
	var reader io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		reader = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, reader)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s %s: read body: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &apiError{Code: resp.StatusCode, Status: resp.Status}
		var msg struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(raw, &msg) == nil && msg.Error != "" {
			e.Message = msg.Error
		} else {
			e.Message = strings.TrimSpace(string(raw[:min(len(raw), 512)]))
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

// failure turns an error of call into the command's exit error (code 1), naming what was done
// and the address, with a hint for the authorization answers.
func (c *apiClient) failure(action string, err error) error {
	var ae *apiError
	if !errors.As(err, &ae) {
		return &exitError{code: 1, err: fmt.Errorf("%s: read the answer from pgcanary at %s: %w", action, c.addr, err)}
	}
	hint := ""
	switch ae.Code {
	case http.StatusUnauthorized:
		hint = " (admin.token_file here must hold the token the running pgcanary reads)"
	case http.StatusForbidden:
		hint = " (set admin.token_file in the running pgcanary's configuration and restart it)"
	case http.StatusNotFound:
		if !strings.Contains(ae.Message, "migration") {
			hint = " (this pgcanary serves no migrations API: it needs migrations and side_dsn in its configuration)"
		}
	}
	return &exitError{code: 1, err: fmt.Errorf("%s: pgcanary at %s answered %s%s", action, c.addr, ae, hint)}
}

// formatNumber prints a float without trailing zeros (25, 2.5).
func formatNumber(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }
