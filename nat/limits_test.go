package nat

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// Tests of the bounds on the engine's state and the fair shares of it:
// what a flood from forged WAN sources, or one LAN host that misbehaves,
// can take, and what the others keep. Each attack runs beside its control.

// lanHost numbers LAN hosts 10.0.1.0 and up.
func lanHost(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 1 + byte(i>>8), byte(i)}) }

// forgedSource numbers outside addresses 198.19.0.0 and up.
func forgedSource(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
}

func TestFlowsAreBoundedGloballyAndPerHost(t *testing.T) {
	t.Run("a SYN flood from forged sources to a forward never holds more than max_flows", func(t *testing.T) {
		l := newLab(t, Config{
			Forwards: []Forward{{Proto: ProtoTCP, Ports: PortRange{First: 8080, Last: 8080}, To: lanA, ToPort: 80}},
			Limits:   Limits{MaxFlows: 1000, MaxFlowsPerHost: 1000},
		})
		for i := range 30000 {
			l.in(tcpPkt(ap(forgedSource(i), 1024+uint16(i%50000)), ap(wanAddr, 8080), syn))
		}
		if n := l.e.Stats().Flows; n > 1000 {
			t.Fatalf("%d flows after the flood, max_flows is 1000", n)
		}
		if l.e.Limits.Evicted(LimitFlowsPerHost)+l.e.Limits.Evicted(LimitFlows) == 0 {
			t.Error("no eviction counted although the flood overflowed the table")
		}
	})
	t.Run("an established flow of another host survives the flood", func(t *testing.T) {
		l := newLab(t, Config{
			Forwards: []Forward{{Proto: ProtoTCP, Ports: PortRange{First: 8080, Last: 8080}, To: lanA, ToPort: 80}},
			Limits:   Limits{MaxFlows: 1000, MaxFlowsPerHost: 1000},
		})
		ext := l.mustOut(udpPkt(ap(lanB, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
		l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"), VerdictToLAN)
		for i := range 5000 {
			l.in(tcpPkt(ap(forgedSource(i), 1024+uint16(i)), ap(wanAddr, 8080), syn))
		}
		l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"), VerdictToLAN)
		if _, ok := l.mapping("udp", ap(lanB, 5000)); !ok {
			t.Error("lanB's answered flow was evicted by the flood")
		}
	})
	t.Run("a host at its share evicts its own unanswered flows, not another host's", func(t *testing.T) {
		l := newLab(t, Config{Limits: Limits{MaxFlowsPerHost: 100}})
		for i := range 1000 {
			l.mustOut(udpPkt(ap(lanA, 5000), ap(forgedSource(i), 53), "q"), VerdictToWAN)
		}
		ext := l.mustOut(udpPkt(ap(lanB, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
		l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"), VerdictToLAN)
		if m, _ := l.mapping("udp", ap(lanA, 5000)); m.Flows != 100 {
			t.Errorf("lanA holds %d flows, want its share of 100", m.Flows)
		}
		if got := l.e.Limits.Evicted(LimitFlowsPerHost); got != 900 {
			t.Errorf("%d evictions counted, want 900", got)
		}
	})
	t.Run("a host whose flows are all answered is refused beyond its share and told", func(t *testing.T) {
		l := newLab(t, Config{Limits: Limits{MaxFlowsPerHost: 10}})
		for i := range 10 {
			ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(forgedSource(i), 53), "q"), VerdictToWAN).SrcPort
			l.mustIn(udpPkt(ap(forgedSource(i), 53), ap(wanAddr, ext), "a"), VerdictToLAN)
		}
		r, _ := l.out(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"))
		wantDrop(t, r, DropHostQuota)
		if !r.Unreachable {
			t.Error("the refusal asks for no ICMP 3/13 to the host")
		}
		if l.e.Limits.Refused(LimitFlowsPerHost) != 1 {
			t.Errorf("refusals of max_flows_per_host: %d, want 1", l.e.Limits.Refused(LimitFlowsPerHost))
		}
		l.mustOut(udpPkt(ap(lanB, 5000), ap(remote1, 53), "q"), VerdictToWAN)
	})
	t.Run("the global bound refuses when every flow is answered", func(t *testing.T) {
		l := newLab(t, Config{Limits: Limits{MaxFlows: 20, MaxFlowsPerHost: 20}})
		for i := range 20 {
			ext := l.mustOut(udpPkt(ap(lanHost(i), 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
			l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"), VerdictToLAN)
		}
		r, _ := l.out(udpPkt(ap(lanB, 5000), ap(remote1, 53), "q"))
		wantDrop(t, r, DropTableFull)
		if l.e.Limits.Refused(LimitFlows) != 1 {
			t.Errorf("refusals of max_flows: %d, want 1", l.e.Limits.Refused(LimitFlows))
		}
	})
}

func TestOneHostCannotTakeEveryPort(t *testing.T) {
	// 12768 mid-stream ACK segments from distinct source ports: each a
	// mapping. The control shows the same host taking the whole range when
	// its share is as large as the range.
	ports := PortRange{First: 20000, Last: 32767}
	flood := func(l *lab) {
		for i := range ports.Last - ports.First + 1 {
			l.out(tcpPkt(ap(lanA, 33000+i), ap(remote1, 443), ack))
		}
	}
	// The new-flow rate is raised in both: the share is what is tested.
	fast := Limits{HostFlowRate: 1 << 30, HostFlowBurst: 1 << 30}
	t.Run("with the default share another host still gets a port", func(t *testing.T) {
		l := newLab(t, Config{Ports: ports, Limits: fast})
		flood(l)
		if n := l.e.Stats().PortsInUse["tcp"]; n > DefaultMaxMappingsPerHost {
			t.Errorf("lanA holds %d ports, its share is %d", n, DefaultMaxMappingsPerHost)
		}
		l.mustOut(tcpPkt(ap(lanB, 40000), ap(remote1, 443), syn), VerdictToWAN)
	})
	t.Run("control: a share as large as the range lets one host take every port", func(t *testing.T) {
		l := newLab(t, Config{Ports: ports, Limits: Limits{MaxMappingsPerHost: 1 << 20, MaxFlowsPerHost: 1 << 20,
			HostFlowRate: fast.HostFlowRate, HostFlowBurst: fast.HostFlowBurst}})
		flood(l)
		r, _ := l.out(tcpPkt(ap(lanB, 40000), ap(remote1, 443), syn))
		wantDrop(t, r, DropNoPorts)
	})
	t.Run("a host whose mappings are all in use is refused beyond its share", func(t *testing.T) {
		l := newLab(t, Config{Limits: Limits{MaxMappingsPerHost: 5}})
		for i := range 5 {
			ext := l.mustOut(udpPkt(ap(lanA, 5000+uint16(i)), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
			l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"), VerdictToLAN)
		}
		r, _ := l.out(udpPkt(ap(lanA, 6000), ap(remote1, 53), "q"))
		wantDrop(t, r, DropHostQuota)
		if l.e.Limits.Refused(LimitMappingsPerHost) != 1 {
			t.Errorf("refusals of max_mappings_per_host: %d", l.e.Limits.Refused(LimitMappingsPerHost))
		}
	})
}

func TestNewFlowRates(t *testing.T) {
	t.Run("a LAN host opening flows faster than its rate is held to it", func(t *testing.T) {
		l := newLab(t, Config{Limits: Limits{HostFlowRate: 100, HostFlowBurst: 200}})
		passed := 0
		for i := range 1000 {
			if r, _ := l.out(udpPkt(ap(lanA, 5000), ap(forgedSource(i), 53), "q")); r.Verdict == VerdictToWAN {
				passed++
			} else if r.Reason != DropRateLimited {
				t.Fatalf("drop %v, want rate_limited", r.Reason)
			}
		}
		if passed != 200 {
			t.Errorf("%d new flows passed in one instant, want the burst of 200", passed)
		}
		l.clock.Advance(time.Second)
		passed = 0
		for i := range 1000 {
			if r, _ := l.out(udpPkt(ap(lanA, 5001), ap(forgedSource(i), 53), "q")); r.Verdict == VerdictToWAN {
				passed++
			}
		}
		if passed != 100 {
			t.Errorf("%d new flows passed a second later, want the rate of 100", passed)
		}
		l.mustOut(udpPkt(ap(lanB, 5000), ap(remote1, 53), "q"), VerdictToWAN)
		l.mustOut(udpPkt(ap(lanA, 5000), ap(forgedSource(0), 53), "q"), VerdictToWAN) // existing flows pass
	})
	t.Run("one WAN source opening forwarded flows faster than its rate is held to it", func(t *testing.T) {
		l := newLab(t, Config{
			Forwards: []Forward{{Proto: ProtoUDP, Ports: PortRange{First: 5353, Last: 5353}, To: lanA}},
			Limits:   Limits{ForwardFlowRate: 10, ForwardFlowBurst: 20},
		})
		passed := 0
		for i := range 100 {
			if r, _ := l.in(udpPkt(ap(remote1, 1024+uint16(i)), ap(wanAddr, 5353), "q")); r.Verdict == VerdictToLAN {
				passed++
			} else if r.Reason != DropRateLimited || r.Unreachable {
				t.Fatalf("drop %v (unreachable %v), want a silent rate_limited", r.Reason, r.Unreachable)
			}
		}
		if passed != 20 {
			t.Errorf("%d forwarded flows from one source, want the burst of 20", passed)
		}
		l.mustIn(udpPkt(ap(remote2, 1024), ap(wanAddr, 5353), "q"), VerdictToLAN)
	})
	t.Run("hairpinned flows are not held to one WAN source's rate", func(t *testing.T) {
		// They all come from the WAN address itself.
		l := newLab(t, Config{
			Forwards: []Forward{{Proto: ProtoUDP, Ports: PortRange{First: 5353, Last: 5353}, To: lanA}},
			Limits:   Limits{ForwardFlowRate: 10, ForwardFlowBurst: 20},
		})
		for i := range 100 {
			l.mustOut(udpPkt(ap(lanHost(i), 5000), ap(wanAddr, 5353), "q"), VerdictToLAN)
		}
	})
}

func TestFlowsOpenedFromTheWANLiveOnTheUnrepliedTimer(t *testing.T) {
	fwd := []Forward{{Proto: ProtoUDP, Ports: PortRange{First: 5353, Last: 5353}, To: lanA}}
	t.Run("an unanswered forwarded flow is gone after unreplied_timeout", func(t *testing.T) {
		l := newLab(t, Config{Forwards: fwd})
		l.mustIn(udpPkt(ap(remote1, 1024), ap(wanAddr, 5353), "q"), VerdictToLAN)
		l.advance(DefaultUnrepliedTimeout + time.Second)
		if n := l.e.Stats().Flows; n != 0 {
			t.Errorf("%d flows left after the unreplied timeout", n)
		}
	})
	t.Run("control: an answered one lives the UDP timeout", func(t *testing.T) {
		l := newLab(t, Config{Forwards: fwd})
		l.mustIn(udpPkt(ap(remote1, 1024), ap(wanAddr, 5353), "q"), VerdictToLAN)
		l.mustOut(udpPkt(ap(lanA, 5353), ap(remote1, 1024), "a"), VerdictToWAN)
		l.advance(DefaultUnrepliedTimeout + time.Second)
		if n := l.e.Stats().Flows; n != 1 {
			t.Errorf("%d flows, want the answered one", n)
		}
	})
}

func TestUDPMappingsAreRefreshedFromTheInsideOnly(t *testing.T) {
	// A silent LAN host's mapping hammered from the WAN every second for an
	// hour, udp_timeout 5 minutes.
	hammer := func(l *lab, ext uint16) {
		for range 3600 {
			l.in(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "keep me"))
			l.advance(time.Second)
		}
	}
	t.Run("an outsider cannot keep a silent host's mapping alive", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
		hammer(l, ext)
		if _, ok := l.mapping("udp", ap(lanA, 5000)); ok {
			t.Error("mapping still alive an hour later")
		}
		r, _ := l.in(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "late"))
		wantDrop(t, r, DropUnsolicited)
	})
	t.Run("the mapping expires on time, not later", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
		for range 299 {
			l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "x"), VerdictToLAN)
			l.advance(time.Second)
		}
		l.advance(2 * time.Second)
		r, _ := l.in(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "x"))
		wantDrop(t, r, DropUnsolicited)
	})
	t.Run("control: with udp_inbound_refresh the same hammering keeps it", func(t *testing.T) {
		l := newLab(t, Config{UDPInboundRefresh: true})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
		hammer(l, ext)
		if _, ok := l.mapping("udp", ap(lanA, 5000)); !ok {
			t.Error("inbound refresh did not keep the mapping")
		}
	})
	t.Run("endpoint-independent filtering: new remotes do not extend the mapping", func(t *testing.T) {
		l := newLab(t, Config{UDPFiltering: EndpointIndependentFiltering})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
		for i := range 600 {
			l.in(udpPkt(ap(forgedSource(i), 53), ap(wanAddr, ext), "x"))
			l.advance(time.Second)
		}
		if _, ok := l.mapping("udp", ap(lanA, 5000)); ok {
			t.Error("flows opened from the WAN kept the mapping alive past its timer")
		}
	})
}

func TestICMPErrorsNeedTheQuotedFlow(t *testing.T) {
	l := newLab(t, Config{})
	orig := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN)
	ext := orig.SrcPort
	t.Run("an error quoting a remote the mapping never talked to is dropped", func(t *testing.T) {
		forged := udpPkt(ap(wanAddr, ext), ap(remote2, 53), "q")
		r, _ := l.in(portUnreachable(remote2, wanAddr, forged))
		wantDrop(t, r, DropICMPError)
	})
	t.Run("control: an error quoting the live flow reaches the host", func(t *testing.T) {
		p := l.mustIn(portUnreachable(router, wanAddr, orig.Buf), VerdictToLAN)
		if p.DstAddr() != lanA {
			t.Errorf("error delivered to %v", p.DstAddr())
		}
	})
}

func TestFragmentEntriesPerHost(t *testing.T) {
	l := newLab(t, Config{Limits: Limits{MaxFragmentsPerHost: 8}})
	firstFragment := func(host netip.Addr, id uint16) []byte {
		b := testpacket.IPv4(testpacket.IPv4Header{Src: host, Dst: remote1, Proto: ProtoUDP, ID: id},
			testpacket.UDP(ap(host, 5000), ap(remote1, 53), make([]byte, 64)))
		first, _ := fragmentAt(b, 48)
		return first
	}
	for i := range 20 {
		l.mustOut(firstFragment(lanA, uint16(i)), VerdictToWAN)
	}
	l.mustOut(firstFragment(lanB, 1), VerdictToWAN)
	if got := l.e.Limits.Refused(LimitFragmentsPerHost); got != 12 {
		t.Errorf("refused %d of lanA's fragment entries, want 12", got)
	}
	for _, h := range l.e.Stats().Hosts {
		want := map[netip.Addr]int{lanA: 8, lanB: 1}[h.Host]
		if h.Fragments != want {
			t.Errorf("%v holds %d fragment entries, want %d", h.Host, h.Fragments, want)
		}
	}
}

func TestExpirySweepsInBatches(t *testing.T) {
	l := newLab(t, Config{Ports: PortRange{First: 1024, Last: 65535}, Limits: bigLimits})
	fillFlows(t, l, 10*expireBatch)
	l.clock.Advance(6 * time.Minute)
	batches := 0
	for more := true; more; batches++ {
		l.e.mu.Lock()
		more = l.e.table.expireSome(l.e.now())
		l.e.mu.Unlock()
	}
	if batches < 10 {
		t.Errorf("%d flows swept in %d holds of the lock, want at most %d per hold", 10*expireBatch, batches, expireBatch)
	}
	if s := l.e.Stats(); s.Flows != 0 || len(s.Mappings) != 0 || len(s.Hosts) != 0 {
		t.Errorf("after the sweep: %d flows, mappings %v, %d hosts", s.Flows, s.Mappings, len(s.Hosts))
	}
}

func TestGaugesCountFlowsByState(t *testing.T) {
	l := newLab(t, Config{})
	ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
	l.mustOut(udpPkt(ap(lanA, 5000), ap(remote2, 53), "q"), VerdictToWAN)
	l.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, ext), "a"), VerdictToLAN)
	got := map[string]int{}
	for _, c := range l.e.Stats().FlowsByState {
		got[c.Proto+"/"+c.State] = c.Flows
	}
	if got["udp/assured"] != 1 || got["udp/unassured"] != 1 {
		t.Errorf("flow gauges %v, want one assured and one unassured UDP flow", got)
	}
	hosts := l.e.Stats().Hosts
	if len(hosts) != 1 || hosts[0].Host != lanA || hosts[0].Flows != 2 || hosts[0].Mappings != 1 {
		t.Errorf("hosts %+v, want lanA with 2 flows on 1 mapping", hosts)
	}
	l.advance(10 * time.Minute)
	for _, c := range l.e.Stats().FlowsByState {
		if c.Flows != 0 {
			t.Errorf("%s/%s: %d flows after expiry", c.Proto, c.State, c.Flows)
		}
	}
}
