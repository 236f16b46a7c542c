package nat

import (
	"encoding/binary"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// espBody is an ESP header (SPI, sequence) and a few payload bytes.
func espBody(spi, seq uint32) []byte {
	b := make([]byte, 24)
	binary.BigEndian.PutUint32(b[0:4], spi)
	binary.BigEndian.PutUint32(b[4:8], seq)
	return b
}

func TestICMPErrorsAboutIPsecReachTheLANHost(t *testing.T) {
	t.Run("fragmentation needed about outbound ESP reaches the host that owns the SPI", func(t *testing.T) {
		l := newLab(t, Config{})
		sent := l.mustOut(testpacket.IPv4(testpacket.IPv4Header{Src: lanA, Dst: remote1, Proto: ProtoESP}, espBody(0x1111, 1)), VerdictToWAN)
		quoted := append([]byte(nil), sent.Buf...)
		// The remote's side answers: frag needed, quoting the ESP packet
		// as it left the router (from the WAN address).
		errPkt := icmpErrPkt(remote1, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, quoted, 28)
		p := l.mustIn(errPkt, VerdictToLAN)
		if p.DstAddr() != lanA {
			t.Fatalf("delivered to %v, want %v", p.DstAddr(), lanA)
		}
		inner := header.IPv4(header.ICMPv4(p.L4)[header.ICMPv4MinimumSize:])
		if got := inner.SourceAddress().As4(); got != lanA.As4() {
			t.Errorf("embedded source %v, want the LAN host", inner.SourceAddress())
		}
	})
	t.Run("an error about NAT-T on 4500 reaches the host that owns the flow", func(t *testing.T) {
		l := newLab(t, Config{})
		keepalive := "\xff"
		sent := l.mustOut(udpPkt(ap(lanA, PortNATT), ap(remote1, PortNATT), keepalive), VerdictToWAN)
		p := l.mustIn(portUnreachable(remote1, wanAddr, append([]byte(nil), sent.Buf...)), VerdictToLAN)
		if p.DstAddr() != lanA {
			t.Fatalf("delivered to %v, want %v", p.DstAddr(), lanA)
		}
	})
	t.Run("an error about ESP nobody sent goes to the host's own stack", func(t *testing.T) {
		l := newLab(t, Config{})
		orig := testpacket.IPv4(testpacket.IPv4Header{Src: wanAddr, Dst: remote1, Proto: ProtoESP}, espBody(0x2222, 1))
		r, _ := l.in(icmpErrPkt(remote1, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, orig, 28))
		if r.Verdict != VerdictHost {
			t.Errorf("verdict %s, want host", verdictName(r.Verdict))
		}
	})
}
