package nat

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

func TestParseAcceptsWellFormedPackets(t *testing.T) {
	udp := udpPkt(ap(lanA, 5000), ap(remote1, 53), "query")
	first, tail := fragmentAt(udpPkt(ap(lanA, 5000), ap(remote1, 53), "0123456789abcdef0123456789"), 16)
	tests := []struct {
		name     string
		pkt      []byte
		proto    uint8
		sp, dp   uint16
		flags    header.TCPFlags
		icmpType header.ICMPv4Type
		fragOff  uint16
		more     bool
		l4Len    int // -1: no transport view
	}{
		{name: "udp datagram", pkt: udp, proto: ProtoUDP, sp: 5000, dp: 53, l4Len: 8 + 5},
		{name: "tcp SYN", pkt: tcpPkt(ap(lanA, 40000), ap(remote1, 443), header.TCPFlagSyn),
			proto: ProtoTCP, sp: 40000, dp: 443, flags: header.TCPFlagSyn, l4Len: 20},
		{name: "tcp segment with options and data", pkt: tcpDataPkt(ap(lanA, 40000), ap(remote1, 443), header.TCPFlagAck|header.TCPFlagPsh, "hello"),
			proto: ProtoTCP, sp: 40000, dp: 443, flags: header.TCPFlagAck | header.TCPFlagPsh, l4Len: 24 + 5},
		{name: "icmp echo request carries its identifier as both ports", pkt: echoPkt(header.ICMPv4Echo, lanA, remote1, 0x1234, 1),
			proto: ProtoICMP, sp: 0x1234, dp: 0x1234, icmpType: header.ICMPv4Echo, l4Len: 8 + 23},
		{name: "icmp error has no ports", pkt: portUnreachable(remote1, wanAddr, udp),
			proto: ProtoICMP, icmpType: header.ICMPv4DstUnreachable, l4Len: 8 + len(udp)},
		{name: "ipv4 options move the transport header", pkt: testpacket.IPv4(testpacket.IPv4Header{Src: lanA, Dst: remote1, Proto: ProtoUDP, OptWords: 3},
			testpacket.UDP(ap(lanA, 7), ap(remote1, 9), []byte("x"))), proto: ProtoUDP, sp: 7, dp: 9, l4Len: 9},
		{name: "first fragment keeps its ports", pkt: first, proto: ProtoUDP, sp: 5000, dp: 53, more: true, l4Len: 16},
		{name: "non-first fragment has no transport view", pkt: tail, proto: ProtoUDP, fragOff: 16, l4Len: -1},
		{name: "unknown protocol is parsed at the ip layer", pkt: testpacket.IPv4(testpacket.IPv4Header{Src: lanA, Dst: remote1, Proto: ProtoGRE}, []byte{0, 0, 0x08, 0}),
			proto: ProtoGRE, l4Len: 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p Packet
			if r := p.Parse(tc.pkt); r != DropNone {
				t.Fatalf("Parse: %v", r)
			}
			if p.Proto != tc.proto || p.SrcPort != tc.sp || p.DstPort != tc.dp {
				t.Errorf("proto %d ports %d→%d, want %d %d→%d", p.Proto, p.SrcPort, p.DstPort, tc.proto, tc.sp, tc.dp)
			}
			if p.TCPFlags != tc.flags {
				t.Errorf("tcp flags %v, want %v", p.TCPFlags, tc.flags)
			}
			if p.Proto == ProtoICMP && p.ICMPType != tc.icmpType {
				t.Errorf("icmp type %d, want %d", p.ICMPType, tc.icmpType)
			}
			if p.FragOffset != tc.fragOff || p.MoreFragments != tc.more {
				t.Errorf("fragment offset %d more %v, want %d %v", p.FragOffset, p.MoreFragments, tc.fragOff, tc.more)
			}
			if p.IsFragment() != (tc.more || tc.fragOff != 0) {
				t.Errorf("IsFragment %v", p.IsFragment())
			}
			if tc.l4Len < 0 && p.L4 != nil || tc.l4Len >= 0 && len(p.L4) != tc.l4Len {
				t.Errorf("L4 length %d (nil %v), want %d", len(p.L4), p.L4 == nil, tc.l4Len)
			}
			ip := header.IPv4(tc.pkt)
			if p.SrcAddr() != netip.AddrFrom4(ip.SourceAddress().As4()) || p.DstAddr() != netip.AddrFrom4(ip.DestinationAddress().As4()) {
				t.Errorf("addresses %v→%v, bytes say %v→%v", p.SrcAddr(), p.DstAddr(), ip.SourceAddress(), ip.DestinationAddress())
			}
			if len(p.Buf) != len(tc.pkt) || len(p.IP) != len(tc.pkt) {
				t.Errorf("Buf %d IP %d bytes, want %d", len(p.Buf), len(p.IP), len(tc.pkt))
			}
			if err := checkCached(&p); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestParseCutsLinkPadding(t *testing.T) {
	pkt := udpPkt(ap(lanA, 5000), ap(remote1, 53), "q")
	padded := append(append([]byte(nil), pkt...), make([]byte, 18)...)
	var p Packet
	if r := p.Parse(padded); r != DropNone {
		t.Fatalf("Parse: %v", r)
	}
	if len(p.Buf) != len(pkt) || len(p.L4) != len(pkt)-header.IPv4MinimumSize {
		t.Errorf("Buf %d L4 %d, want %d %d", len(p.Buf), len(p.L4), len(pkt), len(pkt)-header.IPv4MinimumSize)
	}
}

func TestParseResetsThePacket(t *testing.T) {
	var p Packet
	mustParseInto(t, &p, tcpPkt(ap(lanA, 1), ap(remote1, 2), header.TCPFlagSyn))
	mustParseInto(t, &p, testpacket.IPv4(testpacket.IPv4Header{Src: lanA, Dst: remote1, Proto: ProtoESP}, make([]byte, 8)))
	if p.SrcPort != 0 || p.DstPort != 0 || p.TCPFlags != 0 {
		t.Errorf("fields of the previous packet survived: ports %d→%d flags %v", p.SrcPort, p.DstPort, p.TCPFlags)
	}
}

func mustParseInto(t *testing.T, p *Packet, b []byte) {
	t.Helper()
	if r := p.Parse(b); r != DropNone {
		t.Fatalf("Parse: %v", r)
	}
}

// corrupt returns a copy of b changed by f, with the IPv4 header checksum
// recomputed when fix is set (so that only the intended defect remains).
func corrupt(b []byte, fix bool, f func(b []byte)) []byte {
	c := append([]byte(nil), b...)
	f(c)
	if fix {
		ip := header.IPv4(c)
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
	}
	return c
}

func TestMalformedPacketsAreRejectedWithAReason(t *testing.T) {
	udp := udpPkt(ap(lanA, 5000), ap(remote1, 53), "query")
	tcp := tcpPkt(ap(lanA, 40000), ap(remote1, 443), header.TCPFlagSyn)
	echo := echoPkt(header.ICMPv4Echo, lanA, remote1, 1, 1)
	tests := []struct {
		name string
		pkt  []byte
		want DropReason
	}{
		{"empty buffer", nil, DropMalformed},
		{"truncated ipv4 header", udp[:19], DropMalformed},
		{"ipv6 version nibble", corrupt(udp, true, func(b []byte) { b[0] = 0x65 }), DropNotIPv4},
		{"bad IHL below 5 words", corrupt(udp, true, func(b []byte) { b[0] = 0x44 }), DropMalformed},
		{"IHL beyond the total length", corrupt(udp, true, func(b []byte) { b[0] = 0x46; header.IPv4(b).SetTotalLength(23) }), DropMalformed},
		{"total length larger than the buffer", corrupt(udp, true, func(b []byte) { header.IPv4(b).SetTotalLength(uint16(len(b) + 1)) }), DropMalformed},
		{"total length shorter than the header", corrupt(udp, true, func(b []byte) { header.IPv4(b).SetTotalLength(19) }), DropMalformed},
		{"bad ipv4 header checksum", corrupt(udp, false, func(b []byte) { b[8]-- }), DropBadChecksum},
		{"short udp header", corrupt(udp, true, func(b []byte) { header.IPv4(b).SetTotalLength(20 + 7) })[:27], DropMalformed},
		{"udp length below 8", corrupt(udp, false, func(b []byte) { header.UDP(b[20:]).SetLength(7) }), DropMalformed},
		{"udp length beyond the packet", corrupt(udp, false, func(b []byte) { header.UDP(b[20:]).SetLength(uint16(len(b))) }), DropMalformed},
		{"short tcp header", corrupt(tcp, true, func(b []byte) { header.IPv4(b).SetTotalLength(20 + 19) })[:39], DropMalformed},
		{"tcp data offset beyond the packet", corrupt(tcp, false, func(b []byte) { header.TCP(b[20:]).SetDataOffset(24) }), DropMalformed},
		{"tcp data offset below 20 bytes", corrupt(tcp, false, func(b []byte) { header.TCP(b[20:]).SetDataOffset(16) }), DropMalformed},
		{"short icmp header", corrupt(echo, true, func(b []byte) { header.IPv4(b).SetTotalLength(20 + 7) })[:27], DropMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var p Packet
			if got := p.Parse(tc.pkt); got != tc.want {
				t.Errorf("Parse = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDropReasons(t *testing.T) {
	t.Run("every reason has a distinct name", func(t *testing.T) {
		seen := map[string]DropReason{}
		for _, r := range AllDropReasons() {
			name := r.String()
			if name == "" || name == "unknown" || name == "none" {
				t.Errorf("reason %d has name %q", r, name)
			}
			if prev, dup := seen[name]; dup {
				t.Errorf("reasons %d and %d share the name %q", prev, r, name)
			}
			seen[name] = r
		}
		if DropNone.String() != "none" || DropReason(255).String() != "unknown" {
			t.Errorf("DropNone %q, 255 %q", DropNone.String(), DropReason(255).String())
		}
	})
	t.Run("AllDropReasons omits DropNone and lists each once in order", func(t *testing.T) {
		rs := AllDropReasons()
		for i, r := range rs {
			if r != DropReason(i+1) {
				t.Fatalf("position %d holds %v", i, r)
			}
		}
		if len(rs) != int(numDropReasons)-1 {
			t.Errorf("%d reasons, want %d", len(rs), numDropReasons-1)
		}
	})
	t.Run("counters count per reason and ignore out-of-range reasons", func(t *testing.T) {
		var c DropCounters
		c.Add(DropMalformed)
		c.Add(DropMalformed)
		c.Add(DropTableFull)
		c.Add(DropReason(250))
		if c.Get(DropMalformed) != 2 || c.Get(DropTableFull) != 1 || c.Get(DropNoPorts) != 0 || c.Get(DropReason(250)) != 0 {
			t.Errorf("malformed %d table_full %d no_ports %d", c.Get(DropMalformed), c.Get(DropTableFull), c.Get(DropNoPorts))
		}
	})
}
