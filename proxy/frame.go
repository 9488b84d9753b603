package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Postgres frames every message after startup as: one type byte, a 4-byte big-endian length that
// counts itself but not the type byte, then the body.
const headerLen = 5

// errMalformed and errTooLarge mark framing errors on the client side; the session answers them
// with SQLSTATE 08P01 before closing.
var (
	errMalformed = errors.New("malformed message frame")
	errTooLarge  = errors.New("message exceeds the maximum message size")
)

// frameReader reads typed messages from a buffered connection. A body that fits in the bufio
// buffer is returned as a slice of that buffer (no copy), valid until the next call to next; a
// larger body is read into a buffer the reader owns and drops again once it is done, so a single
// 100 MB value does not pin 100 MB for the rest of the session.
type frameReader struct {
	r       *bufio.Reader
	maxBody int
	pending int // bytes of the last peeked body still to discard
	big     []byte
}

func newFrameReader(r *bufio.Reader, maxMessageSize int) *frameReader {
	return &frameReader{r: r, maxBody: maxMessageSize - 4}
}

// next returns the next message. The body aliases internal buffers: copy what must outlive the
// following call.
func (fr *frameReader) next() (typ byte, body []byte, err error) {
	if err := fr.release(); err != nil {
		return 0, nil, err
	}
	hdr, err := fr.r.Peek(headerLen)
	if err != nil {
		if errors.Is(err, io.EOF) && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	typ = hdr[0]
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 {
		return typ, nil, fmt.Errorf("%w: message %q declares length %d", errMalformed, typ, n)
	}
	if n-4 > fr.maxBody {
		return typ, nil, fmt.Errorf("%w: message %q of %d bytes, limit %d", errTooLarge, typ, n-4, fr.maxBody)
	}
	if _, err := fr.r.Discard(headerLen); err != nil {
		return 0, nil, err
	}
	bodyLen := n - 4
	if bodyLen <= fr.r.Size() {
		body, err = fr.r.Peek(bodyLen)
		if err != nil {
			return 0, nil, unexpected(err)
		}
		fr.pending = bodyLen
		return typ, body, nil
	}
	if cap(fr.big) < bodyLen {
		fr.big = make([]byte, bodyLen)
	}
	body = fr.big[:bodyLen]
	if _, err := io.ReadFull(fr.r, body); err != nil {
		return 0, nil, unexpected(err)
	}
	return typ, body, nil
}

// release discards the previously peeked body and drops an oversized buffer.
func (fr *frameReader) release() error {
	if fr.pending > 0 {
		n := fr.pending
		fr.pending = 0
		if _, err := fr.r.Discard(n); err != nil {
			return err
		}
	}
	if cap(fr.big) > 1<<20 {
		fr.big = nil
	}
	return nil
}

// frameReady reports whether a whole further message is already buffered, so that reading it will
// not block. The loops flush their output only when it is not: that batches pipelines into one
// write without ever holding back bytes the peer is waiting for.
func (fr *frameReader) frameReady() bool {
	avail := fr.r.Buffered() - fr.pending
	if avail < headerLen {
		return false
	}
	b, err := fr.r.Peek(fr.pending + headerLen)
	if err != nil {
		return false
	}
	n := int(binary.BigEndian.Uint32(b[fr.pending+1:]))
	return avail >= 1+n
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// appendHeader appends a message header for a body of bodyLen bytes.
func appendHeader(dst []byte, typ byte, bodyLen int) []byte {
	return append(dst, typ, byte((bodyLen+4)>>24), byte((bodyLen+4)>>16), byte((bodyLen+4)>>8), byte(bodyLen+4))
}

// appendMessage appends one protocol message.
func appendMessage(buf []byte, typ byte, body []byte) []byte {
	buf = appendHeader(buf, typ, len(body))
	return append(buf, body...)
}

// cstring splits a NUL-terminated string off the front of b.
func cstring(b []byte) (s []byte, rest []byte, ok bool) {
	for i, c := range b {
		if c == 0 {
			return b[:i], b[i+1:], true
		}
	}
	return nil, b, false
}
