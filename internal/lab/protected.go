package lab

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
)

// AddProtectedNet gives ns a network that an IPsec gateway in ns can
// protect: a veth pair with both ends inside ns, the first end named ifname
// holding addr (e.g. 10.99.0.1/24), the second (ifname + "p") up without an
// address. Both ends stay in ns, so nothing appears elsewhere.
//
// A separate network is needed because strongSwan's kernel-libipsec refuses
// a tunnel whose remote traffic selector is the IKE peer itself, and dummy
// devices are not available on every kernel the labs run on.
func AddProtectedNet(ns *NS, ifname string, addr netip.Prefix) error {
	if !addr.Addr().Is4() || addr.Bits() <= 0 || addr.Bits() >= 32 {
		return fmt.Errorf("lab: protected network %s: want an IPv4 address with a prefix length of 1-31", addr)
	}
	peer := ifname + "p"
	if len(peer) > 15 {
		return fmt.Errorf("lab: protected network interface name %q too long (the peer %q must fit in 15 bytes)", ifname, peer)
	}
	h, err := ns.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.NewLinkAttrs(), PeerName: peer}
	veth.Name = ifname
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("lab: %s: add veth %s/%s: %w", ns.Name, ifname, peer, err)
	}
	for _, name := range []string{ifname, peer} {
		if err := setUp(h, name); err != nil {
			return fmt.Errorf("lab: %s: %w", ns.Name, err)
		}
	}
	if err := addAddr(h, ifname, addr); err != nil {
		return fmt.Errorf("lab: %s: %w", ns.Name, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, name := range []string{ifname, peer} {
		if err := waitCarrier(h, name, deadline); err != nil {
			return fmt.Errorf("lab: %s: %w", ns.Name, err)
		}
	}
	return nil
}
