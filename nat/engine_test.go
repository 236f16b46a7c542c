package nat

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

func TestResourceLimits(t *testing.T) {
	t.Run("port range exhaustion drops with unreachable", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 20001}})
		l.mustOut(udpPkt(ap(lanA, 1), ap(remote1, 53), "q"), VerdictToWAN)
		l.mustOut(udpPkt(ap(lanA, 2), ap(remote1, 53), "q"), VerdictToWAN)
		r, _ := l.out(udpPkt(ap(lanA, 3), ap(remote1, 53), "q"))
		wantDrop(t, r, DropNoPorts)
		if !r.Unreachable {
			t.Error("Unreachable not set: the sender is not told")
		}
		if n := l.e.Drops.Get(DropNoPorts); n != 1 {
			t.Errorf("no_free_port counter %d", n)
		}
		// TCP has its own pool.
		l.mustOut(tcpPkt(ap(lanA, 3), ap(remote1, 443), syn), VerdictToWAN)
		// Existing mappings keep working, also towards new remotes.
		l.mustOut(udpPkt(ap(lanA, 1), ap(remote2, 53), "q"), VerdictToWAN)
	})
	t.Run("max_mappings reached drops", func(t *testing.T) {
		l := newLab(t, Config{MaxMappings: 2,
			Forwards: []Forward{{Proto: ProtoUDP, Ports: PortRange{First: 500, Last: 510}, To: lanB}}})
		l.mustOut(udpPkt(ap(lanA, 1), ap(remote1, 53), "q"), VerdictToWAN)
		l.mustOut(echoPkt(header.ICMPv4Echo, lanA, remote1, 1, 1), VerdictToWAN)
		for _, b := range [][]byte{
			udpPkt(ap(lanA, 2), ap(remote1, 53), "q"),
			tcpPkt(ap(lanA, 3), ap(remote1, 443), syn),
			echoPkt(header.ICMPv4Echo, lanB, remote1, 1, 1),
		} {
			r, _ := l.out(b)
			wantDrop(t, r, DropTableFull)
			if !r.Unreachable {
				t.Error("Unreachable not set")
			}
		}
		if n := l.e.Drops.Get(DropTableFull); n != 3 {
			t.Errorf("table_full counter %d, want 3", n)
		}
		// Forwards are configuration, not mappings: they still work.
		l.mustIn(udpPkt(ap(remote2, 9), ap(wanAddr, 500), "x"), VerdictToLAN)
		l.mustOut(udpPkt(ap(lanB, 500), ap(remote2, 9), "y"), VerdictToWAN)
		// Expiry makes room again.
		l.advance(5 * time.Minute)
		l.mustOut(udpPkt(ap(lanA, 2), ap(remote1, 53), "q"), VerdictToWAN)
	})
}

func TestMappingsSnapshot(t *testing.T) {
	l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 30000},
		Forwards: []Forward{
			{Proto: ProtoTCP, Ports: PortRange{First: 8080, Last: 8080}, To: lanB, ToPort: 80},
			{Proto: ProtoUDP, Ports: PortRange{First: 1194, Last: 1194}, To: lanB},
		}})
	l.mustOut(udpPkt(ap(lanA, 25000), ap(remote1, 53), "q"), VerdictToWAN)
	l.advance(10 * time.Second)
	l.mustOut(udpPkt(ap(lanA, 25000), ap(remote2, 53), "q"), VerdictToWAN)
	l.mustOut(tcpPkt(ap(lanA, 40000), ap(remote1, 443), syn), VerdictToWAN)
	l.mustOut(echoPkt(header.ICMPv4Echo, lanB, remote1, 9, 1), VerdictToWAN)
	l.mustIn(tcpPkt(ap(remote2, 55555), ap(wanAddr, 8080), syn), VerdictToLAN)
	l.advance(5 * time.Second)

	got := l.e.Mappings()
	// lanA:40000 lies outside the range: its TCP mapping gets the first
	// free even port, 20000.
	want := []MappingInfo{
		{Proto: "icmp", LAN: ap(lanB, 9), WAN: ap(wanAddr, 9), Remote: ap(remote1, 0), Flows: 1, Age: 5 * time.Second, Idle: 5 * time.Second},
		{Proto: "tcp", LAN: ap(lanB, 80), WAN: ap(wanAddr, 8080), Remote: ap(remote2, 55555), Flows: 1, Static: true, Idle: 5 * time.Second, Age: 15 * time.Second},
		{Proto: "tcp", LAN: ap(lanA, 40000), WAN: ap(wanAddr, 20000), Remote: ap(remote1, 443), Flows: 1, Age: 5 * time.Second, Idle: 5 * time.Second},
		{Proto: "udp", LAN: ap(lanA, 25000), WAN: ap(wanAddr, 25000), Remote: ap(remote2, 53), Flows: 2, Age: 15 * time.Second, Idle: 5 * time.Second},
	}
	t.Run("Mappings lists active mappings sorted by protocol and wan port", func(t *testing.T) {
		if len(got) != len(want) {
			t.Fatalf("%d mappings, want %d:\n%+v", len(got), len(want), got)
		}
		for i := range want {
			g, w := got[i], want[i]
			// Static mappings exist since New; their age is not the
			// connection's, so only compare it for dynamic ones.
			if g.Static {
				g.Age, w.Age = 0, 0
			}
			if g != w {
				t.Errorf("mapping %d:\n got %+v\nwant %+v", i, g, w)
			}
		}
	})
	t.Run("an idle forward is not listed", func(t *testing.T) {
		for _, m := range got {
			if m.WAN.Port() == 1194 {
				t.Errorf("idle udp forward listed: %+v", m)
			}
		}
	})
	t.Run("Stats counts mappings flows and ports", func(t *testing.T) {
		s := l.e.Stats()
		wantMappings := map[string]int{"udp": 1, "tcp": 2, "icmp": 1}
		if fmt.Sprint(s.Mappings) != fmt.Sprint(wantMappings) {
			t.Errorf("Mappings %v, want %v", s.Mappings, wantMappings)
		}
		if s.Flows != 5 {
			t.Errorf("Flows %d, want 5", s.Flows)
		}
		// Forward ports outside the range are not part of it.
		wantPorts := map[string]int{"udp": 1, "tcp": 1, "icmp": 1}
		if fmt.Sprint(s.PortsInUse) != fmt.Sprint(wantPorts) {
			t.Errorf("PortsInUse %v, want %v", s.PortsInUse, wantPorts)
		}
		if s.PortRangeSize != 10001 {
			t.Errorf("PortRangeSize %d, want 10001", s.PortRangeSize)
		}
	})
	t.Run("the snapshot empties when everything expired", func(t *testing.T) {
		l.advance(2*time.Hour + 4*time.Minute)
		if m := l.e.Mappings(); len(m) != 0 {
			t.Errorf("still %d mappings: %+v", len(m), m)
		}
		s := l.e.Stats()
		if s.Flows != 0 || s.PortsInUse["udp"] != 0 || s.PortsInUse["tcp"] != 0 || s.PortsInUse["icmp"] != 0 {
			t.Errorf("stats after expiry: %+v", s)
		}
	})
}

func TestConfigDefaults(t *testing.T) {
	t.Run("the default port range is 20000-32767", func(t *testing.T) {
		l := newLab(t, Config{})
		if n := l.e.Stats().PortRangeSize; n != 32767-20000+1 {
			t.Errorf("PortRangeSize %d", n)
		}
		p := l.mustOut(udpPkt(ap(lanA, 40000), ap(remote1, 53), "q"), VerdictToWAN)
		if p.SrcPort < 20000 || p.SrcPort > 32767 {
			t.Errorf("port %d outside the default range", p.SrcPort)
		}
	})
	t.Run("an inverted port range falls back to the default", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 3000, Last: 2000}})
		if n := l.e.Stats().PortRangeSize; n != 32767-20000+1 {
			t.Errorf("PortRangeSize %d", n)
		}
	})
	t.Run("WANAddr reports the configured address", func(t *testing.T) {
		l := newLab(t, Config{})
		if l.e.WANAddr() != wanAddr.As4() {
			t.Errorf("WANAddr %v", l.e.WANAddr())
		}
	})
	t.Run("an engine without a clock uses the system clock", func(t *testing.T) {
		e := New(Config{WANAddr: wanAddr})
		p := mustParse(t, udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"))
		if r := e.Outbound(p); r.Verdict != VerdictToWAN {
			t.Errorf("verdict %s", verdictName(r.Verdict))
		}
		e.Expire()
		if len(e.Mappings()) != 1 {
			t.Error("fresh mapping expired on the system clock")
		}
	})
}

func TestWholeProtocolForward(t *testing.T) {
	for _, proto := range []uint8{ProtoGRE, ProtoESP} {
		name := protoName(proto)
		body := []byte{0, 0, 0x88, 0x0b, 1, 2, 3, 4, 5, 6, 7, 8}
		t.Run(name+" forward delivers inbound packets to the internal host", func(t *testing.T) {
			l := newLab(t, Config{Forwards: []Forward{{Proto: proto, To: lanB}}})
			p := l.mustIn(testpacket.IPv4(testpacket.IPv4Header{Src: remote1, Dst: wanAddr, Proto: proto}, body), VerdictToLAN)
			if p.DstAddr() != lanB || p.SrcAddr() != remote1 {
				t.Errorf("delivered %v→%v", p.SrcAddr(), p.DstAddr())
			}
			if string(p.Buf[header.IPv4MinimumSize:]) != string(body) {
				t.Error("payload changed")
			}
		})
		t.Run(name+" forward masquerades the internal host's packets", func(t *testing.T) {
			l := newLab(t, Config{Forwards: []Forward{{Proto: proto, To: lanB}}})
			p := l.mustOut(testpacket.IPv4(testpacket.IPv4Header{Src: lanB, Dst: remote1, Proto: proto}, body), VerdictToWAN)
			if p.SrcAddr() != wanAddr || p.DstAddr() != remote1 {
				t.Errorf("left as %v→%v", p.SrcAddr(), p.DstAddr())
			}
		})
		// Other hosts' ESP is associated by SPI (esp_test.go), other
		// hosts' GRE by Call ID or by address (gre_test.go).
	}
	t.Run("fragmented gre follows the forward", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{{Proto: ProtoGRE, To: lanB}}})
		first, tail := fragmentAt(testpacket.IPv4(testpacket.IPv4Header{Src: remote1, Dst: wanAddr, Proto: ProtoGRE, ID: 7}, make([]byte, 64)), 32)
		l.mustIn(first, VerdictToLAN)
		if p := l.mustIn(tail, VerdictToLAN); p.DstAddr() != lanB {
			t.Errorf("tail to %v", p.DstAddr())
		}
	})
}

// countingHandler is a protocol handler that records what it saw.
type countingHandler struct{ out, in int }

func (h *countingHandler) Outbound(p *Packet, now int64) Result {
	h.out++
	return Result{Verdict: VerdictToWAN}
}

func (h *countingHandler) Inbound(p *Packet, now int64) Result {
	h.in++
	return Result{Verdict: VerdictDrop, Reason: DropUnsolicited}
}

func TestProtocolDispatch(t *testing.T) {
	t.Run("a protocol's handler receives its packets in both directions", func(t *testing.T) {
		l := newLab(t, Config{})
		h := &countingHandler{}
		l.e.handlers[ProtoAH] = h
		r, _ := l.out(testpacket.IPv4(testpacket.IPv4Header{Src: lanA, Dst: remote1, Proto: ProtoAH}, make([]byte, 12)))
		if r.Verdict != VerdictToWAN {
			t.Errorf("verdict %s", verdictName(r.Verdict))
		}
		r, _ = l.in(testpacket.IPv4(testpacket.IPv4Header{Src: remote1, Dst: wanAddr, Proto: ProtoAH}, make([]byte, 12)))
		wantDrop(t, r, DropUnsolicited)
		if h.out != 1 || h.in != 1 || l.e.Drops.Get(DropUnsolicited) != 1 {
			t.Errorf("handler saw %d out %d in; unsolicited counter %d", h.out, h.in, l.e.Drops.Get(DropUnsolicited))
		}
	})
}

func TestEngineIsSafeForConcurrentUse(t *testing.T) {
	l := newLab(t, Config{UDPFiltering: EndpointIndependentFiltering})
	// The fake clock is not synchronised, so it stands still while the
	// goroutines run.
	var wg sync.WaitGroup
	const workers, packets = 4, 300
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			host := netip.AddrFrom4([4]byte{10, 0, 1, byte(w + 1)})
			var p Packet
			for i := 0; i < packets; i++ {
				sport := uint16(1000 + i%50)
				if p.Parse(udpPkt(ap(host, sport), ap(remote1, 53), "q")) != DropNone {
					t.Error("parse failed")
					return
				}
				r := l.e.Outbound(&p)
				if r.Verdict != VerdictToWAN {
					t.Errorf("outbound verdict %s (%v)", verdictName(r.Verdict), r.Reason)
					return
				}
				ext := p.SrcPort
				if p.Parse(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a")) != DropNone {
					t.Error("parse failed")
					return
				}
				if r := l.e.Inbound(&p); r.Verdict != VerdictToLAN || p.DstAddr() != host || p.DstPort != sport {
					t.Errorf("reply verdict %s reached %v:%d, want %v:%d", verdictName(r.Verdict), p.DstAddr(), p.DstPort, host, sport)
					return
				}
			}
		}(w)
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 100; i++ {
			l.e.Expire()
			_ = l.e.Mappings()
			_ = l.e.Stats()
		}
	}()
	wg.Wait()
	if s := l.e.Stats(); s.Mappings["udp"] != workers*50 {
		t.Errorf("%d udp mappings, want %d", s.Mappings["udp"], workers*50)
	}
}

func TestDropsAreCountedOnce(t *testing.T) {
	l := newLab(t, Config{})
	r, _ := l.in(udpPkt(ap(remote1, 1), ap(wanAddr, 2), "x"))
	wantDrop(t, r, DropUnsolicited)
	total := uint64(0)
	for _, reason := range AllDropReasons() {
		total += l.e.Drops.Get(reason)
	}
	if total != 1 || l.e.Drops.Get(DropUnsolicited) != 1 {
		t.Errorf("one drop counted %d times (unsolicited %d)", total, l.e.Drops.Get(DropUnsolicited))
	}
}
