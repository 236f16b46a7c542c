package hostnet

import (
	"errors"
	"fmt"

	"github.com/google/nftables"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/internal/interval"
)

// Changing the guards of a running instance: a reload changes the ports
// and protocols they take (UpdateGuard), a new WAN address the rules that
// name it (SetWANAddr). Both keep the tables, so no packet finds no guard.

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
	for _, p := range interval.UniqueProtocols(hairpinProtos) {
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
	return intervalElements(interval.Ports(ports), 2)
}

// SetWANAddr replaces the nftables rules that name the WAN address with
// rules for s.Guard.Addr: the input guard's in one transaction (flush and
// refill the chain), then each hairpin chain's. The sets stay as they are.
// After Close it does nothing.
func (h *Host) SetWANAddr(s Spec) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.done {
		return nil
	}
	nl, err := netlinkAt(h.ns)
	if err != nil {
		return err
	}
	tun, err := nl.LinkByName(s.TUN)
	nl.Close()
	if err != nil {
		return fmt.Errorf("TUN %s: %w", s.TUN, err)
	}
	return replaceNftAddr(int(h.ns), s.nft(tun.Attrs().Index))
}

// replaceNftAddr rewrites the rules that name the WAN address in the
// tables installNft created.
func replaceNftAddr(nsFd int, s nftSpec) error {
	c, err := nftConn(nsFd)
	if err != nil {
		return err
	}
	name := nftTableName(s.tun)
	ipTable := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: name}
	input := &nftables.Chain{Name: nftChainGuardInput, Table: ipTable}
	c.FlushChain(input)
	for _, exprs := range guardInputRules(s, &nftables.Set{Table: ipTable, Name: nftSetNATPorts},
		&nftables.Set{Table: ipTable, Name: nftSetNATProtocols}) {
		c.AddRule(&nftables.Rule{Table: ipTable, Chain: input, Exprs: exprs})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("replacing the input guard of %s: %w", name, err)
	}
	ndTable := &nftables.Table{Family: nftables.TableFamilyNetdev, Name: name}
	rules, err := hairpinRules(s, &nftables.Set{Table: ndTable, Name: nftSetHairpinPorts},
		&nftables.Set{Table: ndTable, Name: nftSetHairpinProtocols})
	if err != nil {
		return err
	}
	var errs []error
	for _, lan := range s.lans {
		ch := &nftables.Chain{Name: nftChainHairpinPrefix + lan, Table: ndTable}
		c.FlushChain(ch)
		if err := c.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("flushing netdev %s %s: %w", name, ch.Name, err))
			continue
		}
		if err := addRawRules(nsFd, nftables.TableFamilyNetdev, name, ch.Name, rules); err != nil {
			errs = append(errs, fmt.Errorf("hairpin rules of netdev %s %s: %w", name, ch.Name, err))
		}
	}
	return errors.Join(errs...)
}
