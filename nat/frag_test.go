package nat

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

var bigPayload = strings.Repeat("fragmented payload 0123456789 ", 20)

func bigUDP(src, dst netip.AddrPort, id uint16) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: ProtoUDP, ID: id},
		testpacket.UDP(src, dst, []byte(bigPayload)))
}

func bigTCP(src, dst netip.AddrPort, id uint16) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: ProtoTCP, ID: id},
		tcpSegment(src, dst, ack|header.TCPFlagPsh, 2, []byte(bigPayload)))
}

func bigEcho(src, dst netip.Addr, ident uint16) []byte {
	rest := [4]byte{byte(ident >> 8), byte(ident), 0, 1}
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoICMP, ID: 0x0707},
		testpacket.ICMP(header.ICMPv4Echo, 0, rest, []byte(bigPayload)))
}

func TestFragments(t *testing.T) {
	outbound := []struct {
		name string
		pkt  []byte
	}{
		{"udp", bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0xabcd)},
		{"tcp", bigTCP(ap(lanA, 40000), ap(remote1, 443), 0xabce)},
		{"icmp echo", bigEcho(lanA, remote1, 77)},
	}
	for _, tc := range outbound {
		t.Run("non-first fragment follows its first fragment's translation: outbound "+tc.name, func(t *testing.T) {
			l := newLab(t, Config{})
			first, tail := fragmentAt(tc.pkt, 32)
			p1 := l.mustOut(first, VerdictToWAN)
			p2 := l.mustOut(tail, VerdictToWAN)
			if p1.SrcAddr() != wanAddr || p2.SrcAddr() != wanAddr || p2.DstAddr() != remote1 {
				t.Fatalf("fragments left from %v and %v→%v", p1.SrcAddr(), p2.SrcAddr(), p2.DstAddr())
			}
			whole, err := reassemble(p2.Buf, p1.Buf)
			if err != nil {
				t.Fatal(err)
			}
			// The transport checksum covers the whole datagram; it was
			// updated on the first fragment alone and must still be valid.
			if err := validatePacket(whole); err != nil {
				t.Fatalf("reassembled datagram: %v", err)
			}
		})
	}
	t.Run("non-first fragment follows its first fragment's translation: inbound udp reply", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "hello"), VerdictToWAN).SrcPort
		first, tail := fragmentAt(bigUDP(ap(remote1, 4500), ap(wanAddr, ext), 0x5555), 64)
		p1 := l.mustIn(first, VerdictToLAN)
		p2 := l.mustIn(tail, VerdictToLAN)
		if dstAP(p1) != ap(lanA, 5000) || p2.DstAddr() != lanA {
			t.Fatalf("fragments reached %v and %v", dstAP(p1), p2.DstAddr())
		}
		whole, err := reassemble(p1.Buf, p2.Buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := validatePacket(whole); err != nil {
			t.Fatalf("reassembled datagram: %v", err)
		}
	})
	t.Run("hairpinned fragments reach the other lan host", func(t *testing.T) {
		l := newLab(t, Config{UDPFiltering: EndpointIndependentFiltering})
		extB := l.mustOut(udpPkt(ap(lanB, 6000), ap(remote1, 3478), "stun"), VerdictToWAN).SrcPort
		first, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(wanAddr, extB), 0x6666), 48)
		p1 := l.mustOut(first, VerdictToLAN)
		p2 := l.mustOut(tail, VerdictToLAN)
		if p2.SrcAddr() != wanAddr || p2.DstAddr() != lanB {
			t.Fatalf("tail %v→%v", p2.SrcAddr(), p2.DstAddr())
		}
		whole, err := reassemble(p1.Buf, p2.Buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := validatePacket(whole); err != nil {
			t.Fatalf("reassembled datagram: %v", err)
		}
	})
	t.Run("a fragment of another datagram does not follow", func(t *testing.T) {
		l := newLab(t, Config{})
		first, _ := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 1), 32)
		_, other := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 2), 32)
		l.mustOut(first, VerdictToWAN)
		l.mustOut(other, VerdictHeld) // waits for its own first fragment
		if got := l.take(true); len(got) != 0 {
			t.Fatalf("released %d fragments", len(got))
		}
	})
	t.Run("fragments of a dropped first fragment are never delivered", func(t *testing.T) {
		l := newLab(t, Config{})
		first, tail := fragmentAt(bigUDP(ap(remote1, 4500), ap(wanAddr, 20000), 0x4444), 32)
		r, _ := l.in(first)
		wantDrop(t, r, DropUnsolicited)
		l.mustIn(tail, VerdictHeld)
		l.advance(fragHoldDuration)
		if n := l.e.Drops.Get(DropFragmentExpired); n != 1 || len(l.take(false)) != 0 {
			t.Fatalf("fragment_expired %d, want the tail dropped", n)
		}
	})
	t.Run("fragment state is forgotten after 30 s", func(t *testing.T) {
		l := newLab(t, Config{UDPFiltering: EndpointIndependentFiltering})
		first, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x3333), 32)
		ext := l.mustOut(first, VerdictToWAN).SrcPort
		firstIn, tailIn := fragmentAt(bigUDP(ap(remote2, 4500), ap(wanAddr, ext), 0x3333), 32)
		l.mustIn(firstIn, VerdictToLAN)
		l.advance(30*time.Second - time.Nanosecond)
		before, _ := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x3334), 32)
		l.mustOut(before, VerdictToWAN) // keeps the mapping alive; a different datagram
		l.advance(time.Nanosecond)
		// Unknown again: held for a first fragment that does not come.
		l.mustOut(tail, VerdictHeld)
		l.mustIn(tailIn, VerdictHeld)
		l.advance(fragHoldDuration)
		if n := l.e.Drops.Get(DropFragmentExpired); n != 2 || len(l.take(true))+len(l.take(false)) != 0 {
			t.Fatalf("fragment_expired %d, want both tails dropped", n)
		}
	})
	t.Run("a first fragment whose udp length exceeds it is accepted", func(t *testing.T) {
		var p Packet
		first, _ := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 9), 32)
		if r := p.Parse(first); r != DropNone || !p.MoreFragments || p.SrcPort != 5000 {
			t.Errorf("Parse = %v, more %v, port %d", r, p.MoreFragments, p.SrcPort)
		}
	})
}
