// Package admin serves pgcanary's operator HTTP endpoints: health probes, /metrics, and the JSON
// API over migrations (/v1/migrations...) with its bearer-token rule.
package admin
