package proxy

import (
	"runtime"
	"sync"
	"sync/atomic"
)

// sessionMutex guards state a session's two pumps share. Taking it when another goroutine holds
// it first hands the session's event loop on (eventLoop.beforeBlock): the pump that waits may be
// running on the loop's goroutine, which must not wait on a session's behalf.
type sessionMutex struct {
	sync.Mutex
	loop atomic.Pointer[eventLoop] // nil when the session does not run on a loop
}

func (m *sessionMutex) Lock() {
	if m.TryLock() {
		return
	}
	if l := m.loop.Load(); l != nil {
		l.beforeBlock()
	}
	m.Mutex.Lock()
}

// setLoop sets the loop the session's mutexes hand on when contended.
func (s *session) setLoop(l *eventLoop) {
	s.loop = l
	s.mu.loop.Store(l)
	s.smu.loop.Store(l)
	s.cmu.loop.Store(l)
}

// beforeBlock is called before the session waits for something other than a mutex (a gate, the
// server's answers): see eventLoop.beforeBlock.
func (s *session) beforeBlock() {
	if s.loop != nil {
		s.loop.beforeBlock()
	}
}

// defaultEventLoops is how many event loops serve sessions when Config.EventLoops is 0: one per
// two CPUs. A loop uses up to one CPU; Postgres and the clients on the same host need the others.
func defaultEventLoops() int { return (runtime.GOMAXPROCS(0) + 1) / 2 }

// pickLoopLocked returns the event loop for a new session, starting the loops on first use, or
// nil when sessions do not use loops. Holds s.mu.
func (s *Server) pickLoopLocked() *eventLoop {
	if s.eventLoops <= 0 || s.loopsStopped {
		return nil
	}
	if s.loops == nil {
		for range s.eventLoops {
			l, err := newEventLoop(s.metrics, s.busyPoll)
			if err != nil {
				s.log.Warn("event loops unavailable: each session keeps a goroutine per direction", "err", err)
				for _, started := range s.loops {
					started.stop()
				}
				s.loops, s.eventLoops = nil, 0
				return nil
			}
			s.loops = append(s.loops, l)
		}
	}
	s.loopNext++
	return s.loops[s.loopNext%uint64(len(s.loops))]
}

// stopLoops ends the event loops once no session uses them; none start after.
func (s *Server) stopLoops() {
	s.mu.Lock()
	loops := s.loops
	s.loops, s.loopsStopped = nil, true
	s.mu.Unlock()
	for _, l := range loops {
		l.stop()
	}
}

// waitGate waits until a gate opens (its done channel closes).
func (s *session) waitGate(g *gate) {
	select {
	case <-g.done:
		return
	default:
	}
	s.beforeBlock()
	<-g.done
}

// loopLane says which of its loop's queues a registration's events wait in. Of the events one wait
// brings, the loop dispatches those of clients' sockets (requests, to be written to their servers)
// before those of servers' sockets (answers, to be written to their clients).
//
// Why: on a machine whose CPUs are all busy (16 pgbench clients on 2 CPUs), an answer written
// to a client wakes it, and the woken client often takes the loop's CPU at once, while requests
// that came in the same wait sit unread and their servers idle. Requests first, each server has
// its work before any client is woken. Measured on a 2-core VM at 16 clients, in 40 interleaved
// pairs of 5 s runs against the binary without lanes: 0.1-0.3 fewer context switches per
// transaction machine-wide in every sitting, and a median of 3 % more transactions, which is
// within the host's noise (bench/README.md, session 14).
type loopLane int

const (
	laneAnswers  loopLane = iota // a server's socket
	laneRequests                 // a client's socket
)
