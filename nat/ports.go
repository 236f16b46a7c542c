package nat

// PortRange is an inclusive range of ports (or ICMP identifiers).
type PortRange struct{ First, Last uint16 }

// portPool hands out external ports (or ICMP identifiers) from a range. A
// bitmap of all 65536 values keeps allocation and release O(1) for the
// common case and makes "is this port in use" exact, which the no-overloading
// rule (RFC 4787 REQ-3) needs.
type portPool struct {
	r    PortRange
	used [65536 / 64]uint64
	// inUse counts the used ports inside r only: port forwards mark their
	// external ports here too, and one outside the range must not make
	// take report the range full while it still has free ports.
	inUse  int
	cursor uint16
}

func newPortPool(r PortRange) *portPool { return &portPool{r: r, cursor: r.First} }

func (pp *portPool) isUsed(port uint16) bool { return pp.used[port/64]&(1<<(port%64)) != 0 }

func (pp *portPool) inRange(port uint16) bool { return port >= pp.r.First && port <= pp.r.Last }

func (pp *portPool) mark(port uint16) {
	if !pp.isUsed(port) {
		pp.used[port/64] |= 1 << (port % 64)
		if pp.inRange(port) {
			pp.inUse++
		}
	}
}

// release frees a port for reuse.
func (pp *portPool) release(port uint16) {
	if pp.isUsed(port) {
		pp.used[port/64] &^= 1 << (port % 64)
		if pp.inRange(port) {
			pp.inUse--
		}
	}
}

// take reserves want when it lies in the range and is free (port
// preservation); otherwise the next free port of the same parity (RFC 4787
// REQ-4), and failing that any free port. ok is false when the range is full.
func (pp *portPool) take(want uint16) (port uint16, ok bool) {
	if want >= pp.r.First && want <= pp.r.Last && !pp.isUsed(want) {
		pp.mark(want)
		return want, true
	}
	n := int(pp.r.Last) - int(pp.r.First) + 1
	if pp.inUse >= n {
		return 0, false
	}
	// Two passes: same parity first, then anything.
	for pass := 0; pass < 2; pass++ {
		p := pp.cursor
		for i := 0; i < n; i++ {
			if p < pp.r.First || p > pp.r.Last {
				p = pp.r.First
			}
			if !pp.isUsed(p) && (pass == 1 || p%2 == want%2) {
				pp.mark(p)
				pp.cursor = p + 1
				return p, true
			}
			p++
		}
	}
	return 0, false
}

// Len is the size of the range.
func (pp *portPool) Len() int { return int(pp.r.Last) - int(pp.r.First) + 1 }
