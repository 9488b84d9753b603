package e2e

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// A client that stops reading its answers blocks the proxy's write to it. The session's step then
// waits on the event loop's goroutine: the loop must go on without it (a hand-off), or every other
// session on the loop would wait for that client too.
func TestSlowClientDoesNotStallItsEventLoop(t *testing.T) {
	p := startProxy(t, proxyOpts{eventLoops: 1}) // one loop: both sessions share it
	slow := connectDSN(t, p.dsn(pgtest.SuperUser, ""))
	other := connectDSN(t, p.dsn(pgtest.SuperUser, ""))
	if _, err := other.Exec(testCtx(t), "select 1"); err != nil {
		t.Fatal(err)
	}

	// About 400 MB of rows that the slow client never reads.
	sql := "select repeat('x', 8000) from generate_series(1, 50000)\x00"
	q := make([]byte, 5, 5+len(sql))
	q[0] = 'Q'
	binary.BigEndian.PutUint32(q[1:], uint32(4+len(sql)))
	q = append(q, sql...)
	conn := slow.PgConn().Conn()
	if _, err := conn.Write(q); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Wait until the proxy's output to the slow client stops growing: its socket is full.
	toClient := func() float64 {
		return gatheredValue(t, p.reg, "pgcanary_bytes_total", map[string]string{"direction": "server_to_client"})
	}
	last := toClient()
	pollUntil(t, 20*time.Second, func() bool {
		time.Sleep(200 * time.Millisecond)
		now := toClient()
		stalled := now == last && now > 1<<20
		last = now
		return stalled
	}, func() string { return "the proxy's output to the slow client never stopped" })

	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var n int
		err := other.QueryRow(ctx, "select $1::int", i).Scan(&n)
		cancel()
		if err != nil || n != i {
			t.Fatalf("query %d on another session of the loop: %v (got %d)", i, err, n)
		}
	}
	if got := gatheredValue(t, p.reg, "pgcanary_event_loop_handoffs_total", nil); got < 1 {
		t.Fatalf("pgcanary_event_loop_handoffs_total = %v, want at least 1", got)
	}
}
