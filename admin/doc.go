// Package admin serves pgcanary's operator HTTP endpoints: /healthz, /readyz and /metrics.
package admin
