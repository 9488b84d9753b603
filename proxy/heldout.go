package proxy

import (
	"fmt"
	"io"
	"os"
)

// heldOutput is a gated batch's output, held back until the batch's fate is known (gate.go). It
// stays in memory up to maxGateOutput. A batch whose new form may fail part-way through its rows
// (a read expression that raises on some row) keeps holding beyond that, in an unlinked temporary
// file: releasing early would let such a failure reach the client, and holding it all in memory
// would let one large read exhaust the proxy's. Released, it goes to the client in order: memory,
// the file, then the tail not yet written to the file.
type heldOutput struct {
	mem    []byte
	file   *os.File // nil until the output outgrows memory
	inFile int64    // bytes written to file
	tail   []byte   // bytes after those in file, written once spillChunk gathered
	size   int64    // bytes held in all
	// full: the file could not be made or written (err says why). Nothing is lost (what the file
	// did not take stays in memory), but holding more is unsafe: the caller releases early.
	full bool
	err  error
}

// spillChunk is the unit of writes to the file and of reads back from it.
const spillChunk = 64 << 10

// add holds one message. Past maxGateOutput it goes to the file when spill is set; without spill,
// or when the file failed (full), it stays in memory and the caller releases early. It returns
// the bytes written to the file now. beforeIO, when not nil, is called before each use of the
// disk, which may block: on an event loop, it hands the loop on (session.beforeBlock).
func (h *heldOutput) add(typ byte, body []byte, spill bool, beforeIO func()) (spilled int) {
	h.size += int64(headerLen + len(body))
	if h.file == nil && (!spill || h.full || len(h.mem)+headerLen+len(body) <= maxGateOutput) {
		h.mem = appendMessage(h.mem, typ, body)
		return 0
	}
	if h.file == nil {
		callIf(beforeIO)
		f, err := os.CreateTemp("", "pgcanary-held-*")
		if err != nil {
			h.full, h.err = true, err
			h.mem = appendMessage(h.mem, typ, body)
			return 0
		}
		// Unlinked at once: the space is the kernel's to reclaim however the session ends.
		_ = os.Remove(f.Name())
		h.file = f
	}
	h.tail = appendMessage(h.tail, typ, body)
	if len(h.tail) < spillChunk || h.full {
		return 0
	}
	callIf(beforeIO)
	n, err := h.file.Write(h.tail)
	h.inFile += int64(n)
	h.tail = append(h.tail[:0], h.tail[n:]...)
	if err != nil {
		h.full, h.err = true, err
	}
	return n
}

// len is the number of bytes held.
func (h *heldOutput) len() int64 { return h.size }

// mustRelease reports whether the output has to go to the client now, before the batch ends: it
// outgrew memory and may not (or could not) go to a file.
func (h *heldOutput) mustRelease(spill bool) bool {
	return h.size > maxGateOutput && (!spill || h.full)
}

// writeTo sends what is held to w (the client) and drops it, whatever the outcome. It returns
// the bytes written. beforeIO is add's, called before the file is read back.
func (h *heldOutput) writeTo(w io.Writer, beforeIO func()) (int64, error) {
	defer h.drop()
	var total int64
	write := func(b []byte) error {
		if len(b) == 0 {
			return nil
		}
		n, err := w.Write(b)
		total += int64(n)
		return err
	}
	if err := write(h.mem); err != nil || h.file == nil {
		return total, err
	}
	callIf(beforeIO)
	if _, err := h.file.Seek(0, io.SeekStart); err != nil {
		return total, fmt.Errorf("read back a gated batch's held output: %w", err)
	}
	n, err := io.CopyBuffer(w, io.LimitReader(h.file, h.inFile), make([]byte, spillChunk))
	total += n
	if err != nil {
		return total, fmt.Errorf("send a gated batch's held output: %w", err)
	}
	if n < h.inFile {
		return total, fmt.Errorf("send a gated batch's held output: read back %d of %d bytes", n, h.inFile)
	}
	return total, write(h.tail)
}

// drop discards what is held and closes the file.
func (h *heldOutput) drop() {
	if h.file != nil {
		_ = h.file.Close()
	}
	*h = heldOutput{}
}

func callIf(f func()) {
	if f != nil {
		f()
	}
}
