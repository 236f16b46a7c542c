package nat

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

func TestUDPMapping(t *testing.T) {
	t.Run("outbound udp leaves from the wan address and the reply reaches the lan host", func(t *testing.T) {
		l := newLab(t, Config{})
		p := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "query"), VerdictToWAN)
		if p.SrcAddr() != wanAddr || dstAP(p) != ap(remote1, 53) {
			t.Fatalf("outbound %v→%v, want from %v to %v", srcAP(p), dstAP(p), wanAddr, ap(remote1, 53))
		}
		ext := p.SrcPort
		r := l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "answer"), VerdictToLAN)
		if srcAP(r) != ap(remote1, 53) || dstAP(r) != ap(lanA, 5000) {
			t.Errorf("reply %v→%v, want %v→%v", srcAP(r), dstAP(r), ap(remote1, 53), ap(lanA, 5000))
		}
		if string(header.UDP(r.L4).Payload()) != "answer" {
			t.Errorf("payload changed: %q", header.UDP(r.L4).Payload())
		}
	})
	t.Run("source port is kept when free and in range", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 30000}})
		p := l.mustOut(udpPkt(ap(lanA, 25001), ap(remote1, 53), "q"), VerdictToWAN)
		if p.SrcPort != 25001 {
			t.Errorf("external port %d, want 25001", p.SrcPort)
		}
	})
	t.Run("source port outside the range gets a range port of the same parity", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 30000}})
		for _, sport := range []uint16{5001, 5002} {
			p := l.mustOut(udpPkt(ap(lanA, sport), ap(remote1, 53), "q"), VerdictToWAN)
			if p.SrcPort < 20000 || p.SrcPort > 30000 || p.SrcPort%2 != sport%2 {
				t.Errorf("source port %d mapped to %d", sport, p.SrcPort)
			}
		}
	})
	t.Run("endpoint-independent mapping: one external port for every remote", func(t *testing.T) {
		l := newLab(t, Config{})
		p1 := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 3478), "a"), VerdictToWAN)
		p2 := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote2, 3478), "b"), VerdictToWAN)
		p3 := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote2, 9999), "c"), VerdictToWAN)
		if p1.SrcPort != p2.SrcPort || p2.SrcPort != p3.SrcPort {
			t.Errorf("external ports %d %d %d differ", p1.SrcPort, p2.SrcPort, p3.SrcPort)
		}
	})
	t.Run("two LAN hosts with the same source port get distinct external ports", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 30000}})
		pa := l.mustOut(udpPkt(ap(lanA, 25000), ap(remote1, 53), "a"), VerdictToWAN)
		pb := l.mustOut(udpPkt(ap(lanB, 25000), ap(remote1, 53), "b"), VerdictToWAN)
		if pa.SrcPort == pb.SrcPort {
			t.Fatalf("both hosts share external port %d (port overloading)", pa.SrcPort)
		}
		if pb.SrcPort%2 != 0 {
			t.Errorf("second host got port %d, want the parity of 25000", pb.SrcPort)
		}
		// Replies go to the right host.
		ra := l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, pa.SrcPort), "ra"), VerdictToLAN)
		rb := l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, pb.SrcPort), "rb"), VerdictToLAN)
		if dstAP(ra) != ap(lanA, 25000) || dstAP(rb) != ap(lanB, 25000) {
			t.Errorf("replies reached %v and %v", dstAP(ra), dstAP(rb))
		}
	})
	t.Run("a zero udp checksum stays zero", func(t *testing.T) {
		l := newLab(t, Config{})
		b := udpPkt(ap(lanA, 5000), ap(remote1, 53), "no checksum")
		header.UDP(b[header.IPv4MinimumSize:]).SetChecksum(0)
		p := l.mustOut(b, VerdictToWAN)
		if c := header.UDP(p.L4).Checksum(); c != 0 {
			t.Errorf("checksum %#04x, want 0", c)
		}
	})
	t.Run("ipv4 options do not disturb the translation", func(t *testing.T) {
		l := newLab(t, Config{})
		b := testpacket.IPv4(testpacket.IPv4Header{Src: lanA, Dst: remote1, Proto: ProtoUDP, OptWords: 2},
			testpacket.UDP(ap(lanA, 5000), ap(remote1, 53), []byte("opts")))
		p := l.mustOut(b, VerdictToWAN)
		if p.SrcAddr() != wanAddr {
			t.Errorf("source %v", p.SrcAddr())
		}
	})
}

func TestUDPTimers(t *testing.T) {
	t.Run("udp mapping expires after 5 minutes idle", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
		l.advance(5*time.Minute - time.Nanosecond)
		if _, ok := l.mapping("udp", ap(lanA, 5000)); !ok {
			t.Fatal("mapping gone before 5 minutes")
		}
		l.advance(time.Nanosecond)
		if _, ok := l.mapping("udp", ap(lanA, 5000)); ok {
			t.Fatal("mapping still present after 5 minutes idle")
		}
		r, _ := l.in(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "late"))
		wantDrop(t, r, DropUnsolicited)
	})
	for _, f := range []struct {
		name      string
		filtering Filtering
	}{{"address-dependent", AddressDependentFiltering}, {"endpoint-independent", EndpointIndependentFiltering}} {
		t.Run("inbound after the timer ran out is dropped even before the sweep under "+f.name+" filtering", func(t *testing.T) {
			l := newLab(t, Config{UDPFiltering: f.filtering})
			ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
			l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"), VerdictToLAN)
			l.clock.Advance(5 * time.Minute) // no Expire: lookups must honour the timer
			for _, from := range []netip.AddrPort{ap(remote1, 53), ap(remote1, 54), ap(remote2, 53)} {
				r, _ := l.in(udpPkt(from, ap(wanAddr, ext), "late"))
				wantDrop(t, r, DropUnsolicited)
			}
		})
	}
	t.Run("outbound traffic refreshes the udp mapping", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q1"), VerdictToWAN).SrcPort
		l.advance(4 * time.Minute)
		l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q2"), VerdictToWAN)
		l.advance(4 * time.Minute) // 8 minutes after creation, 4 after the refresh
		if m, ok := l.mapping("udp", ap(lanA, 5000)); !ok || m.Idle != 4*time.Minute {
			t.Fatalf("mapping %+v present %v, want idle 4m", m, ok)
		}
		p := l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"), VerdictToLAN)
		if dstAP(p) != ap(lanA, 5000) {
			t.Errorf("reply to %v", dstAP(p))
		}
	})
	t.Run("traffic to another remote keeps the mapping and its port", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q1"), VerdictToWAN).SrcPort
		l.advance(4 * time.Minute)
		p := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote2, 53), "q2"), VerdictToWAN)
		l.advance(4 * time.Minute)
		if p.SrcPort != ext {
			t.Fatalf("port changed from %d to %d", ext, p.SrcPort)
		}
		if m, ok := l.mapping("udp", ap(lanA, 5000)); !ok || m.Flows != 1 {
			t.Fatalf("mapping %+v present %v: want it alive with only the remote2 flow", m, ok)
		}
		// The flow with remote1 timed out: its replies are no longer welcome.
		r, _ := l.in(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"))
		wantDrop(t, r, DropUnsolicited)
	})
	t.Run("a flow that timed out before the sweep starts afresh on new outbound traffic", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q1"), VerdictToWAN).SrcPort
		l.clock.Advance(6 * time.Minute) // no sweep
		p := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q2"), VerdictToWAN)
		if p.SrcPort != ext {
			t.Errorf("port %d, want the unswept mapping's %d", p.SrcPort, ext)
		}
		l.advance(5*time.Minute - time.Nanosecond)
		if m, ok := l.mapping("udp", ap(lanA, 5000)); !ok || m.Flows != 1 {
			t.Fatalf("mapping %+v present %v, want one live flow", m, ok)
		}
		l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"), VerdictToLAN)
	})
	t.Run("configured udp timeout replaces the default", func(t *testing.T) {
		l := newLab(t, Config{UDPTimeout: 30 * time.Second})
		l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN)
		l.advance(30 * time.Second)
		if _, ok := l.mapping("udp", ap(lanA, 5000)); ok {
			t.Error("mapping outlived the configured 30 s")
		}
	})
	t.Run("an expired mapping's port returns to the pool", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 20000}})
		l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN)
		r, _ := l.out(udpPkt(ap(lanB, 5000), ap(remote1, 53), "q"))
		wantDrop(t, r, DropNoPorts)
		l.advance(5 * time.Minute)
		p := l.mustOut(udpPkt(ap(lanB, 5000), ap(remote1, 53), "q"), VerdictToWAN)
		if p.SrcPort != 20000 {
			t.Errorf("port %d, want the freed 20000", p.SrcPort)
		}
	})
}

func TestUDPFiltering(t *testing.T) {
	tests := []struct {
		name      string
		filtering Filtering
		from      [2]uint16 // remote index (1 or 2) and source port
		want      Verdict
	}{
		{"the contacted remote endpoint passes under address-dependent filtering", AddressDependentFiltering, [2]uint16{1, 53}, VerdictToLAN},
		{"another port of the contacted address passes under address-dependent filtering", AddressDependentFiltering, [2]uint16{1, 5353}, VerdictToLAN},
		{"inbound traffic from an unknown address is dropped under address-dependent filtering", AddressDependentFiltering, [2]uint16{2, 53}, VerdictDrop},
		{"inbound traffic from an unknown address passes under endpoint-independent filtering", EndpointIndependentFiltering, [2]uint16{2, 53}, VerdictToLAN},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, Config{UDPFiltering: tc.filtering})
			ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
			from := remote1
			if tc.from[0] == 2 {
				from = remote2
			}
			r, p := l.in(udpPkt(ap(from, tc.from[1]), ap(wanAddr, ext), "a"))
			if r.Verdict != tc.want {
				t.Fatalf("verdict %s (%v), want %s", verdictName(r.Verdict), r.Reason, verdictName(tc.want))
			}
			if r.Verdict == VerdictDrop {
				wantDrop(t, r, DropUnsolicited)
				return
			}
			if dstAP(p) != ap(lanA, 5000) || srcAP(p) != ap(from, tc.from[1]) {
				t.Errorf("delivered %v→%v", srcAP(p), dstAP(p))
			}
		})
	}
	t.Run("inbound udp to a port without a mapping is dropped", func(t *testing.T) {
		for _, f := range []Filtering{AddressDependentFiltering, EndpointIndependentFiltering} {
			l := newLab(t, Config{UDPFiltering: f})
			r, _ := l.in(udpPkt(ap(remote1, 53), ap(wanAddr, 20000), "x"))
			wantDrop(t, r, DropUnsolicited)
		}
	})
}
