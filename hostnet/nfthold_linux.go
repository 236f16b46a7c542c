package hostnet

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The hold: what a stop with [state] enabled leaves for its successor.
//
// Between one process's teardown and the next one's setup (about 100 ms for
// a restart in place, longer for an upgrade) no guard and no policy rule
// exist. Without them the host itself answers the WAN's segments for the
// NAT's ports with RSTs and forwards the LAN's packets unmasqueraded, and a
// connection whose state the next process restores is already reset. The
// hold table drops, for a bounded time, exactly what vpnmasq would have
// handled: WAN and hairpin packets to the NAT's ports and protocols on the
// WAN address, the WAN's packets to the LAN prefixes, and the LAN's
// packets forwarded to the WAN. Dropped packets are retransmitted by their
// senders once the successor runs; a RST is not.
//
// The bound is kept by the kernel: every rule looks the input interface up
// in a set whose elements time out after [state] hold, so the rules match
// nothing once it passed even if no successor ever starts. The next start
// deletes the table once its own guard is in place, never before. The
// table is then inert, but stays until that start (or `nft delete table`).
const (
	nftHoldSuffix       = "_hold"
	nftSetHoldIfaces    = "hold_ifaces" // WAN and LAN interfaces, timing out
	nftSetHoldWAN       = "hold_wan"    // the WAN interface, timing out
	nftChainHoldInput   = "hold_input"
	nftChainHoldPre     = "hold_prerouting"
	nftChainHoldForward = "hold_forward"
	// nftPriorityHoldForward: before the usual filter chains (0).
	nftPriorityHoldForward = -150
)

// HoldTableName is the name of an instance's hold table (family ip).
func HoldTableName(tun string) string { return nftTableName(tun) + nftHoldSuffix }

// holdSpec is what the hold is built from: the guard's description, with
// the WAN address current at the stop, and how long it lasts.
type holdSpec struct {
	nftSpec
	hold time.Duration
}

// installHold replaces any previous hold of the instance with a new one.
func installHold(nsFd int, s holdSpec) (err error) {
	if s.hold <= 0 {
		return errors.New("hold: no duration")
	}
	if err := removeHold(nsFd, s.tun); err != nil {
		return err
	}
	c, err := nftConn(nsFd)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, removeHold(nsFd, s.tun))
		}
	}()
	t := c.CreateTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: HoldTableName(s.tun)})
	sets, err := addHoldSets(c, t, s)
	if err != nil {
		return err
	}

	// iifname @hold_ifaces ip daddr <addr> tcp dport @nat_ports drop, the
	// same for udp and ip protocol @nat_protocols: the input guard, and the
	// hairpin rules' traffic, which would otherwise reach the host's stack.
	input := c.AddChain(&nftables.Chain{
		Name: nftChainHoldInput, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityRef(nftPriorityGuardInput),
	})
	for _, proto := range []uint8{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
		c.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: slices.Concat(
			matchIifnameInSet(sets.ifaces), matchDaddr(s.addr), matchL4Proto(proto), matchDportInSet(sets.natPorts), countAndDrop())})
	}
	c.AddRule(&nftables.Rule{Table: t, Chain: input, Exprs: slices.Concat(
		matchIifnameInSet(sets.ifaces), matchDaddr(s.addr), matchProtocolInSet(sets.natProtos), countAndDrop())})

	// iifname @hold_wan ip daddr @lan_prefixes drop: the prerouting guard.
	pre := c.AddChain(&nftables.Chain{
		Name: nftChainHoldPre, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(nftPriorityGuardPrerouting),
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: slices.Concat(
		matchIifnameInSet(sets.wan), matchDaddrInSet(sets.lanPrefixes), countAndDrop())})

	// iifname @hold_ifaces oifname <wan> drop: the LAN's packets the
	// policy rule would have sent into the TUN leave nowhere, instead of
	// leaving unmasqueraded through the main table.
	fwd := c.AddChain(&nftables.Chain{
		Name: nftChainHoldForward, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityRef(nftPriorityHoldForward),
	})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: slices.Concat(
		matchIifnameInSet(sets.ifaces), matchOifname(s.wan), countAndDrop())})

	if err := c.Flush(); err != nil {
		return fmt.Errorf("creating nftables table ip %s: %w", HoldTableName(s.tun), err)
	}
	return nil
}

// holdSets are the sets the hold's rules look up.
type holdSets struct {
	natPorts, natProtos, lanPrefixes *nftables.Set
	// ifaces (WAN and LAN) and wan are the sets whose elements time out:
	// once they did, the rules match nothing.
	ifaces, wan *nftables.Set
}

// addHoldSets queues the hold table's sets on c: the guard's, and the
// interface sets whose timeout bounds the hold.
func addHoldSets(c *nftables.Conn, t *nftables.Table, s holdSpec) (hs holdSets, err error) {
	if hs.natPorts, err = addPortSet(c, t, nftSetNATPorts, s.ports); err != nil {
		return hs, err
	}
	if hs.natProtos, err = addProtocolSet(c, t, nftSetNATProtocols, s.protocols); err != nil {
		return hs, err
	}
	if hs.lanPrefixes, err = addPrefixSet(c, t, nftSetLANPrefixes, s.prefixes); err != nil {
		return hs, err
	}
	if hs.ifaces, err = addTimedIfnameSet(c, t, nftSetHoldIfaces, append([]string{s.wan}, s.lans...), s.hold); err != nil {
		return hs, err
	}
	if hs.wan, err = addTimedIfnameSet(c, t, nftSetHoldWAN, []string{s.wan}, s.hold); err != nil {
		return hs, err
	}
	return hs, nil
}

// removeHold deletes the instance's hold table if there is one.
func removeHold(nsFd int, tun string) error {
	c, err := nftConn(nsFd)
	if err != nil {
		return err
	}
	name := HoldTableName(tun)
	t, err := c.ListTableOfFamily(name, nftables.TableFamilyIPv4)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing nftables table ip %s: %w", name, err)
	}
	c.DelTable(t)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("deleting nftables table ip %s: %w", name, err)
	}
	return nil
}

// holdPresent reports whether the instance's hold table exists.
func holdPresent(nsFd int, tun string) (bool, error) {
	c, err := nftConn(nsFd)
	if err != nil {
		return false, err
	}
	_, err = c.ListTableOfFamily(HoldTableName(tun), nftables.TableFamilyIPv4)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.ENOENT):
		return false, nil
	default:
		return false, err
	}
}

// addTimedIfnameSet adds a set of interface names whose elements the
// kernel removes after timeout.
func addTimedIfnameSet(c *nftables.Conn, t *nftables.Table, name string, ifnames []string, timeout time.Duration) (*nftables.Set, error) {
	set := &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeIFName, HasTimeout: true}
	var elems []nftables.SetElement
	names := slices.Clone(ifnames)
	slices.Sort(names)
	for _, n := range slices.Compact(names) {
		elems = append(elems, nftables.SetElement{Key: ifnameKey(n), Timeout: timeout})
	}
	if err := c.AddSet(set, elems); err != nil {
		return nil, fmt.Errorf("nftables set %s: %w", name, err)
	}
	return set, nil
}

// ifnameKey is an interface name as the kernel compares it: the whole
// IFNAMSIZ buffer, NUL padded.
func ifnameKey(name string) []byte {
	padded := make([]byte, unix.IFNAMSIZ)
	copy(padded, name)
	return padded
}

func matchIifnameInSet(set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	}
}

func matchOifname(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameKey(name)},
	}
}
