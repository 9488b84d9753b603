//go:build linux

package proxy

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
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
type eventLoop struct {
	epfd   int
	wakefd int // an eventfd that wakes the loop to stop

	mu     sync.Mutex
	regs   map[uint64]*loopReg
	nextID uint64
	// queue holds the registrations with events not yet dispatched. The loop's goroutine takes
	// them one at a time, so a hand-off leaves the rest to its successor.
	queue       []uint64
	head        int
	active      *loopWorker // the goroutine that runs the loop
	dispatching bool        // the active goroutine is running a step (it may be about to block)
	stopped     bool
	fdsClosed   bool          // epfd and wakefd are closed (or about to be): no more epoll_ctl
	done        chan struct{} // closed when the loop's last goroutine has exited
	handoffs    atomic.Uint64
	metrics     Metrics
}

// loopWorker identifies one goroutine that ran or runs the loop.
type loopWorker struct{ n uint64 }

// wakeID is the epoll data of the eventfd; registrations count from 1.
const wakeID = 0

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
	step  func(fd uintptr) bool // reads until the socket is empty (false) or the pump ends (true)
	state atomic.Int32
	done  chan struct{}
}

func newEventLoop(metrics Metrics) (*eventLoop, error) {
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
	l := &eventLoop{epfd: epfd, wakefd: int(wfd), regs: make(map[uint64]*loopReg), done: make(chan struct{}), metrics: metrics}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setEventID(&ev, wakeID)
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, l.wakefd, &ev); err != nil {
		_ = syscall.Close(epfd)
		_ = syscall.Close(l.wakefd)
		return nil, fmt.Errorf("epoll_ctl (eventfd): %w", err)
	}
	l.active = &loopWorker{}
	go l.run(l.active)
	return l, nil
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
			close(l.done)
			return
		}
		if l.head < len(l.queue) {
			id := l.queue[l.head]
			l.head++
			if l.head == len(l.queue) {
				l.queue, l.head = l.queue[:0], 0
			}
			r := l.regs[id]
			l.dispatching = true
			l.mu.Unlock()
			if r != nil {
				r.dispatch()
			}
			l.mu.Lock()
			if l.active == w {
				l.dispatching = false
			}
			continue
		}
		// Not dispatching: no hand-off can take the loop from this goroutine while it waits.
		l.mu.Unlock()
		n := l.wait(events)
		l.mu.Lock()
		for i := range events[:n] {
			if id := eventID(&events[i]); id != wakeID {
				l.queue = append(l.queue, id)
			}
		}
	}
}

// wait returns the next events. It polls first with a raw system call, which the scheduler does
// not hear of; only when nothing is ready does it block, in a system call the scheduler knows
// about, so the goroutine's thread gives up its P meanwhile.
func (l *eventLoop) wait(events []syscall.EpollEvent) int {
	p := uintptr(unsafe.Pointer(&events[0]))
	for {
		n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(l.epfd), p, uintptr(len(events)), 0, 0, 0)
		if errno == 0 && n == 0 {
			n, _, errno = syscall.Syscall6(syscall.SYS_EPOLL_PWAIT, uintptr(l.epfd), p, uintptr(len(events)), ^uintptr(0), 0, 0)
		}
		if errno == 0 {
			return int(n)
		}
		if errno != syscall.EINTR {
			// EBADF or EFAULT: a bug, not a condition to serve through. Nothing is ready.
			panic(fmt.Sprintf("pgcanary: epoll_pwait: %v", errno))
		}
	}
}

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
		one := uint64(1)
		_, _, _ = syscall.RawSyscall(syscall.SYS_WRITE, uintptr(l.wakefd), uintptr(unsafe.Pointer(&one)), 8)
	}
	<-l.done
}

var errLoopStopped = errors.New("event loop stopped")

// serve runs a pump on the loop until the pump ends: step runs at once, on the caller's goroutine
// (there may be bytes buffered already), then on the loop whenever c is readable. It holds a
// reference to c until then, so c's descriptor stays open while the loop may read it.
func (l *eventLoop) serve(c *loopConn, step func(fd uintptr) bool) error {
	if !c.acquire() {
		return opError("read", c, net.ErrClosed)
	}
	r := &loopReg{loop: l, conn: c, step: step, done: make(chan struct{})}
	r.state.Store(regRunning)
	l.mu.Lock()
	if l.stopped {
		l.mu.Unlock()
		c.release()
		return errLoopStopped
	}
	l.nextID++
	r.id = l.nextID
	l.regs[r.id] = r
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | -syscall.EPOLLET}
	setEventID(&ev, r.id)
	err := syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_ADD, c.fd, &ev)
	if err != nil {
		delete(l.regs, r.id)
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
		if r.step(uintptr(r.conn.fd)) {
			r.finish()
			return
		}
		if r.state.CompareAndSwap(regRunning, regIdle) {
			return
		}
		r.state.Store(regRunning) // an event came while it ran: read again
	}
}

// finish takes an ended pump off the loop and releases its socket.
func (r *loopReg) finish() {
	l := r.loop
	l.mu.Lock()
	delete(l.regs, r.id)
	if !l.fdsClosed {
		_ = syscall.EpollCtl(l.epfd, syscall.EPOLL_CTL_DEL, r.conn.fd, nil)
	}
	l.mu.Unlock()
	r.state.Store(regDone)
	r.conn.release()
	close(r.done)
}

// runOnLoop pumps c on loop until the connection fails, closes, or the handler stops the pump,
// as run does on Go's netpoller.
func (p *pump) runOnLoop(l *eventLoop, c *loopConn) error {
	err := l.serve(c, func(fd uintptr) bool {
		if c.closed() {
			p.err = opError("read", c, net.ErrClosed)
			return true
		}
		return p.step(fd)
	})
	if p.err != nil {
		err = p.err
	}
	if errors.Is(err, errStopPump) {
		return nil
	}
	return err
}
