package datapath

import (
	"testing"

	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

// FuzzPath feeds arbitrary bytes, with arbitrary offload headers, to both
// directions of the path: nothing may panic, and whatever is queued must
// fit its buffer.
func FuzzPath(f *testing.F) {
	udp, n := udpPacket(lanHost, remote, 40000, 53, 20, 63, false)
	f.Add(udp[Headroom:Headroom+n], uint8(0), uint8(0), uint16(0), uint16(0), uint16(0))
	super, sn, h := tcpSuperPacket(lanHost, remote, 40000, 5201, 4000, 1448)
	f.Add(super[Headroom:Headroom+sn], h.Flags, h.GSOType, h.GSOSize, h.CsumStart, h.CsumOffset)
	// One path for all inputs (a worker runs them one at a time): its
	// engine's state carries over, as on a running router.
	c := testCore(f, 1400)
	c.dev.superWAN = superPacketWAN{}
	o, segs := newTestOutbox(), &offload.Segments{Headroom: Headroom}
	buf := make([]byte, Headroom+MaxPacket)
	f.Fuzz(func(t *testing.T, pkt []byte, flags, gsoType uint8, gsoSize, csumStart, csumOffset uint16) {
		if len(pkt) > MaxPacket || gsoSize < 64 && gsoSize != 0 {
			// The kernel's segments carry at least an MSS's worth; tiny
			// ones only make a run allocate a buffer per payload byte.
			return
		}
		o.reset()
		segs.Reset()
		h := offload.Header{Flags: flags, GSOType: gsoType, GSOSize: gsoSize, CsumStart: csumStart, CsumOffset: csumOffset}
		var p nat.Packet
		copy(buf[Headroom:], pkt)
		c.fromTUN(buf, len(pkt), h, &p, o, segs)
		copy(buf[Headroom:], pkt)
		c.fromWAN(buf, len(pkt), offload.Header{}, &p, o)
		for _, q := range [][][]byte{o.wan, o.lan} {
			for _, b := range q {
				if len(b) < Headroom {
					t.Fatalf("a queued buffer of %d bytes has no headroom", len(b))
				}
			}
		}
	})
}
