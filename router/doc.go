// Package router analyses SQL statements and builds rewrite plans: which migrations a statement
// touches, the forms it can be sent in, and how to restore what the client expects to see.
package router
