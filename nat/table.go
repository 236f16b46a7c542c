package nat

import (
	"net/netip"
	"sort"
	"strconv"
	"time"
)

// endpoint is an IPv4 address and a port (or ICMP identifier).
type endpoint struct {
	addr [4]byte
	port uint16
}

func (ep endpoint) AddrPort() netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4(ep.addr), ep.port)
}

// intKey finds a mapping from the LAN side: endpoint-independent, so the
// remote is not part of it.
type intKey struct {
	proto uint8
	ep    endpoint
}

// extKey finds a mapping from the WAN side. There is one WAN address, so the
// external port (or identifier) alone identifies it.
type extKey struct {
	proto uint8
	port  uint16
}

// flowKey is one conversation through a mapping: its filtering state and,
// for TCP, its connection state.
type flowKey struct {
	proto  uint8
	ext    uint16
	remote endpoint
}

// remoteAddrKey counts a mapping's flows per remote address, for
// address-dependent filtering.
type remoteAddrKey struct {
	proto  uint8
	ext    uint16
	remote [4]byte
}

// remoteAddr is a mapping's flows with one remote address: how many exist
// (swept or not) and when the last of them expires, so that filtering
// honours the timers between sweeps.
type remoteAddr struct {
	flows   int
	expires int64
}

// Mapping binds an internal endpoint to an external port on the WAN address.
type Mapping struct {
	Proto    uint8
	Int      endpoint
	Ext      uint16
	Static   bool // a port forward: lives as long as the configuration
	created  int64
	lastUsed int64
	remote   endpoint // most recent remote, for display
	flows    int
	// expires is the latest expiry of the mapping's flows. A TCP flow's
	// timer can shrink, so it is an upper bound; UDP timers only grow,
	// which makes it exact where filtering uses it.
	expires int64
}

// Flow is one remote endpoint talking through a mapping.
type Flow struct {
	m        *Mapping
	ra       *remoteAddr
	remote   endpoint
	expires  int64
	tcp      tcpConn
	lastSeen int64
	// assured: the flow has proven itself (both directions seen; for TCP,
	// the handshake completed and not closing). Flows that are not
	// assured are evicted first when a table is full.
	assured bool
}

// table holds the endpoint mappings shared by TCP, UDP and ICMP queries.
type table struct {
	e        *Engine
	byInt    map[intKey]*Mapping
	byExt    map[extKey]*Mapping
	flows    map[flowKey]*Flow
	byRemote map[remoteAddrKey]*remoteAddr
	pools    [256]*portPool
	dynamic  int // mappings that count against MaxMappings
}

func (t *table) init(e *Engine) {
	t.e = e
	t.byInt = make(map[intKey]*Mapping)
	t.byExt = make(map[extKey]*Mapping)
	t.flows = make(map[flowKey]*Flow)
	t.byRemote = make(map[remoteAddrKey]*remoteAddr)
	t.pools[ProtoTCP] = newPortPool(e.cfg.Ports)
	t.pools[ProtoUDP] = newPortPool(e.cfg.Ports)
	// WAN ports 500 and 4500 belong to the IKE tracker even when the range
	// contains them: an ordinary mapping there would take (and receive)
	// the NAT-T traffic of the LAN host that keeps 4500.
	t.pools[ProtoUDP].mark(PortIKE)
	t.pools[ProtoUDP].mark(PortNATT)
	// ICMP identifiers are not ports: no range is reserved for them on the
	// host, so any identifier will do.
	t.pools[ProtoICMP] = newPortPool(PortRange{First: 1, Last: 65535})
}

// addForward installs the static mappings of a TCP or UDP port forward.
func (t *table) addForward(f Forward) {
	to := f.To.As4()
	for p := int(f.Ports.First); p <= int(f.Ports.Last); p++ {
		m := &Mapping{
			Proto:  f.Proto,
			Int:    endpoint{to, f.ToPort + uint16(p-int(f.Ports.First))},
			Ext:    uint16(p),
			Static: true,
		}
		if f.ToPort == 0 {
			m.Int.port = uint16(p)
		}
		t.pools[f.Proto].mark(m.Ext)
		t.byInt[intKey{f.Proto, m.Int}] = m
		t.byExt[extKey{f.Proto, m.Ext}] = m
	}
}

// mapOutbound returns the mapping of an internal endpoint, creating it when
// needed (endpoint-independent mapping).
func (t *table) mapOutbound(proto uint8, in endpoint, now int64) (*Mapping, Result) {
	if m := t.byInt[intKey{proto, in}]; m != nil {
		return m, Result{}
	}
	if t.dynamic >= t.e.cfg.MaxMappings {
		return nil, Result{Verdict: VerdictDrop, Reason: DropTableFull, Unreachable: true}
	}
	ext, ok := t.pools[proto].take(in.port)
	if !ok {
		return nil, Result{Verdict: VerdictDrop, Reason: DropNoPorts, Unreachable: true}
	}
	m := &Mapping{Proto: proto, Int: in, Ext: ext, created: now, lastUsed: now}
	t.byInt[intKey{proto, in}] = m
	t.byExt[extKey{proto, ext}] = m
	t.dynamic++
	t.e.log.Debug().Str("proto", protoName(proto)).
		Stringer("lan", in.AddrPort()).
		Stringer("wan", endpoint{t.e.wan, ext}.AddrPort()).
		Msg("mapping created")
	return m, Result{}
}

// outboundFlow returns the flow from the internal endpoint in to remote,
// creating the mapping and the flow as needed; created reports a new flow.
// On failure f is nil and r says why.
func (t *table) outboundFlow(proto uint8, in, remote endpoint, now int64) (f *Flow, created bool, r Result) {
	m, r := t.mapOutbound(proto, in, now)
	if m == nil {
		return nil, false, r
	}
	if f = t.flow(m, remote, now); f != nil {
		return f, false, r
	}
	return t.addFlow(m, remote, now), true, r
}

// lookupExt finds the mapping behind an external port.
func (t *table) lookupExt(proto uint8, ext uint16) *Mapping {
	return t.byExt[extKey{proto, ext}]
}

// isForwarded reports whether a port forward owns the internal endpoint.
func (t *table) isForwarded(proto uint8, in endpoint) bool {
	m := t.byInt[intKey{proto, in}]
	return m != nil && m.Static
}

// lookupInt finds the mapping of an internal endpoint without creating one.
func (t *table) lookupInt(proto uint8, in endpoint) *Mapping {
	return t.byInt[intKey{proto, in}]
}

// flow returns the live flow between a mapping and a remote endpoint.
func (t *table) flow(m *Mapping, remote endpoint, now int64) *Flow {
	f := t.flows[flowKey{m.Proto, m.Ext, remote}]
	if f == nil || f.expires <= now {
		return nil
	}
	return f
}

// addFlow creates (or revives) the flow between a mapping and a remote.
func (t *table) addFlow(m *Mapping, remote endpoint, now int64) *Flow {
	k := flowKey{m.Proto, m.Ext, remote}
	if f := t.flows[k]; f != nil {
		// Expired but not yet swept: reuse it with fresh state.
		*f = Flow{m: m, ra: f.ra, remote: remote, lastSeen: now}
		return f
	}
	rk := remoteAddrKey{m.Proto, m.Ext, remote.addr}
	ra := t.byRemote[rk]
	if ra == nil {
		ra = &remoteAddr{}
		t.byRemote[rk] = ra
	}
	ra.flows++
	f := &Flow{m: m, ra: ra, remote: remote, lastSeen: now}
	t.flows[k] = f
	m.flows++
	return f
}

// seenRemoteAddr reports whether a mapping has a live flow with any port of
// a remote address (address-dependent filtering).
func (t *table) seenRemoteAddr(m *Mapping, addr [4]byte, now int64) bool {
	ra := t.byRemote[remoteAddrKey{m.Proto, m.Ext, addr}]
	return ra != nil && ra.expires > now
}

// touch records traffic on a flow and sets its expiry.
func (t *table) touch(f *Flow, now int64, timeout time.Duration) {
	f.lastSeen = now
	f.expires = now + dur(timeout)
	f.ra.expires = max(f.ra.expires, f.expires)
	f.m.expires = max(f.m.expires, f.expires)
	f.m.lastUsed = now
	f.m.remote = f.remote
}

// setAssured marks a flow as worth keeping (both directions seen, TCP
// established) or, when a TCP connection starts closing, as expendable
// again. Expendable flows are evicted first when a table is full.
func (t *table) setAssured(f *Flow, assured bool) {
	f.assured = assured
}

// expire drops expired flows and the dynamic mappings left without flows.
func (t *table) expire(now int64) {
	for k, f := range t.flows {
		if f.expires > now {
			continue
		}
		delete(t.flows, k)
		if f.ra.flows--; f.ra.flows <= 0 {
			delete(t.byRemote, remoteAddrKey{k.proto, k.ext, k.remote.addr})
		}
		f.m.flows--
	}
	for k, m := range t.byExt {
		if m.Static || m.flows > 0 {
			continue
		}
		// A mapping without flows lives only until its last flow's timer,
		// which has passed; the grace of one sweep keeps a mapping that was
		// created this instant (flows are added right after).
		if m.lastUsed == now {
			continue
		}
		delete(t.byExt, k)
		delete(t.byInt, intKey{m.Proto, m.Int})
		t.pools[m.Proto].release(m.Ext)
		t.dynamic--
		t.e.log.Debug().Str("proto", protoName(m.Proto)).
			Stringer("lan", m.Int.AddrPort()).
			Stringer("wan", endpoint{t.e.wan, m.Ext}.AddrPort()).
			Dur("age", time.Duration(now-m.created)).
			Msg("mapping expired")
	}
}

// MappingInfo is a mapping as shown to operators.
type MappingInfo struct {
	Proto  string
	LAN    netip.AddrPort
	WAN    netip.AddrPort
	Remote netip.AddrPort // most recent remote endpoint
	Flows  int
	Static bool
	Age    time.Duration
	Idle   time.Duration
}

// Mappings returns a snapshot of the mapping table, sorted by protocol and
// WAN port.
func (e *Engine) Mappings() []MappingInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	out := make([]MappingInfo, 0, len(e.table.byExt))
	for _, m := range e.table.byExt {
		if m.Static && m.flows == 0 {
			continue
		}
		out = append(out, MappingInfo{
			Proto:  protoName(m.Proto),
			LAN:    m.Int.AddrPort(),
			WAN:    endpoint{e.wan, m.Ext}.AddrPort(),
			Remote: m.remote.AddrPort(),
			Flows:  m.flows,
			Static: m.Static,
			Age:    time.Duration(now - m.created),
			Idle:   time.Duration(now - m.lastUsed),
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Proto != out[j].Proto {
			return out[i].Proto < out[j].Proto
		}
		return out[i].WAN.Port() < out[j].WAN.Port()
	})
	return out
}

// Stats are gauges of the engine's tables.
type Stats struct {
	Mappings      map[string]int // dynamic and active static mappings by protocol
	Flows         int
	PortsInUse    map[string]int
	PortRangeSize int
	// FlowsByState counts flows per protocol and state.
	FlowsByState []FlowCount
	// Hosts are the LAN hosts holding the most state, most flows first
	// (at most 32).
	Hosts []HostUsage
}

// Stats returns the current table sizes.
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	s := Stats{Mappings: map[string]int{}, PortsInUse: map[string]int{}, Flows: len(e.table.flows),
		PortRangeSize: e.table.pools[ProtoTCP].Len()}
	for _, m := range e.table.byExt {
		if !m.Static || m.flows > 0 {
			s.Mappings[protoName(m.Proto)]++
		}
	}
	for _, proto := range []uint8{ProtoTCP, ProtoUDP, ProtoICMP} {
		s.PortsInUse[protoName(proto)] = e.table.pools[proto].inUse
	}
	return s
}

func protoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	case ProtoGRE:
		return "gre"
	case ProtoESP:
		return "esp"
	case ProtoAH:
		return "ah"
	}
	return "proto-" + strconv.Itoa(int(p))
}
