package router

import (
	"net/netip"
	"sync/atomic"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
)

// core is the routing core: it decides for each packet, with no I/O of its
// own. Both packet loops call it, the TUN loop with fromLAN and the WAN loop
// with fromWAN, and it queues the result in the loop's outbox.
//
// Where the hop is counted: packets from the LAN reach the TUN through the
// kernel's forwarding path, which already decremented the TTL and answered
// TTL expiry. Packets the core writes into the TUN are forwarded by the
// kernel once more (TUN → LAN), which decrements the TTL again and would
// answer expiry itself — with the translated header, towards the remote. So
// the core checks TTL only for packets arriving from the WAN: a packet that
// would expire on its way to the LAN is answered with Time Exceeded from the
// WAN address, quoting the packet as the remote sent it.
type core struct {
	nat     *nat.Engine
	lan     prefixSet
	noNAT   *sharedPrefixSet // replaced by a reload
	service [4]byte
	// local takes packets for the service address (the netstack); nil
	// until the services run.
	local func(pkt []byte)
	// gsoOut: the WAN side sends GSO super-packets whole (WriteGSO).
	gsoOut bool
	// gsoIn: the WAN side returns received super-packets whole, their
	// virtio-net header before each packet, for the TUN.
	gsoIn    bool
	wanMTU   int
	offset   int
	lanAddrs []netip.Prefix // the router's own LAN-side addresses, for ICMP errors
	log      zerolog.Logger

	// icmp rate-limits the ICMP errors the core builds; now is its clock
	// (monotonic nanoseconds), read only when an error is about to be sent
	// or a no-NAT flow is tracked.
	icmp *icmpLimiter
	now  func() int64
	// routed tracks the flows LAN hosts open on no-NAT routes; only their
	// return traffic comes back in (routed.go).
	routed *routedFlows

	drops nat.DropCounters // drops decided here; the engine counts its own
	stats Stats
}

// Directions of Stats.Traffic.
const (
	LANToWAN = iota // masqueraded or routed out
	WANToLAN        // translated or routed in
)

// Counter is a packet and byte count.
type Counter struct{ Packets, Bytes atomic.Uint64 }

func (c *Counter) add(n int) {
	c.Packets.Add(1)
	c.Bytes.Add(uint64(n))
}

// Stats counts what crossed the router.
type Stats struct {
	// Traffic is indexed by direction (LANToWAN, WANToLAN) and IP
	// protocol, counted as the packet leaves (after translation).
	Traffic        [2][256]Counter
	HairpinPackets atomic.Uint64 // LAN → WAN address → LAN
	LocalPackets   atomic.Uint64 // LAN ↔ LAN across interfaces
	ServicePackets atomic.Uint64 // LAN → the service address (netstack)
	GSOWhole       atomic.Uint64 // TCP super-packets translated and sent whole
	ICMPErrorsSent atomic.Uint64 // Time Exceeded, Fragmentation Needed, Unreachable
	// ICMPErrorsSuppressed counts errors not sent because their
	// destination's or the global rate limit was reached (icmplimit.go).
	ICMPErrorsSuppressed atomic.Uint64
	FragmentsSent        atomic.Uint64
	// RoutedUntracked counts packets to a no-NAT network whose flow could
	// not be tracked (table full): their replies are dropped.
	RoutedUntracked atomic.Uint64
}

func (c *core) drop(r nat.DropReason) { c.drops.Add(r) }

// wan is the WAN address: the engine's, which follows the interface's
// address when it changes (wanwatch_linux.go).
func (c *core) wan() [4]byte { return c.nat.WANAddr() }

// fromLAN handles one packet read from the TUN: buf holds it at
// buf[offset:offset+n].
func (c *core) fromLAN(buf []byte, n int, p *nat.Packet, o *outbox) {
	if r := p.Parse(buf[c.offset : c.offset+n]); r != nat.DropNone {
		c.drop(r)
		return
	}
	switch c.lanRoute(p) {
	case lanMartian:
		c.drop(nat.DropMartian)
	case lanService:
		if c.local == nil {
			c.drop(nat.DropNoService)
			return
		}
		c.stats.ServicePackets.Add(1)
		c.local(p.Buf)
	case lanLocal:
		// Between LAN interfaces: route unchanged.
		c.stats.LocalPackets.Add(1)
		o.toLAN(buf, len(p.Buf))
	case lanRouted:
		c.routeOut(buf, p, o, false, false)
	case lanMasquerade:
		c.routeOut(buf, p, o, true, false)
	}
}

// lanRouteKind is what the core does with a packet from the LAN.
type lanRouteKind uint8

const (
	lanMartian    lanRouteKind = iota // drop: cannot be routed, or not from a LAN prefix
	lanService                        // to the service address (the netstack)
	lanLocal                          // to another LAN prefix: routed unchanged
	lanRouted                         // to a no-NAT network: routed out unchanged
	lanMasquerade                     // everything else: masqueraded out
)

// lanRoute decides a LAN packet's way, for fromLAN and for super-packets
// sent whole (sendWhole).
func (c *core) lanRoute(p *nat.Packet) lanRouteKind {
	switch {
	case isMartianSource(p.Src) || isMartianDestination(p.Dst):
		return lanMartian
	case !c.lan.contains(p.Src):
		// Not one of ours: masquerading it would hide a misconfiguration
		// (or a spoofer) behind the WAN address.
		return lanMartian
	case p.Dst == c.service:
		return lanService
	case c.lan.contains(p.Dst):
		return lanLocal
	case c.noNAT.contains(p.Dst):
		return lanRouted
	}
	return lanMasquerade
}

// routeOut sends a LAN packet to the WAN, masqueraded or not, handling the
// WAN MTU: too big with DF set is answered with Fragmentation Needed
// quoting the packet as the LAN host sent it; too big without DF is
// fragmented after translation.
// routeOut sends a LAN packet to the WAN, masqueraded or not. A whole
// super-packet (sendWhole checked that its segments fit the WAN MTU) is
// queued as one frame.
func (c *core) routeOut(buf []byte, p *nat.Packet, o *outbox, masquerade, whole bool) {
	tooBig := !whole && len(p.Buf) > c.wanMTU && p.Dst != c.wan()
	if tooBig && p.IP.Flags()&header.IPv4FlagDontFragment != 0 {
		c.drop(nat.DropTooBig)
		c.answerLAN(p, o, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, uint16(c.wanMTU))
		return
	}
	if masquerade {
		r := c.nat.Outbound(p)
		switch r.Verdict {
		case nat.VerdictToLAN: // hairpin
			c.stats.HairpinPackets.Add(1)
			o.toLAN(buf, len(p.Buf))
			return
		case nat.VerdictToWAN:
		default:
			if r.Unreachable {
				c.answerLAN(p, o, header.ICMPv4DstUnreachable, header.ICMPv4AdminProhibited, 0)
			}
			return
		}
	}
	if !masquerade && !c.routed.note(p, c.now()) {
		c.stats.RoutedUntracked.Add(1)
	}
	if whole {
		c.stats.Traffic[LANToWAN][p.Proto].add(len(p.Buf))
		c.stats.GSOWhole.Add(1)
		o.toWANWhole(buf, len(p.Buf))
		return
	}
	c.sendWAN(buf, p, o, tooBig)
}

// sendWAN queues a packet for the WAN, fragmented after translation when
// it is too big for the WAN MTU (DF clear: routeOut answered the others).
func (c *core) sendWAN(buf []byte, p *nat.Packet, o *outbox, tooBig bool) {
	c.stats.Traffic[LANToWAN][p.Proto].add(len(p.Buf))
	if !tooBig {
		o.toWAN(buf, len(p.Buf))
		return
	}
	var frag []byte
	ok := fragment(p.Buf, c.wanMTU,
		func() []byte {
			frag = o.newBuffer()
			if frag == nil {
				return nil
			}
			return frag[c.offset:]
		},
		func(n int) {
			c.stats.FragmentsSent.Add(1)
			o.toWAN(frag, n)
		})
	if !ok {
		c.drop(nat.DropTooBig)
	}
}

// answerLAN sends an ICMP error about p back to the LAN host that sent it,
// from the router's address on that host's network.
func (c *core) answerLAN(p *nat.Packet, o *outbox, typ header.ICMPv4Type, code header.ICMPv4Code, mtu uint16) {
	if !mayAnswerWithError(p) || !c.icmpAllowed(p.Src) {
		return
	}
	buf := o.newBuffer()
	if buf == nil {
		return
	}
	n := buildICMPError(buf[c.offset:], c.lanAddrFor(p.Src), p.Buf, typ, code, mtu)
	c.stats.ICMPErrorsSent.Add(1)
	o.toLAN(buf, n)
}

// lanAddrFor picks the router's address on the network of a LAN host.
func (c *core) lanAddrFor(host [4]byte) [4]byte {
	h := netip.AddrFrom4(host)
	for _, a := range c.lanAddrs {
		if a.Contains(h) {
			return a.Addr().As4()
		}
	}
	if len(c.lanAddrs) > 0 {
		return c.lanAddrs[0].Addr().As4()
	}
	return c.wan()
}

// fromWAN handles one packet captured on the WAN interface.
func (c *core) fromWAN(buf []byte, n int, p *nat.Packet, o *outbox) {
	c.fromWANAs(buf, n, p, o, false)
}

// fromWANAs is fromWAN for a packet that is a TCP super-packet with a
// partial checksum (whole), delivered to the TUN as one frame.
func (c *core) fromWANAs(buf []byte, n int, p *nat.Packet, o *outbox, whole bool) {
	if r := p.Parse(buf[c.offset : c.offset+n]); r != nat.DropNone {
		c.drop(r)
		return
	}
	p.PartialChecksum = whole
	switch {
	case isMartianSource(p.Src) || p.Src == c.wan():
		c.drop(nat.DropMartian)
		return
	case c.lan.contains(p.Src):
		c.drop(nat.DropSpoofedLAN)
		return
	case c.lan.contains(p.Dst):
		// Routed traffic for the LAN is accepted only from no-NAT networks,
		// and only as return traffic of a flow the LAN host opened there
		// (routed.go): the source address alone is forgeable. Everyone
		// else must come through a mapping.
		if !c.noNAT.contains(p.Src) || !c.routed.admits(p, c.now()) {
			c.drop(nat.DropUnsolicited)
			return
		}
		if p.IP.TTL() <= 1 {
			c.drop(nat.DropTTLExceeded)
			c.expiredFromWAN(p.Buf, o)
			return
		}
		c.deliverLAN(buf, p, o, whole)
		return
	case p.Dst != c.wan():
		c.drop(nat.DropMartian)
		return
	}
	// Keep the packet as the remote sent it when it is about to expire:
	// Time Exceeded must quote the original, not the translation.
	var orig []byte
	if p.IP.TTL() <= 1 {
		if orig = o.newBuffer(); orig != nil {
			orig = orig[c.offset : c.offset+copy(orig[c.offset:], p.Buf)]
		}
	}
	r := c.nat.Inbound(p)
	if r.Verdict != nat.VerdictToLAN {
		return // dropped (counted by the engine) or the host's own
	}
	if p.IP.TTL() <= 1 {
		if orig != nil {
			c.expiredFromWAN(orig, o)
		}
		c.drop(nat.DropTTLExceeded)
		return
	}
	c.deliverLAN(buf, p, o, whole)
}

func (c *core) deliverLAN(buf []byte, p *nat.Packet, o *outbox, whole bool) {
	c.stats.Traffic[WANToLAN][p.Proto].add(len(p.Buf))
	if whole {
		c.stats.GSOWhole.Add(1)
		o.toLANWhole(buf, len(p.Buf))
		return
	}
	o.toLAN(buf, len(p.Buf))
}

// expiredFromWAN answers a packet from the WAN whose TTL would run out on
// the way to the LAN.
func (c *core) expiredFromWAN(orig []byte, o *outbox) {
	var q nat.Packet
	if q.Parse(orig) != nat.DropNone || !mayAnswerWithError(&q) || !c.icmpAllowed(q.Src) {
		return
	}
	buf := o.newBuffer()
	if buf == nil {
		return
	}
	n := buildICMPError(buf[c.offset:], c.wan(), orig, header.ICMPv4TimeExceeded, header.ICMPv4TTLExceeded, 0)
	c.stats.ICMPErrorsSent.Add(1)
	o.toWAN(buf, n)
}

// icmpAllowed asks the rate limiter whether an ICMP error may go to dst,
// counting the ones it suppresses. A core without a limiter (some tests)
// sends every error.
func (c *core) icmpAllowed(dst [4]byte) bool {
	if c.icmp == nil {
		return true
	}
	if c.icmp.allow(dst, c.now()) {
		return true
	}
	c.stats.ICMPErrorsSuppressed.Add(1)
	return false
}

// sendReleased queues fragments that the engine held because they came
// before their first fragment, and released translated when it passed
// (nat/frag.go): from the LAN (outbound, the TUN loop's) or from the WAN
// (the WAN loop's). The loop calls it after a pass, so they leave in the
// same write as their first fragment, behind it. It takes at most max, in
// buffers from pool, and reports whether more are waiting.
func (c *core) sendReleased(outbound bool, o *outbox, pool *segmentPool, p *nat.Packet, max int) bool {
	for range max {
		if !c.nat.HasReleased(outbound) {
			return false
		}
		n, v := c.nat.TakeReleased(outbound, pool.next)
		if n == 0 {
			return c.nat.HasReleased(outbound)
		}
		buf := pool.out[len(pool.out)-1]
		if p.Parse(buf[c.offset:c.offset+n]) != nat.DropNone {
			c.drop(nat.DropMalformed) // the engine checked it when it came
			continue
		}
		switch {
		case v == nat.VerdictToWAN:
			c.sendWAN(buf, p, o, len(p.Buf) > c.wanMTU)
		case v == nat.VerdictToLAN && outbound: // hairpinned
			c.stats.HairpinPackets.Add(1)
			o.toLAN(buf, n)
		case v == nat.VerdictToLAN:
			// Like fromWAN: expiring on the way in. A non-first
			// fragment gets no Time Exceeded (it quotes no ports).
			if p.IP.TTL() <= 1 {
				c.drop(nat.DropTTLExceeded)
				continue
			}
			c.deliverLAN(buf, p, o, false)
		}
	}
	return c.nat.HasReleased(outbound)
}
