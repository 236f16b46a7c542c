package router

import (
	"testing"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/nat"
)

func TestAdminSourceListsMappingsOnlyByPage(t *testing.T) {
	r := &Router{cfg: &config.Config{}}
	initTestCore(&r.core, 1500)
	r.nat = r.core.nat
	c, o := &r.core, newTestOutbox()
	var p nat.Packet
	for port := range uint16(4) { // the test engine's whole port range
		buf, n := udpPacket(lanHost, remote, 40000+port, 53, 8, 60, false)
		c.fromLAN(buf, n, &p, o)
	}
	c.stats.ICMPErrorsSent.Add(3)
	c.stats.ICMPErrorsSuppressed.Add(5)

	t.Run("the snapshot counts the mappings without listing them", func(t *testing.T) {
		s := r.Snapshot()
		if len(s.Mappings) != 0 || s.MappingCounts["udp"] != 4 || s.MappingsTotal != 4 {
			t.Errorf("%d mappings listed, counts %v, total %d; want none listed, 4 udp", len(s.Mappings), s.MappingCounts, s.MappingsTotal)
		}
	})
	t.Run("the snapshot has a refusal and eviction count for every limit", func(t *testing.T) {
		s := r.Snapshot()
		if len(s.Limits) != len(nat.AllLimits()) {
			t.Errorf("%d limits, want %d", len(s.Limits), len(nat.AllLimits()))
		}
		for i, l := range s.Limits {
			if l.Limit != nat.AllLimits()[i].String() {
				t.Errorf("limit %d is %q, want %q", i, l.Limit, nat.AllLimits()[i])
			}
		}
	})
	t.Run("the snapshot counts ICMP errors sent and suppressed", func(t *testing.T) {
		if e := r.Snapshot().ICMPErrors; e.Sent != 3 || e.Suppressed != 5 {
			t.Errorf("%+v, want 3 sent, 5 suppressed", e)
		}
	})
	pages := []struct {
		name          string
		offset, limit int
		wantPorts     []uint16
	}{
		{"a page in the middle", 1, 2, []uint16{20001, 20002}},
		{"a page reaching past the end is cut", 3, 10, []uint16{20003}},
		{"a page past the end is empty", 4, 10, nil},
	}
	for _, tc := range pages {
		t.Run("MappingPage: "+tc.name, func(t *testing.T) {
			page, total := r.MappingPage(tc.offset, tc.limit)
			if total != 4 {
				t.Errorf("total %d, want 4", total)
			}
			var ports []uint16
			for _, m := range page {
				ports = append(ports, m.WAN.Port())
			}
			if len(ports) != len(tc.wantPorts) {
				t.Fatalf("WAN ports %v, want %v", ports, tc.wantPorts)
			}
			for i := range ports {
				if ports[i] != tc.wantPorts[i] {
					t.Errorf("WAN ports %v, want %v", ports, tc.wantPorts)
				}
			}
		})
	}
}
