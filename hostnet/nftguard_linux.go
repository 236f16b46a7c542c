package hostnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/internal/interval"
	"github.com/vpnmasq/vpnmasq/nat"
)

// nftables objects vpnmasq owns. Both tables are named after the TUN device
// (vpnmasq_<tun>), so several instances with different TUN names coexist and
// CleanupStale finds a dead instance's tables from its TUN name alone.
// Deleting a table deletes its chains, rules and sets with it.
const (
	nftTablePrefix = "vpnmasq_"

	// Family ip table: the guards that keep the host from handling what
	// vpnmasq handles.
	nftChainGuardInput      = "guard_input"
	nftChainGuardPrerouting = "guard_prerouting"
	nftSetNATPorts          = "nat_ports"
	nftSetNATProtocols      = "nat_protocols"
	nftSetLANPrefixes       = "lan_prefixes"

	// Family netdev table: hairpin, one ingress chain per LAN interface.
	nftChainHairpinPrefix  = "hairpin_"
	nftSetHairpinPorts     = "hairpin_ports"
	nftSetHairpinProtocols = "hairpin_protocols"
)

// Chain priorities. guard_input runs before the usual filter chains (0) so a
// host firewall cannot answer with a reject first. guard_prerouting runs at
// raw priority, before connection tracking (-200), so dropped packets never
// create conntrack entries.
const (
	nftPriorityGuardInput      = -150
	nftPriorityGuardPrerouting = -300
	nftPriorityHairpin         = 0
)

// Header offsets the rules load (RFC 791, RFC 793, RFC 768).
const (
	ipv4ProtocolOffset     = 9
	ipv4DstOffset          = 16
	transportDstPortOffset = 2 // destination port inside a TCP or UDP header
)

// nftTableName is the name of both of an instance's nftables tables.
func nftTableName(tun string) string { return nftTablePrefix + tun }

// nftSpec is what the guards and hairpin rules are built from.
type nftSpec struct {
	tun              string
	tunIndex         int
	wan              string
	addr             netip.Addr
	ports            []config.PortRange
	protocols        []uint8
	prefixes         []netip.Prefix
	lans             []string
	hairpinPorts     []config.PortRange
	hairpinProtocols []uint8
}

// nftConn dials nftables in the given network namespace (an open netns fd).
func nftConn(nsFd int) (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(ownNSAsZero(nsFd)))
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	return c, nil
}

// installNft creates the guard table (family ip) and the hairpin table
// (family netdev). The tables are created exclusively, so leftovers of a
// previous run make it fail instead of silently mixing rules; CleanupStale
// removes those. On failure nothing of it stays behind.
func installNft(nsFd int, s nftSpec) (err error) {
	c, err := nftConn(nsFd)
	if err != nil {
		return err
	}
	name := nftTableName(s.tun)
	if err := refuseExistingTables(c, name); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, removeNft(nsFd, s.tun))
		}
	}()
	if err := addGuardTable(c, name, s); err != nil {
		return err
	}
	hairpin, err := addHairpinTable(c, name, s)
	if err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("creating nftables tables %s: %w", name, err)
	}

	// The hairpin rules forward into the TUN with "fwd ip to <addr> device
	// <tun>", which google/nftables cannot express; they go in a second
	// transaction, once the chains and sets they name exist.
	rules, err := hairpinRules(s, hairpin.ports, hairpin.protocols)
	if err != nil {
		return err
	}
	for _, ch := range hairpin.chains {
		if err := addRawRules(nsFd, nftables.TableFamilyNetdev, name, ch, rules); err != nil {
			return fmt.Errorf("adding hairpin rules to netdev %s %s: %w", name, ch, err)
		}
	}
	return nil
}

// addGuardTable queues the guard table (family ip) with its sets, chains
// and rules on c: guard_input keeps the host's stack off the NAT's ports
// and protocols on the WAN address, guard_prerouting keeps the host from
// forwarding what arrives on the WAN for the LAN prefixes.
func addGuardTable(c *nftables.Conn, name string, s nftSpec) error {
	ipTable := c.CreateTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: name})
	natPorts, err := addPortSet(c, ipTable, nftSetNATPorts, s.ports)
	if err != nil {
		return err
	}
	natProtos, err := addProtocolSet(c, ipTable, nftSetNATProtocols, s.protocols)
	if err != nil {
		return err
	}
	lanPrefixes, err := addPrefixSet(c, ipTable, nftSetLANPrefixes, s.prefixes)
	if err != nil {
		return err
	}

	input := c.AddChain(&nftables.Chain{
		Name:     nftChainGuardInput,
		Table:    ipTable,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookInput,
		Priority: nftables.ChainPriorityRef(nftPriorityGuardInput),
	})
	for _, exprs := range guardInputRules(s, natPorts, natProtos) {
		c.AddRule(&nftables.Rule{Table: ipTable, Chain: input, Exprs: exprs})
	}

	prerouting := c.AddChain(&nftables.Chain{
		Name:     nftChainGuardPrerouting,
		Table:    ipTable,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityRef(nftPriorityGuardPrerouting),
	})
	// iifname <wan> ip daddr @lan_prefixes counter drop: vpnmasq routes
	// these from its capture; the host must not forward a second copy.
	c.AddRule(&nftables.Rule{Table: ipTable, Chain: prerouting, Exprs: slices.Concat(
		matchIifname(s.wan),
		matchDaddrInSet(lanPrefixes),
		countAndDrop(),
	)})
	return nil
}

// hairpinTable is what addHairpinTable queued: the sets the rules look up
// and the names of the chains, one per LAN interface, that get the rules.
type hairpinTable struct {
	ports, protocols *nftables.Set
	chains           []string
}

// addHairpinTable queues the hairpin table (family netdev) with its sets
// and one ingress chain per LAN interface on c, without rules (see
// installNft).
func addHairpinTable(c *nftables.Conn, name string, s nftSpec) (hairpinTable, error) {
	ndTable := c.CreateTable(&nftables.Table{Family: nftables.TableFamilyNetdev, Name: name})
	var t hairpinTable
	var err error
	if t.ports, err = addPortSet(c, ndTable, nftSetHairpinPorts, s.hairpinPorts); err != nil {
		return t, err
	}
	if t.protocols, err = addProtocolSet(c, ndTable, nftSetHairpinProtocols, s.hairpinProtocols); err != nil {
		return t, err
	}
	for _, lan := range s.lans {
		ch := c.AddChain(&nftables.Chain{
			Name:     nftChainHairpinPrefix + lan,
			Table:    ndTable,
			Type:     nftables.ChainTypeFilter,
			Hooknum:  nftables.ChainHookIngress,
			Priority: nftables.ChainPriorityRef(nftPriorityHairpin),
			Device:   lan,
		})
		t.chains = append(t.chains, ch.Name)
	}
	return t, nil
}

// guardInputRules are the rules of guard_input, which name the WAN
// address: iifname <wan> ip daddr <addr> tcp dport @nat_ports counter drop,
// the same for udp, and ip protocol @nat_protocols. ICMP is deliberately
// not guarded: the host keeps answering pings and receiving its own errors.
func guardInputRules(s nftSpec, natPorts, natProtos *nftables.Set) [][]expr.Any {
	var rules [][]expr.Any
	for _, proto := range []uint8{nat.ProtoTCP, nat.ProtoUDP} {
		rules = append(rules, slices.Concat(
			matchIifname(s.wan),
			matchDaddr(s.addr),
			matchL4Proto(proto),
			matchDportInSet(natPorts),
			countAndDrop(),
		))
	}
	return append(rules, slices.Concat(
		matchIifname(s.wan),
		matchDaddr(s.addr),
		matchProtocolInSet(natProtos),
		countAndDrop(),
	))
}

// hairpinRules are the rules of each hairpin chain, marshalled, which name
// the WAN address too.
func hairpinRules(s nftSpec, hpPorts, hpProtos *nftables.Set) ([][][]byte, error) {
	fwd, err := fwdToTUN(s.tunIndex, s.addr)
	if err != nil {
		return nil, err
	}
	var rules [][][]byte
	for _, proto := range []uint8{nat.ProtoTCP, nat.ProtoUDP} {
		exprs, err := marshalExprs(nftables.TableFamilyNetdev, slices.Concat(
			matchEtherTypeIPv4(),
			matchDaddr(s.addr),
			matchL4Proto(proto),
			matchDportInSet(hpPorts),
			[]expr.Any{&expr.Counter{}},
		))
		if err != nil {
			return nil, err
		}
		rules = append(rules, append(exprs, fwd...))
	}
	exprs, err := marshalExprs(nftables.TableFamilyNetdev, slices.Concat(
		matchEtherTypeIPv4(),
		matchDaddr(s.addr),
		matchProtocolInSet(hpProtos),
		[]expr.Any{&expr.Counter{}},
	))
	if err != nil {
		return nil, err
	}
	return append(rules, append(exprs, fwd...)), nil
}

// refuseExistingTables fails when a table of ours is already there: either
// another instance runs with the same TUN name or a dead one left it.
func refuseExistingTables(c *nftables.Conn, name string) error {
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyNetdev} {
		if _, err := c.ListTableOfFamily(name, fam); err == nil {
			return fmt.Errorf("nftables table %s %s already exists: another instance uses this TUN name, or a previous run died (remove its leftovers with CleanupStale)", familyName(fam), name)
		} else if !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("listing nftables table %s %s: %w", familyName(fam), name, err)
		}
	}
	return nil
}

// removeNft deletes whichever of the instance's two tables exist.
func removeNft(nsFd int, tun string) error {
	c, err := nftConn(nsFd)
	if err != nil {
		return err
	}
	name := nftTableName(tun)
	var errs []error
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyNetdev} {
		t, err := c.ListTableOfFamily(name, fam)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("listing nftables table %s %s: %w", familyName(fam), name, err))
			continue
		}
		c.DelTable(t)
		if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("deleting nftables table %s %s: %w", familyName(fam), name, err))
		}
	}
	return errors.Join(errs...)
}

// nftTablesPresent lists which of the instance's tables exist, for logging
// and tests.
func nftTablesPresent(nsFd int, tun string) ([]string, error) {
	c, err := nftConn(nsFd)
	if err != nil {
		return nil, err
	}
	var present []string
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyNetdev} {
		_, err := c.ListTableOfFamily(nftTableName(tun), fam)
		switch {
		case err == nil:
			present = append(present, familyName(fam)+" "+nftTableName(tun))
		case !errors.Is(err, unix.ENOENT):
			return nil, err
		}
	}
	return present, nil
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyNetdev:
		return "netdev"
	default:
		return fmt.Sprintf("family-%d", f)
	}
}

// addPortSet adds a named interval set of TCP/UDP ports.
func addPortSet(c *nftables.Conn, t *nftables.Table, name string, ports []config.PortRange) (*nftables.Set, error) {
	set := &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeInetService, Interval: true}
	if err := c.AddSet(set, intervalElements(interval.Ports(ports), 2)); err != nil {
		return nil, fmt.Errorf("nftables set %s: %w", name, err)
	}
	return set, nil
}

// addPrefixSet adds a named interval set of IPv4 prefixes.
func addPrefixSet(c *nftables.Conn, t *nftables.Table, name string, prefixes []netip.Prefix) (*nftables.Set, error) {
	set := &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeIPAddr, Interval: true}
	if err := c.AddSet(set, intervalElements(interval.Prefixes(prefixes), 4)); err != nil {
		return nil, fmt.Errorf("nftables set %s: %w", name, err)
	}
	return set, nil
}

// addProtocolSet adds a named set of IP protocol numbers.
func addProtocolSet(c *nftables.Conn, t *nftables.Table, name string, protos []uint8) (*nftables.Set, error) {
	set := &nftables.Set{Table: t, Name: name, KeyType: nftables.TypeInetProto}
	var elems []nftables.SetElement
	for _, p := range interval.UniqueProtocols(protos) {
		elems = append(elems, nftables.SetElement{Key: []byte{p}})
	}
	if err := c.AddSet(set, elems); err != nil {
		return nil, fmt.Errorf("nftables set %s: %w", name, err)
	}
	return set, nil
}

// intervalElements encodes merged ranges the way nft(8) does: a leading
// interval end at 0 (the gap before the first range), then each range as
// its first key and an interval end at last+1; a range reaching the top of
// the key space has no end element.
func intervalElements(ranges []interval.Range, width int) []nftables.SetElement {
	if len(ranges) == 0 {
		return nil
	}
	key := func(v uint32) []byte {
		b := binary.BigEndian.AppendUint32(nil, v)
		return b[4-width:]
	}
	top := uint32(1)<<(8*width) - 1
	if width == 4 {
		top = ^uint32(0)
	}
	var elems []nftables.SetElement
	if ranges[0].First != 0 {
		elems = append(elems, nftables.SetElement{Key: key(0), IntervalEnd: true})
	}
	for _, r := range ranges {
		elems = append(elems, nftables.SetElement{Key: key(r.First)})
		if r.Last != top {
			elems = append(elems, nftables.SetElement{Key: key(r.Last + 1), IntervalEnd: true})
		}
	}
	return elems
}

// Expression building blocks. Register 1 holds the value under test.

func matchIifname(name string) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifnameKey(name)},
	}
}

func matchDaddr(addr netip.Addr) []expr.Any {
	a := addr.As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4DstOffset, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]},
	}
}

func matchDaddrInSet(set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4DstOffset, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	}
}

func matchL4Proto(proto uint8) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

func matchDportInSet(set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: transportDstPortOffset, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	}
}

func matchProtocolInSet(set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv4ProtocolOffset, Len: 1},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	}
}

// matchEtherTypeIPv4 is needed in the netdev family, where the chain sees
// every frame, before network header payload loads make sense.
func matchEtherTypeIPv4() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)},
	}
}

func countAndDrop() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
}

// nf_tables attributes of the fwd expression (linux/netfilter/nf_tables.h,
// enum nft_fwd_attributes); golang.org/x/sys/unix only defines the first.
const (
	nftaFwdSregDev  = unix.NFTA_FWD_SREG_DEV // 1
	nftaFwdSregAddr = 2
	nftaFwdNfproto  = 3
)

// fwdToTUN is "fwd ip to <addr> device <tun>": load the TUN ifindex and a
// next hop, and hand the packet to the neighbour layer of the TUN.
//
// Why not "dup to <tun>" + drop: netdev dup/fwd without an address push the
// ingress link header back (skb_push of mac_len) before transmitting, so
// the TUN reader would get the LAN's 14-byte Ethernet header in front of the
// IPv4 packet. The address form goes through neigh_xmit instead, which for
// a TUN (no header_ops, NOARP) transmits the packet as it is: the reader
// gets a plain IPv4 packet, TTL decremented once as for any routed packet,
// and the rule's verdict is "stolen" so the host never sees the original.
// The next hop is only a neighbour key on a NOARP device; the WAN address
// keeps it to one neighbour entry.
func fwdToTUN(tunIndex int, nextHop netip.Addr) ([][]byte, error) {
	a := nextHop.As4()
	out, err := marshalExprs(nftables.TableFamilyNetdev, []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(uint32(tunIndex))},
		&expr.Immediate{Register: 2, Data: a[:]},
	})
	if err != nil {
		return nil, err
	}
	data, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: nftaFwdSregDev, Data: binaryutil.BigEndian.PutUint32(1)},
		{Type: nftaFwdSregAddr, Data: binaryutil.BigEndian.PutUint32(2)},
		{Type: nftaFwdNfproto, Data: binaryutil.BigEndian.PutUint32(unix.NFPROTO_IPV4)},
	})
	if err != nil {
		return nil, fmt.Errorf("nftables fwd expression: %w", err)
	}
	fwd, err := netlink.MarshalAttributes([]netlink.Attribute{
		{Type: unix.NFTA_EXPR_NAME, Data: []byte("fwd\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_EXPR_DATA, Data: data},
	})
	if err != nil {
		return nil, fmt.Errorf("nftables fwd expression: %w", err)
	}
	return append(out, fwd), nil
}

func marshalExprs(fam nftables.TableFamily, exprs []expr.Any) ([][]byte, error) {
	out := make([][]byte, 0, len(exprs))
	for _, e := range exprs {
		b, err := expr.Marshal(byte(fam), e)
		if err != nil {
			return nil, fmt.Errorf("nftables expression %T: %w", e, err)
		}
		out = append(out, b)
	}
	return out, nil
}

// addRawRules appends rules given as marshalled expressions to a chain, in
// one nfnetlink batch (the same framing google/nftables uses for Flush).
func addRawRules(nsFd int, fam nftables.TableFamily, table, chain string, rules [][][]byte) error {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: ownNSAsZero(nsFd)})
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer conn.Close()

	genmsg := func(family uint8, resID uint16) []byte {
		return binary.BigEndian.AppendUint16([]byte{family, unix.NFNETLINK_V0}, resID)
	}
	msgs := []netlink.Message{{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request},
		Data:   genmsg(0, unix.NFNL_SUBSYS_NFTABLES),
	}}
	for _, r := range rules {
		elems := make([]netlink.Attribute, len(r))
		for i, e := range r {
			elems[i] = netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: e}
		}
		list, err := netlink.MarshalAttributes(elems)
		if err != nil {
			return err
		}
		attrs, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")},
			{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
			{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: list},
		})
		if err != nil {
			return err
		}
		msgs = append(msgs, netlink.Message{
			Header: netlink.Header{
				Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE),
				Flags: netlink.Request | netlink.Acknowledge | netlink.Create | netlink.Append,
			},
			Data: append(genmsg(uint8(fam), 0), attrs...),
		})
	}
	msgs = append(msgs, netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request},
		Data:   genmsg(0, unix.NFNL_SUBSYS_NFTABLES),
	})
	if _, err := conn.SendMessages(msgs); err != nil {
		return fmt.Errorf("sending nftables batch: %w", err)
	}
	// One acknowledgement (or error) per rule; the transaction is all or
	// nothing, so the first error is the answer.
	for acks := 0; acks < len(rules); {
		replies, err := conn.Receive()
		if err != nil {
			return err
		}
		acks += len(replies)
	}
	return nil
}

// ownNSAsZero returns 0 ("the calling thread's namespace", no setns(2))
// when nsFd is the calling thread's network namespace, else nsFd: see
// netlinkAt for why. The sockets are created right after, on the same
// thread, or on another thread of the same namespace (a thread in another
// namespace is locked to the goroutine that moved it).
func ownNSAsZero(nsFd int) int {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if isCurrentNS(nsFd) {
		return 0
	}
	return nsFd
}
