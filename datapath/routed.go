package datapath

import (
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
)

// No-NAT routes are exempt from masquerading, not from the router's
// stateful filtering. A packet's source address on the WAN proves nothing:
// anyone on the Internet can write a routing.no_nat address into it, and
// the router has no other evidence of where it came from (the no-NAT
// network is usually reached through the same upstream as everything
// else). So a packet from a no-NAT network to a LAN host is accepted only
// as return traffic of a flow the LAN host opened to that network, the way
// conntrack's ESTABLISHED and RELATED work on a Linux router:
//
//   - TCP and UDP by both addresses and both ports; ICMP echo replies by
//     the echo identifier; other protocols (ESP, AH, GRE, ...) by the
//     protocol and both addresses;
//   - ICMP errors (Destination Unreachable, Time Exceeded, Parameter
//     Problem) from any no-NAT address, when the packet they quote is one
//     of those flows, so path MTU discovery and traceroute keep working;
//   - non-first fragments by the two addresses (they carry no ports).
//
// A flow lives as long as a NAT flow of its protocol would (nat.*_timeout,
// ipsec.esp_timeout, pptp.gre_timeout) after its last packet in either
// direction. Everything else is dropped as unsolicited. The table is bounded
// (routedMaxFlows); when a shard is full a new flow is not tracked and
// counted in Stats.RoutedUntracked, so its replies are dropped.

const (
	routedShards   = 64
	routedMaxFlows = 65536 // over all shards
	routedPerShard = routedMaxFlows / routedShards
)

// routedKey is one direction-independent flow on a no-NAT route, written
// from the LAN host's side. proto 0 with zero ports is the address pair,
// which every flow between the two hosts keeps alive.
type routedKey struct {
	proto            uint8
	lan, remote      [4]byte
	lanPort, remPort uint16
}

type routedShard struct {
	// mu guards flows and lastSweep, and is held to read routedFlows.timeout
	// (setTimeouts holds every shard's).
	mu        sync.Mutex
	flows     map[routedKey]int64 // deadline, nanoseconds
	lastSweep int64
}

// routedFlows is the table of flows LAN hosts opened on no-NAT routes. The
// TUN loop adds (note), the WAN loop looks up (match); both refresh. Its
// maps are sized up front, so it does not allocate per packet.
type routedFlows struct {
	shards  [routedShards]routedShard
	timeout [256]int64 // per IP protocol, nanoseconds; read and changed under a shard's lock (all of them to change)
}

// RoutedTimeouts are the idle lifetimes of flows on no-NAT routes; the
// router takes them from the NAT's.
type RoutedTimeouts struct {
	TCP, UDP, ICMP, ESP, GRE time.Duration
}

func newRoutedFlows(t RoutedTimeouts) *routedFlows {
	r := &routedFlows{timeout: newRoutedFlowTimeouts(t)}
	for i := range r.shards {
		r.shards[i].flows = make(map[routedKey]int64, routedPerShard)
		r.shards[i].lastSweep = -1 << 62
	}
	return r
}

// newRoutedFlowTimeouts is the per-protocol lifetime table for t.
func newRoutedFlowTimeouts(t RoutedTimeouts) (out [256]int64) {
	for i := range out {
		out[i] = int64(t.UDP)
	}
	out[nat.ProtoTCP] = int64(t.TCP)
	out[nat.ProtoICMP] = int64(t.ICMP)
	out[nat.ProtoESP] = int64(t.ESP)
	out[nat.ProtoAH] = int64(t.ESP)
	out[nat.ProtoGRE] = int64(t.GRE)
	// The address pair outlives every flow that refreshes it.
	var longest int64
	for _, d := range out {
		longest = max(longest, d)
	}
	out[0] = longest
	return out
}

func (r *routedFlows) shard(k routedKey) *routedShard {
	h := uint32(k.proto)*0x9e3779b1 ^ be32(k.lan)*0x85ebca6b ^ be32(k.remote)*0xc2b2ae35 ^
		(uint32(k.lanPort)<<16|uint32(k.remPort))*0x27d4eb2f
	return &r.shards[(h^h>>15)%routedShards]
}

// put adds or refreshes k; it reports false when k is new and its shard is
// full even after forgetting expired flows (swept at most once a second).
func (r *routedFlows) put(k routedKey, now int64) bool {
	s := r.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	deadline := now + r.timeout[k.proto] // under the lock: a reload may change it
	if _, ok := s.flows[k]; !ok && len(s.flows) >= routedPerShard {
		if now-s.lastSweep < int64(time.Second) {
			return false
		}
		s.sweep(now)
		if len(s.flows) >= routedPerShard {
			return false
		}
	}
	s.flows[k] = max(deadline, s.flows[k])
	return true
}

// get reports whether k is a live flow, and refreshes it when it is.
func (r *routedFlows) get(k routedKey, now int64) bool {
	s := r.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	d, ok := s.flows[k]
	if !ok || d <= now {
		return false
	}
	s.flows[k] = max(d, now+r.timeout[k.proto])
	return true
}

func (s *routedShard) sweep(now int64) {
	s.lastSweep = now
	for k, d := range s.flows {
		if d <= now {
			delete(s.flows, k)
		}
	}
}

// expire forgets expired flows; the router calls it every second.
func (r *routedFlows) expire(now int64) {
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		s.sweep(now)
		s.mu.Unlock()
	}
}

// len is the number of flows tracked.
func (r *routedFlows) len() int {
	n := 0
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		n += len(s.flows)
		s.mu.Unlock()
	}
	return n
}

// hasPorts reports the protocols whose flows are told apart by port (for
// ICMP, the echo identifier nat.Packet keeps in both port fields).
func hasPorts(proto uint8) bool {
	return proto == nat.ProtoTCP || proto == nat.ProtoUDP || proto == nat.ProtoICMP
}

// note records a packet a LAN host sends on a no-NAT route: its flow and
// its address pair.
func (r *routedFlows) note(p *nat.Packet, now int64) bool {
	ok := r.put(routedKey{lan: p.Src, remote: p.Dst}, now)
	if p.FragOffset != 0 {
		return ok // no ports: the pair alone
	}
	k := routedKey{proto: p.Proto, lan: p.Src, remote: p.Dst}
	if hasPorts(p.Proto) {
		k.lanPort, k.remPort = p.SrcPort, p.DstPort
	}
	return r.put(k, now) && ok
}

// admits reports whether a packet from a no-NAT network to a LAN host
// belongs to a flow the LAN host opened (see the rule above).
func (r *routedFlows) admits(p *nat.Packet, now int64) bool {
	if p.FragOffset != 0 {
		return r.get(routedKey{lan: p.Dst, remote: p.Src}, now)
	}
	if p.Proto == nat.ProtoICMP && isICMPError(p.ICMPType) {
		return r.admitsError(p, now)
	}
	k := routedKey{proto: p.Proto, lan: p.Dst, remote: p.Src}
	if hasPorts(p.Proto) {
		k.lanPort, k.remPort = p.DstPort, p.SrcPort
	}
	return r.get(k, now)
}

// admitsError matches an ICMP error by the packet it quotes, which the LAN
// host must have sent: its source is the LAN host the error goes to.
func (r *routedFlows) admitsError(p *nat.Packet, now int64) bool {
	if len(p.L4) < header.ICMPv4MinimumSize+header.IPv4MinimumSize {
		return false
	}
	in := header.IPv4(p.L4[header.ICMPv4MinimumSize:])
	hlen := int(in.HeaderLength())
	if header.IPVersion(in) != header.IPv4Version || hlen < header.IPv4MinimumSize || len(in) < hlen {
		return false
	}
	lan, rem := in.SourceAddress().As4(), in.DestinationAddress().As4()
	if lan != p.Dst {
		return false
	}
	proto := in.Protocol()
	l4 := in[hlen:]
	if in.FragmentOffset() != 0 || !hasPorts(proto) || len(l4) < 8 {
		return r.get(routedKey{lan: lan, remote: rem}, now)
	}
	k := routedKey{proto: proto, lan: lan, remote: rem}
	switch proto {
	case nat.ProtoICMP:
		id := uint16(l4[4])<<8 | uint16(l4[5])
		k.lanPort, k.remPort = id, id
	default:
		k.lanPort = uint16(l4[0])<<8 | uint16(l4[1])
		k.remPort = uint16(l4[2])<<8 | uint16(l4[3])
	}
	return r.get(k, now)
}

func isICMPError(t header.ICMPv4Type) bool {
	switch t {
	case header.ICMPv4DstUnreachable, header.ICMPv4TimeExceeded, header.ICMPv4ParamProblem:
		return true
	}
	return false
}

// forget drops the routed flows whose remote drop says.
func (r *routedFlows) forget(drop func(remote [4]byte) bool) {
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		for k := range s.flows {
			if drop(k.remote) {
				delete(s.flows, k)
			}
		}
		s.mu.Unlock()
	}
}

// setTimeouts changes the routed flows' lifetimes; each flow keeps its
// deadline until its next packet. Readers hold a shard's lock, so every
// shard is held while the table changes.
func (r *routedFlows) setTimeouts(t RoutedTimeouts) {
	next := newRoutedFlowTimeouts(t)
	for i := range r.shards {
		r.shards[i].mu.Lock()
	}
	r.timeout = next
	for i := range r.shards {
		r.shards[i].mu.Unlock()
	}
}
