package nat

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// fzEnd is one genuine TCP endpoint of FuzzTCPConn: enough of RFC 9293's
// send and receive state to produce only segments a real TCP could send.
type fzEnd struct {
	dir            int    // tcpInside or tcpOutside: which way its segments cross the NAT
	sndUna, sndNxt uint32 // oldest unacknowledged, next to send
	edge           uint32 // right edge of the send window: highest ack + window received
	rcvNxt         uint32 // next expected
	rcvWnd         uint32 // receive window in bytes
	advEdge        uint32 // highest right edge it advertised: it never shrinks the window (RFC 9293 3.8.6.2.2)
	wnd0           bool   // the last window it received was zero
	shift          uint8  // scale of the windows it sends (0 unless both SYNs agreed)
	sackOK         bool
	ooo            [2]uint32 // an out-of-order block received, for SACK
	hasOOO         bool

	// What crossed the NAT from this endpoint: whether anything did, the
	// highest end, and the largest window in bytes. The tracker knows no
	// more than this.
	passed    bool
	passedEnd uint32
	passedWin uint32
}

// advertised is the window field it sends: its receive window, but never
// retracting the right edge it advertised before, rounded up to the scale
// as Linux does so that the edge does not shrink.
func (e *fzEnd) advertised() uint16 {
	w := e.rcvWnd
	if tcpAfter(e.advEdge, e.rcvNxt) {
		w = max(w, e.advEdge-e.rcvNxt)
	}
	f := min((uint64(w)+(1<<e.shift)-1)>>e.shift, 0xffff)
	if edge := e.rcvNxt + uint32(f)<<e.shift; tcpAfter(edge, e.advEdge) {
		e.advEdge = edge
	}
	return uint16(f)
}

// fzSeg is a genuine segment in flight towards the NAT.
type fzSeg struct {
	from int // index into the endpoints
	raw  rawSeg
}

type fzInput struct{ b []byte }

func (in *fzInput) byte() byte {
	if len(in.b) == 0 {
		return 0
	}
	c := in.b[0]
	in.b = in.b[1:]
	return c
}

func (in *fzInput) u16() uint16 { return uint16(in.byte())<<8 | uint16(in.byte()) }
func (in *fzInput) u32() uint32 { return uint32(in.u16())<<16 | uint32(in.u16()) }

// fzConv is a conversation of two genuine endpoints driven by the fuzz
// input: the endpoints and the network before the NAT, which loses,
// reorders and duplicates segments. FuzzTCPConn runs it through the tracker
// alone, FuzzTCPEngine through the whole engine; the harness says what
// crossing the NAT means and checks it.
type fzConv struct {
	in    *fzInput
	ep    [2]fzEnd
	queue []fzSeg
}

// crossed records a segment of ep[k] that crossed the NAT.
func (cv *fzConv) crossed(k int, r rawSeg) {
	e := &cv.ep[k]
	end := r.seq + uint32(r.n)
	if r.flags&header.TCPFlagSyn != 0 {
		end++
	}
	if tcpAfter(end, e.passedEnd) || !e.passed {
		e.passedEnd = end
	}
	e.passed = true
	win := uint32(r.win)
	if r.flags&header.TCPFlagSyn == 0 {
		win <<= e.shift
	}
	e.passedWin = max(e.passedWin, win)
}

// stale reports a copy of data acknowledged more than a window ago: the one
// genuine segment conntrack drops (the receiver has no use for it).
func (cv *fzConv) stale(s fzSeg) bool {
	from, to := &cv.ep[s.from], &cv.ep[1-s.from]
	end := s.raw.seq + uint32(s.raw.n)
	return from.passed && to.passed && tcpBefore(end, from.passedEnd-to.passedWin)
}

// handshake reads the initial sequence numbers, window scale offers and
// receive windows, and has ep[0] open: SYN, SYN-ACK and the third ACK go to
// cross in that order. The window scale is agreed only when both offer it.
func (cv *fzConv) handshake(cross func(k int, r rawSeg, what string)) {
	in, ep := cv.in, &cv.ep
	iss := [2]uint32{in.u32(), in.u32()}
	var ws [2]int
	for k := range ep {
		ws[k] = int(in.byte())
		if ws[k] > header.MaxWndScale {
			ws[k] = -1
		}
		ep[k].rcvWnd = uint32(in.u16())
	}
	synWin := [2]uint16{uint16(min(ep[0].rcvWnd, 0xffff)), uint16(min(ep[1].rcvWnd, 0xffff))}
	cross(0, rawSeg{seq: iss[0], flags: syn, win: synWin[0], ws: ws[0]}, "SYN")
	cross(1, rawSeg{seq: iss[1], ack: iss[0] + 1, flags: synAck, win: synWin[1], ws: ws[1]}, "SYN-ACK")
	if ws[0] >= 0 && ws[1] >= 0 {
		ep[0].shift, ep[1].shift = uint8(ws[0]), uint8(ws[1])
	}
	for k := range ep {
		e := &ep[k]
		e.sndUna, e.sndNxt = iss[k]+1, iss[k]+1
		e.rcvNxt = iss[1-k] + 1
		e.edge = e.sndNxt + uint32(synWin[1-k])
		e.advEdge = e.rcvNxt + uint32(synWin[k])
	}
	cross(0, rawSeg{seq: ep[0].sndNxt, ack: ep[0].rcvNxt, flags: ack, win: ep[0].advertised(), ws: -1}, "third ACK")
	ep[1].edge = max32seq(ep[1].edge, ep[0].rcvNxt+uint32(ep[0].advertised())<<ep[0].shift)
}

// ackOf is a segment of ep[k] at seq with n bytes, acknowledging what it
// received, its window and, with SACK, its out-of-order block.
func (cv *fzConv) ackOf(k int, flags header.TCPFlags, seq uint32, n int) rawSeg {
	e := &cv.ep[k]
	r := rawSeg{seq: seq, ack: e.rcvNxt, flags: flags, win: e.advertised(), n: n, ws: -1}
	if e.sackOK && e.hasOOO && tcpAfter(e.ooo[0], e.rcvNxt) {
		r.sack = []uint32{e.ooo[0], e.ooo[1]}
	}
	return r
}

func (cv *fzConv) send(k int, r rawSeg) { cv.queue = append(cv.queue, fzSeg{k, r}) }

// step reads an operation and runs it. A segment crosses the NAT through
// cross, which returns false when it did not get there (nothing more
// happens to it). It returns the operation byte: operations 8 to 10
// (op&0x7f%11) are the harness's own.
func (cv *fzConv) step(cross func(s fzSeg) bool) byte {
	in, ep := cv.in, &cv.ep
	op := in.byte()
	k := int(op>>7) & 1
	e := &ep[k]
	switch op & 0x7f % 11 {
	case 0: // new data within the send window
		usable := e.edge - e.sndNxt
		if tcpBefore(e.edge, e.sndNxt) {
			usable = 0
		}
		n := min(uint32(in.u16())%4000+1, usable)
		if n == 0 {
			break
		}
		cv.send(k, cv.ackOf(k, ack|header.TCPFlagPsh, e.sndNxt, int(n)))
		e.sndNxt += n
	case 1: // a segment crosses the NAT, picked among the first three
		if len(cv.queue) == 0 {
			break
		}
		idx := int(in.byte()) % min(len(cv.queue), 3)
		s := cv.queue[idx]
		cv.queue = append(cv.queue[:idx], cv.queue[idx+1:]...)
		if !cross(s) {
			break
		}
		if in.byte()&7 == 0 {
			break // lost after the NAT
		}
		cv.receive(s)
	case 2: // retransmission from the oldest unacknowledged byte, or a keep-alive
		out := e.sndNxt - e.sndUna
		if out == 0 {
			cv.send(k, cv.ackOf(k, ack, e.sndNxt-1, int(in.byte()&1)))
			break
		}
		n := min(uint32(in.u16())%4000+1, out)
		cv.send(k, cv.ackOf(k, ack|header.TCPFlagPsh, e.sndUna, int(n)))
	case 3: // the network duplicates a segment
		if len(cv.queue) > 0 && len(cv.queue) < 64 {
			cv.queue = append(cv.queue, cv.queue[int(in.byte())%len(cv.queue)])
		}
	case 4: // the network loses a segment before the NAT
		if len(cv.queue) > 0 {
			idx := int(in.byte()) % len(cv.queue)
			cv.queue = append(cv.queue[:idx], cv.queue[idx+1:]...)
		}
	case 5: // the receive window changes (to zero, too) and is announced
		e.rcvWnd = uint32(in.u16()) << e.shift
		if in.byte()&3 == 0 {
			e.rcvWnd = 0
		}
		cv.send(k, cv.ackOf(k, ack, e.sndNxt, 0))
	case 6: // a duplicate ACK
		cv.send(k, cv.ackOf(k, ack, e.sndNxt, 0))
	case 7: // a zero window probe
		switch {
		case !e.wnd0:
		case e.sndNxt == e.sndUna && in.byte()&1 == 0:
			// BSD: one new byte beyond the closed window.
			cv.send(k, cv.ackOf(k, ack, e.sndNxt, 1))
			e.sndNxt++
		default:
			// Linux: an old sequence number, no data.
			cv.send(k, cv.ackOf(k, ack, e.sndUna-1, 0))
		}
	}
	return op
}

// receive has the other endpoint take a segment that crossed the NAT.
func (cv *fzConv) receive(s fzSeg) {
	from, to := &cv.ep[s.from], &cv.ep[1-s.from]
	r := s.raw
	end := r.seq + uint32(r.n)
	if !tcpAfter(r.seq, to.rcvNxt) && tcpAfter(end, to.rcvNxt) {
		to.rcvNxt = end
	} else if tcpAfter(r.seq, to.rcvNxt) && r.n > 0 {
		to.ooo, to.hasOOO = [2]uint32{r.seq, end}, true
	}
	// Its ACK and window are for the receiver's own sending
	// (RFC 9293: SND.UNA =< SEG.ACK =< SND.NXT).
	if !tcpBefore(r.ack, to.sndUna) && !tcpAfter(r.ack, to.sndNxt) {
		to.sndUna = r.ack
		to.edge = max32seq(to.edge, r.ack+uint32(r.win)<<from.shift)
		to.wnd0 = r.win == 0
	}
	if r.n > 0 {
		cv.send(1-s.from, cv.ackOf(1-s.from, ack, to.sndNxt, 0))
	}
}

// FuzzTCPConn models two genuine TCP endpoints exchanging data through the
// tracker, over a network before the NAT that loses, reorders and
// duplicates segments and one after it that loses them, with random
// segmentation, windows (zero included), window scaling, SACK,
// retransmissions, keep-alives, zero window probes and duplicate ACKs. The
// tracker must pass every genuine segment (the one drop allowed is
// conntrack's: a copy of data acknowledged more than a window ago, which
// the receiver has no use for) and never leave ESTABLISHED. An off-path
// attacker interleaves RSTs from the outside with random sequence numbers:
// they may close the connection only at the exact next sequence number. In
// pickup mode the tracker first sees the connection mid-stream.
func FuzzTCPConn(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0x80, 0, 0, 1, 0xff, 0xff, 0xf0, 0, 7, 7, 0xff, 0xff, 0xff, 0xff, 0, 0, 2, 0, 1, 2, 1, 0, 3, 0})
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 1, 0x80, 0x81, 0, 0x10, 0, 0, 0, 0x10, 1, 0x10, 2, 0, 3, 1, 4, 0, 5, 1, 6, 0, 7, 0, 0, 0, 2, 1, 10, 1, 2, 3, 4})
	f.Add([]byte{1, 1, 2, 3, 4, 5, 6, 7, 8, 14, 14, 0, 1, 0, 1, 0, 0xff, 0, 0xff, 7, 0, 0, 0, 9, 0, 2, 0, 1, 1, 9, 1, 2, 1, 0, 8, 0, 3, 0})
	f.Add([]byte{2, 9, 9, 9, 9, 8, 8, 8, 8, 3, 0x90, 0, 0x40, 0, 0x40, 0, 0x20, 4, 0, 6, 0, 0, 0x30, 2, 0, 0, 4, 1, 0x10, 5, 0, 2, 0, 1, 3, 0, 1, 10, 0x80, 0, 0, 0})
	f.Add([]byte{4, 1, 2, 3, 4, 5, 6, 7, 8, 0x80, 0x80, 0x10, 0, 0x10, 0, 0x80, 0, 0x10, 0, 0, 0x10, 1, 0, 1, 0, 1, 1, 1, 1, 1, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add([]byte{5, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 2, 9, 0, 0x20, 0xff, 0xff, 0x80, 0, 0x10, 0x82, 0, 1, 0, 0, 1, 0, 1, 2, 0, 1, 1, 0x86, 1, 1, 1})
	// Found by this target: a pickup whose first segment advertises a zero
	// window, then more data from that side (its edge was taken from its
	// own window).
	f.Add([]byte("6000000000\x00\x0000070080070020028"))
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fzInput{data}
		mode := in.byte()
		cv := &fzConv{in: in}
		ep := &cv.ep
		// ep[0] opens. It is the inside (a LAN client) or the outside
		// (a remote through a port forward).
		ep[0].dir, ep[1].dir = tcpInside, tcpOutside
		if mode&1 != 0 {
			ep[0].dir, ep[1].dir = tcpOutside, tcpInside
		}
		ep[0].sackOK, ep[1].sackOK = mode&2 == 0, mode&2 == 0
		var c tcpConn
		pass := func(k int, r rawSeg) tcpVerdict {
			v := c.segment(r.bytes(), false, ep[k].dir == tcpInside)
			if v != tcpDrop {
				cv.crossed(k, r)
			}
			return v
		}
		// In pickup mode the tracker starts after the handshake (the
		// router restarted): it sees nothing until the inside speaks,
		// and the WAN side's segments before that find no flow.
		pickup := mode&4 != 0
		mustPass := func(k int, r rawSeg, what string) {
			if pickup {
				return
			}
			if v := pass(k, r); v == tcpDrop {
				t.Fatalf("%s dropped: %+v (tracker %+v)", what, r, c)
			}
		}

		cv.handshake(mustPass)
		if !pickup && !c.established() {
			t.Fatalf("not established after the handshake: %+v", c)
		}

		var ops int
		cross := func(s fzSeg) bool {
			from, to := &ep[s.from], &ep[1-s.from]
			if c.state == tcpNone && from.dir == tcpOutside {
				return false // no flow yet: the engine drops it as unsolicited
			}
			stale := cv.stale(s)
			if v := pass(s.from, s.raw); v == tcpDrop && !stale {
				t.Fatalf("genuine segment dropped (op %d): %+v\nfrom %+v\nto %+v\ntracker %+v", ops, s.raw, *from, *to, c)
			}
			if c.state != tcpEstablished {
				t.Fatalf("genuine segment moved the state to %v", c.state)
			}
			if ep[0].passed && ep[1].passed && !c.established() {
				t.Fatalf("seen both ways but not established: %+v", c)
			}
			return true
		}
		for ; len(in.b) > 0 && ops < 2000; ops++ {
			op := cv.step(cross)
			if op&0x7f%11 < 8 {
				continue
			}
			// An off-path attacker's RST from the outside.
			seq, ackN := in.u32(), in.u32()
			flags := rst
			if op&0x40 != 0 {
				flags |= ack
			}
			outside := &ep[0]
			if outside.dir != tcpOutside {
				outside = &ep[1]
			}
			if c.state == tcpNone {
				continue // no flow for it to reach yet
			}
			before := c
			exact := before.peer[tcpOutside].end
			if !pickup && exact != outside.passedEnd {
				t.Fatalf("tracker's next outside sequence number %#x, the outside sent up to %#x", exact, outside.passedEnd)
			}
			v := c.segment(rawSeg{seq: seq, ack: ackN, flags: flags, ws: -1}.bytes(), false, false)
			switch {
			case v == tcpAcceptClose && seq != exact:
				t.Fatalf("RST at seq %#x closed the connection; the exact next sequence number is %#x", seq, exact)
			case v == tcpAcceptClose:
				return // the attacker guessed it: the connection is over
			case c != before:
				t.Fatalf("RST at seq %#x (%s) changed the tracker", seq, verdictNames[v])
			}
		}
	})
}
