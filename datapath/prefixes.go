package datapath

import (
	"net/netip"
	"sync/atomic"
)

// prefixSet answers "is this address in one of these prefixes" on the packet
// path without allocating. Router configurations hold a handful of prefixes,
// so a linear scan over masked uint32s beats any tree.
type prefixSet []prefix32

type prefix32 struct{ net, mask uint32 }

func newPrefixSet(ps []netip.Prefix) prefixSet {
	s := make(prefixSet, 0, len(ps))
	for _, p := range ps {
		p = p.Masked()
		bits := p.Bits()
		mask := uint32(0)
		if bits > 0 {
			mask = ^uint32(0) << (32 - bits)
		}
		s = append(s, prefix32{net: be32(p.Addr().As4()), mask: mask})
	}
	return s
}

func (s prefixSet) contains(a [4]byte) bool {
	v := be32(a)
	for _, p := range s {
		if v&p.mask == p.net {
			return true
		}
	}
	return false
}

func be32(a [4]byte) uint32 {
	return uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
}

// isMartian reports addresses the router never forwards from or to (RFC
// 1812 section 5.3.7): "this network", loopback, multicast (vpnmasq routes
// unicast only), limited broadcast and the reserved class E.
func isMartian(a [4]byte) bool {
	return a[0] == 0 || a[0] == 127 || a[0] >= 224
}

// sharedPrefixSet is a prefixSet the packet loops read while the control
// side may replace it (SetNoNAT).
type sharedPrefixSet struct{ p atomic.Pointer[prefixSet] }

func (s *sharedPrefixSet) store(set prefixSet) { s.p.Store(&set) }

func (s *sharedPrefixSet) contains(a [4]byte) bool { return (*s.p.Load()).contains(a) }
