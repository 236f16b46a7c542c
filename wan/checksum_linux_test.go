package wan

import (
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
)

// l4ChecksumValid checks a TCP or UDP packet's transport checksum.
func l4ChecksumValid(pkt []byte) bool {
	ip := header.IPv4(pkt)
	l4 := ip.Payload()
	switch ip.Protocol() {
	case nat.ProtoTCP:
		tcp := header.TCP(l4)
		payload := l4[tcp.DataOffset():]
		return tcp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(payload, 0), uint16(len(payload)))
	case nat.ProtoUDP:
		udp := header.UDP(l4)
		return udp.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(udp.Payload(), 0))
	}
	return false
}
