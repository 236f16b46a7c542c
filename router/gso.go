package router

import (
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
)

// The fast path for bulk TCP: a GSO super-packet read whole from the TUN is
// translated once (its checksum is a partial one, nat.Packet.PartialChecksum)
// and queued for the WAN as one frame, when nothing about it needs per
// segment work. Everything else is split into wire-sized segments first and
// takes the ordinary path, packet by packet.

// segmentPool hands out buffers (with headroom) for the segments of split
// super-packets; they live until the pass is flushed.
type segmentPool struct {
	offset int
	bufs   [][]byte
	used   int
	out    [][]byte // segments handed out, buf[:offset+size]
}

func (s *segmentPool) reset() {
	s.used = 0
	s.out = s.out[:0]
}

func (s *segmentPool) next(size int) []byte {
	if s.used == len(s.bufs) {
		s.bufs = append(s.bufs, nil)
	}
	if cap(s.bufs[s.used]) < s.offset+size {
		s.bufs[s.used] = make([]byte, s.offset+max(size, 2048))
	}
	b := s.bufs[s.used][:s.offset+size]
	s.used++
	s.out = append(s.out, b)
	return b[s.offset:]
}

// fromTUN handles one packet read whole from the TUN, its virtio-net header
// in the vnetHdrLen bytes before c.offset.
func (c *core) fromTUN(buf []byte, n int, p *nat.Packet, o *outbox, segs *segmentPool) {
	h := decodeVnetHdr(buf[c.offset-vnetHdrLen : c.offset])
	pkt := buf[c.offset : c.offset+n]
	switch {
	case h.isGSO():
		if c.gsoOut && c.sendWhole(buf, n, h, p, o) {
			return
		}
		from := len(segs.out)
		first, _, err := splitGSO(pkt, h, segs.next)
		if err != nil {
			c.drop(nat.DropMalformed)
			return
		}
		c.fromLAN(buf, first, p, o)
		for _, seg := range segs.out[from:] {
			c.fromLAN(seg, len(seg)-c.offset, p, o)
		}
	case h.needsChecksum():
		if len(pkt) < header.IPv4MinimumSize {
			c.drop(nat.DropMalformed)
			return
		}
		if err := completeChecksum(pkt, int(h.csumStart), int(h.csumOffset), header.IPv4(pkt).Protocol()); err != nil {
			c.drop(nat.DropMalformed)
			return
		}
		c.fromLAN(buf, n, p, o)
	default:
		c.fromLAN(buf, n, p, o)
	}
}

// sendWhole translates and queues a TCP super-packet for the WAN as one
// frame, or reports false when it must be split: it is not plain TCP with a
// partial checksum, it is PPTP control (rewritten byte by byte), its
// destination is not out on the WAN (local, service, hairpin), or its
// segments would not fit the WAN MTU (the segments then get Fragmentation
// Needed, or fragmentation, one by one).
func (c *core) sendWhole(buf []byte, n int, h vnetHdr, p *nat.Packet, o *outbox) bool {
	if h.gsoType&^unix.VIRTIO_NET_HDR_GSO_ECN != unix.VIRTIO_NET_HDR_GSO_TCPV4 || !h.needsChecksum() {
		return false
	}
	if p.Parse(buf[c.offset:c.offset+n]) != nat.DropNone || p.Proto != nat.ProtoTCP || p.IsFragment() {
		return false
	}
	ihl := int(p.IP.HeaderLength())
	if int(h.csumStart) != ihl || h.csumOffset != 16 || h.gsoSize == 0 {
		return false
	}
	if p.SrcPort == nat.PortPPTP || p.DstPort == nat.PortPPTP {
		return false
	}
	route := c.lanRoute(p)
	if (route != lanMasquerade && route != lanRouted) || p.Dst == c.wan() {
		return false // local, service or hairpin: per segment
	}
	if ihl+int(header.TCP(p.L4).DataOffset())+int(h.gsoSize) > c.wanMTU {
		return false
	}
	p.PartialChecksum = true
	c.routeOut(buf, p, o, route == lanMasquerade, true)
	return true
}
