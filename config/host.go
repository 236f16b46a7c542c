package config

import "net/netip"

// Host is a snapshot of the host's interfaces, IPv4 default route and
// ephemeral ports: all Resolve needs to know about the machine. The config
// package never reads the host itself; hostnet.ReadHost fills a Host, and
// tests build one in code.
type Host struct {
	// DefaultRouteInterface is the interface of the main table's IPv4 default
	// route with the lowest metric; empty when there is none.
	DefaultRouteInterface string
	Interfaces            []HostInterface // ordered by Index
	// Nameservers are the IPv4 nameservers of /etc/resolv.conf.
	Nameservers []netip.Addr
	// Ephemeral are the ports the kernel gives the host's own sockets;
	// zero when unknown (a Host built in code), and then not checked.
	Ephemeral Ephemeral
}

// HostInterface is one network interface.
type HostInterface struct {
	Name     string
	Index    int
	MTU      int
	Up       bool // administratively up
	Loopback bool
	// Prefixes are the interface's IPv4 addresses with their prefix length,
	// e.g. 192.168.77.1/24 (not masked).
	Prefixes []netip.Prefix
}

// Interface returns the interface called name.
func (h *Host) Interface(name string) (*HostInterface, bool) {
	for i := range h.Interfaces {
		if h.Interfaces[i].Name == name {
			return &h.Interfaces[i], true
		}
	}
	return nil, false
}
