// Package wan is the WAN transport: it captures the packets that belong to
// vpnmasq on the WAN interface (an AF_PACKET socket with a classic BPF filter
// built from a Capture), and sends packets out of it, as Ethernet frames to
// the next hop's link address through a packet socket where that address is
// resolved, or through a raw IPv4 socket that lets the host route them. It
// implements datapath.WAN and datapath.SuperPacketWAN.
package wan

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/nat"
)

// Capture says which packets arriving on the WAN interface belong to vpnmasq.
type Capture struct {
	Interface string
	Addr      netip.Addr // the WAN address
	// Ports are TCP and UDP destination ports on Addr owned by the NAT
	// (mapping range, forwards, fixed ports such as 500/4500).
	Ports []config.PortRange
	// Protocols are IP protocols to Addr owned entirely (47 GRE, 50 ESP, 51 AH).
	Protocols []uint8
	// ICMP captures ICMP to Addr too (echo replies and errors) without
	// guarding it: the host still answers its own pings.
	ICMP bool
	// Prefixes are destinations (the LAN prefixes) whose traffic arriving
	// on the WAN is captured and guarded from the host's own forwarding.
	Prefixes []netip.Prefix
}

// Validate reports the first thing that makes c unusable for a capture.
func (c Capture) Validate() error {
	if c.Interface == "" {
		return errors.New("capture: no WAN interface")
	}
	if !c.Addr.Is4() {
		return fmt.Errorf("capture: WAN address %v is not an IPv4 address", c.Addr)
	}
	for _, r := range c.Ports {
		if r.Last < r.First {
			return fmt.Errorf("capture: port range %d-%d is reversed", r.First, r.Last)
		}
	}
	for _, p := range c.Protocols {
		switch p {
		case nat.ProtoTCP, nat.ProtoUDP:
			return fmt.Errorf("capture: protocol %d is captured by port, not as a whole protocol", p)
		case nat.ProtoICMP:
			return errors.New("capture: ICMP is captured with the ICMP switch, never owned as a whole protocol")
		}
	}
	for _, p := range c.Prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("capture: prefix %v is not an IPv4 prefix", p)
		}
	}
	return nil
}

// MergePortRanges sorts ranges and joins overlapping or adjacent ones, so
// filters test each port once and nftables interval sets, which refuse
// overlapping elements, accept them.
func MergePortRanges(ranges []config.PortRange) []config.PortRange {
	rs := make([]Range, 0, len(ranges))
	for _, r := range ranges {
		if r.Last < r.First {
			continue
		}
		rs = append(rs, Range{First: uint32(r.First), Last: uint32(r.Last)})
	}
	merged := mergeRanges(rs)
	out := make([]config.PortRange, len(merged))
	for i, r := range merged {
		out[i] = config.PortRange{First: uint16(r.First), Last: uint16(r.Last)}
	}
	return out
}

// Range is an inclusive range of IPv4 addresses (or ports) as numbers, as
// the capture filter and the host's nftables sets compare them.
type Range struct {
	First, Last uint32
}

// PrefixRanges turns IPv4 prefixes into merged address ranges; prefixes
// that contain each other or touch collapse into one range.
func PrefixRanges(prefixes []netip.Prefix) []Range {
	rs := make([]Range, 0, len(prefixes))
	for _, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			continue
		}
		p = p.Masked()
		first := addrToUint32(p.Addr())
		hostBits := 32 - p.Bits()
		last := first | uint32(uint64(1)<<hostBits-1)
		rs = append(rs, Range{First: first, Last: last})
	}
	return mergeRanges(rs)
}

func mergeRanges(rs []Range) []Range {
	if len(rs) == 0 {
		return nil
	}
	sorted := append([]Range(nil), rs...)
	slices.SortFunc(sorted, func(a, b Range) int { return cmp.Compare(a.First, b.First) })
	out := []Range{sorted[0]}
	for _, r := range sorted[1:] {
		last := &out[len(out)-1]
		// Adjacent ranges merge too; the Last+1 test cannot overflow here
		// because a range ending at the maximum swallows everything after it.
		if last.Last == math.MaxUint32 || r.First <= last.Last+1 {
			last.Last = max(last.Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return out
}

func addrToUint32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// UniqueProtocols returns ps without repetitions, in first-seen order.
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
