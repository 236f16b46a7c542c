package datapath

import (
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/vpnmasq/vpnmasq/nat"
)

// Headroom is the space before every packet in every buffer: the TUN needs
// room for its virtio-net header (10 bytes), and using the same headroom on
// the WAN side lets a buffer move between the sides uncopied.
const Headroom = 16

// MaxPacket is the largest IPv4 packet.
const MaxPacket = 65535

// Path is the routing decision and its two packet loops. It decides for each
// packet with no I/O of its own; the loops (path.go) read from one
// transport, call it, and write what it queued to the other.
//
// Where the hop is counted: packets from the LAN reach the TUN through the
// kernel's forwarding path, which already decremented the TTL and answered
// TTL expiry. Packets the path writes into the TUN are forwarded by the
// kernel once more (TUN → LAN), which decrements the TTL again and would
// answer expiry itself — with the translated header, towards the remote. So
// the path checks TTL only for packets arriving from the WAN: a packet that
// would expire on its way to the LAN is answered with Time Exceeded from the
// WAN address, quoting the packet as the remote sent it.
//
// A Path holds counters and must not be copied.
type Path struct {
	nat     *nat.Engine
	lan     prefixSet
	noNAT   sharedPrefixSet // replaced by SetNoNAT
	service [4]byte
	// local takes packets for the service address (the netstack); nil
	// until the services run. Set before the loops start (SetLocal).
	local    func(pkt []byte)
	wanMTU   int
	lanAddrs []netip.Prefix // the router's own LAN-side addresses, for ICMP errors
	log      zerolog.Logger

	// icmp rate-limits the ICMP errors the path builds; now is its clock
	// (monotonic nanoseconds), read only when an error is about to be sent
	// or a no-NAT flow is tracked.
	icmp *icmpLimiter
	now  func() int64
	// routed tracks the flows LAN hosts open on no-NAT routes; only their
	// return traffic comes back in (routed.go).
	routed *routedFlows

	dev devices // set by Attach, before the loops start

	drops nat.DropCounters // drops decided here; the engine counts its own
	stats Stats
}

// Config is what a Path is built from.
type Config struct {
	NAT *nat.Engine
	// LAN are the LAN prefixes: the only sources masqueraded.
	LAN []netip.Prefix
	// NoNAT are destinations routed without masquerading.
	NoNAT []netip.Prefix
	// Service is the address of the router's own services (the netstack).
	Service netip.Addr
	// WANMTU is the largest packet sent out of the WAN interface.
	WANMTU int
	// LANAddrs are the router's own addresses on the LAN interfaces, the
	// sources of the ICMP errors it sends to LAN hosts.
	LANAddrs []netip.Prefix
	// ICMPErrorRate and ICMPErrorBurst limit the ICMP errors sent to one
	// destination (per second, and bucket depth); zero sends every error
	// (tests).
	ICMPErrorRate, ICMPErrorBurst int
	// Routed are the lifetimes of flows on no-NAT routes.
	Routed RoutedTimeouts
	Log    zerolog.Logger
	// Now is the clock in nanoseconds on any monotonic scale; nil is the
	// monotonic clock from the call to New.
	Now func() int64
}

// New returns a Path for cfg. It changes nothing outside itself.
func New(cfg Config) *Path {
	p := &Path{
		nat:      cfg.NAT,
		lan:      newPrefixSet(cfg.LAN),
		wanMTU:   cfg.WANMTU,
		lanAddrs: cfg.LANAddrs,
		log:      cfg.Log,
		now:      cfg.Now,
		routed:   newRoutedFlows(cfg.Routed),
	}
	if cfg.Service.Is4() {
		p.service = cfg.Service.As4()
	}
	p.noNAT.store(newPrefixSet(cfg.NoNAT))
	if cfg.ICMPErrorRate > 0 {
		p.icmp = newICMPLimiter(cfg.ICMPErrorRate, cfg.ICMPErrorBurst)
	}
	if p.now == nil {
		p.now = monotonicClock()
	}
	return p
}

// monotonicClock returns nanoseconds since the call, on the monotonic
// clock, so wall-clock steps do not age flows or refill rate limits.
func monotonicClock() func() int64 {
	base := time.Now()
	return func() int64 { return int64(time.Since(base)) }
}

// SetLocal gives the path the function that takes packets for the service
// address; call it before the loops start.
func (p *Path) SetLocal(deliver func(pkt []byte)) { p.local = deliver }

// SetNoNAT replaces the destinations routed without masquerading, and
// forgets the routed flows to networks that are masqueraded now: their
// return traffic must not come in. The loops may run.
func (p *Path) SetNoNAT(prefixes []netip.Prefix) {
	set := newPrefixSet(prefixes)
	p.noNAT.store(set)
	p.routed.forget(func(remote [4]byte) bool { return !set.contains(remote) })
}

// IsNoNAT reports whether traffic to a is routed without masquerading.
func (p *Path) IsNoNAT(a [4]byte) bool { return p.noNAT.contains(a) }

// SetRoutedTimeouts changes the lifetimes of flows on no-NAT routes. The
// loops may run.
func (p *Path) SetRoutedTimeouts(t RoutedTimeouts) { p.routed.setTimeouts(t) }

// RoutedFlows is how many flows on no-NAT routes are tracked.
func (p *Path) RoutedFlows() int { return p.routed.len() }

// SetICMPErrorRate changes the per-destination rate and burst of ICMP
// errors. The loops may run.
func (p *Path) SetICMPErrorRate(rate, burst int) {
	if p.icmp != nil {
		p.icmp.setRate(rate, burst)
	}
}

// Expire forgets idle routed flows and refilled ICMP rate buckets; the
// router calls it once a second.
func (p *Path) Expire() {
	now := p.now()
	p.routed.expire(now)
	if p.icmp != nil {
		p.icmp.expire(now)
	}
}

// Directions of Stats.Traffic.
const (
	LANToWAN = iota // masqueraded or routed out
	WANToLAN        // translated or routed in
)

// Counter is a packet and byte count. A super-packet counts once in
// Packets and once in SuperPackets, its bytes whole.
type Counter struct{ Packets, Bytes, SuperPackets atomic.Uint64 }

func (c *Counter) add(n int) {
	c.Packets.Add(1)
	c.Bytes.Add(uint64(n))
}

func (c *Counter) addSuper(n int) {
	c.add(n)
	c.SuperPackets.Add(1)
}

// Stats counts what crossed the router.
type Stats struct {
	// Traffic is indexed by direction (LANToWAN, WANToLAN) and IP
	// protocol, counted as the packet leaves (after translation).
	Traffic        [2][256]Counter
	HairpinPackets atomic.Uint64 // LAN → WAN address → LAN
	LocalPackets   atomic.Uint64 // LAN ↔ LAN across interfaces
	ServicePackets atomic.Uint64 // LAN → the service address (netstack)
	ICMPErrorsSent atomic.Uint64 // Time Exceeded, Fragmentation Needed, Unreachable
	// ICMPErrorsSuppressed counts errors not sent because their
	// destination's or the global rate limit was reached (icmplimit.go).
	ICMPErrorsSuppressed atomic.Uint64
	FragmentsSent        atomic.Uint64
	// RoutedUntracked counts packets to a no-NAT network whose flow could
	// not be tracked (table full): their replies are dropped.
	RoutedUntracked atomic.Uint64
}

// Stats are the path's traffic counters.
func (p *Path) Stats() *Stats { return &p.stats }

// Drops are the drops the path decided (the engine counts its own); the
// router adds those its transports report.
func (p *Path) Drops() *nat.DropCounters { return &p.drops }

func (p *Path) drop(r nat.DropReason) { p.drops.Add(r) }

// wan is the WAN address: the engine's, which follows the interface's
// address when it changes.
func (p *Path) wan() [4]byte { return p.nat.WANAddr() }
