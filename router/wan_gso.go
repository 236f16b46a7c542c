package router

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
)

// What the capture socket hands over is not always a finished wire packet:
//
//   - With GRO on the WAN interface (the default on most NICs), the kernel
//     has already merged consecutive TCP segments of a flow into one "super
//     packet" of up to 64 KiB before a packet socket sees it.
//   - Packets that were never checksummed yet (GRO results, and anything
//     arriving over a veth from a local stack with checksum offload) carry
//     only the pseudo-header sum in their TCP/UDP checksum field.
//
// With PACKET_VNET_HDR the kernel prepends a struct virtio_net_hdr that says
// which of these applies. The functions here turn such packets back into
// what was on the wire: MTU-sized segments with complete checksums, so the
// rest of vpnmasq only ever sees ordinary IPv4 packets.

// vnetHdrLen is sizeof(struct virtio_net_hdr).
const vnetHdrLen = 10

// vnetHdr is struct virtio_net_hdr as a packet socket writes it: in host
// byte order (the kernel uses the legacy, native-endian layout for packet
// sockets; gVisor's header.VirtioNetHeader reads big-endian, so it does not
// fit here).
type vnetHdr struct {
	flags      uint8
	gsoType    uint8
	hdrLen     uint16
	gsoSize    uint16
	csumStart  uint16
	csumOffset uint16
}

func decodeVnetHdr(b []byte) vnetHdr {
	return vnetHdr{
		flags:      b[0],
		gsoType:    b[1],
		hdrLen:     binary.NativeEndian.Uint16(b[2:]),
		gsoSize:    binary.NativeEndian.Uint16(b[4:]),
		csumStart:  binary.NativeEndian.Uint16(b[6:]),
		csumOffset: binary.NativeEndian.Uint16(b[8:]),
	}
}

func (h vnetHdr) isGSO() bool {
	return h.gsoType&^unix.VIRTIO_NET_HDR_GSO_ECN != unix.VIRTIO_NET_HDR_GSO_NONE
}

func (h vnetHdr) needsChecksum() bool { return h.flags&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 }

// completeChecksum finishes a checksum the sender left to "hardware": the
// field at start+offset holds the pseudo-header sum, so summing from start
// to the end and complementing gives the real checksum.
func completeChecksum(pkt []byte, start, offset int, proto uint8) error {
	if start < header.IPv4MinimumSize || start+offset+2 > len(pkt) {
		return fmt.Errorf("checksum at %d+%d outside the %d-byte packet", start, offset, len(pkt))
	}
	sum := ^checksum.Checksum(pkt[start:], 0)
	if sum == 0 && proto == nat.ProtoUDP {
		sum = 0xffff // 0 means "no checksum" in UDP
	}
	checksum.Put(pkt[start+offset:], sum)
	return nil
}

// errNotSegmentable marks super-packets vpnmasq cannot split.
var errNotSegmentable = errors.New("GSO packet cannot be segmented")

// splitGSO splits the IPv4 super-packet pkt into wire-sized segments, as the
// kernel's own GSO would have on transmit. Segments after the first are
// written into buffers from next (called once per segment with its exact
// size, in order); the first segment is rewritten in place at the end, and
// its length is returned with the number of segments.
//
// TCP segments get consecutive sequence numbers, FIN/PSH only on the last,
// CWR only on the first; UDP segments (UDP GSO) get their own length. Every
// segment gets its own IP total length, an incremented IP ID and complete
// checksums.
func splitGSO(pkt []byte, h vnetHdr, next func(size int) []byte) (firstLen, segments int, err error) {
	ip := header.IPv4(pkt)
	if !ip.IsValid(len(pkt)) {
		return 0, 0, fmt.Errorf("%w: bad IPv4 header", errNotSegmentable)
	}
	pkt = pkt[:ip.TotalLength()]
	ihl := int(ip.HeaderLength())
	proto := ip.Protocol()
	var l4Len int
	switch h.gsoType &^ unix.VIRTIO_NET_HDR_GSO_ECN {
	case unix.VIRTIO_NET_HDR_GSO_TCPV4:
		if proto != nat.ProtoTCP || len(pkt) < ihl+header.TCPMinimumSize {
			return 0, 0, fmt.Errorf("%w: TCP GSO on protocol %d", errNotSegmentable, proto)
		}
		l4Len = int(header.TCP(pkt[ihl:]).DataOffset())
		if l4Len < header.TCPMinimumSize || ihl+l4Len > len(pkt) {
			return 0, 0, fmt.Errorf("%w: bad TCP header length %d", errNotSegmentable, l4Len)
		}
	case unix.VIRTIO_NET_HDR_GSO_UDP_L4:
		if proto != nat.ProtoUDP || len(pkt) < ihl+header.UDPMinimumSize {
			return 0, 0, fmt.Errorf("%w: UDP GSO on protocol %d", errNotSegmentable, proto)
		}
		l4Len = header.UDPMinimumSize
	default:
		return 0, 0, fmt.Errorf("%w: GSO type %#x", errNotSegmentable, h.gsoType)
	}
	mss := int(h.gsoSize)
	if mss == 0 {
		return 0, 0, fmt.Errorf("%w: segment size 0", errNotSegmentable)
	}
	hdrs := ihl + l4Len
	payload := len(pkt) - hdrs
	segments = max(1, (payload+mss-1)/mss)

	for k := 1; k < segments; k++ {
		from := hdrs + k*mss
		to := min(from+mss, len(pkt))
		seg := next(hdrs + to - from)
		copy(seg, pkt[:hdrs])
		copy(seg[hdrs:], pkt[from:to])
		finishSegment(seg, ihl, k, k == segments-1, mss)
	}
	firstLen = min(len(pkt), hdrs+mss)
	finishSegment(pkt[:firstLen], ihl, 0, segments == 1, mss)
	return firstLen, segments, nil
}

// finishSegment fixes the headers of segment k, a copy of the super-packet's
// headers followed by its share of the payload.
func finishSegment(seg []byte, ihl, k int, last bool, mss int) {
	ip := header.IPv4(seg)
	ip.SetTotalLength(uint16(len(seg)))
	ip.SetID(ip.ID() + uint16(k))
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	src, dst := ip.SourceAddress(), ip.DestinationAddress()

	switch ip.Protocol() {
	case nat.ProtoTCP:
		tcp := header.TCP(seg[ihl:])
		tcp.SetSequenceNumber(tcp.SequenceNumber() + uint32(k*mss))
		flags := tcp.Flags()
		if k > 0 {
			flags &^= header.TCPFlagCwr
		}
		if !last {
			flags &^= header.TCPFlagFin | header.TCPFlagPsh
		}
		tcp.SetFlags(uint8(flags))
		tcp.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcp)))
		xsum = checksum.Checksum(tcp[tcp.DataOffset():], xsum)
		tcp.SetChecksum(^tcp.CalculateChecksum(xsum))
	case nat.ProtoUDP:
		udp := header.UDP(seg[ihl:])
		udp.SetLength(uint16(len(udp)))
		udp.SetChecksum(0)
		xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(udp)))
		xsum = checksum.Checksum(udp[header.UDPMinimumSize:], xsum)
		sum := ^udp.CalculateChecksum(xsum)
		if sum == 0 {
			sum = 0xffff
		}
		udp.SetChecksum(sum)
	}
}

// keepWhole decides whether a received super-packet can go to the TUN
// whole, and if so writes its virtio-net header in the TUN's form into hdr:
// plain TCP (the kernel's TUN takes TSO without ECN), not PPTP control
// (rewritten byte by byte), with the checksum left to offload (NEEDS_CSUM,
// from a local sender's TSO) or already verified (DATA_VALID, after GRO).
// The checksum field is set to the pseudo-header sum over the whole TCP
// length, which is what segmentation expects of a NEEDS_CSUM super-packet.
func keepWhole(pkt []byte, h vnetHdr, hdr []byte) bool {
	if h.gsoType != unix.VIRTIO_NET_HDR_GSO_TCPV4 || h.gsoSize == 0 ||
		(!h.needsChecksum() && h.flags&unix.VIRTIO_NET_HDR_F_DATA_VALID == 0) {
		return false
	}
	ip := header.IPv4(pkt)
	ihl := int(ip.HeaderLength())
	if ip.Protocol() != nat.ProtoTCP || ip.More() || ip.FragmentOffset() != 0 || len(pkt) < ihl+header.TCPMinimumSize {
		return false
	}
	tcp := header.TCP(pkt[ihl:])
	thl := int(tcp.DataOffset())
	if thl < header.TCPMinimumSize || ihl+thl > len(pkt) || tcp.SourcePort() == nat.PortPPTP || tcp.DestinationPort() == nat.PortPPTP {
		return false
	}
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(len(pkt)-ihl)))
	hdr[0] = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
	hdr[1] = unix.VIRTIO_NET_HDR_GSO_TCPV4
	binary.NativeEndian.PutUint16(hdr[2:], uint16(ihl+thl))
	binary.NativeEndian.PutUint16(hdr[4:], h.gsoSize)
	binary.NativeEndian.PutUint16(hdr[6:], uint16(ihl))
	binary.NativeEndian.PutUint16(hdr[8:], 16)
	return true
}
