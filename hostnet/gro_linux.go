package hostnet

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/safchain/ethtool"
	"github.com/vishvananda/netlink"
)

// udpGRO are the interface features (ethtool names) that make an interface
// coalesce the UDP datagrams it forwards: GRO itself (on a veth it also
// moves the receive path to NAPI, without which it does no GRO at all), UDP
// GRO for packets no local socket takes (what a router forwards, and what
// arrives for the WAN address's NAT ports), and not the fraglist kind, whose
// super-packets keep every datagram as a separate buffer and can be neither
// written into a TUN nor described in a virtio-net header. The result is a
// UDP super-packet (GSO_UDP_L4) that the TUN takes whole (when it has UDP
// segmentation offload) and the packet path translates once.
var udpGRO = map[string]bool{
	"rx-gro":                true,
	"rx-udp-gro-forwarding": true,
	"rx-gro-list":           false,
}

// receivingInterfaces are the devices whose receive path does GRO for
// packets arriving on the named interfaces: each interface itself, and for
// a bridge its ports, since a bridge does no GRO of its own: a frame is
// coalesced (or not) on the port it came in by, before the bridge sees it.
func receivingInterfaces(nl *netlink.Handle, names []string) ([]string, error) {
	var out []string
	var links []netlink.Link
	for _, name := range names {
		out = append(out, name)
		l, err := nl.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("interface %s: %w", name, err)
		}
		if _, isBridge := l.(*netlink.Bridge); !isBridge {
			continue
		}
		if links == nil {
			if links, err = nl.LinkList(); err != nil {
				return nil, fmt.Errorf("listing links: %w", err)
			}
		}
		for _, port := range links {
			if port.Attrs().MasterIndex == l.Attrs().Index {
				out = append(out, port.Attrs().Name)
			}
		}
	}
	return out, nil
}

// setupUDPGRO turns on UDP GRO forwarding (udpGRO) on each interface that
// offers it, recording the previous values for Close. An interface that
// does not offer it (no GRO, a kernel before 5.12, a fixed feature) or
// refuses the change keeps its settings: its UDP is then forwarded one
// datagram at a time, as before, and a line at info level says so.
func (h *Host) setupUDPGRO(ifaces []string) {
	e, err := ethtool.NewEthtool() // its socket addresses the namespace of this thread: h.ns
	if err != nil {
		h.log.Info().Err(err).Msg("UDP GRO forwarding not set: no ethtool socket")
		return
	}
	h.ethtool = e // closed by Close, after the restores
	for _, name := range ifaces {
		old, err := changeFeatures(e, name, udpGRO)
		if err != nil {
			h.log.Info().Err(err).Str("interface", name).Msg("UDP GRO forwarding not set: UDP is forwarded one datagram at a time")
			continue
		}
		if len(old) == 0 {
			h.log.Debug().Str("interface", name).Msg("UDP GRO forwarding already on, left as it is")
			continue
		}
		h.added("ethtool "+name+" "+describeFeatures(udpGRO, old), func() error {
			return e.Change(name, old)
		})
	}
}

// changeFeatures sets name's features to want and returns the previous
// value of each one it changed; nothing when all already were as wanted.
// It changes nothing unless every feature in want can be changed.
func changeFeatures(e *ethtool.Ethtool, name string, want map[string]bool) (map[string]bool, error) {
	state, err := e.FeaturesWithState(name)
	if err != nil {
		return nil, fmt.Errorf("reading the features of %s: %w", name, err)
	}
	old := make(map[string]bool)
	for _, f := range slices.Sorted(maps.Keys(want)) {
		st, ok := state[f]
		switch {
		case !ok:
			return nil, fmt.Errorf("%s: the kernel has no feature %s", name, f)
		case st.Active == want[f]:
			continue
		case !st.Available:
			return nil, fmt.Errorf("%s: %s is fixed %s", name, f, onOff(st.Active))
		}
		old[f] = st.Active
	}
	if len(old) == 0 {
		return nil, nil
	}
	set := make(map[string]bool, len(old))
	for f := range old {
		set[f] = want[f]
	}
	if err := e.Change(name, set); err != nil {
		return nil, fmt.Errorf("setting %s on %s: %w", describeFeatures(set, nil), name, err)
	}
	return old, nil
}

// describeFeatures writes "f on (was off), …" for the features in old, or
// every feature in set when old is nil.
func describeFeatures(set, old map[string]bool) string {
	var parts []string
	for _, f := range slices.Sorted(maps.Keys(set)) {
		was, changed := old[f]
		switch {
		case old == nil:
			parts = append(parts, f+" "+onOff(set[f]))
		case changed:
			parts = append(parts, f+" "+onOff(set[f])+" (was "+onOff(was)+")")
		}
	}
	return strings.Join(parts, ", ")
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}
