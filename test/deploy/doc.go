// Package deploy tests the deployment material: the Dockerfile (image_test.go: without a Docker
// engine, the binary built as its build stage does, its libraries against the runtime image, and,
// as root, the image's CMD and HEALTHCHECK run as its user in a bare root), and under deploy/ the
// Kubernetes example, the Prometheus rules and their unit tests, the Grafana dashboard and the
// Argo Rollouts analysis templates.
//
// The tests need no database. They check that every metric the rules, the dashboard and the
// analysis templates query is one the code registers (names scanned from the repository's Go
// source, histogram suffixes and label names included), that the Kubernetes manifests wire the
// sidecar as documented (probes, drain, the embedded configuration and flag file, which are
// decoded with pgcanary's own config and flags packages), and, when promtool is on PATH (the
// Debian package prometheus), that promtool accepts the rules, passes their unit tests and parses
// every PromQL expression of the dashboard and the templates.
package deploy
