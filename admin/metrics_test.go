package admin

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/vpnmasq/vpnmasq/nat"
)

// scrape fetches /metrics and parses it as Prometheus does.
func scrape(t *testing.T, src Source) map[string]*dto.MetricFamily {
	t.Helper()
	rec := serve(t, src, "GET", "/metrics")
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("/metrics does not parse: %v", err)
	}
	return families
}

// sample finds the value of the series with exactly these labels
// ("name=value" pairs).
func sample(families map[string]*dto.MetricFamily, name string, labels ...string) (float64, dto.MetricType, error) {
	f := families[name]
	if f == nil {
		return 0, 0, fmt.Errorf("no metric %s", name)
	}
	want := map[string]string{}
	for _, l := range labels {
		k, v, _ := strings.Cut(l, "=")
		want[k] = v
	}
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, lp := range m.GetLabel() {
			got[lp.GetName()] = lp.GetValue()
		}
		if !maps.Equal(got, want) {
			continue
		}
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			return m.GetCounter().GetValue(), f.GetType(), nil
		case dto.MetricType_GAUGE:
			return m.GetGauge().GetValue(), f.GetType(), nil
		default:
			return m.GetUntyped().GetValue(), f.GetType(), nil
		}
	}
	return 0, 0, fmt.Errorf("no series %s%v", name, labels)
}

func TestMetrics(t *testing.T) {
	families := scrape(t, &fakeSource{snap: fakeSnapshot()})
	counter, gauge := dto.MetricType_COUNTER, dto.MetricType_GAUGE
	cases := []struct {
		name   string
		labels []string
		typ    dto.MetricType
		want   float64
	}{
		{"vpnmasq_packets_total", []string{"direction=lan_to_wan", "proto=tcp"}, counter, 100},
		{"vpnmasq_packets_total", []string{"direction=wan_to_lan", "proto=tcp"}, counter, 90},
		{"vpnmasq_packets_total", []string{"direction=lan_to_wan", "proto=esp"}, counter, 7},
		{"vpnmasq_super_packets_total", []string{"direction=lan_to_wan", "proto=tcp"}, counter, 3},
		{"vpnmasq_tunnel_lost_packets", []string{"kind=esp", "direction=wan_to_lan"}, gauge, 10},
		{"vpnmasq_tunnel_late_packets", []string{"kind=esp", "direction=lan_to_wan"}, gauge, 2},
		{"vpnmasq_tunnels_lossy", []string{"kind=esp"}, gauge, 0},
		{"vpnmasq_tunnel_lost_packets", []string{"kind=pptp", "direction=lan_to_wan"}, gauge, 0},
		{"vpnmasq_super_packets_total", []string{"direction=wan_to_lan", "proto=udp"}, counter, 0},
		{"vpnmasq_bytes_total", []string{"direction=lan_to_wan", "proto=tcp"}, counter, 150000},
		{"vpnmasq_bytes_total", []string{"direction=wan_to_lan", "proto=udp"}, counter, 500},
		{"vpnmasq_drops_total", []string{"reason=malformed"}, counter, 3},
		{"vpnmasq_drops_total", []string{"reason=esp_squelched"}, counter, 2},
		{"vpnmasq_drops_total", []string{"reason=unsolicited"}, counter, 0},
		{"vpnmasq_mappings", []string{"proto=tcp"}, gauge, 2},
		{"vpnmasq_mappings", []string{"proto=udp"}, gauge, 1},
		{"vpnmasq_mappings", []string{"proto=icmp"}, gauge, 0},
		{"vpnmasq_ports_in_use", []string{"proto=tcp"}, gauge, 2},
		{"vpnmasq_ports_in_use", []string{"proto=icmp"}, gauge, 0},
		{"vpnmasq_ports_size", []string{"proto=udp"}, gauge, 12768},
		{"vpnmasq_ports_size", []string{"proto=icmp"}, gauge, 65536},
		{"vpnmasq_vpn_sessions", []string{"kind=ike"}, gauge, 1},
		{"vpnmasq_vpn_sessions", []string{"kind=esp_established"}, gauge, 2},
		{"vpnmasq_vpn_sessions", []string{"kind=esp_waiting"}, gauge, 1},
		{"vpnmasq_vpn_sessions", []string{"kind=esp_squelched"}, gauge, 1},
		{"vpnmasq_vpn_sessions", []string{"kind=esp_tentative"}, gauge, 1},
		{"vpnmasq_vpn_sessions", []string{"kind=esp_inbound_only"}, gauge, 1},
		{"vpnmasq_vpn_sessions", []string{"kind=pptp_control"}, gauge, 2},
		{"vpnmasq_vpn_sessions", []string{"kind=pptp_call"}, gauge, 2},
		{"vpnmasq_vpn_sessions", []string{"kind=ah_refused"}, gauge, 1},
		{"vpnmasq_dns_queries_total", []string{"transport=udp"}, counter, 10},
		{"vpnmasq_dns_queries_total", []string{"transport=tcp"}, counter, 2},
		{"vpnmasq_dns_cache_hits_total", nil, counter, 4},
		{"vpnmasq_dns_upstream_failures_total", nil, counter, 1},
		{"vpnmasq_dns_upstream_ignored_total", nil, counter, 0},
		{"vpnmasq_flows", []string{"proto=tcp", "state=established"}, gauge, 2},
		{"vpnmasq_flows", []string{"proto=tcp", "state=syn_sent"}, gauge, 1},
		{"vpnmasq_flows", []string{"proto=udp", "state=replied"}, gauge, 1},
		{"vpnmasq_limit_refusals_total", []string{"limit=max_flows_per_host"}, counter, 7},
		{"vpnmasq_limit_refusals_total", []string{"limit=max_flows"}, counter, 0},
		{"vpnmasq_limit_evictions_total", []string{"limit=max_flows"}, counter, 3},
		{"vpnmasq_limit_evictions_total", []string{"limit=max_flows_per_host"}, counter, 0},
		{"vpnmasq_icmp_errors_total", []string{"result=sent"}, counter, 12},
		{"vpnmasq_icmp_errors_total", []string{"result=suppressed"}, counter, 34},
		{"vpnmasq_wan_address_changes_total", nil, counter, 2},
		{"vpnmasq_wan_change_dropped_total", []string{"kind=mappings"}, counter, 17},
		{"vpnmasq_wan_change_dropped_total", []string{"kind=flows"}, counter, 23},
		{"vpnmasq_uptime_seconds", nil, gauge, 3723.25},
		{"vpnmasq_build_info", []string{"version=1.2.3"}, gauge, 1},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s%v is %v", tc.name, tc.labels, tc.want), func(t *testing.T) {
			got, typ, err := sample(families, tc.name, tc.labels...)
			if err != nil {
				t.Fatal(err)
			}
			if typ != tc.typ {
				t.Errorf("type %v, want %v", typ, tc.typ)
			}
			if got != tc.want {
				t.Errorf("value %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("every drop reason has a series, zeros included", func(t *testing.T) {
		for _, r := range nat.AllDropReasons() {
			if _, _, err := sample(families, "vpnmasq_drops_total", "reason="+r.String()); err != nil {
				t.Error(err)
			}
		}
	})
	t.Run("the Go runtime and process metrics are there too", func(t *testing.T) {
		for _, name := range []string{"go_goroutines", "process_open_fds"} {
			if families[name] == nil {
				t.Errorf("no %s", name)
			}
		}
	})
	t.Run("every metric has help text", func(t *testing.T) {
		for _, name := range slices.Sorted(maps.Keys(families)) {
			if strings.HasPrefix(name, "vpnmasq_") && families[name].GetHelp() == "" {
				t.Errorf("%s has no help", name)
			}
		}
	})
	t.Run("the names pass the Prometheus linter", func(t *testing.T) {
		problems, err := testutil.CollectAndLint(NewCollector(&fakeSource{snap: fakeSnapshot()}))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	})
}

func TestMetricsEdgeCases(t *testing.T) {
	cases := []struct {
		name   string
		snap   Snapshot
		metric string
		labels []string
		want   float64
	}{
		{"repeated traffic rows are added up instead of failing the scrape",
			Snapshot{Traffic: []Traffic{{LANToWAN, "udp", 1, 10, 0}, {LANToWAN, "udp", 2, 20, 1}}},
			"vpnmasq_bytes_total", []string{"direction=lan_to_wan", "proto=udp"}, 30},
		{"repeated traffic rows add up their super-packets too",
			Snapshot{Traffic: []Traffic{{LANToWAN, "udp", 1, 10, 1}, {LANToWAN, "udp", 2, 20, 1}}},
			"vpnmasq_super_packets_total", []string{"direction=lan_to_wan", "proto=udp"}, 2},
		{"repeated port rows are added up", Snapshot{Ports: []PortUse{{"tcp", 1, 10}, {"tcp", 2, 10}}},
			"vpnmasq_ports_in_use", []string{"proto=tcp"}, 3},
		{"an idle router still has its mapping gauges", Snapshot{}, "vpnmasq_mappings", []string{"proto=tcp"}, 0},
		{"an idle router still has its VPN gauges", Snapshot{}, "vpnmasq_vpn_sessions", []string{"kind=pptp_call"}, 0},
		{"an idle router still has its tunnel health gauges", Snapshot{}, "vpnmasq_tunnel_lost_packets", []string{"kind=pptp", "direction=wan_to_lan"}, 0},
		{"a tunnel losing over 1 % one way counts as lossy",
			Snapshot{VPN: VPN{ESP: []ESPPair{{Out: TunnelHealth{Packets: 100}, In: TunnelHealth{Packets: 95, Lost: 5, Sequenced: true}}, {In: TunnelHealth{Packets: 1000, Lost: 1}}}}},
			"vpnmasq_tunnels_lossy", []string{"kind=esp"}, 1},
		{"tunnel losses add up over the PPTP calls of every connection",
			Snapshot{VPN: VPN{PPTP: []PPTPConn{{Calls: []PPTPCall{{In: TunnelHealth{Lost: 2}}}}, {Calls: []PPTPCall{{In: TunnelHealth{Lost: 3}}}}}}},
			"vpnmasq_tunnel_lost_packets", []string{"kind=pptp", "direction=wan_to_lan"}, 5},
		{"a drop reason the NAT does not know yet is still exported",
			Snapshot{Drops: map[string]uint64{"brand_new": 4}}, "vpnmasq_drops_total", []string{"reason=brand_new"}, 4},
		{"an unknown mapping protocol gets its own series",
			Snapshot{Mappings: []Mapping{{Proto: "gre"}}}, "vpnmasq_mappings", []string{"proto=gre"}, 1},
		{"every limit the NAT knows has a refusal series before its first refusal",
			Snapshot{}, "vpnmasq_limit_refusals_total", []string{"limit=" + nat.AllLimits()[len(nat.AllLimits())-1].String()}, 0},
		{"every limit the NAT knows has an eviction series",
			Snapshot{}, "vpnmasq_limit_evictions_total", []string{"limit=" + nat.LimitHostRate.String()}, 0},
		{"repeated flow rows are added up instead of failing the scrape",
			Snapshot{Flows: []FlowCount{{"udp", "new", 2}, {"udp", "new", 3}}}, "vpnmasq_flows", []string{"proto=udp", "state=new"}, 5},
		{"mapping counts from the source win over counting the listed mappings",
			Snapshot{MappingCounts: map[string]int{"tcp": 70000}, Mappings: []Mapping{{Proto: "tcp"}}}, "vpnmasq_mappings", []string{"proto=tcp"}, 70000},
		{"a hostile version is only a label value", Snapshot{Version: hostile},
			"vpnmasq_build_info", []string{"version=" + hostile}, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, _, err := sample(scrape(t, &fakeSource{snap: tc.snap}), tc.metric, tc.labels...)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("value %v, want %v", got, tc.want)
			}
		})
	}
}
