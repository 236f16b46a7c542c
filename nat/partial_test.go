package nat

import (
	"net/netip"

	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// partialPkt is a TCP segment as a GSO super-packet arrives with virtio-net
// NEEDS_CSUM: its checksum field holds only the folded pseudo-header sum.
func partialPkt(src, dst [4]byte, sport, dport uint16, payload int) []byte {
	b := tcpDataPkt(ap(addrOf(src), sport), ap(addrOf(dst), dport), header.TCPFlagAck, string(make([]byte, payload)))
	ip := header.IPv4(b)
	tcp := header.TCP(b[ip.HeaderLength():])
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp))))
	return b
}

// completeOffload does what checksum offload does with a NEEDS_CSUM packet:
// sums the transport header and payload onto the field and complements.
func completeOffload(b []byte) {
	ip := header.IPv4(b)
	tcp := header.TCP(b[ip.HeaderLength():])
	tcp.SetChecksum(^checksum.Checksum(tcp, 0))
}

func TestPartialChecksum(t *testing.T) {
	t.Run("a partial checksum stays a correct pseudo-header sum through masquerade both ways", func(t *testing.T) {
		l := newLab(t, Config{})
		out := mustParse(t, partialPkt(lanA.As4(), remote1.As4(), 40000, 443, 3000))
		out.PartialChecksum = true
		if r := l.e.Outbound(out); r.Verdict != VerdictToWAN {
			t.Fatalf("outbound %v", r)
		}
		completeOffload(out.Buf)
		if err := validatePacket(out.Buf); err != nil {
			t.Fatalf("outbound after offload: %v", err)
		}
		in := mustParse(t, partialPkt(remote1.As4(), wanAddr.As4(), 443, out.SrcPort, 3000))
		in.PartialChecksum = true
		if r := l.e.Inbound(in); r.Verdict != VerdictToLAN {
			t.Fatalf("inbound %v", r)
		}
		completeOffload(in.Buf)
		if err := validatePacket(in.Buf); err != nil {
			t.Fatalf("inbound after offload: %v", err)
		}
		if in.DstAddr() != lanA || in.DstPort != 40000 {
			t.Errorf("delivered to %v:%d", in.DstAddr(), in.DstPort)
		}
	})
	t.Run("a partial checksum changed to a new port keeps the pseudo-header sum", func(t *testing.T) {
		l := newLab(t, Config{})
		// Port 30 is outside the range: the mapping takes another port.
		p := mustParse(t, partialPkt(lanA.As4(), remote1.As4(), 30, 443, 100))
		p.PartialChecksum = true
		l.e.Outbound(p)
		if p.SrcPort == 30 {
			t.Fatal("port kept; the test needs a port change")
		}
		ip := header.IPv4(p.Buf)
		want := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(p.L4)))
		if got := header.TCP(p.L4).Checksum(); got != want {
			t.Errorf("field %#04x, want the pseudo-header sum %#04x", got, want)
		}
	})
}

func addrOf(a [4]byte) netip.Addr { return netip.AddrFrom4(a) }
