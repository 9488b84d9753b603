package shadow

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	pg_query "github.com/pganalyze/pg_query_go/v6"
)

// Request is one sampled read to compare. The proxy builds it off its hot path; the comparator
// owns it once submitted (the proxy must not reuse Params' buffers).
type Request struct {
	Migration    string
	Database     string            // the database to connect to (replaces the side DSN's dbname; empty keeps it)
	SearchPath   string            // the client session's search_path, applied with SET LOCAL; empty keeps the server's
	Settings     map[string]string // other session settings applied with SET LOCAL (TimeZone, DateStyle, ...); may be nil
	OldSQL       string            // the client's statement (old form)
	NewSQL       string            // the new-shape form
	Params       [][]byte          // the client's parameter values (nil = NULL)
	ParamFormats []int16           // as in a Bind message: 0, 1 or len(Params) entries
	ParamOIDs    []uint32          // declared parameter types (0 = unspecified); may be shorter than Params
	Ordered      bool              // the statement's top level has ORDER BY: compare in order
	KeyColumns   []string          // the migration key, to name the first differing row
	Sampled      time.Time         // when the read was sampled (Submit sets it when zero)
	Fingerprint  string            // pg_query fingerprint of OldSQL
	Normalized   string            // OldSQL with literals replaced, safe to log

	// The migration's compare options (config.Compare).
	IgnoreColumns  []string
	FloatTolerance float64
	MaxRows        int // a result with more rows is not compared (result skipped); 0 means 10000
	LogValues      bool
}

// Options configures New. Zero fields take the defaults in brackets.
type Options struct {
	// SideDSN is where comparisons run: a DSN for the same server the clients use, with a role
	// that can read both shapes. Each Request's Database replaces its database name.
	SideDSN string
	// Workers is the number of comparisons run at once [4]; each database's pool holds at most
	// this many connections.
	Workers int
	// QueueSize bounds the requests waiting for a worker [1000]; beyond it Submit drops.
	QueueSize int
	// Timeout bounds each form of a read on the server (SET LOCAL statement_timeout) [5s]. The
	// whole comparison also runs under a context deadline of 2×Timeout+1s, which covers connecting
	// and a side that does not answer at all; it is longer than the statement timeout so that a
	// slow statement ends cleanly on the server, keeping its connection.
	Timeout time.Duration
	Logger  *slog.Logger
	Metrics Metrics
	Records *Recorder // where mismatches are kept; nil: counted and logged only
	Judge   *Judge    // fed every comparison that reached a result; nil: none
	// NoSharedSnapshot runs the old and the new form in two transactions, one after the other.
	// It exists only to measure what the shared snapshot is worth (the false mismatches a
	// concurrent writer causes without it); never set it in production.
	NoSharedSnapshot bool
}

const (
	defaultMaxRows = 10000
	// timeoutGrace is added to the context deadline of a comparison beyond its two statement
	// timeouts: time to connect, set up the transaction and roll it back.
	timeoutGrace = time.Second
	savepoint    = "pgcanary_shadow"
)

// Comparator runs sampled reads' old and new forms in one snapshot on side connections, on a
// bounded queue served by a fixed number of workers.
type Comparator struct {
	opts    Options
	poolCfg *pgxpool.Config
	metrics Metrics
	log     *slog.Logger
	errLogs rateLimiter

	queue   chan Request
	closing chan struct{} // closed by Close: workers drain the queue and stop
	once    sync.Once
	ctx     context.Context // parent of every comparison; cancelled when Close gives up waiting
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu     sync.Mutex
	pools  map[string]*pgxpool.Pool // by database name
	closed bool

	// turn alternates which form runs first, so that whatever the first statement of a
	// transaction pays (or warms up for the second) does not bias the latency comparison.
	turn atomic.Uint64

	// compare runs one comparison; tests replace it to control timing.
	compare func(ctx context.Context, req Request) outcome

	breakers breakers // per database: back off from a side database that is down
}

// breakers stop comparisons against a side database that failed (refused connections, did not
// answer) for a while, doubling from a second to half a minute: a dead side database must not
// turn every sampled read into a connection attempt competing with clients for CPU.
type breakers struct {
	mu    sync.Mutex
	state map[string]*breaker
}

type breaker struct {
	openUntil time.Time
	backoff   time.Duration
}

const (
	minBackoff = time.Second
	maxBackoff = 30 * time.Second
)

// open reports whether database is being backed off from.
func (b *breakers) open(database string, now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.state[database]
	return st != nil && now.Before(st.openUntil)
}

// record updates database's breaker with a comparison's outcome.
func (b *breakers) record(database string, out outcome, now time.Time) {
	tripped := out.result == ResultError && (out.reason == "connect" || out.reason == "timeout" ||
		out.reason == "side_error" || strings.HasPrefix(out.reason, "server_"))
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.state == nil {
		b.state = map[string]*breaker{}
	}
	st := b.state[database]
	switch {
	case tripped && st == nil:
		b.state[database] = &breaker{openUntil: now.Add(minBackoff), backoff: minBackoff}
	case tripped && !now.Before(st.openUntil):
		st.backoff = min(2*st.backoff, maxBackoff)
		st.openUntil = now.Add(st.backoff)
	case !tripped && (out.result == ResultMatch || out.result == ResultMismatch):
		delete(b.state, database)
	}
}

// New starts a comparator with its workers. It connects lazily: a side database that is down
// costs comparisons (result error), not startup.
func New(opts Options) (*Comparator, error) {
	setDefault(&opts.Workers, 4)
	setDefault(&opts.QueueSize, 1000)
	setDefault(&opts.Timeout, 5*time.Second)
	poolCfg, err := pgxpool.ParseConfig(opts.SideDSN)
	if err != nil {
		return nil, fmt.Errorf("parse side DSN: %w", err)
	}
	poolCfg.MaxConns = int32(opts.Workers)
	poolCfg.MinConns = 0
	if _, set := poolCfg.ConnConfig.RuntimeParams["application_name"]; !set {
		// Lets a DBA tell comparison load from the application's in pg_stat_activity.
		poolCfg.ConnConfig.RuntimeParams["application_name"] = "pgcanary-shadow"
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Comparator{
		opts:    opts,
		poolCfg: poolCfg,
		metrics: orNop(opts.Metrics),
		log:     orDiscard(opts.Logger),
		errLogs: rateLimiter{every: 30 * time.Second},
		queue:   make(chan Request, opts.QueueSize),
		closing: make(chan struct{}),
		ctx:     ctx,
		cancel:  cancel,
		pools:   map[string]*pgxpool.Pool{},
	}
	c.compare = c.compareOne
	c.wg.Add(opts.Workers)
	for range opts.Workers {
		go c.work()
	}
	return c, nil
}

// Submit queues req for comparison. It never blocks: when the queue is full, or the comparator
// is closing, the request is dropped, counted (result dropped), and Submit returns false.
func (c *Comparator) Submit(req Request) bool {
	select {
	case <-c.closing:
		c.metrics.Comparison(req.Migration, ResultDropped)
		return false
	default:
	}
	if req.Sampled.IsZero() {
		req.Sampled = time.Now()
	}
	if c.breakers.open(req.Database, req.Sampled) {
		// Counted here, without waking a worker: a dead side database costs the client nothing.
		c.metrics.Comparison(req.Migration, ResultError)
		return false
	}
	select {
	case c.queue <- req:
		return true
	default:
		c.metrics.Comparison(req.Migration, ResultDropped)
		return false
	}
}

// Close stops taking requests, lets the workers finish the queued ones until ctx ends, then
// abandons the rest (counted dropped; running comparisons are cancelled) and closes the pools.
// It returns ctx's error when it had to abandon work.
func (c *Comparator) Close(ctx context.Context) error {
	c.once.Do(func() { close(c.closing) })
	done := make(chan struct{})
	go func() {
		c.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("close comparator: queued comparisons abandoned: %w", ctx.Err())
		c.cancel()
		<-done
	}
	c.cancel()
	c.dropQueued()
	c.mu.Lock()
	c.closed = true
	pools := slices.Collect(maps.Values(c.pools))
	c.pools = map[string]*pgxpool.Pool{}
	c.mu.Unlock()
	for _, p := range pools {
		p.Close()
	}
	return err
}

// dropQueued counts what is left in the queue once the workers have stopped: a request that
// slipped in while they were stopping is not run. (One that Submit queues after this is neither
// run nor counted; the comparator is gone by then.)
func (c *Comparator) dropQueued() {
	for {
		select {
		case req := <-c.queue:
			c.metrics.Comparison(req.Migration, ResultDropped)
		default:
			return
		}
	}
}

func (c *Comparator) work() {
	defer c.wg.Done()
	for {
		select {
		case req := <-c.queue:
			c.handle(req)
		case <-c.closing:
			for {
				select {
				case req := <-c.queue:
					c.handle(req)
				default:
					return
				}
			}
		}
	}
}

// handle runs one comparison and reports its outcome everywhere it belongs; once Close has
// given up waiting, it only counts the request as dropped.
func (c *Comparator) handle(req Request) {
	if c.ctx.Err() != nil {
		c.metrics.Comparison(req.Migration, ResultDropped)
		return
	}
	if req.Fingerprint == "" {
		// Here rather than on the client's path: fingerprinting parses the statement.
		req.Fingerprint, _ = pg_query.Fingerprint(req.OldSQL)
	}
	if req.Normalized == "" {
		req.Normalized, _ = pg_query.Normalize(req.OldSQL)
	}
	if req.Sampled.IsZero() {
		req.Sampled = time.Now()
	}
	if c.breakers.open(req.Database, req.Sampled) {
		c.report(req, outcome{result: ResultError, reason: "side_unavailable",
			err: fmt.Errorf("side database %q failed recently: backing off", req.Database)})
		return
	}
	ctx, cancel := context.WithTimeout(c.ctx, 2*c.opts.Timeout+timeoutGrace)
	out := c.compare(ctx, req)
	cancel()
	c.breakers.record(req.Database, out, time.Now())
	c.report(req, out)
}

// outcome is what one comparison found.
type outcome struct {
	result string // Result* constant
	reason string // why an error or a skip: for logs and tests
	err    error
	// oldDur and newDur are each form's time to an answer; 0 when it did not run or failed.
	oldDur, newDur time.Duration
	oldErr, newErr *pgconn.PgError // a form's SQL error (mismatch kinds error_*, or a match of two)
	diff           Diff
}

func (c *Comparator) report(req Request, out outcome) {
	c.metrics.Comparison(req.Migration, out.result)
	if out.oldDur > 0 {
		c.metrics.CompareDuration(req.Migration, SideOld, out.oldDur)
	}
	if out.newDur > 0 {
		c.metrics.CompareDuration(req.Migration, SideNew, out.newDur)
	}
	switch out.result {
	case ResultMatch, ResultMismatch:
		if c.opts.Judge != nil {
			c.opts.Judge.RecordSampledComparison(req.Migration, req.Sampled, out.result == ResultMismatch, out.oldDur, out.newDur)
		}
	case ResultError:
		if ok, suppressed := c.errLogs.allow(time.Now()); ok {
			c.log.Warn("comparison not run to the end: the side database failed or was too slow",
				"migration", req.Migration, "reason", out.reason, "err", out.err, "similar_since_last_report", suppressed)
		}
		return
	case ResultSkipped:
		c.log.Debug("comparison skipped", "migration", req.Migration, "reason", out.reason, "query", req.Normalized)
		return
	}
	if out.result != ResultMismatch {
		return
	}
	m := buildMismatch(req, out, time.Now())
	c.metrics.Mismatch(req.Migration, m.Kind)
	c.log.Debug("mismatch", "migration", m.Migration, "kind", m.Kind, "columns", m.Columns, "query", m.Query)
	if c.opts.Records != nil {
		c.opts.Records.Record(m)
	}
}

// buildMismatch makes the record of a mismatch, redacting values unless the migration logs them.
func buildMismatch(req Request, out outcome, now time.Time) Mismatch {
	m := Mismatch{
		Time: now, Migration: req.Migration, Fingerprint: req.Fingerprint, Query: req.Normalized,
		Row: -1, OldDuration: out.oldDur, NewDuration: out.newDur,
		OldError: pgErrorText(out.oldErr), NewError: pgErrorText(out.newErr),
	}
	switch {
	case out.oldErr != nil && out.newErr != nil:
		m.Kind = KindErrorBoth
	case out.oldErr != nil:
		m.Kind = KindErrorOld
	case out.newErr != nil:
		m.Kind = KindErrorNew
	default:
		d := out.diff
		m.Kind, m.Row, m.RowInNew, m.Columns = d.Kind, d.Row, d.RowInNew, d.Columns
		if d.Key != nil {
			m.Key = map[string]string{}
			for k, v := range d.Key {
				if req.LogValues {
					m.Key[k] = v
				} else {
					m.Key[k] = redact(v)
				}
			}
			for _, k := range d.NullKey {
				m.Key[k] = nullText
			}
		}
		if req.LogValues && d.OldValues != nil {
			m.OldValues, m.NewValues = withNulls(d.OldValues, d.Columns), withNulls(d.NewValues, d.Columns)
		}
	}
	return m
}

// withNulls returns values with "NULL" for the listed columns it lacks (a Diff leaves NULL out).
func withNulls(values map[string]string, cols []string) map[string]string {
	out := maps.Clone(values)
	for _, col := range cols {
		if _, ok := out[col]; !ok {
			out[col] = nullText
		}
	}
	return out
}

func pgErrorText(e *pgconn.PgError) string {
	if e == nil {
		return ""
	}
	return e.Code + ": " + e.Message
}

// side is one form's answer.
type side struct {
	rs      *ResultSet
	dur     time.Duration
	err     error
	tooMany bool // more rows than MaxRows: not read to the end
}

// compareOne runs both forms of req on a side connection and compares them.
func (c *Comparator) compareOne(ctx context.Context, req Request) outcome {
	if err := validate(req); err != nil {
		return outcome{result: ResultError, reason: "bad_request", err: err}
	}
	pool, err := c.pool(req.Database)
	if err != nil {
		return outcome{result: ResultError, reason: "connect", err: err}
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return outcome{result: ResultError, reason: "connect", err: fmt.Errorf("connect to database %q: %w", req.Database, err)}
	}
	// Release destroys a connection left in a transaction or broken (after a timeout, say).
	defer conn.Release()
	pg := conn.Conn().PgConn()

	forms := [2]string{req.OldSQL, req.NewSQL}
	order := [2]int{0, 1}
	if c.turn.Add(1)%2 == 0 {
		order = [2]int{1, 0}
	}
	var sides [2]side
	if c.opts.NoSharedSnapshot {
		for _, i := range order {
			if err := c.begin(ctx, pg, req, false); err != nil {
				return setupError(err)
			}
			sides[i] = runForm(ctx, pg, forms[i], req)
			rollback(ctx, pg)
			if stop, out := stopEarly(sides[i]); stop {
				return out
			}
		}
		return decide(req, sides[0], sides[1])
	}

	if err := c.begin(ctx, pg, req, true); err != nil {
		return setupError(err)
	}
	defer rollback(ctx, pg)
	first, second := order[0], order[1]
	sides[first] = runForm(ctx, pg, forms[first], req)
	if stop, out := stopEarly(sides[first]); stop {
		return out
	}
	if sides[first].err != nil {
		// The failed statement aborted the transaction; rolling back to the savepoint taken right
		// after the snapshot lets the other form run in that same snapshot.
		if _, err := pg.Exec(ctx, "ROLLBACK TO SAVEPOINT "+savepoint).ReadAll(); err != nil {
			return setupError(fmt.Errorf("roll back to savepoint: %w", err))
		}
	}
	sides[second] = runForm(ctx, pg, forms[second], req)
	if stop, out := stopEarly(sides[second]); stop {
		return out
	}
	return decide(req, sides[0], sides[1])
}

func validate(req Request) error {
	switch {
	case req.Migration == "":
		return errors.New("request without a migration")
	case req.OldSQL == "" || req.NewSQL == "":
		return errors.New("request without both forms of the statement")
	case len(req.ParamFormats) > 1 && len(req.ParamFormats) != len(req.Params):
		return fmt.Errorf("%d parameter formats for %d parameters", len(req.ParamFormats), len(req.Params))
	}
	return nil
}

// pool returns the pool for database, creating it on first use.
func (c *Comparator) pool(database string) (*pgxpool.Pool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, errors.New("comparator closed")
	}
	if p := c.pools[database]; p != nil {
		return p, nil
	}
	cfg := c.poolCfg.Copy()
	if database != "" {
		cfg.ConnConfig.Database = database
	}
	p, err := pgxpool.NewWithConfig(c.ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pool for database %q: %w", database, err)
	}
	c.pools[database] = p
	return p, nil
}

// begin opens the read-only repeatable-read transaction and applies the client's settings in it,
// in one round trip. The set_config query is the transaction's first statement, so it takes the
// snapshot both forms then read; the savepoint after it lets one form fail without ending it.
func (c *Comparator) begin(ctx context.Context, pg *pgconn.PgConn, req Request, withSavepoint bool) error {
	b := &pgconn.Batch{}
	b.ExecParams("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", nil, nil, nil, nil)
	sql, params := setConfigQuery(req, c.opts.Timeout)
	b.ExecParams(sql, params, nil, nil, nil)
	if withSavepoint {
		b.ExecParams("SAVEPOINT "+savepoint, nil, nil, nil, nil)
	}
	results, err := pg.ExecBatch(ctx, b).ReadAll()
	if err == nil {
		for _, r := range results {
			if r.Err != nil {
				err = r.Err
				break
			}
		}
	}
	if err != nil {
		return fmt.Errorf("begin the comparison's transaction: %w", err)
	}
	return nil
}

// setConfigQuery builds one SELECT of set_config(name, value, true) calls (SET LOCAL) for the
// statement timeout, the search_path and the other settings. Values travel as parameters, so no
// search_path list or setting value needs quoting.
func setConfigQuery(req Request, timeout time.Duration) (string, [][]byte) {
	type setting struct{ name, value string }
	settings := []setting{{"statement_timeout", strconv.FormatInt(max(timeout.Milliseconds(), 1), 10) + "ms"}}
	if req.SearchPath != "" {
		settings = append(settings, setting{"search_path", req.SearchPath})
	}
	for _, name := range slices.Sorted(maps.Keys(req.Settings)) {
		settings = append(settings, setting{name, req.Settings[name]})
	}
	var sql strings.Builder
	params := make([][]byte, 0, 2*len(settings))
	sql.WriteString("SELECT ")
	for i, s := range settings {
		if i > 0 {
			sql.WriteString(", ")
		}
		fmt.Fprintf(&sql, "set_config($%d, $%d, true)", 2*i+1, 2*i+2)
		params = append(params, []byte(s.name), []byte(s.value))
	}
	return sql.String(), params
}

// runForm runs one form with the client's parameters and reads its rows, all in text format.
func runForm(ctx context.Context, pg *pgconn.PgConn, sql string, req Request) side {
	maxRows := req.MaxRows
	if maxRows <= 0 {
		maxRows = defaultMaxRows
	}
	oids := req.ParamOIDs
	if len(oids) > len(req.Params) {
		oids = oids[:len(req.Params)]
	}
	start := time.Now()
	rr := pg.ExecParams(ctx, sql, req.Params, oids, req.ParamFormats, nil)
	var s side
	rs := &ResultSet{}
	for _, fd := range rr.FieldDescriptions() {
		rs.Columns = append(rs.Columns, Column{Name: fd.Name, TypeOID: fd.DataTypeOID})
	}
	for rr.NextRow() {
		if len(rs.Rows) >= maxRows {
			// Closing reads the rest and discards it; the statement timeout bounds that.
			s.tooMany = true
			break
		}
		rs.Rows = append(rs.Rows, copyRow(rr.Values()))
	}
	_, s.err = rr.Close()
	s.dur = time.Since(start)
	s.rs = rs
	return s
}

// copyRow copies a row out of the connection's read buffer in one allocation, keeping NULL (nil)
// apart from the empty string (empty, not nil).
func copyRow(vals [][]byte) [][]byte {
	n := 0
	for _, v := range vals {
		n += len(v)
	}
	buf := make([]byte, 0, n)
	row := make([][]byte, len(vals))
	for i, v := range vals {
		if v == nil {
			continue
		}
		start := len(buf)
		buf = append(buf, v...)
		row[i] = buf[start:len(buf):len(buf)]
	}
	return row
}

func rollback(ctx context.Context, pg *pgconn.PgConn) {
	// A failure leaves the connection in a transaction (or broken); the pool then destroys it.
	_, _ = pg.Exec(ctx, "ROLLBACK").ReadAll()
}

// stopEarly reports whether a form's answer ends the comparison: the side failed (not the
// statement), the statement cannot run read-only, or the result is too large.
func stopEarly(s side) (bool, outcome) {
	if s.err != nil {
		if kind, reason := classify(s.err); kind != errQuery {
			result := ResultError
			if kind == errNotComparable {
				result = ResultSkipped
			}
			return true, outcome{result: result, reason: reason, err: s.err}
		}
	}
	if s.tooMany {
		return true, outcome{result: ResultSkipped, reason: "max_rows"}
	}
	return false, outcome{}
}

func setupError(err error) outcome {
	_, reason := classify(err)
	return outcome{result: ResultError, reason: reason, err: err}
}

// decide turns both forms' answers into an outcome.
func decide(req Request, oldS, newS side) outcome {
	oldErr, newErr := asPgError(oldS.err), asPgError(newS.err)
	out := outcome{oldErr: oldErr, newErr: newErr}
	if oldErr == nil {
		out.oldDur = oldS.dur
	}
	if newErr == nil {
		out.newDur = newS.dur
	}
	switch {
	case oldErr != nil && newErr != nil:
		if oldErr.Code == newErr.Code {
			// Both forms refuse the read the same way: the client sees the same error either way.
			out.result = ResultMatch
		} else {
			out.result = ResultMismatch
		}
		return out
	case oldErr != nil || newErr != nil:
		out.result = ResultMismatch
		return out
	}
	out.diff = Compare(oldS.rs, newS.rs, CompareOptions{
		Ordered: req.Ordered, IgnoreColumns: req.IgnoreColumns, FloatTolerance: req.FloatTolerance, KeyColumns: req.KeyColumns,
	})
	out.result = ResultMatch
	if !out.diff.Equal() {
		out.result = ResultMismatch
	}
	return out
}

func asPgError(err error) *pgconn.PgError {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr
	}
	return nil
}

// Kinds of errors a form can end with.
const (
	errQuery         = iota // the statement failed: part of the comparison
	errSide                 // the side database or the connection failed: no comparison
	errNotComparable        // the read cannot run in a read-only transaction
)

// classify sorts an error into a kind, with a reason for logs.
func classify(err error) (kind int, reason string) {
	if pgErr := asPgError(err); pgErr != nil {
		switch {
		case pgErr.Code == "57014" && strings.Contains(pgErr.Message, "statement timeout"):
			return errSide, "statement_timeout"
		case pgErr.Code == "25006": // read_only_sql_transaction: the "read" writes (nextval, say)
			return errNotComparable, "not_read_only"
		case pgErr.Code == "08P01":
			// protocol_violation about a Bind that does not fit the statement (parameter count,
			// formats): the request's parameters do not suit this form, as they would not suit
			// it on the client's connection.
			return errQuery, pgErr.Code
		}
		switch pgErr.Code[:min(2, len(pgErr.Code))] {
		// Connection exception, insufficient resources, operator intervention (cancel, shutdown),
		// system error: the server's state, not the statement's.
		case "08", "53", "57", "58":
			return errSide, "server_" + pgErr.Code
		}
		return errQuery, pgErr.Code
	}
	if pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded) {
		return errSide, "timeout"
	}
	if errors.Is(err, context.Canceled) {
		return errSide, "canceled"
	}
	return errSide, "side_error"
}
