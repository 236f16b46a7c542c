package datapath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

var (
	lanHost  = [4]byte{192, 168, 77, 10}
	lanHost2 = [4]byte{192, 168, 77, 11}
	lanRtr   = [4]byte{192, 168, 77, 1}
	wanAddr  = [4]byte{198, 18, 0, 1}
	remote   = [4]byte{198, 18, 0, 2}
	site     = [4]byte{10, 20, 0, 1}
)

// testCore returns a path for a router with one LAN, a no-NAT site and a
// four-port NAT, sending every ICMP error, on a clock that stands still.
func testCore(t testing.TB, wanMTU int) *Path {
	t.Helper()
	e := nat.New(nat.Config{
		WANAddr: netip.AddrFrom4(wanAddr),
		Ports:   nat.PortRange{First: 20000, Last: 20003},
		Forwards: []nat.Forward{{Proto: nat.ProtoTCP, Ports: nat.PortRange{First: 8080, Last: 8080},
			To: netip.AddrFrom4(lanHost), ToPort: 80}},
		Clock: &nat.FakeClock{},
		Log:   zerolog.Nop(),
	})
	return New(Config{
		NAT:      e,
		LAN:      []netip.Prefix{netip.MustParsePrefix("192.168.77.0/24")},
		NoNAT:    []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")},
		Service:  netip.AddrFrom4([4]byte{192, 0, 2, 53}),
		WANMTU:   wanMTU,
		LANAddrs: []netip.Prefix{netip.MustParsePrefix("192.168.77.1/24")},
		Log:      zerolog.Nop(),
		Now:      func() int64 { return 0 },
		Routed: RoutedTimeouts{TCP: 2 * time.Hour, UDP: 5 * time.Minute, ICMP: time.Minute,
			ESP: 35 * time.Minute, GRE: 2 * time.Hour},
	})
}

// inBuffer copies pkt into a buffer with the path's headroom, as the loops
// hand packets over, and returns the buffer and the packet length.
func inBuffer(pkt []byte) ([]byte, int) {
	buf := make([]byte, Headroom+MaxPacket)
	return buf, copy(buf[Headroom:], pkt)
}

// counting returns n payload bytes counting up from zero.
func counting(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

// udpPacket builds a UDP/IPv4 packet (IP ID 7, payload bytes counting up)
// into a buffer with headroom and returns the buffer and the packet length.
func udpPacket(src, dst [4]byte, sport, dport uint16, payload int, ttl uint8, df bool) ([]byte, int) {
	var flags uint8
	if df {
		flags = header.IPv4FlagDontFragment
	}
	s, d := netip.AddrPortFrom(netip.AddrFrom4(src), sport), netip.AddrPortFrom(netip.AddrFrom4(dst), dport)
	return inBuffer(testpacket.IPv4(testpacket.IPv4Header{Src: s.Addr(), Dst: d.Addr(), Proto: uint8(header.UDPProtocolNumber),
		ID: 7, Flags: flags, TTL: ttl}, testpacket.UDP(s, d, counting(payload))))
}

func newTestOutbox() *outbox { return newOutbox(8, 16, 2048) }

func queued(q [][]byte) [][]byte {
	out := make([][]byte, len(q))
	for i, b := range q {
		out[i] = b[Headroom:]
	}
	return out
}

func TestCoreFromLAN(t *testing.T) {
	t.Run("a LAN packet to the internet leaves masqueraded on the WAN side", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		buf, n := udpPacket(lanHost, remote, 40000, 53, 20, 63, false)
		var p nat.Packet
		c.fromLAN(buf, n, &p, o)
		if len(o.wan) != 1 || len(o.lan) != 0 {
			t.Fatalf("queued wan=%d lan=%d, want 1/0", len(o.wan), len(o.lan))
		}
		ip := header.IPv4(queued(o.wan)[0])
		if got := ip.SourceAddress().As4(); got != wanAddr {
			t.Errorf("source %v, want the WAN address", got)
		}
		if !ip.IsChecksumValid() {
			t.Error("IPv4 checksum invalid after masquerade")
		}
	})
	t.Run("a no-NAT destination is routed with the LAN source unchanged", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		buf, n := udpPacket(lanHost, site, 40000, 53, 20, 63, false)
		var p nat.Packet
		c.fromLAN(buf, n, &p, o)
		if len(o.wan) != 1 {
			t.Fatalf("queued wan=%d, want 1", len(o.wan))
		}
		if got := header.IPv4(queued(o.wan)[0]).SourceAddress().As4(); got != lanHost {
			t.Errorf("source %v, want the LAN host unchanged", got)
		}
	})
	t.Run("traffic between LAN prefixes goes back into the TUN unchanged", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		buf, n := udpPacket(lanHost, lanHost2, 40000, 53, 20, 63, false)
		var p nat.Packet
		c.fromLAN(buf, n, &p, o)
		if len(o.lan) != 1 || len(o.wan) != 0 {
			t.Fatalf("queued wan=%d lan=%d, want 0/1", len(o.wan), len(o.lan))
		}
	})
	drops := []struct {
		name     string
		src, dst [4]byte
		reason   nat.DropReason
	}{
		{"a source outside the LAN prefixes is dropped as martian", [4]byte{172, 16, 0, 1}, remote, nat.DropMartian},
		{"a loopback destination is dropped as martian", lanHost, [4]byte{127, 0, 0, 1}, nat.DropMartian},
		{"a multicast destination is dropped as martian", lanHost, [4]byte{224, 0, 0, 251}, nat.DropMartian},
		{"the service address is local and counted while no service answers", lanHost, [4]byte{192, 0, 2, 53}, nat.DropNoService},
	}
	for _, tc := range drops {
		t.Run(tc.name, func(t *testing.T) {
			c, o := testCore(t, 1500), newTestOutbox()
			buf, n := udpPacket(tc.src, tc.dst, 40000, 53, 20, 63, false)
			var p nat.Packet
			c.fromLAN(buf, n, &p, o)
			if len(o.lan)+len(o.wan) != 0 {
				t.Fatalf("packet was queued (wan=%d lan=%d)", len(o.wan), len(o.lan))
			}
			if c.drops.Get(tc.reason) != 1 {
				t.Errorf("drop %v not counted", tc.reason)
			}
		})
	}
	t.Run("too big with DF set draws Fragmentation Needed with the WAN MTU", func(t *testing.T) {
		c, o := testCore(t, 1280), newTestOutbox()
		buf, n := udpPacket(lanHost, remote, 40000, 53, 1400, 63, true)
		orig := append([]byte(nil), buf[Headroom:Headroom+n]...)
		var p nat.Packet
		c.fromLAN(buf, n, &p, o)
		if len(o.wan) != 0 || len(o.lan) != 1 {
			t.Fatalf("queued wan=%d lan=%d, want 0/1", len(o.wan), len(o.lan))
		}
		ip := header.IPv4(queued(o.lan)[0])
		if ip.SourceAddress().As4() != lanRtr || ip.DestinationAddress().As4() != lanHost {
			t.Errorf("ICMP from %v to %v, want router LAN address to the host", ip.SourceAddress(), ip.DestinationAddress())
		}
		icmp := header.ICMPv4(ip.Payload())
		if icmp.Type() != header.ICMPv4DstUnreachable || icmp.Code() != header.ICMPv4FragmentationNeeded || icmp.MTU() != 1280 {
			t.Errorf("got type %d code %d mtu %d, want 3/4 mtu 1280", icmp.Type(), icmp.Code(), icmp.MTU())
		}
		if checksum.Checksum(icmp, 0) != 0xffff || !ip.IsChecksumValid() {
			t.Error("bad checksums on the generated ICMP error")
		}
		// The quote is the packet as the LAN host sent it, not the translation.
		quote := icmp[header.ICMPv4MinimumSize:]
		if string(quote[:28]) != string(orig[:28]) {
			t.Error("quoted header differs from the original packet")
		}
		if c.drops.Get(nat.DropTooBig) != 1 {
			t.Error("too_big drop not counted")
		}
	})
	t.Run("too big without DF is fragmented within the WAN MTU after translation", func(t *testing.T) {
		c, o := testCore(t, 1280), newTestOutbox()
		buf, n := udpPacket(lanHost, remote, 40000, 53, 1400, 63, false)
		var p nat.Packet
		c.fromLAN(buf, n, &p, o)
		if len(o.wan) != 2 {
			t.Fatalf("got %d fragments, want 2", len(o.wan))
		}
		total := 0
		for i, f := range queued(o.wan) {
			ip := header.IPv4(f)
			if len(f) > 1280 || !ip.IsChecksumValid() || ip.SourceAddress().As4() != wanAddr {
				t.Errorf("fragment %d: len %d, checksum ok %v, src %v", i, len(f), ip.IsChecksumValid(), ip.SourceAddress())
			}
			if int(ip.FragmentOffset()) != total {
				t.Errorf("fragment %d offset %d, want %d", i, ip.FragmentOffset(), total)
			}
			if more := i == 0; ip.More() != more {
				t.Errorf("fragment %d MF=%v", i, ip.More())
			}
			total += len(ip.Payload())
		}
		if total != n-header.IPv4MinimumSize {
			t.Errorf("fragments carry %d payload bytes, want %d", total, n-header.IPv4MinimumSize)
		}
	})
	t.Run("port exhaustion answers the LAN host with unreachable code 13", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		var p nat.Packet
		for i := range 5 { // the range holds 4 ports
			o.reset()
			buf, n := udpPacket(lanHost, remote, uint16(40000+i), 53, 8, 63, false)
			c.fromLAN(buf, n, &p, o)
		}
		if len(o.lan) != 1 {
			t.Fatalf("fifth flow: queued lan=%d, want the ICMP error", len(o.lan))
		}
		icmp := header.ICMPv4(header.IPv4(queued(o.lan)[0]).Payload())
		if icmp.Type() != header.ICMPv4DstUnreachable || icmp.Code() != header.ICMPv4AdminProhibited {
			t.Errorf("got type %d code %d, want 3/13", icmp.Type(), icmp.Code())
		}
	})
}

func TestCoreFromWAN(t *testing.T) {
	t.Run("a reply to a mapping reaches the LAN host", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		var p nat.Packet
		buf, n := udpPacket(lanHost, remote, 20001, 53, 8, 63, false)
		c.fromLAN(buf, n, &p, o)
		ext := header.UDP(header.IPv4(queued(o.wan)[0]).Payload()).SourcePort()
		o.reset()
		buf, n = udpPacket(remote, wanAddr, 53, ext, 8, 60, false)
		c.fromWAN(buf, n, offload.Header{}, &p, o)
		if len(o.lan) != 1 {
			t.Fatalf("queued lan=%d, want 1", len(o.lan))
		}
		ip := header.IPv4(queued(o.lan)[0])
		if ip.DestinationAddress().As4() != lanHost || header.UDP(ip.Payload()).DestinationPort() != 20001 {
			t.Errorf("delivered to %v:%d", ip.DestinationAddress(), header.UDP(ip.Payload()).DestinationPort())
		}
	})
	t.Run("a packet that would expire on the way in draws Time Exceeded quoting the original", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		var p nat.Packet
		buf, n := udpPacket(lanHost, remote, 20001, 53, 8, 63, false)
		c.fromLAN(buf, n, &p, o)
		o.reset()
		buf, n = udpPacket(remote, wanAddr, 53, 20001, 8, 1, false)
		orig := append([]byte(nil), buf[Headroom:Headroom+n]...)
		c.fromWAN(buf, n, offload.Header{}, &p, o)
		if len(o.lan) != 0 || len(o.wan) != 1 {
			t.Fatalf("queued wan=%d lan=%d, want 1/0", len(o.wan), len(o.lan))
		}
		ip := header.IPv4(queued(o.wan)[0])
		icmp := header.ICMPv4(ip.Payload())
		if icmp.Type() != header.ICMPv4TimeExceeded || ip.SourceAddress().As4() != wanAddr || ip.DestinationAddress().As4() != remote {
			t.Errorf("got type %d from %v to %v", icmp.Type(), ip.SourceAddress(), ip.DestinationAddress())
		}
		if string(icmp[8:8+n]) != string(orig) {
			t.Error("Time Exceeded does not quote the packet as the remote sent it")
		}
	})
	drops := []struct {
		name     string
		src, dst [4]byte
		reason   nat.DropReason
	}{
		{"a LAN source arriving from the WAN is dropped as spoofed", lanHost2, wanAddr, nat.DropSpoofedLAN},
		{"a remote routing straight to a LAN host is dropped", remote, lanHost, nat.DropUnsolicited},
		{"unsolicited traffic to the WAN address is dropped", remote, wanAddr, nat.DropUnsolicited},
		{"a loopback source is dropped as martian", [4]byte{127, 0, 0, 1}, wanAddr, nat.DropMartian},
	}
	for _, tc := range drops {
		t.Run(tc.name, func(t *testing.T) {
			c, o := testCore(t, 1500), newTestOutbox()
			buf, n := udpPacket(tc.src, tc.dst, 53, 20002, 8, 60, false)
			var p nat.Packet
			c.fromWAN(buf, n, offload.Header{}, &p, o)
			if len(o.lan)+len(o.wan) != 0 {
				t.Fatalf("packet was queued (wan=%d lan=%d)", len(o.wan), len(o.lan))
			}
			if got := c.drops.Get(tc.reason) + c.nat.Drops.Get(tc.reason); got != 1 {
				t.Errorf("drop %v counted %d times, want 1", tc.reason, got)
			}
		})
	}
	t.Run("a no-NAT network's reply reaches the LAN unchanged", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		var p nat.Packet
		buf, n := udpPacket(lanHost, site, 40000, 53, 8, 60, false)
		c.fromLAN(buf, n, &p, o)
		o.reset()
		buf, n = udpPacket(site, lanHost, 53, 40000, 8, 60, false)
		c.fromWAN(buf, n, offload.Header{}, &p, o)
		if len(o.lan) != 1 {
			t.Fatalf("queued lan=%d, want 1", len(o.lan))
		}
		ip := header.IPv4(queued(o.lan)[0])
		if ip.SourceAddress().As4() != site || ip.DestinationAddress().As4() != lanHost {
			t.Errorf("changed addresses: %v → %v", ip.SourceAddress(), ip.DestinationAddress())
		}
	})
	t.Run("a LAN host reaching a forwarded port on the WAN address is hairpinned", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		// TCP SYN lan2 → WAN:8080, forwarded to lan1:80.
		s, d := netip.AddrPortFrom(netip.AddrFrom4(lanHost2), 20002), netip.AddrPortFrom(netip.AddrFrom4(wanAddr), 8080)
		buf, n := inBuffer(testpacket.IPv4(testpacket.IPv4Header{Src: s.Addr(), Dst: d.Addr(), Proto: 6, TTL: 63},
			testpacket.TCP(testpacket.TCPHeader{Src: s, Dst: d, Seq: 1, Flags: header.TCPFlagSyn, Window: 1000}, nil)))
		var p nat.Packet
		c.fromLAN(buf, n, &p, o)
		if len(o.lan) != 1 {
			t.Fatalf("queued lan=%d wan=%d, want the hairpinned packet on the LAN", len(o.lan), len(o.wan))
		}
		out := header.IPv4(queued(o.lan)[0])
		if out.SourceAddress().As4() != wanAddr || out.DestinationAddress().As4() != lanHost || header.TCP(out.Payload()).DestinationPort() != 80 {
			t.Errorf("hairpin %v → %v:%d", out.SourceAddress(), out.DestinationAddress(), header.TCP(out.Payload()).DestinationPort())
		}
	})
}
