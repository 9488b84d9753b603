package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgcanary/pgcanary/router"
)

const (
	// ioBufferSize is the read buffer per direction. A pgbench-sized exchange fits many times over;
	// larger messages are read past it without growing it.
	ioBufferSize = 32 << 10
	// flushThreshold bounds how much output a loop holds before writing even while more input is
	// buffered, so a long pipeline or COPY streams instead of accumulating.
	flushThreshold = 64 << 10
	// directWriteThreshold: bodies at least this large skip the output buffer and go straight to
	// the socket (one writev with the header), saving a copy of a large value.
	directWriteThreshold = 64 << 10
	// startupTimeout bounds startup and authentication, like Postgres's authentication_timeout.
	startupTimeout = time.Minute
	// maxServerMessage: the server side is trusted; its limit only guards against a corrupt length.
	maxServerMessage = 1<<31 - 1
)

// bufferable reports whether a message with this body joins the output buffer buf with no write:
// it is not large enough to be written through, and buf stays below flushThreshold.
func bufferable(buf, body []byte) bool {
	return len(body) < directWriteThreshold && len(buf)+headerLen+len(body) < flushThreshold
}

var noDeadline time.Time

// session relays one client connection to one server connection.
//
// Two pumps own the two directions, each run by the session's event loop (loop_linux.go) when
// both connections are plain sockets, else by a goroutine of its own. The client loop reads client
// messages, records what response each one expects, and writes to the server; the server loop
// reads server messages, matches them against the FIFO of expected responses, and writes to the
// client. Neither waits on the other: Postgres answers requests in order, so the FIFO head always
// names the request a server message belongs to.
type session struct {
	srv    *Server
	log    *slog.Logger
	client net.Conn
	server net.Conn
	cr     *frameReader // client messages (after startup)
	sr     *frameReader // server messages

	// smu guards sout, partialWrite and writes to the server. The client loop writes; the server
	// loop writes only to release or replay a gated batch (gate.go). Lock order: mu, then smu.
	smu          sessionMutex
	sout         []byte // server-bound output
	partialWrite bool   // a server write stopped mid-message: the stream cannot take a Terminate

	cmu  sessionMutex // guards cout and writes to client; taken after mu when both are
	cout []byte       // client-bound output
	// runHoldsCmu: the server loop holds cmu, with mu, for a run of messages (onServerMessages).
	// Guarded by mu.
	runHoldsCmu bool
	// coutHeld: a gate's output kept in a file, to go to the client after cout (releaseOutput).
	coutHeld *heldOutput

	mu          sessionMutex // guards the fields below, shared by both loops and Server.Shutdown
	fifo        fifo
	txStatus    byte       // from the last ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' failed transaction
	ready       bool       // startup finished
	draining    bool       // close as soon as the session is idle
	warnedSpill bool       // a gate's output could not go to a temporary file: logged once
	settle      settleWait // the client loop waiting for earlier batches' settings (settle.go)
	closing     bool       // no more requests go upstream
	serverFatal bool       // the server sent FATAL: its EOF is expected
	gate        *gate      // a routed batch whose fallback is still possible (gate.go)
	// inBatch: the client sent extended-protocol messages since its last Sync. Their implicit
	// transaction may already hold work whose answers the client has (after a Flush), so no
	// gate may open before the next Sync: a re-run of the batch's rest would lose that work.
	inBatch bool
	// restoreAtSync: a batch behind the proxy's savepoint failed with an error the client hears
	// before its Sync was sent; the Sync brings restoreFailedTransaction's statements.
	restoreAtSync bool
	// sqlPrepared: the client prepared a mirrored write in SQL; its Queries are then checked for
	// EXECUTE (planQuery).
	sqlPrepared bool
	// proj: the session's search_path and current user ("$user" in it) for planning, projected
	// (conf plus the changes of statements not yet answered; see reproject).
	proj projection
	conf confirmedSettings // the same, as the server confirmed them
	// portalChanges: the session changes (settings, drops of prepared statements) of portals
	// bound from statements that make some, applied when the portal runs (planExecute).
	portalChanges map[string]router.SessionChanges
	// discarding: the server is discarding messages until the next Sync, after an error in the
	// extended protocol; the requests sent meanwhile get no answer and have no effect. Set by the
	// server loop, cleared by the client loop as it sends the Sync, so the client loop may read
	// it without mu: a true it reads stays true until it sends that Sync itself.
	discarding atomic.Bool
	// batch counts the batches sent (each Sync or Query ends one): whether a variant's Parse
	// went out in the batch being sent now.
	batch uint64
	// pipelining: a statement other than transaction control ran in the current implicit
	// transaction, which Postgres then treats as a pipeline (DISCARD ALL is refused there).
	pipelining bool
	pathWarned bool // the session logged that it lost track of search_path
	// the client's prepared statements and portals that touch a migration, with their variants
	stmts   map[string]*stmtInfo
	portals map[string]*portalInfo
	// dropping: statement records dropped by requests the server has not answered (dropUndo).
	dropping map[string]*droppedRecord
	// recordSeq orders the Parses and drops of statement records (parseUndo, droppedRecord).
	recordSeq uint64
	// names: the client's named prepared statements, as far as the session knows (protocol
	// Parse, Close, DEALLOCATE), to foresee a Parse of a name that exists failing.
	names map[string]struct{}
	// changers: statements that change search_path or the role (SET or set_config through the
	// extended protocol) or drop statements (DEALLOCATE), applied as their portals are bound and
	// run. Allocated on first need.
	changers   map[string]router.SessionChanges
	variantSeq uint64
	// claims counts Parses in flight that make their statement only if an earlier one fails
	// (planParse): while there are any, a Describe looks for one of its name (claimInFlight).
	claims   int
	orphans  []*variant        // variants of dropped statements, closed at the next Sync
	settings map[string]string // reported settings that change how values print (shadow.go)

	// loop, when set, relays the session once it is past startup, if both its connections are
	// plain sockets (attachLoop).
	loop *eventLoop

	key       backendKey // the key this client knows us by
	closeOnce sync.Once

	// Routing state, owned by the client loop.
	user     string
	database string // the session's database: migrations are per database
	route    routing
	appName  string // application_name, from startup and ParameterStatus; guarded by mu
}

func newSession(srv *Server, client net.Conn, loop *eventLoop) *session {
	s := &session{
		srv:     srv,
		client:  client,
		log:     srv.log.With("client", clientName(client)),
		stmts:   make(map[string]*stmtInfo),
		portals: make(map[string]*portalInfo),
		cout:    make([]byte, 0, 8<<10),
		sout:    make([]byte, 0, 8<<10),
	}
	s.setLoop(loop)
	return s
}

// run serves the session until either side goes away.
func (s *session) run(ctx context.Context) {
	defer s.finish()
	_ = s.client.SetDeadline(time.Now().Add(startupTimeout))
	params, startup, ok := s.negotiateStartup(ctx)
	if !ok {
		return
	}
	s.log = s.log.With("user", params["user"], "database", params["database"])
	s.user = params["user"]
	s.startSettings(newSettingState(searchPathOf(params)), newUserState(params["user"], params["user"]))
	s.database = params["database"]
	if s.database == "" {
		s.database = s.user // Postgres's default
	}
	s.route = newRouting(s.srv.routingKey, params, s.client.RemoteAddr())
	s.appName = params["application_name"]
	if !s.connectUpstream(ctx, startup) {
		return
	}
	defer func() {
		if s.key.pid != 0 {
			s.srv.keys.unregister(s.key.pid)
		}
	}()
	if !s.relayAuth() {
		return
	}
	_ = s.client.SetDeadline(noDeadline)
	_ = s.server.SetDeadline(noDeadline)
	s.attachLoop()
	s.log.Debug("session ready")

	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serverLoop()
	}()
	s.clientLoop()
	s.cancelInFlight(ctx)
	s.finish()
	<-done
}

// cancelInFlight cancels the statement still running for a client that went away: Postgres only
// notices a closed socket when it next writes, so a long query would otherwise run on.
func (s *session) cancelInFlight(ctx context.Context) {
	s.mu.Lock()
	busy := s.fifo.len() > 0 && !s.serverFatal
	s.mu.Unlock()
	if !busy || s.key.pid == 0 {
		return
	}
	server, ok := s.srv.keys.lookup(s.key.pid, s.key.secret)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := forwardCancel(ctx, &s.srv.upstream, server); err != nil {
		s.log.Debug("cancel statement of departed client", "err", err)
	}
}

// negotiateStartup handles SSLRequest, GSSENCRequest and CancelRequest until the client sends its
// StartupMessage, which it returns raw (to relay unchanged) and decoded.
func (s *session) negotiateStartup(ctx context.Context) (map[string]string, []byte, bool) {
	tlsDone := false
	for {
		body, err := readStartupPacket(s.client)
		if err != nil {
			if errors.Is(err, errMalformed) {
				s.fatalToClient(codeProtocolViolation, "invalid startup packet: "+err.Error())
			} else if !isClosed(err) {
				s.log.Debug("read startup packet", "err", err)
			}
			return nil, nil, false
		}
		code := binary.BigEndian.Uint32(body)
		switch {
		case code == sslRequestCode && !tlsDone:
			// Postgres answers 'N' on its Unix socket whatever its certificate: so do we.
			if s.srv.tls == nil || isUnixConn(s.client) {
				if _, err := s.client.Write([]byte{'N'}); err != nil {
					return nil, nil, false
				}
				continue
			}
			if _, err := s.client.Write([]byte{'S'}); err != nil {
				return nil, nil, false
			}
			tc := tls.Server(s.client, s.srv.tls)
			if err := tc.HandshakeContext(ctx); err != nil {
				s.log.Info("client TLS handshake failed", "err", err)
				return nil, nil, false
			}
			s.mu.Lock() // close (Shutdown) may read s.client from another goroutine
			s.client = tc
			s.mu.Unlock()
			tlsDone = true
		case code == gssEncRequestCode && !tlsDone:
			if _, err := s.client.Write([]byte{'N'}); err != nil {
				return nil, nil, false
			}
		case code == cancelRequestCode:
			s.handleCancel(ctx, body)
			return nil, nil, false
		case code>>16 == 3:
			params, err := startupParams(body)
			if err != nil {
				s.fatalToClient(codeProtocolViolation, err.Error())
				return nil, nil, false
			}
			return params, body, true
		default:
			s.fatalToClient(codeFeatureNotSupported, fmt.Sprintf("unsupported frontend protocol %d.%d: pgcanary speaks 3.x", code>>16, code&0xffff))
			return nil, nil, false
		}
	}
}

func (s *session) handleCancel(ctx context.Context, body []byte) {
	if len(body) < 12 {
		return
	}
	pid := binary.BigEndian.Uint32(body[4:8])
	key, ok := s.srv.keys.lookup(pid, body[8:])
	if !ok {
		s.log.Debug("cancel request with unknown key ignored", "pid", pid)
		return
	}
	if err := forwardCancel(ctx, &s.srv.upstream, key); err != nil {
		s.log.Warn("forward cancel request", "err", err)
	}
}

// connectUpstream dials the server and sends the client's StartupMessage unchanged.
func (s *session) connectUpstream(ctx context.Context, startup []byte) bool {
	dctx, cancel := context.WithTimeout(ctx, s.srv.connectTimeout)
	defer cancel()
	conn, err := s.srv.upstream.dial(dctx)
	if err != nil {
		s.srv.metrics.UpstreamConnectError()
		s.log.Warn("connect to upstream", "upstream", s.srv.upstream.Addr, "err", err)
		s.fatalToClient(codeUnableToConnect, fmt.Sprintf("pgcanary could not connect to upstream %s: %v", s.srv.upstream.Addr, err))
		return false
	}
	s.mu.Lock()
	s.server = conn
	closing := s.closing
	s.mu.Unlock()
	if closing {
		return false
	}
	_ = conn.SetDeadline(time.Now().Add(startupTimeout))
	msg := make([]byte, 4, 4+len(startup))
	binary.BigEndian.PutUint32(msg, uint32(4+len(startup)))
	msg = append(msg, startup...)
	if _, err := conn.Write(msg); err != nil {
		s.fatalToClient(codeUnableToConnect, fmt.Sprintf("pgcanary could not send startup to upstream %s: %v", s.srv.upstream.Addr, err))
		return false
	}
	// From here on the session moves bytes: plain TCP legs switch to raw system calls (sysconn.go).
	s.mu.Lock()
	s.server = newSysConn(conn)
	s.client = newSysConn(s.client)
	s.mu.Unlock()
	s.sr = newFrameReader(bufio.NewReaderSize(s.server, ioBufferSize), maxServerMessage)
	s.cr = newFrameReader(bufio.NewReaderSize(s.client, ioBufferSize), s.srv.maxMessageSize)
	return true
}

// relayAuth relays authentication between client and server until the first ReadyForQuery. The
// proxy never sees a password in the clear unless the server asks for cleartext.
func (s *session) relayAuth() bool {
	strippedPlus := false // the server offered channel binding and the client was not told
	challenged := false   // the server asked the client for a password
	for {
		typ, body, err := s.sr.next()
		if err != nil {
			s.fatalToClient(codeConnectionFailure, fmt.Sprintf("pgcanary lost upstream %s during startup: %v", s.srv.upstream.Addr, err))
			return false
		}
		needReply := false
		switch typ {
		case 'R':
			if len(body) < 4 {
				s.fatalToClient(codeProtocolViolation, "malformed authentication request from upstream")
				return false
			}
			switch binary.BigEndian.Uint32(body) {
			case 0: // AuthenticationOk
				if !challenged && s.srv.upstream.network == "unix" && s.srv.warnedUnixTrust.CompareAndSwap(false, true) {
					s.log.Warn("Postgres admitted a client over its Unix socket without a password: its pg_hba.conf 'local' rules (peer, trust) see pgcanary's OS user, not the client's, so whoever can reach pgcanary gets in as any role those rules allow; require a password (scram-sha-256) for pgcanary's local connections",
						"upstream", s.srv.upstream.Addr)
				}
			case 12: // SASLFinal
			case 3, 5, 11: // cleartext, MD5, SASLContinue
				needReply, challenged = true, true
			case 10: // SASL
				challenged = true
				stripped := stripChannelBinding(body)
				strippedPlus = len(stripped) != len(body)
				body = stripped
				needReply = true
			default:
				s.fatalToClient(codeInvalidAuthorization, fmt.Sprintf("pgcanary cannot relay authentication method %d (GSSAPI, SSPI and Kerberos are not supported)", binary.BigEndian.Uint32(body)))
				return false
			}
		case 'K':
			if len(body) < 8 {
				s.fatalToClient(codeProtocolViolation, "malformed BackendKeyData from upstream")
				return false
			}
			server := backendKey{pid: binary.BigEndian.Uint32(body), secret: append([]byte(nil), body[4:]...)}
			key, err := s.srv.keys.register(server)
			if err != nil {
				s.fatalToClient(codeConnectionFailure, err.Error())
				return false
			}
			s.key = key
			kb := make([]byte, 4, 4+len(key.secret))
			binary.BigEndian.PutUint32(kb, key.pid)
			body = append(kb, key.secret...)
		case 'E':
			s.toClient(typ, body)
			s.flushClient()
			return false
		case 'Z':
			if len(body) != 1 {
				s.fatalToClient(codeProtocolViolation, "malformed ReadyForQuery from upstream")
				return false
			}
			if s.srv.planner != nil {
				if !s.learnSearchPath() {
					return false
				}
			}
			s.mu.Lock()
			s.txStatus, s.ready = body[0], true
			drain := s.draining && !s.closing
			if drain {
				s.closing = true
			}
			s.mu.Unlock()
			s.toClient(typ, body)
			if drain { // the proxy began draining while this client authenticated
				s.fatalToClient(codeAdminShutdown, "terminating connection because pgcanary is shutting down")
				return false
			}
			return s.flushClient() == nil
		}
		s.toClient(typ, body)
		if needReply || !s.sr.frameReady() {
			if s.flushClient() != nil {
				return false
			}
		}
		if needReply {
			ctyp, cbody, err := s.cr.next()
			if err != nil {
				s.clientReadFailed(err)
				return false
			}
			if ctyp != 'p' {
				s.fatalToClient(codeProtocolViolation, fmt.Sprintf("expected a password message, got message type %q", ctyp))
				return false
			}
			if strippedPlus && saslClaimsChannelBinding(cbody) {
				s.fatalToClient(codeInvalidAuthorization, errChannelBinding)
				return false
			}
			s.toServer(ctyp, cbody)
			if s.flushServer() != nil {
				return false
			}
		}
	}
}

// learnSearchPath asks the server for the session's search_path and current role before the
// client's first statement: role and database defaults (ALTER ROLE ... SET search_path) apply at
// startup, and planning must resolve names (and "$user") the way the server will.
func (s *session) learnSearchPath() bool {
	s.toServer('Q', queryBody("SELECT pg_catalog.current_setting('search_path'), session_user, current_user"))
	if s.flushServer() != nil {
		s.fatalToClient(codeConnectionFailure, fmt.Sprintf("pgcanary lost upstream %s during startup", s.srv.upstream.Addr))
		return false
	}
	for {
		typ, body, err := s.sr.next()
		if err != nil {
			s.fatalToClient(codeConnectionFailure, fmt.Sprintf("pgcanary lost upstream %s during startup: %v", s.srv.upstream.Addr, err))
			return false
		}
		switch typ {
		case 'D':
			var row pgproto3.DataRow
			if err := row.Decode(body); err == nil && len(row.Values) == 3 && row.Values[0] != nil && row.Values[1] != nil && row.Values[2] != nil {
				s.startSettings(newSettingState(string(row.Values[0])), newUserState(string(row.Values[1]), string(row.Values[2])))
			}
		case 'E':
			s.log.Warn("reading the session's search_path", "err", errorMessage(body))
		case 'S', 'N':
			s.toClient(typ, body) // asynchronous: the client sees them as it would have
		case 'Z':
			return true
		}
	}
}

// errUpstreamWrite marks a failed write to the server; the server loop reports the lost upstream.
var errUpstreamWrite = errors.New("write to upstream failed")

// clientLoop relays client messages until the client leaves, misbehaves or the session closes.
// Plain TCP uses the pump (pump.go); TLS reads through crypto/tls.
func (s *session) clientLoop() {
	var err error
	if lc, ok := s.client.(*loopConn); ok {
		p := newPump(bufferedBytes(s.cr), s.srv.maxMessageSize, nil, s.flushServer, clientMayRest)
		p.handleRun = s.onClientMessages
		err = p.runOnLoop(s.loop, lc, laneRequests)
	} else if sc, ok := s.client.(*sysConn); ok {
		p := newPump(bufferedBytes(s.cr), s.srv.maxMessageSize, nil, s.flushServer, clientMayRest)
		p.handleRun = s.onClientMessages
		err = p.run(sc.rc)
	} else {
		err = s.readLoop(s.cr, s.onClientMessage, s.flushServer)
	}
	if err != nil && !errors.Is(err, errUpstreamWrite) {
		s.clientReadFailed(err)
	}
}

// attachLoop moves the session's connections onto its event loop, when it has one and both are
// plain sockets; otherwise (TLS on either side) each direction keeps its goroutine.
func (s *session) attachLoop() {
	if s.loop == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return
	}
	_, plainClient := s.client.(*sysConn)
	_, plainServer := s.server.(*sysConn)
	if !plainClient || !plainServer {
		s.setLoop(nil)
		return
	}
	conns, err := detachConns(s.loop, s.client, s.server)
	if err != nil {
		s.log.Warn("cannot relay the session on an event loop; it keeps a goroutine per direction", "err", err)
		s.setLoop(nil)
		return
	}
	s.client, s.server = conns[0], conns[1]
}

// clientMayRest: a batch of client messages that ends on a Query or a Sync is always answered,
// so a close that arrived with it is seen when the answer draws the client's reset (pump.go).
func clientMayRest(typ byte) bool { return typ == 'Q' || typ == 'S' }

// serverMayRest: after ReadyForQuery the server is idle; a close that arrived with it is seen
// when the client's next request draws the server's reset, or by TCP keepalive (pump.go).
func serverMayRest(typ byte) bool { return typ == 'Z' }

// readLoop is the blocking driver: it feeds handle from a frameReader and flushes whenever the
// next message is not already buffered.
func (s *session) readLoop(fr *frameReader, handle func(byte, []byte) error, flush func() error) error {
	for {
		typ, body, err := fr.next()
		if err != nil {
			return err
		}
		if err := handle(typ, body); err != nil {
			if errors.Is(err, errStopPump) {
				return nil
			}
			return err
		}
		if !fr.frameReady() {
			if err := flush(); err != nil {
				return err
			}
		}
	}
}

// bufferedBytes returns what a frame reader read ahead during startup, for the pump to start with.
func bufferedBytes(fr *frameReader) []byte {
	_ = fr.release()
	b, _ := fr.r.Peek(fr.r.Buffered())
	return b
}

// onClientMessage handles one client message: it records the response the message expects and
// queues it for the server, planning it first when migrations are configured.
func (s *session) onClientMessage(typ byte, body []byte) error {
	kind, name, err := classifyFrontend(typ, body)
	if err != nil {
		return fmt.Errorf("%w: %v", errMalformed, err)
	}
	return s.clientMessage(typ, body, expected{kind: kind, name: name})
}

// onClientMessages handles a run of whole client messages, as the pump read them: what
// onClientMessage does for each. Without migrations to plan for, the messages that need nothing
// but relaying take mu and smu once for the run rather than once each (an extended-protocol
// transaction is a run of four or five), for the reason onServerMessages gives, and flush after
// the last run before the pump waits under the smu they hold.
func (s *session) onClientMessages(run []byte, last bool) error {
	planning := s.srv.planner != nil && s.srv.planner.Active(s.database)
	locked := false
	for len(run) > 0 {
		typ, n := run[0], int(binary.BigEndian.Uint32(run[1:headerLen]))
		body := run[headerLen : 1+n]
		run = run[1+n:]
		kind, name, err := classifyFrontend(typ, body)
		if err != nil {
			if locked {
				s.smu.Unlock()
				s.mu.Unlock()
			}
			return fmt.Errorf("%w: %v", errMalformed, err)
		}
		if !planning && typ != 'X' {
			if !locked {
				s.mu.Lock()
				s.smu.Lock()
				locked = true
			}
			if s.relayLocked(typ, body, kind, name) {
				continue
			}
		}
		if locked {
			s.smu.Unlock()
			s.mu.Unlock()
			locked = false
		}
		if err := s.clientMessage(typ, body, expected{kind: kind, name: name}); err != nil {
			return err
		}
	}
	if !locked {
		if last {
			return s.flushServer()
		}
		return nil
	}
	s.mu.Unlock()
	var err error
	if last {
		err = s.flushServerLocked()
	}
	s.smu.Unlock()
	return err
}

// relayLocked sends a client message as emit would, when that takes nothing but queuing it: no
// gate, no draining or closing session, no discarding server, no write due. It reports whether
// it did; otherwise emit must. Holds mu and smu.
func (s *session) relayLocked(typ byte, body []byte, kind requestKind, name string) bool {
	if s.gate != nil || s.closing || s.draining || s.discarding.Load() || !bufferable(s.sout, body) {
		return false
	}
	s.noteSent(typ, false)
	if kind != 0 {
		s.fifo.pushRequest(kind, name)
	}
	s.sout = appendMessage(s.sout, typ, body)
	return true
}

// clientMessage is onClientMessage for a message classified already.
func (s *session) clientMessage(typ byte, body []byte, e expected) error {
	if typ == 'X' { // Terminate: finish passes it on, once a gated batch has settled
		s.mu.Lock()
		g := s.gate
		s.mu.Unlock()
		if g != nil {
			s.waitGate(g)
		}
		return errStopPump
	}
	// While the server discards until Sync, a message is relayed unplanned: planning it would
	// change what the session foresees (a SET in a Query) for a statement that never runs. Unless
	// a failed batch may still be re-run (awaitBatchEnd): then it will run, as planned now.
	if s.srv.planner != nil && s.srv.planner.Active(s.database) && (typ == 'S' || !s.discarding.Load() || s.awaitingBatchEnd()) {
		return s.planAndEmit(typ, body, e)
	}
	return s.emit(typ, body, e, nil)
}

// classifyFrontend validates a client message just enough to know the response it expects, and
// for Parse and Close of a prepared statement, its name.
func classifyFrontend(typ byte, body []byte) (requestKind, string, error) {
	switch typ {
	case 'Q':
		if len(body) == 0 || body[len(body)-1] != 0 {
			return 0, "", fmt.Errorf("malformed Query message")
		}
		return reqQuery, "", nil
	case 'P':
		name, _, ok := cstring(body)
		if !ok {
			return 0, "", fmt.Errorf("malformed Parse message")
		}
		return reqParse, string(name), nil
	case 'B':
		return reqBind, "", nil
	case 'E':
		return reqExecute, "", nil
	case 'D', 'C':
		if len(body) < 2 || (body[0] != 'S' && body[0] != 'P') {
			return 0, "", fmt.Errorf("malformed Describe or Close message")
		}
		if typ == 'D' {
			return reqDescribe, "", nil
		}
		if body[0] == 'S' {
			name, _, ok := cstring(body[1:])
			if !ok {
				return 0, "", fmt.Errorf("malformed Close message")
			}
			return reqClose, string(name), nil
		}
		return reqClose, "", nil
	case 'S':
		return reqSync, "", nil
	case 'F':
		return reqFunctionCall, "", nil
	case 'H', 'd', 'c', 'f', 'X': // Flush and COPY data answer nothing of their own
		return 0, "", nil
	}
	return 0, "", fmt.Errorf("invalid frontend message type %d", typ)
}

// serverLoop relays server messages until the server goes away or the session closes.
func (s *session) serverLoop() {
	var err error
	if lc, ok := s.server.(*loopConn); ok {
		p := newPump(bufferedBytes(s.sr), maxServerMessage, nil, s.flushClient, serverMayRest)
		p.handleRun = s.onServerMessages
		err = p.runOnLoop(s.loop, lc, laneAnswers)
	} else if sc, ok := s.server.(*sysConn); ok {
		p := newPump(bufferedBytes(s.sr), maxServerMessage, nil, s.flushClient, serverMayRest)
		p.handleRun = s.onServerMessages
		err = p.run(sc.rc)
	} else {
		err = s.readLoop(s.sr, s.onServerMessage, s.flushClient)
	}
	if err == nil {
		return
	}
	s.mu.Lock()
	expectedEOF := s.closing || s.serverFatal
	s.mu.Unlock()
	if !expectedEOF && !errors.Is(err, errClientWrite) {
		s.log.Warn("upstream connection lost", "err", err)
		s.fatalToClient(codeConnectionFailure, fmt.Sprintf("pgcanary lost the connection to upstream %s: %v", s.srv.upstream.Addr, err))
	}
	s.close()
}

// errClientWrite marks a failed write to the client: the session ends without blaming upstream.
var errClientWrite = errors.New("write to client failed")

// onServerMessage handles one server message: it moves the FIFO, applies the head's response
// transform, and queues the message for the client (or holds it, while a gate is open).
func (s *session) onServerMessage(typ byte, body []byte) error {
	s.mu.Lock()
	out, outBody, idleDrain := s.serverMessageLocked(typ, body)
	s.mu.Unlock()
	return s.passToClient(out, outBody, idleDrain)
}

// onServerMessages handles a run of whole server messages, as the pump read them: what
// onServerMessage does for each, with mu and cmu taken once for the run rather than for every
// message. Each lock costs two atomic instructions, and on a host where Postgres and the clients
// share the CPUs with the proxy, the session's state is out of the cache when a run arrives: per
// message those were the larger part of the proxy's own CPU per transaction (a pgbench -S
// transaction is a run of four messages). Holding both while a write to the client may block
// would stop the client loop too, so a message whose output needs a write lets go of both first.
// After the last run before the pump waits, it flushes under the cmu it holds.
func (s *session) onServerMessages(run []byte, last bool) error {
	s.mu.Lock()
	s.lockClientOutputForRun()
	for len(run) > 0 {
		typ, n := run[0], int(binary.BigEndian.Uint32(run[1:headerLen]))
		body := run[headerLen : 1+n]
		run = run[1+n:]
		out, outBody, idleDrain := s.serverMessageLocked(typ, body)
		if out == 0 && !idleDrain {
			continue
		}
		if !idleDrain && s.coutHeld == nil && bufferable(s.cout, outBody) {
			s.cout = appendMessage(s.cout, out, outBody)
			continue
		}
		s.unlockClientOutputForRun()
		s.mu.Unlock()
		if err := s.passToClient(out, outBody, idleDrain); err != nil || idleDrain {
			return err
		}
		s.mu.Lock()
		s.lockClientOutputForRun()
	}
	s.runHoldsCmu = false
	s.mu.Unlock()
	var err error
	if last {
		err = s.flushClientLocked()
	}
	s.cmu.Unlock()
	return err
}

// lockClientOutputForRun takes cmu for a run of server messages (onServerMessages); what the
// messages set off under mu meanwhile (releaseOutput) finds it taken. Holds mu.
func (s *session) lockClientOutputForRun() {
	s.cmu.Lock()
	s.runHoldsCmu = true
}

// unlockClientOutputForRun lets go of cmu, before mu. Holds mu.
func (s *session) unlockClientOutputForRun() {
	s.runHoldsCmu = false
	s.cmu.Unlock()
}

// passToClient queues a server message's output for the client (out 0 for none), flushing when
// the buffer is full, and ends a draining session that became idle.
func (s *session) passToClient(out byte, body []byte, idleDrain bool) error {
	if out != 0 {
		s.cmu.Lock()
		s.appendClient(out, body)
		var err error
		if len(s.cout) >= flushThreshold {
			err = s.flushClientLocked()
		}
		s.cmu.Unlock()
		if err != nil {
			return errClientWrite
		}
	}
	if idleDrain {
		s.fatalToClient(codeAdminShutdown, "terminating connection because pgcanary is shutting down")
		s.close()
		return errStopPump
	}
	return nil
}

// serverMessageLocked is the part of handling a server message that needs mu: the FIFO, the
// session's records, a gate. It returns the message to pass on (type 0 for none) and whether the
// session, draining, is now idle and must close. Holds mu.
func (s *session) serverMessageLocked(typ byte, body []byte) (out byte, outBody []byte, idleDrain bool) {
	ref := s.fifo.headRef()
	origTyp, origBody := typ, body
	if ref != nil && ref.describeLater != "" {
		s.describeStatement(ref, s.stmts[ref.describeLater])
		ref.describeLater = ""
	}
	if ref != nil {
		if origTyp == 't' && ref.describes != nil {
			ref.describes.learnParamTypes(origBody)
		}
		if ref.write != nil || ref.writes != nil {
			typ, body = restore(ref, typ, body)
		}
		if origTyp == 'T' {
			rf := ref.routedRead
			if ref.kind == reqQuery && ref.stmt < len(ref.routedReads) {
				rf = ref.routedReads[ref.stmt]
			}
			if rf != nil {
				setOrigins(body, rf)
			}
		}
		if origTyp == 'E' && ref.reword != nil {
			body = ref.reword
		} else if origTyp == 'E' && ref.rewrite != nil {
			body = ref.rewrite.mapErrorPosition(body)
		}
		if ref.suppress && origTyp != 'A' && origTyp != 'S' && origTyp != 'N' && !(origTyp == 'E' && ref.variant != nil) {
			// The proxy's own request. A variant's failed Parse is the exception: it stands for
			// the client's statement, whose Bind the server now skips, so the client must hear why.
			typ = 0
		}
	}
	reproject := s.followSettings(ref, origTyp, origBody)
	switch origTyp {
	case 'S': // ParameterStatus: application_name feeds routing, a few settings comparisons
		if name, rest, ok := cstring(body); ok {
			if v, _, ok := cstring(rest); ok {
				switch n := string(name); {
				case n == "application_name":
					s.appName = string(v)
				case reportedSettings[n]:
					if s.settings == nil {
						s.settings = map[string]string{}
					}
					s.settings[n] = string(v)
				}
			}
		}
	case 'Z':
		if len(body) == 1 {
			s.txStatus = body[0]
		}
	case '3':
		if ref != nil && ref.rec != nil {
			ref.rec.closed = true
		}
		if ref != nil && ref.closes != nil {
			ref.closes.sent = false // gone from the server: prepared again if its statement returns
		}
	case '1':
		if ref == nil {
			break
		}
		if ref.variant != nil {
			ref.variant.confirmed = true
		}
		if ref.rec != nil {
			ref.rec.parsed = true
		}
		if ref.parses != nil {
			ref.parses.confirmed = true
		}
		if ref.claim != nil {
			s.redoParse(ref.claim) // the name was free: the Parse it waited on failed
			s.claims--
		}
	case 'C', 'I', 's':
		if ref != nil {
			s.completed(ref, nil)
		}
	case 'E':
		if isFatalError(body) {
			s.serverFatal = true
		}
		if ref != nil {
			s.completed(ref, origBody)
		}
	}
	// head is the FIFO's head entry; one this message completes is copied before it leaves the
	// FIFO when a gate will look at it. Most messages (rows) complete nothing: no copy. (Only the
	// client loop opens gates, under mu: s.gate cannot appear until this returns.)
	head := ref
	if head == nil {
		head = &expected{}
	}
	batchEnded := false
	effect := effectOf(origTyp, head.kind)
	if effect != effNone && ref != nil && s.gate != nil {
		popped := *ref
		head = &popped
	}
	switch effect {
	case effPop:
		batchEnded = head.batchEnd
		for u := head.drops; u != nil; u = u.next {
			s.dropsDone(u) // answered, unless an error in its Query undid them already
		}
		s.fifo.pop()
	case effPopToSync:
		// The failed head, and what it makes the server skip; without a Sync sent yet, the server
		// discards what the client sends until it comes.
		s.discarding.Store(!s.fifo.skipToSync(s.failedRequest))
	}
	if reproject {
		s.reproject() // after skipToSync: the skipped statements' changes are gone with them
	}
	if g := s.gate; g != nil {
		typ = s.gateOnServer(g, origTyp, typ, body, head, effect, batchEnded)
	}
	idleDrain = s.draining && origTyp == 'Z' && s.fifo.len() == 0 && s.txStatus == 'I' && s.gate == nil
	if idleDrain {
		s.closing = true
	}
	s.settleChanged()
	return typ, body, idleDrain // typ 0: consumed by a response transform, or held by a gate
}

// followSettings moves the confirmed settings with one server message (confirmedSettings). e is
// the FIFO head. It reports whether the projection must be made again: a transaction ended, or
// statements whose changes it holds failed. Holds mu.
func (s *session) followSettings(e *expected, typ byte, body []byte) (reproject bool) {
	switch typ {
	case 'C', 's': // CommandComplete, PortalSuspended (a set_config SELECT run with a row limit)
		if e == nil || e.suppress {
			return false // the proxy's own savepoints: their tags end nothing of the client's
		}
		var changes []router.SettingChange
		if e.opsDone < len(e.ops) {
			n := len(e.ops) // an Execute: its statement's
			if e.kind == reqQuery {
				n = e.opsDone // this statement's (completed has not counted it yet)
				for n < len(e.ops) && e.ops[n].Statement == e.stmt {
					n++
				}
			}
			changes, e.opsDone = e.ops[e.opsDone:n], n
		}
		if typ == 's' {
			body = nil
		}
		return s.conf.complete(changes, body)
	case 'E':
		s.conf.failed = true
		s.conf.aborted = s.conf.inTx // an error aborts an explicit transaction at once
		if e != nil && e.opsDone < len(e.ops) {
			e.opsDone = len(e.ops) // the statement and those after it in its Query did not run
		}
		return true
	case 'Z':
		if len(body) != 1 {
			return false
		}
		// A transaction that failed is going again (the proxy rolled back to its savepoint to
		// re-run a batch), or one is failed now: the projection, which plans SETs as failing
		// in a failed transaction, must be made again either way.
		aborted := s.conf.aborted
		return s.conf.ready(body[0]) || s.conf.aborted != aborted
	}
	return false
}

// startSettings sets both views of the session's settings, known at startup.
func (s *session) startSettings(path settingState, role userState) {
	s.conf.path, s.conf.role = path, role
	s.proj = projection{path: path.clone(), role: role.clone()}
}

// reproject makes the planning view again: the confirmed settings plus the changes of every
// statement sent and not yet answered, in order. Holds mu.
func (s *session) reproject() {
	s.proj = projection{path: s.conf.path.clone(), role: s.conf.role.clone(), inTx: s.conf.inTx, aborted: s.conf.aborted}
	if s.conf.failed && !s.conf.inTx {
		// The error aborted the implicit transaction already; the confirmed view only ends it at
		// ReadyForQuery. A client that read the error and pipelines its next statement behind the
		// Sync is planned now: foreseeing that Sync as a commit would keep the failed SETs.
		s.proj.path.endTransaction(false)
		s.proj.role.endTransaction(false)
	}
	apply := func(e *expected) {
		if !e.refused {
			for _, c := range e.ops[e.opsDone:] {
				s.proj.apply(c)
			}
		} else {
			s.proj.failing = true
		}
		if e.kind == reqSync || e.kind == reqQuery {
			s.proj.batchEnd()
		}
	}
	s.fifo.each(apply)
	if g := s.gate; g != nil {
		for i := range g.heldEnts {
			apply(&g.heldEnts[i])
		}
	}
}

// completed records the outcome of one statement of the head request: its duration or error
// class, and the mirrored or unmirrored write it made. errBody is the ErrorResponse, if it failed.
// Holds mu.
func (s *session) completed(e *expected, errBody []byte) {
	if e.refused && errBody == nil {
		// A DISCARD ALL foreseen refused ran after all (an immediate-commit statement before
		// it had ended the pipeline's transaction): the server dropped every statement.
		u := &dropUndo{drops: []router.Drop{{All: true}}}
		s.dropStatements(u)
		s.dropsDone(u)
		e.refused = false
	}
	if e.kind == reqQuery && errBody != nil {
		for u := e.drops; u != nil; u = u.next {
			if e.stmt <= u.stmt {
				s.undoDrops(u) // the statement dropping them failed or was skipped
			}
		}
	}
	if (e.kind == reqQuery || e.kind == reqExecute) && errBody == nil {
		for _, p := range e.created {
			if p.Statement == e.stmt {
				if s.names == nil {
					s.names = map[string]struct{}{}
				}
				s.names[p.Name] = struct{}{}
			}
		}
	}
	if (e.kind == reqQuery || e.kind == reqExecute) && errBody == nil && e.stmt < len(e.prepares) {
		if info := e.prepares[e.stmt]; info != nil {
			info.confirmed = true
			s.stmts[info.name] = info
			s.sqlPrepared = true
		}
	}
	o := e.obs
	if e.kind == reqQuery {
		o = nil
		if e.stmt < len(e.obsList) {
			o = e.obsList[e.stmt]
		}
		if errBody == nil {
			e.stmt++
		}
	}
	if o == nil {
		return
	}
	if errBody != nil {
		class := errorField(errBody, 'C')
		if len(class) >= 2 {
			class = class[:2]
		}
		for _, m := range o.migrations {
			s.srv.metrics.StatementError(m, o.route, class)
		}
		s.readDone(o, true)
		return
	}
	d := time.Since(o.start)
	for _, m := range o.migrations {
		s.srv.metrics.StatementDuration(m, o.route, d)
	}
	s.readDone(o, false)
	if o.write != nil {
		s.srv.metrics.MirroredWrite(o.write.Migration, o.write.Direction)
	}
	for _, u := range o.unmirrored {
		s.srv.metrics.UnmirroredWrite(u.Migration, u.Reason)
	}
}

// readDone tells the judge how a read ended on its route, outside explicit transactions. Holds mu.
//
// Inside one, a routed read that fails cannot be re-run in its old form, so nothing tells the new
// shape's failures from the statement's own: at 100 % an application's own errors would count
// against the new shape alone (there is no old route to compare with) and drop the canary to 0 %.
// Such reads count for neither route; a new shape that fails on some rows still shows in the
// comparisons (error_new mismatches), which sample reads in transactions too.
func (s *session) readDone(o *observation, failed bool) {
	if s.srv.shadow == nil || o.route != "old" && o.route != "new" || s.conf.inTx {
		return
	}
	for _, m := range o.migrations {
		s.srv.shadow.ReadDone(m, o.route, failed)
	}
}

// failedRequest undoes what the session assumed of a request the server failed or skipped: a
// Parse that created nothing, a variant that was not prepared. Holds mu.
func (s *session) failedRequest(e *expected) {
	if e == nil {
		return
	}
	if u := e.undo; u != nil && s.stmts[u.name] == u.made {
		// (A record made since, by a Parse of the name pipelined after a Close or DEALLOCATE of
		// it, stands: the server runs that Parse whatever became of this one.)
		if u.had {
			s.stmts[u.name] = u.prev
		} else {
			delete(s.stmts, u.name)
		}
		if u.hadChanges {
			s.changers[u.name] = u.prevChanges
		} else {
			delete(s.changers, u.name)
		}
		delete(s.names, u.name) // the Parse created nothing (the name was free: planParse)
	}
	if u := e.undo; u != nil {
		if r := s.dropping[u.name]; r != nil && r.seq > u.seq && r.info == u.made {
			// A Close or DEALLOCATE not yet answered dropped the record this Parse made: if it
			// is undone too, the name holds what it held before the Parse.
			r.info, r.changes, r.hadChanges, r.named = nil, u.prevChanges, u.hadChanges, false
			if u.had {
				r.info = u.prev
			}
		}
	}
	if e.variant != nil {
		e.variant.sent = false
	}
	if e.claim != nil {
		s.claims--
	}
	for u := e.drops; u != nil; u = u.next {
		s.undoDrops(u)
	}
}

// drain asks the session to close as soon as it is idle; an idle session closes now. A
// connection that has not yet sent its startup packet has nothing to finish and closes too; one
// that is authenticating is closed at its first ReadyForQuery (relayAuth).
func (s *session) drain() {
	s.mu.Lock()
	s.draining = true
	idle := s.ready && !s.closing && s.fifo.len() == 0 && s.txStatus == 'I' && !s.discarding.Load()
	preStartup := !s.ready && s.server == nil
	if idle || preStartup {
		s.closing = true
	}
	s.mu.Unlock()
	if preStartup {
		s.close()
		return
	}
	if idle {
		s.fatalToClient(codeAdminShutdown, "terminating connection because pgcanary is shutting down")
		s.close()
	}
}

// close ends the session from any goroutine: it closes the client connection, which ends the
// client loop, and cuts short a client-loop write the server is not reading. It writes nothing to
// the server: only the client loop does (see finish), so a Terminate can never land in the middle
// of a message.
func (s *session) close() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closing = true
		server, client := s.server, s.client
		if g := s.gate; g != nil {
			s.gate = nil
			close(g.done) // a client loop waiting on the gate goes on to find the session closed
			g.out.drop()
		}
		s.settleChanged()
		s.mu.Unlock()
		_ = client.Close() // ends a write to the client that holds cmu
		s.cmu.Lock()
		s.dropHeldOutput()
		s.cmu.Unlock()
		if server != nil {
			_ = server.SetWriteDeadline(time.Now())
		}
	})
}

// finish runs once the client loop has stopped writing: it says Terminate to the server, so the
// backend ends cleanly rather than logging a lost client, and closes the server connection.
func (s *session) finish() {
	s.close()
	s.mu.Lock()
	server := s.server
	s.mu.Unlock()
	if server == nil {
		return
	}
	s.smu.Lock()
	if !s.partialWrite {
		_ = server.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = server.Write([]byte{'X', 0, 0, 0, 4})
	}
	s.smu.Unlock()
	_ = server.Close()
}

func (s *session) clientReadFailed(err error) {
	switch {
	case errors.Is(err, errMalformed), errors.Is(err, errTooLarge):
		s.log.Warn("closing client after protocol violation", "err", err)
		s.fatalToClient(codeProtocolViolation, err.Error())
	case isClosed(err):
	default:
		s.log.Debug("client read", "err", err)
	}
}

// toServer appends a message for the server (startup phase, single goroutine).
func (s *session) toServer(typ byte, body []byte) {
	s.smu.Lock()
	s.toServerLocked(typ, body)
	s.smu.Unlock()
}

// toServerLocked appends a message for the server; large bodies are written through. Holds smu.
func (s *session) toServerLocked(typ byte, body []byte) {
	if len(body) >= directWriteThreshold {
		if err := s.flushServerLocked(); err != nil {
			return
		}
		hdr := appendHeader(make([]byte, 0, headerLen), typ, len(body))
		bufs := net.Buffers{hdr, body}
		n, err := bufs.WriteTo(s.server)
		s.srv.metrics.BytesToServer(int(n))
		if err != nil && n > 0 {
			s.partialWrite = true
		}
		return
	}
	s.sout = appendMessage(s.sout, typ, body)
}

func (s *session) flushServer() error {
	s.smu.Lock()
	defer s.smu.Unlock()
	return s.flushServerLocked()
}

func (s *session) flushServerLocked() error {
	if len(s.sout) == 0 {
		return nil
	}
	n, err := s.server.Write(s.sout)
	s.srv.metrics.BytesToServer(n)
	s.sout = resetBuffer(s.sout)
	if err != nil {
		s.partialWrite = s.partialWrite || n > 0
		return errUpstreamWrite
	}
	return nil
}

// toClient appends a message for the client (startup phase, single goroutine).
func (s *session) toClient(typ byte, body []byte) {
	s.cmu.Lock()
	s.appendClient(typ, body)
	s.cmu.Unlock()
}

// appendClient appends to the client buffer; large bodies are written through. Holds cmu.
func (s *session) appendClient(typ byte, body []byte) {
	if s.coutHeld != nil { // a gate's output, which this message follows, goes first
		if s.flushClientLocked() != nil {
			return
		}
	}
	if len(body) >= directWriteThreshold {
		if s.flushClientLocked() != nil {
			return
		}
		hdr := appendHeader(make([]byte, 0, headerLen), typ, len(body))
		bufs := net.Buffers{hdr, body}
		n, _ := bufs.WriteTo(s.client)
		s.srv.metrics.BytesToClient(int(n))
		return
	}
	s.cout = appendMessage(s.cout, typ, body)
}

func (s *session) flushClient() error {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	return s.flushClientLocked()
}

func (s *session) flushClientLocked() error {
	if len(s.cout) > 0 {
		n, err := s.client.Write(s.cout)
		s.srv.metrics.BytesToClient(n)
		s.cout = resetBuffer(s.cout)
		if err != nil {
			s.dropHeldOutput()
			return errClientWrite
		}
	}
	if h := s.coutHeld; h != nil {
		s.coutHeld = nil
		n, err := h.writeTo(s.client, s.beforeBlock)
		s.srv.metrics.BytesToClient(int(n))
		if err != nil {
			s.log.Debug("send a gated batch's held output", "err", err)
			return errClientWrite
		}
	}
	return nil
}

// dropHeldOutput discards a gate's output queued for a client that can no longer take it. Holds cmu.
func (s *session) dropHeldOutput() {
	if s.coutHeld != nil {
		s.coutHeld.drop()
		s.coutHeld = nil
	}
}

// fatalToClient sends a FATAL ErrorResponse from the proxy, after whatever is already queued.
func (s *session) fatalToClient(code, msg string) {
	s.cmu.Lock()
	defer s.cmu.Unlock()
	_ = s.client.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if s.coutHeld != nil && s.flushClientLocked() != nil {
		return
	}
	s.cout = appendError(s.cout, severityFatal, code, msg)
	_ = s.flushClientLocked()
}

// resetBuffer empties an output buffer, dropping it if a large message grew it.
func resetBuffer(b []byte) []byte {
	if cap(b) > 1<<20 {
		return make([]byte, 0, 8<<10)
	}
	return b[:0]
}

func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, io.ErrUnexpectedEOF)
}
