package offload

import (
	"cmp"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// craftedPacket describes one unfragmented IPv4 packet for the split and
// checksum tests.
type craftedPacket struct {
	src, dst netip.Addr
	proto    uint8
	srcPort  uint16
	dstPort  uint16
	tcpFlags header.TCPFlags // SYN when zero
	seq      uint32
	id       uint16 // 7 when zero
	payload  []byte
}

// craftIPv4 builds the packet with testpacket, every checksum valid,
// starting at the IPv4 header.
func craftIPv4(t testing.TB, p craftedPacket) []byte {
	t.Helper()
	src, dst := netip.AddrPortFrom(p.src, p.srcPort), netip.AddrPortFrom(p.dst, p.dstPort)
	l4 := p.payload
	switch p.proto {
	case uint8(header.UDPProtocolNumber):
		l4 = testpacket.UDP(src, dst, p.payload)
	case uint8(header.TCPProtocolNumber):
		l4 = testpacket.TCP(testpacket.TCPHeader{Src: src, Dst: dst, Seq: p.seq, Ack: 1,
			Flags: cmp.Or(p.tcpFlags, header.TCPFlagSyn), Window: 1024}, p.payload)
	}
	return testpacket.IPv4(testpacket.IPv4Header{Src: p.src, Dst: p.dst, Proto: p.proto, ID: cmp.Or(p.id, 7)}, l4)
}
