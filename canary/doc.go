// Package canary runs each migration's canary: it samples reads for one-snapshot comparisons,
// feeds the judge, holds the kill switches, and answers the admin API about migrations.
package canary
