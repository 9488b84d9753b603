package e2e

// Drain on SIGTERM/SIGINT, tested on the real binary: `pgcanary serve` stops accepting, lets each
// session finish its transaction for up to --drain-timeout, closes the rest and exits 0.

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// drainTable creates a table for the test and drops it afterwards.
func drainTable(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("drain_%d", time.Now().UnixNano())
	if err := cluster.Exec(testCtx(t), "create table "+name+" (x int)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.Exec(testCtx(t), "drop table if exists "+name) })
	return name
}

func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(testCtx(t), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func rowCount(t *testing.T, table string) int {
	t.Helper()
	var n int
	if err := directSuperConn(t).QueryRow(testCtx(t), "select count(*) from "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Case A: a transaction open at SIGTERM may run statements and commit; the session is closed
// (57P01) right after, new clients are refused meanwhile, and the process exits 0 as soon as the
// last session is gone, well before the drain timeout.
func TestDrainOpenTransactionCommits(t *testing.T) {
	const drainTimeout = 30 * time.Second
	bp := startServeBinary(t, "", drainTimeout)
	table := drainTable(t)
	conn := connectDSN(t, bp.dsn(pgtest.SuperUser, ""))
	mustExec(t, conn, "begin")
	mustExec(t, conn, "insert into "+table+" values (1)")

	bp.signal(t, syscall.SIGTERM)
	bp.waitLog(t, "shutting down")
	waitListenerRefusing(t, bp.listen)
	if err := tryConnect(bp.dsn(pgtest.SuperUser, "")); err == nil {
		t.Error("a new client was accepted while draining")
	}

	mustExec(t, conn, "insert into "+table+" values (2)")
	var n int
	if err := conn.QueryRow(testCtx(t), "select count(*) from "+table+" where x > $1", 0).Scan(&n); err != nil || n != 2 {
		t.Fatalf("extended-protocol query in the draining transaction: %d, %v", n, err)
	}
	mustExec(t, conn, "commit")

	// The proxy sends FATAL 57P01 right after the COMMIT's ReadyForQuery and closes. pgx either
	// reads it as the answer to the next statement or has already seen it and marked the
	// connection closed; either way the next statement fails. (TestDrainIdleClientsClosedPromptly
	// checks the 57P01 on the wire.)
	_, err := conn.Exec(testCtx(t), "select 1")
	if err == nil {
		t.Fatal("the session stayed open after its transaction ended during drain")
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		requirePgErr(t, err, "FATAL", "57P01")
	}

	if code := bp.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	if got := rowCount(t, table); got != 2 {
		t.Errorf("%d rows committed, want 2", got)
	}
}

// Case B: a transaction that never ends is closed at the drain timeout and the process still
// exits 0; the server rolls the transaction back.
func TestDrainStuckTransactionTimesOut(t *testing.T) {
	const drainTimeout = 3 * time.Second
	const app = "drain_stuck"
	bp := startServeBinary(t, "", drainTimeout)
	table := drainTable(t)
	direct := directSuperConn(t)
	conn := connectDSN(t, dsnWithApp(bp.dsn(pgtest.SuperUser, ""), app))
	mustExec(t, conn, "begin")
	mustExec(t, conn, "insert into "+table+" values (1)")

	start := time.Now()
	bp.signal(t, syscall.SIGTERM)
	if code := bp.waitExit(t, drainTimeout+10*time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	// Timers never fire early: exiting before half the timeout would mean the transaction was not
	// given its time.
	if elapsed := time.Since(start); elapsed < drainTimeout/2 {
		t.Errorf("exited after %s, before the drain timeout %s, while a transaction was open", elapsed, drainTimeout)
	}
	if _, err := conn.Exec(testCtx(t), "select 1"); err == nil {
		t.Error("client connection still works after the drain timeout")
	}
	pollUntil(t, 10*time.Second, func() bool { return countBackendsByApp(t, direct, app) == 0 },
		func() string { return "the server backend outlived the proxy" })
	if got := rowCount(t, table); got != 0 {
		t.Errorf("%d rows of the unfinished transaction were committed", got)
	}
}

// Case C: idle clients are closed at once with 57P01 and the process exits promptly.
func TestDrainIdleClientsClosedPromptly(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			const drainTimeout = 30 * time.Second
			bp := startServeBinary(t, "", drainTimeout)
			conns := make([]*pgx.Conn, 3)
			for i := range conns {
				conns[i] = connectDSN(t, bp.dsn(pgtest.SuperUser, ""))
				mustExec(t, conns[i], "select 1")
			}
			bp.signal(t, sig)
			// Well below the drain timeout: nothing had to be waited for.
			if code := bp.waitExit(t, 10*time.Second); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
			for _, c := range conns {
				_, err := c.Exec(testCtx(t), "select 1")
				requirePgErr(t, err, "FATAL", "57P01")
			}
		})
	}
}

// No clients at all: the signal ends the process at once with status 0.
func TestDrainNoClients(t *testing.T) {
	bp := startServeBinary(t, "", 30*time.Second)
	bp.signal(t, syscall.SIGTERM)
	if code := bp.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

// A client still authenticating when the drain starts has no transaction to finish: once its
// authentication ends it is idle, and must be closed (or refused) then, not kept open until the
// drain timeout.
func TestDrainClientAuthenticatingWhenDrainStarts(t *testing.T) {
	if cluster.External {
		t.Skip("needs the cluster's pg_hba.conf (password auth for ClearUser) to pause a client mid-authentication")
	}
	const drainTimeout = 60 * time.Second
	bp := startServeBinary(t, "", drainTimeout)
	r := dialWire(t, bp.listen)
	r.fe.Send(wireStartupMsg(pgtest.ClearUser))
	if err := r.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			t.Fatalf("waiting for the password request: %v", err)
		}
		if _, ok := msg.(*pgproto3.AuthenticationCleartextPassword); ok {
			break
		}
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			t.Fatalf("startup failed: %s %s", e.Code, e.Message)
		}
	}

	bp.signal(t, syscall.SIGTERM)
	bp.waitLog(t, "shutting down")
	waitListenerRefusing(t, bp.listen)
	time.Sleep(100 * time.Millisecond) // let Shutdown reach this session's drain

	r.fe.Send(&pgproto3.PasswordMessage{Password: pgtest.ClearPassword})
	if err := r.fe.Flush(); err != nil {
		t.Fatal(err)
	}
	_ = r.SetReadDeadline(time.Now().Add(10 * time.Second))
	var seen []string
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("session still open 10s after it finished authenticating during the drain "+
					"(drain timeout %s); messages: %s", drainTimeout, strings.Join(seen, ", "))
			}
			break // closed
		}
		seen = append(seen, fmt.Sprintf("%T", msg))
		if e, ok := msg.(*pgproto3.ErrorResponse); ok {
			if e.Code != "57P01" && e.Code != "57P03" {
				t.Errorf("got error %s %s %q, want 57P01 or 57P03", e.Severity, e.Code, e.Message)
			}
		}
	}
	if code := bp.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}

// A connection that has not even sent its startup packet holds no transaction either: it must not
// keep the process alive until the drain timeout.
func TestDrainSilentConnectionDoesNotDelayExit(t *testing.T) {
	const drainTimeout = 60 * time.Second
	bp := startServeBinary(t, "", drainTimeout)
	c, err := net.DialTimeout("tcp", bp.listen, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	pollUntil(t, 10*time.Second, func() bool {
		_, body := adminGet(t, "http://"+bp.admin+"/metrics")
		return parsePromText(t, body)["pgcanary_client_connections"] == 1
	}, func() string { return "the proxy never counted the connection" })

	bp.signal(t, syscall.SIGTERM)
	if code := bp.waitExit(t, 10*time.Second); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
}
