package proxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client net.Conn, server *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	srv := <-accepted
	t.Cleanup(func() { client.Close(); srv.Close() })
	return client, srv.(*net.TCPConn)
}

func frame(typ byte, body []byte) []byte {
	return append(appendHeader(nil, typ, len(body)), body...)
}

type got struct {
	typ  byte
	body string
}

// runPump pumps from conn until it ends and returns the messages, how many messages had been
// handled at the last flush, and the error.
func runPump(t *testing.T, conn *net.TCPConn, initial []byte, maxMsg int) ([]got, int, error) {
	t.Helper()
	return runPumpResting(t, conn, initial, maxMsg, nil)
}

// runPumpResting is runPump with a mayRest predicate.
func runPumpResting(t *testing.T, conn *net.TCPConn, initial []byte, maxMsg int, mayRest func(byte) bool) ([]got, int, error) {
	t.Helper()
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var msgs []got
	flushedAt := -1
	p := newPump(initial, maxMsg, func(typ byte, body []byte) error {
		msgs = append(msgs, got{typ, string(body)})
		if typ == 'X' {
			return errStopPump
		}
		return nil
	}, func() error { flushedAt = len(msgs); return nil }, mayRest)
	err = p.run(rc)
	return msgs, flushedAt, err
}

func TestPumpReassemblesFragmentedAndLargeFrames(t *testing.T) {
	client, server := tcpPair(t)
	big := strings.Repeat("x", 3<<20) // larger than the initial buffer: the pump must grow
	var stream []byte
	stream = append(stream, frame('Q', []byte("select 1\x00"))...)
	stream = append(stream, frame('B', []byte(big))...)
	stream = append(stream, frame('S', nil)...)
	stream = append(stream, frame('X', nil)...)
	go func() {
		// The first 40 bytes one at a time (headers split across reads), the rest in bursts.
		for i := 0; i < 40; i++ {
			_, _ = client.Write(stream[i : i+1])
			time.Sleep(time.Millisecond)
		}
		_, _ = client.Write(stream[40:])
	}()
	msgs, flushedAt, err := runPump(t, server, nil, DefaultMaxMessageSize)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 4 || msgs[0] != (got{'Q', "select 1\x00"}) || msgs[1].typ != 'B' || msgs[1].body != big || msgs[2].typ != 'S' {
		t.Fatalf("messages: %d, first %+v", len(msgs), msgs[0])
	}
	if flushedAt < 1 {
		t.Fatal("the pump never flushed before waiting")
	}
}

func TestPumpStartsWithReadAheadBytes(t *testing.T) {
	client, server := tcpPair(t)
	initial := append(frame('Q', []byte("a\x00")), frame('Q', []byte("b"))[:3]...) // one whole, one partial
	rest := frame('Q', []byte("b"))[3:]
	go func() {
		time.Sleep(10 * time.Millisecond)
		_, _ = client.Write(append(rest, frame('X', nil)...))
	}()
	msgs, _, err := runPump(t, server, initial, DefaultMaxMessageSize)
	if err != nil {
		t.Fatal(err)
	}
	want := []got{{'Q', "a\x00"}, {'Q', "b"}, {'X', ""}}
	if len(msgs) != len(want) {
		t.Fatalf("got %+v", msgs)
	}
	for i := range want {
		if msgs[i] != want[i] {
			t.Fatalf("message %d: %+v, want %+v", i, msgs[i], want[i])
		}
	}
}

func TestPumpErrors(t *testing.T) {
	cases := []struct {
		name  string
		input []byte
		max   int
		want  error
	}{
		{"short length", []byte{'Q', 0, 0, 0, 2}, DefaultMaxMessageSize, errMalformed},
		{"too large", appendHeader(nil, 'Q', 5000), 2048, errTooLarge},
		{"eof mid-message", frame('Q', []byte("abc"))[:6], DefaultMaxMessageSize, io.ErrUnexpectedEOF},
		{"clean eof", nil, DefaultMaxMessageSize, io.EOF},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			client, server := tcpPair(t)
			go func() {
				_, _ = client.Write(tc.input)
				client.(*net.TCPConn).CloseWrite()
			}()
			_, _, err := runPump(t, server, nil, tc.max)
			if !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
		})
	}
}

func TestPumpEndsWhenConnectionCloses(t *testing.T) {
	_, server := tcpPair(t)
	done := make(chan error, 1)
	go func() {
		_, _, err := runPump(t, server, nil, DefaultMaxMessageSize)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	server.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("error %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pump did not notice the close")
	}
}

// TestSysConnReadWrite covers the raw read and write path, including a write larger than the
// socket buffer (EAGAIN, then waiting for room) and deadlines.
func TestSysConnReadWrite(t *testing.T) {
	client, server := tcpPair(t)
	sc := newSysConn(server)
	if _, ok := sc.(*sysConn); !ok {
		t.Fatal("TCP connection not wrapped")
	}
	payload := bytes.Repeat([]byte("0123456789"), 1<<20) // 10 MB: fills the send buffer
	go func() {
		_, _ = sc.Write(payload)
	}()
	recv := make([]byte, len(payload))
	if _, err := io.ReadFull(client, recv); err != nil || !bytes.Equal(recv, payload) {
		t.Fatalf("payload mismatch: %v", err)
	}
	_, _ = client.Write([]byte("ping"))
	buf := make([]byte, 16)
	n, err := sc.Read(buf)
	if err != nil || string(buf[:n]) != "ping" {
		t.Fatalf("read %q %v", buf[:n], err)
	}
	_ = sc.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := sc.Read(buf); !errors.Is(err, syscall.ETIMEDOUT) && !isTimeout(err) {
		t.Fatalf("deadline: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestPumpSeesEOFRightAfterData: data immediately followed by a close (Postgres after FATAL) must
// end the pump even when both arrive under one readiness event.
func TestPumpSeesEOFRightAfterData(t *testing.T) {
	for i := 0; i < 50; i++ {
		client, server := tcpPair(t)
		done := make(chan error, 1)
		var msgs []got
		var flushedAt int
		go func() {
			var err error
			msgs, flushedAt, err = runPump(t, server, nil, DefaultMaxMessageSize)
			done <- err
		}()
		time.Sleep(time.Millisecond) // let the pump wait first
		_, _ = client.Write(frame('E', []byte("SFATAL\x00\x00")))
		client.Close()
		select {
		case err := <-done:
			if !errors.Is(err, io.EOF) || len(msgs) != 1 {
				t.Fatalf("round %d: %v, %d messages", i, err, len(msgs))
			}
			if flushedAt != len(msgs) {
				t.Fatalf("round %d: the last message was never flushed before the pump stopped", i)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the pump missed an EOF that arrived with data", i)
		}
	}
}

// TestPumpConfirmsWhereRestIsNotAllowed: the waiver of the confirming read applies only to a batch
// that ends exactly after a message the session vouches for. Data that ends mid-message, or on
// another message type, followed at once by a close, must still end the pump.
func TestPumpConfirmsWhereRestIsNotAllowed(t *testing.T) {
	onlyQuery := func(typ byte) bool { return typ == 'Q' }
	query := frame('Q', []byte("select 1\x00"))
	cases := map[string][]byte{
		"other type":                frame('E', []byte("SFATAL\x00\x00")),
		"mid-message":               query[:len(query)-3],
		"query, then a partial one": append(append([]byte(nil), query...), query[:4]...),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			for i := 0; i < 20; i++ {
				client, server := tcpPair(t)
				done := make(chan error, 1)
				go func() {
					_, _, err := runPumpResting(t, server, nil, DefaultMaxMessageSize, onlyQuery)
					done <- err
				}()
				time.Sleep(time.Millisecond)
				_, _ = client.Write(data)
				client.Close()
				select {
				case err := <-done:
					if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
						t.Fatalf("round %d: %v", i, err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("round %d: the pump missed an EOF that arrived with data", i)
				}
			}
		})
	}
}

// TestPumpRestsAfterVouchedMessage: after a short read that ends on a message the session vouches
// for, the pump waits without reading again, yet still sees what arrives later.
func TestPumpRestsAfterVouchedMessage(t *testing.T) {
	client, server := tcpPair(t)
	done := make(chan error, 1)
	var msgs []got
	go func() {
		var err error
		msgs, _, err = runPumpResting(t, server, nil, DefaultMaxMessageSize, func(typ byte) bool { return typ == 'Q' })
		done <- err
	}()
	for i := 0; i < 100; i++ {
		_, _ = client.Write(frame('Q', []byte("select 1\x00")))
		if i%10 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	time.Sleep(5 * time.Millisecond)
	_, _ = client.Write(frame('X', nil))
	select {
	case err := <-done:
		if err != nil || len(msgs) != 101 {
			t.Fatalf("%v, %d messages, want 101", err, len(msgs))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the pump missed data that arrived after it rested")
	}
}

// TestPumpRunsHoldWholeMessages: with handleRun, each run is whole messages, in order, however the
// bytes arrive; the messages before a bad frame are handled before the pump fails.
func TestPumpRunsHoldWholeMessages(t *testing.T) {
	client, server := tcpPair(t)
	var stream []byte
	for i := range 50 {
		stream = append(stream, frame('Q', []byte(strings.Repeat("q", i)+"\x00"))...)
	}
	stream = append(stream, 'Q', 0, 0, 0, 2) // a length below the minimum
	go func() {
		half := len(stream) / 2
		for i := 0; i < half; i += 7 { // headers and bodies split across reads
			_, _ = client.Write(stream[i:min(i+7, half)])
			time.Sleep(100 * time.Microsecond)
		}
		_, _ = client.Write(stream[half:]) // many messages in one read
		_ = client.(*net.TCPConn).CloseWrite()
	}()
	rc, err := server.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	runs := 0
	p := newPump(nil, DefaultMaxMessageSize, nil, func() error { return nil }, nil)
	p.handleRun = func(run []byte, _ bool) error {
		runs++
		for len(run) > 0 {
			if len(run) < headerLen {
				t.Fatalf("run ends in a partial header: %q", run)
			}
			n := int(binary.BigEndian.Uint32(run[1:headerLen]))
			if len(run) < 1+n {
				t.Fatalf("run ends in a partial message: %q", run)
			}
			msgs = append(msgs, string(run[headerLen:1+n]))
			run = run[1+n:]
		}
		return nil
	}
	if err := p.run(rc); !errors.Is(err, errMalformed) {
		t.Fatalf("error %v, want %v", err, errMalformed)
	}
	if len(msgs) != 50 {
		t.Fatalf("%d messages handled, want 50", len(msgs))
	}
	for i, m := range msgs {
		if m != strings.Repeat("q", i)+"\x00" {
			t.Fatalf("message %d: %q", i, m)
		}
	}
	if runs >= len(msgs) {
		t.Fatalf("%d messages in %d runs: none held several", len(msgs), runs)
	}
}

// TestPumpRunTellsLast: the run before the pump waits is marked last, and its handler's flush
// stands for the pump's; a run the pump cannot rest after (no mayRest vouching) is not.
func TestPumpRunTellsLast(t *testing.T) {
	client, server := tcpPair(t)
	rc, err := server.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	type call struct {
		typ     byte
		last    bool
		flushes int // the pump's flushes before the run
	}
	var runs []call
	flushes := 0
	handled := make(chan struct{}, 2)  // a run was handled
	flushedLate := make(chan struct{}) // the pump flushed after the second run
	p := newPump(nil, DefaultMaxMessageSize, nil, func() error {
		flushes++
		if len(runs) == 2 && flushes == runs[1].flushes+1 {
			close(flushedLate)
		}
		return nil
	}, func(typ byte) bool { return typ == 'Q' })
	p.handleRun = func(run []byte, last bool) error {
		runs = append(runs, call{run[0], last, flushes})
		handled <- struct{}{}
		return nil
	}
	go func() {
		// Each message once the one before is handled, so that each is a run of its own.
		_, _ = client.Write(frame('Q', []byte("select 1\x00")))
		<-handled
		_, _ = client.Write(frame('H', nil))
		<-handled
		<-flushedLate
		_ = client.Close()
	}()
	if err := p.run(rc); !errors.Is(err, io.EOF) {
		t.Fatalf("error %v, want EOF", err)
	}
	if len(runs) != 2 || runs[0].typ != 'Q' || !runs[0].last || runs[1].typ != 'H' || runs[1].last {
		t.Fatalf("runs %+v, want a Query marked last, then a Flush not marked", runs)
	}
	// Not after the Query, whose handler flushed; after the Flush, once a read found the socket
	// empty; and as the pump ends.
	if runs[1].flushes != runs[0].flushes {
		t.Fatalf("the pump flushed %d times between the runs, want 0", runs[1].flushes-runs[0].flushes)
	}
	if n := flushes - runs[1].flushes; n != 2 {
		t.Fatalf("the pump flushed %d times after the Flush, want 2", n)
	}
}
