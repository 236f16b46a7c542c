package nat

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// stateWriter appends big-endian fields to a buffer.
type stateWriter struct{ b []byte }

func (w *stateWriter) u8(v uint8)     { w.b = append(w.b, v) }
func (w *stateWriter) u16(v uint16)   { w.b = binary.BigEndian.AppendUint16(w.b, v) }
func (w *stateWriter) u32(v uint32)   { w.b = binary.BigEndian.AppendUint32(w.b, v) }
func (w *stateWriter) u64(v uint64)   { w.b = binary.BigEndian.AppendUint64(w.b, v) }
func (w *stateWriter) i64(v int64)    { w.u64(uint64(v)) }
func (w *stateWriter) addr(a [4]byte) { w.b = append(w.b, a[:]...) }
func (w *stateWriter) ep(e endpoint)  { w.addr(e.addr); w.u16(e.port) }
func (w *stateWriter) flag(v bool) {
	if v {
		w.u8(1)
	} else {
		w.u8(0)
	}
}

// section writes one section: kind, length, then what body appends.
func (w *stateWriter) section(kind uint8, body func()) {
	w.u8(kind)
	at := len(w.b)
	w.u32(0)
	body()
	binary.BigEndian.PutUint32(w.b[at:], uint32(len(w.b)-at-4))
}

// errStateShort is a record cut short by its section's or the file's end.
var errStateShort = errors.New("truncated")

// stateReader reads what stateWriter wrote. Errors are sticky: after the
// first one every read returns zero, so a decoder checks err once per
// record and never indexes out of range.
type stateReader struct {
	b   []byte
	err error
}

func (r *stateReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = errStateShort
		r.b = nil
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *stateReader) u8() uint8 {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *stateReader) u16() uint16 {
	if b := r.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *stateReader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *stateReader) u64() uint64 {
	if b := r.take(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (r *stateReader) i64() int64 { return int64(r.u64()) }

func (r *stateReader) addr() (a [4]byte) {
	if b := r.take(4); b != nil {
		copy(a[:], b)
	}
	return a
}

func (r *stateReader) ep() endpoint { return endpoint{r.addr(), r.u16()} }

// flag reads a boolean byte; anything but 0 or 1 is corrupt.
func (r *stateReader) flag() bool {
	v := r.u8()
	if v > 1 {
		r.fail("boolean byte %d", v)
	}
	return v == 1
}

func (r *stateReader) fail(format string, args ...any) {
	if r.err == nil {
		r.err = fmt.Errorf(format, args...)
		r.b = nil
	}
}

// count reads a record count and checks it against what the remaining
// bytes can hold at minSize bytes a record, so that no count makes the
// decoder allocate more than the file's size.
func (r *stateReader) count(minSize int) int {
	n := r.u32()
	if r.err != nil {
		return 0
	}
	if uint64(n)*uint64(minSize) > uint64(len(r.b)) {
		r.fail("count %d exceeds the %d bytes left", n, len(r.b))
		return 0
	}
	return int(n)
}

// time reads an engine time stored relative to the snapshot and bounds it
// so that adding it to the restoring engine's clock cannot overflow.
func (r *stateReader) time() int64 {
	v := r.i64()
	const bound = int64(100 * 365 * 24 * 3600 * 1e9) // a century
	if v > bound || v < -bound {
		r.fail("time offset %d out of range", v)
		return 0
	}
	return v
}
