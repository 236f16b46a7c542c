// Package wan is the WAN transport: it captures the packets that belong to
// vpnmasq on the WAN interface (an AF_PACKET socket with a classic BPF filter
// built from a Capture), and sends packets out of it, as Ethernet frames to
// the next hop's link address through a packet socket where that address is
// resolved, or through a raw IPv4 socket that lets the host route them. It
// implements datapath.WAN and datapath.SuperPacketWAN.
package wan

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vpnmasq/vpnmasq/config"
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
	if err := config.CheckWANClaim(c.Addr, c.Ports, c.Protocols, c.Prefixes); err != nil {
		return fmt.Errorf("capture: %w", err)
	}
	return nil
}
