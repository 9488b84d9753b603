// Package e2e tests pgcanary end to end: real drivers (pgx, lib/pq, psql) through the proxy to a
// throwaway PostgreSQL cluster started by test/pgtest.
package e2e
