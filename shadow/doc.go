// Package shadow compares the old and new shapes' answers to sampled reads in one snapshot,
// records mismatches, and judges each migration's canary.
package shadow
