package nat

import (
	"slices"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

func TestReconfigure(t *testing.T) {
	web := Forward{Proto: ProtoTCP, Ports: PortRange{First: 8080, Last: 8080}, To: lanB, ToPort: 80}
	dns := Forward{Proto: ProtoUDP, Ports: PortRange{First: 5353, Last: 5354}, To: lanB}
	base := func() Config { return Config{Forwards: []Forward{web}} }

	t.Run("mappings and flows survive a reload", func(t *testing.T) {
		l := newLab(t, base())
		out := l.mustOut(udpPkt(ap(lanA, 1000), ap(remote1, 53), "q"), VerdictToWAN)
		l.mustIn(tcpPkt(ap(remote2, 50000), ap(wanAddr, 8080), syn), VerdictToLAN)
		before := l.e.Mappings()
		cfg := base()
		cfg.UDPTimeout = time.Minute
		cfg.Forwards = append(cfg.Forwards, dns)
		res := l.e.Reconfigure(cfg)
		if res.FlowsEnded != 0 {
			t.Errorf("%d flows ended", res.FlowsEnded)
		}
		after := l.e.Mappings()
		if len(after) != len(before) {
			t.Fatalf("mappings %v after the reload, were %v", after, before)
		}
		l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, out.SrcPort), "a"), VerdictToLAN)
		l.mustOut(tcpPkt(ap(lanB, 80), ap(remote2, 50000), synAck), VerdictToWAN)
	})

	t.Run("a new forward works", func(t *testing.T) {
		l := newLab(t, base())
		r, _ := l.in(udpPkt(ap(remote1, 9), ap(wanAddr, 5354), "x"))
		wantDrop(t, r, DropUnsolicited)
		cfg := base()
		cfg.Forwards = append(cfg.Forwards, dns)
		res := l.e.Reconfigure(cfg)
		if len(res.Added) != 1 || res.Added[0] != dns || len(res.Removed) != 0 {
			t.Fatalf("added %v removed %v, want added [%v]", res.Added, res.Removed, dns)
		}
		if !slices.Contains(res.Changed, "forwards") {
			t.Errorf("changed %v does not name forwards", res.Changed)
		}
		p := l.mustIn(udpPkt(ap(remote1, 9), ap(wanAddr, 5354), "x"), VerdictToLAN)
		if dstAP(p) != ap(lanB, 5354) {
			t.Errorf("forwarded to %v", dstAP(p))
		}
		// The old one still works too.
		l.mustIn(tcpPkt(ap(remote1, 50000), ap(wanAddr, 8080), syn), VerdictToLAN)
	})

	t.Run("a removed forward's flows end and its port goes back", func(t *testing.T) {
		cfg := base()
		cfg.Forwards = append(cfg.Forwards, dns)
		l := newLab(t, cfg)
		l.mustIn(tcpPkt(ap(remote1, 50000), ap(wanAddr, 8080), syn), VerdictToLAN)
		l.mustOut(tcpPkt(ap(lanB, 80), ap(remote1, 50000), synAck), VerdictToWAN)
		l.mustIn(udpPkt(ap(remote1, 9), ap(wanAddr, 5353), "x"), VerdictToLAN)
		dyn := l.mustOut(udpPkt(ap(lanA, 1000), ap(remote1, 53), "q"), VerdictToWAN)

		res := l.e.Reconfigure(Config{Forwards: []Forward{dns}})
		if len(res.Removed) != 1 || res.Removed[0] != web || res.FlowsEnded != 1 {
			t.Fatalf("removed %v, %d flows ended; want [%v], 1", res.Removed, res.FlowsEnded, web)
		}
		if _, ok := l.mapping("tcp", ap(lanB, 80)); ok {
			t.Error("the removed forward's mapping is still listed")
		}
		// The connection's next packets go nowhere, from either side.
		r, _ := l.in(tcpPkt(ap(remote1, 50000), ap(wanAddr, 8080), ack))
		wantDrop(t, r, DropUnsolicited)
		r, _ = l.in(tcpPkt(ap(remote2, 50000), ap(wanAddr, 8080), syn))
		wantDrop(t, r, DropUnsolicited)
		// Its target is an ordinary LAN host again: its port 80 gets a
		// dynamic mapping, not 8080.
		p := l.mustOut(tcpPkt(ap(lanB, 80), ap(remote1, 443), syn), VerdictToWAN)
		if p.SrcPort == 8080 {
			t.Error("left with the removed forward's port")
		}
		if l.e.table.pools[ProtoTCP].isUsed(8080) {
			t.Error("port 8080 still marked in use")
		}
		// Unchanged: the other forward's flow and the dynamic mapping.
		l.mustOut(udpPkt(ap(lanB, 5353), ap(remote1, 9), "y"), VerdictToWAN)
		l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, dyn.SrcPort), "a"), VerdictToLAN)
		if s := l.e.Stats(); s.Flows != 3 {
			t.Errorf("%d flows, want 3 (udp forward, udp dynamic, new tcp)", s.Flows)
		}
	})

	t.Run("a forward whose target changed moves its port to the new target", func(t *testing.T) {
		l := newLab(t, base())
		l.mustIn(tcpPkt(ap(remote1, 50000), ap(wanAddr, 8080), syn), VerdictToLAN)
		moved := web
		moved.To = lanA
		res := l.e.Reconfigure(Config{Forwards: []Forward{moved}})
		if len(res.Added) != 1 || len(res.Removed) != 1 || res.FlowsEnded != 1 {
			t.Fatalf("added %v removed %v ended %d", res.Added, res.Removed, res.FlowsEnded)
		}
		p := l.mustIn(tcpPkt(ap(remote2, 50000), ap(wanAddr, 8080), syn), VerdictToLAN)
		if dstAP(p) != ap(lanA, 80) {
			t.Errorf("forwarded to %v, want %v", dstAP(p), ap(lanA, 80))
		}
	})

	t.Run("an added forward takes its internal endpoint from a dynamic mapping", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(udpPkt(ap(lanB, 5353), ap(remote1, 53), "q"), VerdictToWAN)
		res := l.e.Reconfigure(Config{Forwards: []Forward{dns}})
		if res.FlowsEnded != 1 {
			t.Errorf("%d flows ended, want the dynamic mapping's 1", res.FlowsEnded)
		}
		p := l.mustOut(udpPkt(ap(lanB, 5353), ap(remote1, 53), "q"), VerdictToWAN)
		if p.SrcPort != 5353 {
			t.Errorf("left with port %d, want the forward's 5353", p.SrcPort)
		}
		if s := l.e.Stats(); s.PortsInUse["udp"] != 0 {
			t.Errorf("%d dynamic udp ports still in use", s.PortsInUse["udp"])
		}
	})

	t.Run("removing an esp or gre forward stops its delivery", func(t *testing.T) {
		for _, proto := range []uint8{ProtoGRE, ProtoESP} {
			body := []byte{0, 0, 0x88, 0x0b, 1, 2, 3, 4, 5, 6, 7, 8}
			l := newLab(t, Config{Forwards: []Forward{{Proto: proto, To: lanB}}})
			l.mustIn(testpacket.IPv4(testpacket.IPv4Header{Src: remote1, Dst: wanAddr, Proto: proto}, body), VerdictToLAN)
			l.e.Reconfigure(Config{})
			if r, _ := l.in(testpacket.IPv4(testpacket.IPv4Header{Src: remote1, Dst: wanAddr, Proto: proto}, body)); r.Verdict != VerdictDrop {
				t.Errorf("%s still delivered after its forward was removed", protoName(proto))
			}
			l.e.Reconfigure(Config{Forwards: []Forward{{Proto: proto, To: lanA}}})
			if p := l.mustIn(testpacket.IPv4(testpacket.IPv4Header{Src: remote1, Dst: wanAddr, Proto: proto}, body), VerdictToLAN); p.DstAddr() != lanA {
				t.Errorf("%s delivered to %v, want the new target", protoName(proto), p.DstAddr())
			}
		}
	})

	t.Run("a changed timeout applies from the next refresh", func(t *testing.T) {
		l := newLab(t, Config{})
		old := l.mustOut(udpPkt(ap(lanA, 1000), ap(remote1, 53), "q"), VerdictToWAN)
		l.e.Reconfigure(Config{UDPTimeout: 30 * time.Second})
		// A flow keeps the 5 minutes it was given...
		l.advance(time.Minute)
		l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, old.SrcPort), "a"), VerdictToLAN)
		// ...a new one gets the new 30 s.
		fresh := l.mustOut(udpPkt(ap(lanA, 2000), ap(remote1, 53), "q"), VerdictToWAN)
		l.advance(31 * time.Second)
		r, _ := l.in(udpPkt(ap(remote1, 53), ap(wanAddr, fresh.SrcPort), "a"))
		wantDrop(t, r, DropUnsolicited)
		if _, ok := l.mapping("udp", ap(lanA, 2000)); ok {
			t.Error("new mapping outlived the new 30 s udp_timeout")
		}
		l.advance(3*time.Minute + 30*time.Second)
		if _, ok := l.mapping("udp", ap(lanA, 1000)); ok {
			t.Error("old mapping outlived its 5 minutes")
		}
	})

	t.Run("a changed limit applies to new state and evicts nothing", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(udpPkt(ap(lanA, 1), ap(remote1, 53), "q"), VerdictToWAN)
		l.mustOut(udpPkt(ap(lanA, 2), ap(remote1, 53), "q"), VerdictToWAN)
		res := l.e.Reconfigure(Config{MaxMappings: 1})
		if !slices.Equal(res.Changed, []string{"max_mappings"}) {
			t.Errorf("changed %v, want [max_mappings]", res.Changed)
		}
		if s := l.e.Stats(); s.Mappings["udp"] != 2 {
			t.Errorf("%d udp mappings, want both kept", s.Mappings["udp"])
		}
		r, _ := l.out(udpPkt(ap(lanA, 3), ap(remote1, 53), "q"))
		wantDrop(t, r, DropTableFull)
		// Raised again: new state is admitted.
		l.e.Reconfigure(Config{MaxMappings: 3})
		l.mustOut(udpPkt(ap(lanA, 3), ap(remote1, 53), "q"), VerdictToWAN)

		l.e.Reconfigure(Config{Limits: Limits{MaxFlowsPerHost: 3}})
		r, _ = l.out(udpPkt(ap(lanA, 3), ap(remote2, 53), "q"))
		if r.Verdict == VerdictDrop && r.Reason != DropHostQuota {
			t.Errorf("new flow over the lowered per-host bound: %v", r.Reason)
		}
		if s := l.e.Stats(); s.Flows > 3 {
			t.Errorf("%d flows with max_flows_per_host 3", s.Flows)
		}
	})

	t.Run("a changed filtering applies to the next packet", func(t *testing.T) {
		l := newLab(t, Config{})
		out := l.mustOut(udpPkt(ap(lanA, 1000), ap(remote1, 53), "q"), VerdictToWAN)
		r, _ := l.in(udpPkt(ap(remote2, 53), ap(wanAddr, out.SrcPort), "a"))
		if r.Verdict != VerdictDrop {
			t.Fatal("address-dependent filtering let a stranger in")
		}
		l.e.Reconfigure(Config{UDPFiltering: EndpointIndependentFiltering})
		l.mustIn(udpPkt(ap(remote2, 53), ap(wanAddr, out.SrcPort), "a"), VerdictToLAN)
	})

	t.Run("an unchanged reload changes nothing", func(t *testing.T) {
		cfg := base()
		cfg.Forwards = append(cfg.Forwards, dns, Forward{Proto: ProtoESP, To: lanA})
		l := newLab(t, cfg)
		l.mustIn(tcpPkt(ap(remote1, 50000), ap(wanAddr, 8080), syn), VerdictToLAN)
		l.mustOut(udpPkt(ap(lanA, 1000), ap(remote1, 53), "q"), VerdictToWAN)
		before, stats := l.e.Mappings(), l.e.Stats()
		res := l.e.Reconfigure(cfg)
		if len(res.Changed)+len(res.Added)+len(res.Removed)+res.FlowsEnded != 0 {
			t.Errorf("unchanged reload reported %+v", res)
		}
		if after := l.e.Mappings(); !slices.Equal(after, before) {
			t.Errorf("mappings %v, were %v", after, before)
		}
		if s := l.e.Stats(); s.Flows != stats.Flows {
			t.Errorf("%d flows, were %d", s.Flows, stats.Flows)
		}
	})
}
