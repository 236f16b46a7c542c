// Package offload turns packets carrying the kernel's offload metadata into
// wire packets and back: the virtio-net header (decode and encode), the
// split of a super-packet into wire-sized segments, and the completion of a
// checksum left to "hardware". It is pure code, with no system calls, so
// every parser here is fuzzed.
//
// What a TUN device or a packet socket hands over is not always a finished
// wire packet:
//
//   - With GRO (on a NIC) or TSO (from a local stack), consecutive TCP
//     segments of a flow arrive merged into one super-packet of up to
//     64 KiB; with UDP GRO forwarding (or UDP_SEGMENT from a local
//     sender), consecutive equal-sized UDP datagrams of a flow likewise.
//   - Packets that were never checksummed (GRO results, anything arriving
//     over a veth from a stack with checksum offload) carry only the
//     pseudo-header sum in their TCP or UDP checksum field.
//
// The struct virtio_net_hdr in front of each packet says which applies.
package offload

import (
	"encoding/binary"
	"errors"
	"fmt"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
)

// HeaderLen is sizeof(struct virtio_net_hdr).
const HeaderLen = 10

// Flags of a virtio-net header (linux/virtio_net.h).
const (
	FlagNeedsChecksum = 1 // VIRTIO_NET_HDR_F_NEEDS_CSUM: checksum from CsumStart to the end is left to do
	FlagDataValid     = 2 // VIRTIO_NET_HDR_F_DATA_VALID: the checksum was verified (after GRO)
)

// Segmentation types of a virtio-net header (linux/virtio_net.h).
const (
	GSONone  = 0    // VIRTIO_NET_HDR_GSO_NONE: an ordinary packet
	GSOTCPv4 = 1    // VIRTIO_NET_HDR_GSO_TCPV4
	GSOUDP   = 3    // VIRTIO_NET_HDR_GSO_UDP (UFO, fragmenting)
	GSOTCPv6 = 4    // VIRTIO_NET_HDR_GSO_TCPV6
	GSOUDPL4 = 5    // VIRTIO_NET_HDR_GSO_UDP_L4: UDP segmentation
	GSOECN   = 0x80 // VIRTIO_NET_HDR_GSO_ECN: the TCP segments carry ECN marks
)

// UDPChecksumOffset is the offset of the UDP checksum field (gVisor's
// header package names only TCP's).
const UDPChecksumOffset = 6

// Header is struct virtio_net_hdr as the kernel writes it for a TUN device
// with IFF_VNET_HDR and for a packet socket with PACKET_VNET_HDR: in host
// byte order (the legacy, native-endian layout; gVisor's
// header.VirtioNetHeader reads big-endian, so it does not fit here).
// CsumStart counts from the first byte after the header: the IPv4 header on
// a TUN, the link header on a packet socket.
type Header struct {
	Flags      uint8
	GSOType    uint8
	HdrLen     uint16 // bytes of headers in front of the payload (a hint)
	GSOSize    uint16 // payload bytes per segment
	CsumStart  uint16
	CsumOffset uint16 // of the checksum field, from CsumStart
}

// Decode reads a header from the first HeaderLen bytes of b; b must be at
// least that long.
func Decode(b []byte) Header {
	_ = b[HeaderLen-1]
	return Header{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     binary.NativeEndian.Uint16(b[2:]),
		GSOSize:    binary.NativeEndian.Uint16(b[4:]),
		CsumStart:  binary.NativeEndian.Uint16(b[6:]),
		CsumOffset: binary.NativeEndian.Uint16(b[8:]),
	}
}

// Encode writes h into the first HeaderLen bytes of b; b must be at least
// that long.
func (h Header) Encode(b []byte) {
	_ = b[HeaderLen-1]
	b[0] = h.Flags
	b[1] = h.GSOType
	binary.NativeEndian.PutUint16(b[2:], h.HdrLen)
	binary.NativeEndian.PutUint16(b[4:], h.GSOSize)
	binary.NativeEndian.PutUint16(b[6:], h.CsumStart)
	binary.NativeEndian.PutUint16(b[8:], h.CsumOffset)
}

// IsSuperPacket reports whether the packet behind h is a super-packet, to be
// split into segments of GSOSize payload bytes.
func (h Header) IsSuperPacket() bool { return h.GSOType&^GSOECN != GSONone }

// NeedsChecksum reports whether the packet's transport checksum holds only
// the pseudo-header sum.
func (h Header) NeedsChecksum() bool { return h.Flags&FlagNeedsChecksum != 0 }

// IsTCPv4 reports whether h describes a TCP/IPv4 super-packet, with or
// without ECN marks.
func (h Header) IsTCPv4() bool { return h.GSOType&^GSOECN == GSOTCPv4 }

// IsUDP reports whether h describes a UDP super-packet (UDP segmentation,
// GSO_UDP_L4: each segment a datagram of its own).
func (h Header) IsUDP() bool { return h.GSOType == GSOUDPL4 }

// CompleteChecksum finishes a checksum the sender left to "hardware": the
// field at start+offset holds the pseudo-header sum, so summing from start
// to the end and complementing gives the real checksum.
func CompleteChecksum(pkt []byte, start, offset int, proto uint8) error {
	if start < header.IPv4MinimumSize || offset < 0 || start+offset+2 > len(pkt) {
		return fmt.Errorf("checksum at %d+%d outside the %d-byte packet", start, offset, len(pkt))
	}
	sum := ^checksum.Checksum(pkt[start:], 0)
	if sum == 0 && proto == nat.ProtoUDP {
		sum = 0xffff // 0 means "no checksum" in UDP
	}
	checksum.Put(pkt[start+offset:], sum)
	return nil
}

// ErrNotSegmentable marks super-packets that cannot be split.
var ErrNotSegmentable = errors.New("super-packet cannot be segmented")

// Split splits the IPv4 super-packet pkt into wire-sized segments, as the
// kernel's own segmentation would have on transmit. Segments after the first
// are written into buffers from next (called once per segment with its exact
// size, in order); the first segment is rewritten in place at the end, and
// its length is returned with the number of segments.
//
// TCP segments get consecutive sequence numbers, FIN/PSH only on the last,
// CWR only on the first; UDP segments (UDP GSO) get their own length. Every
// segment gets its own IP total length, an incremented IP ID and complete
// checksums.
func Split(pkt []byte, h Header, next func(size int) []byte) (firstLen, segments int, err error) {
	ip := header.IPv4(pkt)
	if !ip.IsValid(len(pkt)) {
		return 0, 0, fmt.Errorf("%w: bad IPv4 header", ErrNotSegmentable)
	}
	pkt = pkt[:ip.TotalLength()]
	ihl := int(ip.HeaderLength())
	proto := ip.Protocol()
	var l4Len int
	switch h.GSOType &^ GSOECN {
	case GSOTCPv4:
		if proto != nat.ProtoTCP || len(pkt) < ihl+header.TCPMinimumSize {
			return 0, 0, fmt.Errorf("%w: TCP segmentation on protocol %d", ErrNotSegmentable, proto)
		}
		l4Len = int(header.TCP(pkt[ihl:]).DataOffset())
		if l4Len < header.TCPMinimumSize || ihl+l4Len > len(pkt) {
			return 0, 0, fmt.Errorf("%w: bad TCP header length %d", ErrNotSegmentable, l4Len)
		}
	case GSOUDPL4:
		if proto != nat.ProtoUDP || len(pkt) < ihl+header.UDPMinimumSize {
			return 0, 0, fmt.Errorf("%w: UDP segmentation on protocol %d", ErrNotSegmentable, proto)
		}
		l4Len = header.UDPMinimumSize
	default:
		return 0, 0, fmt.Errorf("%w: segmentation type %#x", ErrNotSegmentable, h.GSOType)
	}
	mss := int(h.GSOSize)
	if mss == 0 {
		return 0, 0, fmt.Errorf("%w: segment size 0", ErrNotSegmentable)
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

// ForTUN decides whether a received super-packet (pkt, described by h as a
// packet socket gave it) can go to a TUN device whole, and if so returns
// the virtio-net header in the TUN's form. It takes TCP super-packets, and
// UDP ones (GSO_UDP_L4) when udp is set (the TUN was opened with UDP
// segmentation offload), provided they pass Whole, with the checksum left
// to offload (NEEDS_CSUM, from a local sender's TSO) or already verified
// (DATA_VALID, after GRO); the kernel's TUN takes TSO without ECN only. It
// sets the checksum field to the pseudo-header sum over the whole transport
// length, which is what segmentation expects of a NEEDS_CSUM super-packet.
func ForTUN(pkt []byte, h Header, udp bool) (Header, bool) {
	if h.GSOSize == 0 || (!h.NeedsChecksum() && h.Flags&FlagDataValid == 0) {
		return Header{}, false
	}
	var proto uint8
	switch h.GSOType {
	case GSOTCPv4:
		proto = nat.ProtoTCP
	case GSOUDPL4:
		if !udp {
			return Header{}, false
		}
		proto = nat.ProtoUDP
	default:
		return Header{}, false
	}
	ip := header.IPv4(pkt)
	if len(pkt) < header.IPv4MinimumSize {
		return Header{}, false
	}
	ihl := int(ip.HeaderLength())
	if ip.Protocol() != proto || ip.More() || ip.FragmentOffset() != 0 {
		return Header{}, false
	}
	l4Len, ok := transportHeaderLen(pkt, ihl, proto)
	if !ok || !Whole(pkt, ihl, proto) {
		return Header{}, false
	}
	total := uint16(len(pkt) - ihl)
	xsum := header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(proto), ip.SourceAddress(), ip.DestinationAddress(), total)
	var csumOffset uint16
	if proto == nat.ProtoTCP {
		header.TCP(pkt[ihl:]).SetChecksum(xsum)
		csumOffset = header.TCPChecksumOffset
	} else {
		udp := header.UDP(pkt[ihl:])
		if udp.Length() != total {
			return Header{}, false
		}
		udp.SetChecksum(xsum)
		csumOffset = UDPChecksumOffset
	}
	return Header{
		Flags:      FlagNeedsChecksum,
		GSOType:    h.GSOType,
		HdrLen:     uint16(ihl + l4Len),
		GSOSize:    h.GSOSize,
		CsumStart:  uint16(ihl),
		CsumOffset: csumOffset,
	}, true
}

// Whole reports whether the TCP or UDP super-packet pkt (IPv4 header of ihl
// bytes, then the transport header) may be translated once for all its
// segments. Protocols whose payload the NAT reads and rewrites packet by
// packet may not: PPTP control (TCP 1723, Call IDs rewritten), IKE and NAT-T
// (UDP 500 and 4500, each message classified by its SPIs or its non-ESP
// marker). The caller has checked that the transport header is there.
func Whole(pkt []byte, ihl int, proto uint8) bool {
	l4 := pkt[ihl:]
	src, dst := binary.BigEndian.Uint16(l4[0:]), binary.BigEndian.Uint16(l4[2:])
	switch proto {
	case nat.ProtoTCP:
		return src != nat.PortPPTP && dst != nat.PortPPTP
	case nat.ProtoUDP:
		return src != nat.PortIKE && dst != nat.PortIKE && src != nat.PortNATT && dst != nat.PortNATT
	}
	return false
}

// transportHeaderLen is the length of the TCP or UDP header behind an IPv4
// header of ihl bytes, and whether it fits in pkt.
func transportHeaderLen(pkt []byte, ihl int, proto uint8) (int, bool) {
	switch proto {
	case nat.ProtoTCP:
		if len(pkt) < ihl+header.TCPMinimumSize {
			return 0, false
		}
		thl := int(header.TCP(pkt[ihl:]).DataOffset())
		return thl, thl >= header.TCPMinimumSize && ihl+thl <= len(pkt)
	case nat.ProtoUDP:
		return header.UDPMinimumSize, len(pkt) >= ihl+header.UDPMinimumSize
	}
	return 0, false
}

// ForLink returns the header for sending the TCP or UDP super-packet pkt,
// read from a TUN with header h (CsumStart counted from the IPv4 header),
// through a packet socket whose frames carry linkHdr bytes of link header
// in front of it.
func ForLink(pkt []byte, h Header, linkHdr int) Header {
	ip := header.IPv4(pkt)
	ihl := int(ip.HeaderLength())
	l4Len, _ := transportHeaderLen(pkt, ihl, ip.Protocol())
	return Header{
		Flags:      FlagNeedsChecksum,
		GSOType:    h.GSOType,
		HdrLen:     uint16(linkHdr + ihl + l4Len),
		GSOSize:    h.GSOSize,
		CsumStart:  uint16(linkHdr) + h.CsumStart,
		CsumOffset: h.CsumOffset,
	}
}
