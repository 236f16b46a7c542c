package nat

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// The PPTP control channel is a TCP byte stream: a message may be split over
// several segments and one segment may carry several messages. Each direction
// is followed by sequence number from the SYN on, like a receiver would read
// it, so every message is parsed once, in order, whatever the segmentation.
//
// Rules (what a segment gets):
//   - Bytes already parsed (a retransmission, or the old part of a segment
//     that overlaps new data) get the same Call ID rewrites again, from a
//     record of the recent rewrites by sequence number.
//   - A segment that starts beyond the parsed point (a segment before it was
//     lost) is dropped: the sender retransmits it after the missing one, and
//     a Call ID is never passed unparsed.
//   - A segment that ends inside a Call ID field this direction rewrites is
//     cut just before the field (IP length and TCP checksum fixed, FIN
//     cleared): the receiver acknowledges what it got and the sender
//     retransmits the rest, field included. A segment that would be cut to
//     nothing is dropped.
//   - A malformed message (bad magic, not a control message, unknown type,
//     Length below the type's fixed length) ends the parsing of that
//     direction: without message boundaries no later Call ID can be found,
//     and passing them unparsed could send one client's GRE to another. The
//     segment and every later data segment of that direction are dropped
//     (pptp_malformed); segments without data still pass, so the
//     connection can close or reset.
//   - Flags change no connection state: the TCP layer passes only segments
//     it accepted and itself decides when the connection closes (closeConn)
//     or is gone (gone). RST and FIN are ignored; a SYN synchronises a
//     direction that is not synchronised yet (the server's must acknowledge
//     the client's SYN) and is ignored on one that is.
//   - A connection first seen without its SYN (e.g. after a restart) is not
//     parsed at all and passes unmodified; its calls get no GRE mapping.
//   - A fragmented control segment is dropped (pptp_fragmented): its
//     payload is not all in one packet. Control messages are at most 220
//     bytes, so this takes a link MTU below 300.

// pptpHeadLen is how much of each message the tracker reads: the header,
// both Call ID fields and the Result Code at offset 16.
const pptpHeadLen = 17

// pptpEditRing is how many recent rewrites a direction remembers for
// retransmissions: far more than a control channel has unacknowledged.
const pptpEditRing = 32

// pptpEdit is a Call ID rewrite at a stream position: the two bytes at seq
// become val.
type pptpEdit struct {
	seq uint32
	val [2]byte
}

// pptpStream is one direction of a control connection.
type pptpStream struct {
	synced   bool   // the SYN was seen: message boundaries are known
	iss      uint32 // the SYN's sequence number
	next     uint32 // sequence number of the first byte not yet parsed
	broken   bool   // a malformed message stopped the parsing
	brokenAt uint32

	msgStart uint32 // sequence number of the message being parsed
	have     int    // its bytes seen so far
	length   int    // its Length once the header is complete, else 0
	head     [pptpHeadLen]byte

	edits  [pptpEditRing]pptpEdit
	nEdits int
}

// seqBefore reports a < b in sequence number space.
func seqBefore(a, b uint32) bool { return int32(a-b) < 0 }

// control handles one TCP segment of a tracked control connection. dir is
// fromClient or fromServer. It runs after the address and port rewrite or
// before it; the checksum updates commute.
//
// The TCP layer passes only segments it accepted (in window) and decides
// itself when the connection closes (closeConn) or is gone (gone), so the
// flags here change no connection state: RST and FIN are ignored, and a SYN
// synchronises a direction only when that direction is not synchronised
// yet. A SYN on a synchronised direction is ignored, never a reset: one
// forged SYN would otherwise move the parsed point away from the real
// stream, and every retransmission of the server's Outgoing-Call-Reply would
// be dropped as out of order.
func (pt *pptpTracker) control(c *pptpConn, p *Packet, dir int, now int64) DropReason {
	tcp := header.TCP(p.L4)
	d := &c.dirs[dir]
	seq := tcp.SequenceNumber()
	c.lastSeen = now
	if p.TCPFlags&header.TCPFlagSyn != 0 {
		if !d.synced && c.synAcceptable(p, dir) {
			*d = pptpStream{synced: true, iss: seq, next: seq + 1, msgStart: seq + 1}
		}
		seq++ // the SYN takes one sequence number: data starts after it
	}
	payload := p.L4[tcp.DataOffset():]
	if len(payload) == 0 {
		return DropNone
	}
	if !d.synced {
		if d.nEdits == 0 && !d.broken {
			// Count the connection once.
			d.broken = true
			d.brokenAt = seq
			pt.untracked(c.key)
		}
		return DropNone
	}
	if p.MoreFragments {
		return DropPPTPFragmented
	}
	end := seq + uint32(len(payload))
	if d.broken && seqBefore(d.brokenAt, end) {
		return DropPPTPMalformed
	}
	if seqBefore(d.next, seq) {
		return DropPPTPOutOfOrder
	}
	// The part already parsed gets the recorded rewrites again.
	old := len(payload)
	if seqBefore(d.next, end) {
		old = int(d.next - seq)
	}
	pt.replay(d, p, seq, old)
	if old == len(payload) {
		return DropNone
	}
	return pt.parse(c, d, p, dir, seq, old, now)
}

// synAcceptable reports whether a SYN may synchronise direction dir. The
// server's SYN must acknowledge the client's when that was seen, as its
// SYN-ACK does: a forger off the path does not know the client's initial
// sequence number. (The TCP layer checks this too; the tracker does not
// rely on it.)
func (c *pptpConn) synAcceptable(p *Packet, dir int) bool {
	client := &c.dirs[fromClient]
	if dir == fromClient || !client.synced {
		return true
	}
	return p.TCPFlags&header.TCPFlagAck != 0 && header.TCP(p.L4).AckNumber() == client.iss+1
}

// replay applies the recorded rewrites to payload[:n], which starts at seq.
func (pt *pptpTracker) replay(d *pptpStream, p *Packet, seq uint32, n int) {
	if n <= 0 {
		return
	}
	count := min(d.nEdits, pptpEditRing)
	for i := range count {
		ed := &d.edits[i]
		for j := range 2 {
			off := int32(ed.seq + uint32(j) - seq)
			if off >= 0 && int(off) < n {
				pt.patch(p, int(off), ed.val[j])
			}
		}
	}
}

// patch sets one payload byte and updates the TCP checksum (RFC 1624) over
// the 16-bit word holding it. The TCP header is a multiple of 4 bytes, so
// payload word boundaries are segment word boundaries.
func (pt *pptpTracker) patch(p *Packet, off int, b byte) {
	tcp := header.TCP(p.L4)
	pos := int(tcp.DataOffset()) + off
	if p.L4[pos] == b {
		return
	}
	w := pos &^ 1
	word := func() uint16 {
		if w+1 < len(p.L4) {
			return binary.BigEndian.Uint16(p.L4[w:])
		}
		return uint16(p.L4[w]) << 8 // odd length: padded with zero
	}
	before := word()
	p.L4[pos] = b
	tcp.SetChecksum(updateChecksum16(tcp.Checksum(), before, word()))
}

// record notes a rewrite of the Call ID at stream position seq and applies
// it to the bytes of it in this segment.
func (pt *pptpTracker) record(d *pptpStream, p *Packet, segSeq uint32, n int, seq uint32, val uint16) {
	ed := pptpEdit{seq: seq}
	binary.BigEndian.PutUint16(ed.val[:], val)
	d.edits[d.nEdits%pptpEditRing] = ed
	d.nEdits++
	for j := range 2 {
		off := int32(seq + uint32(j) - segSeq)
		if off >= 0 && int(off) < n {
			pt.patch(p, int(off), ed.val[j])
		}
	}
}

// parse reads the new bytes payload[from:] of a segment starting at seq,
// message by message, rewriting Call IDs as it goes.
func (pt *pptpTracker) parse(c *pptpConn, d *pptpStream, p *Packet, dir int, seq uint32, from int, now int64) DropReason {
	payload := p.L4[header.TCP(p.L4).DataOffset():]
	n := len(payload)
	i := from
	for i < n {
		if d.length == 0 {
			// The header is not complete yet.
			k := copy(d.head[d.have:pptpHeaderLen], payload[i:])
			d.have += k
			i += k
			if d.have < pptpHeaderLen {
				break
			}
			if err := PPTPMessage(d.head[:]).Validate(); err != PPTPOK {
				d.broken = true
				d.brokenAt = d.msgStart
				pt.e.log.Info().Stringer("client", c.key.client.AddrPort()).
					Stringer("server", c.key.server.AddrPort()).
					Bool("from_client", dir == fromClient).Str("error", err.Error()).
					Msg("pptp malformed control message: dropping the rest of this direction")
				return DropPPTPMalformed
			}
			d.length = int(PPTPMessage(d.head[:]).Length())
			continue
		}
		need := min(d.length, pptpHeadLen)
		if d.have < need {
			k := copy(d.head[d.have:need], payload[i:])
			d.have += k
			i += k
			if d.have < need {
				// The segment ends before the message can be acted on.
				// If it holds any byte of the field this direction
				// rewrites, cut it before that field: the byte cannot
				// leave before its new value is known.
				if f := rewriteOffset(PPTPMessage(d.head[:]).ControlType(), dir); f != 0 && d.have > f {
					return pt.cut(d, p, seq, int(d.msgStart+uint32(f)-seq), f)
				}
				break
			}
			pt.message(c, d, p, dir, seq, n, now)
			continue
		}
		// The rest of the message matters to nobody: skip it.
		k := min(d.length-d.have, n-i)
		d.have += k
		i += k
		if d.have == d.length {
			d.msgStart += uint32(d.length)
			d.have, d.length = 0, 0
		}
	}
	d.next = seq + uint32(n)
	return DropNone
}

// opensCall reports whether a client's message with a Call ID the client
// has no call with starts a call: its own requests (Outgoing- and
// Incoming-Call-Request) and its answers to the server's (Outgoing- and
// Incoming-Call-Reply). Clearing or disconnecting a call it never opened
// starts nothing.
func opensCall(t PPTPControlType) bool {
	switch t {
	case PPTPOutgoingCallRequest, PPTPIncomingCallRequest, PPTPOutgoingCallReply, PPTPIncomingCallReply:
		return true
	}
	return false
}

// rewriteOffset is the offset of the Call ID field a direction rewrites in a
// message type, or 0: the sender's Call ID in the client's messages, the
// Peer's Call ID in the server's.
func rewriteOffset(t PPTPControlType, dir int) int {
	if dir == fromClient {
		return t.senderCallIDOffset()
	}
	return t.peerCallIDOffset()
}

// cut shortens the segment to its first keep payload bytes and rolls the
// parser back to the field at offset f of the current message.
func (pt *pptpTracker) cut(d *pptpStream, p *Packet, seq uint32, keep, f int) DropReason {
	d.have = f
	d.next = seq + uint32(keep)
	if keep <= 0 {
		return DropPPTPSplitCallID
	}
	pt.stats.Truncated++
	tcp := header.TCP(p.L4)
	l4len := int(tcp.DataOffset()) + keep
	if flags := tcp.Flags(); flags&header.TCPFlagFin != 0 {
		// The FIN comes after the data that was cut away.
		tcp.SetFlags(uint8(flags &^ header.TCPFlagFin))
		p.TCPFlags = flags &^ header.TCPFlagFin
	}
	hlen := len(p.Buf) - len(p.L4)
	p.Buf = p.Buf[:hlen+l4len]
	p.L4 = p.Buf[hlen:]
	p.IP = header.IPv4(p.Buf)
	p.IP.SetTotalLength(uint16(len(p.Buf)))
	p.IP.SetChecksum(0)
	p.IP.SetChecksum(^p.IP.CalculateChecksum())
	tcp = header.TCP(p.L4)
	tcp.SetChecksum(0)
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber,
		tcpip.AddrFrom4(p.Src), tcpip.AddrFrom4(p.Dst), uint16(l4len))
	tcp.SetChecksum(^checksum.Checksum(p.L4, xsum))
	return DropNone
}

// message acts on a message whose first bytes (up to pptpHeadLen) are in
// d.head: it rewrites the Call ID field this direction owns and keeps the
// call table in step with the call's life.
func (pt *pptpTracker) message(c *pptpConn, d *pptpStream, p *Packet, dir int, seq uint32, n int, now int64) {
	m := PPTPMessage(d.head[:d.have])
	t := m.ControlType()
	callID, hasCallID := m.CallID()
	peerID, hasPeerID := m.PeerCallID()
	result, hasResult := m.resultCode()
	failed := hasResult && result != 1
	rewrite := func(off int, val uint16) {
		pt.record(d, p, seq, n, d.msgStart+uint32(off), val)
	}
	if t == PPTPStopControlRequest || t == PPTPStopControlReply {
		pt.closeConn(c, "control connection stopped", now)
		return
	}
	if dir == fromClient {
		if !hasCallID {
			return // Peer's Call IDs from the client name the server's calls
		}
		call := pt.callByOrig(c, callID)
		if call == nil && opensCall(t) && !c.closed {
			call = pt.newCall(c, callID, now)
		}
		if call == nil {
			// No call: out of calls, over the client's quota, a closed
			// connection, or a message about a call the client never
			// opened. The server gets Call ID 0, which names no call,
			// and replies with an error rather than reach another
			// client's call.
			rewrite(12, 0)
			return
		}
		rewrite(12, call.masq)
		switch t {
		case PPTPOutgoingCallReply, PPTPIncomingCallReply:
			// The client answers the server's call (client as PAC for
			// OCRP, as PNS for ICRP): the peer field is the server's ID.
			if hasPeerID {
				pt.setPeer(call, peerID)
			}
			if failed {
				pt.end(call, "call refused by the client", now)
			}
		case PPTPCallClearRequest:
			pt.end(call, "Call-Clear-Request", now)
		case PPTPCallDisconnectNotify:
			pt.end(call, "Call-Disconnect-Notify", now)
		}
		return
	}
	// From the server: the Peer's Call ID is the client's, masqueraded.
	if hasPeerID {
		call := pt.callByMasq(c, peerID)
		if call == nil {
			pt.stats.UnknownCallIDs++
			pt.e.log.Debug().Stringer("server", c.key.server.AddrPort()).
				Str("message", t.String()).Uint16("peer_call_id", peerID).
				Msg("pptp message names a call this router does not know: passed unchanged")
			return
		}
		rewrite(t.peerCallIDOffset(), call.orig)
		if t == PPTPOutgoingCallReply || t == PPTPIncomingCallReply {
			if hasCallID {
				pt.setPeer(call, callID)
			}
			if failed {
				pt.end(call, "call refused by the server", now)
			}
		}
		return
	}
	// The server's own Call ID: Call-Disconnect-Notify and
	// Call-Clear-Request end the call it names. RFC 2637 gives CDN the
	// sender's Call ID, so it is left as it is (the Linux helper rewrites
	// it as if it were the client's).
	if hasCallID && (t == PPTPCallDisconnectNotify || t == PPTPCallClearRequest) {
		pt.end(pt.callByPeer(c, callID), t.String()+" from the server", now)
	}
}
