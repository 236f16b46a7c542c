package nat

import "time"

// Tunnel health. ESP (RFC 4303 section 2.2) and enhanced GRE (RFC 2637
// section 4.1, when the S bit is set) carry a sequence number in clear that
// the sender increments by one per packet. Watching it in each direction of
// an ESP pair or a PPTP call tells the operator what no other counter can:
// whether packets went missing or arrived out of order before they reached
// the router — outbound, on the LAN side; inbound, on the way across the
// Internet. The router sees each packet once and keeps three numbers per
// direction, so the estimate costs nothing per packet but a comparison:
//
//   - lost: the numbers between the first and the highest seen, less the
//     numbered packets that arrived. A late packet fills its gap, so reordering is
//     not counted as loss; a duplicate fills one that stays empty, so it
//     hides one lost packet (duplicates are rare, and counted as late).
//   - late: packets whose number is not above the highest seen: reordered,
//     or repeated.
//
// Only the low 32 bits of an extended sequence number (RFC 4303 ESN) are in
// clear; the arithmetic is modulo 2^32, so a wrap is a step forward.

// seqHealth is one direction of a tunnel.
type seqHealth struct {
	packets, bytes uint64
	numbered       uint64 // packets with a sequence number (GRE acknowledgements carry none)
	late           uint64
	first, highest uint32
	sequenced      bool // a numbered packet was seen: first and highest hold
	lastSeen       int64
}

// note counts one packet of n bytes carrying sequence number seq (when
// numbered is set).
func (s *seqHealth) note(seq uint32, numbered bool, n int, now int64) {
	s.packets++
	s.bytes += uint64(n)
	s.lastSeen = now
	if !numbered {
		return
	}
	s.numbered++
	switch {
	case !s.sequenced:
		s.first, s.highest, s.sequenced = seq, seq, true
	case int32(seq-s.highest) > 0:
		s.highest = seq
	default:
		s.late++
	}
}

// lost is the estimate of packets missing between the first and the
// highest sequence number seen.
func (s *seqHealth) lost() uint64 {
	if !s.sequenced {
		return 0
	}
	span := uint64(s.highest-s.first) + 1
	if s.numbered >= span {
		return 0
	}
	return span - s.numbered
}

// TunnelHealth is one direction of an ESP pair or a PPTP call as the router
// saw it (see seqHealth).
type TunnelHealth struct {
	Packets, Bytes uint64
	// Sequenced says the packets carry sequence numbers (ESP always;
	// enhanced GRE when its sender sets the S bit); Lost and Late are
	// zero without them.
	Sequenced bool
	Lost      uint64        // numbers skipped and not seen since
	Late      uint64        // packets not above the highest number seen
	Idle      time.Duration // since the last packet; zero when none was seen
}

func (s *seqHealth) snapshot(now int64) TunnelHealth {
	h := TunnelHealth{Packets: s.packets, Bytes: s.bytes, Sequenced: s.sequenced, Lost: s.lost(), Late: s.late}
	if s.packets > 0 {
		h.Idle = time.Duration(now - s.lastSeen)
	}
	return h
}
