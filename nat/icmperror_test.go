package nat

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// quoted is the packet embedded in a translated ICMP error.
type quoted struct {
	src, dst netip.AddrPort // ports: TCP/UDP ports or the echo identifier
	proto    uint8
}

func quotedIn(t *testing.T, icmp []byte) quoted {
	t.Helper()
	in := header.IPv4(icmp[header.ICMPv4MinimumSize:])
	l4 := icmp[header.ICMPv4MinimumSize+int(in.HeaderLength()):]
	q := quoted{proto: in.Protocol()}
	var sp, dp uint16
	switch q.proto {
	case ProtoTCP, ProtoUDP:
		sp, dp = uint16(l4[0])<<8|uint16(l4[1]), uint16(l4[2])<<8|uint16(l4[3])
	case ProtoICMP:
		sp = header.ICMPv4(l4).Ident()
		dp = sp
	}
	q.src = ap(netip.AddrFrom4(in.SourceAddress().As4()), sp)
	q.dst = ap(netip.AddrFrom4(in.DestinationAddress().As4()), dp)
	return q
}

func TestICMPErrorFromTheWAN(t *testing.T) {
	type sent struct {
		pkt  []byte // what the LAN host sends
		lan  netip.AddrPort
		rem  netip.AddrPort
		kind string
	}
	flows := []sent{
		{udpPkt(ap(lanA, 5000), ap(remote1, 53), "a udp query with some payload"), ap(lanA, 5000), ap(remote1, 53), "udp"},
		{tcpDataPkt(ap(lanA, 40000), ap(remote1, 443), syn, "syn with data"), ap(lanA, 40000), ap(remote1, 443), "tcp"},
		{echoPkt(header.ICMPv4Echo, lanA, remote1, 0x4321, 3), ap(lanA, 0x4321), ap(remote1, 0x4321), "echo"},
	}
	errors := []struct {
		name string
		from netip.Addr
		typ  header.ICMPv4Type
		code header.ICMPv4Code
		keep int // bytes of the packet quoted; 0: all of it
	}{
		{"port unreachable from the remote quoting the whole packet", remote1, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, 0},
		{"time exceeded from a router quoting 8 transport bytes", router, header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded, header.IPv4MinimumSize + 8},
		{"fragmentation needed quoting 20 transport bytes", router, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, header.IPv4MinimumSize + 20},
	}
	for _, f := range flows {
		for _, e := range errors {
			name := "icmp error from the WAN about a " + f.kind + " packet is translated to the LAN host, embedded header included: " + e.name
			t.Run(name, func(t *testing.T) {
				l := newLab(t, Config{})
				out := l.mustOut(append([]byte(nil), f.pkt...), VerdictToWAN)
				extPort := out.SrcPort
				keep := e.keep
				if keep == 0 {
					keep = len(out.Buf)
				}
				p := l.mustIn(icmpErrPkt(e.from, wanAddr, e.typ, e.code, out.Buf, keep), VerdictToLAN)
				if p.SrcAddr() != e.from || p.DstAddr() != lanA {
					t.Fatalf("error delivered %v→%v, want %v→%v", p.SrcAddr(), p.DstAddr(), e.from, lanA)
				}
				if p.ICMPType != e.typ || p.ICMPCode != e.code {
					t.Errorf("type/code %d/%d changed", p.ICMPType, p.ICMPCode)
				}
				q := quotedIn(t, p.L4)
				if q.src != f.lan || q.dst != f.rem {
					t.Errorf("embedded %v→%v, want %v→%v (external port was %d)", q.src, q.dst, f.lan, f.rem, extPort)
				}
				if keep == len(out.Buf) {
					// The whole packet is quoted: its transport checksum
					// must be as valid as the one the LAN host sent.
					if err := validateEmbeddedTransport(p.L4[header.ICMPv4MinimumSize:]); err != nil {
						t.Errorf("embedded packet: %v", err)
					}
				}
				// Where the quote includes the transport checksum, it must
				// equal what the LAN host sent: the update undid the
				// masquerade exactly.
				off := map[string]int{"udp": 6, "tcp": 16, "echo": 2}[f.kind]
				if keep-header.IPv4MinimumSize >= off+2 {
					embedded := p.L4[header.ICMPv4MinimumSize+header.IPv4MinimumSize:]
					orig := f.pkt[header.IPv4MinimumSize:]
					if embedded[off] != orig[off] || embedded[off+1] != orig[off+1] {
						t.Errorf("embedded transport checksum %x, the LAN host sent %x", embedded[off:off+2], orig[off:off+2])
					}
				}
			})
		}
	}
}

func TestICMPErrorFromTheLAN(t *testing.T) {
	t.Run("icmp error from a LAN host about an inbound packet leaves with the WAN address and the external port embedded", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
		reply := l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "late answer"), VerdictToLAN)
		p := l.mustOut(portUnreachable(lanA, remote1, reply.Buf), VerdictToWAN)
		if p.SrcAddr() != wanAddr || p.DstAddr() != remote1 {
			t.Fatalf("error left %v→%v", p.SrcAddr(), p.DstAddr())
		}
		q := quotedIn(t, p.L4)
		if q.src != ap(remote1, 53) || q.dst != ap(wanAddr, ext) {
			t.Errorf("embedded %v→%v, want %v→%v", q.src, q.dst, ap(remote1, 53), ap(wanAddr, ext))
		}
		if err := validateEmbeddedTransport(p.L4[header.ICMPv4MinimumSize:]); err != nil {
			t.Errorf("embedded packet: %v", err)
		}
	})
	t.Run("icmp error from a forwarded server embeds the forwarded external port", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{{Proto: ProtoTCP, Ports: PortRange{First: 8080, Last: 8080}, To: lanB, ToPort: 80}}})
		in := l.mustIn(tcpPkt(ap(remote1, 50000), ap(wanAddr, 8080), syn), VerdictToLAN)
		p := l.mustOut(icmpErrPkt(lanB, remote1, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, in.Buf, 28), VerdictToWAN)
		if q := quotedIn(t, p.L4); q.dst != ap(wanAddr, 8080) || q.src != ap(remote1, 50000) {
			t.Errorf("embedded %v→%v", q.src, q.dst)
		}
	})
	t.Run("an embedded udp header without checksum keeps a zero checksum", func(t *testing.T) {
		l := newLab(t, Config{})
		b := udpPkt(ap(lanA, 5000), ap(remote1, 53), "q")
		header.UDP(b[header.IPv4MinimumSize:]).SetChecksum(0)
		ext := l.mustOut(b, VerdictToWAN).SrcPort
		reply := udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a")
		header.UDP(reply[header.IPv4MinimumSize:]).SetChecksum(0)
		in := l.mustIn(reply, VerdictToLAN)
		p := l.mustOut(portUnreachable(lanA, remote1, in.Buf), VerdictToWAN)
		embedded := header.UDP(p.L4[header.ICMPv4MinimumSize+header.IPv4MinimumSize:])
		if embedded.Checksum() != 0 || embedded.DestinationPort() != ext {
			t.Errorf("embedded checksum %#04x port %d, want 0 and %d", embedded.Checksum(), embedded.DestinationPort(), ext)
		}
	})
	t.Run("icmp error from a LAN host about a packet it did not receive is dropped", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
		reply := l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"), VerdictToLAN)
		r, _ := l.out(portUnreachable(lanB, remote1, reply.Buf))
		wantDrop(t, r, DropICMPError)
	})
	t.Run("icmp error from a LAN host about an unmapped endpoint is dropped", func(t *testing.T) {
		l := newLab(t, Config{})
		r, _ := l.out(portUnreachable(lanA, remote1, udpPkt(ap(remote1, 53), ap(lanA, 5000), "x")))
		wantDrop(t, r, DropICMPError)
	})
}

func TestICMPErrorValidation(t *testing.T) {
	// setup makes a UDP mapping and returns the translated packet.
	setup := func(t *testing.T) (*lab, *Packet) {
		l := newLab(t, Config{})
		return l, l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN)
	}
	tests := []struct {
		name string
		make func(out *Packet) []byte
		want DropReason
		host bool // handed to the host instead of dropped
	}{
		{"icmp error with bad icmp checksum dropped", func(out *Packet) []byte {
			b := portUnreachable(remote1, wanAddr, out.Buf)
			b[header.IPv4MinimumSize+2]++
			return b
		}, DropBadICMPChecksum, false},
		{"icmp error with bad embedded ip checksum dropped", func(out *Packet) []byte {
			orig := append([]byte(nil), out.Buf...)
			orig[10]++
			return portUnreachable(remote1, wanAddr, orig)
		}, DropBadICMPChecksum, false},
		{"icmp error quoting fewer than 8 transport bytes is malformed", func(out *Packet) []byte {
			return icmpErrPkt(remote1, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, out.Buf, header.IPv4MinimumSize+7)
		}, DropMalformed, false},
		{"icmp error quoting a truncated ip header is malformed", func(out *Packet) []byte {
			return icmpErrPkt(remote1, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, out.Buf, 12)
		}, DropMalformed, false},
		{"icmp error quoting a non-ipv4 packet is malformed", func(out *Packet) []byte {
			orig := corrupt(out.Buf, true, func(b []byte) { b[0] = 0x65 })
			return portUnreachable(remote1, wanAddr, orig)
		}, DropMalformed, false},
		{"icmp error about a packet from another source is dropped", func(out *Packet) []byte {
			return portUnreachable(remote1, wanAddr, udpPkt(ap(remote2, out.SrcPort), ap(remote1, 53), "q"))
		}, DropICMPError, false},
		{"icmp error about an icmp error is dropped", func(out *Packet) []byte {
			inner := portUnreachable(wanAddr, remote1, udpPkt(ap(remote1, 53), ap(wanAddr, out.SrcPort), "x"))
			return portUnreachable(remote1, wanAddr, inner)
		}, DropICMPError, false},
		{"icmp error about a non-first fragment is dropped", func(out *Packet) []byte {
			_, tail := fragmentAt(udpPkt(ap(wanAddr, out.SrcPort), ap(remote1, 53), "0123456789abcdef01234567"), 16)
			return portUnreachable(remote1, wanAddr, tail)
		}, DropICMPError, false},
		{"icmp error about an unsupported protocol is dropped", func(out *Packet) []byte {
			return portUnreachable(remote1, wanAddr, testpacket.IPv4(testpacket.IPv4Header{Src: wanAddr, Dst: remote1, Proto: 132}, make([]byte, 8)))
		}, DropICMPError, false},
		{"icmp error about an unmapped port goes to the host", func(out *Packet) []byte {
			return portUnreachable(remote1, wanAddr, udpPkt(ap(wanAddr, out.SrcPort+1), ap(remote1, 53), "q"))
		}, DropNone, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, out := setup(t)
			b := tc.make(out)
			r, _ := l.in(b)
			if tc.host {
				if r.Verdict != VerdictHost {
					t.Fatalf("verdict %s (%v), want host", verdictName(r.Verdict), r.Reason)
				}
				return
			}
			wantDrop(t, r, tc.want)
			if got := l.e.Drops.Get(tc.want); got != 1 {
				t.Errorf("drop counter %v = %d, want 1", tc.want, got)
			}
		})
	}
	t.Run("outbound icmp error with bad icmp checksum dropped", func(t *testing.T) {
		l, out := setup(t)
		reply := l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, out.SrcPort), "a"), VerdictToLAN)
		b := portUnreachable(lanA, remote1, reply.Buf)
		b[len(b)-1]++
		r, _ := l.out(b)
		wantDrop(t, r, DropBadICMPChecksum)
	})
}

func TestICMPErrorsLeaveMappingsAlone(t *testing.T) {
	t.Run("icmp error never refreshes a mapping", func(t *testing.T) {
		l := newLab(t, Config{})
		out := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN)
		orig := append([]byte(nil), out.Buf...)
		l.advance(4 * time.Minute)
		l.mustIn(portUnreachable(remote1, wanAddr, orig), VerdictToLAN)
		if m, _ := l.mapping("udp", ap(lanA, 5000)); m.Idle != 4*time.Minute {
			t.Errorf("idle %v after the error, want 4m", m.Idle)
		}
		l.advance(time.Minute)
		if _, ok := l.mapping("udp", ap(lanA, 5000)); ok {
			t.Fatal("the error kept the mapping alive past 5 minutes")
		}
	})
	t.Run("icmp error does not delete a mapping", func(t *testing.T) {
		l := newLab(t, Config{})
		out := l.mustOut(tcpPkt(ap(lanA, 40000), ap(remote1, 443), syn), VerdictToWAN)
		ext := out.SrcPort
		l.mustIn(icmpErrPkt(router, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, out.Buf, 28), VerdictToLAN)
		l.mustIn(tcpPkt(ap(remote1, 443), ap(wanAddr, ext), synAck), VerdictToLAN)
	})
	t.Run("icmp error never creates a mapping", func(t *testing.T) {
		l := newLab(t, Config{})
		r, _ := l.out(portUnreachable(lanA, remote1, udpPkt(ap(remote1, 53), ap(lanA, 5000), "x")))
		wantDrop(t, r, DropICMPError)
		if n := len(l.e.Mappings()); n != 0 {
			t.Errorf("%d mappings after an error", n)
		}
	})
}
