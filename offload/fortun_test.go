package offload

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
	"github.com/vpnmasq/vpnmasq/nat"
)

func TestForTUN(t *testing.T) {
	src, dst := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.1")
	vnet := func(flags, gso uint8, size int) Header {
		return Header{Flags: flags, GSOType: gso, GSOSize: uint16(size), CsumStart: 14 + 20}
	}
	for _, tc := range []struct {
		name  string
		proto uint8
		dport uint16
		h     Header
		udp   bool // the TUN has UDP segmentation offload
		want  bool
	}{
		{"a TCP super-packet left to checksum offload stays whole", nat.ProtoTCP, 443, vnet(FlagNeedsChecksum, GSOTCPv4, 1448), false, true},
		{"a GRO super-packet with a verified checksum stays whole", nat.ProtoTCP, 443, vnet(FlagDataValid, GSOTCPv4, 1448), false, true},
		{"a super-packet with ECN marks is split (the TUN takes no TSO_ECN)", nat.ProtoTCP, 443, vnet(FlagNeedsChecksum, GSOTCPv4|GSOECN, 1448), false, false},
		{"PPTP control is split", nat.ProtoTCP, nat.PortPPTP, vnet(FlagNeedsChecksum, GSOTCPv4, 1448), false, false},
		{"a super-packet with an unverified checksum is split", nat.ProtoTCP, 443, vnet(0, GSOTCPv4, 1448), false, false},
		{"an ordinary packet is not a super-packet", nat.ProtoTCP, 443, vnet(FlagNeedsChecksum, GSONone, 0), false, false},
		{"a UDP GRO super-packet stays whole for a TUN with UDP offload", nat.ProtoUDP, 51820, vnet(FlagDataValid, GSOUDPL4, 1400), true, true},
		{"a UDP super-packet is split for a TUN without UDP offload", nat.ProtoUDP, 51820, vnet(FlagDataValid, GSOUDPL4, 1400), false, false},
		{"IKE on UDP 500 is split (each message is classified)", nat.ProtoUDP, nat.PortIKE, vnet(FlagDataValid, GSOUDPL4, 1400), true, false},
		{"NAT-T on UDP 4500 is split (each payload is classified)", nat.ProtoUDP, nat.PortNATT, vnet(FlagDataValid, GSOUDPL4, 1400), true, false},
		{"a TCP segmentation type on a UDP packet is split", nat.ProtoUDP, 51820, vnet(FlagDataValid, GSOTCPv4, 1400), true, false},
		{"UDP segmentation on a TCP packet is split", nat.ProtoTCP, 443, vnet(FlagDataValid, GSOUDPL4, 1400), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt := testpacket.Build(testpacket.Spec{Src: src, Dst: dst, Proto: tc.proto, SrcPort: 80, DstPort: tc.dport,
				TCPFlags: header.TCPFlagAck, Payload: testPayload(5000)})
			csumOffset, l4Len := uint16(header.TCPChecksumOffset), 20
			if tc.proto == nat.ProtoUDP {
				csumOffset, l4Len = UDPChecksumOffset, 8
			}
			pkt[20+int(csumOffset)], pkt[21+int(csumOffset)] = 0x12, 0x34 // whatever GRO left there
			h, ok := ForTUN(pkt, tc.h, tc.udp)
			if ok != tc.want {
				t.Fatalf("ForTUN = %v", ok)
			}
			if !tc.want {
				return
			}
			if h.GSOType != tc.h.GSOType || h.CsumStart != 20 || h.CsumOffset != csumOffset || h.GSOSize != tc.h.GSOSize ||
				int(h.HdrLen) != 20+l4Len || !h.NeedsChecksum() {
				t.Errorf("TUN header %+v", h)
			}
			if !testpacket.PartialChecksumCompletes(pkt) {
				t.Error("checksum field is not the pseudo-header sum")
			}
		})
	}
	t.Run("a UDP super-packet whose length field is not the whole datagram is split", func(t *testing.T) {
		pkt := testpacket.Build(testpacket.Spec{Src: src, Dst: dst, Proto: nat.ProtoUDP, SrcPort: 80, DstPort: 51820, Payload: testPayload(5000)})
		header.UDP(pkt[20:]).SetLength(1408)
		if _, ok := ForTUN(pkt, vnet(FlagDataValid, GSOUDPL4, 1400), true); ok {
			t.Fatal("kept whole")
		}
	})
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	h := Header{Flags: FlagNeedsChecksum, GSOType: GSOTCPv4 | GSOECN, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	var b [HeaderLen]byte
	h.Encode(b[:])
	if got := Decode(b[:]); got != h {
		t.Fatalf("decoded %+v from %+v", got, h)
	}
}

func TestForLinkCountsFromTheLinkHeader(t *testing.T) {
	t.Run("UDP: the header is 8 bytes", func(t *testing.T) {
		pkt := testpacket.Build(testpacket.Spec{Src: netip.MustParseAddr("192.168.1.2"), Dst: netip.MustParseAddr("198.18.0.2"),
			Proto: nat.ProtoUDP, SrcPort: 40000, DstPort: 51820, Payload: testPayload(3000)})
		tun := Header{Flags: FlagNeedsChecksum, GSOType: GSOUDPL4, HdrLen: 28, GSOSize: 1400, CsumStart: 20, CsumOffset: UDPChecksumOffset}
		got := ForLink(pkt, tun, 14)
		want := Header{Flags: FlagNeedsChecksum, GSOType: GSOUDPL4, HdrLen: 42, GSOSize: 1400, CsumStart: 34, CsumOffset: UDPChecksumOffset}
		if got != want {
			t.Fatalf("got %+v, want %+v", got, want)
		}
	})

	pkt := testpacket.Build(testpacket.Spec{Src: netip.MustParseAddr("192.168.1.2"), Dst: netip.MustParseAddr("198.18.0.2"),
		Proto: nat.ProtoTCP, SrcPort: 40000, DstPort: 443, TCPFlags: header.TCPFlagAck, Payload: testPayload(3000)})
	tun := Header{Flags: FlagNeedsChecksum, GSOType: GSOTCPv4, HdrLen: 40, GSOSize: 1448, CsumStart: 20, CsumOffset: header.TCPChecksumOffset}
	got := ForLink(pkt, tun, 14)
	want := Header{Flags: FlagNeedsChecksum, GSOType: GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: header.TCPChecksumOffset}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}
