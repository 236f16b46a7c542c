package nat

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// IP protocol numbers the router and the NAT engine care about.
const (
	ProtoICMP = uint8(header.ICMPv4ProtocolNumber) // 1
	ProtoTCP  = uint8(header.TCPProtocolNumber)    // 6
	ProtoUDP  = uint8(header.UDPProtocolNumber)    // 17
	ProtoGRE  = uint8(47)
	ProtoESP  = uint8(50)
	ProtoAH   = uint8(51)
)

// Packet is one IPv4 packet, parsed once where it enters the router and handed
// along: the routing core, the NAT engine and the protocol handlers all read
// the fields below instead of parsing the bytes again. Rewrites happen in
// place on the underlying bytes; the cached addresses and ports are updated
// with them.
//
// A Packet holds no pointers besides its byte slices, so the router keeps one
// per buffer and reuses it without allocating.
type Packet struct {
	// Buf is the whole packet, from the IPv4 header to the end of the
	// payload (exactly the IPv4 total length).
	Buf []byte
	// IP is Buf viewed as an IPv4 header.
	IP header.IPv4
	// L4 is the transport header and payload. It is nil for non-first
	// fragments, whose transport header is in another packet.
	L4 []byte

	Proto    uint8
	Src, Dst [4]byte
	// SrcPort and DstPort are the TCP or UDP ports. For ICMP echo
	// request/reply both hold the echo identifier (the "port" that
	// RFC 5508 maps). Zero otherwise.
	SrcPort, DstPort uint16
	// TCPFlags is the TCP flags byte (SYN, ACK, FIN, RST ...).
	TCPFlags header.TCPFlags
	// ICMPType and ICMPCode for ICMP packets.
	ICMPType header.ICMPv4Type
	ICMPCode header.ICMPv4Code

	// Fragment state: FragOffset in bytes; MoreFragments is the MF flag.
	FragOffset    uint16
	MoreFragments bool

	// PartialChecksum says the TCP or UDP checksum field holds only the
	// pseudo-header sum, to be completed by checksum offload (a GSO
	// super-packet with virtio-net NEEDS_CSUM). Address rewrites then
	// update the field without complementing it, and port rewrites leave
	// it alone: the ports lie in the part the offload sums. Parse clears
	// it; the router sets it for packets it passes on whole.
	PartialChecksum bool
}

// Parse checks b as an IPv4 packet and fills p. It returns DropNone when the
// packet is usable and the reason to drop it otherwise. b may be longer than
// the packet (link padding); p.Buf is cut to the IPv4 total length.
func (p *Packet) Parse(b []byte) DropReason {
	*p = Packet{}
	if len(b) < header.IPv4MinimumSize {
		return DropMalformed
	}
	ip := header.IPv4(b)
	if header.IPVersion(b) != header.IPv4Version {
		return DropNotIPv4
	}
	hlen := int(ip.HeaderLength())
	tlen := int(ip.TotalLength())
	if hlen < header.IPv4MinimumSize || hlen > tlen || tlen > len(b) {
		return DropMalformed
	}
	b = b[:tlen]
	ip = header.IPv4(b)
	if !ip.IsChecksumValid() {
		return DropBadChecksum
	}
	p.Buf = b
	p.IP = ip
	p.Proto = ip.Protocol()
	p.Src = ip.SourceAddress().As4()
	p.Dst = ip.DestinationAddress().As4()
	p.FragOffset = ip.FragmentOffset()
	p.MoreFragments = ip.More()
	if p.FragOffset != 0 {
		// A non-first fragment carries no transport header.
		return DropNone
	}
	l4 := b[hlen:]
	switch p.Proto {
	case ProtoTCP:
		if len(l4) < header.TCPMinimumSize {
			return DropMalformed
		}
		tcp := header.TCP(l4)
		if off := int(tcp.DataOffset()); off < header.TCPMinimumSize || off > len(l4) {
			return DropMalformed
		}
		p.SrcPort, p.DstPort = tcp.SourcePort(), tcp.DestinationPort()
		p.TCPFlags = tcp.Flags()
	case ProtoUDP:
		if len(l4) < header.UDPMinimumSize {
			return DropMalformed
		}
		udp := header.UDP(l4)
		if n := int(udp.Length()); n < header.UDPMinimumSize || (n > len(l4) && !p.MoreFragments) {
			return DropMalformed
		}
		p.SrcPort, p.DstPort = udp.SourcePort(), udp.DestinationPort()
	case ProtoICMP:
		if len(l4) < header.ICMPv4MinimumSize {
			return DropMalformed
		}
		icmp := header.ICMPv4(l4)
		p.ICMPType, p.ICMPCode = icmp.Type(), icmp.Code()
		if isICMPQuery(p.ICMPType) {
			p.SrcPort = icmp.Ident()
			p.DstPort = p.SrcPort
		}
	}
	p.L4 = l4
	return DropNone
}

// IsFragment reports whether p is part of a fragmented datagram.
func (p *Packet) IsFragment() bool { return p.MoreFragments || p.FragOffset != 0 }

// SrcAddr and DstAddr return the addresses as netip.Addr (for logs and tables).
func (p *Packet) SrcAddr() netip.Addr { return netip.AddrFrom4(p.Src) }
func (p *Packet) DstAddr() netip.Addr { return netip.AddrFrom4(p.Dst) }

// ipID returns the IPv4 identification, which ties fragments together.
func (p *Packet) ipID() uint16 { return binary.BigEndian.Uint16(p.Buf[4:6]) }

// isICMPQuery reports whether an ICMP type is an echo request or reply, the
// query messages whose identifier the NAT maps (RFC 5508 section 3.1).
func isICMPQuery(t header.ICMPv4Type) bool {
	return t == header.ICMPv4Echo || t == header.ICMPv4EchoReply
}

// isICMPError reports whether an ICMP type is an error message that embeds
// the offending packet's header (RFC 5508 section 4).
func isICMPError(t header.ICMPv4Type) bool {
	switch t {
	case header.ICMPv4DstUnreachable, header.ICMPv4SrcQuench, header.ICMPv4Redirect,
		header.ICMPv4TimeExceeded, header.ICMPv4ParamProblem:
		return true
	}
	return false
}
