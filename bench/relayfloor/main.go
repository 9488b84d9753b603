// Command relayfloor is a benchmark baseline, not part of pgcanary: a byte relay between each
// client and its own server connection, with no protocol handling at all. bench/floor.sh runs it
// next to pgcanary and PgBouncer to tell the cost of pgcanary's I/O design (what Go's runtime
// and the kernel charge any relay built that way) from the cost of its protocol handling.
//
// Two designs:
//   - goroutines: pgcanary's own I/O design without its protocol layer. Each direction is one
//     goroutine reading inside a syscall.RawConn.Read callback with raw read(2) and writing with
//     raw write(2), waiting in Go's netpoller (proxy/pump.go, proxy/sysconn.go).
//   - epoll: PgBouncer's design in Go: one OS thread runs an epoll loop over every socket, with
//     raw system calls and no goroutine hand-offs.
//
// It exists for measurement only: errors end a pair of connections without a word, and a
// connection closed while its peer's event is pending may be confused with one accepted in the
// same instant (the epoll loop pairs descriptors by number).
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"runtime"
	"syscall"
	"unsafe"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:6433", "address to accept clients on")
	upstream := flag.String("upstream", "127.0.0.1:5432", "server address (host:port) each client is relayed to")
	design := flag.String("design", "goroutines", "goroutines or epoll")
	flag.Parse()
	if *design != "goroutines" && *design != "epoll" {
		fmt.Fprintf(os.Stderr, "relayfloor: --design must be goroutines or epoll, got %q\n", *design)
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("relayfloor: %v", err)
	}
	epfd := -1
	if *design == "epoll" {
		if epfd, err = syscall.EpollCreate1(syscall.EPOLL_CLOEXEC); err != nil {
			log.Fatalf("relayfloor: epoll_create1: %v", err)
		}
		go epollLoop(epfd)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatalf("relayfloor: accept: %v", err)
		}
		s, err := net.Dial("tcp", *upstream)
		if err != nil {
			log.Printf("relayfloor: connect to %s: %v", *upstream, err)
			_ = c.Close()
			continue
		}
		if *design == "goroutines" {
			go relay(c.(*net.TCPConn), s.(*net.TCPConn))
			go relay(s.(*net.TCPConn), c.(*net.TCPConn))
			continue
		}
		cfd, err1 := detach(c)
		sfd, err2 := detach(s)
		if err1 != nil || err2 != nil {
			log.Printf("relayfloor: %v %v", err1, err2)
			continue
		}
		// Edge-triggered, like Go's netpoller; Pad carries the peer's descriptor.
		for _, p := range [][2]int{{cfd, sfd}, {sfd, cfd}} {
			ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | -syscall.EPOLLET, Fd: int32(p[0]), Pad: int32(p[1])}
			if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, p[0], &ev); err != nil {
				log.Printf("relayfloor: epoll_ctl: %v", err)
			}
		}
	}
}

// relay copies from one connection to the other, as pgcanary's pump does: raw reads inside one
// RawConn.Read callback, until a short read says the socket is empty (edge-triggered readiness
// comes again with new data), raw writes to the peer.
func relay(from, to *net.TCPConn) {
	defer from.Close()
	defer to.Close()
	rc, err := from.SyscallConn()
	if err != nil {
		return
	}
	wc, err := to.SyscallConn()
	if err != nil {
		return
	}
	var wfd uintptr
	if err := wc.Control(func(fd uintptr) { wfd = fd }); err != nil {
		return
	}
	buf := make([]byte, 32<<10)
	_ = rc.Read(func(fd uintptr) bool {
		for {
			n, errno := rawIO(syscall.SYS_READ, fd, buf)
			switch {
			case errno == syscall.EAGAIN:
				return false
			case errno == syscall.EINTR:
				continue
			case errno != 0 || n == 0:
				return true
			}
			if !writeAll(wfd, buf[:n]) {
				return true
			}
			if n < len(buf) {
				return false
			}
		}
	})
}

// epollLoop relays every registered pair on one locked OS thread. It polls without blocking
// first (a raw system call: the scheduler is not involved), and blocks in a regular one only
// when nothing is ready.
func epollLoop(epfd int) {
	runtime.LockOSThread()
	events := make([]syscall.EpollEvent, 128)
	buf := make([]byte, 64<<10)
	for {
		n, _, errno := syscall.RawSyscall6(syscall.SYS_EPOLL_WAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
		if errno == 0 && n == 0 {
			n, _, errno = syscall.Syscall6(syscall.SYS_EPOLL_WAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), ^uintptr(0), 0, 0)
		}
		if errno != 0 {
			continue // EINTR
		}
		for _, ev := range events[:n] {
			fd, peer := uintptr(ev.Fd), uintptr(ev.Pad)
			for {
				r, errno := rawIO(syscall.SYS_READ, fd, buf)
				if errno == syscall.EAGAIN {
					break
				}
				if errno == syscall.EINTR {
					continue
				}
				if errno != 0 || r == 0 || !writeAll(peer, buf[:r]) {
					_ = syscall.Close(int(fd))
					_ = syscall.Close(int(peer))
					break
				}
				if r < len(buf) {
					break
				}
			}
		}
	}
}

// detach takes a connection's descriptor out of Go's netpoller: a non-blocking duplicate, the
// connection itself closed.
func detach(c net.Conn) (int, error) {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return -1, err
	}
	dup := -1
	var dupErr error
	if err := rc.Control(func(fd uintptr) { dup, dupErr = syscall.Dup(int(fd)) }); err != nil {
		return -1, err
	}
	_ = c.Close()
	if dupErr != nil {
		return -1, dupErr
	}
	return dup, syscall.SetNonblock(dup, true)
}

// writeAll writes b to a non-blocking socket, retrying while it is full (a spin: a baseline
// relay of small messages rarely meets a full socket).
func writeAll(fd uintptr, b []byte) bool {
	for len(b) > 0 {
		n, errno := rawIO(syscall.SYS_WRITE, fd, b)
		switch errno {
		case 0:
			b = b[n:]
		case syscall.EAGAIN, syscall.EINTR:
		default:
			return false
		}
	}
	return true
}

func rawIO(trap, fd uintptr, b []byte) (int, syscall.Errno) {
	n, _, errno := syscall.RawSyscall(trap, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	return int(n), errno
}
