package admin

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/vpnmasq/vpnmasq/nat"
)

// The descriptors of the metrics listed on Collector.
var (
	descPackets = prometheus.NewDesc("vpnmasq_packets_total",
		"Packets forwarded, by direction (lan_to_wan, wan_to_lan) and protocol.", []string{"direction", "proto"}, nil)
	descBytes = prometheus.NewDesc("vpnmasq_bytes_total",
		"Bytes forwarded (whole IP packets), by direction and protocol.", []string{"direction", "proto"}, nil)
	descSuperPackets = prometheus.NewDesc("vpnmasq_super_packets_total",
		"Packets among vpnmasq_packets_total that were TCP or UDP super-packets (segments of one flow translated and sent as one), by direction and protocol.",
		[]string{"direction", "proto"}, nil)
	descDrops = prometheus.NewDesc("vpnmasq_drops_total",
		"Packets dropped, by reason.", []string{"reason"}, nil)
	descMappings = prometheus.NewDesc("vpnmasq_mappings",
		"NAT mappings, by protocol.", []string{"proto"}, nil)
	descPortsInUse = prometheus.NewDesc("vpnmasq_ports_in_use",
		"WAN ports (ICMP query identifiers) in use, by protocol.", []string{"proto"}, nil)
	descPortsSize = prometheus.NewDesc("vpnmasq_ports_size",
		"Size of the WAN port range, by protocol.", []string{"proto"}, nil)
	descVPN = prometheus.NewDesc("vpnmasq_vpn_sessions",
		"VPN passthrough state, by kind (ike, esp_established, esp_waiting, esp_tentative, esp_inbound_only, esp_squelched, pptp_control, pptp_call, ah_refused).",
		[]string{"kind"}, nil)
	descTunnelLost = prometheus.NewDesc("vpnmasq_tunnel_lost_packets",
		"Packets missing by the sequence numbers of the ESP pairs and PPTP calls tracked now, summed, by kind (esp, pptp) and direction (lan_to_wan, wan_to_lan).",
		[]string{"kind", "direction"}, nil)
	descTunnelLate = prometheus.NewDesc("vpnmasq_tunnel_late_packets",
		"Packets that arrived below the highest sequence number seen (reordered or repeated), summed over the ESP pairs and PPTP calls tracked now, by kind and direction.",
		[]string{"kind", "direction"}, nil)
	descTunnelsLossy = prometheus.NewDesc("vpnmasq_tunnels_lossy",
		"ESP pairs and PPTP calls tracked now that lost more than 1 % of their packets in either direction, by kind.",
		[]string{"kind"}, nil)
	descDNSQueries = prometheus.NewDesc("vpnmasq_dns_queries_total",
		"Queries to the DNS forwarder, by transport (udp, tcp).", []string{"transport"}, nil)
	descDNSHits = prometheus.NewDesc("vpnmasq_dns_cache_hits_total",
		"DNS queries answered from the cache.", nil, nil)
	descDNSFailures = prometheus.NewDesc("vpnmasq_dns_upstream_failures_total",
		"Upstream DNS queries that failed or timed out.", nil, nil)
	descDNSIgnored = prometheus.NewDesc("vpnmasq_dns_upstream_ignored_total",
		"Datagrams from DNS upstreams ignored because they were not the awaited answer (another ID or question).", nil, nil)
	descFlows = prometheus.NewDesc("vpnmasq_flows",
		"NAT flows, by protocol and state.", []string{"proto", "state"}, nil)
	descLimitRefusals = prometheus.NewDesc("vpnmasq_limit_refusals_total",
		"New NAT state refused, by the limit that refused it.", []string{"limit"}, nil)
	descLimitEvictions = prometheus.NewDesc("vpnmasq_limit_evictions_total",
		"NAT state evicted to make room, by the limit that was reached.", []string{"limit"}, nil)
	descICMPErrors = prometheus.NewDesc("vpnmasq_icmp_errors_total",
		"ICMP errors the router built (Time Exceeded, Fragmentation Needed, Administratively Prohibited), by result: sent, or suppressed by the rate limits.",
		[]string{"result"}, nil)
	descWANChanges = prometheus.NewDesc("vpnmasq_wan_address_changes_total",
		"WAN address changes the router followed.", nil, nil)
	descWANDropped = prometheus.NewDesc("vpnmasq_wan_change_dropped_total",
		"State dropped because it was bound to a WAN address that changed, by kind (mappings, flows).", []string{"kind"}, nil)
	descUptime = prometheus.NewDesc("vpnmasq_uptime_seconds",
		"Seconds since the router started.", nil, nil)
	descBuild = prometheus.NewDesc("vpnmasq_build_info",
		"Always 1; the version is the label.", []string{"version"}, nil)
)

// Collector turns one Snapshot per scrape into metrics. It keeps no state of
// its own: the router's counters are the truth, and two scrapes never see
// halves of different snapshots.
//
// The metrics served on /metrics, besides the Go runtime's go_* and the
// process's process_* metrics:
//
//	vpnmasq_packets_total{direction,proto}    counter  packets forwarded; direction is lan_to_wan or
//	                                                   wan_to_lan, proto one of tcp udp icmp gre esp ah other
//	vpnmasq_bytes_total{direction,proto}      counter  bytes forwarded (IP packets, headers included)
//	vpnmasq_super_packets_total{direction,proto} counter  packets among vpnmasq_packets_total that were
//	                                                   super-packets (tcp and udp only)
//	vpnmasq_drops_total{reason}               counter  packets dropped, by reason; every reason is
//	                                                   present, zeros included
//	vpnmasq_mappings{proto}                   gauge    NAT mappings (tcp, udp and icmp always present)
//	vpnmasq_flows{proto,state}                gauge    NAT flows by protocol and state
//	vpnmasq_limit_refusals_total{limit}       counter  new state a limit refused; every limit present
//	vpnmasq_limit_evictions_total{limit}      counter  state evicted because a limit was reached
//	vpnmasq_icmp_errors_total{result}         counter  ICMP errors the router built; result is sent or
//	                                                   suppressed (rate limits, limits.icmp_error_rate)
//	vpnmasq_ports_in_use{proto}               gauge    WAN ports (ICMP query ids) taken from the port range
//	vpnmasq_ports_size{proto}                 gauge    size of the port range
//	vpnmasq_vpn_sessions{kind}                gauge    VPN passthrough state; kind is ike, esp_established,
//	                                                   esp_waiting, esp_tentative, esp_inbound_only,
//	                                                   esp_squelched, pptp_control, pptp_call
//	                                                   or ah_refused (LAN host and remote pairs whose AH
//	                                                   was refused)
//	vpnmasq_tunnel_lost_packets{kind,direction} gauge  packets missing by the sequence numbers of the
//	                                                   ESP pairs (kind esp) and PPTP calls (pptp)
//	                                                   tracked now, summed; direction lan_to_wan or
//	                                                   wan_to_lan; one series per kind and direction,
//	                                                   never per tunnel (see /api/v1/status for those)
//	vpnmasq_tunnel_late_packets{kind,direction} gauge  packets below the highest number seen, the same
//	vpnmasq_tunnels_lossy{kind}               gauge    tunnels tracked now that lost over 1 % either way
//	vpnmasq_dns_queries_total{transport}      counter  queries to the DNS forwarder; transport is udp or tcp
//	vpnmasq_dns_cache_hits_total              counter  queries answered from the cache
//	vpnmasq_dns_upstream_failures_total       counter  upstream queries that failed or timed out
//	vpnmasq_dns_upstream_ignored_total        counter  upstream datagrams ignored as not the answer
//	vpnmasq_wan_address_changes_total         counter  WAN address changes followed (wan.address not set)
//	vpnmasq_wan_change_dropped_total{kind}    counter  mappings and flows dropped with the old WAN address;
//	                                                   kind is mappings or flows
//	vpnmasq_uptime_seconds                    gauge    seconds since the router started
//	vpnmasq_build_info{version}               gauge    always 1; the version is the label
type Collector struct {
	src Source
}

// NewCollector returns a prometheus.Collector for src's metrics (listed
// above).
func NewCollector(src Source) *Collector { return &Collector{src: src} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descPackets, descBytes, descSuperPackets, descDrops, descMappings,
		descPortsInUse, descPortsSize, descVPN, descTunnelLost, descTunnelLate, descTunnelsLossy, descDNSQueries, descDNSHits, descDNSFailures,
		descDNSIgnored, descFlows, descLimitRefusals, descLimitEvictions, descICMPErrors,
		descWANChanges, descWANDropped, descUptime, descBuild} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}

	// The same label set twice would make the whole scrape fail, so rows
	// that repeat a direction and protocol are added up.
	type dirProto struct{ dir, proto string }
	traffic := map[dirProto]Traffic{}
	for _, t := range s.Traffic {
		k := dirProto{t.Direction, t.Proto}
		sum := traffic[k]
		sum.Packets += t.Packets
		sum.Bytes += t.Bytes
		sum.SuperPackets += t.SuperPackets
		traffic[k] = sum
	}
	for k, t := range traffic {
		counter(descPackets, t.Packets, k.dir, k.proto)
		counter(descBytes, t.Bytes, k.dir, k.proto)
		if k.proto == "tcp" || k.proto == "udp" {
			counter(descSuperPackets, t.SuperPackets, k.dir, k.proto)
		}
	}

	for reason, n := range allDrops(s.Drops) {
		counter(descDrops, n, reason)
	}

	for proto, n := range mappingCounts(s) {
		gauge(descMappings, float64(n), proto)
	}
	// The same protocol and state twice are added up, as traffic rows are.
	type protoState struct{ proto, state string }
	flows := map[protoState]int{}
	for _, f := range s.Flows {
		flows[protoState{f.Proto, f.State}] += f.Flows
	}
	for k, n := range flows {
		gauge(descFlows, float64(n), k.proto, k.state)
	}
	refused, evicted := allLimits(), allLimits()
	for _, l := range s.Limits {
		refused[l.Limit] += l.Refused
		evicted[l.Limit] += l.Evicted
	}
	for l := range refused {
		counter(descLimitRefusals, refused[l], l)
		counter(descLimitEvictions, evicted[l], l)
	}
	counter(descICMPErrors, s.ICMPErrors.Sent, "sent")
	counter(descICMPErrors, s.ICMPErrors.Suppressed, "suppressed")

	inUse, size := map[string]int{}, map[string]int{}
	for _, p := range s.Ports {
		inUse[p.Proto] += p.InUse
		size[p.Proto] += p.Size
	}
	for proto := range inUse {
		gauge(descPortsInUse, float64(inUse[proto]), proto)
		gauge(descPortsSize, float64(size[proto]), proto)
	}

	for _, k := range vpnKinds(s.VPN) {
		gauge(descVPN, float64(k.n), k.kind)
	}
	for _, kind := range tunnelSums(s.VPN) {
		gauge(descTunnelLost, float64(kind.out.Lost), kind.name, "lan_to_wan")
		gauge(descTunnelLost, float64(kind.in.Lost), kind.name, "wan_to_lan")
		gauge(descTunnelLate, float64(kind.out.Late), kind.name, "lan_to_wan")
		gauge(descTunnelLate, float64(kind.in.Late), kind.name, "wan_to_lan")
		gauge(descTunnelsLossy, float64(kind.lossy), kind.name)
	}

	counter(descDNSQueries, s.DNS.UDPQueries, "udp")
	counter(descDNSQueries, s.DNS.TCPQueries, "tcp")
	counter(descDNSHits, s.DNS.CacheHits)
	counter(descDNSFailures, s.DNS.UpstreamFailures)
	counter(descDNSIgnored, s.DNS.UpstreamIgnored)
	counter(descWANChanges, s.WANChanges.Changes)
	counter(descWANDropped, s.WANChanges.MappingsDropped, "mappings")
	counter(descWANDropped, s.WANChanges.FlowsDropped, "flows")
	gauge(descUptime, float64(s.Uptime))
	gauge(descBuild, 1, s.Version)
}

type vpnKind struct {
	kind string
	n    int
}

// vpnKinds counts the VPN state by the kinds of vpnmasq_vpn_sessions. The
// status page and the CLI do not need it: they list the sessions.
func vpnKinds(v VPN) []vpnKind {
	var established, waiting, tentative, inboundOnly, squelched, calls int
	for _, e := range v.ESP {
		switch e.State {
		case ESPEstablished:
			established++
		case ESPWaiting:
			waiting++
		case ESPTentative:
			tentative++
		case ESPInboundOnly:
			inboundOnly++
		case ESPSquelched:
			squelched++
		}
	}
	for _, c := range v.PPTP {
		calls += len(c.Calls)
	}
	return []vpnKind{
		{"ike", len(v.IKE)},
		{"esp_established", established},
		{"esp_waiting", waiting},
		{"esp_tentative", tentative},
		{"esp_inbound_only", inboundOnly},
		{"esp_squelched", squelched},
		{"pptp_control", len(v.PPTP)},
		{"pptp_call", calls},
		{"ah_refused", len(v.AH)},
	}
}

// allDrops returns a copy of drops that holds every reason the NAT knows,
// zeros included, so that a rate over vpnmasq_drops_total exists before the
// first drop of its kind. It never changes the Source's map.
func allDrops(drops map[string]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(drops)+len(nat.AllDropReasons()))
	for _, r := range nat.AllDropReasons() {
		out[r.String()] = 0
	}
	for reason, n := range drops {
		out[reason] = n
	}
	return out
}

// allLimits returns a zero count for every limit the NAT knows, so that
// a rate over the limit counters exists before the first refusal.
func allLimits() map[string]uint64 {
	out := make(map[string]uint64, len(nat.AllLimits()))
	for _, l := range nat.AllLimits() {
		out[l.String()] = 0
	}
	return out
}

// newMetricsHandler serves the metrics from a registry of their own, so no
// other package's registrations on the default registry leak into them.
func newMetricsHandler(src Source, log zerolog.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(src),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      promLogger{log},
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// promLogger passes promhttp's errors to the router's log.
type promLogger struct{ log zerolog.Logger }

func (l promLogger) Println(v ...any) {
	l.log.Error().Msg("admin: metrics: " + fmt.Sprint(v...))
}

// tunnelSum adds up the health of one kind of tunnel.
type tunnelSum struct {
	name    string
	out, in TunnelHealth
	lossy   int
}

// tunnelSums sums the ESP pairs' and the PPTP calls' health each way: the
// metrics stay two kinds × two directions however many tunnels there are.
func tunnelSums(v VPN) [2]tunnelSum {
	sums := [2]tunnelSum{{name: "esp"}, {name: "pptp"}}
	add := func(s *tunnelSum, out, in TunnelHealth) {
		s.out.Lost += out.Lost
		s.out.Late += out.Late
		s.in.Lost += in.Lost
		s.in.Late += in.Late
		if out.LossPercent() > 1 || in.LossPercent() > 1 {
			s.lossy++
		}
	}
	for _, p := range v.ESP {
		add(&sums[0], p.Out, p.In)
	}
	for _, c := range v.PPTP {
		for _, call := range c.Calls {
			add(&sums[1], call.Out, call.In)
		}
	}
	return sums
}
