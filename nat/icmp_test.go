package nat

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

func TestICMPEcho(t *testing.T) {
	t.Run("icmp echo identifier mapped and reply translated back", func(t *testing.T) {
		l := newLab(t, Config{})
		p := l.mustOut(echoPkt(header.ICMPv4Echo, lanA, remote1, 0x1234, 7), VerdictToWAN)
		if p.SrcAddr() != wanAddr || p.DstAddr() != remote1 {
			t.Fatalf("echo left %v→%v", p.SrcAddr(), p.DstAddr())
		}
		ext := header.ICMPv4(p.L4).Ident()
		if ext != p.SrcPort {
			t.Fatalf("identifier %d in the bytes, %d cached", ext, p.SrcPort)
		}
		r := l.mustIn(echoPkt(header.ICMPv4EchoReply, remote1, wanAddr, ext, 7), VerdictToLAN)
		if r.DstAddr() != lanA || header.ICMPv4(r.L4).Ident() != 0x1234 || header.ICMPv4(r.L4).Sequence() != 7 {
			t.Errorf("reply to %v ident %#x seq %d, want %v ident 0x1234 seq 7",
				r.DstAddr(), header.ICMPv4(r.L4).Ident(), header.ICMPv4(r.L4).Sequence(), lanA)
		}
	})
	t.Run("two lan hosts with the same identifier get distinct ones", func(t *testing.T) {
		l := newLab(t, Config{})
		a := l.mustOut(echoPkt(header.ICMPv4Echo, lanA, remote1, 99, 1), VerdictToWAN)
		b := l.mustOut(echoPkt(header.ICMPv4Echo, lanB, remote1, 99, 1), VerdictToWAN)
		if a.SrcPort == b.SrcPort {
			t.Fatalf("both hosts share identifier %d", a.SrcPort)
		}
		ra := l.mustIn(echoPkt(header.ICMPv4EchoReply, remote1, wanAddr, a.SrcPort, 1), VerdictToLAN)
		rb := l.mustIn(echoPkt(header.ICMPv4EchoReply, remote1, wanAddr, b.SrcPort, 1), VerdictToLAN)
		if ra.DstAddr() != lanA || rb.DstAddr() != lanB || ra.DstPort != 99 || rb.DstPort != 99 {
			t.Errorf("replies reached %v/%d and %v/%d", ra.DstAddr(), ra.DstPort, rb.DstAddr(), rb.DstPort)
		}
	})
	t.Run("one identifier for every remote", func(t *testing.T) {
		l := newLab(t, Config{})
		a := l.mustOut(echoPkt(header.ICMPv4Echo, lanA, remote1, 5, 1), VerdictToWAN)
		b := l.mustOut(echoPkt(header.ICMPv4Echo, lanA, remote2, 5, 1), VerdictToWAN)
		if a.SrcPort != b.SrcPort {
			t.Errorf("identifiers %d and %d", a.SrcPort, b.SrcPort)
		}
	})
	t.Run("icmp echo mapping expires after 60 s", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(echoPkt(header.ICMPv4Echo, lanA, remote1, 5, 1), VerdictToWAN).SrcPort
		l.advance(60*time.Second - time.Nanosecond)
		l.mustIn(echoPkt(header.ICMPv4EchoReply, remote1, wanAddr, ext, 1), VerdictToLAN)
		l.advance(60 * time.Second)
		if _, ok := l.mapping("icmp", ap(lanA, 5)); ok {
			t.Fatal("echo mapping outlived 60 s")
		}
		// With the mapping gone the reply is no longer the LAN host's.
		r, _ := l.in(echoPkt(header.ICMPv4EchoReply, remote1, wanAddr, ext, 1))
		if r.Verdict == VerdictToLAN {
			t.Error("late reply still translated")
		}
	})
	t.Run("echo reply from a host that was not pinged is dropped", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(echoPkt(header.ICMPv4Echo, lanA, remote1, 5, 1), VerdictToWAN).SrcPort
		r, _ := l.in(echoPkt(header.ICMPv4EchoReply, remote2, wanAddr, ext, 1))
		wantDrop(t, r, DropUnsolicited)
	})
	t.Run("echo reply with an unknown identifier goes to the host", func(t *testing.T) {
		l := newLab(t, Config{})
		r, _ := l.in(echoPkt(header.ICMPv4EchoReply, remote1, wanAddr, 4242, 1))
		if r.Verdict != VerdictHost {
			t.Errorf("verdict %s", verdictName(r.Verdict))
		}
	})
	t.Run("echo request to the wan address goes to the host untouched", func(t *testing.T) {
		l := newLab(t, Config{})
		b := echoPkt(header.ICMPv4Echo, remote1, wanAddr, 1, 1)
		orig := append([]byte(nil), b...)
		r, _ := l.in(b)
		if r.Verdict != VerdictHost || string(b) != string(orig) {
			t.Errorf("verdict %s, packet changed %v", verdictName(r.Verdict), string(b) != string(orig))
		}
	})
	t.Run("icmp queries other than echo are not masqueraded", func(t *testing.T) {
		l := newLab(t, Config{})
		b := testpacket.IPv4(testpacket.IPv4Header{Src: lanA, Dst: remote1, Proto: ProtoICMP},
			testpacket.ICMP(header.ICMPv4Timestamp, 0, [4]byte{0, 1, 0, 1}, make([]byte, 12)))
		r, _ := l.out(b)
		wantDrop(t, r, DropUnsupported)
	})
}
