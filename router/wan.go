package router

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strings"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/nat"
)

// WAN moves whole IPv4 packets (starting at the IP header) to and from the
// outside. The batch shape matches the TUN side so the packet loop handles
// both the same way, and so a faster transport (AF_PACKET rings, vnet
// headers with segmentation offload) can replace the socket pair behind it
// without touching the callers.
//
// Read and Write may run concurrently with each other; concurrent calls of
// the same method are serialised.
type WAN interface {
	// Read blocks until at least one packet arrives; fills bufs[i][offset:]
	// and sizes[i]; returns how many. Packets that are not IPv4 or not
	// addressed as Capture says are never returned. After Close it returns
	// an error matching net.ErrClosed.
	Read(bufs [][]byte, sizes []int, offset int) (n int, err error)
	// Write sends each bufs[i][offset:] as one IPv4 packet; returns how many
	// were sent and the first error. A packet the kernel refuses (e.g.
	// EMSGSIZE, EHOSTUNREACH) is reported via error but does not stop the
	// rest of the batch: the error is then a *WriteError naming every
	// refused packet.
	Write(bufs [][]byte, offset int) (int, error)
	// BatchSize is the most packets one Read returns and one Write sends
	// in a single system call; callers size their buffer slices by it.
	BatchSize() int
	// Close releases the sockets and unblocks a pending Read.
	Close() error
}

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

// RefusedPacket is one packet of a batch the kernel did not send.
type RefusedPacket struct {
	Index int   // position in the bufs passed to Write
	Err   error // usually a syscall.Errno such as EMSGSIZE or EHOSTUNREACH
}

// WriteError reports the packets of one Write batch that were refused; every
// other packet of the batch was sent. errors.Is sees each packet's error, so
// errors.Is(err, unix.EMSGSIZE) asks whether any packet was too big.
type WriteError struct {
	Refused []RefusedPacket // in batch order
}

func (e *WriteError) Error() string {
	if len(e.Refused) == 0 {
		return "wan write: no packet refused"
	}
	first := e.Refused[0]
	var b strings.Builder
	fmt.Fprintf(&b, "wan write: packet %d refused: %v", first.Index, first.Err)
	if more := len(e.Refused) - 1; more > 0 {
		fmt.Fprintf(&b, " (and %d more)", more)
	}
	return b.String()
}

// Unwrap exposes every refused packet's error to errors.Is and errors.As.
func (e *WriteError) Unwrap() []error {
	errs := make([]error, len(e.Refused))
	for i, r := range e.Refused {
		errs[i] = r.Err
	}
	return errs
}

// mergePortRanges sorts ranges and joins overlapping or adjacent ones, so
// filters test each port once and nftables interval sets, which refuse
// overlapping elements, accept them.
func mergePortRanges(ranges []config.PortRange) []config.PortRange {
	rs := make([]addrRange, 0, len(ranges))
	for _, r := range ranges {
		if r.Last < r.First {
			continue
		}
		rs = append(rs, addrRange{First: uint32(r.First), Last: uint32(r.Last)})
	}
	merged := mergeRanges(rs)
	out := make([]config.PortRange, len(merged))
	for i, r := range merged {
		out[i] = config.PortRange{First: uint16(r.First), Last: uint16(r.Last)}
	}
	return out
}

// addrRange is an inclusive range of IPv4 addresses (or ports) as numbers.
type addrRange struct {
	First, Last uint32
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
		first := addrToUint32(p.Addr())
		hostBits := 32 - p.Bits()
		last := first | uint32(uint64(1)<<hostBits-1)
		rs = append(rs, addrRange{First: first, Last: last})
	}
	return mergeRanges(rs)
}

func mergeRanges(rs []addrRange) []addrRange {
	if len(rs) == 0 {
		return nil
	}
	sorted := append([]addrRange(nil), rs...)
	slices.SortFunc(sorted, func(a, b addrRange) int { return cmp.Compare(a.First, b.First) })
	out := []addrRange{sorted[0]}
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

func addrToUint32(a netip.Addr) uint32 { return be32(a.As4()) }
