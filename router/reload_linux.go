package router

import (
	"fmt"

	"github.com/google/nftables"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/wan"
)

// UpdateGuard replaces the elements of the guard's and hairpin's port and
// protocol sets in one nftables transaction: the rules stay, only what
// they match changes.
func (h *Host) UpdateGuard(tun string, ports, hairpinPorts []config.PortRange, hairpinProtos []uint8) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return fmt.Errorf("host plumbing already removed")
	}
	c, err := nftConn(int(h.ns))
	if err != nil {
		return err
	}
	name := nftTableName(tun)
	ipTable := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: name}
	ndTable := &nftables.Table{Family: nftables.TableFamilyNetdev, Name: name}
	replace := func(t *nftables.Table, set string, elems []nftables.SetElement) error {
		s, err := c.GetSetByName(t, set)
		if err != nil {
			return fmt.Errorf("nftables set %s: %w", set, err)
		}
		c.FlushSet(s)
		if len(elems) > 0 {
			if err := c.SetAddElements(s, elems); err != nil {
				return fmt.Errorf("nftables set %s: %w", set, err)
			}
		}
		return nil
	}
	if err := replace(ipTable, nftSetNATPorts, portElements(ports)); err != nil {
		return err
	}
	if err := replace(ndTable, nftSetHairpinPorts, portElements(hairpinPorts)); err != nil {
		return err
	}
	var protos []nftables.SetElement
	for _, p := range wan.UniqueProtocols(hairpinProtos) {
		protos = append(protos, nftables.SetElement{Key: []byte{p}})
	}
	if err := replace(ndTable, nftSetHairpinProtocols, protos); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("updating nftables sets of %s: %w", name, err)
	}
	h.log.Debug().Str("table", name).Msg("guard port sets updated")
	return nil
}

// portElements encodes port ranges for an interval set (see addPortSet).
func portElements(ports []config.PortRange) []nftables.SetElement {
	var ranges []wan.Range
	for _, r := range wan.MergePortRanges(ports) {
		ranges = append(ranges, wan.Range{First: uint32(r.First), Last: uint32(r.Last)})
	}
	return intervalElements(ranges, 2)
}
