package nat

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// TCP connection tracking by sequence window, after Linux conntrack's
// tcp_in_window (net/netfilter/nf_conntrack_proto_tcp.c) and pf's
// pf_tcp_track_full. Flags alone are not enough on the WAN side: an off-path
// attacker can forge any source address, so one RST or FIN with any sequence
// number would move an established flow to the short timer, and a forged SYN
// would desynchronise it. An attacker who cannot see the traffic can,
// however, not guess where the sequence numbers are; every segment is
// therefore checked against the windows the two endpoints advertised, and
// what falls outside changes no state and is dropped (tcp_out_of_window), as
// conntrack marks it INVALID and pf counts a state mismatch.
//
// Rules (what a segment gets, beyond the window test):
//   - RST: passes only in window, and closes the connection only when its
//     sequence number is exactly the sender's next one (sender.end). An
//     in-window RST with another sequence number is passed unchanged: RFC 5961
//     section 3.2 makes the endpoint answer it with a challenge ACK, and a
//     blind attacker is left to guess the one exact value.
//   - SYN from the WAN side on a synchronised connection: dropped. A SYN from
//     the LAN host there (it lost the connection and opens the tuple again)
//     is passed and remembered; a SYN-ACK that acknowledges it restarts the
//     tracking as a new connection, as conntrack resynchronises on a SYN-ACK
//     for a SYN it ignored.
//   - SYN on a connection in TIME-WAIT or CLOSE: a new connection (port
//     reuse, RFC 793 / RFC 1122 4.2.2.13).
//   - FIN: counts only in window; both FINs acknowledged is TIME-WAIT.
//   - First segment without SYN (the tracker was not watching the handshake,
//     e.g. after a restart): picked up, windows learned from what is seen,
//     with the window scale unknown and taken as the largest (14) for the
//     size checks; not established until both directions were seen.

// Directions of a connection, indexes of tcpConn.peer.
const (
	tcpInside  = 0 // the LAN host: outbound segments
	tcpOutside = 1 // the remote: inbound segments
)

// tcpConnState is conntrack's connection state.
type tcpConnState uint8

const (
	tcpNone        tcpConnState = iota // nothing seen (the zero value)
	tcpSynSent                         // a SYN, no answer yet
	tcpSynRecv                         // a SYN-ACK answered it
	tcpEstablished                     // both SYNs acknowledged, or picked up mid-stream
	tcpFinWait                         // one side sent FIN, not yet acknowledged
	tcpCloseWait                       // one side's FIN acknowledged, the other still open
	tcpLastAck                         // both sides sent FIN, not both acknowledged
	tcpTimeWait                        // both FINs acknowledged
	tcpClose                           // reset
)

var tcpConnStateNames = [...]string{"none", "syn_sent", "syn_recv", "established",
	"fin_wait", "close_wait", "last_ack", "time_wait", "close"}

func (s tcpConnState) String() string {
	if int(s) < len(tcpConnStateNames) {
		return tcpConnStateNames[s]
	}
	return "invalid"
}

// tcpMaxAckWin is conntrack's MAXACKWINCONST: how far below the receiver's
// end an acknowledgement may lie, at least, for delayed ACKs to pass.
const tcpMaxAckWin = 66000

// tcpMaxWin is the largest window TCP can advertise: 65535 scaled by 14
// (RFC 7323 section 2.3). Windows stay below it so that sequence
// comparisons across a window never wrap.
const tcpMaxWin = 0xffff << header.MaxWndScale

// tcpPeerFlags say what is known about one direction.
type tcpPeerFlags uint16

const (
	peerKnown       tcpPeerFlags = 1 << iota // end and maxEnd hold values (its own segments, or the other side's ACKs)
	peerSeen                                 // a segment from this side was tracked
	peerSyn                                  // its SYN was seen: iss holds its initial sequence number
	peerWScale                               // its SYN carried the window scale option (RFC 7323 2.2)
	peerLoose                                // its end may lag what it sent: picked up mid-stream, or sent a fragment
	peerNoScale                              // its window scale is unknown: picked up mid-stream
	peerSynAcked                             // the other side acknowledged its SYN
	peerFin                                  // it sent a FIN, in window
	peerFinAcked                             // the other side acknowledged that FIN
	peerEdgeUnknown                          // picked up: how far the other side lets it send is unknown until that side speaks
)

// tcpPeer is one direction of a connection: conntrack's ip_ct_tcp_state.
type tcpPeer struct {
	end    uint32 // highest seq+len this side sent (td_end)
	maxEnd uint32 // highest ack+window the other side advertised (td_maxend), +1 on a zero window so probes pass
	maxWin uint32 // largest window this side advertised, scaled (td_maxwin); 0 while unknown
	iss    uint32 // initial sequence number, with peerSyn
	finEnd uint32 // end of its FIN, with peerFin
	scale  uint8  // window scale (td_scale), applied to non-SYN windows
	flags  tcpPeerFlags
}

// shift is the scale applied to this side's window field: its own once both
// SYNs agreed on it, the largest allowed when the SYNs were not seen
// (RFC 7323 section 2.3 caps it at 14).
func (p *tcpPeer) shift() uint8 {
	if p.flags&peerNoScale != 0 {
		return header.MaxWndScale
	}
	return p.scale
}

// tcpConnFlags are connection-wide facts.
type tcpConnFlags uint8

const (
	connOpenedOutside tcpConnFlags = 1 << iota // the first SYN came from the WAN side (a port forward)
	connPickedUp                               // first seen mid-stream
	connPendingSyn                             // pending holds a SYN passed without tracking
	connIgnoredAck                             // ignoredAck holds the ACK a responder sent during SYN-SENT
)

// tcpPendingSyn is a SYN passed on a connection that was already
// synchronised (or retried with another initial sequence number during the
// handshake): conntrack's last_seq/last_end/last_win/last_wscale. When the
// other side's SYN-ACK acknowledges it, both endpoints are on a new
// connection and tracking restarts from it.
type tcpPendingSyn struct {
	seq, end uint32
	win      uint16
	ws       int8 // window scale option, -1 without
	dir      uint8
}

// tcpConn tracks one TCP connection through the NAT. The zero value has seen
// nothing; it never allocates.
type tcpConn struct {
	peer       [2]tcpPeer
	pending    tcpPendingSyn
	ignoredAck uint32
	state      tcpConnState
	flags      tcpConnFlags
}

// tcpVerdict is what the tracker made of a segment.
type tcpVerdict uint8

const (
	tcpDrop        tcpVerdict = iota // out of window or invalid in the state: nothing changed, drop it
	tcpAccept                        // tracked: pass it
	tcpAcceptClose                   // tracked, and it closed the connection (exact RST, or the second FIN)
	tcpIgnore                        // pass it, but it changed nothing (an in-window RST that is not exact, an ACK older than a window)
)

// tcpSeg is the part of a segment the tracker reads.
type tcpSeg struct {
	seq, ack, sack uint32 // sack: the highest SACK right edge, or ack
	end            uint32 // seq + payload + SYN + FIN
	win            uint32 // window field, unscaled
	flags          header.TCPFlags
	ws             int8 // window scale option of a SYN, -1 without
	dataN          uint32
	frag           bool // only part of the payload is in this packet
}

func tcpBefore(a, b uint32) bool { return int32(a-b) < 0 }
func tcpAfter(a, b uint32) bool  { return int32(a-b) > 0 }

// parse reads a segment. l4 is a TCP header and payload that Parse
// checked; fragment says more of the payload follows in other fragments.
// It fills s in place: the tracker runs for every TCP packet, and a
// returned copy shows in the translation's cost.
func (s *tcpSeg) parse(l4 []byte, fragment bool) {
	tcp := header.TCP(l4)
	off := int(tcp.DataOffset())
	s.seq = tcp.SequenceNumber()
	s.ack = tcp.AckNumber()
	s.win = uint32(tcp.WindowSize())
	s.flags = tcp.Flags()
	s.ws = -1
	s.dataN = uint32(len(l4) - off)
	s.frag = fragment
	s.sack = s.ack
	s.end = s.seq + s.dataN
	if s.flags&header.TCPFlagSyn != 0 {
		s.end++
		if off > header.TCPMinimumSize {
			s.ws = int8(header.ParseSynOptions(l4[header.TCPMinimumSize:off], s.flags&header.TCPFlagAck != 0).WS)
		}
	} else if off > header.TCPMinimumSize && s.flags&header.TCPFlagAck != 0 {
		s.sack = sackEdge(l4[header.TCPMinimumSize:off], s.ack)
	}
	if s.flags&header.TCPFlagFin != 0 {
		s.end++
	}
}

// sackEdge returns the highest right edge of the SACK blocks in the options
// (RFC 2018), or ack when there is none above it: conntrack's tcp_sack. The
// receiver's data up to there has been seen, so it is checked like an ACK.
func sackEdge(opts []byte, ack uint32) uint32 {
	sack := ack
	for i := 0; i < len(opts); {
		switch opts[i] {
		case header.TCPOptionEOL:
			return sack
		case header.TCPOptionNOP:
			i++
			continue
		}
		if i+1 >= len(opts) {
			return sack
		}
		n := int(opts[i+1])
		if n < 2 || i+n > len(opts) {
			return sack
		}
		if opts[i] == header.TCPOptionSACK && (n-2)%8 == 0 {
			for j := i + 2; j < i+n; j += 8 {
				if edge := binary.BigEndian.Uint32(opts[j+4:]); tcpAfter(edge, sack) {
					sack = edge
				}
			}
		}
		i += n
	}
	return sack
}

// tcpFlagsValid is conntrack's tcp_valid_flags: the combinations a TCP may
// send. PSH, URG, ECE and CWR go with any of them. Every segment but a SYN
// and an RST carries ACK (RFC 793 section 3.1).
func tcpFlagsValid(f header.TCPFlags) bool {
	switch f &^ (header.TCPFlagPsh | header.TCPFlagUrg | header.TCPFlagEce | header.TCPFlagCwr) {
	case header.TCPFlagSyn, header.TCPFlagSyn | header.TCPFlagAck,
		header.TCPFlagRst, header.TCPFlagRst | header.TCPFlagAck,
		header.TCPFlagFin | header.TCPFlagAck, header.TCPFlagAck:
		return true
	}
	return false
}

// established reports a connection that completed its handshake, or was
// picked up and then seen both ways, and is not closing: conntrack's
// ESTABLISHED with ASSURED.
func (c *tcpConn) established() bool {
	return c.state == tcpEstablished &&
		c.peer[tcpInside].flags&c.peer[tcpOutside].flags&peerSeen != 0
}

// unreplied reports a connection opened from the WAN side (a port forward)
// that the inside has not answered yet.
func (c *tcpConn) unreplied() bool {
	return c.flags&connOpenedOutside != 0 && c.peer[tcpInside].flags&peerSeen == 0
}

// segment tracks one segment from the inside (outbound) or the outside.
// Segments it drops leave the connection exactly as it was.
func (c *tcpConn) segment(l4 []byte, fragment, outbound bool) tcpVerdict {
	var s tcpSeg
	s.parse(l4, fragment)
	from := tcpOutside
	if outbound {
		from = tcpInside
	}
	return c.track(&s, from)
}

// track is segment on a parsed segment.
func (c *tcpConn) track(s *tcpSeg, from int) tcpVerdict {
	if !tcpFlagsValid(s.flags) {
		return tcpDrop
	}
	switch {
	case s.flags&header.TCPFlagSyn != 0:
		if s.flags&header.TCPFlagAck != 0 {
			return c.synAck(s, from)
		}
		return c.syn(s, from)
	case s.flags&header.TCPFlagRst != 0:
		return c.rst(s, from)
	}
	snd := &c.peer[from]
	switch {
	case c.state == tcpNone:
		// Picked up mid-stream: learn from this segment, then check it
		// like any other (it passes).
		next := *c
		next.pickup(s, from)
		if next.inWindow(s, from) != tcpAccept {
			return tcpDrop
		}
		*c = next
	case c.state == tcpSynSent && snd.flags&peerKnown == 0:
		// The responder speaks without a SYN-ACK: it still has an old
		// connection on this tuple and answers the new SYN with a
		// challenge ACK (RFC 5961 section 4), which the opener answers
		// with an RST. conntrack lets it through untracked (IGNORE).
		c.ignoredAck = s.ack
		c.flags |= connIgnoredAck
		return tcpIgnore
	case c.state == tcpSynSent:
		// Before any SYN was acknowledged, only SYNs and RSTs belong
		// to the handshake.
		return tcpDrop
	default:
		if v := c.inWindow(s, from); v != tcpAccept {
			return v
		}
	}
	return c.update(s, from)
}

// pickup starts tracking from a segment that is not a SYN: the sender's end
// and window are what it shows, the receiver's end is what it acknowledges.
// The scale is unknown on both sides, so windows are taken as large as they
// could be (conntrack's loose mode is fully liberal here; the RST and
// acknowledgement checks still hold for the ends learned).
func (c *tcpConn) pickup(s *tcpSeg, from int) {
	*c = tcpConn{state: tcpEstablished, flags: connPickedUp}
	snd, rcv := &c.peer[from], &c.peer[1-from]
	// The sender's right edge is the receiver's ack plus window, which
	// this segment does not show (its window is the sender's own): until
	// the receiver speaks, the sender's sequence numbers are not bounded
	// above (conntrack marks pickups liberal for the same reason).
	snd.flags = peerKnown | peerLoose | peerNoScale | peerEdgeUnknown
	snd.end = s.end
	snd.maxWin = max(s.win<<header.MaxWndScale, 1)
	snd.maxEnd = s.end + snd.maxWin
	rcv.flags = peerKnown | peerLoose | peerNoScale
	rcv.end = s.sack
	rcv.maxEnd = s.sack
}

// inWindow is conntrack's tcp_in_window test for a segment from one side
// (sender) to the other (receiver), after RFC 793 section 3.3's
// acceptability and RFC 7323's scaled windows:
//
//	I   seq <= sender.maxEnd                  not beyond what the receiver allowed
//	II  end >= sender.end - receiver.maxWin   not older than a window (retransmissions pass)
//	III ack <= receiver.end                   acknowledges nothing the receiver did not send
//	IV  ack >= receiver.end - max(sender.maxWin, 66000)
//	                                          not older than a window either (delayed ACKs pass)
//
// III and IV hold only for segments with ACK; a SACK block counts as an
// acknowledgement up to its right edge. A receiver whose end was learned
// loosely (picked up, or a fragment hid a payload's length) may be
// acknowledged up to its maxEnd instead: data sent before the tracker
// watched is acknowledged after.
//
// A segment failing I, II or III is out of window (tcpDrop). One failing
// only IV carries an acknowledgement older than a window, which a genuine
// ACK reordered far behind does: conntrack passes it without learning from
// it ("ignored ACK under lower bound"), and so does this (tcpIgnore). Its
// sequence number is in window, so the endpoint judges it (RFC 5961
// section 5 drops an unacceptable ACK); the NAT changes nothing for it.
func (c *tcpConn) inWindow(s *tcpSeg, from int) tcpVerdict {
	snd, rcv := &c.peer[from], &c.peer[1-from]
	if snd.flags&(peerKnown|peerEdgeUnknown) == peerKnown && tcpAfter(s.seq, snd.maxEnd) {
		return tcpDrop
	}
	// A picked-up inside host's own end may have been pushed ahead by an
	// acknowledgement (its real end was unknown), so its segments are not
	// judged as old by it: an outsider who forged that acknowledgement
	// must not cut the host off. Outside segments stay bounded.
	looseInside := from == tcpInside && snd.flags&peerLoose != 0
	if rcv.maxWin != 0 && snd.flags&peerKnown != 0 && !looseInside && tcpBefore(s.end, snd.end-rcv.maxWin) {
		return tcpDrop
	}
	if !s.hasAck() {
		return tcpAccept
	}
	if rcv.flags&peerKnown == 0 {
		return tcpDrop
	}
	upper := rcv.end
	if rcv.flags&peerLoose != 0 {
		upper = max32seq(rcv.end, rcv.maxEnd)
	}
	if tcpAfter(s.sack, upper) {
		return tcpDrop
	}
	if tcpBefore(s.ack, rcv.end-max(snd.maxWin, tcpMaxAckWin)) {
		return tcpIgnore
	}
	return tcpAccept
}

func max32seq(a, b uint32) uint32 {
	if tcpAfter(b, a) {
		return b
	}
	return a
}

// hasAck reports an acknowledgement to check: ACK set, and not the zero
// acknowledgement some stacks put in an RST (conntrack ignores it too).
func (s *tcpSeg) hasAck() bool {
	if s.flags&header.TCPFlagAck == 0 {
		return false
	}
	return s.flags&header.TCPFlagRst == 0 || s.ack != 0
}

// learn records an in-window segment in both directions: conntrack's
// update of sender and receiver data at the end of tcp_in_window.
func (c *tcpConn) learn(s *tcpSeg, from int) {
	snd, rcv := &c.peer[from], &c.peer[1-from]
	win := s.win
	if s.flags&header.TCPFlagSyn == 0 {
		// RFC 7323 section 2.2: the window of a SYN is never scaled.
		win <<= snd.shift()
	}
	snd.flags |= peerKnown | peerSeen
	if s.frag {
		// The payload's length is unknown: the other side may
		// acknowledge more than this packet shows.
		snd.flags |= peerLoose
	}
	ack, sack := s.ack, s.sack
	hasAck := s.hasAck()
	if !hasAck {
		ack, sack = rcv.end, rcv.end
	}
	if swin := min(win+(sack-ack), tcpMaxWin); swin > snd.maxWin {
		snd.maxWin = swin
	}
	if tcpAfter(s.end, snd.end) {
		snd.end = s.end
	}
	if rcv.flags&peerKnown == 0 {
		return
	}
	if rcv.maxWin != 0 && tcpAfter(s.end, snd.maxEnd) {
		rcv.maxWin = min(rcv.maxWin+(s.end-snd.maxEnd), tcpMaxWin)
	}
	if hasAck && rcv.flags&peerLoose != 0 && tcpAfter(ack, rcv.end) {
		rcv.end = ack
	}
	if rcv.flags&peerEdgeUnknown != 0 || !tcpBefore(sack+win, rcv.maxEnd) {
		rcv.flags &^= peerEdgeUnknown
		rcv.maxEnd = sack + win
		if win == 0 {
			// A zero window: the receiver still takes a one-byte
			// probe (RFC 9293 section 3.8.6.1).
			rcv.maxEnd++
		}
	}
}

// update learns an in-window segment and moves the state: handshake
// acknowledgements, FINs and their acknowledgements.
func (c *tcpConn) update(s *tcpSeg, from int) tcpVerdict {
	frontier := c.peer[from].end
	c.learn(s, from)
	snd, rcv := &c.peer[from], &c.peer[1-from]
	if s.hasAck() {
		if rcv.flags&(peerSyn|peerSynAcked) == peerSyn && tcpAfter(s.ack, rcv.iss) {
			rcv.flags |= peerSynAcked
		}
		if rcv.flags&(peerFin|peerFinAcked) == peerFin && !tcpBefore(s.ack, rcv.finEnd) {
			rcv.flags |= peerFinAcked
		}
	}
	bothFin := c.peer[0].flags&c.peer[1].flags&peerFin != 0
	// A FIN counts only where the sender's stream ends: its segment starts
	// at or before the highest sequence number seen from that side and
	// reaches beyond it (or repeats the FIN already seen). Anywhere else in
	// the window it is passed but changes no state: a blind attacker would
	// have to hit the stream's end, not just the window, to move an idle
	// connection to the transitory timer. A genuine FIN behind a gap is
	// counted when it is retransmitted or answered by the other FIN.
	fin := s.flags&header.TCPFlagFin != 0 &&
		((!tcpAfter(s.seq, frontier) && tcpAfter(s.end, frontier)) ||
			(snd.flags&peerFin != 0 && s.end == snd.finEnd) || snd.flags&peerLoose != 0)
	if fin {
		if snd.flags&peerFin == 0 || tcpAfter(s.end, snd.finEnd) {
			snd.finEnd = s.end
			snd.flags &^= peerFinAcked
		}
		snd.flags |= peerFin
	}
	switch c.state {
	case tcpSynSent:
		if s.flags&header.TCPFlagSyn != 0 && s.hasAck() {
			c.state = tcpSynRecv
		}
		fallthrough
	case tcpSynRecv:
		if c.peer[0].flags&c.peer[1].flags&peerSynAcked != 0 {
			c.state = tcpEstablished
		}
	}
	if c.state >= tcpEstablished && c.state < tcpClose {
		c.state = c.closeState()
	}
	if !bothFin && c.peer[0].flags&c.peer[1].flags&peerFin != 0 {
		return tcpAcceptClose
	}
	return tcpAccept
}

// closeState is the state of a synchronised connection from its FINs.
func (c *tcpConn) closeState() tcpConnState {
	a, b := c.peer[0].flags, c.peer[1].flags
	switch {
	case a&peerFin == 0 && b&peerFin == 0:
		return tcpEstablished
	case a&peerFin != 0 && b&peerFin != 0:
		if a&b&peerFinAcked != 0 {
			return tcpTimeWait
		}
		return tcpLastAck
	case (a|b)&peerFinAcked != 0:
		return tcpCloseWait
	}
	return tcpFinWait
}

// open starts a connection from a SYN: the sender is the opener.
func (c *tcpConn) open(s *tcpSeg, from int) {
	*c = tcpConn{state: tcpSynSent}
	if from == tcpOutside {
		c.flags |= connOpenedOutside
	}
	c.initSyn(s, from)
}

// initSyn sets up the sender from its SYN or SYN-ACK (conntrack's
// tcp_init_sender). Window scaling applies only when both SYNs carried the
// option (RFC 7323 section 2.2); until the second SYN is seen the first
// one's scale is kept tentatively.
func (c *tcpConn) initSyn(s *tcpSeg, from int) {
	snd, rcv := &c.peer[from], &c.peer[1-from]
	*snd = tcpPeer{
		end:    s.end,
		maxEnd: s.end,
		maxWin: max(s.win, 1),
		iss:    s.seq,
		flags:  peerKnown | peerSeen | peerSyn,
	}
	if s.ws >= 0 {
		snd.flags |= peerWScale
		snd.scale = uint8(s.ws)
	}
	if rcv.flags&peerSyn != 0 && snd.flags&rcv.flags&peerWScale == 0 {
		snd.scale, rcv.scale = 0, 0
	}
}

// remember keeps a SYN that was passed without tracking, for a SYN-ACK that
// may acknowledge it.
func (c *tcpConn) remember(s *tcpSeg, from int) {
	c.pending = tcpPendingSyn{seq: s.seq, end: s.end, win: uint16(s.win), ws: s.ws, dir: uint8(from)}
	c.flags |= connPendingSyn
}

// syn handles a SYN without ACK.
func (c *tcpConn) syn(s *tcpSeg, from int) tcpVerdict {
	snd := &c.peer[from]
	switch {
	case c.state == tcpNone || c.state == tcpTimeWait || c.state == tcpClose:
		// A new connection, or the tuple reused after the last one
		// ended (RFC 1122 section 4.2.2.13).
		c.open(s, from)
		return tcpAccept
	case c.state == tcpSynSent && snd.flags&peerSyn == 0 && c.flags&connPickedUp == 0:
		// Simultaneous open (RFC 793 figure 8): the other side's SYN.
		c.initSyn(s, from)
		return tcpAccept
	case snd.flags&peerSyn != 0 && s.seq == snd.iss && c.state < tcpEstablished:
		// The same SYN again: a retransmission.
		if v := c.inWindow(s, from); v != tcpAccept {
			return v
		}
		return c.update(s, from)
	case from == tcpInside:
		// The LAN host opens the tuple again (it lost the connection,
		// or retries with another initial sequence number): passed and
		// remembered; the other side's SYN-ACK decides.
		c.remember(s, from)
		return tcpAccept
	case c.state < tcpEstablished && c.flags&connOpenedOutside != 0:
		// The remote that opened retries with another initial sequence
		// number before the handshake completed.
		c.remember(s, from)
		return tcpAccept
	}
	// A SYN from the WAN side on a synchronised connection: a blind
	// attacker's way to desynchronise it (RFC 5961 section 4 has the
	// endpoint answer with a challenge ACK; the NAT drops it).
	return tcpDrop
}

// synAck handles a SYN with ACK.
func (c *tcpConn) synAck(s *tcpSeg, from int) tcpVerdict {
	if pd := c.pending; c.flags&connPendingSyn != 0 && int(pd.dir) != from &&
		tcpAfter(s.ack, pd.seq) && !tcpAfter(s.ack, pd.end) {
		// It acknowledges the SYN passed untracked (its SYN flag, and
		// maybe data the SYN carried): both endpoints are on a new
		// connection; track it from that SYN. A SYN-ACK that does not
		// qualify changes nothing (answerSyn checks before it touches).
		next := *c
		next.open(&tcpSeg{seq: pd.seq, end: pd.end, win: uint32(pd.win), ws: pd.ws, flags: header.TCPFlagSyn}, int(pd.dir))
		if v := next.answerSyn(s, from); v != tcpDrop {
			*c = next
			return v
		}
		return tcpDrop
	}
	snd := &c.peer[from]
	switch {
	case c.state == tcpNone:
		return tcpDrop
	case c.state == tcpSynSent && snd.flags&peerSyn == 0 && c.flags&connPickedUp == 0:
		return c.answerSyn(s, from)
	case c.state <= tcpSynRecv && snd.flags&peerSyn != 0 && s.seq != snd.iss && c.ackOK(s, from):
		// The responder answers again with another initial sequence
		// number: conntrack re-initialises the sender.
		return c.answerSyn(s, from)
	}
	// A retransmitted SYN-ACK, or one of a simultaneous open: checked
	// like any segment.
	if v := c.inWindow(s, from); v != tcpAccept {
		return v
	}
	return c.update(s, from)
}

// answerSyn takes the responder's SYN-ACK during the handshake: it must
// acknowledge the opener's SYN.
func (c *tcpConn) answerSyn(s *tcpSeg, from int) tcpVerdict {
	if !c.ackOK(s, from) {
		return tcpDrop
	}
	c.initSyn(s, from)
	c.state = tcpSynSent
	return c.update(s, from)
}

// ackOK checks only the acknowledgement of a segment (tests III and IV), for
// a sender whose own sequence numbers start with this segment.
func (c *tcpConn) ackOK(s *tcpSeg, from int) bool {
	rcv := &c.peer[1-from]
	if rcv.flags&peerKnown == 0 {
		return false
	}
	return !tcpAfter(s.ack, rcv.end) && !tcpBefore(s.ack, rcv.end-tcpMaxAckWin)
}

// rst handles a reset.
func (c *tcpConn) rst(s *tcpSeg, from int) tcpVerdict {
	snd, rcv := &c.peer[from], &c.peer[1-from]
	switch {
	case c.state == tcpNone:
		// Nothing to reset.
		return tcpDrop
	case snd.flags&peerKnown == 0:
		// The responder refuses the SYN. RFC 793 (SYN-SENT): the
		// reset is acceptable only when it acknowledges the SYN,
		// which a blind attacker has to guess exactly.
		if s.flags&header.TCPFlagAck == 0 || !tcpAfter(s.ack, rcv.iss) || tcpAfter(s.ack, rcv.end) {
			return tcpDrop
		}
		c.state = tcpClose
		return tcpAcceptClose
	case c.state == tcpSynSent && c.flags&connIgnoredAck != 0 && s.seq == c.ignoredAck:
		// The opener resets the old connection the responder still
		// had (its challenge ACK went through untracked); the new
		// connection's tracking stays.
		return tcpIgnore
	}
	if v := c.inWindow(s, from); v != tcpAccept {
		return v
	}
	if s.seq != snd.end || c.state == tcpClose {
		// In window but not exact (RFC 5961 section 3.2): the
		// endpoint answers with a challenge ACK; nothing changes here.
		return tcpIgnore
	}
	c.state = tcpClose
	return tcpAcceptClose
}
