package datapath

import (
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

var (
	site2      = [4]byte{10, 20, 0, 2}
	siteRouter = [4]byte{10, 20, 0, 254}
)

// icmpErrorPacket builds an ICMP error from src to dst quoting quoted (an
// IPv4 packet), with a next-hop MTU of 1400, in a buffer with headroom.
func icmpErrorPacket(src, dst [4]byte, typ header.ICMPv4Type, code header.ICMPv4Code, quoted []byte) ([]byte, int) {
	return inBuffer(testpacket.IPv4(testpacket.IPv4Header{Src: netip.AddrFrom4(src), Dst: netip.AddrFrom4(dst), Proto: uint8(header.ICMPv4ProtocolNumber)},
		testpacket.ICMP(typ, code, [4]byte{0, 0, 1400 >> 8, 1400 & 0xff}, quoted)))
}

// echoPacket builds an ICMP echo request or reply (sequence number 1, eight
// zero bytes of data) in a buffer with headroom.
func echoPacket(src, dst [4]byte, typ header.ICMPv4Type, id uint16) ([]byte, int) {
	return inBuffer(testpacket.IPv4(testpacket.IPv4Header{Src: netip.AddrFrom4(src), Dst: netip.AddrFrom4(dst), Proto: uint8(header.ICMPv4ProtocolNumber), ID: 3, TTL: 60},
		testpacket.ICMP(typ, 0, [4]byte{byte(id >> 8), byte(id), 0, 1}, make([]byte, 8))))
}

func TestNoNATRouteAdmitsOnlyReturnTraffic(t *testing.T) {
	type pkt func() ([]byte, int)
	udp := func(src, dst [4]byte, sport, dport uint16) pkt {
		return func() ([]byte, int) { return udpPacket(src, dst, sport, dport, 8, 60, false) }
	}
	// The LAN host's UDP flow to the site, as the site's router quotes it.
	quote := func(src, dst [4]byte, sport, dport uint16) []byte {
		b, n := udpPacket(src, dst, sport, dport, 8, 60, false)
		return b[Headroom : Headroom+n]
	}
	errorFrom := func(from [4]byte, quoted []byte) pkt {
		return func() ([]byte, int) {
			return icmpErrorPacket(from, lanHost, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, quoted)
		}
	}
	cases := []struct {
		name    string
		opened  []pkt         // sent by the LAN host first
		after   time.Duration // clock advance before the WAN packet
		wan     pkt
		deliver bool
	}{
		{"a reply to a UDP flow the LAN host opened is routed in",
			[]pkt{udp(lanHost, site, 40000, 53)}, 0, udp(site, lanHost, 53, 40000), true},
		{"a forged no-NAT source with no flow behind it is dropped",
			nil, 0, udp(site, lanHost, 53, 40000), false},
		{"the right remote to another port of the LAN host is dropped",
			[]pkt{udp(lanHost, site, 40000, 53)}, 0, udp(site, lanHost, 53, 40001), false},
		{"another no-NAT address than the flow's remote is dropped",
			[]pkt{udp(lanHost, site, 40000, 53)}, 0, udp(site2, lanHost, 53, 40000), false},
		{"a reply to another LAN host's flow is dropped",
			[]pkt{udp(lanHost2, site, 40000, 53)}, 0, udp(site, lanHost, 53, 40000), false},
		{"a UDP reply within the UDP timeout is routed in",
			[]pkt{udp(lanHost, site, 40000, 53)}, 4 * time.Minute, udp(site, lanHost, 53, 40000), true},
		{"a UDP reply after the UDP timeout is dropped",
			[]pkt{udp(lanHost, site, 40000, 53)}, 6 * time.Minute, udp(site, lanHost, 53, 40000), false},
		{"an echo reply to the LAN host's ping is routed in",
			[]pkt{func() ([]byte, int) { return echoPacket(lanHost, site, header.ICMPv4Echo, 77) }}, 0,
			func() ([]byte, int) { return echoPacket(site, lanHost, header.ICMPv4EchoReply, 77) }, true},
		{"an echo reply with another identifier is dropped",
			[]pkt{func() ([]byte, int) { return echoPacket(lanHost, site, header.ICMPv4Echo, 77) }}, 0,
			func() ([]byte, int) { return echoPacket(site, lanHost, header.ICMPv4EchoReply, 78) }, false},
		{"an echo request from the site is dropped",
			nil, 0, func() ([]byte, int) { return echoPacket(site, lanHost, header.ICMPv4Echo, 77) }, false},
		{"an ICMP error from a router of the site quoting the flow is routed in",
			[]pkt{udp(lanHost, site, 40000, 53)}, 0, errorFrom(siteRouter, quote(lanHost, site, 40000, 53)), true},
		{"an ICMP error quoting a flow never opened is dropped",
			[]pkt{udp(lanHost, site, 40000, 53)}, 0, errorFrom(siteRouter, quote(lanHost, site, 40001, 53)), false},
		{"an ICMP error quoting another host's packet is dropped",
			[]pkt{udp(lanHost2, site, 40000, 53)}, 0, errorFrom(siteRouter, quote(lanHost2, site, 40000, 53)), false},
		{"ESP from the peer the LAN host sends ESP to is routed in",
			[]pkt{func() ([]byte, int) { return ipsecPacket(nat.ProtoESP, lanHost, site, 0x100) }}, 0,
			func() ([]byte, int) { return ipsecPacket(nat.ProtoESP, site, lanHost, 0x200) }, true},
		{"ESP from a site host the LAN host never sent ESP to is dropped",
			[]pkt{udp(lanHost, site, 40000, 53)}, 0,
			func() ([]byte, int) { return ipsecPacket(nat.ProtoESP, site, lanHost, 0x200) }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, o := testCore(t, 1500), newTestOutbox()
			var now int64
			c.now = func() int64 { return now }
			var p nat.Packet
			for _, open := range tc.opened {
				buf, n := open()
				c.fromLAN(buf, n, &p, o)
			}
			if len(o.wan) != len(tc.opened) {
				t.Fatalf("the LAN host's packets: %d of %d went out", len(o.wan), len(tc.opened))
			}
			o.reset()
			now += int64(tc.after)
			buf, n := tc.wan()
			c.fromWAN(buf, n, offload.Header{}, &p, o)
			if got := len(o.lan) == 1; got != tc.deliver {
				t.Errorf("delivered to the LAN: %v, want %v", got, tc.deliver)
			}
			if got, want := c.drops.Get(nat.DropUnsolicited) == 1, !tc.deliver; got != want {
				t.Errorf("counted as unsolicited: %v, want %v", got, want)
			}
		})
	}
}

func TestNoNATFlowTableIsBounded(t *testing.T) {
	t.Run("a LAN host opening flows without end never grows the table past its bound", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		var p nat.Packet
		for i := range 2 * routedMaxFlows {
			o.reset()
			buf, n := udpPacket(lanHost, [4]byte{10, 20, byte(i >> 16), byte(i >> 8)}, uint16(i), 53, 0, 60, false)
			c.fromLAN(buf, n, &p, o)
		}
		if got := c.routed.len(); got > routedMaxFlows {
			t.Errorf("%d flows tracked, bound %d", got, routedMaxFlows)
		}
		if c.stats.RoutedUntracked.Load() == 0 {
			t.Error("no flow counted as untracked, though twice the bound were opened")
		}
	})
	t.Run("expired flows make room again", func(t *testing.T) {
		r := newRoutedFlows(RoutedTimeouts{UDP: time.Second})
		k := func(i int) routedKey {
			return routedKey{proto: nat.ProtoUDP, lan: lanHost, remote: site, lanPort: uint16(i), remPort: uint16(i >> 16)}
		}
		for i := range 2 * routedMaxFlows {
			r.put(k(i), 0)
		}
		r.expire(int64(2 * time.Second))
		if got := r.len(); got != 0 {
			t.Errorf("%d flows left after they all expired", got)
		}
	})
}

func TestNoNATTrackingAllocatesNothing(t *testing.T) {
	t.Run("new flows up to the bound and replies allocate nothing", func(t *testing.T) {
		r := newRoutedFlows(RoutedTimeouts{UDP: time.Minute})
		var p nat.Packet
		i := 0
		allocs := testing.AllocsPerRun(5000, func() {
			i++
			p = nat.Packet{Proto: nat.ProtoUDP, Src: lanHost, Dst: site, SrcPort: uint16(i), DstPort: 53}
			r.note(&p, 0)
			q := nat.Packet{Proto: nat.ProtoUDP, Src: site, Dst: lanHost, SrcPort: 53, DstPort: uint16(i)}
			if !r.admits(&q, 1) {
				t.Fatal("the reply was not admitted")
			}
		})
		if allocs != 0 {
			t.Errorf("%v allocations per new flow", allocs)
		}
	})
}
