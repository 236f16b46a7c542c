// Package interval turns port ranges, IPv4 prefixes and protocol lists into
// the sorted, non-overlapping form that both of vpnmasq's kernel filters
// need: the WAN capture's BPF program tests each range once, and nftables
// interval sets refuse overlapping elements. Pure code, no system calls.
package interval

import (
	"cmp"
	"encoding/binary"
	"math"
	"net/netip"
	"slices"

	"github.com/vpnmasq/vpnmasq/config"
)

// Range is an inclusive range of IPv4 addresses or ports as numbers.
type Range struct {
	First, Last uint32
}

// Ports turns port ranges into merged number ranges; a reversed range is
// empty and left out.
func Ports(ports []config.PortRange) []Range {
	rs := make([]Range, 0, len(ports))
	for _, r := range ports {
		if r.Last < r.First {
			continue
		}
		rs = append(rs, Range{First: uint32(r.First), Last: uint32(r.Last)})
	}
	return Merge(rs)
}

// MergePorts sorts port ranges and joins those that overlap or touch; a
// reversed range is left out.
func MergePorts(ports []config.PortRange) []config.PortRange {
	merged := Ports(ports)
	out := make([]config.PortRange, len(merged))
	for i, r := range merged {
		out[i] = config.PortRange{First: uint16(r.First), Last: uint16(r.Last)}
	}
	return out
}

// Prefixes turns IPv4 prefixes into merged address ranges; prefixes that
// contain each other or touch collapse into one range, host bits are
// ignored, anything but a valid IPv4 prefix is left out.
func Prefixes(prefixes []netip.Prefix) []Range {
	rs := make([]Range, 0, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		first := Addr(p.Addr())
		last := first | uint32(uint64(1)<<(32-p.Bits())-1)
		rs = append(rs, Range{First: first, Last: last})
	}
	return Merge(rs)
}

// Merge sorts ranges and joins those that overlap or touch. It does not
// change rs.
func Merge(rs []Range) []Range {
	if len(rs) == 0 {
		return nil
	}
	sorted := slices.Clone(rs)
	slices.SortFunc(sorted, func(a, b Range) int { return cmp.Compare(a.First, b.First) })
	out := []Range{sorted[0]}
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

// Addr is an IPv4 address as a number (big-endian); 0 for anything else.
func Addr(a netip.Addr) uint32 {
	if !a.Is4() {
		return 0
	}
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// UniqueProtocols returns ps without repetitions, in first-seen order: a
// filter tests each once, and a set refuses an element added twice.
func UniqueProtocols(ps []uint8) []uint8 {
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
