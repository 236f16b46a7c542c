package nat

import (
	"encoding/binary"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// updateChecksum16 returns the Internet checksum xsum after one 16-bit word
// of the covered data changed from old to new, without re-reading the data
// (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')). Used for fields the gVisor
// header types have no *WithChecksumUpdate setter for (GRE, embedded headers).
func updateChecksum16(xsum, old, new uint16) uint16 {
	return ^checksum.Combine(checksum.Combine(^xsum, ^old), new)
}

// setICMPChecksum recomputes an ICMP message's checksum from scratch. ICMP
// errors are small (at most 576 bytes), and after rewriting the embedded
// headers a full sum is simpler to trust than a chain of incremental updates.
func setICMPChecksum(icmp header.ICMPv4) {
	icmp.SetChecksum(0)
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
}

// icmpChecksumValid reports whether an ICMP message sums to all ones.
func icmpChecksumValid(icmp []byte) bool {
	return checksum.Checksum(icmp, 0) == 0xffff
}

// rewriteSrc changes the source address and port of a TCP or UDP packet (or
// the identifier of an ICMP query) and fixes every checksum incrementally.
func rewriteSrc(p *Packet, addr [4]byte, port uint16) {
	if addr != p.Src {
		old, new := tcpip.AddrFrom4(p.Src), tcpip.AddrFrom4(addr)
		p.IP.SetSourceAddressWithChecksumUpdate(new)
		rewritePseudoHeader(p, old, new)
		p.Src = addr
	}
	if port != p.SrcPort {
		rewritePort(p, true, port)
	}
}

// rewriteDst is rewriteSrc for the destination side.
func rewriteDst(p *Packet, addr [4]byte, port uint16) {
	if addr != p.Dst {
		old, new := tcpip.AddrFrom4(p.Dst), tcpip.AddrFrom4(addr)
		p.IP.SetDestinationAddressWithChecksumUpdate(new)
		rewritePseudoHeader(p, old, new)
		p.Dst = addr
	}
	if port != p.DstPort {
		rewritePort(p, false, port)
	}
}

// rewritePort sets the source (src) or destination port of a TCP or UDP
// header, or an ICMP query's identifier (both "ports" of an echo), and keeps
// the checksum right: updated incrementally (RFC 1624), or left alone when
// it is a partial one, since the offload sums the ports itself.
func rewritePort(p *Packet, src bool, port uint16) {
	if p.L4 == nil {
		return
	}
	switch p.Proto {
	case ProtoTCP, ProtoUDP:
		off, xsum := 2, header.TCPChecksumOffset
		if src {
			off = 0
		}
		if p.Proto == ProtoUDP {
			xsum = 6 // the UDP checksum field (RFC 768)
		}
		old := binary.BigEndian.Uint16(p.L4[off:])
		binary.BigEndian.PutUint16(p.L4[off:], port)
		// A UDP checksum of 0 means "none" and stays so.
		if sum := binary.BigEndian.Uint16(p.L4[xsum:]); !p.PartialChecksum && (sum != 0 || p.Proto == ProtoTCP) {
			binary.BigEndian.PutUint16(p.L4[xsum:], updateChecksum16(sum, old, port))
		}
	case ProtoICMP:
		header.ICMPv4(p.L4).SetIdentWithChecksumUpdate(port)
		p.SrcPort, p.DstPort = port, port
		return
	}
	if src {
		p.SrcPort = port
	} else {
		p.DstPort = port
	}
}

// rewritePseudoHeader fixes a TCP or UDP checksum after an address in the
// pseudo-header changed. Only the first fragment holds the transport header;
// its checksum covers the whole datagram, and the incremental update is
// still exact.
func rewritePseudoHeader(p *Packet, old, new tcpip.Address) {
	if p.L4 == nil {
		return
	}
	switch p.Proto {
	case ProtoTCP:
		header.TCP(p.L4).UpdateChecksumPseudoHeaderAddress(old, new, !p.PartialChecksum)
	case ProtoUDP:
		header.UDP(p.L4).UpdateChecksumPseudoHeaderAddress(old, new, !p.PartialChecksum)
	}
}
