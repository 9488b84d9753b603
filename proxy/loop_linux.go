//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// eventLoop reads the sockets of many sessions from one goroutine that waits in epoll itself, the
// design of PgBouncer, where each session would otherwise keep a goroutine per direction waiting
// in Go's netpoller.
//
// Why: every goroutine wake-up through the netpoller costs the scheduler (a futex wake, a spinning
// thread, a hop between CPUs). Measured on a 2-core VM at 16 pgbench clients (bench/floor.sh), a
// relay with a goroutine per direction spent 13 µs of CPU per transaction against 10.5 µs for the
// same relay as one epoll loop, and Postgres itself spent 3 µs more per transaction behind it.
//
// A pump's handler may block: a socket whose peer reads slowly, a session waiting for the
// server's answers (awaitSettled), a gate holding the client back. The goroutine running the loop
// must then not be the one that waits, or every session on the loop would wait with it. So
// anything about to block calls beforeBlock first, which hands the loop to a new goroutine (a
// leader/follower hand-off): the old one finishes its step whenever it can and exits. Few steps
// block, so hand-offs are rare; their count is in eventLoop.handoffs.
//
// Before it sleeps, a loop polls for up to busyPoll (wait): see Config.BusyPoll for why.
type eventLoop struct {
	epfd   int
	wakefd int // an eventfd that wakes the loop to stop

	mu   sync.Mutex
	regs registry
	// The queues hold the registrations with events not yet dispatched, by lane: every request
	// before any answer (see loopLane). The loop's goroutine takes them one at a time, so a
	// hand-off leaves the rest to its successor.
	requests    regQueue
	answers     regQueue
	active      *loopWorker // the goroutine that runs the loop
	dispatching bool        // the active goroutine is running a step (it may be about to block)
	stopped     bool
	pollSoon    bool          // a pump yielded: poll epoll before the next dispatch
	fdsClosed   bool          // epfd and wakefd are closed (or about to be): no more epoll_ctl
	done        chan struct{} // closed when the loop's last goroutine has exited
	handoffs    atomic.Uint64
	metrics     Metrics
	busyPoll    time.Duration // how long to poll before sleeping in epoll_pwait; 0 for not at all
	contended   time.Duration // busyPollContended, but in tests
	runq        *runQueue     // nil when busyPoll is 0 or /proc/loadavg is unreadable
}

// loopWorker identifies one goroutine that ran or runs the loop.
type loopWorker struct{ n uint64 }

// wakeID is the epoll data of the eventfd; registrations count from 1.
const wakeID = 0

// epollET is EPOLLET as the uint32 the event mask is (syscall.EPOLLET is negative on some
// architectures, positive on others).
const epollET = uint32(1) << 31

// readEvents and writeEvents are the event bits that call for a read (the pump's step) and those
// that wake a writer waiting for room.
const (
	readEvents  = syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLERR | syscall.EPOLLHUP
	writeEvents = syscall.EPOLLOUT | syscall.EPOLLERR | syscall.EPOLLHUP
)

// loopStepBudget bounds the bytes one step reads before the pump yields to the other sessions on
// the loop (it is queued again): a session streaming a large result, where the proxy is the
// bottleneck, must not starve them.
const loopStepBudget = 256 << 10

// stepResult is what a registration's step reports.
type stepResult int

const (
	stepWait  stepResult = iota // the socket is empty: wait for the next event
	stepDone                    // the pump ended
	stepAgain                   // the pump yielded with bytes left: run it again after the others
)

// Registration states: a step runs on one goroutine at a time; an event that comes while it runs
// makes it run again (regPending) instead of running twice at once.
const (
	regIdle int32 = iota
	regRunning
	regPending
	regDone
)

// loopReg is one pump on a loop: its socket and the step that reads it.
type loopReg struct {
	id    uint64
	loop  *eventLoop
	conn  *loopConn
	lane  loopLane
	step  func(fd uintptr) stepResult
	state atomic.Int32
	done  chan struct{}
	// queued: r is in one of its loop's queues (guarded by the loop's mu). A registration is
	// queued once however many events come before it runs, so a busy socket cannot push others
	// back.
	queued bool
}

// regQueue is a FIFO of registrations that reuses its slice once it empties.
type regQueue struct {
	items []*loopReg
	head  int
}

func (q *regQueue) push(r *loopReg) { q.items = append(q.items, r) }

// pop returns the first registration, or nil when the queue is empty.
func (q *regQueue) pop() *loopReg {
	if q.head == len(q.items) {
		return nil
	}
	r := q.items[q.head]
	q.items[q.head] = nil
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	return r
}

func newEventLoop(metrics Metrics, busyPoll time.Duration) (*eventLoop, error) {
	return startEventLoop(metrics, busyPoll, loopTuning{contended: busyPollContended})
}

// loopTuning is what tests change of a loop's busy polling.
type loopTuning struct {
	contended time.Duration // busyPollContended
	cpus      int           // the CPUs runQueue counts against; 0 for the machine's
}

// startEventLoop is newEventLoop with its busy polling tuned (by tests).
func startEventLoop(metrics Metrics, busyPoll time.Duration, tune loopTuning) (*eventLoop, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	const efdCloexec, efdNonblock = 0x80000, 0x800
	wfd, _, errno := syscall.RawSyscall(syscall.SYS_EVENTFD2, 0, efdCloexec|efdNonblock, 0)
	if errno != 0 {
		_ = syscall.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", errno)
	}
	l := &eventLoop{epfd: epfd, wakefd: int(wfd), done: make(chan struct{}), metrics: metrics,
		busyPoll: busyPoll, contended: tune.contended}
	if busyPoll > 0 {
		l.runq = openRunQueue(tune.cpus)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setEventID(&ev, wakeID)
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, l.wakefd, &ev); err != nil {
		_ = syscall.Close(epfd)
		_ = syscall.Close(l.wakefd)
		l.runq.close()
		return nil, fmt.Errorf("epoll_ctl (eventfd): %w", err)
	}
	l.active = &loopWorker{}
	go l.run(l.active)
	return l, nil
}

// defaultBusyPoll is Config.BusyPoll's default: DefaultBusyPoll, or none when the process runs
// under a CPU quota, which it returns (the cgroup file that sets it).
func defaultBusyPoll() (time.Duration, string) {
	if f := cpuQuotaFile("/"); f != "" {
		return 0, f
	}
	return DefaultBusyPoll, ""
}

func setEventID(ev *syscall.EpollEvent, id uint64) {
	ev.Fd = int32(uint32(id))
	ev.Pad = int32(uint32(id >> 32))
}

func eventID(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// run is the loop, on whichever goroutine is active: dispatch queued events, wait for more when
// there are none. A goroutine that is no longer active returns after its current step.
func (l *eventLoop) run(w *loopWorker) {
	events := make([]syscall.EpollEvent, 128)
	l.mu.Lock()
	for {
		if l.active != w {
			l.mu.Unlock()
			return
		}
		if l.stopped {
			l.active, l.fdsClosed = nil, true
			l.mu.Unlock()
			_ = syscall.Close(l.epfd)
			_ = syscall.Close(l.wakefd)
			l.runq.close()
			close(l.done)
			return
		}
		if l.pollSoon {
			// A pump yielded: look for other sockets' events before it runs again, or they
			// would wait behind it for as long as it streams.
			l.pollSoon = false
			l.mu.Unlock()
			n := l.wait(events, false)
			l.mu.Lock()
			l.enqueueLocked(events[:n])
			continue
		}
		r := l.requests.pop()
		if r == nil {
			r = l.answers.pop()
		}
		if r != nil {
			r.queued = false
			l.dispatching = true
			l.mu.Unlock()
			r.dispatch()
			l.mu.Lock()
			if l.active == w {
				l.dispatching = false
			}
			continue
		}
		// Not dispatching: no hand-off can take the loop from this goroutine while it waits.
		l.mu.Unlock()
		n := l.wait(events, true)
		l.mu.Lock()
		l.enqueueLocked(events[:n])
	}
}

// enqueueLocked queues the registrations events call to read, and wakes writers waiting for room.
// Holds l.mu.
func (l *eventLoop) enqueueLocked(events []syscall.EpollEvent) {
	for i := range events {
		id := eventID(&events[i])
		if id == wakeID {
			var buf [8]byte // reset the eventfd's count
			_, _, _ = syscall.RawSyscall(syscall.SYS_READ, uintptr(l.wakefd), uintptr(unsafe.Pointer(&buf[0])), 8)
			continue
		}
		r := l.regs.get(id)
		if r == nil {
			continue
		}
		if events[i].Events&writeEvents != 0 {
			r.conn.wakeWriter()
		}
		if events[i].Events&readEvents != 0 {
			q := &l.answers
			if r.lane == laneRequests {
				q = &l.requests
			}
			l.queueLocked(r, q)
		}
	}
}

// wait returns the next events. It polls first with a raw system call, which the scheduler does
// not hear of. When nothing is ready and block is set, it keeps polling for up to busyPoll, then
// blocks in a system call the scheduler knows about, so the goroutine's thread gives up its P
// meanwhile.
func (l *eventLoop) wait(events []syscall.EpollEvent, block bool) int {
	n := l.poll(events)
	if n > 0 || !block {
		return n
	}
	if l.busyPoll > 0 && (l.runq == nil || !l.runq.saturated()) {
		if n = l.spin(events); n > 0 {
			return n
		}
	}
	p := uintptr(unsafe.Pointer(&events[0]))
	for {
		n, _, errno := syscall.Syscall6(syscall.SYS_EPOLL_PWAIT, uintptr(l.epfd), p, uintptr(len(events)), ^uintptr(0), 0, 0)
		if errno == 0 {
			return int(n)
		}
		if errno != syscall.EINTR {
			panic(fmt.Sprintf("pgcanary: epoll_pwait: %v", errno))
		}
	}
}

// poll returns the events ready now, without waiting.
func (l *eventLoop) poll(events []syscall.EpollEvent) int {
	for {
		n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(l.epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
		if errno == 0 {
			return int(n)
		}
		if errno != syscall.EINTR {
			// EBADF or EFAULT: a bug, not a condition to serve through.
			panic(fmt.Sprintf("pgcanary: epoll_pwait: %v", errno))
		}
	}
}

// spin polls for up to busyPoll and returns the first events, or 0 when none came. Between polls
// it yields the CPU (sched_yield), and a yield that returns late means another thread ran
// meanwhile: the CPU is wanted, so it stops and the loop sleeps. Polling pays where a CPU would
// otherwise go idle. Where the CPUs are saturated it costs, however politely it yields: at 16
// pgbench clients on 2 CPUs, polling with these yields alone doubled the proxy's CPU per
// transaction and cost 7-20% of the transactions, hence also the run-queue check in wait.
func (l *eventLoop) spin(events []syscall.EpollEvent) int {
	start := time.Now()
	n := 0
	for now := start; n == 0; {
		_, _, _ = syscall.RawSyscall(syscall.SYS_SCHED_YIELD, 0, 0, 0)
		n = l.poll(events)
		prev := now
		now = time.Now()
		if now.Sub(start) >= l.busyPoll || now.Sub(prev) > l.contended {
			break
		}
	}
	l.metrics.LoopBusyPoll(time.Since(start))
	return n
}

// busyPollContended is how long one turn of a busy poll (a yield, a poll) takes at most when no
// other thread ran in between: about 1 µs is usual, and a thread that ran for less than the
// difference did little that polling kept from it.
const busyPollContended = 10 * time.Microsecond

// beforeBlock is called by anything that may block on a loop's behalf: if the loop's goroutine is
// in a step, which may be the caller, the loop goes on on a new goroutine. A caller that is not
// the loop's goroutine costs a needless hand-off, never a stalled loop.
func (l *eventLoop) beforeBlock() {
	l.mu.Lock()
	if l.active != nil && l.dispatching && !l.stopped {
		w := &loopWorker{n: l.handoffs.Add(1)}
		l.active, l.dispatching = w, false
		l.metrics.LoopHandoff()
		go l.run(w)
	}
	l.mu.Unlock()
}

// stop ends the loop once its sessions are gone, and waits for its goroutine to exit.
func (l *eventLoop) stop() {
	l.mu.Lock()
	first := !l.stopped
	l.stopped = true
	l.mu.Unlock()
	if first {
		l.wake()
	}
	<-l.done
}

// wake makes the loop's goroutine return from epoll (the eventfd becomes readable).
func (l *eventLoop) wake() {
	one := uint64(1)
	_, _, _ = syscall.RawSyscall(syscall.SYS_WRITE, uintptr(l.wakefd), uintptr(unsafe.Pointer(&one)), 8)
}

var errLoopStopped = errors.New("event loop stopped")

// serve runs a pump on the loop until the pump ends: step runs at once, on the caller's goroutine
// (there may be bytes buffered already), then on the loop whenever c is readable. It holds a
// reference to c until then, so c's descriptor stays open while the loop may read it.
func (l *eventLoop) serve(c *loopConn, lane loopLane, step func(fd uintptr) stepResult) error {
	if !c.acquire() {
		return opError("read", c, net.ErrClosed)
	}
	r := &loopReg{loop: l, conn: c, lane: lane, step: step, done: make(chan struct{})}
	r.state.Store(regRunning)
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		c.release()
		return errLoopStopped
	}
	r.id = l.regs.add(r)
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLOUT | syscall.EPOLLRDHUP | epollET}
	setEventID(&ev, r.id)
	err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, c.fd, &ev)
	if err != nil {
		l.regs.remove(r.id)
	} else {
		c.registered.Store(true)
	}
	l.mu.Unlock()
	if err != nil {
		c.release()
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	r.runSteps()
	<-r.done
	return nil
}

// dispatch runs the step for an event, unless it is running already: then it runs once more when
// the current run ends.
func (r *loopReg) dispatch() {
	for {
		switch r.state.Load() {
		case regIdle:
			if r.state.CompareAndSwap(regIdle, regRunning) {
				r.runSteps()
				return
			}
		case regRunning:
			if r.state.CompareAndSwap(regRunning, regPending) {
				return
			}
		default: // pending already, or done
			return
		}
	}
}

// runSteps runs the step (the caller set regRunning) until it waits with no event pending.
func (r *loopReg) runSteps() {
	for {
		switch r.step(uintptr(r.conn.fd)) {
		case stepDone:
			r.finish()
			return
		case stepAgain:
			// Idle first: the queued run may start on another goroutine as soon as it is queued.
			r.state.Store(regIdle)
			r.loop.requeue(r)
			return
		}
		if r.state.CompareAndSwap(regRunning, regIdle) {
			return
		}
		r.state.Store(regRunning) // an event came while it ran: read again
	}
}

// queueLocked puts r at the end of q unless it is queued already. Holds l.mu.
func (l *eventLoop) queueLocked(r *loopReg, q *regQueue) {
	if !r.queued {
		r.queued = true
		q.push(r)
	}
}

// requeue queues a registration that yielded. The loop's goroutine finds it after its current
// step; if it is not in one, it may be waiting in epoll, and the eventfd wakes it. It goes behind
// the answers whatever its lane: a client streaming a COPY must not keep them waiting.
func (l *eventLoop) requeue(r *loopReg) {
	l.mu.Lock()
	l.queueLocked(r, &l.answers)
	l.pollSoon = true
	wake := !l.dispatching && !l.stopped
	l.mu.Unlock()
	if wake {
		l.wake()
	}
}

// registry holds a loop's registrations by the number epoll hands back with their events: a
// slot, reused once free (an index, where a map would hash every event), and the slot's
// generation, so an event still queued for a slot's previous holder finds nothing. Guarded by the
// loop's mu.
type registry struct {
	slots []*loopReg
	gens  []uint32
	free  []uint32
	n     int
}

// add registers r and returns its number (never wakeID).
func (g *registry) add(r *loopReg) uint64 {
	var i uint32
	if k := len(g.free); k > 0 {
		i, g.free = g.free[k-1], g.free[:k-1]
	} else {
		i = uint32(len(g.slots))
		g.slots, g.gens = append(g.slots, nil), append(g.gens, 0)
	}
	g.gens[i]++
	g.slots[i] = r
	g.n++
	return uint64(g.gens[i])<<32 | uint64(i+1)
}

// get returns the registration numbered id, or nil when it is gone.
func (g *registry) get(id uint64) *loopReg {
	i := uint32(id) - 1
	if int(i) >= len(g.slots) || g.gens[i] != uint32(id>>32) {
		return nil
	}
	return g.slots[i]
}

// remove forgets the registration numbered id.
func (g *registry) remove(id uint64) {
	if r := g.get(id); r != nil {
		i := uint32(id) - 1
		g.slots[i] = nil
		g.free = append(g.free, i)
		g.n--
	}
}

func (g *registry) len() int { return g.n }

// finish takes an ended pump off the loop and releases its socket.
func (r *loopReg) finish() {
	l := r.loop
	l.mu.Lock()
	l.regs.remove(r.id)
	r.conn.registered.Store(false)
	r.conn.wakeWriter() // to wait without the loop's EPOLLOUT from now on
	if !l.fdsClosed {
		_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, r.conn.fd, nil)
	}
	l.mu.Unlock()
	r.state.Store(regDone)
	r.conn.release()
	close(r.done)
}

// runOnLoop pumps c on loop until the connection fails, closes, or the handler stops the pump,
// as run does on Go's netpoller. lane tells whether c is a client's socket or a server's.
func (p *pump) runOnLoop(l *eventLoop, c *loopConn, lane loopLane) error {
	p.budget = loopStepBudget
	p.ownClose = c.closed
	err := l.serve(c, lane, func(fd uintptr) stepResult {
		if c.closed() {
			p.err = opError("read", c, net.ErrClosed)
			return stepDone
		}
		switch {
		case p.step(fd):
			return stepDone
		case p.yielded:
			p.yielded = false
			return stepAgain
		}
		return stepWait
	})
	if p.err != nil {
		err = p.err
	}
	if errors.Is(err, errStopPump) {
		return nil
	}
	return err
}
