package proxy

import (
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// sinkConn is a connection that takes every write and never has anything to read: the session's
// own work per message, without the system calls around it.
type sinkConn struct{ n int }

func (c *sinkConn) Write(p []byte) (int, error)      { c.n += len(p); return len(p), nil }
func (c *sinkConn) Read([]byte) (int, error)         { return 0, net.ErrClosed }
func (c *sinkConn) Close() error                     { return nil }
func (c *sinkConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *sinkConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *sinkConn) SetDeadline(time.Time) error      { return nil }
func (c *sinkConn) SetReadDeadline(time.Time) error  { return nil }
func (c *sinkConn) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkSessionPassthrough is the proxy's user-space work for one `pgbench -S` transaction,
// without migrations: the client's request in, the server's answer out, each a run of messages as
// the pumps hand them on, each direction flushed once (by the run's handler, as when the
// pump waits next). Here the session's state stays in the
// cache; under load it does not, which bench/floor.sh measures (the same transaction with its
// system calls).
func BenchmarkSessionPassthrough(b *testing.B) {
	rowDesc := []byte("\x00\x01abalance\x00\x00\x00\x40\x00\x00\x03\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00")
	dataRow := []byte("\x00\x01\x00\x00\x00\x040000")
	for _, tc := range []struct {
		name            string
		request, answer [][2][]byte // type, body
	}{
		{"simple",
			[][2][]byte{{{'Q'}, queryBody("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;")}},
			[][2][]byte{{{'T'}, rowDesc}, {{'D'}, dataRow}, {{'C'}, []byte("SELECT 1\x00")}, {{'Z'}, []byte("I")}}},
		{"prepared", // Bind, Describe, Execute, Sync of a statement prepared once (libpq's)
			[][2][]byte{{{'B'}, []byte("\x00P0_1\x00\x00\x00\x00\x01\x00\x00\x00\x0512345\x00\x00")},
				{{'D'}, []byte("P\x00")}, {{'E'}, []byte("\x00\x00\x00\x00\x00")}, {{'S'}, nil}},
			[][2][]byte{{{'2'}, nil}, {{'T'}, rowDesc}, {{'D'}, dataRow}, {{'C'}, []byte("SELECT 1\x00")}, {{'Z'}, []byte("I")}}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			encode := func(msgs [][2][]byte) (out []byte) {
				for _, m := range msgs {
					out = appendMessage(out, m[0][0], m[1])
				}
				return out
			}
			request, answer := encode(tc.request), encode(tc.answer)
			s := benchSession(b)
			b.ReportAllocs()
			for b.Loop() {
				if err := s.onClientMessages(request, true); err != nil {
					b.Fatal(err)
				}
				if err := s.onServerMessages(answer, true); err != nil {
					b.Fatal(err)
				}
			}
			if s.fifo.len() != 0 {
				b.Fatalf("%d requests left unanswered", s.fifo.len())
			}
		})
	}
}

// benchSession is a session past startup whose connections are sinks.
func benchSession(b *testing.B) *session {
	srv, err := New(Config{Listen: "127.0.0.1:0", Upstream: Upstream{Addr: "127.0.0.1:1"}, EventLoops: -1,
		Metrics: NewPromMetrics(prometheus.NewRegistry())})
	if err != nil {
		b.Fatal(err)
	}
	s := newSession(srv, &sinkConn{}, nil)
	s.server = &sinkConn{}
	s.startSettings(newSettingState(`"$user", public`), newUserState("postgres", "postgres"))
	s.ready = true
	return s
}
