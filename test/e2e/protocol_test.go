package e2e

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// rawClient is a hand-driven protocol client for messages drivers do not send (FunctionCall,
// odd protocol versions).
type rawClient struct {
	t    testing.TB
	conn net.Conn
	fe   *pgproto3.Frontend
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { conn.Close() })
	return &rawClient{t: t, conn: conn, fe: pgproto3.NewFrontend(conn, conn)}
}

// startup logs in as the trust-authenticated superuser and reads up to ReadyForQuery.
func (c *rawClient) startup(params map[string]string) []pgproto3.BackendMessage {
	c.t.Helper()
	if params == nil {
		params = map[string]string{}
	}
	params["user"] = pgtest.SuperUser
	params["database"] = pgtest.TestDB
	c.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: params})
	if err := c.fe.Flush(); err != nil {
		c.t.Fatal(err)
	}
	return c.readUntilReady()
}

func (c *rawClient) readUntilReady() []pgproto3.BackendMessage {
	c.t.Helper()
	var msgs []pgproto3.BackendMessage
	for {
		m, err := c.fe.Receive()
		if err != nil {
			c.t.Fatalf("receive after %d messages: %v", len(msgs), err)
		}
		msgs = append(msgs, copyMsg(m))
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			return msgs
		}
	}
}

// copyMsg detaches the few message types tests inspect from pgproto3's reused buffers.
func copyMsg(m pgproto3.BackendMessage) pgproto3.BackendMessage {
	switch m := m.(type) {
	case *pgproto3.FunctionCallResponse:
		return &pgproto3.FunctionCallResponse{Result: append([]byte(nil), m.Result...)}
	case *pgproto3.BackendKeyData:
		return &pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: append([]byte(nil), m.SecretKey...)}
	case *pgproto3.ErrorResponse:
		c := *m
		return &c
	case *pgproto3.NegotiateProtocolVersion:
		return &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: m.NewestMinorProtocol, UnrecognizedOptions: append([]string(nil), m.UnrecognizedOptions...)}
	case *pgproto3.ReadyForQuery:
		return &pgproto3.ReadyForQuery{TxStatus: m.TxStatus}
	case *pgproto3.ParameterStatus:
		return &pgproto3.ParameterStatus{Name: m.Name, Value: m.Value}
	}
	return m
}

func TestFunctionCall(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	c := dialRaw(t, p.addr)
	c.startup(nil)
	// int4pl(int4, int4) has the fixed OID 177.
	arg := func(v int32) []byte { b := make([]byte, 4); binary.BigEndian.PutUint32(b, uint32(v)); return b }
	c.fe.Send(&pgproto3.FunctionCall{Function: 177, ArgFormatCodes: []uint16{1}, Arguments: [][]byte{arg(40), arg(2)}, ResultFormatCode: 1})
	if err := c.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msgs := c.readUntilReady()
	fr, ok := msgs[0].(*pgproto3.FunctionCallResponse)
	if !ok || len(fr.Result) != 4 || binary.BigEndian.Uint32(fr.Result) != 42 {
		t.Fatalf("function call response: %#v", msgs)
	}
}

// TestProtocolNegotiation asks for protocol 3.2 with an unknown _pq_ option: PostgreSQL 15
// answers NegotiateProtocolVersion, which the proxy relays, and the session works on 3.0.
func TestProtocolNegotiation(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	c := dialRaw(t, p.addr)
	c.fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion32, Parameters: map[string]string{
		"user": pgtest.SuperUser, "database": pgtest.TestDB, "_pq_.pgcanary_test": "on",
	}})
	if err := c.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msgs := c.readUntilReady()
	var npv *pgproto3.NegotiateProtocolVersion
	var key *pgproto3.BackendKeyData
	for _, m := range msgs {
		switch m := m.(type) {
		case *pgproto3.NegotiateProtocolVersion:
			npv = m
		case *pgproto3.BackendKeyData:
			key = m
		}
	}
	if cluster.Version < 180000 {
		if npv == nil || len(npv.UnrecognizedOptions) != 1 || npv.UnrecognizedOptions[0] != "_pq_.pgcanary_test" {
			t.Fatalf("no NegotiateProtocolVersion relayed: %#v", msgs)
		}
	}
	if key == nil || len(key.SecretKey) < 4 {
		t.Fatalf("no BackendKeyData: %#v", msgs)
	}
	c.fe.Send(&pgproto3.Query{String: "select 1"})
	_ = c.fe.Flush()
	c.readUntilReady()
}

// TestBackendKeyIsProxys checks clients never see the server's real key: the pid the client gets
// is not the backend's pid.
func TestBackendKeyIsProxys(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	conn := p.connect(t)
	var pid uint32
	if err := conn.QueryRow(testCtx(t), "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if conn.PgConn().PID() == pid {
		t.Fatalf("client sees the server backend's pid %d", pid)
	}
}

func TestNoticesAndParameterStatus(t *testing.T) {
	p := startProxy(t, proxyOpts{})
	ctx := testCtx(t)
	cfg, err := pgx.ParseConfig(p.dsn(pgtest.SuperUser, ""))
	if err != nil {
		t.Fatal(err)
	}
	notices := make(chan string, 4)
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices <- n.Message }
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "do $$ begin raise notice 'hello from plpgsql'; end $$"); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-notices:
		if n != "hello from plpgsql" {
			t.Fatalf("notice %q", n)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no notice relayed")
	}
	if _, err := conn.Exec(ctx, "set application_name = 'pgcanary-ps-test'"); err != nil {
		t.Fatal(err)
	}
	if v := conn.PgConn().ParameterStatus("application_name"); v != "pgcanary-ps-test" {
		t.Fatalf("ParameterStatus application_name = %q", v)
	}
	if v := conn.PgConn().ParameterStatus("server_version"); v == "" {
		t.Fatal("no server_version ParameterStatus from startup")
	}
}
