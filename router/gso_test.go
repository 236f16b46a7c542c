package router

import (
	"encoding/binary"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
)

// tcpSuperPacket builds a TCP GSO super-packet as the TUN hands it over:
// virtio-net header (TCPV4, NEEDS_CSUM, csum_start at the TCP header) in the
// headroom, checksum field holding the pseudo-header sum.
func tcpSuperPacket(src, dst [4]byte, sport, dport uint16, payload, mss int) ([]byte, int) {
	total := header.IPv4MinimumSize + header.TCPMinimumSize + payload
	buf := make([]byte, packetOffset+maxPacket)
	pkt := buf[packetOffset : packetOffset+total]
	ip := header.IPv4(pkt)
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(total), TTL: 63, Flags: header.IPv4FlagDontFragment, ID: 9,
		Protocol: uint8(header.TCPProtocolNumber), SrcAddr: tcpip.AddrFrom4(src), DstAddr: tcpip.AddrFrom4(dst)})
	ip.SetChecksum(^ip.CalculateChecksum())
	tcp := header.TCP(pkt[header.IPv4MinimumSize:])
	tcp.Encode(&header.TCPFields{SrcPort: sport, DstPort: dport, SeqNum: 1000, AckNum: 1, DataOffset: header.TCPMinimumSize,
		Flags: header.TCPFlagAck | header.TCPFlagPsh, WindowSize: 1000})
	for i := range payload {
		pkt[header.IPv4MinimumSize+header.TCPMinimumSize+i] = byte(i)
	}
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp))))
	h := buf[packetOffset-vnetHdrLen : packetOffset]
	h[0] = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
	h[1] = unix.VIRTIO_NET_HDR_GSO_TCPV4
	binary.NativeEndian.PutUint16(h[2:], uint16(header.IPv4MinimumSize+header.TCPMinimumSize))
	binary.NativeEndian.PutUint16(h[4:], uint16(mss))
	binary.NativeEndian.PutUint16(h[6:], header.IPv4MinimumSize)
	binary.NativeEndian.PutUint16(h[8:], 16)
	return buf, total
}

// tcpChecksumAfterOffload completes a partial checksum as offload would and
// reports whether the segment then verifies.
func tcpChecksumAfterOffload(pkt []byte) bool {
	ip := header.IPv4(pkt)
	tcp := header.TCP(pkt[ip.HeaderLength():ip.TotalLength()])
	c := append([]byte(nil), tcp...)
	header.TCP(c).SetChecksum(^checksum.Checksum(c, 0))
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(c)))
	return checksum.Checksum(c, xsum) == 0xffff
}

func TestWholeSuperPackets(t *testing.T) {
	t.Run("a masqueraded TCP super-packet is translated once and queued whole", func(t *testing.T) {
		c := testCore(t, 1500)
		c.gsoOut = true
		o, segs := newTestOutbox(), &segmentPool{offset: packetOffset}
		buf, n := tcpSuperPacket(lanHost, remote, 40000, 5201, 20000, 1448)
		var p nat.Packet
		c.fromTUN(buf, n, &p, o, segs)
		if len(o.wan) != 1 || !o.whole[0] {
			t.Fatalf("%d packets queued, whole %v", len(o.wan), o.whole)
		}
		pkt := o.wan[0][packetOffset:]
		ip := header.IPv4(pkt)
		if ip.SourceAddress().As4() != wanAddr || int(ip.TotalLength()) != n || !ip.IsChecksumValid() {
			t.Errorf("left as %v, %d bytes", ip.SourceAddress(), ip.TotalLength())
		}
		if !tcpChecksumAfterOffload(pkt) {
			t.Error("the partial checksum does not verify after offload")
		}
		if h := decodeVnetHdr(o.wan[0][packetOffset-vnetHdrLen : packetOffset]); h.gsoSize != 1448 || !h.isGSO() {
			t.Errorf("virtio header %+v", h)
		}
	})
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
			c.gsoOut = tc.gsoOut
			o, segs := newTestOutbox(), &segmentPool{offset: packetOffset}
			buf, n := tcpSuperPacket(lanHost, remote, tc.sport, tc.dport, 4000, 1448)
			var p nat.Packet
			c.fromTUN(buf, n, &p, o, segs)
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
				if o.whole[i] {
					t.Fatalf("packet %d queued whole", i)
				}
				pkt := b[packetOffset:]
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
	tcp := header.TCP(pkt[ip.HeaderLength():ip.TotalLength()])
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(tcp)))
	if checksum.Checksum(tcp, xsum) != 0xffff {
		return errBadChecksum("TCP")
	}
	return nil
}

type errBadChecksum string

func (e errBadChecksum) Error() string { return string(e) + " checksum wrong" }

func TestKeepWhole(t *testing.T) {
	vnet := func(flags, gso uint8, size int) vnetHdr {
		return vnetHdr{flags: flags, gsoType: gso, gsoSize: uint16(size), csumStart: 14 + 20, csumOffset: 16}
	}
	for _, tc := range []struct {
		name  string
		dport uint16
		h     vnetHdr
		want  bool
	}{
		{"a TCP super-packet left to checksum offload stays whole", 443, vnet(unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, unix.VIRTIO_NET_HDR_GSO_TCPV4, 1448), true},
		{"a GRO super-packet with a verified checksum stays whole", 443, vnet(unix.VIRTIO_NET_HDR_F_DATA_VALID, unix.VIRTIO_NET_HDR_GSO_TCPV4, 1448), true},
		{"a super-packet with ECN marks is split (the TUN takes no TSO_ECN)", 443, vnet(unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, unix.VIRTIO_NET_HDR_GSO_TCPV4|unix.VIRTIO_NET_HDR_GSO_ECN, 1448), false},
		{"PPTP control is split", nat.PortPPTP, vnet(unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, unix.VIRTIO_NET_HDR_GSO_TCPV4, 1448), false},
		{"a super-packet with an unverified checksum is split", 443, vnet(0, unix.VIRTIO_NET_HDR_GSO_TCPV4, 1448), false},
		{"an ordinary packet is not a super-packet", 443, vnet(unix.VIRTIO_NET_HDR_F_NEEDS_CSUM, unix.VIRTIO_NET_HDR_GSO_NONE, 0), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			buf, n := tcpSuperPacket(remote, wanAddr, 80, tc.dport, 5000, 1448)
			pkt := buf[packetOffset : packetOffset+n]
			header.TCP(pkt[20:]).SetChecksum(0x1234) // whatever GRO left there
			hdr := make([]byte, vnetHdrLen)
			if got := keepWhole(pkt, tc.h, hdr); got != tc.want {
				t.Fatalf("keepWhole = %v", got)
			}
			if !tc.want {
				return
			}
			h := decodeVnetHdr(hdr)
			if h.csumStart != 20 || h.csumOffset != 16 || h.gsoSize != 1448 || h.hdrLen != 40 || !h.needsChecksum() {
				t.Errorf("TUN header %+v", h)
			}
			if !tcpChecksumAfterOffload(pkt) {
				t.Error("checksum field is not the pseudo-header sum")
			}
		})
	}
}

func TestNeighbourUse(t *testing.T) {
	for _, tc := range []struct {
		name          string
		state         int
		usable, stale bool
	}{
		{"a reachable neighbour is used as it is", netlink.NUD_REACHABLE, true, false},
		{"a permanent neighbour is used as it is", netlink.NUD_PERMANENT, true, false},
		{"a neighbour being verified is used as it is", netlink.NUD_DELAY, true, false},
		{"a neighbour being probed is used as it is", netlink.NUD_PROBE, true, false},
		{"a stale neighbour is used, and one packet goes through the kernel to verify it", netlink.NUD_STALE, true, true},
		{"an incomplete neighbour is not used", netlink.NUD_INCOMPLETE, false, false},
		{"a failed neighbour is not used", netlink.NUD_FAILED, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			usable, stale := neighbourUse(tc.state)
			if usable != tc.usable || stale != tc.stale {
				t.Errorf("got usable %v stale %v", usable, stale)
			}
		})
	}
}

func TestForwardingAllocatesNothingPerPacket(t *testing.T) {
	c := testCore(t, 1500)
	c.gsoOut = true
	o, segs := newTestOutbox(), &segmentPool{offset: packetOffset}
	var p nat.Packet
	for _, tc := range []struct {
		name string
		pkt  func() ([]byte, int)
	}{
		{"a TCP super-packet sent whole", func() ([]byte, int) { return tcpSuperPacket(lanHost, remote, 40000, 5201, 20000, 1448) }},
		{"an ordinary UDP packet", func() ([]byte, int) { return udpPacket(lanHost, remote, 5000, 53, 100, 64, false) }},
		{"a UDP packet on a no-NAT route, its flow tracked", func() ([]byte, int) { return udpPacket(lanHost, site, 5000, 53, 100, 64, false) }},
		{"a TCP super-packet on a no-NAT route sent whole", func() ([]byte, int) { return tcpSuperPacket(lanHost, site, 40000, 5201, 20000, 1448) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl, n := tc.pkt()
			buf := make([]byte, len(tmpl))
			run := func() {
				copy(buf, tmpl)
				o.reset()
				segs.reset()
				c.fromTUN(buf, n, &p, o, segs)
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
