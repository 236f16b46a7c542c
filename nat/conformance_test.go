package nat

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// Tests for rows of docs/conformance.md that no other test shows. Each
// subtest names the requirement it proves; the ones named "departure" pin
// a documented difference from the RFC, so that changing it also means
// changing the document.

func TestRFC4787Conformance(t *testing.T) {
	t.Run("REQ-11: mappings made in a port conflict keep endpoint-independent mapping and address-dependent filtering", func(t *testing.T) {
		// RFC 4787 section 8's example: three hosts send from the same
		// port; the first keeps it, the others conflict. Every one of the
		// three mappings must behave the same.
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 30000}})
		ext := map[netip.Addr]uint16{}
		for _, h := range []netip.Addr{lanA, lanB, lanC} {
			ext[h] = l.mustOut(udpPkt(ap(h, 25000), ap(remote1, 3478), "binding"), VerdictToWAN).SrcPort
		}
		if ext[lanA] != 25000 || ext[lanB] == 25000 || ext[lanC] == 25000 || ext[lanB] == ext[lanC] {
			t.Fatalf("external ports %v: want 25000 for the first host and two others", ext)
		}
		for h, port := range ext {
			if p := l.mustOut(udpPkt(ap(h, 25000), ap(remote2, 9999), "other remote"), VerdictToWAN); p.SrcPort != port {
				t.Errorf("%v: external port %d towards a second remote, %d towards the first", h, p.SrcPort, port)
			}
			if p := l.mustIn(udpPkt(ap(remote1, 5353), ap(wanAddr, port), "other port"), VerdictToLAN); dstAP(p) != ap(h, 25000) {
				t.Errorf("%v: another port of a contacted address delivered to %v", h, dstAP(p))
			}
			r, _ := l.in(udpPkt(ap(remote3, 3478), ap(wanAddr, port), "stranger"))
			wantDrop(t, r, DropUnsolicited)
		}
	})
	t.Run("REQ-11: with the port range exhausted an existing mapping keeps its port towards new remotes", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 20001}})
		ext := l.mustOut(udpPkt(ap(lanA, 1), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
		l.mustOut(udpPkt(ap(lanA, 2), ap(remote1, 53), "q"), VerdictToWAN)
		r, _ := l.out(udpPkt(ap(lanB, 3), ap(remote1, 53), "q"))
		wantDrop(t, r, DropNoPorts)
		for _, to := range []netip.AddrPort{ap(remote2, 53), ap(remote3, 123)} {
			if p := l.mustOut(udpPkt(ap(lanA, 1), to, "q"), VerdictToWAN); p.SrcPort != ext {
				t.Errorf("towards %v: external port %d, want %d", to, p.SrcPort, ext)
			}
		}
	})
	t.Run("departure, REQ-1: a LAN endpoint on UDP 4500 leaves from different WAN ports for different remotes", func(t *testing.T) {
		// NAT-T keeps WAN port 4500 for the first LAN host per remote
		// (ike.go): lanB:4500 gets a range port towards remote1, where
		// lanA holds 4500, and 4500 itself towards remote2.
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 30000}})
		if p := l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), 0xa1, 0), VerdictToWAN); p.SrcPort != 4500 {
			t.Fatalf("first host left from %d, want 4500", p.SrcPort)
		}
		toRemote1 := l.mustOut(nattIKEPkt(ap(lanB, 4500), ap(remote1, 4500), 0xb2, 0), VerdictToWAN).SrcPort
		toRemote2 := l.mustOut(nattIKEPkt(ap(lanB, 4500), ap(remote2, 4500), 0xb3, 0), VerdictToWAN).SrcPort
		if toRemote1 == 4500 || toRemote2 != 4500 {
			t.Errorf("lanB:4500 left from %d towards remote1 and %d towards remote2, want a range port and 4500", toRemote1, toRemote2)
		}
	})
}

func TestRFC5382Conformance(t *testing.T) {
	t.Run("REQ-7: two LAN hosts with the same source port to the same remote endpoint get distinct external ports", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 30000}})
		rem := ap(remote1, 443)
		pa := l.mustOut(tcpPkt(ap(lanA, 25000), rem, syn), VerdictToWAN)
		pb := l.mustOut(tcpPkt(ap(lanB, 25000), rem, syn), VerdictToWAN)
		if pa.SrcPort == pb.SrcPort {
			t.Fatalf("both connections leave from %v:%d (port overloading)", wanAddr, pa.SrcPort)
		}
		for _, c := range []struct {
			ext uint16
			lan netip.AddrPort
		}{{pa.SrcPort, ap(lanA, 25000)}, {pb.SrcPort, ap(lanB, 25000)}} {
			if p := l.mustIn(tcpPkt(rem, ap(wanAddr, c.ext), synAck), VerdictToLAN); dstAP(p) != c.lan {
				t.Errorf("SYN-ACK to port %d delivered to %v, want %v", c.ext, dstAP(p), c.lan)
			}
		}
	})
	t.Run("REQ-4: an unsolicited SYN is dropped without a reply, and the LAN host's own SYN then opens the connection", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 30000}})
		lan, rem := ap(lanA, 25000), ap(remote1, 443)
		r, _ := l.in(tcpPkt(rem, ap(wanAddr, 25000), syn))
		wantDrop(t, r, DropUnsolicited)
		if r.Unreachable {
			t.Error("the unsolicited SYN asks for an ICMP error")
		}
		l.advance(2 * time.Second)
		if p := l.mustOut(tcpPkt(lan, rem, syn), VerdictToWAN); p.SrcPort != 25000 {
			t.Fatalf("LAN host's SYN left from port %d, want 25000", p.SrcPort)
		}
		// The remote retransmits its SYN: a simultaneous open.
		l.mustIn(tcpPkt(rem, ap(wanAddr, 25000), syn), VerdictToLAN)
		l.mustOut(tcpPkt(lan, rem, synAck), VerdictToWAN)
		l.mustIn(tcpPkt(rem, ap(wanAddr, 25000), ack), VerdictToLAN)
	})
	t.Run("departure, REQ-3: a SYN from another port of the contacted address is dropped (address- and port-dependent filtering), whatever the UDP filtering", func(t *testing.T) {
		l := newLab(t, Config{UDPFiltering: EndpointIndependentFiltering})
		c := openTCP(l)
		for _, from := range []netip.AddrPort{ap(remote1, 444), ap(remote2, 443)} {
			r, _ := l.in(tcpPkt(from, ap(wanAddr, c.ext), syn))
			wantDrop(t, r, DropUnsolicited)
		}
		if got := c.in(synAck); got.Verdict != VerdictToLAN {
			t.Fatalf("control: the contacted endpoint's SYN-ACK dropped: %v", got.Reason)
		}
	})
	t.Run("REQ-8: two LAN hosts connect to each other's external endpoints, each seeing the other's external address and port", func(t *testing.T) {
		// Both learned their external endpoints from remote1 (as with a
		// rendezvous server), then open towards each other at once.
		l := newLab(t, Config{})
		a, b := ap(lanA, 40000), ap(lanB, 40001)
		extA := l.mustOut(tcpPkt(a, ap(remote1, 3478), syn), VerdictToWAN).SrcPort
		extB := l.mustOut(tcpPkt(b, ap(remote1, 3478), syn), VerdictToWAN).SrcPort
		r, _ := l.out(tcpPkt(a, ap(wanAddr, extB), syn))
		wantDrop(t, r, DropUnsolicited) // b has not opened towards a yet: filtered
		p := l.mustOut(tcpPkt(b, ap(wanAddr, extA), syn), VerdictToLAN)
		if srcAP(p) != ap(wanAddr, extB) || dstAP(p) != a {
			t.Fatalf("b's SYN delivered %v→%v, want %v→%v", srcAP(p), dstAP(p), ap(wanAddr, extB), a)
		}
		p = l.mustOut(tcpPkt(a, ap(wanAddr, extB), synAck), VerdictToLAN)
		if srcAP(p) != ap(wanAddr, extA) || dstAP(p) != b {
			t.Fatalf("a's SYN-ACK delivered %v→%v, want %v→%v", srcAP(p), dstAP(p), ap(wanAddr, extA), b)
		}
		l.mustOut(tcpPkt(b, ap(wanAddr, extA), ack), VerdictToLAN)
	})
	t.Run("REQ-10: an ICMP error about an established connection leaves it on the established timer", func(t *testing.T) {
		l := newLab(t, Config{})
		c := openTCP(l)
		c.in(synAck)
		seg := l.mustOut(tcpDataPkt(c.lan, c.rem, ack|header.TCPFlagPsh, "data"), VerdictToWAN)
		for _, code := range []header.ICMPv4Code{header.ICMPv4FragmentationNeeded, header.ICMPv4PortUnreachable, header.ICMPv4HostUnreachable} {
			l.mustIn(icmpErrPkt(router, wanAddr, header.ICMPv4DstUnreachable, code, seg.Buf, header.IPv4MinimumSize+8), VerdictToLAN)
		}
		l.advance(2*time.Hour + 4*time.Minute - time.Nanosecond)
		if r := c.in(ack); r.Verdict != VerdictToLAN {
			t.Fatalf("segment 2h4m after the errors dropped: %v", r.Reason)
		}
	})
}

func TestRFC5508Conformance(t *testing.T) {
	t.Run("REQ-2a: icmp_timeout replaces the 60 s default", func(t *testing.T) {
		l := newLab(t, Config{ICMPTimeout: 2 * time.Minute})
		ext := l.mustOut(echoPkt(header.ICMPv4Echo, lanA, remote1, 5, 1), VerdictToWAN).SrcPort
		l.advance(2*time.Minute - time.Nanosecond)
		l.mustIn(echoPkt(header.ICMPv4EchoReply, remote1, wanAddr, ext, 1), VerdictToLAN)
		l.advance(time.Nanosecond)
		if _, ok := l.mapping("icmp", ap(lanA, 5)); ok {
			t.Error("echo mapping outlived the configured 2 minutes")
		}
	})
	t.Run("REQ-3b: the transport header of an embedded packet with IP options is found past the options", func(t *testing.T) {
		l := newLab(t, Config{})
		b := testpacket.IPv4(testpacket.IPv4Header{Src: lanA, Dst: remote1, Proto: ProtoUDP, OptWords: 2},
			testpacket.UDP(ap(lanA, 5000), ap(remote1, 53), []byte("with options")))
		out := l.mustOut(b, VerdictToWAN)
		p := l.mustIn(portUnreachable(remote1, wanAddr, out.Buf), VerdictToLAN)
		embedded := p.L4[header.ICMPv4MinimumSize:]
		if hl := header.IPv4(embedded).HeaderLength(); hl != header.IPv4MinimumSize+8 {
			t.Fatalf("embedded header length %d, want 28", hl)
		}
		if q := quotedIn(t, p.L4); q.src != ap(lanA, 5000) || q.dst != ap(remote1, 53) {
			t.Errorf("embedded %v→%v, want %v→%v", q.src, q.dst, ap(lanA, 5000), ap(remote1, 53))
		}
		if err := validateEmbeddedTransport(embedded); err != nil {
			t.Errorf("embedded packet: %v", err)
		}
	})
	t.Run("REQ-3c: an error whose embedded transport checksum is wrong is still translated", func(t *testing.T) {
		l := newLab(t, Config{})
		out := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "payload"), VerdictToWAN)
		quote := append([]byte(nil), out.Buf...)
		quote[len(quote)-1] ^= 0xff // the UDP checksum no longer matches; the IP header is intact
		p := l.mustIn(portUnreachable(remote1, wanAddr, quote), VerdictToLAN)
		if p.DstAddr() != lanA {
			t.Fatalf("error delivered to %v", p.DstAddr())
		}
		if q := quotedIn(t, p.L4); q.src != ap(lanA, 5000) {
			t.Errorf("embedded source %v, want %v", q.src, ap(lanA, 5000))
		}
		if validateEmbeddedTransport(p.L4[header.ICMPv4MinimumSize:]) == nil {
			t.Error("control: the embedded UDP checksum validates, so the test proves nothing")
		}
	})
	t.Run("REQ-3d: an error carrying ICMP extensions is translated and its extensions left as they were", func(t *testing.T) {
		l := newLab(t, Config{})
		out := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN)
		// RFC 4884: the original datagram padded to 128 bytes, its length
		// in 32-bit words in the second byte of the rest of the header,
		// then an extension structure (version 2, checksum) with one object.
		const origLen = 128
		body := make([]byte, origLen)
		copy(body, out.Buf)
		ext := []byte{0x20, 0, 0, 0, 0, 8, 2, 1, 'e', 'x', 't', '!'}
		binary.BigEndian.PutUint16(ext[2:4], ^checksum.Checksum(ext, 0))
		body = append(body, ext...)
		b := testpacket.IPv4(testpacket.IPv4Header{Src: router, Dst: wanAddr, Proto: ProtoICMP},
			testpacket.ICMP(header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded, [4]byte{0, origLen / 4, 0, 0}, body))
		p := l.mustIn(b, VerdictToLAN)
		if p.DstAddr() != lanA {
			t.Fatalf("error delivered to %v", p.DstAddr())
		}
		if q := quotedIn(t, p.L4); q.src != ap(lanA, 5000) || q.dst != ap(remote1, 53) {
			t.Errorf("embedded %v→%v", q.src, q.dst)
		}
		if got := p.L4[header.ICMPv4MinimumSize+origLen:]; string(got) != string(ext) {
			t.Errorf("extension structure % x, want % x", got, ext)
		}
		if p.L4[5] != origLen/4 {
			t.Errorf("length field %d, want %d", p.L4[5], origLen/4)
		}
	})
	t.Run("REQ-5b: an error from a LAN host keeps its type and code", func(t *testing.T) {
		for _, tc := range []struct {
			typ  header.ICMPv4Type
			code header.ICMPv4Code
		}{
			{header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited},
			{header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded},
			{header.ICMPv4TimeExceeded, header.ICMPv4ReassemblyTimeout},
			{header.ICMPv4ParamProblem, 0},
		} {
			l := newLab(t, Config{})
			ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
			reply := l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"), VerdictToLAN)
			p := l.mustOut(icmpErrPkt(lanA, remote1, tc.typ, tc.code, reply.Buf, len(reply.Buf)), VerdictToWAN)
			if icmp := header.ICMPv4(p.L4); icmp.Type() != tc.typ || icmp.Code() != tc.code {
				t.Errorf("%d/%d left as %d/%d", tc.typ, tc.code, icmp.Type(), icmp.Code())
			}
			if q := quotedIn(t, p.L4); p.SrcAddr() != wanAddr || q.dst != ap(wanAddr, ext) {
				t.Errorf("%d/%d: outer source %v, embedded destination %v", tc.typ, tc.code, p.SrcAddr(), q.dst)
			}
		}
	})
	t.Run("REQ-6: an error about an echo request does not refresh the query mapping", func(t *testing.T) {
		l := newLab(t, Config{})
		req := append([]byte(nil), l.mustOut(echoPkt(header.ICMPv4Echo, lanA, remote1, 5, 1), VerdictToWAN).Buf...)
		l.advance(50 * time.Second)
		p := l.mustIn(icmpErrPkt(router, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, req, len(req)), VerdictToLAN)
		if q := quotedIn(t, p.L4); p.DstAddr() != lanA || q.src != ap(lanA, 5) {
			t.Fatalf("error delivered to %v quoting %v", p.DstAddr(), q.src)
		}
		if m, _ := l.mapping("icmp", ap(lanA, 5)); m.Idle != 50*time.Second {
			t.Errorf("idle %v after the error, want 50s", m.Idle)
		}
		l.advance(10 * time.Second)
		if _, ok := l.mapping("icmp", ap(lanA, 5)); ok {
			t.Error("the error kept the echo mapping past 60 s")
		}
	})
	t.Run("REQ-6: an error about an echo request does not delete the query mapping", func(t *testing.T) {
		l := newLab(t, Config{})
		out := l.mustOut(echoPkt(header.ICMPv4Echo, lanA, remote1, 5, 1), VerdictToWAN)
		ext := out.SrcPort
		for _, typ := range []header.ICMPv4Type{header.ICMPv4DstUnreachable, header.ICMPv4TimeExceeded, header.ICMPv4ParamProblem} {
			l.mustIn(icmpErrPkt(router, wanAddr, typ, 0, out.Buf, len(out.Buf)), VerdictToLAN)
		}
		if p := l.mustIn(echoPkt(header.ICMPv4EchoReply, remote1, wanAddr, ext, 1), VerdictToLAN); p.DstAddr() != lanA {
			t.Errorf("echo reply after the errors delivered to %v", p.DstAddr())
		}
	})
	t.Run("departure, REQ-8: a new flow refused by the host's new-flow rate draws no ICMP error", func(t *testing.T) {
		l := newLab(t, Config{Limits: Limits{HostFlowRate: 1, HostFlowBurst: 1}})
		l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN)
		r, _ := l.out(udpPkt(ap(lanA, 5000), ap(remote2, 53), "q"))
		wantDrop(t, r, DropRateLimited)
		if r.Unreachable {
			t.Error("the rate-limited flow asks for ICMP 3/13")
		}
	})
	t.Run("REQ-10 and REQ-11: ICMP from the LAN other than echo is not masqueraded", func(t *testing.T) {
		for _, typ := range []header.ICMPv4Type{
			header.ICMPv4Timestamp,
			header.ICMPv4InfoRequest,
			17, // Address Mask Request
			10, // Router Solicitation
			9,  // Router Advertisement
		} {
			l := newLab(t, Config{})
			b := testpacket.IPv4(testpacket.IPv4Header{Src: lanA, Dst: remote1, Proto: ProtoICMP},
				testpacket.ICMP(typ, 0, [4]byte{0, 1, 0, 1}, make([]byte, 12)))
			r, _ := l.out(b)
			wantDrop(t, r, DropUnsupported)
		}
	})
}
