package nat

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"time"
)

// Limits bound the engine's state and give every LAN host a fair share of
// it ([limits] in the configuration). Anyone on the WAN can forge packets
// and any LAN host can misbehave, so every table that a packet can grow has
// a global bound and, where a LAN host is behind the growth, a per-host one.
// Zero values take the defaults below, which fit a home or office router.
//
// When a bound is reached the engine first evicts state that is not worth
// keeping — flows that never saw an answer (unreplied) or are closing
// (transitory), as Linux conntrack's early drop does — and only then refuses
// the new state: the packet is dropped, counted, and a LAN host is told with
// ICMP Destination Unreachable code 13 (RFC 5508 REQ-8). Established
// flows are never evicted to make room for another host.
type Limits struct {
	// MaxFlows bounds the TCP, UDP and ICMP flows of all hosts together,
	// like nf_conntrack_max. Default 131072.
	MaxFlows int
	// MaxFlowsPerHost bounds one LAN host's flows (and a forward's
	// internal host's). Default 8192.
	MaxFlowsPerHost int
	// MaxMappingsPerHost bounds one LAN host's TCP, UDP and ICMP mappings:
	// the external ports it holds. Default 4096.
	MaxMappingsPerHost int
	// MaxESPPerHost bounds one LAN host's ESP SPI pairs. Default 64.
	MaxESPPerHost int
	// MaxIKEPerHost bounds one LAN host's IKE sessions. Default 64.
	MaxIKEPerHost int
	// MaxRemoteIKE bounds the IKE sessions a remote may start towards one
	// LAN host before that host answers them. Default 4.
	MaxRemoteIKE int
	// RemoteIKETimeout is how long an IKE session the remote started
	// lives before the LAN host answers it. Default 30 s.
	RemoteIKETimeout time.Duration
	// MaxCallsPerHost bounds one LAN host's PPTP calls. Default 64.
	MaxCallsPerHost int
	// MaxFragmentsPerHost bounds one LAN host's fragment table entries and
	// the fragments it sent that wait for their first fragment (frag.go).
	// Default 256 (the table holds 4096).
	MaxFragmentsPerHost int
	// HostFlowRate is how many new flows per second a LAN host may open,
	// with bursts of HostFlowBurst; a flow its hairpinned packet opens on
	// the way back in counts too. Defaults 1000 and 2000.
	HostFlowRate  int
	HostFlowBurst int
	// ForwardFlowRate is how many new flows per second one WAN source may
	// open through port forwards (and endpoint-independent filtering),
	// with bursts of ForwardFlowBurst; hairpinned packets are their LAN
	// host's, under HostFlowRate. Defaults 50 and 100.
	ForwardFlowRate  int
	ForwardFlowBurst int
	// UnrepliedTimeout is how long a flow created from the WAN lives until
	// the inside answers it. Default 30 s.
	UnrepliedTimeout time.Duration
}

// Limit names one bound, for the counters of refusals and evictions.
type Limit uint8

const (
	LimitFlows            Limit = iota // limits.max_flows
	LimitFlowsPerHost                  // limits.max_flows_per_host
	LimitMappings                      // nat.max_mappings
	LimitMappingsPerHost               // limits.max_mappings_per_host
	LimitHostRate                      // limits.host_flow_rate
	LimitForwardRate                   // limits.forward_flow_rate
	LimitESP                           // ipsec.max_esp (SPI pairs)
	LimitESPPerHost                    // limits.max_esp_per_host
	LimitIKE                           // ipsec.max_esp (IKE sessions)
	LimitIKEPerHost                    // limits.max_ike_per_host
	LimitRemoteIKE                     // limits.max_remote_ike
	LimitCalls                         // pptp.max_calls
	LimitCallsPerHost                  // limits.max_calls_per_host
	LimitFragments                     // the fragment table's 4096 entries
	LimitFragmentsPerHost              // limits.max_fragments_per_host
	LimitHeldFragmentsLAN              // fragments from the LAN held for their first fragment: 1024, 2 MiB
	LimitHeldFragmentsWAN              // fragments from the WAN held for their first fragment: 1024, 2 MiB
	numLimits
)

var limitNames = [numLimits]string{
	LimitFlows:            "max_flows",
	LimitFlowsPerHost:     "max_flows_per_host",
	LimitMappings:         "max_mappings",
	LimitMappingsPerHost:  "max_mappings_per_host",
	LimitHostRate:         "host_flow_rate",
	LimitForwardRate:      "forward_flow_rate",
	LimitESP:              "max_esp",
	LimitESPPerHost:       "max_esp_per_host",
	LimitIKE:              "max_ike",
	LimitIKEPerHost:       "max_ike_per_host",
	LimitRemoteIKE:        "max_remote_ike",
	LimitCalls:            "max_calls",
	LimitCallsPerHost:     "max_calls_per_host",
	LimitFragments:        "max_fragments",
	LimitFragmentsPerHost: "max_fragments_per_host",
	LimitHeldFragmentsLAN: "max_held_fragments_lan",
	LimitHeldFragmentsWAN: "max_held_fragments_wan",
}

func (l Limit) String() string {
	if l < numLimits {
		return limitNames[l]
	}
	return "unknown"
}

// AllLimits lists every limit, in order.
func AllLimits() []Limit {
	ls := make([]Limit, numLimits)
	for i := range ls {
		ls[i] = Limit(i)
	}
	return ls
}

// LimitCounters count, per limit, the new state refused and the old state
// evicted to make room. The zero value is ready; it is safe for concurrent
// use and never allocates.
type LimitCounters struct {
	refused [numLimits]atomic.Uint64
	evicted [numLimits]atomic.Uint64
}

// Refused returns how often a limit refused new state.
func (c *LimitCounters) Refused(l Limit) uint64 {
	if l < numLimits {
		return c.refused[l].Load()
	}
	return 0
}

// Evicted returns how much state a limit evicted.
func (c *LimitCounters) Evicted(l Limit) uint64 {
	if l < numLimits {
		return c.evicted[l].Load()
	}
	return 0
}

func (c *LimitCounters) refuse(l Limit) { c.refused[l].Add(1) }
func (c *LimitCounters) evict(l Limit)  { c.evicted[l].Add(1) }

// quota is one kind of state a LAN host holds.
type quota uint8

const (
	quotaFlows quota = iota
	quotaMappings
	quotaESP
	quotaIKE
	quotaCalls
	quotaFragments
	numQuotas
)

// quotaLimit is the per-host limit behind each quota.
var quotaLimit = [numQuotas]Limit{
	quotaFlows:     LimitFlowsPerHost,
	quotaMappings:  LimitMappingsPerHost,
	quotaESP:       LimitESPPerHost,
	quotaIKE:       LimitIKEPerHost,
	quotaCalls:     LimitCallsPerHost,
	quotaFragments: LimitFragmentsPerHost,
}

func (l *Limits) quotaMax(q quota) int {
	switch q {
	case quotaFlows:
		return l.MaxFlowsPerHost
	case quotaMappings:
		return l.MaxMappingsPerHost
	case quotaESP:
		return l.MaxESPPerHost
	case quotaIKE:
		return l.MaxIKEPerHost
	case quotaCalls:
		return l.MaxCallsPerHost
	case quotaFragments:
		return l.MaxFragmentsPerHost
	}
	return 0
}

// hostUsage is what one LAN host holds, and its new-flow token bucket.
type hostUsage struct {
	held   [numQuotas]int
	bucket tokenBucket
}

func (u *hostUsage) empty() bool { return u.held == [numQuotas]int{} }

// hostTable accounts state per LAN host. An entry exists while its host
// holds anything; the LAN prefixes bound how many there can be.
type hostTable struct {
	m map[[4]byte]*hostUsage
}

func (ht *hostTable) init() { ht.m = make(map[[4]byte]*hostUsage) }

// get returns a host's entry, creating it.
func (ht *hostTable) get(host [4]byte) *hostUsage {
	u := ht.m[host]
	if u == nil {
		u = &hostUsage{}
		ht.m[host] = u
	}
	return u
}

// hostFull reports whether host already holds its share of q.
func (e *Engine) hostFull(host [4]byte, q quota) bool {
	u := e.hosts.m[host]
	return u != nil && u.held[q] >= e.cfg.Limits.quotaMax(q)
}

// hostAdmit takes one unit of q for host, or counts a refusal against the
// per-host limit and reports false when the host holds its share already.
// Callers that can evict the host's own expendable state do so first.
func (e *Engine) hostAdmit(host [4]byte, q quota) bool {
	u := e.hosts.get(host)
	if u.held[q] >= e.cfg.Limits.quotaMax(q) {
		e.Limits.refuse(quotaLimit[q])
		return false
	}
	u.held[q]++
	return true
}

// hostRelease gives back one unit of q that hostAdmit took.
func (e *Engine) hostRelease(host [4]byte, q quota) {
	u := e.hosts.m[host]
	if u == nil || u.held[q] == 0 {
		return
	}
	u.held[q]--
	if u.empty() && !u.bucket.used {
		delete(e.hosts.m, host)
	}
}

// tokenBucket is a rate limit: tokens accrue at a rate up to a burst, and
// each new flow takes one. The zero value is a full bucket.
type tokenBucket struct {
	tokens int64 // in millitokens
	last   int64 // engine time of the last refill
	used   bool  // false: never taken from, full
}

// take reports whether a token was available at now, taking it.
func (b *tokenBucket) take(now int64, rate, burst int) bool {
	const milli = 1000
	capacity := int64(burst) * milli
	if !b.used {
		b.tokens, b.last, b.used = capacity, now, true
	} else if ms := (now - b.last) / 1e6; ms > 0 {
		// rate tokens a second are rate millitokens a millisecond.
		b.tokens = min(capacity, b.tokens+ms*int64(rate))
		b.last += ms * 1e6
	}
	if b.tokens < milli {
		return false
	}
	b.tokens -= milli
	return true
}

// full reports whether the bucket would be full at now: an entry in that
// state can be forgotten without changing any decision.
func (b *tokenBucket) full(now int64, rate, burst int) bool {
	if !b.used {
		return true
	}
	const milli = 1000
	return b.tokens+(now-b.last)/1e6*int64(rate) >= int64(burst)*milli
}

// HostUsage is one LAN host's share of the engine's state, for operators.
type HostUsage struct {
	Host      netip.Addr
	Flows     int
	Mappings  int
	ESP       int
	IKE       int
	Calls     int
	Fragments int
}

// FlowCount is how many flows of one protocol are in one state.
type FlowCount struct {
	Proto string // tcp, udp, icmp
	State string // see flowStateNames
	Flows int
}

// maxStatsHosts is how many hosts Stats lists.
const maxStatsHosts = 32

// hostUsage lists the hosts holding the most flows (then mappings), at
// most n.
func (e *Engine) hostUsage(n int) []HostUsage {
	out := make([]HostUsage, 0, min(n, len(e.hosts.m)))
	for addr, u := range e.hosts.m {
		if u.empty() {
			continue
		}
		h := HostUsage{Host: netip.AddrFrom4(addr), Flows: u.held[quotaFlows], Mappings: u.held[quotaMappings],
			ESP: u.held[quotaESP], IKE: u.held[quotaIKE], Calls: u.held[quotaCalls], Fragments: u.held[quotaFragments]}
		out = append(out, h)
	}
	slices.SortFunc(out, func(a, b HostUsage) int {
		if a.Flows != b.Flows {
			return b.Flows - a.Flows
		}
		if a.Mappings != b.Mappings {
			return b.Mappings - a.Mappings
		}
		return a.Host.Compare(b.Host)
	})
	return out[:min(n, len(out))]
}

// sweepHosts forgets hosts that hold nothing and whose bucket is full.
func (e *Engine) sweepHosts(now int64) {
	l := e.cfg.Limits
	for addr, u := range e.hosts.m {
		if u.empty() && u.bucket.full(now, l.HostFlowRate, l.HostFlowBurst) {
			delete(e.hosts.m, addr)
		}
	}
}
