// Package proxy speaks the PostgreSQL wire protocol to clients and relays each session to the
// upstream server: startup, TLS, authentication relay, cancel forwarding and a message-aware
// session loop that tracks every request's expected response in a FIFO.
package proxy
