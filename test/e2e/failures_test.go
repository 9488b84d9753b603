package e2e

import (
	"context"
	"encoding/binary"
	"fmt"
	"go.uber.org/goleak"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// 1. Upstream unreachable at connect: FATAL 08001 naming the upstream, then close.
func TestFailureUpstreamUnreachable(t *testing.T) {
	dead := unusedLoopbackAddr(t)
	p := startProxy(t, proxyOpts{upstream: dead})

	// pgx: the connect fails with the proxy's error.
	err := tryConnect(p.dsn(pgtest.SuperUser, ""))
	pe := requirePgErr(t, err, "FATAL", "08001")
	if !strings.Contains(pe.Message, dead) {
		t.Errorf("message %q does not name the upstream %s", pe.Message, dead)
	}

	// Raw: the ErrorResponse is followed by the proxy closing the connection.
	r := dialWire(t, p.addr)
	r.fe.Send(wireStartupMsg(pgtest.SuperUser))
	if err := r.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	e := r.readError(t)
	if e.Severity != "FATAL" || e.Code != "08001" || !strings.Contains(e.Message, dead) {
		t.Errorf("raw client got %+v, want FATAL 08001 naming %s", e, dead)
	}
	r.expectClosed(t)

	if got := gatheredValue(t, p.reg, "pgcanary_upstream_connect_errors_total", nil); got != 2 {
		t.Errorf("pgcanary_upstream_connect_errors_total = %v, want 2", got)
	}
	pollUntil(t, 10*time.Second, func() bool {
		return p.srv.Sessions() == 0 && gatheredValue(t, p.reg, "pgcanary_client_connections", nil) == 0
	}, func() string { return fmt.Sprintf("sessions %d still open", p.srv.Sessions()) })
	if got := gatheredValue(t, p.reg, "pgcanary_client_connections_total", nil); got != 2 {
		t.Errorf("pgcanary_client_connections_total = %v, want 2", got)
	}
}

// 2. Upstream lost mid-session: the proxy reports FATAL 08006 and closes. The network loss is a
// forwarder between the proxy and Postgres whose sockets are closed under it.
func TestFailureUpstreamLost(t *testing.T) {
	direct := directSuperConn(t)

	t.Run("idle", func(t *testing.T) {
		fwd := startCutForwarder(t, cluster.Addr())
		p := startProxy(t, proxyOpts{upstream: fwd.addr()})
		conn := connectDSN(t, dsnWithApp(p.dsn(pgtest.SuperUser, ""), "lost_idle"))
		if _, err := conn.Exec(testCtx(t), "select 1"); err != nil {
			t.Fatal(err)
		}
		fwd.cut(false)
		// The proxy notices at once and closes the session; the FATAL waits in the client's socket.
		pollUntil(t, 10*time.Second, func() bool { return p.srv.Sessions() == 0 },
			func() string { return "session not closed after the upstream went away" })
		_, err := conn.Exec(testCtx(t), "select 1")
		pe := requirePgErr(t, err, "FATAL", "08006")
		if !strings.Contains(pe.Message, fwd.addr()) {
			t.Errorf("message %q does not name the upstream %s", pe.Message, fwd.addr())
		}
		if !conn.IsClosed() {
			t.Error("pgx connection still open after FATAL")
		}
	})

	t.Run("mid-query", func(t *testing.T) {
		fwd := startCutForwarder(t, cluster.Addr())
		p := startProxy(t, proxyOpts{upstream: fwd.addr()})
		conn := connectDSN(t, dsnWithApp(p.dsn(pgtest.SuperUser, ""), "lost_busy"))
		errc := make(chan error, 1)
		go func() {
			_, err := conn.Exec(testCtx(t), "select pg_sleep(5)")
			errc <- err
		}()
		waitBackendRunning(t, direct, "lost_busy", "pg_sleep")
		fwd.cut(true) // RST: a peer that vanished
		select {
		case err := <-errc:
			requirePgErr(t, err, "FATAL", "08006")
		case <-time.After(15 * time.Second):
			t.Fatal("query still running 15s after the upstream was lost")
		}
		pollUntil(t, 10*time.Second, func() bool { return p.srv.Sessions() == 0 },
			func() string { return "session not closed after the upstream went away" })
	})

	// Contrast: Postgres ending the backend itself says so (FATAL 57P01); the proxy relays that and
	// does not add an 08006 of its own.
	t.Run("terminated-idle", func(t *testing.T) {
		p := startProxy(t, proxyOpts{})
		// A raw client reads exactly what arrives; a driver may swallow an unsolicited FATAL.
		w := dialWire(t, p.addr)
		w.startup(t)
		pid := w.simpleQuery(t, "select pg_backend_pid()")
		if _, err := direct.Exec(testCtx(t), "select pg_terminate_backend($1::int)", pid); err != nil {
			t.Fatal(err)
		}
		if e := w.readError(t); e.Severity != "FATAL" || e.Code != "57P01" {
			t.Fatalf("after pg_terminate_backend: %+v, want Postgres's own FATAL 57P01", e)
		}
		w.expectClosed(t)
		pollUntil(t, 10*time.Second, func() bool { return p.srv.Sessions() == 0 },
			func() string { return "session not closed after its backend was terminated" })
	})

	t.Run("terminated-mid-query", func(t *testing.T) {
		p := startProxy(t, proxyOpts{})
		conn := connectDSN(t, dsnWithApp(p.dsn(pgtest.SuperUser, ""), "terminated_busy"))
		var pid int
		if err := conn.QueryRow(testCtx(t), "select pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() {
			// One round trip: pgx's default prepares first, and a terminate landing between its
			// prepare and execute would surface as "conn closed" rather than the relayed FATAL.
			_, err := conn.Exec(testCtx(t), "select pg_sleep(5)", pgx.QueryExecModeSimpleProtocol)
			errc <- err
		}()
		waitBackendRunning(t, direct, "terminated_busy", "pg_sleep")
		if _, err := direct.Exec(testCtx(t), "select pg_terminate_backend($1)", pid); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errc:
			requirePgErr(t, err, "FATAL", "57P01")
		case <-time.After(15 * time.Second):
			t.Fatal("query still running 15s after pg_terminate_backend")
		}
	})
}

// 3. Client gone: the server connection is closed, and nothing leaks.
func TestFailureClientGoneNoLeak(t *testing.T) {
	const app = "leakcheck"
	direct := directSuperConn(t)
	if n := countBackendsByApp(t, direct, app); n != 0 {
		t.Fatalf("%d %s backends before the test", n, app)
	}
	leakOpts := goleak.IgnoreCurrent()
	p := startProxy(t, proxyOpts{})

	const n = 5
	conns := make([]*pgx.Conn, n)
	for i := range conns {
		conns[i] = connectDSN(t, dsnWithApp(p.dsn(pgtest.SuperUser, ""), app))
		if _, err := conns[i].Exec(testCtx(t), "select 1"); err != nil {
			t.Fatal(err)
		}
	}
	// One more client vanishes while its statement runs.
	busy := connectDSN(t, dsnWithApp(p.dsn(pgtest.SuperUser, ""), app))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = busy.Exec(context.Background(), "select pg_sleep(1)")
	}()
	waitBackendRunning(t, direct, app, "pg_sleep")
	if got := countBackendsByApp(t, direct, app); got != n+1 {
		t.Fatalf("%d backends named %s, want %d", got, app, n+1)
	}
	if got := gatheredValue(t, p.reg, "pgcanary_client_connections", nil); got != n+1 {
		t.Fatalf("pgcanary_client_connections = %v, want %d", got, n+1)
	}

	for _, c := range append(conns, busy) {
		c.PgConn().Conn().Close() // the client vanishes without Terminate
	}
	wg.Wait()

	pollUntil(t, 10*time.Second, func() bool {
		return countBackendsByApp(t, direct, app) == 0 && p.srv.Sessions() == 0 &&
			gatheredValue(t, p.reg, "pgcanary_client_connections", nil) == 0
	}, func() string {
		return fmt.Sprintf("backends=%d sessions=%d gauge=%v", countBackendsByApp(t, direct, app), p.srv.Sessions(),
			gatheredValue(t, p.reg, "pgcanary_client_connections", nil))
	})

	p.srv.Close() // idempotent: the t.Cleanup of startProxy closes it again
	goleak.VerifyNone(t, leakOpts)
}

// 4. Malformed client frames after startup: 08P01 and close, other sessions unaffected.
func TestFailureMalformedFrame(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	other := p.connect(t)
	check := func(t *testing.T) {
		t.Helper()
		var n int
		if err := other.QueryRow(testCtx(t), "select $1::int * 2", 21).Scan(&n); err != nil || n != 42 {
			t.Fatalf("other session: got %d, %v", n, err)
		}
	}
	check(t)

	for _, tc := range []struct {
		name  string
		frame []byte
	}{
		{"length 2", []byte{'Q', 0, 0, 0, 2}},
		{"length 0", []byte{'P', 0, 0, 0, 0}},
		{"unknown type z", []byte{'z', 0, 0, 0, 4}},
		{"unknown type NUL", []byte{0, 0, 0, 0, 4}},
		{"query not terminated", []byte{'Q', 0, 0, 0, 12, 's', 'e', 'l', 'e', 'c', 't', ' ', '1'}},
		{"describe without kind", []byte{'D', 0, 0, 0, 4}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dialWire(t, p.addr)
			r.startup(t)
			if got := r.simpleQuery(t, "select 1"); got != "1" {
				t.Fatalf("raw select 1 = %q", got)
			}
			if _, err := r.Write(tc.frame); err != nil {
				t.Fatal(err)
			}
			e := r.readError(t)
			if e.Code != "08P01" || e.Severity != "FATAL" {
				t.Errorf("got %+v, want FATAL 08P01", e)
			}
			r.expectClosed(t)
			check(t)
		})
	}
}

// 4b. Oversized frames: refused with 08P01 before the body is read; a smaller one passes.
func TestFailureOversizedFrame(t *testing.T) {
	p := startProxy(t, proxyOpts{maxMessage: 1 << 20})
	other := p.connect(t)

	t.Run("512KiB works", func(t *testing.T) {
		big := strings.Repeat("x", 512<<10)
		var n int
		if err := other.QueryRow(testCtx(t), "select length('"+big+"')").Scan(&n); err != nil || n != len(big) {
			t.Fatalf("got %d, %v", n, err)
		}
		if err := other.QueryRow(testCtx(t), "select length($1::text)", big).Scan(&n); err != nil || n != len(big) {
			t.Fatalf("as a parameter: got %d, %v", n, err)
		}
	})

	t.Run("2MiB refused", func(t *testing.T) {
		r := dialWire(t, p.addr)
		r.startup(t)
		sql := "select length('" + strings.Repeat("x", 2<<20) + "')"
		msg := make([]byte, 5, 5+len(sql)+1)
		msg[0] = 'Q'
		binary.BigEndian.PutUint32(msg[1:], uint32(4+len(sql)+1))
		msg = append(append(msg, sql...), 0)
		// Write while reading: the proxy answers after the header, long before the body is sent.
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = r.Write(msg)
		}()
		e := r.readError(t)
		if e.Code != "08P01" || e.Severity != "FATAL" {
			t.Errorf("got %+v, want FATAL 08P01", e)
		}
		r.expectClosed(t)
		r.Close()
		wg.Wait()
	})

	t.Run("2MiB via pgx kills only that session", func(t *testing.T) {
		conn := p.connect(t)
		_, err := conn.Exec(testCtx(t), "select length($1::text)", strings.Repeat("y", 2<<20))
		if err == nil {
			t.Fatal("2 MiB parameter accepted with a 1 MiB limit")
		}
		t.Logf("pgx reports: %v", err)
		if _, err := conn.Exec(testCtx(t), "select 1"); err == nil {
			t.Error("session still usable after an oversized frame")
		}
	})

	var n int
	if err := other.QueryRow(testCtx(t), "select 1").Scan(&n); err != nil || n != 1 {
		t.Fatalf("other session after oversized frames: %d, %v", n, err)
	}
}

// 7. Bad startup packets and the negotiation requests.
func TestFailureBadStartup(t *testing.T) {
	p := startProxy(t, proxyOpts{})

	t.Run("length 3", func(t *testing.T) {
		r := dialWire(t, p.addr)
		if _, err := r.Write([]byte{0, 0, 0, 3}); err != nil {
			t.Fatal(err)
		}
		e := r.readError(t)
		if e.Code != "08P01" || e.Severity != "FATAL" {
			t.Errorf("got %+v, want FATAL 08P01", e)
		}
		r.expectClosed(t)
	})

	t.Run("length 20000", func(t *testing.T) {
		r := dialWire(t, p.addr)
		if _, err := r.Write([]byte{0, 0, 0x4e, 0x20}); err != nil {
			t.Fatal(err)
		}
		// Postgres itself closes without a word here; an ErrorResponse, if any, must be 08P01.
		_ = r.SetReadDeadline(time.Now().Add(15 * time.Second))
		msg, err := r.fe.Receive()
		if err == nil {
			e, ok := msg.(*pgproto3.ErrorResponse)
			if !ok || e.Code != "08P01" {
				t.Fatalf("got %T %+v, want 08P01 or a closed connection", msg, msg)
			}
			r.expectClosed(t)
		} else if strings.Contains(err.Error(), "timeout") {
			t.Fatalf("connection still open: %v", err)
		}
	})

	t.Run("unterminated startup parameters", func(t *testing.T) {
		r := dialWire(t, p.addr)
		body := []byte{0, 3, 0, 0, 'u', 's', 'e', 'r', 0, 'p'}
		pkt := binary.BigEndian.AppendUint32(nil, uint32(4+len(body)))
		if _, err := r.Write(append(pkt, body...)); err != nil {
			t.Fatal(err)
		}
		e := r.readError(t)
		if e.Code != "08P01" {
			t.Errorf("got %+v, want 08P01", e)
		}
		r.expectClosed(t)
	})

	t.Run("protocol 2.0", func(t *testing.T) {
		r := dialWire(t, p.addr)
		r.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: 2 << 16, Parameters: map[string]string{"user": pgtest.SuperUser, "database": pgtest.TestDB}})
		if err := r.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		e := r.readError(t)
		if e.Code != "0A000" || e.Severity != "FATAL" {
			t.Errorf("got %+v, want FATAL 0A000", e)
		}
		r.expectClosed(t)
	})

	t.Run("SSLRequest without TLS", func(t *testing.T) {
		r := dialWire(t, p.addr)
		r.fe.Send(&pgproto3.SSLRequest{})
		if err := r.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		if b := r.readByte(t); b != 'N' {
			t.Fatalf("SSLRequest answered %q, want 'N'", b)
		}
		r.startup(t)
		if got := r.simpleQuery(t, "select 'plain'"); got != "plain" {
			t.Fatalf("got %q", got)
		}
	})

	t.Run("GSSENCRequest", func(t *testing.T) {
		r := dialWire(t, p.addr)
		r.fe.Send(&pgproto3.GSSEncRequest{})
		if err := r.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		if b := r.readByte(t); b != 'N' {
			t.Fatalf("GSSENCRequest answered %q, want 'N'", b)
		}
		// libpq then tries SSL, then plaintext: both must still work on the same connection.
		r.fe.Send(&pgproto3.SSLRequest{})
		if err := r.fe.Flush(); err != nil {
			t.Fatal(err)
		}
		if b := r.readByte(t); b != 'N' {
			t.Fatalf("SSLRequest after GSSENCRequest answered %q, want 'N'", b)
		}
		r.startup(t)
		if got := r.simpleQuery(t, "select 'plain'"); got != "plain" {
			t.Fatalf("got %q", got)
		}
	})

	// Nothing of the above disturbed the proxy.
	conn := p.connect(t)
	if _, err := conn.Exec(testCtx(t), "select 1"); err != nil {
		t.Fatal(err)
	}
}

// TestFailureClientGoneCancelsQuery: Postgres notices a closed socket only when it next writes,
// so a client that leaves during a long statement would leave it running. The proxy cancels it.
func TestFailureClientGoneCancelsQuery(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	direct := directSuperConn(t)
	const app = "cancel-on-departure"
	conn := connectDSN(t, dsnWithApp(p.dsn(pgtest.SuperUser, ""), app))
	go func() { _, _ = conn.Exec(context.Background(), "select pg_sleep(60)") }()
	waitBackendRunning(t, direct, app, "pg_sleep(60)")
	_ = conn.PgConn().Conn().Close()
	pollUntil(t, 15*time.Second, func() bool { return countBackendsByApp(t, direct, app) == 0 },
		func() string { return "the backend of a departed client still runs pg_sleep(60)" })
}

// TestFailureClientClosesRightAfterRequest: a client that sends its last request and closes at
// once delivers data and FIN together, which the proxy reads under one readiness event. Whatever
// the last request was, the proxy must still notice the close and end the server session: after
// a Query the answer it writes draws the closed client's reset; after anything else (a pipeline
// with no Sync, a Flush) it confirms the socket is empty before it waits (proxy/pump.go).
func TestFailureClientClosesRightAfterRequest(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	direct := directSuperConn(t)
	extended := func(tail ...pgproto3.FrontendMessage) []pgproto3.FrontendMessage {
		return append([]pgproto3.FrontendMessage{
			&pgproto3.Parse{Query: "select 1"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		}, tail...)
	}
	cases := map[string][]pgproto3.FrontendMessage{
		"query":               {&pgproto3.Query{String: "select 1"}},
		"sync":                extended(&pgproto3.Sync{}),
		"pipeline, no sync":   extended(),
		"flush":               extended(&pgproto3.Flush{}),
		"half a query":        nil, // written by hand below
		"query, then garbage": {&pgproto3.Query{String: "select 1"}},
	}
	for name, msgs := range cases {
		t.Run(name, func(t *testing.T) {
			app := "close-at-once-" + strings.ReplaceAll(name, " ", "-")
			for i := 0; i < 10; i++ {
				r := dialWire(t, p.addr)
				start := wireStartupMsg(pgtest.SuperUser)
				start.Parameters["application_name"] = app
				r.fe.Send(start)
				if err := r.fe.Flush(); err != nil {
					t.Fatal(err)
				}
				r.readUntilReady(t)
				var out []byte
				var err error
				for _, m := range msgs {
					if out, err = m.Encode(out); err != nil {
						t.Fatal(err)
					}
				}
				switch name {
				case "half a query":
					out = []byte{'Q', 0, 0, 0, 13, 's', 'e', 'l'}
				case "query, then garbage":
					out = append(out, 'Q', 0, 0)
				}
				if _, err := r.Write(out); err != nil {
					t.Fatal(err)
				}
				_ = r.Close()
			}
			pollUntil(t, 15*time.Second, func() bool { return countBackendsByApp(t, direct, app) == 0 },
				func() string {
					return fmt.Sprintf("%d server sessions of clients that closed are still open", countBackendsByApp(t, direct, app))
				})
		})
	}
}
