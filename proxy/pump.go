package proxy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"syscall"
)

// pump reads typed messages from a plain TCP socket and hands each complete one to a handler. The
// whole read loop runs inside one syscall.RawConn.Read callback, so the socket's lock and
// readiness bookkeeping happen once per session rather than once per read, and bodies reach the
// handler as slices of the pump's buffer (no copy; valid until the handler returns).
//
// When to wait for readiness. A short read (fewer bytes than asked) means the socket was empty at
// that moment: Linux copies every queued segment, and data that arrives later raises a new
// readiness event. The one thing a short read cannot tell is a FIN that arrived together with the
// data, under the same edge-triggered event: waiting then would never see the EOF. So by default
// the pump confirms with one more read that finds EAGAIN before it waits. That read costs a system
// call per message batch in each direction, about a third of the proxy's system calls on a
// pgbench transaction, so the session may waive it (mayRest) after a batch that ended on a whole
// message whose loss of EOF is noticed another way: a client Query or Sync is always answered, and
// answering a peer that has closed draws a TCP reset, which is a new event; after the server's
// ReadyForQuery the next request written to it does the same. A batch that ends mid-message, or
// on anything else (a FATAL, a Flush, a COPY chunk), is confirmed.
//
// The callback may block in the handler (writing to the other connection when its send buffer is
// full); that is allowed, and closing either connection ends the wait.
type pump struct {
	buf        []byte
	start, end int // unprocessed bytes are buf[start:end]
	maxBody    int
	handle     func(typ byte, body []byte) error
	flush      func() error // called before the pump waits for input
	mayRest    func(typ byte) bool
	readable   bool // no read has found the socket empty since the last wait
	short      bool // the last read returned fewer bytes than asked for
	last       byte // the type of the last message handled
	err        error
	fn         func(fd uintptr) bool
	// handleRun, when set, takes the place of handle: it gets every whole message buffered at
	// once, headers included and checked, as a run of one or more (valid until it returns). With
	// last set, the pump waits for input after the run (the read that brought it found the
	// socket empty, as far as mayRest lets it tell): the handler flushes then, while it holds
	// what the flush needs, and the pump does not.
	handleRun  func(run []byte, last bool) error
	runFlushed bool // the last run's handler flushed
	// budget, when not 0, bounds the bytes one step reads: the step then flushes and returns
	// with yielded set, bytes possibly left in the socket (an event loop runs it again later).
	budget  int
	yielded bool
	// ownClose, when set, tells that the proxy closed the connection itself: what was handled
	// is then not passed on as the pump ends.
	ownClose func() bool
}

const (
	pumpBufferSize = 32 << 10
	pumpMinRead    = 4 << 10 // compact or grow when less room than this is left at the end
)

// errStopPump ends a pump without an error (a client's Terminate).
var errStopPump = errors.New("pump stopped")

// newPump returns a pump whose buffer starts with initial (bytes read ahead during startup).
// mayRest, if not nil, says whether a short read that ended exactly after a message of the given
// type may be taken as "the socket is empty" without a confirming read (see the type's comment).
func newPump(initial []byte, maxMessageSize int, handle func(byte, []byte) error, flush func() error, mayRest func(byte) bool) *pump {
	size := max(pumpBufferSize, len(initial)+pumpMinRead)
	p := &pump{buf: make([]byte, size), maxBody: maxMessageSize - 4, handle: handle, flush: flush, mayRest: mayRest}
	p.end = copy(p.buf, initial)
	p.fn = p.step
	return p
}

// run pumps until the connection fails, closes, or the handler stops it. It returns nil when the
// handler stopped it with errStopPump.
func (p *pump) run(rc syscall.RawConn) error {
	err := rc.Read(p.fn)
	if p.err != nil {
		err = p.err
	}
	if errors.Is(err, errStopPump) {
		return nil
	}
	return err
}

// step is the RawConn.Read callback. RawRead calls it first and again after each readiness event,
// so on entry the socket may hold bytes.
func (p *pump) step(fd uintptr) bool {
	p.readable = true
	read := 0
	for {
		if err := p.process(); err != nil {
			p.err = err
			return true
		}
		if p.restsAfter(p.start) {
			p.readable = false
		}
		p.short = false
		if !p.readable {
			if p.runFlushed {
				p.runFlushed = false
				return false
			}
			if err := p.flush(); err != nil {
				p.err = err
				return true
			}
			return false // wait for the next readiness event
		}
		if p.budget > 0 && read >= p.budget {
			if err := p.flush(); err != nil {
				p.err = err
				return true
			}
			p.yielded = true
			return false
		}
		p.makeRoom()
		space := p.buf[p.end:]
		n, errno := recvRaw(fd, space)
		switch errno {
		case 0:
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			p.readable = false
			continue
		default:
			p.err = errno
			return p.stop()
		}
		if n == 0 {
			p.err = io.EOF
			if p.end > p.start {
				p.err = io.ErrUnexpectedEOF
			}
			return p.stop()
		}
		p.end += int(n)
		read += int(n)
		p.short = int(n) < len(space)
	}
}

// stop ends the pump after a read error or EOF, first passing on what was already handled: a
// peer's last words (Postgres's FATAL before it closes) must reach the other side.
func (p *pump) stop() bool {
	if p.ownClose == nil || !p.ownClose() {
		_ = p.flush()
	}
	return true
}

// process hands every complete buffered message to the handler.
func (p *pump) process() error {
	if p.handleRun != nil {
		return p.processRun()
	}
	for p.end-p.start >= headerLen {
		n, err := p.frameLen(p.start)
		if err != nil {
			return err
		}
		if p.end-p.start < 1+n {
			return nil // incomplete
		}
		typ, body := p.buf[p.start], p.buf[p.start+headerLen:p.start+1+n]
		p.start += 1 + n
		p.last = typ
		if err := p.handle(typ, body); err != nil {
			return err
		}
	}
	return nil
}

// processRun hands every complete buffered message to handleRun, as one run. A bad frame ends
// the pump after the messages before it are handled.
func (p *pump) processRun() error {
	end := p.start
	var bad error
	for p.end-end >= headerLen {
		n, err := p.frameLen(end)
		if err != nil {
			bad = err
			break
		}
		if p.end-end < 1+n {
			break // incomplete
		}
		p.last = p.buf[end]
		end += 1 + n
	}
	p.runFlushed = false
	if end > p.start {
		run := p.buf[p.start:end]
		p.start = end
		last := bad == nil && p.restsAfter(end)
		if err := p.handleRun(run, last); err != nil {
			return err
		}
		p.runFlushed = last
	}
	return bad
}

// restsAfter reports whether the pump may wait for input once the messages before buf[at] are
// handled: they are all it holds, the read that brought them was short, and the last one vouches
// for an EOF that came with it being noticed (mayRest).
func (p *pump) restsAfter(at int) bool {
	return p.short && at == p.end && p.mayRest != nil && p.mayRest(p.last)
}

// frameLen returns the length field of the message header at buf[at:], which must be buffered,
// checked against the protocol's minimum and the pump's limit.
func (p *pump) frameLen(at int) (int, error) {
	typ := p.buf[at]
	n := int(binary.BigEndian.Uint32(p.buf[at+1 : at+headerLen]))
	if n < 4 {
		return 0, fmt.Errorf("%w: message %q declares length %d", errMalformed, typ, n)
	}
	if n-4 > p.maxBody {
		return 0, fmt.Errorf("%w: message %q of %d bytes, limit %d", errTooLarge, typ, n-4, p.maxBody)
	}
	return n, nil
}

// makeRoom ensures space to read into: the whole of a partly received message, or at least
// pumpMinRead bytes. A buffer grown for a large message shrinks back once it is empty.
func (p *pump) makeRoom() {
	if p.start == p.end {
		p.start, p.end = 0, 0
		if len(p.buf) > 1<<20 {
			p.buf = make([]byte, pumpBufferSize)
		}
	}
	need := pumpMinRead
	if p.end-p.start >= headerLen {
		n := int(binary.BigEndian.Uint32(p.buf[p.start+1:]))
		need = max(need, 1+n-(p.end-p.start))
	}
	if len(p.buf)-p.end >= need {
		return
	}
	used := p.end - p.start
	if used+need <= len(p.buf) {
		copy(p.buf, p.buf[p.start:p.end])
	} else {
		nb := make([]byte, used+need)
		copy(nb, p.buf[p.start:p.end])
		p.buf = nb
	}
	p.start, p.end = 0, used
}
