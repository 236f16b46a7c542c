package hostnet

import (
	"cmp"
	"encoding/binary"
	"math"
	"net/netip"
	"slices"

	"github.com/vpnmasq/vpnmasq/config"
)

// addrRange is an inclusive range of IPv4 addresses (or ports) as numbers:
// the form nftables interval sets are written in (intervalElements).
type addrRange struct {
	First, Last uint32
}

// portRanges turns port ranges into merged number ranges; a reversed range
// is empty and left out.
func portRanges(ports []config.PortRange) []addrRange {
	rs := make([]addrRange, 0, len(ports))
	for _, r := range ports {
		if r.Last < r.First {
			continue
		}
		rs = append(rs, addrRange{First: uint32(r.First), Last: uint32(r.Last)})
	}
	return mergeRanges(rs)
}

// mergePortRanges sorts port ranges and joins those that overlap or touch.
func mergePortRanges(ports []config.PortRange) []config.PortRange {
	merged := portRanges(ports)
	out := make([]config.PortRange, len(merged))
	for i, r := range merged {
		out[i] = config.PortRange{First: uint16(r.First), Last: uint16(r.Last)}
	}
	return out
}

// prefixRanges turns IPv4 prefixes into merged address ranges; prefixes
// that contain each other or touch collapse into one range.
func prefixRanges(prefixes []netip.Prefix) []addrRange {
	rs := make([]addrRange, 0, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		a := p.Addr().As4()
		first := binary.BigEndian.Uint32(a[:])
		last := first | uint32(uint64(1)<<(32-p.Bits())-1)
		rs = append(rs, addrRange{First: first, Last: last})
	}
	return mergeRanges(rs)
}

// mergeRanges sorts ranges and joins those that overlap or touch: nftables
// interval sets refuse overlapping elements.
func mergeRanges(rs []addrRange) []addrRange {
	if len(rs) == 0 {
		return nil
	}
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b addrRange) int { return cmp.Compare(a.First, b.First) })
	out := []addrRange{sorted[0]}
	for _, r := range sorted[1:] {
		last := &out[len(out)-1]
		// The Last+1 test cannot overflow here because a range ending at
		// the maximum swallows everything after it.
		if last.Last == math.MaxUint32 || r.First <= last.Last+1 {
			last.Last = max(last.Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return out
}

// dedupe drops repeated protocol numbers, keeping the first of each: a set
// refuses an element added twice.
func dedupe(ps []uint8) []uint8 {
	var seen [256]bool
	out := make([]uint8, 0, len(ps))
	for _, p := range ps {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}
