package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Ephemeral is what the kernel gives the host's own sockets when they do
// not choose a port themselves (connect without bind, bind to port 0): the
// ports of net.ipv4.ip_local_port_range that net.ipv4.ip_local_reserved_ports
// does not hold back. Both settings belong to a network namespace.
type Ephemeral struct {
	Range    PortRange   // net.ipv4.ip_local_port_range; zero: unknown
	Reserved []PortRange // net.ipv4.ip_local_reserved_ports, in order, merged
}

// The sysctls, as read by ReadEphemeral.
const (
	localPortRangeFile    = "/proc/sys/net/ipv4/ip_local_port_range"
	localReservedPortFile = "/proc/sys/net/ipv4/ip_local_reserved_ports"
)

// ReadEphemeral reads the ephemeral ports of the calling thread's network
// namespace (the kernel answers /proc/sys/net for the reader's namespace).
func ReadEphemeral() (Ephemeral, error) {
	b, err := os.ReadFile(localPortRangeFile)
	if err != nil {
		return Ephemeral{}, fmt.Errorf("reading net.ipv4.ip_local_port_range: %w", err)
	}
	r, err := parseLocalPortRange(string(b))
	if err != nil {
		return Ephemeral{}, fmt.Errorf("net.ipv4.ip_local_port_range: %w", err)
	}
	e := Ephemeral{Range: r}
	switch b, err := os.ReadFile(localReservedPortFile); {
	case errors.Is(err, fs.ErrNotExist):
		// Kernels before 2.6.35 reserve nothing.
	case err != nil:
		return Ephemeral{}, fmt.Errorf("reading net.ipv4.ip_local_reserved_ports: %w", err)
	default:
		if e.Reserved, err = parseReservedPorts(string(b)); err != nil {
			return Ephemeral{}, fmt.Errorf("net.ipv4.ip_local_reserved_ports: %w", err)
		}
	}
	return e, nil
}

// parseLocalPortRange reads ip_local_port_range: two ports separated by
// white space ("32768\t60999\n").
func parseLocalPortRange(text string) (PortRange, error) {
	f := strings.Fields(text)
	if len(f) != 2 {
		return PortRange{}, fmt.Errorf("%q is not two ports", text)
	}
	var ports [2]uint16
	for i, s := range f {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 0 {
			return PortRange{}, fmt.Errorf("%q is not two ports", text)
		}
		ports[i] = uint16(n)
	}
	if ports[0] > ports[1] {
		return PortRange{}, fmt.Errorf("%q: first port %d is above last port %d", text, ports[0], ports[1])
	}
	return PortRange{First: ports[0], Last: ports[1]}, nil
}

// parseReservedPorts reads ip_local_reserved_ports: ports and ranges
// separated by commas ("8080,20000-20010"), or nothing.
func parseReservedPorts(text string) ([]PortRange, error) {
	text = strings.TrimSpace(text)
	if text == "" {
		return nil, nil
	}
	var out []PortRange
	for _, item := range strings.Split(text, ",") {
		r, err := ParsePortRange(strings.TrimSpace(item))
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return mergeRanges(out), nil
}

// mergeRanges sorts ranges and joins those that overlap or touch.
func mergeRanges(list []PortRange) []PortRange {
	list = slices.Clone(list)
	slices.SortFunc(list, func(a, b PortRange) int { return int(a.First) - int(b.First) })
	var out []PortRange
	for _, r := range list {
		if n := len(out); n > 0 && int(r.First) <= int(out[n-1].Last)+1 {
			out[n-1].Last = max(out[n-1].Last, r.Last)
			continue
		}
		out = append(out, r)
	}
	return out
}

// IsZero reports whether the ephemeral ports are unknown.
func (e Ephemeral) IsZero() bool { return e.Range.IsZero() }

// Given returns the ports of r the kernel may give the host's own sockets:
// those inside Range and not reserved, as ranges in order.
func (e Ephemeral) Given(r PortRange) []PortRange {
	if !r.Overlaps(e.Range) {
		return nil
	}
	first, last := int(max(r.First, e.Range.First)), int(min(r.Last, e.Range.Last))
	var out []PortRange
	for _, res := range e.Reserved {
		if int(res.Last) < first {
			continue
		}
		if int(res.First) > last {
			break
		}
		if int(res.First) > first {
			out = append(out, PortRange{First: uint16(first), Last: res.First - 1})
		}
		first = int(res.Last) + 1
	}
	if first <= last {
		out = append(out, PortRange{First: uint16(first), Last: uint16(last)})
	}
	return out
}

// String reads "32768-60999", or "32768-60999 less the reserved 40000-40010"
// when reserved ports lie inside the range.
func (e Ephemeral) String() string {
	s := e.Range.String()
	var inside []PortRange
	for _, r := range e.Reserved {
		if r.Overlaps(e.Range) {
			inside = append(inside, r)
		}
	}
	if len(inside) > 0 {
		s += " less the reserved " + joinRanges(inside)
	}
	return s
}

// joinRanges writes ranges as "1000-1010, 2000"; a long list is cut short.
func joinRanges(list []PortRange) string {
	const most = 4
	s := make([]string, 0, min(len(list), most))
	for i, r := range list {
		if i == most {
			s = append(s, fmt.Sprintf("and %d more", len(list)-most))
			break
		}
		s = append(s, r.String())
	}
	return strings.Join(s, ", ")
}
