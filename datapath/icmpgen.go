package datapath

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
)

// maxICMPErrorLen caps a generated ICMP error at the size every IPv4 host
// must accept (RFC 1812 section 4.3.2.3: as much of the original as fits in
// 576 bytes).
const maxICMPErrorLen = header.IPv4MinimumProcessableDatagramSize

// mayAnswerWithError reports whether an ICMP error may be sent about p
// (RFC 1812 section 4.3.2.7): never about an ICMP error, a non-first
// fragment, or a packet from a martian source.
func mayAnswerWithError(p *nat.Packet) bool {
	if p.FragOffset != 0 || isMartian(p.Src) {
		return false
	}
	if p.Proto == nat.ProtoICMP {
		switch p.ICMPType {
		case header.ICMPv4Echo, header.ICMPv4EchoReply, header.ICMPv4Timestamp,
			header.ICMPv4TimestampReply, header.ICMPv4InfoRequest, header.ICMPv4InfoReply:
		default:
			return false
		}
	}
	return true
}

// buildICMPError writes into dst an ICMP error from src to the sender of
// orig (the original packet's bytes from its IP header on), quoting as much
// of orig as fits in 576 bytes. mtu is the next-hop MTU for Fragmentation
// Needed and zero otherwise. It returns the packet's length.
func buildICMPError(dst []byte, src [4]byte, orig []byte, typ header.ICMPv4Type, code header.ICMPv4Code, mtu uint16) int {
	origIP := header.IPv4(orig)
	quote := len(orig)
	if max := maxICMPErrorLen - header.IPv4MinimumSize - header.ICMPv4MinimumSize; quote > max {
		quote = max
	}
	total := header.IPv4MinimumSize + header.ICMPv4MinimumSize + quote
	ip := header.IPv4(dst[:total])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(total),
		TTL:         64,
		Protocol:    uint8(header.ICMPv4ProtocolNumber),
		SrcAddr:     tcpip.AddrFrom4(src),
		DstAddr:     origIP.SourceAddress(),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	icmp := header.ICMPv4(dst[header.IPv4MinimumSize:total])
	clear(icmp[:header.ICMPv4MinimumSize])
	icmp.SetType(typ)
	icmp.SetCode(code)
	if mtu != 0 {
		icmp.SetMTU(mtu)
	}
	copy(icmp[header.ICMPv4MinimumSize:], orig[:quote])
	icmp.SetChecksum(^checksum.Checksum(icmp, 0))
	return total
}

// answerLAN sends an ICMP error about pk back to the LAN host that sent it,
// from the router's address on that host's network.
func (p *Path) answerLAN(pk *nat.Packet, o *outbox, typ header.ICMPv4Type, code header.ICMPv4Code, mtu uint16) {
	if !mayAnswerWithError(pk) || !p.icmpAllowed(pk.Src) {
		return
	}
	buf := o.newBuffer()
	if buf == nil {
		return
	}
	n := buildICMPError(buf[Headroom:], p.lanAddrFor(pk.Src), pk.Buf, typ, code, mtu)
	p.stats.ICMPErrorsSent.Add(1)
	o.toLAN(buf, n)
}

// lanAddrFor picks the router's address on the network of a LAN host.
func (p *Path) lanAddrFor(host [4]byte) [4]byte {
	h := netip.AddrFrom4(host)
	for _, a := range p.lanAddrs {
		if a.Contains(h) {
			return a.Addr().As4()
		}
	}
	if len(p.lanAddrs) > 0 {
		return p.lanAddrs[0].Addr().As4()
	}
	return p.wan()
}

// expiredFromWAN answers a packet from the WAN whose TTL would run out on
// the way to the LAN.
func (p *Path) expiredFromWAN(orig []byte, o *outbox) {
	var q nat.Packet
	if q.Parse(orig) != nat.DropNone || !mayAnswerWithError(&q) || !p.icmpAllowed(q.Src) {
		return
	}
	buf := o.newBuffer()
	if buf == nil {
		return
	}
	n := buildICMPError(buf[Headroom:], p.wan(), orig, header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded, 0)
	p.stats.ICMPErrorsSent.Add(1)
	o.toWAN(buf, n)
}

// icmpAllowed asks the rate limiter whether an ICMP error may go to dst,
// counting the ones it suppresses. A path without a limiter (some tests)
// sends every error.
func (p *Path) icmpAllowed(dst [4]byte) bool {
	if p.icmp == nil {
		return true
	}
	if p.icmp.allow(dst, p.now()) {
		return true
	}
	p.stats.ICMPErrorsSuppressed.Add(1)
	return false
}
