package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Host is a snapshot of the host's interfaces, IPv4 default route and
// ephemeral ports: all Resolve needs to know about the machine.
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

// ReadHost reads the interfaces and default route of the calling thread's
// network namespace through netlink, and the namespace's ephemeral ports.
func ReadHost() (*Host, error) {
	links, err := retryInterrupted(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	h := &Host{}
	names := map[int]string{}
	for _, link := range links {
		attrs := link.Attrs()
		iface := HostInterface{
			Name:     attrs.Name,
			Index:    attrs.Index,
			MTU:      attrs.MTU,
			Up:       attrs.Flags&net.FlagUp != 0,
			Loopback: attrs.Flags&net.FlagLoopback != 0,
		}
		addrs, err := retryInterrupted(func() ([]netlink.Addr, error) { return netlink.AddrList(link, netlink.FAMILY_V4) })
		if err != nil {
			return nil, fmt.Errorf("listing addresses of %s: %w", attrs.Name, err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP.To4())
			if !ok || a.IPNet == nil {
				continue
			}
			ones, _ := a.Mask.Size()
			iface.Prefixes = append(iface.Prefixes, netip.PrefixFrom(ip, ones))
		}
		names[iface.Index] = iface.Name
		h.Interfaces = append(h.Interfaces, iface)
	}
	sort.Slice(h.Interfaces, func(i, j int) bool { return h.Interfaces[i].Index < h.Interfaces[j].Index })

	// The main table holds the host's own default route; policy routing
	// tables (vpnmasq's among them) do not choose the WAN.
	mainTable := &netlink.Route{Table: unix.RT_TABLE_MAIN}
	routes, err := retryInterrupted(func() ([]netlink.Route, error) {
		return netlink.RouteListFiltered(netlink.FAMILY_V4, mainTable, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	best := -1
	for _, r := range routes {
		if r.Type != unix.RTN_UNICAST || (r.Dst != nil && !isDefault(r.Dst)) {
			continue
		}
		index := r.LinkIndex
		if index == 0 && len(r.MultiPath) > 0 {
			index = r.MultiPath[0].LinkIndex
		}
		if name, ok := names[index]; ok && (best < 0 || r.Priority < best) {
			best, h.DefaultRouteInterface = r.Priority, name
		}
	}
	h.Nameservers = readNameservers("/etc/resolv.conf")
	if h.Ephemeral, err = ReadEphemeral(); err != nil {
		return nil, err
	}
	return h, nil
}

// readNameservers returns the IPv4 "nameserver" lines of a resolv.conf; a
// missing or unreadable file has none.
func readNameservers(path string) []netip.Addr {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Is4() {
				out = append(out, a)
			}
		}
	}
	return out
}

func isDefault(dst *net.IPNet) bool {
	ones, _ := dst.Mask.Size()
	return ones == 0
}

// retryInterrupted repeats a netlink dump that the kernel interrupted
// because the data changed meanwhile; such a result may be incomplete.
func retryInterrupted[T any](dump func() (T, error)) (T, error) {
	var result T
	var err error
	for range 5 {
		result, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return result, err
}
