// Package admin serves the router's view of itself: a small HTTP API (JSON
// tables, Prometheus metrics, a health check) and a self-refreshing status
// page. The same handler is served on the netstack's port 80 for the LAN,
// behind an address allow-list and an optional bearer token, and on a
// root-only unix socket for `vpnmasq status`.
//
// The package knows nothing about how the router keeps its state: everything
// it shows comes from one Snapshot per request, taken from a Source, and the
// NAT mappings, which may be many, from a page of them (MappingLister) only
// where they are shown: /api/v1/mappings, /api/v1/status (the first page)
// and the status page. /metrics and /healthz never copy a mapping. The
// status page's graphs of the last hour come from a History, which a Source
// may keep (HistorySource).
package admin

import (
	"math"
	"net/netip"
	"strconv"
	"time"
)

// Source gives a consistent picture of the router. Snapshot is called once
// per request or scrape, from any goroutine, and the result is only read.
type Source interface {
	Snapshot() Snapshot
}

// MappingLister is a Source whose Snapshot leaves Mappings empty (it fills
// MappingCounts) and lists the mappings a page at a time instead, so that
// the requests that do not show them never copy them. A Source without it
// puts every mapping in its Snapshot.
type MappingLister interface {
	// MappingPage returns at most limit mappings from the offset-th on,
	// in the NAT's order (protocol, then WAN port), and how many there are.
	MappingPage(offset, limit int) (page []Mapping, total int)
}

// Seconds is a duration in seconds. It is a plain JSON number, so API users
// need no duration parser, and it is rounded to milliseconds on the wire
// because finer digits are only noise to an operator.
type Seconds float64

// SecondsOf converts a duration.
func SecondsOf(d time.Duration) Seconds { return Seconds(d.Seconds()) }

// Duration converts back to a time.Duration.
func (s Seconds) Duration() time.Duration { return time.Duration(float64(s) * float64(time.Second)) }

// String reads like "1h2m3s": whole seconds, which is what the page and the
// CLI show.
func (s Seconds) String() string {
	if math.IsNaN(float64(s)) || math.IsInf(float64(s), 0) {
		return "-"
	}
	return s.Duration().Round(time.Second).String()
}

// MarshalJSON writes the number of seconds to the millisecond. A NaN or an
// infinity, which JSON cannot carry, is written as 0 rather than failing the
// whole response.
func (s Seconds) MarshalJSON() ([]byte, error) {
	f := float64(s)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		f = 0
	}
	return strconv.AppendFloat(nil, math.Round(f*1000)/1000, 'f', -1, 64), nil
}

// Snapshot is the router's state at one moment.
type Snapshot struct {
	Time        time.Time         `json:"time"`
	Uptime      Seconds           `json:"uptime"`
	Version     string            `json:"version"`
	WANAddr     netip.Addr        `json:"wan_addr"`
	WANIf       string            `json:"wan_if"`
	LANPrefixes []netip.Prefix    `json:"lan_prefixes"`
	ServiceAddr netip.Addr        `json:"service_addr"`
	Traffic     []Traffic         `json:"traffic"` // per direction and protocol
	Drops       map[string]uint64 `json:"drops"`   // by reason name
	// Mappings on /api/v1/status are the first statusMappings of the NAT's
	// MappingsTotal; /api/v1/mappings pages through all of them.
	Mappings      []Mapping      `json:"mappings"`
	MappingsTotal int            `json:"mappings_total"`
	MappingCounts map[string]int `json:"mapping_counts"` // by protocol
	Ports         []PortUse      `json:"ports"`          // per protocol
	// Flows counts the NAT's flows by protocol and state.
	Flows []FlowCount `json:"flows"`
	// Hosts are the LAN hosts holding the most NAT state, most flows first.
	Hosts []HostUsage `json:"hosts"`
	// Limits count, per configured limit, the new state it refused and the
	// old state it evicted.
	Limits     []LimitCount `json:"limits"`
	ICMPErrors ICMPErrors   `json:"icmp_errors"`
	VPN        VPN          `json:"vpn"`
	DNS        DNSStats     `json:"dns"`
	// WANChanges counts the WAN address changes the router followed and
	// the state they dropped.
	WANChanges WANChanges `json:"wan_changes"`
}

// WANChanges count the WAN address changes followed since the start and
// what they dropped (the mappings and flows bound to the old address).
type WANChanges struct {
	Changes         uint64 `json:"changes"`
	MappingsDropped uint64 `json:"mappings_dropped"`
	FlowsDropped    uint64 `json:"flows_dropped"`
}

// FlowCount is how many NAT flows of one protocol are in one state.
type FlowCount struct {
	Proto string `json:"proto"`
	State string `json:"state"`
	Flows int    `json:"flows"`
}

// HostUsage is one LAN host's share of the NAT's state.
type HostUsage struct {
	Host      netip.Addr `json:"host"`
	Flows     int        `json:"flows"`
	Mappings  int        `json:"mappings"`
	ESP       int        `json:"esp"`
	IKE       int        `json:"ike"`
	Calls     int        `json:"calls"`
	Fragments int        `json:"fragments"`
}

// LimitCount is one limit's refusals and evictions since the start; Limit
// is its name (max_flows_per_host, host_flow_rate, ...).
type LimitCount struct {
	Limit   string `json:"limit"`
	Refused uint64 `json:"refused"`
	Evicted uint64 `json:"evicted"`
}

// ICMPErrors counts the ICMP errors the router built itself (Time
// Exceeded, Fragmentation Needed, Administratively Prohibited): sent, and
// suppressed by the rate limits.
type ICMPErrors struct {
	Sent       uint64 `json:"sent"`
	Suppressed uint64 `json:"suppressed"`
}

// Traffic counts forwarded packets in one direction for one protocol.
type Traffic struct {
	Direction string `json:"direction"` // "lan_to_wan" or "wan_to_lan"
	Proto     string `json:"proto"`     // tcp udp icmp gre esp ah other
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
	// SuperPackets are the packets among Packets that were TCP or UDP
	// super-packets (up to 64 KiB of segments, translated once).
	SuperPackets uint64 `json:"super_packets"`
}

// Directions of Traffic.
const (
	LANToWAN = "lan_to_wan"
	WANToLAN = "wan_to_lan"
)

// Mapping is one NAT mapping. Remote is the most recent remote endpoint.
type Mapping struct {
	Proto  string         `json:"proto"`
	LAN    netip.AddrPort `json:"lan"`
	WAN    netip.AddrPort `json:"wan"`
	Remote netip.AddrPort `json:"remote"`
	Flows  int            `json:"flows"`
	Static bool           `json:"static"`
	Age    Seconds        `json:"age"`
	Idle   Seconds        `json:"idle"`
}

// PortUse is how much of one protocol's port range is taken.
type PortUse struct {
	Proto string `json:"proto"`
	InUse int    `json:"in_use"`
	Size  int    `json:"size"`
}

// VPN holds the passthrough state of IPsec and PPTP.
type VPN struct {
	IKE  []IKESession `json:"ike"`
	ESP  []ESPPair    `json:"esp"`
	PPTP []PPTPConn   `json:"pptp"`
	AH   []AHRefusal  `json:"ah"`
}

// IKESession is one IKE exchange through the NAT. The SPIs are 16 hex digits.
type IKESession struct {
	LANHost      netip.AddrPort `json:"lan_host"`
	Remote       netip.AddrPort `json:"remote"`
	WANPort      uint16         `json:"wan_port"`
	InitiatorSPI string         `json:"initiator_spi"`
	ResponderSPI string         `json:"responder_spi"`
	Age          Seconds        `json:"age"`
	Idle         Seconds        `json:"idle"`
}

// ESP pair states.
const (
	ESPWaiting     = "waiting"      // outbound SPI seen, the remote's answer not yet
	ESPTentative   = "tentative"    // an inbound SPI delivered to the host, not yet confirmed
	ESPInboundOnly = "inbound-only" // the remote's new SPI bound ahead of the host's
	ESPEstablished = "established"
	ESPSquelched   = "squelched"
)

// ESPPair is one LAN host's ESP security association pair with a remote.
// The SPIs are 8 hex digits, "" while unknown.
type ESPPair struct {
	LANHost netip.Addr `json:"lan_host"`
	Remote  netip.Addr `json:"remote"`
	OutSPI  string     `json:"out_spi"`
	InSPI   string     `json:"in_spi"`
	State   string     `json:"state"` // waiting, tentative, inbound-only, established, squelched
	Age     Seconds    `json:"age"`
	Idle    Seconds    `json:"idle"`
	// Out is the health of the host's SA (out_spi, LAN to WAN), In of the
	// remote's (in_spi).
	Out TunnelHealth `json:"out"`
	In  TunnelHealth `json:"in"`
}

// TunnelHealth is one direction of an ESP pair or a PPTP call, from the
// sequence numbers its packets carry in clear: lost are numbers skipped
// and not seen since (before the router: on the LAN for out, on the way
// from the remote for in), late those that arrived below the highest seen
// (reordered or repeated). Sequenced is false when the sender numbers
// nothing (GRE without sequence numbers): lost and late are then 0.
type TunnelHealth struct {
	Packets   uint64  `json:"packets"`
	Bytes     uint64  `json:"bytes"`
	Sequenced bool    `json:"sequenced"`
	Lost      uint64  `json:"lost"`
	Late      uint64  `json:"late"`
	Idle      Seconds `json:"idle"` // since the last packet; 0 when none was seen
}

// LossPercent is Lost as a share of the packets expected (those that came
// and those lost), 0 without any.
func (h TunnelHealth) LossPercent() float64 {
	if h.Lost == 0 {
		return 0
	}
	return 100 * float64(h.Lost) / float64(h.Lost+h.Packets)
}

// PPTPConn is one PPTP control connection and its calls.
type PPTPConn struct {
	Client netip.AddrPort `json:"client"`
	Server netip.AddrPort `json:"server"`
	State  string         `json:"state"` // open, closed
	Calls  []PPTPCall     `json:"calls"`
}

// PPTPCall is one call on a control connection: the client's Call ID, the
// one the NAT put on the wire in its place, and the server's.
type PPTPCall struct {
	CallID     uint16  `json:"call_id"`
	MasqCallID uint16  `json:"masq_call_id"`
	PeerCallID uint16  `json:"peer_call_id"`
	State      string  `json:"state"` // setup, established, ending
	GREOut     uint64  `json:"gre_out"`
	GREIn      uint64  `json:"gre_in"`
	Age        Seconds `json:"age"`
	// Out is the health of the client's GRE to the server, In of the
	// server's back (since this run; gre_out and gre_in count across
	// restarts).
	Out TunnelHealth `json:"out"`
	In  TunnelHealth `json:"in"`
}

// AHRefusal records a LAN host whose AH traffic the NAT refused: AH protects
// the IP addresses, so it cannot be masqueraded.
type AHRefusal struct {
	LANHost  netip.Addr `json:"lan_host"`
	Remote   netip.Addr `json:"remote"`
	Packets  uint64     `json:"packets"`
	LastSeen Seconds    `json:"last_seen"`
}

// DNSStats counts the DNS forwarder's work.
type DNSStats struct {
	UDPQueries       uint64 `json:"udp_queries"`
	TCPQueries       uint64 `json:"tcp_queries"`
	CacheHits        uint64 `json:"cache_hits"`
	UpstreamFailures uint64 `json:"upstream_failures"`
	Answered         uint64 `json:"answered"`
	// UpstreamIgnored counts datagrams from upstreams that were not the
	// awaited answer (another ID or question): forgeries or late answers.
	UpstreamIgnored uint64 `json:"upstream_ignored"`
}

// normalized returns a copy whose lists are never nil, so the JSON has []
// where a client would otherwise have to handle null, and whose drop map
// holds every known reason.
func (s Snapshot) normalized() Snapshot {
	s.LANPrefixes = orEmpty(s.LANPrefixes)
	s.Traffic = orEmpty(s.Traffic)
	s.Drops = allDrops(s.Drops)
	s.Mappings = orEmpty(s.Mappings)
	s.MappingsTotal = max(s.MappingsTotal, len(s.Mappings))
	s.MappingCounts = mappingCounts(s)
	s.Ports = orEmpty(s.Ports)
	s.Flows = orEmpty(s.Flows)
	s.Hosts = orEmpty(s.Hosts)
	s.Limits = orEmpty(s.Limits)
	s.VPN = s.VPN.normalized()
	return s
}

func (v VPN) normalized() VPN {
	v.IKE = orEmpty(v.IKE)
	v.ESP = orEmpty(v.ESP)
	v.AH = orEmpty(v.AH)
	conns := make([]PPTPConn, len(v.PPTP))
	for i, c := range v.PPTP {
		c.Calls = orEmpty(c.Calls)
		conns[i] = c
	}
	v.PPTP = conns
	return v
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// mappingProtos always have a mapping count (and a vpnmasq_mappings
// series), so that a graph shows zero rather than a gap.
var mappingProtos = []string{"tcp", "udp", "icmp"}

// mappingCounts returns a copy of s.MappingCounts with every protocol of
// mappingProtos, counted from s.Mappings when the Source gave no counts.
func mappingCounts(s Snapshot) map[string]int {
	out := make(map[string]int, len(mappingProtos))
	for _, p := range mappingProtos {
		out[p] = 0
	}
	if s.MappingCounts == nil {
		for _, m := range s.Mappings {
			out[m.Proto]++
		}
		return out
	}
	for p, n := range s.MappingCounts {
		out[p] = n
	}
	return out
}
