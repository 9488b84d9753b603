//go:build linux

package proxy

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// runQueue tells whether the machine's CPUs are all taken: the fourth field of /proc/loadavg
// counts the threads running or waiting for a CPU at the moment it is read ("3/113"), and more of
// them than CPUs means some wait. An event loop busy polls only when none do: a polling thread
// occupies a CPU, so the scheduler would not move a waiting thread onto it (measured at 16
// pgbench clients on 2 CPUs, simple protocol: with polling, 16-20 runnable threads against 3-6
// without, and 5-25% fewer transactions). Reading it costs one pread, under a microsecond.
type runQueue struct {
	fd   int
	cpus int
	buf  [128]byte
	// fullUntil: the last reading found the CPUs taken; until then, take that as the answer.
	// A saturated machine runs out of work often (at 16 clients on 2 CPUs, a loop went to sleep
	// about every other transaction), and each reading would cost a system call there.
	fullUntil time.Time
}

// runQueueFullFor is how long a reading that found the CPUs taken stands.
const runQueueFullFor = 250 * time.Microsecond

// openRunQueue returns nil when /proc/loadavg cannot be read: the loop then polls without asking.
// cpus is the machine's online CPUs when 0.
func openRunQueue(cpus int) *runQueue {
	fd, err := syscall.Open("/proc/loadavg", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil
	}
	if cpus == 0 {
		cpus = onlineCPUs()
	}
	return &runQueue{fd: fd, cpus: cpus}
}

// saturated reports whether at least as many threads are runnable as there are CPUs, the caller
// included: another thread runnable now would wait for a CPU, or already does.
func (q *runQueue) saturated() bool {
	now := time.Now()
	if now.Before(q.fullUntil) {
		return true
	}
	n, err := syscall.Pread(q.fd, q.buf[:], 0)
	if err != nil || n <= 0 {
		return false
	}
	running, ok := loadavgRunnable(q.buf[:n])
	if ok && running > q.cpus {
		q.fullUntil = now.Add(runQueueFullFor)
		return true
	}
	return false
}

// close releases the descriptor; a nil runQueue (none was opened) has nothing to release.
func (q *runQueue) close() {
	if q != nil {
		_ = syscall.Close(q.fd)
	}
}

// loadavgRunnable parses the runnable count out of /proc/loadavg: "0.50 0.60 0.70 3/113 12345".
func loadavgRunnable(b []byte) (int, bool) {
	fields := 0
	i := 0
	for i < len(b) && fields < 3 {
		if b[i] == ' ' {
			fields++
		}
		i++
	}
	n, digits := 0, 0
	for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
		n = n*10 + int(b[i]-'0')
		digits++
	}
	return n, digits > 0 && i < len(b) && b[i] == '/'
}

// onlineCPUs counts the machine's online CPUs (/sys/devices/system/cpu/online, "0-3,6"): the
// runnable count covers all of them, whatever the process's own CPU set.
func onlineCPUs() int {
	raw, err := os.ReadFile("/sys/devices/system/cpu/online")
	if err != nil {
		return runtime.NumCPU()
	}
	n := 0
	for r := range strings.SplitSeq(strings.TrimSpace(string(raw)), ",") {
		lo, hi, isRange := strings.Cut(r, "-")
		a, errA := strconv.Atoi(lo)
		b := a
		var errB error
		if isRange {
			b, errB = strconv.Atoi(hi)
		}
		if errA != nil || errB != nil || b < a {
			return runtime.NumCPU()
		}
		n += b - a + 1
	}
	return max(n, 1)
}
