//go:build linux

package proxy

import (
	"errors"
	"net"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// loopConn is a socket taken out of Go's netpoller for an event loop (loop_linux.go): the loop
// waits for it to be readable, a pump reads it with raw system calls, and anyone writes it with
// Write. It keeps net.Conn's contract for what the session does with a connection after startup:
// Write from any goroutine, a write deadline, Close from any goroutine waking a blocked write.
//
// A descriptor number is reused as soon as it is closed, so Close only shuts the socket down
// (which wakes whatever waits on it) and the descriptor is closed when the last operation using
// it ends: refs counts them (the loop's registration is one), with closedBit set by Close.
type loopConn struct {
	fd           int
	loop         *eventLoop // told before a write blocks
	laddr, raddr net.Addr
	refs         atomic.Int64
	wdeadline    atomic.Int64 // UnixNano; 0 for none
	// registered: the socket is on the loop's epoll set (its pump runs), whose EPOLLOUT then
	// wakes a writer waiting for room through writable.
	registered    atomic.Bool
	writerWaiting atomic.Bool
	writable      chan struct{}
	slowWakes     atomic.Uint64 // parked writes that woke by their timer, not the loop (tests)
}

const closedBit = 1 << 62

// writePollSlice bounds one wait for room in the send buffer: a safety net, since a moved deadline
// and a close wake the writer anyway.
const writePollSlice = 100 * time.Millisecond

// detachConns moves plain TCP or Unix-socket connections out of Go's netpoller onto loop. Either
// all of them move or none (the error says why); the originals are closed when they move.
func detachConns(loop *eventLoop, conns ...net.Conn) ([]*loopConn, error) {
	out := make([]*loopConn, 0, len(conns))
	fail := func(err error) ([]*loopConn, error) {
		for _, c := range out {
			_ = syscall.Close(c.fd)
		}
		return nil, err
	}
	for _, c := range conns {
		sc, ok := c.(*sysConn)
		if !ok {
			return fail(errors.New("not a plain socket"))
		}
		fd, err := dupSocket(sc.rc)
		if err != nil {
			return fail(err)
		}
		out = append(out, &loopConn{fd: fd, loop: loop, laddr: c.LocalAddr(), raddr: c.RemoteAddr(), writable: make(chan struct{}, 1)})
	}
	for _, c := range conns {
		_ = c.Close() // Go's netpoller forgets the descriptor; the duplicate keeps the socket open
	}
	return out, nil
}

// dupSocket duplicates a socket's descriptor (close-on-exec; non-blocking, a flag the duplicate
// shares with the original).
func dupSocket(rc syscall.RawConn) (int, error) {
	fd := -1
	var dupErr error
	err := rc.Control(func(orig uintptr) {
		r, _, errno := syscall.RawSyscall(syscall.SYS_FCNTL, orig, syscall.F_DUPFD_CLOEXEC, 0)
		if errno != 0 {
			dupErr = os.NewSyscallError("fcntl(F_DUPFD_CLOEXEC)", errno)
			return
		}
		fd = int(r)
	})
	if err == nil {
		err = dupErr
	}
	return fd, err
}

// acquire takes a reference for an operation on fd; false once the connection is closed.
func (c *loopConn) acquire() bool {
	for {
		v := c.refs.Load()
		if v&closedBit != 0 {
			return false
		}
		if c.refs.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

func (c *loopConn) release() {
	if c.refs.Add(-1) == closedBit {
		_ = syscall.Close(c.fd)
	}
}

func (c *loopConn) closed() bool { return c.refs.Load()&closedBit != 0 }

// Close shuts the socket down, which ends a pump reading it and a write waiting on it; the
// descriptor closes when the last of them lets go. Close holds a reference of its own across the
// shutdown: were the last one let go in between, the number could already name another socket.
func (c *loopConn) Close() error {
	for {
		v := c.refs.Load()
		if v&closedBit != 0 {
			return opError("close", c, net.ErrClosed)
		}
		if v == 0 {
			if c.refs.CompareAndSwap(0, closedBit) {
				return os.NewSyscallError("close", syscall.Close(c.fd))
			}
			continue
		}
		if c.refs.CompareAndSwap(v, (v+1)|closedBit) {
			_ = syscall.Shutdown(c.fd, syscall.SHUT_RDWR)
			c.wakeWriter()
			c.release()
			return nil
		}
	}
}

// Write writes all of p. When the send buffer is full it waits for room, after handing the loop
// on (beforeBlock): the caller may be the loop's goroutine.
func (c *loopConn) Write(p []byte) (int, error) {
	if !c.acquire() {
		return 0, opError("write", c, net.ErrClosed)
	}
	defer c.release()
	if c.pastDeadline() {
		return 0, opError("write", c, os.ErrDeadlineExceeded)
	}
	n := 0
	for n < len(p) {
		rest := p[n:]
		w, errno := sendRaw(uintptr(c.fd), rest)
		switch errno {
		case 0:
			n += int(w)
		case syscall.EINTR:
		case syscall.EAGAIN:
			if err := c.waitWritable(); err != nil {
				return n, opError("write", c, err)
			}
		default:
			if c.closed() {
				return n, opError("write", c, net.ErrClosed)
			}
			return n, opError("write", c, errno)
		}
	}
	return n, nil
}

func (c *loopConn) pastDeadline() bool {
	d := c.wdeadline.Load()
	return d != 0 && time.Now().UnixNano() >= d
}

// waitWritable waits until the socket may take more, the deadline passes, or it is closed. While
// the socket is on the loop, the loop's EPOLLOUT wakes the writer, which waits as a parked
// goroutine; otherwise (its pump has ended) it waits in ppoll, in slices so a moved deadline is
// seen.
func (c *loopConn) waitWritable() error {
	if c.loop != nil {
		c.loop.beforeBlock()
	}
	c.writerWaiting.Store(true)
	defer c.writerWaiting.Store(false)
	for {
		if c.closed() {
			return net.ErrClosed
		}
		wait := writePollSlice
		if d := c.wdeadline.Load(); d != 0 {
			left := time.Until(time.Unix(0, d))
			if left <= 0 {
				return os.ErrDeadlineExceeded
			}
			wait = min(wait, left)
		}
		// Room may have come before writerWaiting was set, its wake-up missed: look once first.
		if c.pollWritable(0) {
			return nil
		}
		if !c.registered.Load() {
			if c.pollWritable(wait) {
				return nil
			}
			continue
		}
		t := time.NewTimer(wait)
		select {
		case <-c.writable:
		case <-t.C:
			c.slowWakes.Add(1)
		}
		t.Stop()
	}
}

// pollWritable reports whether the socket takes more (or has an error or hang-up the next write
// reports), waiting up to wait.
func (c *loopConn) pollWritable(wait time.Duration) bool {
	type pollFd struct {
		fd      int32
		events  int16
		revents int16
	}
	const pollOut = 0x4
	pfd := pollFd{fd: int32(c.fd), events: pollOut}
	ts := syscall.NsecToTimespec(int64(wait))
	var n uintptr
	var errno syscall.Errno
	if wait == 0 {
		n, _, errno = syscall.RawSyscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	} else {
		n, _, errno = syscall.Syscall6(syscall.SYS_PPOLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	}
	return errno == 0 && n > 0
}

// wakeWriter wakes a write waiting for room, to look again (room, a deadline moved, a close).
func (c *loopConn) wakeWriter() {
	if c.writerWaiting.Load() {
		select {
		case c.writable <- struct{}{}:
		default:
		}
	}
}

// Read is not how a loopConn is read: its pump reads the descriptor on the loop.
func (c *loopConn) Read([]byte) (int, error) {
	return 0, opError("read", c, errors.New("a socket on an event loop is read by its pump"))
}

func (c *loopConn) LocalAddr() net.Addr  { return c.laddr }
func (c *loopConn) RemoteAddr() net.Addr { return c.raddr }

// SetDeadline sets the write deadline (reads wait on the loop, which has none).
func (c *loopConn) SetDeadline(t time.Time) error     { return c.SetWriteDeadline(t) }
func (c *loopConn) SetReadDeadline(t time.Time) error { return nil }

func (c *loopConn) SetWriteDeadline(t time.Time) error {
	var d int64
	if !t.IsZero() {
		d = t.UnixNano()
	}
	c.wdeadline.Store(d)
	c.wakeWriter()
	return nil
}
