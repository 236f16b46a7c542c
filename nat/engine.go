// Package nat is vpnmasq's masquerade engine: pure logic over parsed packets,
// no sockets, no goroutines, an injected clock. The router hands it one
// Packet at a time; the engine rewrites it in place and says where it goes.
//
// Behaviour follows the NAT behaviour RFCs: endpoint-independent mapping
// (RFC 4787 REQ-1, RFC 5382 REQ-1), a source port kept when it lies in the
// range and is free, otherwise one of the same parity, never two internal
// endpoints on one external port (no overloading; IKE on UDP 500 and NAT-T
// on 4500 are the exceptions, see ike.go), hairpinning, UDP mappings
// of 5 minutes refreshed by outbound traffic, TCP timers of 2 h 4 min
// established and 4 min transitory, ICMP query mappings of 60 s, and ICMP
// errors translated in both directions including their embedded headers
// (RFC 5508), only when they quote a live flow.
//
// Hairpinning (RFC 4787 REQ-9): a LAN host's packet to the WAN address goes
// out through the sender's mapping and straight back in through the
// target's, arriving from the sender's external endpoint. On the way in it
// is a LAN host's packet, not the WAN's, and the LAN host could reach the
// target directly anyway; so a live UDP mapping admits it as
// endpoint-independent filtering would, whatever udp_filtering says (RFC
// 5780's hairpinning test sends from a socket the target never sent to).
// In every other way it is held to what a WAN packet is: it creates no
// mapping, reaches TCP only through forwards and existing connections,
// opens flows on the unreplied timer within the target's share, never
// refreshes the target's mapping, and each flow it opens takes a token of
// its sender's new-flow rate.
//
// The state is hardened against an off-path attacker on the WAN, who can
// forge any source address but cannot see the traffic, and against a LAN
// host that misbehaves: TCP is followed by sequence window in each
// direction (tcpconn.go), and every table has a global bound and a
// per-host share, with early drop of flows that never proved themselves
// (limits.go, table.go). No WAN packet changes state without a reason: in
// window, within quota, or confirmed.
//
// Each IP protocol has a handler; TCP, UDP and ICMP share the endpoint
// mapping table in table.go. VPN protocols (ISAKMP, ESP, AH, GRE, PPTP
// control) have their own handlers beside them.
package nat

import (
	"net/netip"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Filtering selects which inbound packets may use an existing UDP mapping
// (RFC 4787 REQ-8).
type Filtering uint8

const (
	// AddressDependentFiltering passes inbound packets only from remote
	// addresses the internal endpoint has sent to.
	AddressDependentFiltering Filtering = iota
	// EndpointIndependentFiltering passes inbound packets from anyone once
	// the mapping exists ("full cone"), for maximum transparency.
	EndpointIndependentFiltering
)

// Forward is a port forward: traffic to the WAN address on external ports
// Ports goes to To, whose port is ToPort + (port - Ports.First). For GRE and
// ESP, Ports and ToPort are zero: the whole protocol goes to To. Proto is
// TCP, UDP, GRE or ESP (the configuration accepts no other); a forward of
// any other protocol has no effect.
type Forward struct {
	Proto  uint8
	Ports  PortRange
	To     netip.Addr
	ToPort uint16
}

// Config is what the engine needs to know. Durations of zero take the RFC
// defaults.
type Config struct {
	WANAddr               netip.Addr
	Ports                 PortRange
	UDPTimeout            time.Duration
	TCPEstablishedTimeout time.Duration
	TCPTransitoryTimeout  time.Duration
	ICMPTimeout           time.Duration
	UDPFiltering          Filtering
	MaxMappings           int
	// UDPInboundRefresh lets inbound packets extend a UDP flow's timer.
	// Off by default (RFC 4787 REQ-6 requires outbound refresh only as a
	// must): an outsider who can forge a remote's address could otherwise
	// keep a silent host's mapping, and its port, alive forever.
	UDPInboundRefresh bool
	Limits            Limits
	Forwards          []Forward
	IPsec             IPsecConfig
	PPTP              PPTPConfig
	Clock             Clock
	Log               zerolog.Logger
}

// Verdict says where a packet goes after the engine handled it.
type Verdict uint8

const (
	// VerdictDrop: do not forward; Result.Reason says why.
	VerdictDrop Verdict = iota
	// VerdictToWAN: send out of the WAN side (the source is now the WAN address).
	VerdictToWAN
	// VerdictToLAN: deliver to the LAN (destination is now a LAN host).
	VerdictToLAN
	// VerdictHost: not the NAT's business (e.g. an echo request to the
	// router's WAN address); the host's own stack answers it.
	VerdictHost
	// VerdictHeld: a fragment that came before its first fragment. The
	// engine keeps a copy and hands it over translated, through
	// TakeReleased, once the first fragment passes (frag.go); the router
	// sends nothing now.
	VerdictHeld
)

// Result is the outcome for one packet.
type Result struct {
	Verdict Verdict
	Reason  DropReason
	// Unreachable, when true, asks the router to tell the sender with ICMP
	// Destination Unreachable code 13 (administratively prohibited): the
	// engine is out of resources (RFC 5508 section 6, REQ-8).
	Unreachable bool
}

func drop(r DropReason) Result { return Result{Verdict: VerdictDrop, Reason: r} }

var (
	toWAN = Result{Verdict: VerdictToWAN}
	toLAN = Result{Verdict: VerdictToLAN}
)

// protoHandler masquerades one IP protocol. It runs with the engine's lock
// held and may use the engine's shared tables.
type protoHandler interface {
	// Outbound rewrites a LAN→WAN packet so that its source is the WAN address.
	Outbound(p *Packet, now int64) Result
	// Inbound rewrites a WAN→LAN packet addressed to the WAN address so that
	// it reaches the LAN host that owns the mapping.
	Inbound(p *Packet, now int64) Result
}

// Engine is the masquerade state: mappings, flows, port pools and handlers.
// It is safe for concurrent use: the TUN reader and the WAN reader call it
// from different goroutines.
type Engine struct {
	mu       sync.Mutex // guards the tables and settings below (the counters are atomic): one packet, snapshot or control call at a time
	cfg      Config
	wan      [4]byte
	clock    Clock
	base     time.Time
	log      zerolog.Logger
	handlers [256]protoHandler
	table    table
	frags    fragTable
	ike      ikeTracker
	esp      *espHandler
	ah       *ahHandler
	pptp     pptpTracker
	gre      *greHandler
	hosts    hostTable // per-LAN-host quotas and new-flow buckets
	Drops    DropCounters
	Limits   LimitCounters
	// wanWord is wan for readers without the lock (WANAddr).
	wanWord wanAddrWord
	// WANChanges counts the WAN address changes followed (wanaddr.go).
	WANChanges WANChangeCounters
	// hairpinning is set while Outbound takes a hairpinned packet back
	// in; hairpinFrom is the LAN host that sent it. Only the engine sets
	// them, so a packet from the WAN never passes for a hairpinned one,
	// whatever its source address.
	hairpinning bool
	hairpinFrom [4]byte
}

// New builds an engine with the TCP, UDP and ICMP handlers and the static
// mappings of the port forwards.
func New(cfg Config) *Engine {
	cfg = cfg.withDefaults()
	if cfg.Ports.First == 0 || cfg.Ports.Last < cfg.Ports.First {
		cfg.Ports = DefaultPorts
	}
	if cfg.Clock == nil {
		cfg.Clock = SystemClock{}
	}
	e := &Engine{
		cfg:   cfg,
		wan:   cfg.WANAddr.As4(),
		clock: cfg.Clock,
		base:  cfg.Clock.Now(),
		log:   cfg.Log,
	}
	e.wanWord.store(e.wan)
	e.hosts.init()
	e.table.init(e)
	e.frags.init(e)
	e.handlers[ProtoTCP] = &tcpHandler{e: e}
	e.handlers[ProtoUDP] = &udpHandler{e: e}
	e.handlers[ProtoICMP] = &icmpHandler{e: e}
	e.ike.init(e)
	e.esp = newESPHandler(e)
	e.handlers[ProtoESP] = e.esp
	e.ah = &ahHandler{e: e, refused: make(map[hostRemote]*ahRefused)}
	e.handlers[ProtoAH] = e.ah
	e.pptp.init(e)
	e.gre = newGREHandler(e)
	e.handlers[ProtoGRE] = e.gre
	for _, f := range cfg.Forwards {
		switch f.Proto {
		case ProtoTCP, ProtoUDP:
			e.table.addForward(f)
		case ProtoESP:
			// The ESP handler keeps associating other hosts' SPIs; the
			// forward takes the inbound SPIs no pair claims.
			e.esp.forward, e.esp.forwardTo = true, f.To.As4()
		case ProtoGRE:
			// Enhanced GRE of masqueraded calls still goes by Call ID;
			// the forward takes the rest (the PPTP server behind the
			// router).
			e.gre.forward, e.gre.forwardTo = true, f.To.As4()
		}
	}
	return e
}

// WANAddr is the address LAN hosts are masqueraded behind. It may be
// called without the lock, concurrently with SetWANAddr.
func (e *Engine) WANAddr() [4]byte { return e.wanWord.load() }

// now is the engine's monotonic time in nanoseconds since New.
func (e *Engine) now() int64 { return int64(e.clock.Now().Sub(e.base)) }

// Outbound masquerades a packet from a LAN host. A packet to the WAN address
// itself is hairpinned: translated out and straight back in (RFC 4787
// REQ-9), and delivered to the LAN from the sender's external endpoint.
// On the way in it is filtered as from a LAN host, not from the WAN (see
// the package comment): a UDP mapping admits it as endpoint-independent
// filtering would, whatever udp_filtering says, and a flow it opens takes a
// token of its sender's new-flow rate.
func (e *Engine) Outbound(p *Packet) Result {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	src := p.Src
	r := e.outbound(p, now)
	if r.Verdict == VerdictToWAN && p.Dst == e.wan {
		r = e.hairpin(p, src, now)
	}
	if r.Verdict == VerdictDrop {
		e.Drops.Add(r.Reason)
	}
	e.frags.release(now)
	return r
}

// hairpin takes a packet that Outbound translated for the WAN address
// (sent by the LAN host src) back in, to the LAN.
func (e *Engine) hairpin(p *Packet, src [4]byte, now int64) Result {
	e.hairpinning, e.hairpinFrom = true, src
	r := e.inbound(p, now)
	e.hairpinning = false
	if r.Verdict == VerdictHost {
		r = drop(DropLANtoWANAddr)
	}
	return r
}

// Inbound translates a packet that arrived on the WAN for the WAN address.
func (e *Engine) Inbound(p *Packet) Result {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	r := e.inbound(p, now)
	if r.Verdict == VerdictDrop {
		e.Drops.Add(r.Reason)
	}
	e.frags.release(now)
	return r
}

func (e *Engine) outbound(p *Packet, now int64) Result {
	if p.FragOffset != 0 {
		return e.frags.outboundTail(p, now)
	}
	if p.Proto == ProtoICMP && isICMPError(p.ICMPType) {
		return e.icmpErrorOutbound(p)
	}
	h := e.handlers[p.Proto]
	if h == nil {
		return drop(DropUnsupported)
	}
	if !p.MoreFragments {
		return h.Outbound(p, now)
	}
	k := fragKeyOf(p)
	r := h.Outbound(p, now)
	e.frags.first(true, k, r, p.Src, now)
	return r
}

func (e *Engine) inbound(p *Packet, now int64) Result {
	if p.FragOffset != 0 {
		return e.frags.inboundTail(p, now)
	}
	if p.Proto == ProtoICMP && isICMPError(p.ICMPType) {
		return e.icmpErrorInbound(p)
	}
	h := e.handlers[p.Proto]
	if h == nil {
		return drop(DropUnsupported)
	}
	if !p.MoreFragments {
		return h.Inbound(p, now)
	}
	k := fragKeyOf(p)
	r := h.Inbound(p, now)
	e.frags.first(false, k, r, p.Dst, now)
	return r
}

// Expire removes every flow and mapping whose timer ran out. The router calls
// it about once a second; lookups also treat expired flows as absent, so the
// interval only bounds memory, not correctness. A flow's mapping goes with
// its last flow.
func (e *Engine) Expire() {
	// Flows are swept in batches, each under its own hold of the lock, so
	// that a million flows expiring at once never stall the packet loops.
	for {
		e.mu.Lock()
		if !e.table.expireSome(e.now()) {
			break // still locked for the other tables' sweeps
		}
		e.mu.Unlock()
	}
	defer e.mu.Unlock()
	now := e.now()
	e.sweepHosts(now)
	e.frags.expire(now)
	e.ike.expire(now)
	e.esp.expire(now)
	e.pptp.expire(now)
	e.gre.expire(now)
}

// dur converts a configured duration to engine nanoseconds.
func dur(d time.Duration) int64 { return int64(d) }
