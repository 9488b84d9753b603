//go:build linux

package proxy

import (
	"bytes"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"go.uber.org/goleak"
)

// startLoop starts an event loop for a test. When the test ends the loop stops, after the
// test's own cleanups (its connections close first), and no goroutine the test started may be left.
func startLoop(t *testing.T) *eventLoop {
	t.Helper()
	return startLoopWith(t, nopMetrics{}, 0, loopTuning{contended: busyPollContended})
}

// startLoopWith is startLoop with the loop's metrics and busy poll.
func startLoopWith(t *testing.T, m Metrics, busyPoll time.Duration, tune loopTuning) *eventLoop {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	l, err := startEventLoop(m, busyPoll, tune)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.stop()
		goleak.VerifyNone(t, ignore)
	})
	return l
}

// loopPair returns a connected pair of TCP sockets: one moved onto l, and its peer.
func loopPair(t *testing.T, l *eventLoop) (*loopConn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peer, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	conns, err := detachConns(l, newSysConn(c))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conns[0].Close() })
	return conns[0], peer
}

// waitRegistered waits until n pumps are registered on l, so what is sent next is read by the
// loop's goroutine rather than by the first step, which runs on the pump's caller.
func waitRegistered(t *testing.T, l *eventLoop, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l.mu.Lock()
		got := l.regs.len()
		l.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pumps registered, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

func noFlush() error { return nil }

// releaseLater returns a channel for a test's step to block on and the function that closes it
// (once). The test's end closes it too, before the loop stops: the loop waits for its steps, and
// a test that fails while one is blocked would otherwise hang.
func releaseLater(t *testing.T) (<-chan struct{}, func()) {
	release := make(chan struct{})
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(unblock)
	return release, unblock
}

var syncMessage = []byte{'S', 0, 0, 0, 4}

// A step that blocks on the loop's goroutine must not stall the other sessions on the loop.
func TestEventLoopHandsOffBeforeBlocking(t *testing.T) {
	l := startLoop(t)
	a, aPeer := loopPair(t, l)
	b, bPeer := loopPair(t, l)

	blocked := make(chan struct{})
	release, unblock := releaseLater(t)
	pa := newPump(nil, 1<<20, func(byte, []byte) error {
		close(blocked)
		l.beforeBlock() // what a full socket, a gate or a settle wait does before it waits
		<-release
		return errStopPump
	}, noFlush, nil)
	got := make(chan byte, 1)
	pb := newPump(nil, 1<<20, func(typ byte, _ []byte) error {
		got <- typ
		return errStopPump
	}, noFlush, nil)
	done := make(chan error, 2)
	go func() { done <- pa.runOnLoop(l, a, laneAnswers) }()
	go func() { done <- pb.runOnLoop(l, b, laneAnswers) }()
	waitRegistered(t, l, 2)

	if _, err := aPeer.Write(syncMessage); err != nil {
		t.Fatal(err)
	}
	<-blocked
	if _, err := bPeer.Write(syncMessage); err != nil {
		t.Fatal(err)
	}
	select {
	case typ := <-got:
		if typ != 'S' {
			t.Fatalf("second session read message %q", typ)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a session blocked on the loop's goroutine stalled another session on the loop")
	}
	unblock()
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("pump: %v", err)
		}
	}
	if n := l.handoffs.Load(); n != 1 {
		t.Fatalf("%d hand-offs, want 1", n)
	}
}

// Messages split across reads, and many of them in one read, reach the handler whole and in order.
func TestEventLoopPumpsMessagesInOrder(t *testing.T) {
	l := startLoop(t)
	a, aPeer := loopPair(t, l)
	var got []byte
	p := newPump(nil, 1<<20, func(typ byte, body []byte) error {
		if typ == 'X' {
			return errStopPump
		}
		got = append(got, body...)
		return nil
	}, noFlush, clientMayRest)
	done := make(chan error, 1)
	go func() { done <- p.runOnLoop(l, a, laneAnswers) }()
	waitRegistered(t, l, 1)

	var want, stream []byte
	for i := range 2000 {
		body := bytes.Repeat([]byte{byte(i)}, i%300)
		want = append(want, body...)
		stream = appendMessage(stream, 'd', body)
	}
	stream = appendMessage(stream, 'X', nil)
	for len(stream) > 0 { // odd-sized writes split headers and bodies
		n := min(len(stream), 777)
		if _, err := aPeer.Write(stream[:n]); err != nil {
			t.Fatal(err)
		}
		stream = stream[n:]
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("pump: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("pump did not end")
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("got %d bytes of bodies, want %d (or different content)", len(got), len(want))
	}
}

// Closing a connection ends its pump waiting on the loop, and the peer sees the close.
func TestEventLoopCloseEndsPump(t *testing.T) {
	l := startLoop(t)
	a, aPeer := loopPair(t, l)
	p := newPump(nil, 1<<20, func(byte, []byte) error { return nil }, noFlush, nil)
	done := make(chan error, 1)
	go func() { done <- p.runOnLoop(l, a, laneAnswers) }()
	waitRegistered(t, l, 1)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("pump ended with %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pump still running after Close")
	}
	_ = aPeer.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := aPeer.Read(make([]byte, 1)); err == nil {
		t.Fatalf("peer read %d bytes after close", n)
	}
	if _, err := a.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v, want net.ErrClosed", err)
	}
}

// A write waiting for room ends at its deadline, and at Close.
func TestLoopConnBlockedWriteEnds(t *testing.T) {
	l := startLoop(t)
	a, _ := loopPair(t, l) // the peer never reads
	big := make([]byte, 64<<20)

	result := make(chan error, 1)
	go func() {
		_, err := a.Write(big)
		result <- err
	}()
	time.Sleep(50 * time.Millisecond) // the socket fills
	if err := a.SetWriteDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-result:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("write ended with %v, want a deadline error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("write still blocked after its deadline")
	}

	_ = a.SetWriteDeadline(time.Time{})
	go func() {
		_, err := a.Write(big)
		result <- err
	}()
	time.Sleep(50 * time.Millisecond)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-result:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("write ended with %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("write still blocked after Close")
	}
}

// A session streaming more than the proxy relays at once (its socket never empties) yields to the
// other sessions on its loop after loopStepBudget bytes: a server sending a large result, or a
// client sending a COPY, whose requests must not keep other sessions' answers waiting.
func TestEventLoopStreamingSessionYields(t *testing.T) {
	for _, tc := range []struct {
		name          string
		stream, other loopLane
	}{
		{"answers", laneAnswers, laneAnswers},
		{"requests", laneRequests, laneAnswers},
	} {
		t.Run(tc.name, func(t *testing.T) { testStreamingSessionYields(t, tc.stream, tc.other) })
	}
}

func testStreamingSessionYields(t *testing.T, stream, other loopLane) {
	l := startLoop(t)
	a, aPeer := loopPair(t, l)
	b, bPeer := loopPair(t, l)
	var sink byte
	pa := newPump(nil, 1<<20, func(typ byte, body []byte) error {
		if typ == 'X' {
			return errStopPump
		}
		for i := range 20000 { // work per message (planning, copying): the proxy is the bottleneck
			sink ^= body[i%len(body)]
		}
		return nil
	}, noFlush, nil)
	got := make(chan time.Time, 1)
	pb := newPump(nil, 1<<20, func(typ byte, _ []byte) error {
		if typ == 'X' {
			return errStopPump
		}
		got <- time.Now()
		return nil
	}, noFlush, nil)
	done := make(chan error, 2)
	go func() { done <- pa.runOnLoop(l, a, stream) }()
	go func() { done <- pb.runOnLoop(l, b, other) }()
	waitRegistered(t, l, 2)

	var chunk []byte
	for len(chunk) < 1<<20 {
		chunk = appendMessage(chunk, 'd', make([]byte, 8000))
	}
	stop := make(chan struct{})
	streamed := make(chan struct{})
	go func() {
		defer close(streamed)
		for {
			select {
			case <-stop:
				_, _ = aPeer.Write(appendMessage(nil, 'X', nil))
				return
			default:
			}
			if _, err := aPeer.Write(chunk); err != nil {
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond) // the stream is under way
	var worst time.Duration
	for range 5 {
		sent := time.Now()
		if _, err := bPeer.Write(syncMessage); err != nil {
			t.Fatal(err)
		}
		select {
		case at := <-got:
			worst = max(worst, at.Sub(sent))
		case <-time.After(5 * time.Second):
			close(stop)
			t.Fatal("a session got no service in 5 s while another on its loop streamed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	<-streamed
	_, _ = bPeer.Write(appendMessage(nil, 'X', nil))
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("pump: %v", err)
		}
	}
	t.Logf("worst %v", worst)
	if worst > time.Second {
		t.Fatalf("a session waited %v while another on its loop streamed", worst)
	}
	_ = sink
}

// Of the events one wait brings, a client's request is dispatched before a server's answer that
// came first (loopLane).
func TestEventLoopDispatchesRequestsFirst(t *testing.T) {
	l := startLoop(t)
	hold, holdPeer := loopPair(t, l)
	answer, answerPeer := loopPair(t, l)
	request, requestPeer := loopPair(t, l)

	held := make(chan struct{})
	release, unblock := releaseLater(t)
	// The first pump holds the loop's goroutine (no hand-off) while both other sockets fill, so
	// one wait brings both their events.
	ph := newPump(nil, 1<<20, func(byte, []byte) error {
		close(held)
		<-release
		return errStopPump
	}, noFlush, nil)
	var mu sync.Mutex
	var order []string
	record := func(name string) *pump {
		return newPump(nil, 1<<20, func(byte, []byte) error {
			mu.Lock()
			order = append(order, name)
			mu.Unlock()
			return errStopPump
		}, noFlush, nil)
	}
	done := make(chan error, 3)
	go func() { done <- ph.runOnLoop(l, hold, laneAnswers) }()
	go func() { done <- record("answer").runOnLoop(l, answer, laneAnswers) }()
	go func() { done <- record("request").runOnLoop(l, request, laneRequests) }()
	waitRegistered(t, l, 3)

	if _, err := holdPeer.Write(syncMessage); err != nil {
		t.Fatal(err)
	}
	<-held
	for _, w := range []struct {
		peer net.Conn
		c    *loopConn
	}{{answerPeer, answer}, {requestPeer, request}} {
		if _, err := w.peer.Write(syncMessage); err != nil {
			t.Fatal(err)
		}
		waitReadable(t, w.c)
	}
	unblock()
	for range 3 {
		if err := <-done; err != nil {
			t.Fatalf("pump: %v", err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(order) != 2 || order[0] != "request" {
		t.Fatalf("dispatched %v, want the request before the answer", order)
	}
}

// waitReadable waits until c's socket holds bytes to read.
func waitReadable(t *testing.T, c *loopConn) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		pfd := struct {
			fd      int32
			events  int16
			revents int16
		}{fd: int32(c.fd), events: 0x1} // POLLIN
		var ts syscall.Timespec
		n, _, errno := syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
		if errno != 0 {
			t.Fatalf("ppoll: %v", errno)
		}
		if n > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no bytes arrived in 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}

// A write waiting for room on a socket that is on the loop is woken by the loop's EPOLLOUT as the
// peer reads, not by its safety-net timer.
func TestLoopConnWriteWokenByLoop(t *testing.T) {
	l := startLoop(t)
	a, aPeer := loopPair(t, l)
	p := newPump(nil, 1<<20, func(byte, []byte) error { return errStopPump }, noFlush, nil)
	done := make(chan error, 1)
	go func() { done <- p.runOnLoop(l, a, laneAnswers) }()
	waitRegistered(t, l, 1)

	const size = 32 << 20
	written := make(chan error, 1)
	go func() {
		_, err := a.Write(make([]byte, size))
		written <- err
	}()
	time.Sleep(20 * time.Millisecond) // the socket fills; the write parks
	buf := make([]byte, 1<<20)
	for n := 0; n < size; {
		time.Sleep(time.Millisecond) // a slow reader: the writer waits for room many times
		m, err := aPeer.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		n += m
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	if n := a.slowWakes.Load(); n > 0 {
		t.Fatalf("%d waits for room ended by the timer, not by the loop", n)
	}
	_, _ = aPeer.Write(syncMessage)
	if err := <-done; err != nil {
		t.Fatalf("pump: %v", err)
	}
}

// busyPollMetrics adds up the time loops report polling.
type busyPollMetrics struct {
	nopMetrics
	polled atomic.Int64
}

func (m *busyPollMetrics) LoopBusyPoll(d time.Duration) { m.polled.Add(int64(d)) }

// A loop that busy polls hands on what arrives while it polls, and stops when told to, however
// long its busy poll: with an hour's, either would otherwise wait for the hour.
func TestEventLoopBusyPollDeliversEvents(t *testing.T) {
	m := &busyPollMetrics{}
	l := startLoopWith(t, m, time.Hour, loopTuning{contended: busyPollContended, cpus: 1 << 20})
	a, aPeer := loopPair(t, l)
	got := make(chan byte, 4)
	p := newPump(nil, 1<<20, func(typ byte, _ []byte) error {
		got <- typ
		if typ == 'X' {
			return errStopPump
		}
		return nil
	}, noFlush, clientMayRest)
	done := make(chan error, 1)
	go func() { done <- p.runOnLoop(l, a, laneAnswers) }()
	waitRegistered(t, l, 1)
	for _, msg := range [][]byte{syncMessage, {'X', 0, 0, 0, 4}} {
		time.Sleep(20 * time.Millisecond) // the loop is polling by now
		if _, err := aPeer.Write(msg); err != nil {
			t.Fatal(err)
		}
		select {
		case typ := <-got:
			if typ != msg[0] {
				t.Fatalf("handler got %q, want %q", typ, msg[0])
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("message %q not handed on while the loop busy polls", msg[0])
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("pump: %v", err)
	}
	if m.polled.Load() == 0 {
		t.Fatal("the loop found its events without busy polling")
	}
	// startLoopWith's cleanup stops the loop, which is polling again.
}

// Busy polling stops after its window: an idle loop sleeps.
func TestEventLoopBusyPollSleepsWhenIdle(t *testing.T) {
	const window = 5 * time.Millisecond
	m := &busyPollMetrics{}
	// The window alone ends each poll, however busy the machine.
	l := startLoopWith(t, m, window, loopTuning{contended: time.Hour, cpus: 1 << 20})
	a, aPeer := loopPair(t, l)
	relayOneMessage(t, l, a, aPeer, 0)
	time.Sleep(300 * time.Millisecond)
	l.stop() // a poll reports its time when it ends: the stop ends one that would go on
	// The loop has polled at most a window after each of its few wake-ups (the first wait, the
	// message, the pump's end), each poll being up to a scheduling delay late to stop; a loop
	// that kept polling would report the whole 300 ms.
	if polled := time.Duration(m.polled.Load()); polled > 150*time.Millisecond {
		t.Fatalf("an idle loop busy polled for %v in 300 ms, with a window of %v", polled, window)
	}
}

// A loop stops busy polling as soon as a turn (a yield, a poll) takes longer than a thread alone
// on its CPU would: another thread wanted the CPU. Here every turn counts as contended, so with
// an hour's window the loop still sleeps at once; without the check it would poll the whole time.
func TestEventLoopBusyPollStopsWhenContended(t *testing.T) {
	m := &busyPollMetrics{}
	l := startLoopWith(t, m, time.Hour, loopTuning{contended: time.Nanosecond, cpus: 1 << 20})
	a, aPeer := loopPair(t, l)
	relayOneMessage(t, l, a, aPeer, 0)
	time.Sleep(300 * time.Millisecond)
	l.stop()
	if polled := time.Duration(m.polled.Load()); polled > 150*time.Millisecond {
		t.Fatalf("a loop whose every yield was late busy polled for %v in 300 ms", polled)
	}
}

// A loop does not busy poll while the machine's CPUs are all taken: here it counts against no
// CPU at all, so it never polls, and what comes is handed on after the loop's sleep.
func TestEventLoopBusyPollOnlyWithFreeCPUs(t *testing.T) {
	m := &busyPollMetrics{}
	l := startLoopWith(t, m, time.Hour, loopTuning{contended: time.Hour, cpus: -1})
	if l.runq == nil {
		t.Skip("/proc/loadavg is unreadable: loops poll without asking")
	}
	a, aPeer := loopPair(t, l)
	relayOneMessage(t, l, a, aPeer, 20*time.Millisecond) // the loop waits by then
	l.stop()
	if polled := time.Duration(m.polled.Load()); polled != 0 {
		t.Fatalf("the loop busy polled for %v with every CPU taken", polled)
	}
}

func TestLoadavgRunnable(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"0.50 0.60 0.70 3/113 12345\n", 3, true},
		{"12.01 8.00 4.13 117/2048 99\n", 117, true},
		{"0.50 0.60 0.70 /113 1\n", 0, false},
		{"0.50 0.60\n", 0, false},
		{"", 0, false},
	} {
		got, ok := loadavgRunnable([]byte(tc.in))
		if got != tc.want || ok != tc.ok {
			t.Errorf("loadavgRunnable(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	if n := onlineCPUs(); n < 1 {
		t.Errorf("onlineCPUs() = %d", n)
	}
}

// relayOneMessage runs a pump for c on l until its first message, which peer sends after delay,
// and waits for the pump to end.
func relayOneMessage(t *testing.T, l *eventLoop, c *loopConn, peer net.Conn, delay time.Duration) {
	t.Helper()
	p := newPump(nil, 1<<20, func(byte, []byte) error { return errStopPump }, noFlush, nil)
	done := make(chan error, 1)
	go func() { done <- p.runOnLoop(l, c, laneAnswers) }()
	waitRegistered(t, l, 1)
	time.Sleep(delay)
	if _, err := peer.Write(syncMessage); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("pump: %v", err)
	}
}

// TestRegistryForgetsReusedSlots: an event still queued for a registration that ended must not
// reach the one that took its slot.
func TestRegistryForgetsReusedSlots(t *testing.T) {
	var g registry
	a, b, c := &loopReg{}, &loopReg{}, &loopReg{}
	ida, idb := g.add(a), g.add(b)
	if ida == wakeID || idb == wakeID || ida == idb {
		t.Fatalf("numbers %d and %d", ida, idb)
	}
	g.remove(ida)
	if g.get(ida) != nil || g.get(idb) != b || g.len() != 1 {
		t.Fatalf("after removing a: get(a) %p, get(b) %p, len %d", g.get(ida), g.get(idb), g.len())
	}
	idc := g.add(c) // takes a's slot
	if g.get(idc) != c || g.get(ida) != nil {
		t.Fatalf("a's slot reused: get(c) %p, get(a) %p", g.get(idc), g.get(ida))
	}
	g.remove(ida) // a stale removal leaves c alone
	if g.get(idc) != c || g.len() != 2 {
		t.Fatalf("stale removal: get(c) %p, len %d", g.get(idc), g.len())
	}
}
