package config

import (
	"fmt"
	"strings"

	"github.com/vpnmasq/vpnmasq/nat"
)

// Ephemeral is what the kernel gives the host's own sockets when they do
// not choose a port themselves (connect without bind, bind to port 0): the
// ports of net.ipv4.ip_local_port_range that net.ipv4.ip_local_reserved_ports
// does not hold back. Both settings belong to a network namespace;
// hostnet.ReadEphemeral reads them.
type Ephemeral struct {
	Range    PortRange   // net.ipv4.ip_local_port_range; zero: unknown
	Reserved []PortRange // net.ipv4.ip_local_reserved_ports, in order, merged
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
	if inside := e.reservedInside(); len(inside) > 0 {
		s += " less the reserved " + joinRanges(inside)
	}
	return s
}

// describe names the settings too: "32768-60999
// (net.ipv4.ip_local_port_range)", or "32768-60999
// (net.ipv4.ip_local_port_range, less 40000-40010 in
// net.ipv4.ip_local_reserved_ports)".
func (e Ephemeral) describe() string {
	s := e.Range.String() + " (net.ipv4.ip_local_port_range"
	if inside := e.reservedInside(); len(inside) > 0 {
		s += ", less " + joinRanges(inside) + " in net.ipv4.ip_local_reserved_ports"
	}
	return s + ")"
}

// reservedInside are the reserved ports inside Range (only those matter).
func (e Ephemeral) reservedInside() []PortRange {
	var inside []PortRange
	for _, r := range e.Reserved {
		if r.Overlaps(e.Range) {
			inside = append(inside, r)
		}
	}
	return inside
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

// CheckEphemeral compares the ports vpnmasq takes on the WAN address with e,
// the ports the kernel gives the host's own sockets. vpnmasq's guard drops
// WAN packets to its ports before the host's stack sees them, so a host
// socket the kernel gave such a port never gets its answers.
//
//   - nat.port_range must not overlap them: it is refused (as an *Errors),
//     since thousands of ports would break the host's connections, vpnmasq's
//     DNS forwarder's included, all the time.
//   - A forward's port, and the IKE ports 500 and 4500 vpnmasq always
//     takes, inside them are warnings: one port breaks a host connection
//     only when the kernel happens to pick it, and forwarding a port such as
//     WireGuard's 51820 is common and deliberate. vpnmasq's own sockets
//     never use a port it takes (netstack's upstream dialer).
//
// Ports listed in net.ipv4.ip_local_reserved_ports do not count: the kernel
// never gives them out. vpnmasq changes neither setting. Unknown ephemeral
// ports (e.IsZero) check nothing.
func (c *Config) CheckEphemeral(e Ephemeral) (warnings Errors, err error) {
	problems, warnings := checkEphemeral(c, e, c.positions())
	return warnings, problems.orNil()
}

func checkEphemeral(c *Config, e Ephemeral, pos *positions) (problems, warnings Errors) {
	if e.IsZero() {
		return nil, nil
	}
	nr := c.NAT.PortRange
	if given := e.Given(nr); len(given) > 0 && nr.First != 0 && nr.First <= nr.Last {
		const key = "nat.port_range"
		what, where := nr.String(), ""
		if _, written := pos.lines[key]; !written && nr == Default().NAT.PortRange {
			what = "the default " + what
			if c.Source == DefaultSource {
				where = " in a configuration file (run --config FILE)"
			}
		}
		var fixes []string
		if e.Range.First > 1024 || e.Range.Last < 65535 {
			fixes = append(fixes, fmt.Sprintf("set nat.port_range%s outside %s", where, e.Range))
		}
		fixes = append(fixes,
			fmt.Sprintf("change net.ipv4.ip_local_port_range to leave %s free", nr),
			fmt.Sprintf("list %s in net.ipv4.ip_local_reserved_ports", joinRanges(given)))
		problems.add(c.Source, pos.line(key), key,
			"%s overlaps the host's ephemeral ports %s in %s: vpnmasq's guard drops WAN packets to NAT ports "+
				"before the host's stack sees them, so the host's own connections from those ports, vpnmasq's DNS forwarder's included, "+
				"would get no answers; %s",
			what, e.describe(), joinRanges(given), strings.Join(fixes, ", or "))
	}
	warn := func(key string, format string, args ...any) {
		warnings.add(c.Source, pos.line(key), key, format, args...)
		warnings[len(warnings)-1].Warning = true
	}
	const effect = "a connection of the host's own that the kernel gives %s gets no answers, since vpnmasq takes the WAN packets to it " +
		"(vpnmasq's own sockets avoid it); list %s in net.ipv4.ip_local_reserved_ports to keep the kernel off it"
	for i, f := range c.Forwards {
		if f.Proto != "tcp" && f.Proto != "udp" {
			continue
		}
		if given := e.Given(f.Port); len(given) > 0 {
			warn(indexPath("forward", i)+".port", "%s %s lies in the host's ephemeral ports %s: "+effect,
				f.Proto, f.Port, e.describe(), joinRanges(given), joinRanges(given))
		}
	}
	for _, ike := range []struct {
		port uint16
		name string
	}{{nat.PortIKE, "IKE"}, {nat.PortNATT, "IPsec NAT-T"}} {
		if given := e.Given(PortRange{First: ike.port, Last: ike.port}); len(given) > 0 {
			warn("", "port %d (%s, which vpnmasq always takes for IPsec passthrough) lies in the host's ephemeral ports %s: "+effect,
				ike.port, ike.name, e.describe(), fmt.Sprint(ike.port), fmt.Sprint(ike.port))
		}
	}
	return problems, warnings
}
