package proxy

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestHeldOutput: a gate's output comes back byte for byte however it was held (memory only,
// spilled to a file, or kept in memory when no file can be made), and mustRelease says when the
// caller has to let it go early. Every use of the disk is announced first (beforeIO), so that an
// event loop is handed on before a slow disk can stall it.
func TestHeldOutput(t *testing.T) {
	var diskUses int
	beforeIO := func() { diskUses++ }
	messages := func(n int) (want []byte, add func(h *heldOutput, spill bool) (writes int)) {
		for i := range n {
			want = appendMessage(want, 'D', []byte(fmt.Sprintf("row %d %s", i, bytes.Repeat([]byte{'x'}, i%700))))
		}
		return want, func(h *heldOutput, spill bool) (writes int) {
			for b := want; len(b) > 0; {
				n := 1 + int(uint32(b[1])<<24|uint32(b[2])<<16|uint32(b[3])<<8|uint32(b[4]))
				if h.add(b[0], b[headerLen:n], spill, beforeIO) > 0 {
					writes++
				}
				b = b[n:]
			}
			return writes
		}
	}
	for _, tc := range []struct {
		name                string
		rows                int
		spill, noTemp       bool
		wantFile, wantEarly bool
	}{
		{name: "small", rows: 100, spill: true},
		{name: "large, no spill", rows: 3000, wantEarly: true},
		{name: "large, spilled", rows: 3000, spill: true, wantFile: true},
		{name: "large, no temp dir", rows: 3000, spill: true, noTemp: true, wantEarly: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.noTemp {
				t.Setenv("TMPDIR", filepath.Join(t.TempDir(), "missing"))
			}
			want, add := messages(tc.rows)
			var h heldOutput
			diskUses = 0
			writes := add(&h, tc.spill)
			created := 0
			if tc.wantFile || tc.noTemp {
				created = 1 // made, or tried to make, the file
			}
			if diskUses != created+writes {
				t.Fatalf("%d uses of the disk announced, want %d (file %d, writes %d)", diskUses, created+writes, created, writes)
			}
			if h.len() != int64(len(want)) {
				t.Fatalf("len %d, want %d", h.len(), len(want))
			}
			if (h.file != nil) != tc.wantFile || h.mustRelease(tc.spill) != tc.wantEarly {
				t.Fatalf("file %v, mustRelease %v; want %v, %v", h.file != nil, h.mustRelease(tc.spill), tc.wantFile, tc.wantEarly)
			}
			if tc.wantFile {
				if _, err := os.Stat(h.file.Name()); !os.IsNotExist(err) {
					t.Fatalf("the temporary file is still linked: %v", err)
				}
			}
			var got bytes.Buffer
			diskUses = 0
			n, err := h.writeTo(&got, beforeIO)
			if err != nil || n != int64(len(want)) || !bytes.Equal(got.Bytes(), want) {
				t.Fatalf("writeTo: %d bytes, err %v, equal %v", n, err, bytes.Equal(got.Bytes(), want))
			}
			if h.len() != 0 || h.file != nil {
				t.Fatal("output not dropped after writeTo")
			}
			if readBack := map[bool]int{true: 1}[tc.wantFile]; diskUses != readBack {
				t.Fatalf("%d uses of the disk announced by writeTo, want %d", diskUses, readBack)
			}
		})
	}
}
