package config

import (
	"net/netip"
	"slices"
	"strings"
)

// Resolve fills what the configuration left to the host, from h:
//
//   - wan.interface: the interface of the default route;
//   - wan.address: the first IPv4 address of the WAN interface;
//   - wan.mtu: the WAN interface's MTU;
//   - lan.interfaces: every up, non-loopback interface with an IPv4 address
//     other than the WAN and the TUN;
//   - lan.prefixes: the subnets of the LAN interfaces' addresses;
//   - services.dns_upstream: the IPv4 nameservers of /etc/resolv.conf, except
//     the service address itself (none: no DNS forwarder);
//   - services.admin_allow: lan.prefixes.
//
// It checks that every named interface exists, that explicit values agree
// with the host and that the NAT's ports stay apart from the host's
// ephemeral ports (CheckEphemeral; its warnings go to c.Warnings), then
// validates the result again, since forwards and the services address are
// checked against the LAN prefixes only once those are known. On error c is
// left unchanged and the error is an *Errors.
func (c *Config) Resolve(h *Host) error {
	r := c.clone()
	var es Errors
	pos := c.positions()
	fail := func(key, format string, args ...any) { es.add(c.Source, pos.line(key), key, format, args...) }
	if h == nil {
		fail("", "no host information to resolve against")
		return es.orNil()
	}
	// The WAN first: the LAN defaults to every interface but the WAN's.
	r.resolveWAN(h, fail)
	r.resolveLAN(h, fail)
	r.resolveServices(h)

	es = append(es, validate(r, pos)...)
	// A nat.port_range that is wrong in itself is not compared with the
	// host's ports too: one message for one mistake.
	problems, warnings := checkEphemeral(r, h.Ephemeral, pos)
	for _, p := range problems {
		if !slices.ContainsFunc(es, func(e *Error) bool { return e.Key == p.Key }) {
			es = append(es, p)
		}
	}
	if err := es.orNil(); err != nil {
		return err
	}
	r.Warnings = warnings
	*c = *r
	return nil
}

// failFunc reports a problem with a key of the configuration.
type failFunc func(key, format string, args ...any)

// resolveWAN fills wan.interface, wan.address and wan.mtu from h and checks
// the ones the configuration set against it.
func (c *Config) resolveWAN(h *Host, fail failFunc) {
	switch name := c.WAN.Interface; {
	case name == "" && h.DefaultRouteInterface == "":
		fail("wan.interface", "not set, and this host has no IPv4 default route to take it from")
		return
	case name == "":
		c.WAN.Interface = h.DefaultRouteInterface
		c.WAN.InterfaceFromHost = true
	}
	wan, ok := h.Interface(c.WAN.Interface)
	switch {
	case !ok:
		fail("wan.interface", "no interface %q on this host", c.WAN.Interface)
		return
	case wan.Loopback:
		fail("wan.interface", "%q is a loopback interface", wan.Name)
		return
	}

	switch {
	case len(wan.Prefixes) == 0:
		fail("wan.address", "interface %q has no IPv4 address", wan.Name)
	case !c.WAN.Address.IsValid():
		c.WAN.Address = wan.Prefixes[0].Addr()
		c.WAN.AddressFromHost = true
	case !slices.ContainsFunc(wan.Prefixes, func(p netip.Prefix) bool { return p.Addr() == c.WAN.Address }):
		fail("wan.address", "%s is not an address of interface %q (it has %s)", c.WAN.Address, wan.Name, joinPrefixes(wan.Prefixes))
	}
	switch {
	case c.WAN.MTU == 0:
		c.WAN.MTU = wan.MTU
	case c.WAN.MTU > wan.MTU:
		fail("wan.mtu", "%d is above the MTU of interface %q (%d)", c.WAN.MTU, wan.Name, wan.MTU)
	}
}

// resolveLAN fills lan.interfaces and lan.prefixes from h and checks that
// the named interfaces exist.
func (c *Config) resolveLAN(h *Host, fail failFunc) {
	if len(c.LAN.Interfaces) == 0 {
		for _, iface := range h.Interfaces {
			if iface.Up && !iface.Loopback && len(iface.Prefixes) > 0 &&
				iface.Name != c.WAN.Interface && iface.Name != c.TUN.Name {
				c.LAN.Interfaces = append(c.LAN.Interfaces, iface.Name)
			}
		}
		if len(c.LAN.Interfaces) == 0 {
			fail("lan.interfaces", "not set, and no interface other than the WAN (%q) is up with an IPv4 address", c.WAN.Interface)
		}
	}
	var lans []*HostInterface
	for i, name := range c.LAN.Interfaces {
		if iface, ok := h.Interface(name); ok {
			lans = append(lans, iface)
		} else {
			fail(indexPath("lan.interfaces", i), "no interface %q on this host", name)
		}
	}

	if len(c.LAN.Prefixes) == 0 && len(lans) > 0 {
		var subnets []netip.Prefix
		for _, iface := range lans {
			for _, p := range iface.Prefixes {
				subnets = append(subnets, p.Masked())
			}
		}
		c.LAN.Prefixes = outermost(subnets)
		if len(c.LAN.Prefixes) == 0 {
			fail("lan.prefixes", "not set, and the LAN interfaces (%s) have no IPv4 address", strings.Join(c.LAN.Interfaces, ", "))
		}
	}
}

// resolveServices fills services.dns_upstream from the host's nameservers
// and services.admin_allow from the LAN prefixes.
func (c *Config) resolveServices(h *Host) {
	if len(c.Services.DNSUpstream) == 0 {
		for _, a := range h.Nameservers {
			if a != c.Services.Address {
				c.Services.DNSUpstream = append(c.Services.DNSUpstream, Upstream(netip.AddrPortFrom(a, 53)))
			}
		}
	}
	if len(c.Services.AdminAllow) == 0 {
		c.Services.AdminAllow = slices.Clone(c.LAN.Prefixes)
	}
}

// outermost drops duplicates and prefixes inside another of the list (an
// interface may carry 192.168.77.1/24 and 192.168.77.2/25), keeping order.
func outermost(list []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for i, p := range list {
		inside := slices.ContainsFunc(list, func(q netip.Prefix) bool {
			return q.Bits() < p.Bits() && q.Contains(p.Addr())
		})
		if !inside && !slices.Contains(list[:i], p) {
			out = append(out, p)
		}
	}
	return out
}

// clone copies c deeply enough that changing the copy's slices leaves c alone.
func (c *Config) clone() *Config {
	r := *c
	r.LAN.Interfaces = slices.Clone(c.LAN.Interfaces)
	r.LAN.Prefixes = slices.Clone(c.LAN.Prefixes)
	r.Routing.NoNAT = slices.Clone(c.Routing.NoNAT)
	r.Forwards = slices.Clone(c.Forwards)
	r.Services.DNSUpstream = slices.Clone(c.Services.DNSUpstream)
	r.Services.AdminAllow = slices.Clone(c.Services.AdminAllow)
	return &r
}
