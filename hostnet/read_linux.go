package hostnet

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/vpnmasq/vpnmasq/config"
)

// ReadHost reads the interfaces and default route of the calling thread's
// network namespace through netlink, and the namespace's ephemeral ports.
func ReadHost() (*config.Host, error) {
	links, err := retryInterrupted(netlink.LinkList)
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	h := &config.Host{}
	names := map[int]string{}
	for _, link := range links {
		attrs := link.Attrs()
		iface := config.HostInterface{
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
