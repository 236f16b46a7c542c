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
		return Header{Flags: flags, GSOType: gso, GSOSize: uint16(size), CsumStart: 14 + 20, CsumOffset: header.TCPChecksumOffset}
	}
	for _, tc := range []struct {
		name  string
		dport uint16
		h     Header
		want  bool
	}{
		{"a TCP super-packet left to checksum offload stays whole", 443, vnet(FlagNeedsChecksum, GSOTCPv4, 1448), true},
		{"a GRO super-packet with a verified checksum stays whole", 443, vnet(FlagDataValid, GSOTCPv4, 1448), true},
		{"a super-packet with ECN marks is split (the TUN takes no TSO_ECN)", 443, vnet(FlagNeedsChecksum, GSOTCPv4|GSOECN, 1448), false},
		{"PPTP control is split", nat.PortPPTP, vnet(FlagNeedsChecksum, GSOTCPv4, 1448), false},
		{"a super-packet with an unverified checksum is split", 443, vnet(0, GSOTCPv4, 1448), false},
		{"an ordinary packet is not a super-packet", 443, vnet(FlagNeedsChecksum, GSONone, 0), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pkt := testpacket.Build(testpacket.Spec{Src: src, Dst: dst, Proto: nat.ProtoTCP, SrcPort: 80, DstPort: tc.dport,
				TCPFlags: header.TCPFlagAck, Payload: testPayload(5000)})
			header.TCP(pkt[20:]).SetChecksum(0x1234) // whatever GRO left there
			h, ok := ForTUN(pkt, tc.h)
			if ok != tc.want {
				t.Fatalf("ForTUN = %v", ok)
			}
			if !tc.want {
				return
			}
			if h.CsumStart != 20 || h.CsumOffset != header.TCPChecksumOffset || h.GSOSize != 1448 || h.HdrLen != 40 || !h.NeedsChecksum() {
				t.Errorf("TUN header %+v", h)
			}
			if !testpacket.PartialChecksumCompletes(pkt) {
				t.Error("checksum field is not the pseudo-header sum")
			}
		})
	}
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
	pkt := testpacket.Build(testpacket.Spec{Src: netip.MustParseAddr("192.168.1.2"), Dst: netip.MustParseAddr("198.18.0.2"),
		Proto: nat.ProtoTCP, SrcPort: 40000, DstPort: 443, TCPFlags: header.TCPFlagAck, Payload: testPayload(3000)})
	tun := Header{Flags: FlagNeedsChecksum, GSOType: GSOTCPv4, HdrLen: 40, GSOSize: 1448, CsumStart: 20, CsumOffset: header.TCPChecksumOffset}
	got := ForLink(pkt, tun, 14)
	want := Header{Flags: FlagNeedsChecksum, GSOType: GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: header.TCPChecksumOffset}
	if got != want {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}
