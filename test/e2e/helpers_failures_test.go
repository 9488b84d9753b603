package e2e

// Helpers for the failure, drain and admin tests: raw protocol clients, a TCP forwarder that can
// cut the upstream, metric reading, and the real pgcanary binary.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pgcanary/pgcanary/test/pgtest"
)

// ---------------------------------------------------------------------------------------------
// Polling and small utilities

// pollUntil polls cond every 50 ms until it holds or timeout passes; it fails the test with what
// describe returns at the last poll.
func pollUntil(t testing.TB, timeout time.Duration, cond func() bool, describe func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not reached within %s: %s", timeout, describe())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// unusedLoopbackAddr returns a loopback address nobody listens on (bound, then released).
func unusedLoopbackAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// asPgErr extracts the server (or proxy) error from err, or fails the test.
func asPgErr(t testing.TB, err error) *pgconn.PgError {
	t.Helper()
	if err == nil {
		t.Fatal("expected an error, got nil")
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("expected a *pgconn.PgError, got %T: %v", err, err)
	}
	return pe
}

// requirePgErr asserts err carries an ErrorResponse with severity and code.
func requirePgErr(t testing.TB, err error, severity, code string) *pgconn.PgError {
	t.Helper()
	pe := asPgErr(t, err)
	if pe.Code != code || pe.Severity != severity {
		t.Fatalf("got %s %s (%q), want %s %s", pe.Severity, pe.Code, pe.Message, severity, code)
	}
	return pe
}

// directSuperConn is a direct (proxy-less) superuser connection to the cluster.
func directSuperConn(t testing.TB) *pgx.Conn {
	t.Helper()
	return connectDSN(t, cluster.DSN(pgtest.SuperUser, ""))
}

// countBackendsByApp counts server backends whose application_name is app.
func countBackendsByApp(t testing.TB, direct *pgx.Conn, app string) int {
	t.Helper()
	var n int
	if err := direct.QueryRow(testCtx(t), "select count(*) from pg_stat_activity where application_name = $1", app).Scan(&n); err != nil {
		t.Fatalf("pg_stat_activity: %v", err)
	}
	return n
}

// waitBackendRunning waits until a backend runs a statement containing fragment.
func waitBackendRunning(t testing.TB, direct *pgx.Conn, app, fragment string) {
	t.Helper()
	pollUntil(t, 10*time.Second, func() bool {
		var n int
		err := direct.QueryRow(testCtx(t), `select count(*) from pg_stat_activity
			where application_name = $1 and state = 'active' and position($2 in query) > 0`, app, fragment).Scan(&n)
		return err == nil && n > 0
	}, func() string { return fmt.Sprintf("no active backend %q running %q", app, fragment) })
}

// dsnWithApp adds application_name to a URL DSN.
func dsnWithApp(dsn, app string) string {
	return dsn + "&application_name=" + app
}

// ---------------------------------------------------------------------------------------------
// Raw protocol client

// wireConn is a client speaking the protocol by hand, for frames pgx would never send.
type wireConn struct {
	net.Conn
	fe *pgproto3.Frontend
}

func dialWire(t testing.TB, addr string) *wireConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return &wireConn{Conn: c, fe: pgproto3.NewFrontend(c, c)}
}

func wireStartupMsg(user string) *pgproto3.StartupMessage {
	return &pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters:      map[string]string{"user": user, "database": pgtest.TestDB, "application_name": "pgcanary-raw"},
	}
}

// startup sends a StartupMessage for the trusted superuser and reads until ReadyForQuery.
func (r *wireConn) startup(t testing.TB) {
	t.Helper()
	r.fe.Send(wireStartupMsg(pgtest.SuperUser))
	if err := r.fe.Flush(); err != nil {
		t.Fatalf("send startup: %v", err)
	}
	r.readUntilReady(t)
}

func (r *wireConn) readUntilReady(t testing.TB) {
	t.Helper()
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			t.Fatalf("waiting for ReadyForQuery: %v", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			return
		case *pgproto3.ErrorResponse:
			t.Fatalf("waiting for ReadyForQuery: error %s %s: %s", m.Severity, m.Code, m.Message)
		}
	}
}

// simpleQuery runs sql and returns the first column of the first row.
func (r *wireConn) simpleQuery(t testing.TB, sql string) string {
	t.Helper()
	r.fe.Send(&pgproto3.Query{String: sql})
	if err := r.fe.Flush(); err != nil {
		t.Fatalf("send query: %v", err)
	}
	var first string
	got := false
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			t.Fatalf("query %q: %v", sql, err)
		}
		switch m := msg.(type) {
		case *pgproto3.DataRow:
			if !got && len(m.Values) > 0 {
				first, got = string(m.Values[0]), true
			}
		case *pgproto3.ErrorResponse:
			t.Fatalf("query %q: %s %s: %s", sql, m.Severity, m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			return first
		}
	}
}

// wireError is a copy of an ErrorResponse (the frontend reuses its message structs).
type wireError struct{ Severity, Code, Message string }

// readError reads until an ErrorResponse and returns it; it fails the test if the connection
// ends (or times out) first.
func (r *wireConn) readError(t testing.TB) wireError {
	t.Helper()
	_ = r.SetReadDeadline(time.Now().Add(15 * time.Second))
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			t.Fatalf("expected an ErrorResponse, got %v", err)
		}
		if m, ok := msg.(*pgproto3.ErrorResponse); ok {
			return wireError{Severity: m.Severity, Code: m.Code, Message: m.Message}
		}
	}
}

// expectClosed asserts the peer closes the connection (EOF or reset, not a timeout) without
// sending anything more than notices.
func (r *wireConn) expectClosed(t testing.TB) {
	t.Helper()
	_ = r.SetReadDeadline(time.Now().Add(15 * time.Second))
	for {
		msg, err := r.fe.Receive()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("connection still open after 15s (expected the proxy to close it)")
			}
			return
		}
		if _, ok := msg.(*pgproto3.NoticeResponse); !ok {
			t.Fatalf("expected the connection to close, got %T %+v", msg, msg)
		}
	}
}

// readByte reads the single-byte answer to SSLRequest or GSSENCRequest.
func (r *wireConn) readByte(t testing.TB) byte {
	t.Helper()
	var b [1]byte
	_ = r.SetReadDeadline(time.Now().Add(15 * time.Second))
	if _, err := io.ReadFull(r.Conn, b[:]); err != nil {
		t.Fatalf("read one byte: %v", err)
	}
	return b[0]
}

// ---------------------------------------------------------------------------------------------
// TCP forwarder between the proxy and Postgres, to lose the upstream without touching Postgres

type cutForwarder struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func startCutForwarder(t testing.TB, target string) *cutForwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &cutForwarder{ln: ln, target: target, conns: make(map[net.Conn]struct{})}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(func() {
		ln.Close()
		f.cut(false)
		f.wg.Wait()
	})
	return f
}

func (f *cutForwarder) addr() string { return f.ln.Addr().String() }

func (f *cutForwarder) accept() {
	defer f.wg.Done()
	for {
		down, err := f.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", f.target, 5*time.Second)
		if err != nil {
			down.Close()
			continue
		}
		f.mu.Lock()
		f.conns[down], f.conns[up] = struct{}{}, struct{}{}
		f.mu.Unlock()
		pipe := func(dst, src net.Conn) {
			defer f.wg.Done()
			_, _ = io.Copy(dst, src)
			dst.Close()
			src.Close()
		}
		f.wg.Add(2)
		go pipe(up, down)
		go pipe(down, up)
	}
}

// cut closes every forwarded connection on both sides at once; with reset, as a RST (SO_LINGER 0)
// rather than a FIN, like a peer that vanished.
func (f *cutForwarder) cut(reset bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		if tc, ok := c.(*net.TCPConn); ok && reset {
			_ = tc.SetLinger(0)
		}
		c.Close()
		delete(f.conns, c)
	}
}

// ---------------------------------------------------------------------------------------------
// Metrics

// gatheredValue reads one series from a registry; labels may be nil. It returns -1 when absent.
func gatheredValue(t testing.TB, reg prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := make(map[string]string)
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			switch {
			case m.GetCounter() != nil:
				return m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				return m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				return m.GetUntyped().GetValue()
			}
		}
	}
	return -1
}

// parsePromText reads Prometheus text format into series ("name{labels}") → value.
func parsePromText(t testing.TB, text string) map[string]float64 {
	t.Helper()
	out := make(map[string]float64)
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

// adminGet returns status and body of a GET.
func adminGet(t testing.TB, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// ---------------------------------------------------------------------------------------------
// The real binary

var (
	pgcanaryBinOnce sync.Once
	pgcanaryBinPath string
	pgcanaryBinErr  error
)

// pgcanaryBinary builds cmd/pgcanary once per test process, into a directory of its own keyed by
// the process id (so concurrent runs of different trees never swap binaries); directories left by
// earlier, finished runs are removed first.
func pgcanaryBinary(t testing.TB) string {
	t.Helper()
	pgcanaryBinOnce.Do(func() {
		removeStaleBinDirs()
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			pgcanaryBinErr = fmt.Errorf("go env GOMOD: %w", err)
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		dir := filepath.Join(os.TempDir(), fmt.Sprintf("%s%d", binDirPrefix, os.Getpid()))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			pgcanaryBinErr = err
			return
		}
		path := filepath.Join(dir, "pgcanary")
		cmd := exec.Command("go", "build", "-o", path, "./cmd/pgcanary")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			pgcanaryBinErr = fmt.Errorf("go build ./cmd/pgcanary: %v\n%s", err, out)
			return
		}
		pgcanaryBinPath = path
	})
	if pgcanaryBinErr != nil {
		t.Fatal(pgcanaryBinErr)
	}
	return pgcanaryBinPath
}

const binDirPrefix = "pgcanary-e2e-bin-"

// removeStaleBinDirs deletes binary directories of test processes that no longer run.
func removeStaleBinDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), binDirPrefix+"*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), binDirPrefix))
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if errors.Is(syscall.Kill(pid, 0), syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// binProc is a running `pgcanary serve`.
type binProc struct {
	cmd    *exec.Cmd
	listen string // client address
	admin  string // admin address
	log    *pgtest.Output
	done   chan struct{}
}

// startServeBinary runs `pgcanary serve` on free ports in front of upstream (the cluster when empty)
// and waits until /healthz answers.
func startServeBinary(t testing.TB, upstream string, drainTimeout time.Duration) *binProc {
	t.Helper()
	if upstream == "" {
		upstream = cluster.Addr()
	}
	return startServeArgs(t, "--upstream", upstream, "--upstream-sslmode", "disable", "--drain-timeout", drainTimeout.String())
}

// startServeArgs runs `pgcanary serve` on free ports with JSON logs and extra args, and waits
// until it reports its addresses and /healthz answers.
func startServeArgs(t testing.TB, extra ...string) *binProc {
	t.Helper()
	bin := pgcanaryBinary(t)
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--log-format", "json", "--log-level", "info"}, extra...)
	cmd := exec.Command(bin, args...)
	pr, pw := io.Pipe()
	p := &binProc{cmd: cmd, log: &pgtest.Output{}, done: make(chan struct{})}
	cmd.Stderr = pw
	cmd.Stdout = p.log
	addrs := make(chan [2]string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Bytes()
			p.log.Write(append(append([]byte(nil), line...), '\n'))
			var rec struct {
				Msg    string `json:"msg"`
				Listen string `json:"listen"`
				Admin  string `json:"admin"`
			}
			if json.Unmarshal(line, &rec) == nil && rec.Msg == "pgcanary serving" {
				select {
				case addrs <- [2]string{rec.Listen, rec.Admin}:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		_ = cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("pgcanary log:\n%s", p.log.String())
		}
	})
	select {
	case a := <-addrs:
		p.listen, p.admin = a[0], a[1]
	case <-p.done:
		t.Fatalf("pgcanary exited at start (%v):\n%s", cmd.ProcessState, p.log.String())
	case <-time.After(30 * time.Second):
		t.Fatalf("pgcanary did not report its addresses within 30s:\n%s", p.log.String())
	}
	pollUntil(t, 10*time.Second, func() bool {
		resp, err := http.Get("http://" + p.admin + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, func() string { return "/healthz never answered 200" })
	return p
}

// dsn connects through the binary as user.
func (p *binProc) dsn(user, password string) string {
	return cluster.ConnString(p.listen, user, password)
}

func (p *binProc) signal(t testing.TB, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v: %v", sig, err)
	}
}

// waitExit waits for the process to exit and returns its exit code; it fails (and kills the
// process) if that takes longer than timeout.
func (p *binProc) waitExit(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("pgcanary did not exit within %s", timeout)
		return -1
	}
}

// waitLog waits until the process has logged msg.
func (p *binProc) waitLog(t testing.TB, msg string) {
	t.Helper()
	pollUntil(t, 10*time.Second, func() bool {
		return strings.Contains(p.log.String(), `"msg":"`+msg)
	}, func() string { return fmt.Sprintf("log line %q not seen", msg) })
}

// waitListenerRefusing waits until addr no longer takes clients: the dial fails, or the accepted
// connection is closed straight away without a word.
func waitListenerRefusing(t testing.TB, addr string) {
	t.Helper()
	pollUntil(t, 10*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return true
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		var b [1]byte
		_, err = c.Read(b[:])
		var ne net.Error
		return err != nil && !(errors.As(err, &ne) && ne.Timeout())
	}, func() string { return addr + " still accepts connections" })
}

// tryConnect tries to connect and returns the error (nil when it unexpectedly worked).
func tryConnect(dsn string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err == nil {
		c.Close(context.Background())
	}
	return err
}
