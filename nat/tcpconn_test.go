package nat

import (
	"encoding/binary"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// rawSeg builds a TCP header and payload as the tracker reads them (ports
// and checksum do not matter to it).
type rawSeg struct {
	seq, ack uint32
	flags    header.TCPFlags
	win      uint16
	n        int      // payload bytes
	ws       int      // window scale option on a SYN: -1 for none
	sack     []uint32 // SACK blocks as start, end pairs
}

func (r rawSeg) bytes() []byte {
	var opts []byte
	if r.ws >= 0 && r.flags&header.TCPFlagSyn != 0 {
		opts = append(opts, header.TCPOptionNOP, header.TCPOptionWS, 3, byte(r.ws))
	}
	if len(r.sack) > 0 {
		opts = append(opts, header.TCPOptionNOP, header.TCPOptionNOP, header.TCPOptionSACK, byte(2+4*len(r.sack)))
		for _, v := range r.sack {
			opts = binary.BigEndian.AppendUint32(opts, v)
		}
	}
	for len(opts)%4 != 0 {
		opts = append(opts, header.TCPOptionNOP)
	}
	hlen := header.TCPMinimumSize + len(opts)
	b := make([]byte, hlen+r.n)
	header.TCP(b).Encode(&header.TCPFields{SrcPort: 1, DstPort: 2, SeqNum: r.seq, AckNum: r.ack,
		DataOffset: uint8(hlen), Flags: r.flags, WindowSize: r.win})
	copy(b[header.TCPMinimumSize:], opts)
	return b
}

// step is one segment through the tracker and the verdict it must get.
type step struct {
	out  bool // from the inside (outbound)
	seg  rawSeg
	want tcpVerdict
}

var verdictNames = map[tcpVerdict]string{tcpDrop: "drop", tcpAccept: "accept", tcpAcceptClose: "accept+close", tcpIgnore: "ignore"}

// ISS of the two sides in the unit tests, and their next sequence numbers
// after the SYN.
var (
	issIn  uint32 = 1000
	issOut uint32 = 0xfffff000 // close to the wrap: sequence arithmetic must hold across it
)

func o(seq, ackN uint32, flags header.TCPFlags, n int, want tcpVerdict) step {
	return step{true, rawSeg{seq: seq, ack: ackN, flags: flags, win: 65535, n: n, ws: -1}, want}
}

func i(seq, ackN uint32, flags header.TCPFlags, n int, want tcpVerdict) step {
	return step{false, rawSeg{seq: seq, ack: ackN, flags: flags, win: 65535, n: n, ws: -1}, want}
}

// handshakeIn is a connection the inside opens, ending established.
func handshakeIn() []step {
	return []step{
		o(issIn, 0, syn, 0, tcpAccept),
		i(issOut, issIn+1, synAck, 0, tcpAccept),
		o(issIn+1, issOut+1, ack, 0, tcpAccept),
	}
}

func run(t *testing.T, c *tcpConn, steps []step) {
	t.Helper()
	for n, s := range steps {
		before := *c
		got := c.segment(s.seg.bytes(), false, s.out)
		if got != s.want {
			t.Fatalf("step %d (out %v seq %d ack %d flags %v n %d): %s, want %s (state %v)",
				n, s.out, s.seg.seq, s.seg.ack, s.seg.flags, s.seg.n, verdictNames[got], verdictNames[s.want], c.state)
		}
		if got == tcpDrop && *c != before {
			t.Fatalf("step %d: dropped segment changed the tracker\nbefore %+v\nafter  %+v", n, before, *c)
		}
	}
}

func join(parts ...[]step) []step {
	var all []step
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

func TestTCPConnTracker(t *testing.T) {
	in1, out1 := issIn+1, issOut+1 // next sequence numbers after the SYNs
	tests := []struct {
		name        string
		steps       []step
		state       tcpConnState
		established bool
		unreplied   bool
	}{
		{"a SYN from the inside is SYN-SENT, not established", []step{o(issIn, 0, syn, 0, tcpAccept)}, tcpSynSent, false, false},
		{"a handshake opened from the inside establishes the connection", handshakeIn(), tcpEstablished, true, false},
		{"a SYN from the outside (port forward) is unreplied until the inside answers", []step{i(issOut, 0, syn, 0, tcpAccept)}, tcpSynSent, false, true},
		{"a handshake opened from the outside establishes the connection", []step{
			i(issOut, 0, syn, 0, tcpAccept),
			o(issIn, out1, synAck, 0, tcpAccept),
			i(out1, in1, ack, 0, tcpAccept),
		}, tcpEstablished, true, false},
		{"a SYN-ACK without its third ACK is SYN-RECV", handshakeIn()[:2], tcpSynRecv, false, false},
		{"a SYN-ACK that does not acknowledge the SYN is dropped", []step{
			o(issIn, 0, syn, 0, tcpAccept),
			i(issOut, issIn+5, synAck, 0, tcpDrop),
		}, tcpSynSent, false, false},
		{"the opener's ACK before any SYN-ACK is dropped", []step{
			o(issIn, 0, syn, 0, tcpAccept),
			o(in1, 12345, ack, 0, tcpDrop),
		}, tcpSynSent, false, false},
		{"a retransmitted SYN and SYN-ACK pass", []step{
			o(issIn, 0, syn, 0, tcpAccept), o(issIn, 0, syn, 0, tcpAccept),
			i(issOut, in1, synAck, 0, tcpAccept), i(issOut, in1, synAck, 0, tcpAccept),
			o(in1, out1, ack, 0, tcpAccept), i(issOut, in1, synAck, 0, tcpAccept),
		}, tcpEstablished, true, false},
		{"simultaneous open establishes once both SYNs are acknowledged", []step{
			o(issIn, 0, syn, 0, tcpAccept),
			i(issOut, 0, syn, 0, tcpAccept),
			o(issIn, out1, synAck, 0, tcpAccept),
			i(issOut, in1, synAck, 0, tcpAccept),
		}, tcpEstablished, true, false},
		{"data, retransmissions and their ACKs pass", join(handshakeIn(), []step{
			o(in1, out1, ack, 1000, tcpAccept),
			o(in1, out1, ack, 1000, tcpAccept),           // retransmission
			o(in1+500, out1, ack, 500, tcpAccept),        // partial retransmission
			i(out1, in1+1000, ack, 3000, tcpAccept),      // ACK with data
			i(out1, in1+500, ack, 0, tcpAccept),          // an older ACK, reordered
			i(out1, in1+1000, ack, 0, tcpAccept),         // duplicate ACK
			o(in1+1000, out1+3000, ack, 0, tcpAccept),    // ACK of the data
			i(out1+1000, in1+1000, ack, 2000, tcpAccept), // retransmission of acknowledged data
		}), tcpEstablished, true, false},
		{"a keep-alive (seq = end-1, no data or one byte) and its answer pass", join(handshakeIn(), []step{
			o(in1-1, out1, ack, 0, tcpAccept),
			o(in1-1, out1, ack, 1, tcpAccept),
			i(out1, in1, ack, 0, tcpAccept),
		}), tcpEstablished, true, false},
		{"data acknowledged that was never sent is dropped", join(handshakeIn(), []step{
			i(out1, in1+1, ack, 0, tcpDrop),
			i(out1, in1+70000, ack, 0, tcpDrop),
		}), tcpEstablished, true, false},
		{"data beyond the advertised window is dropped", join(handshakeIn(), []step{
			o(in1+65536, out1, ack, 10, tcpDrop),
			o(in1+65535, out1, ack, 10, tcpAccept),
		}), tcpEstablished, true, false},
		{"FIN teardown, inside first, ends in TIME-WAIT", join(handshakeIn(), []step{
			o(in1, out1, finAck, 0, tcpAccept),
			i(out1, in1+1, ack, 0, tcpAccept),
			i(out1, in1+1, finAck, 0, tcpAcceptClose),
			o(in1+1, out1+1, ack, 0, tcpAccept),
		}), tcpTimeWait, false, false},
		{"FIN teardown, outside first, ends in TIME-WAIT", join(handshakeIn(), []step{
			i(out1, in1, finAck, 0, tcpAccept),
			o(in1, out1+1, ack, 0, tcpAccept),
			o(in1, out1+1, finAck, 0, tcpAcceptClose),
			i(out1+1, in1+1, ack, 0, tcpAccept),
		}), tcpTimeWait, false, false},
		{"one FIN acknowledged is CLOSE-WAIT", join(handshakeIn(), []step{
			i(out1, in1, finAck, 0, tcpAccept),
			o(in1, out1+1, ack, 0, tcpAccept),
		}), tcpCloseWait, false, false},
		{"one FIN not yet acknowledged is FIN-WAIT", join(handshakeIn(), []step{
			o(in1, out1, finAck, 0, tcpAccept),
		}), tcpFinWait, false, false},
		{"simultaneous close: both FINs cross, then both ACKs", join(handshakeIn(), []step{
			o(in1, out1, finAck, 0, tcpAccept),
			i(out1, in1, finAck, 0, tcpAcceptClose),
			o(in1+1, out1+1, ack, 0, tcpAccept),
			i(out1+1, in1+1, ack, 0, tcpAccept),
		}), tcpTimeWait, false, false},
		{"both FINs without their ACKs are LAST-ACK", join(handshakeIn(), []step{
			o(in1, out1, finAck, 0, tcpAccept),
			i(out1, in1, finAck, 0, tcpAcceptClose),
		}), tcpLastAck, false, false},
		{"an RST at the exact next sequence number closes", join(handshakeIn(), []step{
			i(out1, 0, rst, 0, tcpAcceptClose),
		}), tcpClose, false, false},
		{"an RST from the inside at its exact next sequence number closes", join(handshakeIn(), []step{
			o(in1, out1, rst|ack, 0, tcpAcceptClose),
		}), tcpClose, false, false},
		{"an in-window RST at another sequence number passes and changes nothing", join(handshakeIn(), []step{
			i(out1+1, 0, rst, 0, tcpIgnore),
			i(out1+60000, 0, rst, 0, tcpIgnore),
			i(out1-1, 0, rst, 0, tcpIgnore),
		}), tcpEstablished, true, false},
		{"out-of-window RST, FIN and data are dropped", join(handshakeIn(), []step{
			i(out1+70000, 0, rst, 0, tcpDrop),
			i(out1-70000, 0, rst, 0, tcpDrop),
			i(out1+70000, in1, finAck, 0, tcpDrop),
			i(out1, in1+5, finAck, 0, tcpDrop), // acknowledges what was never sent
			i(out1+70000, in1, ack, 100, tcpDrop),
			i(out1, in1-70000, ack, 100, tcpIgnore), // an ACK older than a window: passed, nothing learned
		}), tcpEstablished, true, false},
		{"an inbound SYN on an established connection is dropped", join(handshakeIn(), []step{
			i(12345, 0, syn, 0, tcpDrop),
			i(issOut, 0, syn, 0, tcpDrop),
		}), tcpEstablished, true, false},
		{"an outbound SYN on an established connection passes and changes no state", join(handshakeIn(), []step{
			o(777777, 0, syn, 0, tcpAccept),
			i(out1, in1, ack, 0, tcpAccept), // the old connection still works
		}), tcpEstablished, true, false},
		{"a SYN-ACK acknowledging the re-opening SYN restarts tracking", join(handshakeIn(), []step{
			o(777777, 0, syn, 0, tcpAccept),
			i(555555, 777778, synAck, 0, tcpAccept),
			o(777778, 555556, ack, 0, tcpAccept),
			o(in1, out1, ack, 0, tcpDrop), // the old connection's numbers are gone
		}), tcpEstablished, true, false},
		{"a SYN-ACK not acknowledging the re-opening SYN is dropped", join(handshakeIn(), []step{
			o(777777, 0, syn, 0, tcpAccept),
			i(555555, 777779, synAck, 0, tcpDrop),
		}), tcpEstablished, true, false},
		{"a SYN after TIME-WAIT starts a new connection", join(handshakeIn(), []step{
			o(in1, out1, finAck, 0, tcpAccept),
			i(out1, in1+1, finAck, 0, tcpAcceptClose),
			o(in1+1, out1+1, ack, 0, tcpAccept),
			o(5000000, 0, syn, 0, tcpAccept),
		}), tcpSynSent, false, false},
		{"a SYN after an RST starts a new connection, from either side", join(handshakeIn(), []step{
			i(out1, 0, rst, 0, tcpAcceptClose),
			i(42, 0, syn, 0, tcpAccept),
		}), tcpSynSent, false, true},
		{"an RST refusing the SYN closes only when it acknowledges the SYN", []step{
			o(issIn, 0, syn, 0, tcpAccept),
			i(0, in1+1, rst|ack, 0, tcpDrop),
			i(0, 0, rst, 0, tcpDrop),
			i(0, in1, rst|ack, 0, tcpAcceptClose),
		}, tcpClose, false, false},
		{"a challenge ACK to a SYN reusing a port passes, and the opener's RST answering it", []step{
			o(issIn, 0, syn, 0, tcpAccept),
			i(out1, 999999, ack, 0, tcpIgnore),
			o(999999, 0, rst, 0, tcpIgnore),
			o(issIn, 0, syn, 0, tcpAccept),
			i(issOut, in1, synAck, 0, tcpAccept),
		}, tcpSynRecv, false, false},
		{"flag combinations no TCP sends are dropped", join(handshakeIn(), []step{
			i(out1, in1, syn|fin, 0, tcpDrop),
			i(out1, in1, syn|rst, 0, tcpDrop),
			i(out1, in1, fin, 0, tcpDrop),
			i(out1, in1, 0, 0, tcpDrop),
		}), tcpEstablished, true, false},
		{"a connection picked up from the inside is not established until the outside is seen", []step{
			o(in1, out1, ack, 100, tcpAccept),
		}, tcpEstablished, false, false},
		{"a connection picked up mid-stream is established once seen both ways", []step{
			o(in1, out1, ack, 100, tcpAccept),
			i(out1, in1+100, ack, 0, tcpAccept),
		}, tcpEstablished, true, false},
		{"a picked-up connection takes windows of unknown scale as large as they may be", []step{
			o(in1, out1, ack, 0, tcpAccept),
			i(out1+1000000, in1, ack, 100, tcpAccept), // 1 MB ahead: within 65535 << 14
			o(in1, out1+1000100, ack, 0, tcpAccept),
		}, tcpEstablished, true, false},
		{"a picked-up connection still checks what it learned", []step{
			o(in1, out1, ack, 0, tcpAccept),
			i(out1+0x7fff0000, in1, ack, 100, tcpDrop),
			i(out1+5, 0, rst, 0, tcpIgnore),
			i(out1, 0, rst, 0, tcpAcceptClose), // the exact next sequence number, learned from the inside's ACK
		}, tcpClose, false, false},
		{"a first segment that is an RST or a SYN-ACK is dropped", []step{
			o(in1, 0, rst, 0, tcpDrop),
			o(in1, out1, synAck, 0, tcpDrop),
		}, tcpNone, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var c tcpConn
			run(t, &c, tc.steps)
			if c.state != tc.state {
				t.Errorf("state %v, want %v", c.state, tc.state)
			}
			if c.established() != tc.established {
				t.Errorf("established() = %v, want %v", c.established(), tc.established)
			}
			if c.unreplied() != tc.unreplied {
				t.Errorf("unreplied() = %v, want %v", c.unreplied(), tc.unreplied)
			}
		})
	}
}

func TestTCPConnWindowScaling(t *testing.T) {
	in1, out1 := issIn+1, issOut+1
	// The outside advertises 1000 units; scaled by 2^7 that is 128000
	// bytes, so the inside may send 100000 bytes ahead only when both
	// SYNs carried the option (RFC 7323 section 2.2).
	handshake := func(wsIn, wsOut int) []step {
		return []step{
			{true, rawSeg{seq: issIn, flags: syn, win: 65535, ws: wsIn}, tcpAccept},
			{false, rawSeg{seq: issOut, ack: in1, flags: synAck, win: 65535, ws: wsOut}, tcpAccept},
			{true, rawSeg{seq: in1, ack: out1, flags: ack, win: 1000, ws: -1}, tcpAccept},
			{false, rawSeg{seq: out1, ack: in1, flags: ack, win: 1000, ws: -1}, tcpAccept},
		}
	}
	ahead := func(want tcpVerdict) step {
		return step{true, rawSeg{seq: in1 + 100000, ack: out1, flags: ack, win: 1000, n: 100, ws: -1}, want}
	}
	for _, tc := range []struct {
		name        string
		wsIn, wsOut int
		want        tcpVerdict
	}{
		{"scaled windows let data far beyond 65535 bytes pass when both SYNs carry the option", 7, 7, tcpAccept},
		{"a scale only the SYN carries is not applied", 7, -1, tcpDrop},
		{"a scale only the SYN-ACK carries is not applied", -1, 7, tcpDrop},
		{"without the option windows are not scaled", -1, -1, tcpDrop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c tcpConn
			run(t, &c, append(handshake(tc.wsIn, tc.wsOut), ahead(tc.want)))
		})
	}
	t.Run("the window of a SYN is never scaled", func(t *testing.T) {
		var c tcpConn
		// The SYN-ACK advertises 100 with scale 7: 100 bytes, not 12800.
		run(t, &c, []step{
			{true, rawSeg{seq: issIn, flags: syn, win: 65535, ws: 7}, tcpAccept},
			{false, rawSeg{seq: issOut, ack: in1, flags: synAck, win: 100, ws: 7}, tcpAccept},
			{true, rawSeg{seq: in1 + 200, ack: out1, flags: ack, win: 1000, n: 10, ws: -1}, tcpDrop},
			{true, rawSeg{seq: in1, ack: out1, flags: ack, win: 1000, n: 10, ws: -1}, tcpAccept},
		})
	})
}

func TestTCPConnSACKAndZeroWindow(t *testing.T) {
	in1, out1 := issIn+1, issOut+1
	sackAck := func(edge uint32, want tcpVerdict) step {
		return step{false, rawSeg{seq: out1, ack: in1, flags: ack, win: 65535, ws: -1, sack: []uint32{in1 + 1000, edge}}, want}
	}
	t.Run("SACK blocks within the data sent pass", func(t *testing.T) {
		var c tcpConn
		run(t, &c, join(handshakeIn(), []step{o(in1, out1, ack, 3000, tcpAccept), sackAck(in1+3000, tcpAccept)}))
	})
	t.Run("a SACK block beyond the data sent is dropped", func(t *testing.T) {
		var c tcpConn
		run(t, &c, join(handshakeIn(), []step{o(in1, out1, ack, 3000, tcpAccept), sackAck(in1+3001, tcpDrop)}))
	})
	t.Run("a zero window probe passes, data beyond it does not", func(t *testing.T) {
		var c tcpConn
		// The outside offers 100 bytes, takes them and closes its window.
		run(t, &c, []step{
			o(issIn, 0, syn, 0, tcpAccept),
			{false, rawSeg{seq: issOut, ack: in1, flags: synAck, win: 100, ws: -1}, tcpAccept},
			o(in1, out1, ack, 100, tcpAccept),
			{false, rawSeg{seq: out1, ack: in1 + 100, flags: ack, win: 0, ws: -1}, tcpAccept},
			o(in1+100, out1, ack, 1, tcpAccept), // the probe
			o(in1+102, out1, ack, 1, tcpDrop),
		})
	})
}

func TestTCPConnFragments(t *testing.T) {
	in1, out1 := issIn+1, issOut+1
	for _, tc := range []struct {
		name     string
		fragment bool
		want     tcpVerdict
	}{
		{"the ACK of a fragmented segment, beyond what its first fragment showed, passes", true, tcpAccept},
		{"control: the same ACK of an unfragmented segment is dropped", false, tcpDrop},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c tcpConn
			run(t, &c, handshakeIn())
			first := rawSeg{seq: in1, ack: out1, flags: ack, win: 65535, n: 100, ws: -1}
			if v := c.segment(first.bytes(), tc.fragment, true); v != tcpAccept {
				t.Fatalf("first fragment: %s", verdictNames[v])
			}
			acked := rawSeg{seq: out1, ack: in1 + 1400, flags: ack, win: 65535, ws: -1}
			if v := c.segment(acked.bytes(), false, false); v != tc.want {
				t.Fatalf("ACK of the whole segment: %s, want %s", verdictNames[v], verdictNames[tc.want])
			}
			if c.peer[tcpInside].shift() != 0 {
				t.Errorf("a fragment changed the window scale to %d", c.peer[tcpInside].shift())
			}
		})
	}
}

func TestTCPConnFINCountsOnlyAtTheStreamEnd(t *testing.T) {
	in1, out1 := issIn+1, issOut+1
	t.Run("a FIN inside the window but away from the sender's stream end passes and changes no state", func(t *testing.T) {
		var c tcpConn
		run(t, &c, join(handshakeIn(), []step{
			o(in1, out1, ack, 1000, tcpAccept),
			// Forged: in window (a retransmission's position), not where
			// the outside's stream ends.
			i(out1-30000, in1+1000, finAck, 0, tcpAccept),
		}))
		if c.state != tcpEstablished || c.peer[tcpOutside].flags&peerFin != 0 {
			t.Errorf("state %v, outside FIN recorded %v: want established, no FIN", c.state, c.peer[tcpOutside].flags&peerFin != 0)
		}
	})
	t.Run("control: the FIN at the stream end starts the close", func(t *testing.T) {
		var c tcpConn
		run(t, &c, join(handshakeIn(), []step{
			o(in1, out1, ack, 1000, tcpAccept),
			i(out1, in1+1000, finAck, 0, tcpAccept),
		}))
		if c.state == tcpEstablished {
			t.Error("the genuine FIN did not move the connection out of established")
		}
	})
	t.Run("a FIN carrying data across the stream end counts", func(t *testing.T) {
		var c tcpConn
		run(t, &c, join(handshakeIn(), []step{
			o(in1, out1, ack, 1000, tcpAccept),
			o(in1+500, out1, finAck, 800, tcpAccept), // a retransmission coalesced with new data and the FIN
		}))
		if c.peer[tcpInside].flags&peerFin == 0 {
			t.Error("the inside's FIN was not recorded")
		}
	})
}
