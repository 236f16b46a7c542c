package datapath

import (
	"fmt"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

// tcpSuperPacket builds a TCP super-packet as the TUN hands it over: the
// checksum field holding the pseudo-header sum, and its virtio-net header
// (TCPV4, NEEDS_CSUM, csum_start at the TCP header).
func tcpSuperPacket(src, dst [4]byte, sport, dport uint16, payload, mss int) ([]byte, int, offload.Header) {
	s, d := netip.AddrPortFrom(netip.AddrFrom4(src), sport), netip.AddrPortFrom(netip.AddrFrom4(dst), dport)
	pkt := testpacket.IPv4(testpacket.IPv4Header{Src: s.Addr(), Dst: d.Addr(), Proto: uint8(header.TCPProtocolNumber),
		ID: 9, Flags: header.IPv4FlagDontFragment, TTL: 63},
		testpacket.TCP(testpacket.TCPHeader{Src: s, Dst: d, Seq: 1000, Ack: 1, Flags: header.TCPFlagAck | header.TCPFlagPsh, Window: 1000}, counting(payload)))
	testpacket.PartialChecksum(pkt) // the rest of the sum is left to the offload
	buf, n := inBuffer(pkt)
	h := offload.Header{Flags: offload.FlagNeedsChecksum, GSOType: offload.GSOTCPv4,
		HdrLen: header.IPv4MinimumSize + header.TCPMinimumSize, GSOSize: uint16(mss),
		CsumStart: header.IPv4MinimumSize, CsumOffset: header.TCPChecksumOffset}
	return buf, n, h
}

// udpSuperPacket builds a UDP super-packet as the TUN hands it over: a UDP
// header whose length covers every datagram, the checksum field holding the
// pseudo-header sum, and its virtio-net header (UDP_L4, NEEDS_CSUM).
func udpSuperPacket(src, dst [4]byte, sport, dport uint16, payload, size int) ([]byte, int, offload.Header) {
	s, d := netip.AddrPortFrom(netip.AddrFrom4(src), sport), netip.AddrPortFrom(netip.AddrFrom4(dst), dport)
	pkt := testpacket.IPv4(testpacket.IPv4Header{Src: s.Addr(), Dst: d.Addr(), Proto: uint8(header.UDPProtocolNumber), ID: 9, TTL: 63},
		testpacket.UDP(s, d, counting(payload)))
	testpacket.PartialChecksum(pkt)
	buf, n := inBuffer(pkt)
	h := offload.Header{Flags: offload.FlagNeedsChecksum, GSOType: offload.GSOUDPL4,
		HdrLen: header.IPv4MinimumSize + header.UDPMinimumSize, GSOSize: uint16(size),
		CsumStart: header.IPv4MinimumSize, CsumOffset: offload.UDPChecksumOffset}
	return buf, n, h
}

// superPacketWAN is a WAN that takes super-packets whole; the tests only
// look at what the path queues for it.
type superPacketWAN struct{}

func (superPacketWAN) Read([][]byte, []int, []offload.Header, int) (int, error) { return 0, nil }
func (superPacketWAN) Write(bufs [][]byte, _ int) (int, error)                  { return len(bufs), nil }
func (superPacketWAN) BatchSize() int                                           { return 1 }
func (superPacketWAN) SendsSuperPackets() bool                                  { return true }
func (superPacketWAN) WriteSuperPackets(bufs [][]byte, _ []offload.Header, _ int) (int, error) {
	return len(bufs), nil
}

var _ SuperPacketWAN = superPacketWAN{}

func TestSuperPacketsLeaveWhole(t *testing.T) {
	t.Run("a masqueraded TCP super-packet is translated once and queued whole", func(t *testing.T) {
		c := testCore(t, 1500)
		c.dev.superWAN = superPacketWAN{}
		o, segs := newTestOutbox(), &offload.Segments{Headroom: Headroom}
		buf, n, h := tcpSuperPacket(lanHost, remote, 40000, 5201, 20000, 1448)
		var p nat.Packet
		c.fromTUN(buf, n, h, &p, o, segs)
		if len(o.wan) != 1 || !o.wanHdrs[0].IsSuperPacket() {
			t.Fatalf("%d packets queued, headers %v", len(o.wan), o.wanHdrs)
		}
		pkt := o.wan[0][Headroom:]
		ip := header.IPv4(pkt)
		if ip.SourceAddress().As4() != wanAddr || int(ip.TotalLength()) != n || !ip.IsChecksumValid() {
			t.Errorf("left as %v, %d bytes", ip.SourceAddress(), ip.TotalLength())
		}
		if !testpacket.PartialChecksumCompletes(pkt) {
			t.Error("the partial checksum does not verify after offload")
		}
		if h := o.wanHdrs[0]; h.GSOSize != 1448 || !h.IsSuperPacket() {
			t.Errorf("virtio-net header %+v", h)
		}
	})
	t.Run("a masqueraded UDP super-packet is translated once and queued whole", func(t *testing.T) {
		c := testCore(t, 1500)
		c.dev.superWAN = superPacketWAN{}
		o, segs := newTestOutbox(), &offload.Segments{Headroom: Headroom}
		buf, n, h := udpSuperPacket(lanHost, remote, 40000, 51820, 44*1400, 1400)
		var p nat.Packet
		c.fromTUN(buf, n, h, &p, o, segs)
		if len(o.wan) != 1 || !o.wanHdrs[0].IsUDP() {
			t.Fatalf("%d packets queued, headers %v", len(o.wan), o.wanHdrs)
		}
		pkt := o.wan[0][Headroom:]
		ip := header.IPv4(pkt)
		udp := header.UDP(ip.Payload())
		if ip.SourceAddress().As4() != wanAddr || int(ip.TotalLength()) != n || int(udp.Length()) != n-header.IPv4MinimumSize {
			t.Errorf("left as %v, %d bytes, UDP length %d", ip.SourceAddress(), ip.TotalLength(), udp.Length())
		}
		if !testpacket.PartialChecksumCompletes(pkt) {
			t.Error("the partial checksum does not verify after offload")
		}
		if got := c.stats.Traffic[LANToWAN][nat.ProtoUDP].SuperPackets.Load(); got != 1 {
			t.Errorf("%d UDP super-packets counted", got)
		}
	})
	for _, port := range []uint16{nat.PortIKE, nat.PortNATT} {
		t.Run(fmt.Sprintf("a UDP super-packet to port %d is split, each message classified", port), func(t *testing.T) {
			c := testCore(t, 1500)
			c.dev.superWAN = superPacketWAN{}
			o, segs := newTestOutbox(), &offload.Segments{Headroom: Headroom}
			buf, n, h := udpSuperPacket(lanHost, remote, port, port, 3*1400, 1400)
			var p nat.Packet
			c.fromTUN(buf, n, h, &p, o, segs)
			// Whether the engine passes these made-up IKE payloads is
			// not the point: none may leave as one.
			for i, b := range o.wan {
				if o.wanHdrs[i].IsSuperPacket() || len(b)-Headroom > header.IPv4MinimumSize+header.UDPMinimumSize+1400 {
					t.Fatalf("packet %d of %d queued whole (%d bytes)", i, len(o.wan), len(b)-Headroom)
				}
			}
			if len(o.wan) == 0 {
				t.Fatal("nothing queued")
			}
		})
	}
	for _, tc := range []struct {
		name   string
		gsoOut bool
		wanMTU int
		sport  uint16
		dport  uint16
	}{
		{"without a GSO-capable WAN a super-packet is split", false, 1500, 40000, 5201},
		{"a super-packet whose segments exceed the WAN MTU is split", true, 1400, 40000, 5201},
		{"PPTP control is split, to be rewritten segment by segment", true, 1500, 40000, nat.PortPPTP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := testCore(t, tc.wanMTU)
			if tc.gsoOut {
				c.dev.superWAN = superPacketWAN{}
			}
			o, segs := newTestOutbox(), &offload.Segments{Headroom: Headroom}
			buf, n, h := tcpSuperPacket(lanHost, remote, tc.sport, tc.dport, 4000, 1448)
			var p nat.Packet
			c.fromTUN(buf, n, h, &p, o, segs)
			if tc.wanMTU < 1500 {
				// The segments have DF set: the two full ones are
				// answered with Fragmentation Needed, as without the
				// fast path; the short last one fits and goes.
				if len(o.wan) != 1 || len(o.lan) != 2 {
					t.Fatalf("%d to the WAN, %d ICMP errors to the LAN", len(o.wan), len(o.lan))
				}
				return
			}
			if len(o.wan) < 3 {
				t.Fatalf("%d segments queued", len(o.wan))
			}
			for i, b := range o.wan {
				if o.wanHdrs[i].IsSuperPacket() {
					t.Fatalf("packet %d queued whole", i)
				}
				pkt := b[Headroom:]
				if len(pkt) > 1500 {
					t.Errorf("segment of %d bytes", len(pkt))
				}
				if err := validTCP(pkt); err != nil {
					t.Errorf("segment %d: %v", i, err)
				}
			}
		})
	}
}

// validTCP checks an IPv4/TCP packet's checksums.
func validTCP(pkt []byte) error {
	ip := header.IPv4(pkt)
	if !ip.IsChecksumValid() {
		return errBadChecksum("IP")
	}
	if ip.Protocol() != uint8(header.TCPProtocolNumber) || !testpacket.TransportChecksumValid(pkt) {
		return errBadChecksum("TCP")
	}
	return nil
}

type errBadChecksum string

func (e errBadChecksum) Error() string { return string(e) + " checksum wrong" }

func TestForwardingAllocatesNothingPerPacket(t *testing.T) {
	c := testCore(t, 1500)
	c.dev.superWAN = superPacketWAN{}
	o, segs := newTestOutbox(), &offload.Segments{Headroom: Headroom}
	var p nat.Packet
	for _, tc := range []struct {
		name string
		pkt  func() ([]byte, int, offload.Header)
	}{
		{"a TCP super-packet sent whole", func() ([]byte, int, offload.Header) { return tcpSuperPacket(lanHost, remote, 40000, 5201, 20000, 1448) }},
		{"an ordinary UDP packet", func() ([]byte, int, offload.Header) {
			buf, n := udpPacket(lanHost, remote, 5000, 53, 100, 64, false)
			return buf, n, offload.Header{}
		}},
		{"a UDP packet on a no-NAT route, its flow tracked", func() ([]byte, int, offload.Header) {
			buf, n := udpPacket(lanHost, site, 5000, 53, 100, 64, false)
			return buf, n, offload.Header{}
		}},
		{"a TCP super-packet on a no-NAT route sent whole", func() ([]byte, int, offload.Header) { return tcpSuperPacket(lanHost, site, 40000, 5201, 20000, 1448) }},
		{"a UDP super-packet sent whole", func() ([]byte, int, offload.Header) {
			return udpSuperPacket(lanHost, remote, 40001, 51820, 44*1400, 1400)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, n, h := tc.pkt()
			buf := make([]byte, len(tmpl))
			run := func() {
				copy(buf, tmpl)
				o.reset()
				segs.Reset()
				c.fromTUN(buf, n, h, &p, o, segs)
				if len(o.wan) != 1 {
					t.Fatalf("%d packets to the WAN", len(o.wan))
				}
			}
			run() // the mapping is created on the first packet
			if a := testing.AllocsPerRun(100, run); a != 0 {
				t.Errorf("%v allocations per packet", a)
			}
		})
	}
}
