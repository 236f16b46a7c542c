package datapath

import (
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// fragment splits the IPv4 packet pkt (DF clear) into fragments of at most
// mtu bytes (RFC 791), each written into a fresh buffer from next (packet
// area only: the caller handles headroom) and handed to emit with its
// length. Later fragments keep the whole header, options included: vpnmasq
// does not strip non-copied options, a simplification receivers accept. It
// returns false when the packet cannot be split (no buffers, or a header too
// big for the MTU); fragments already emitted are then incomplete and the
// receiver discards them after its reassembly timeout.
func fragment(pkt []byte, mtu int, next func() []byte, emit func(n int)) bool {
	ip := header.IPv4(pkt)
	hlen := int(ip.HeaderLength())
	payload := pkt[hlen:]
	chunk := (mtu - hlen) &^ 7 // fragment payloads are multiples of 8 bytes
	if chunk <= 0 {
		return false
	}
	baseOffset := int(ip.FragmentOffset()) // refragmenting a fragment keeps its place
	lastMF := ip.More()
	for off := 0; off < len(payload); off += chunk {
		end := min(off+chunk, len(payload))
		buf := next()
		if len(buf) < hlen+end-off {
			return false
		}
		n := copy(buf, pkt[:hlen])
		n += copy(buf[n:], payload[off:end])
		f := header.IPv4(buf[:n])
		flags := ip.Flags() &^ header.IPv4FlagMoreFragments
		if end < len(payload) || lastMF {
			flags |= header.IPv4FlagMoreFragments
		}
		f.SetFlagsFragmentOffset(flags, uint16(baseOffset+off))
		f.SetTotalLength(uint16(n))
		f.SetChecksum(0)
		f.SetChecksum(^f.CalculateChecksum())
		emit(n)
	}
	return true
}
