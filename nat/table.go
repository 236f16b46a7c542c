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
// (swept or not) and when the last of them expires by outbound refresh, so
// that address-dependent filtering honours the timers between sweeps.
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
	// expires is the latest expiry its flows got from the inside: the
	// mapping's own timer (RFC 4787 REQ-6, outbound refresh). Flows an
	// outsider opened do not extend it, so endpoint-independent filtering
	// cannot be used to keep a silent host's mapping alive.
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
	// out and in: the inside and the outside have sent on this flow.
	out, in bool
	// dead: removed from the table; the timer wheel may still hold it.
	dead bool
	// prev and next link the flow into its host's list of expendable
	// (not assured) flows, oldest first; gprev and gnext into the list of
	// all hosts' expendable flows.
	prev, next   *Flow
	gprev, gnext *Flow
	listed       bool
}

// host is the LAN host whose share the flow counts against: the mapping's
// internal host (a port forward's target for forwarded flows).
func (f *Flow) host() [4]byte { return f.m.Int.addr }

// flowList is an intrusive list of flows, oldest first.
type flowList struct{ head, tail *Flow }

// table holds the endpoint mappings shared by TCP, UDP and ICMP queries.
type table struct {
	e        *Engine
	byInt    map[intKey]*Mapping
	byExt    map[extKey]*Mapping
	flows    map[flowKey]*Flow
	byRemote map[remoteAddrKey]*remoteAddr
	pools    [256]*portPool
	dynamic  int // mappings that count against MaxMappings
	// expendable holds every flow that is not assured, oldest first:
	// early drop takes from its head when max_flows is reached.
	expendable flowList
	// hostLists are the same flows per LAN host, for the per-host bound.
	hostLists map[[4]byte]*flowList
	// perProto and assured count the flows and the assured flows by
	// protocol (protoIndex), for the gauges.
	perProto, assured [3]int
	// sources are the new-flow buckets of WAN sources that opened flows
	// through a forward or endpoint-independent filtering.
	sources map[[4]byte]*tokenBucket
	wheel   timerWheel
}

// maxSources bounds the WAN sources whose new-flow rate is tracked. A
// source not tracked because the map is full is not rate-limited: under a
// flood from forged random sources a per-source rate cannot help anyway,
// and refusing untracked sources would lock out genuine clients; the flow
// bounds and early drop protect the table then.
const maxSources = 16384

func (t *table) init(e *Engine) {
	t.e = e
	t.byInt = make(map[intKey]*Mapping)
	t.byExt = make(map[extKey]*Mapping)
	t.flows = make(map[flowKey]*Flow)
	t.byRemote = make(map[remoteAddrKey]*remoteAddr)
	t.hostLists = make(map[[4]byte]*flowList)
	t.sources = make(map[[4]byte]*tokenBucket)
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

// refused is the result of a bound that refuses new state: the packet is
// dropped and a LAN sender is told (ICMP 3/13, RFC 5508 REQ-8).
func refused(r DropReason) Result {
	return Result{Verdict: VerdictDrop, Reason: r, Unreachable: true}
}

// mapOutbound returns the mapping of an internal endpoint, creating it when
// needed (endpoint-independent mapping).
func (t *table) mapOutbound(proto uint8, in endpoint, now int64) (*Mapping, Result) {
	if m := t.byInt[intKey{proto, in}]; m != nil {
		return m, Result{}
	}
	if t.dynamic >= t.e.cfg.MaxMappings {
		t.e.Limits.refuse(LimitMappings)
		return nil, refused(DropTableFull)
	}
	if t.e.hostFull(in.addr, quotaMappings) && !t.evictHostMapping(in.addr) {
		t.e.hostAdmit(in.addr, quotaMappings) // counts the refusal
		return nil, refused(DropHostQuota)
	}
	ext, ok := t.pools[proto].take(in.port)
	if !ok {
		return nil, refused(DropNoPorts)
	}
	t.e.hostAdmit(in.addr, quotaMappings)
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

// removeMapping frees a dynamic mapping that has no flows left.
func (t *table) removeMapping(m *Mapping, now int64) {
	if m.Static || m.flows > 0 {
		return
	}
	delete(t.byExt, extKey{m.Proto, m.Ext})
	delete(t.byInt, intKey{m.Proto, m.Int})
	t.pools[m.Proto].release(m.Ext)
	t.dynamic--
	t.e.hostRelease(m.Int.addr, quotaMappings)
	t.e.log.Debug().Str("proto", protoName(m.Proto)).
		Stringer("lan", m.Int.AddrPort()).
		Stringer("wan", endpoint{t.e.wan, m.Ext}.AddrPort()).
		Dur("age", time.Duration(now-m.created)).
		Msg("mapping expired")
}

// outboundFlow returns the flow from the internal endpoint in to remote,
// creating the mapping and the flow as needed; created reports a new flow.
// On failure f is nil and r says why.
func (t *table) outboundFlow(proto uint8, in, remote endpoint, now int64) (f *Flow, created bool, r Result) {
	if m := t.byInt[intKey{proto, in}]; m != nil {
		if f = t.flow(m, remote, now); f != nil {
			f.out = true
			return f, false, Result{}
		}
	}
	// A new flow: the host's rate first, so that a host over its rate
	// takes no port either.
	if !t.hostRateAdmit(in.addr, now) {
		return nil, false, drop(DropRateLimited)
	}
	m, r := t.mapOutbound(proto, in, now)
	if m == nil {
		return nil, false, r
	}
	if f, r = t.newFlow(m, remote, now); f == nil {
		t.removeMapping(m, now)
		return nil, false, r
	}
	f.out = true
	return f, true, Result{}
}

// hostRateAdmit takes a new-flow token of a LAN host, or counts the
// refusal.
func (t *table) hostRateAdmit(host [4]byte, now int64) bool {
	if t.e.hosts.get(host).bucket.take(now, t.e.cfg.Limits.HostFlowRate, t.e.cfg.Limits.HostFlowBurst) {
		return true
	}
	// The host's entry stays even if it holds nothing: its drained
	// bucket is what limits the rate (swept in Expire once full).
	t.e.Limits.refuse(LimitHostRate)
	return false
}

// inboundFlow opens a flow from the outside through a mapping that admits
// it (a port forward, or UDP filtering): the opener's rate, then the
// bounds, which are the mapping's host's (a forward's target's). The flow
// lives on the unreplied timer until the inside answers; the caller sets
// it.
func (t *table) inboundFlow(m *Mapping, remote endpoint, now int64) (*Flow, Result) {
	if t.e.hairpinning {
		// A hairpinned flow is opened by the LAN host that sent the
		// packet: it takes a token of that host's new-flow rate, as its
		// flows out do. Not of a WAN source's: every hairpinned packet
		// comes from the WAN address, so all LAN hosts would share one
		// bucket. Nor is the token taken on the way out enough: the
		// sender's outbound flow may be older than this one (a
		// hairpinned flow that timed out unanswered is opened again).
		if !t.hostRateAdmit(t.e.hairpinFrom, now) {
			return nil, drop(DropRateLimited)
		}
	} else if !t.sourceAdmit(remote.addr, now) {
		t.e.Limits.refuse(LimitForwardRate)
		return nil, drop(DropRateLimited)
	}
	f, r := t.newFlow(m, remote, now)
	if f == nil {
		// Nobody on the WAN is told: ICMP to a forged source would
		// reflect the flood at an innocent address.
		r.Unreachable = false
		return nil, r
	}
	f.in = true
	return f, Result{}
}

// sourceAdmit takes a new-flow token of a WAN source.
func (t *table) sourceAdmit(src [4]byte, now int64) bool {
	b := t.sources[src]
	if b == nil {
		if len(t.sources) >= maxSources {
			return true // see maxSources
		}
		b = &tokenBucket{}
		t.sources[src] = b
	}
	return b.take(now, t.e.cfg.Limits.ForwardFlowRate, t.e.cfg.Limits.ForwardFlowBurst)
}

// newFlow admits a flow within max_flows and the host's share, evicting
// expendable flows first, and creates it.
func (t *table) newFlow(m *Mapping, remote endpoint, now int64) (*Flow, Result) {
	host := m.Int.addr
	// Pinned while making room: evicting the mapping's own last flow, or
	// replacing its expired flow to this remote, must not free it.
	m.flows++
	defer func() { m.flows-- }()
	if t.e.hostFull(host, quotaFlows) {
		l := t.hostLists[host]
		if l == nil || l.head == nil {
			t.e.hostAdmit(host, quotaFlows) // counts the refusal
			return nil, refused(DropHostQuota)
		}
		t.e.Limits.evict(LimitFlowsPerHost)
		t.removeFlow(l.head, now, "evicted: host at max_flows_per_host")
	}
	if len(t.flows) >= t.e.cfg.Limits.MaxFlows {
		if t.expendable.head == nil {
			t.e.Limits.refuse(LimitFlows)
			return nil, refused(DropTableFull)
		}
		t.e.Limits.evict(LimitFlows)
		t.removeFlow(t.expendable.head, now, "evicted: max_flows")
	}
	k := flowKey{m.Proto, m.Ext, remote}
	if old := t.flows[k]; old != nil {
		// Expired but not yet swept: it goes now, with its accounting.
		t.removeFlow(old, now, "")
	}
	if !t.e.hostAdmit(host, quotaFlows) {
		return nil, refused(DropHostQuota)
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
	t.perProto[protoIndex(m.Proto)]++
	t.list(f)
	return f, Result{}
}

// removeFlow takes a flow out of the table, with its mapping when it was
// the last; why, when not empty, is logged.
func (t *table) removeFlow(f *Flow, now int64, why string) {
	if f.dead {
		return
	}
	f.dead = true
	k := flowKey{f.m.Proto, f.m.Ext, f.remote}
	if t.flows[k] == f {
		delete(t.flows, k)
	}
	if f.ra.flows--; f.ra.flows <= 0 {
		rk := remoteAddrKey{f.m.Proto, f.m.Ext, f.remote.addr}
		if t.byRemote[rk] == f.ra {
			delete(t.byRemote, rk)
		}
	}
	t.unlist(f)
	if f.assured {
		t.assured[protoIndex(f.m.Proto)]--
	}
	t.perProto[protoIndex(f.m.Proto)]--
	t.e.hostRelease(f.host(), quotaFlows)
	if f.m.Proto == ProtoTCP && f.remote.port == PortPPTP && !f.m.Static {
		// A PPTP control connection's record lives and dies with its flow.
		t.e.pptp.gone(t.e.pptp.lookup(pptpConnKey{f.m.Int, f.remote}), now)
	}
	f.m.flows--
	if why != "" {
		t.e.log.Debug().Str("proto", protoName(f.m.Proto)).
			Stringer("lan", f.m.Int.AddrPort()).Stringer("remote", f.remote.AddrPort()).
			Str("why", why).Msg("flow removed")
	}
	t.removeMapping(f.m, now)
}

// list puts a flow that is not assured at the tail of the expendable lists.
func (t *table) list(f *Flow) {
	if f.listed || f.assured {
		return
	}
	f.listed = true
	g := &t.expendable
	f.gprev, f.gnext = g.tail, nil
	if g.tail != nil {
		g.tail.gnext = f
	} else {
		g.head = f
	}
	g.tail = f
	h := t.hostLists[f.host()]
	if h == nil {
		h = &flowList{}
		t.hostLists[f.host()] = h
	}
	f.prev, f.next = h.tail, nil
	if h.tail != nil {
		h.tail.next = f
	} else {
		h.head = f
	}
	h.tail = f
}

// unlist takes a flow out of the expendable lists.
func (t *table) unlist(f *Flow) {
	if !f.listed {
		return
	}
	f.listed = false
	g := &t.expendable
	if f.gprev != nil {
		f.gprev.gnext = f.gnext
	} else {
		g.head = f.gnext
	}
	if f.gnext != nil {
		f.gnext.gprev = f.gprev
	} else {
		g.tail = f.gprev
	}
	h := t.hostLists[f.host()]
	if f.prev != nil {
		f.prev.next = f.next
	} else {
		h.head = f.next
	}
	if f.next != nil {
		f.next.prev = f.prev
	} else {
		h.tail = f.prev
	}
	if h.head == nil {
		delete(t.hostLists, f.host())
	}
	f.prev, f.next, f.gprev, f.gnext = nil, nil, nil, nil
}

// evictHostMapping frees one mapping of a host that holds its share of
// mappings, by evicting an expendable flow that is its mapping's only one.
// It looks at a bounded number of the host's oldest expendable flows.
func (t *table) evictHostMapping(host [4]byte) bool {
	l := t.hostLists[host]
	if l == nil {
		return false
	}
	n := 0
	for f := l.head; f != nil && n < 64; f, n = f.next, n+1 {
		if f.m.flows == 1 && !f.m.Static {
			t.e.Limits.evict(LimitMappingsPerHost)
			t.removeFlow(f, t.e.now(), "evicted: host at max_mappings_per_host")
			return true
		}
	}
	return false
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

// seenRemoteAddr reports whether a mapping has a live flow with any port of
// a remote address (address-dependent filtering).
func (t *table) seenRemoteAddr(m *Mapping, addr [4]byte, now int64) bool {
	ra := t.byRemote[remoteAddrKey{m.Proto, m.Ext, addr}]
	return ra != nil && ra.expires > now
}

// touch records traffic on a flow and sets its expiry. Only the inside's
// traffic (and TCP, whose timers follow the connection's state) extends
// the mapping's own timer and its filtering state.
func (t *table) touch(f *Flow, now int64, timeout time.Duration) {
	t.setExpiry(f, now, now+dur(timeout))
	if f.out || f.m.Proto == ProtoTCP {
		f.ra.expires = max(f.ra.expires, f.expires)
		f.m.expires = max(f.m.expires, f.expires)
	}
	f.m.lastUsed = now
	f.m.remote = f.remote
}

// setExpiry sets a flow's timer and puts a new flow on the timer wheel.
func (t *table) setExpiry(f *Flow, now, expires int64) {
	first := f.expires == 0
	f.lastSeen = now
	f.expires = expires
	if first {
		t.wheel.add(f)
	}
}

// setAssured marks a flow as worth keeping (both directions seen, TCP
// established) or, when a TCP connection starts closing, as expendable
// again. Expendable flows are evicted first when a table is full.
func (t *table) setAssured(f *Flow, assured bool) {
	if f.assured == assured || f.dead {
		return
	}
	f.assured = assured
	if assured {
		t.assured[protoIndex(f.m.Proto)]++
		t.unlist(f)
	} else {
		t.assured[protoIndex(f.m.Proto)]--
		t.list(f)
	}
}

// protoIndex numbers the mapped protocols for the gauges.
func protoIndex(proto uint8) int {
	switch proto {
	case ProtoTCP:
		return 0
	case ProtoUDP:
		return 1
	}
	return 2
}

// expireBatch is how many flows one hold of the engine lock sweeps: about
// 0.3 ms on a busy 2-core machine, so that a sweep of a million flows never
// stalls the packet loops for longer than that.
const expireBatch = 512

// expireSome sweeps at most expireBatch flows that are due by now from the
// timer wheel and reports whether more are due.
func (t *table) expireSome(now int64) (more bool) {
	n := 0
	for n < expireBatch {
		f, ok := t.wheel.next(now)
		if !ok {
			break
		}
		n++
		switch {
		case f.dead:
		case f.expires > now:
			t.wheel.add(f) // refreshed since it was filed
		default:
			t.removeFlow(f, now, "")
		}
	}
	if n < expireBatch {
		t.sweepSources(now)
		return false
	}
	return true
}

// sweepSources forgets WAN sources whose bucket is full again.
func (t *table) sweepSources(now int64) {
	l := t.e.cfg.Limits
	for src, b := range t.sources {
		if b.full(now, l.ForwardFlowRate, l.ForwardFlowBurst) {
			delete(t.sources, src)
		}
	}
}

// timerWheel files flows by the second they expire in, so that a sweep
// looks only at flows that are due. A flow is filed once and re-filed only
// when the sweep finds its timer was extended, so refreshing a flow costs
// nothing. Seconds beyond the wheel's span go into its last slot and are
// re-filed from there.
type timerWheel struct {
	slots [wheelSlots][]*Flow
	// at is the second the sweep has reached: slots before it are empty.
	at int64
	// pos is the position in slot at the sweep has reached.
	pos int
}

const wheelSlots = 4096 // a little over an hour

func (w *timerWheel) add(f *Flow) {
	sec := f.expires / 1e9
	if f.expires%1e9 != 0 {
		sec++
	}
	// A flow filed into the slot being swept lands after pos, so it is
	// seen in this sweep or the next; one not yet due is always filed for
	// a later second than the sweep's, so a sweep ends.
	sec = min(max(sec, w.at), w.at+wheelSlots-1)
	i := sec % wheelSlots
	w.slots[i] = append(w.slots[i], f)
}

// next returns the next flow filed for a second that has begun by now.
func (w *timerWheel) next(now int64) (*Flow, bool) {
	nowSec := now / 1e9
	for w.at <= nowSec {
		i := w.at % wheelSlots
		s := w.slots[i]
		if w.pos < len(s) {
			f := s[w.pos]
			s[w.pos] = nil
			w.pos++
			return f, true
		}
		// The slot is done: keep its array unless a burst made it large.
		if cap(s) > 1024 {
			w.slots[i] = nil
		} else {
			w.slots[i] = s[:0]
		}
		w.pos = 0
		if w.at == nowSec {
			// Flows filed for this second later in it are swept next time.
			return nil, false
		}
		w.at++
	}
	return nil, false
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
	e.mu.Unlock()
	// Sorted outside the lock: the packet loops wait only for the copy.
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
	s.FlowsByState = e.table.flowCounts()
	s.Hosts = e.hostUsage(maxStatsHosts)
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

// flowCounts counts flows by protocol and state ("assured" or
// "unassured") from the gauges the table keeps, without a scan.
func (t *table) flowCounts() []FlowCount {
	out := make([]FlowCount, 0, 6)
	for i, proto := range []string{"tcp", "udp", "icmp"} {
		out = append(out, FlowCount{Proto: proto, State: "assured", Flows: t.assured[i]},
			FlowCount{Proto: proto, State: "unassured", Flows: t.perProto[i] - t.assured[i]})
	}
	return out
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
