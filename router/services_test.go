package router

import (
	"net/netip"
	"testing"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/datapath"
	"github.com/vpnmasq/vpnmasq/internal/testpacket"
	"github.com/vpnmasq/vpnmasq/nat"
)

func TestAdminSourceListsMappingsOnlyByPage(t *testing.T) {
	r := &Router{cfg: &config.Config{}}
	r.nat = nat.New(nat.Config{
		WANAddr: netip.MustParseAddr("198.18.0.1"),
		Ports:   nat.PortRange{First: 20000, Last: 20003},
		Clock:   &nat.FakeClock{},
		Log:     zerolog.Nop(),
	})
	r.path = datapath.New(datapath.Config{NAT: r.nat, Log: zerolog.Nop()})
	var p nat.Packet
	for port := range uint16(4) { // the test engine's whole port range
		pkt := udpPacket(netip.MustParseAddr("192.168.77.10"), netip.MustParseAddr("198.18.0.2"), 40000+port, 53)
		if r := p.Parse(pkt); r != nat.DropNone {
			t.Fatal(r)
		}
		if res := r.nat.Outbound(&p); res.Verdict != nat.VerdictToWAN {
			t.Fatalf("verdict %v", res.Verdict)
		}
	}
	r.path.Stats().ICMPErrorsSent.Add(3)
	r.path.Stats().ICMPErrorsSuppressed.Add(5)

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

// udpPacket builds an 8-byte UDP/IPv4 datagram with valid checksums.
func udpPacket(src, dst netip.Addr, sport, dport uint16) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: uint8(header.UDPProtocolNumber), TTL: 60},
		testpacket.UDP(netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport), make([]byte, 8)))
}
