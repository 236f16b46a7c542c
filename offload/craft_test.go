package offload

import (
	"cmp"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// craftedPacket describes one IPv4 packet for filter and socket tests.
type craftedPacket struct {
	src, dst   netip.Addr
	proto      uint8
	srcPort    uint16
	dstPort    uint16
	fragOffset uint16 // in bytes, multiple of 8
	moreFrags  bool
	tcpFlags   header.TCPFlags // SYN when zero
	seq        uint32
	id         uint16 // 7 when zero
	options    header.IPv4OptionsSerializer
	payload    []byte
}

// craftIPv4 builds the packet with gVisor's header encoders and valid
// checksums, starting at the IPv4 header.
func craftIPv4(t testing.TB, p craftedPacket) []byte {
	t.Helper()
	var l4 []byte
	switch p.proto {
	case uint8(header.UDPProtocolNumber):
		l4 = make([]byte, header.UDPMinimumSize+len(p.payload))
		u := header.UDP(l4)
		u.Encode(&header.UDPFields{SrcPort: p.srcPort, DstPort: p.dstPort, Length: uint16(len(l4))})
		copy(l4[header.UDPMinimumSize:], p.payload)
		xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, tcpip.AddrFrom4(p.src.As4()), tcpip.AddrFrom4(p.dst.As4()), uint16(len(l4)))
		xsum = checksum.Checksum(p.payload, xsum)
		u.SetChecksum(^u.CalculateChecksum(xsum))
	case uint8(header.TCPProtocolNumber):
		l4 = make([]byte, header.TCPMinimumSize+len(p.payload))
		tcp := header.TCP(l4)
		flags := p.tcpFlags
		if flags == 0 {
			flags = header.TCPFlagSyn
		}
		tcp.Encode(&header.TCPFields{SrcPort: p.srcPort, DstPort: p.dstPort, SeqNum: p.seq, AckNum: 1, DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 1024})
		copy(l4[header.TCPMinimumSize:], p.payload)
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpip.AddrFrom4(p.src.As4()), tcpip.AddrFrom4(p.dst.As4()), uint16(len(l4)))
		xsum = checksum.Checksum(p.payload, xsum)
		tcp.SetChecksum(^tcp.CalculateChecksum(xsum))
	default:
		l4 = append([]byte(nil), p.payload...)
	}
	hdrLen := header.IPv4MinimumSize + int(p.options.Length())
	pkt := make([]byte, hdrLen+len(l4))
	ip := header.IPv4(pkt)
	var flags uint8
	if p.moreFrags {
		flags = header.IPv4FlagMoreFragments
	}
	ip.Encode(&header.IPv4Fields{
		TotalLength:    uint16(len(pkt)),
		ID:             cmp.Or(p.id, 7),
		Flags:          flags,
		FragmentOffset: p.fragOffset,
		TTL:            64,
		Protocol:       p.proto,
		SrcAddr:        tcpip.AddrFrom4(p.src.As4()),
		DstAddr:        tcpip.AddrFrom4(p.dst.As4()),
		Options:        p.options,
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	copy(pkt[hdrLen:], l4)
	if p.fragOffset != 0 {
		// A non-first fragment carries payload bytes where the transport
		// header would be; make them look like an out-of-range port so only
		// the fragment rule can accept it.
		pkt[hdrLen+2], pkt[hdrLen+3] = 0, 1
	}
	return pkt
}
