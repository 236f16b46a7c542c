package nat

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// Attacks on the IPsec state: an off-path attacker on the WAN forges any
// source address (a VPN gateway's) but cannot see the traffic, so it
// knows no SPI in use; a LAN host may misbehave. Each test runs the
// exchange with and without the forged packets: the assertions hold for
// both, and the control shows they hold for the genuine exchange alone.

// unconfirmedIKE counts host's unconfirmed (remote-started, unanswered)
// IKE sessions.
func (l *lab) unconfirmedIKE(host netip.Addr) int {
	n := 0
	for _, s := range l.e.IKESessions() {
		if s.Host.Addr() == host && s.Unconfirmed {
			n++
		}
	}
	return n
}

// forgeIKE sends n IKE_SA_INIT messages with fresh SPIs from remote, as a
// forger would, and reports where they went.
func (l *lab) forgeIKE(remote netip.Addr, n int, first uint64) (delivered map[netip.Addr]int, drops map[DropReason]int) {
	delivered, drops = map[netip.Addr]int{}, map[DropReason]int{}
	for i := range n {
		r, p := l.in(ikePkt(ap(remote, 500), ap(wanAddr, 500), first+uint64(i), 0))
		if r.Verdict == VerdictToLAN {
			delivered[p.DstAddr()]++
		} else {
			drops[r.Reason]++
		}
	}
	return delivered, drops
}

func TestForgedRemoteStartedIKE(t *testing.T) {
	for _, forged := range []int{0, 5000} {
		name := "without forged IKE (control)"
		if forged > 0 {
			name = fmt.Sprintf("after %d forged IKE_SA_INIT from a gateway's address", forged)
		}
		t.Run(name+": other hosts' IKE_SA_INIT still pass and the flooded host keeps at most max_remote_ike unconfirmed sessions", func(t *testing.T) {
			l := newLab(t, Config{IPsec: IPsecConfig{MaxESP: 64}})
			l.ikeExchange(lanA, remote1, 0xa0a0)
			delivered, _ := l.forgeIKE(remote1, forged, 0x7000000000000000)
			if delivered[lanB]+delivered[lanC] != 0 {
				t.Errorf("forged IKE reached hosts that never talked to the remote: %v", delivered)
			}
			if n := l.unconfirmedIKE(lanA); n > DefaultMaxRemoteIKE {
				t.Errorf("lanA holds %d unconfirmed sessions, max_remote_ike %d", n, DefaultMaxRemoteIKE)
			}
			if forged > 0 && l.e.Limits.Evicted(LimitRemoteIKE) == 0 {
				t.Error("no max_remote_ike eviction counted")
			}
			// Other hosts start IKE with the same gateway and another one.
			for i, hr := range []struct{ host, remote netip.Addr }{{lanB, remote1}, {lanC, remote2}, {lanB, remote2}} {
				l.ikeExchange(hr.host, hr.remote, 0xb000+uint64(i))
			}
			// lanA's own new exchange is never refused for them either.
			l.ikeExchange(lanA, remote1, 0xa1a1)
			l.advance(30 * time.Second) // limits.remote_ike_timeout
			if n := l.unconfirmedIKE(lanA); n != 0 {
				t.Errorf("%d unconfirmed sessions left after remote_ike_timeout", n)
			}
			if got := len(l.e.IKESessions()); got != 5 {
				t.Errorf("%d IKE sessions, want the 5 the LAN hosts started", got)
			}
		})
	}
	t.Run("a forged flood at the table bound gives way to a LAN host's new exchange", func(t *testing.T) {
		l := newLab(t, Config{IPsec: IPsecConfig{MaxESP: 6}})
		l.ikeExchange(lanA, remote1, 0xa0a0)
		l.ikeExchange(lanA, remote2, 0xa0a1)
		l.forgeIKE(remote1, 100, 0x7000000000000000)
		l.forgeIKE(remote2, 100, 0x7100000000000000)
		if n := len(l.e.ike.byI); n > 6 {
			t.Fatalf("%d IKE sessions, max_esp 6", n)
		}
		for i := range 4 { // more than the unconfirmed sessions there are
			l.ikeExchange(lanB, remote1, 0xb0b0+uint64(i))
		}
		if l.e.Limits.Evicted(LimitIKE) == 0 {
			t.Error("no max_ike eviction counted")
		}
		// Only confirmed sessions left now: the next new exchange is refused.
		r, _ := l.out(ikePkt(ap(lanC, 500), ap(remote2, 500), 0xc0c0, 0))
		wantDrop(t, r, DropTableFull)
		if l.e.Limits.Refused(LimitIKE) != 1 {
			t.Errorf("max_ike refusals %d, want 1", l.e.Limits.Refused(LimitIKE))
		}
	})
	t.Run("max_ike_per_host bounds one host's sessions and its unconfirmed ones give way to its own", func(t *testing.T) {
		l := newLab(t, Config{Limits: Limits{MaxIKEPerHost: 3}})
		l.ikeExchange(lanA, remote1, 0xa0a0)
		l.forgeIKE(remote1, 2, 0x7000000000000000) // lanA at its quota now
		l.ikeExchange(lanA, remote1, 0xa0a1)
		l.ikeExchange(lanA, remote1, 0xa0a2)
		r, _ := l.out(ikePkt(ap(lanA, 500), ap(remote1, 500), 0xa0a3, 0))
		wantDrop(t, r, DropHostQuota)
		if l.e.Limits.Refused(LimitIKEPerHost) != 1 || l.e.Limits.Evicted(LimitIKEPerHost) != 2 {
			t.Errorf("max_ike_per_host refused %d evicted %d, want 1 and 2",
				l.e.Limits.Refused(LimitIKEPerHost), l.e.Limits.Evicted(LimitIKEPerHost))
		}
		l.ikeExchange(lanB, remote1, 0xb0b0) // another host has its own share
	})
}

func TestRemoteStartedIKESession(t *testing.T) {
	const newISPI, newRSPI = 0x5eed5eed5eed5eed, 0x0badcafe0badcafe
	for _, answered := range []bool{true, false} {
		name := "a remote-started IKE SA the LAN host answers is confirmed and kept for ike_timeout"
		if !answered {
			name = "a remote-started IKE SA the LAN host never answers ends after remote_ike_timeout (control)"
		}
		t.Run(name, func(t *testing.T) {
			l := newLab(t, Config{})
			l.ikeExchange(lanA, remote1, 0xa0a0)
			l.advance(20 * time.Minute)
			// E.g. the gateway rekeys the IKE SA: new SPIs, first message from it.
			if p := l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), newISPI, 0), VerdictToLAN); p.DstAddr() != lanA {
				t.Fatalf("delivered to %v", p.DstAddr())
			}
			if n := l.unconfirmedIKE(lanA); n != 1 {
				t.Fatalf("%d unconfirmed sessions, want 1", n)
			}
			if answered {
				l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), newISPI, newRSPI), VerdictToWAN)
			}
			l.advance(31 * time.Second)
			kept := false
			for _, s := range l.e.IKESessions() {
				if s.InitiatorSPI == newISPI {
					kept = !s.Unconfirmed
				}
			}
			if kept != answered {
				t.Fatalf("session kept %v, want %v", kept, answered)
			}
			if !answered {
				return
			}
			l.advance(30 * time.Minute) // within ike_timeout of the host's answer
			if p := l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), newISPI, newRSPI), VerdictToLAN); p.DstAddr() != lanA {
				t.Errorf("the rekeyed IKE SA's message delivered to %v", p.DstAddr())
			}
			if n := l.unconfirmedIKE(lanA); n != 0 {
				t.Errorf("%d unconfirmed sessions, want 0", n)
			}
		})
	}
	t.Run("an unconfirmed session never makes its host the most recent IKE host", func(t *testing.T) {
		l := newLab(t, Config{})
		l.ikeExchange(lanA, remote1, 0xa0a0)
		l.advance(time.Second)
		l.ikeExchange(lanB, remote1, 0xb0b0) // lanB most recent
		l.advance(time.Second)
		// A forged message with unseen SPIs goes to lanB, and must not move
		// lanB's IKE contact: lanB took no part in it.
		before, _ := l.e.ike.lastContact(lanB.As4(), remote1.As4(), l.e.now())
		l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), 0x7777, 0), VerdictToLAN)
		if after, _ := l.e.ike.lastContact(lanB.As4(), remote1.As4(), l.e.now()); after != before {
			t.Errorf("a remote-started message moved lanB's IKE contact from %d to %d", before, after)
		}
	})
}

// lastContact is when host last exchanged IKE with remote (ok false if
// never, or timed out).
func (t *ikeTracker) lastContact(host, remote [4]byte, now int64) (int64, bool) {
	c := t.lastIKE[remote]
	if c == nil {
		return 0, false
	}
	at, ok := c.hosts[host]
	return at, ok && now-at < t.timeout()
}

// espForged sends a forged ESP packet from remote and fails if it reached
// any host but allowed (the host the rules name may get it: its IPsec
// stack drops an SA it does not know).
func (l *lab) espForged(remote netip.Addr, spi, seq uint32, allowed netip.Addr) {
	l.t.Helper()
	r, p := l.in(espPkt(remote, wanAddr, spi, seq))
	if r.Verdict == VerdictToLAN && p.DstAddr() != allowed {
		l.t.Fatalf("forged SPI %#x delivered to %v", spi, p.DstAddr())
	}
}

// inboundHost is the host an inbound SPI from remote is bound to, if any.
func (l *lab) inboundHost(remote netip.Addr, spi uint32) (netip.Addr, string) {
	for _, pr := range l.e.ESPPairs() {
		if pr.Remote == remote.As4() && pr.InSPI == spi {
			return netip.AddrFrom4(pr.Host), pr.State
		}
	}
	return netip.Addr{}, ""
}

func TestForgedESPWhileAHostWaits(t *testing.T) {
	const forgedSPI, realSPI = 0x0bad0001, 0x1a1a1a1a
	for _, withIKE := range []bool{true, false} {
		for _, forged := range []int{0, 1, 2} {
			name := fmt.Sprintf("%d forged packets", forged)
			if forged == 0 {
				name = "no forged packet (control)"
			}
			if withIKE {
				name += ", another host the most recent in IKE with the gateway"
			} else {
				name += ", no IKE seen, another host with ESP to the gateway rekeying next"
			}
			t.Run(name+": the waiting host's real inbound SA is never bound to another host", func(t *testing.T) {
				l := newLab(t, Config{})
				if withIKE {
					l.ikeExchange(lanB, remote1, 0xb0b0)
				}
				l.espPairSPIs(lanB, remote1, 0xb1, 0x1b)
				l.advance(5 * time.Minute)
				if withIKE {
					l.ikeExchange(lanA, remote1, 0xa0a0) // lanA negotiates its SA
					l.advance(time.Second)
					l.ikeExchange(lanB, remote1, 0xb0b0) // lanB's dead peer detection
					l.advance(time.Second)
				}
				l.espOut(lanA, remote1, 0xa1) // lanA waits for its inbound SPI
				for i := range forged {
					l.espForged(remote1, forgedSPI, uint32(1+i), lanA)
				}
				// The gateway's real answer, then traffic.
				for range 3 {
					l.espIn(remote1, realSPI, lanA)
				}
				if !withIKE {
					// lanB rekeys: its new outbound SPI must not take
					// lanA's inbound SPI.
					l.espOut(lanB, remote1, 0xb2)
				}
				l.espOut(lanA, remote1, 0xa1)
				for range 3 {
					l.espIn(remote1, realSPI, lanA)
				}
				if host, state := l.inboundHost(remote1, realSPI); host != lanA || state == "tentative" {
					t.Errorf("the real inbound SPI is bound to %v (%s), want lanA confirmed", host, state)
				}
				l.espIn(remote1, 0x1b, lanB)
				l.espOut(lanB, remote1, 0xb1)
			})
		}
	}
	t.Run("a flood of forged SPIs while a host waits keeps bounded candidates and the real SPI still binds", func(t *testing.T) {
		l := newLab(t, Config{})
		l.espPairSPIs(lanB, remote1, 0xb1, 0x1b)
		l.advance(5 * time.Minute)
		l.espOut(lanA, remote1, 0xa1)
		l.espIn(remote1, realSPI, lanA)
		for i := range 1000 {
			l.espForged(remote1, 0x0bad0000+uint32(i), 1, lanA)
		}
		if n := len(l.e.esp.cands[hostRemote{lanA.As4(), remote1.As4()}]); n > espMaxCandidates {
			t.Errorf("%d candidates, want at most %d", n, espMaxCandidates)
		}
		l.espIn(remote1, realSPI, lanA)
		l.espIn(remote1, realSPI, lanA)
		if host, state := l.inboundHost(remote1, realSPI); host != lanA || state != "established" {
			t.Errorf("the real inbound SPI is bound to %v (%s)", host, state)
		}
		// Other hosts get their turn again.
		l.espOut(lanC, remote1, 0xc1)
	})
}

func TestGenuineRekeysWithForgedESP(t *testing.T) {
	// Two hosts with IKE and ESP to one gateway; lanA's CHILD_SA is
	// rekeyed (by either side; either side may send on the new SAs first)
	// with or without a forged packet in between.
	for _, tc := range []struct {
		name       string
		hostFirst  bool // lanA sends on its new outbound SPI before the gateway
		remoteIKE  bool // the gateway rekeys the IKE SA first (new IKE SPIs)
		forgedWhen int  // 0 none, 1 before the gateway's first packet, 2 between its packets
	}{
		{name: "the gateway sends on the new SA first"},
		{name: "the gateway sends on the new SA first, one forged packet before it", forgedWhen: 1},
		{name: "the gateway sends on the new SA first, one forged packet among its packets", forgedWhen: 2},
		{name: "the host sends on the new SA first", hostFirst: true},
		{name: "the host sends on the new SA first, one forged packet before the gateway's", hostFirst: true, forgedWhen: 1},
		{name: "after an IKE SA rekey the gateway started", remoteIKE: true},
		{name: "after an IKE SA rekey the gateway started, one forged packet", remoteIKE: true, forgedWhen: 1},
	} {
		t.Run(tc.name+": the new SA binds to the host that rekeyed", func(t *testing.T) {
			l := newLab(t, Config{})
			l.ikeExchange(lanA, remote1, 0xa0a0)
			l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
			l.ikeExchange(lanB, remote1, 0xb0b0)
			l.espPairSPIs(lanB, remote1, 0xb1, 0x1b)
			l.advance(20 * time.Minute)
			if tc.remoteIKE {
				const ni, nr = 0x1e1e1e1e1e1e1e1e, 0x2e2e2e2e2e2e2e2e
				l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ni, 0), VerdictToLAN)
				l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ni, nr), VerdictToWAN)
				l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ni, nr), VerdictToLAN)
			} else {
				l.ikeExchange(lanA, remote1, 0xa0a0) // CREATE_CHILD_SA
			}
			if tc.hostFirst {
				l.espOut(lanA, remote1, 0xa2)
			}
			if tc.forgedWhen == 1 {
				l.espForged(remote1, 0x0bad0001, 1, lanA)
			}
			l.espIn(remote1, 0x2a, lanA)
			if tc.forgedWhen == 2 {
				l.espForged(remote1, 0x0bad0001, 1, lanA)
			}
			l.espIn(remote1, 0x2a, lanA)
			if !tc.hostFirst {
				l.espOut(lanA, remote1, 0xa2)
			}
			if pr, ok := l.pairOf(lanA, 0xa2, 0); !ok || pr.InSPI != 0x2a || pr.State != "established" {
				t.Errorf("lanA's new pair %+v (found %v)", pr, ok)
			}
			// Old and new SAs of both hosts work.
			l.espIn(remote1, 0x2a, lanA)
			l.espIn(remote1, 0x1a, lanA)
			l.espIn(remote1, 0x1b, lanB)
			l.espOut(lanB, remote1, 0xb1)
			// lanB's own rekey afterwards is not held back.
			l.advance(3 * time.Minute)
			l.ikeExchange(lanB, remote1, 0xb0b0)
			l.espOut(lanB, remote1, 0xb2)
			l.espIn(remote1, 0x2b, lanB)
			l.espIn(remote1, 0x2b, lanB)
		})
	}
}

func TestESPFairShares(t *testing.T) {
	remote := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 200, byte(1 + i)}) }
	for _, greedy := range []int{2, 20} {
		t.Run(fmt.Sprintf("a host opening %d new SPIs gets at most max_esp_per_host and leaves room for another host", greedy), func(t *testing.T) {
			l := newLab(t, Config{IPsec: IPsecConfig{MaxESP: 8}, Limits: Limits{MaxESPPerHost: 4}})
			passed := 0
			for i := range greedy {
				r, _ := l.out(espPkt(lanA, remote(i), 0xa000+uint32(i), 1))
				if r.Verdict == VerdictToWAN {
					passed++
					continue
				}
				wantDrop(t, r, DropHostQuota)
				if !r.Unreachable {
					t.Error("a refused new SPI does not ask for an unreachable")
				}
			}
			if want := min(greedy, 4); passed != want {
				t.Errorf("%d new SPIs passed, want %d", passed, want)
			}
			if refused := int(l.e.Limits.Refused(LimitESPPerHost)); refused != greedy-passed {
				t.Errorf("max_esp_per_host refusals %d, want %d", refused, greedy-passed)
			}
			l.espPairSPIs(lanB, remote1, 0xb1, 0x1b)
			l.espPairSPIs(lanC, remote2, 0xc1, 0x1c)
		})
	}
	t.Run("at max_esp unanswered waiting entries give way and established pairs of other hosts stay", func(t *testing.T) {
		l := newLab(t, Config{IPsec: IPsecConfig{MaxESP: 6}, Limits: Limits{MaxESPPerHost: 4}})
		for i := range 4 {
			l.espPairSPIs(lanA, remote(i), 0xa000+uint32(i), 0x1a00+uint32(i))
		}
		l.espOut(lanC, remote(10), 0xc1) // never answered
		l.espOut(lanC, remote(11), 0xc2)
		l.espPairSPIs(lanB, remote1, 0xb1, 0x1b)
		if l.e.Limits.Evicted(LimitESP) != 1 {
			t.Errorf("max_esp evictions %d, want 1", l.e.Limits.Evicted(LimitESP))
		}
		if _, ok := l.pairOf(lanC, 0xc1, 0); ok {
			t.Error("the oldest waiting entry is still there")
		}
		for i := range 4 {
			l.espOut(lanA, remote(i), 0xa000+uint32(i))
			l.espIn(remote(i), 0x1a00+uint32(i), lanA)
		}
		l.espPairSPIs(lanB, remote2, 0xb2, 0x2b) // evicts lanC's other one
		r, _ := l.out(espPkt(lanB, remote(12), 0xb3, 1))
		wantDrop(t, r, DropTableFull)
		if l.e.Limits.Refused(LimitESP) != 1 {
			t.Errorf("max_esp refusals %d, want 1", l.e.Limits.Refused(LimitESP))
		}
	})
}

func TestQuietSAStaysWithItsHost(t *testing.T) {
	t.Run("a quiet SA's second packet minutes after its first still binds to its host, not to the host that claimed the gateway since", func(t *testing.T) {
		l := newLab(t, Config{})
		l.espOut(lanA, remote1, 0xa1)
		l.espIn(remote1, 0x1a, lanA) // a candidate of lanA's waiting entry
		l.advance(2*time.Minute + 30*time.Second)
		l.espOut(lanB, remote1, 0xb1) // lanA's wait ran out: lanB may claim the gateway
		l.espIn(remote1, 0x1a, lanA)  // lanA's SA speaks again
		if pr, ok := l.pairOf(lanA, 0xa1, 0); !ok || pr.InSPI != 0x1a || pr.State != "established" {
			t.Errorf("lanA's pair %+v (found %v)", pr, ok)
		}
		l.espIn(remote1, 0x1b, lanB)
		l.espIn(remote1, 0x1b, lanB)
		l.espIn(remote1, 0x1a, lanA)
	})
}

func TestForgedNATTIKEOpensNoFlows(t *testing.T) {
	for _, forged := range []int{0, 3000} {
		t.Run(fmt.Sprintf("%d forged remote-started IKE on 4500 from as many ports open no NAT-T flow; the host's answer does", forged), func(t *testing.T) {
			l := newLab(t, Config{})
			l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), 0xa0a0, 0), VerdictToWAN)
			l.mustIn(nattIKEPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xa0a0, 0x0a0a), VerdictToLAN)
			for i := range forged {
				r, p := l.in(nattIKEPkt(ap(remote1, uint16(10000+i)), ap(wanAddr, 4500), 0x7000000000000000+uint64(i), 0))
				if r.Verdict == VerdictToLAN && p.DstAddr() != lanA {
					t.Fatalf("forged IKE delivered to %v", p.DstAddr())
				}
			}
			if n := len(l.e.ike.natt); n != 1 {
				t.Errorf("%d NAT-T flows, want lanA's one", n)
			}
			// The gateway's real new IKE SA from a new port: delivered, and
			// the host's answer opens the flow for what follows.
			if p := l.mustIn(nattIKEPkt(ap(remote1, 61000), ap(wanAddr, 4500), 0x5eed, 0), VerdictToLAN); dstAP(p) != ap(lanA, 4500) {
				t.Fatalf("delivered to %v", dstAP(p))
			}
			l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 61000), 0x5eed, 0xfeed), VerdictToWAN)
			if p := l.mustIn(nattESPPkt(ap(remote1, 61000), ap(wanAddr, 4500), 0xd0000001), VerdictToLAN); dstAP(p) != ap(lanA, 4500) {
				t.Errorf("ESP-in-UDP after the answer delivered to %v", dstAP(p))
			}
		})
	}
	t.Run("at max_esp NAT-T flows a LAN host's NAT-T takes an ordinary mapping", func(t *testing.T) {
		l := newLab(t, Config{IPsec: IPsecConfig{MaxESP: 2}, Ports: PortRange{First: 20000, Last: 30000}})
		for i := range 2 {
			if p := l.mustOut(nattKeepalivePkt(ap(lanA, 4500), ap(remote1, uint16(4500+i))), VerdictToWAN); p.SrcPort != 4500 {
				t.Fatalf("flow %d left from %d", i, p.SrcPort)
			}
		}
		p := l.mustOut(nattKeepalivePkt(ap(lanB, 4500), ap(remote2, 4500)), VerdictToWAN)
		if p.SrcPort < 20000 || p.SrcPort > 30000 {
			t.Errorf("left from %d, want a port of the range", p.SrcPort)
		}
		if len(l.e.ike.natt) != 2 {
			t.Errorf("%d NAT-T flows, max_esp 2", len(l.e.ike.natt))
		}
	})
}

func TestForgedConfirmedSPIsCannotFillTheTable(t *testing.T) {
	// Two forged packets with increasing sequence numbers confirm a forged
	// SPI for the host IKE names (an inbound-only pair): a forger sending
	// pairs of packets must still not fill the host's share or the table.
	for _, forged := range []int{0, 50} {
		t.Run(fmt.Sprintf("%d forged SPIs confirmed by two packets each leave the host its own share and others room", forged), func(t *testing.T) {
			l := newLab(t, Config{IPsec: IPsecConfig{MaxESP: 5}, Limits: Limits{MaxESPPerHost: 4}})
			l.ikeExchange(lanA, remote1, 0xa0a0)
			l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
			l.advance(5 * time.Minute)
			for i := range forged {
				l.espForged(remote1, 0x0bad0000+uint32(i), 1, lanA)
				l.espForged(remote1, 0x0bad0000+uint32(i), 2, lanA)
			}
			inOnly := 0
			for _, pr := range l.e.ESPPairs() {
				if pr.State == "inbound-only" {
					inOnly++
				}
			}
			if inOnly > 2 { // espMaxInboundOnly
				t.Errorf("%d inbound-only pairs, want at most 2", inOnly)
			}
			// lanA's own new SAs to other gateways, and other hosts'.
			l.espPairSPIs(lanA, remote2, 0xa2, 0x2a)
			l.espPairSPIs(lanA, router, 0xa3, 0x3a)
			l.espPairSPIs(lanB, remote2, 0xb2, 0x2b)
			l.espPairSPIs(lanC, remote2, 0xc2, 0x2c)
			for _, pr := range []struct {
				host, remote netip.Addr
				out, in      uint32
			}{{lanA, remote1, 0xa1, 0x1a}, {lanA, remote2, 0xa2, 0x2a}, {lanB, remote2, 0xb2, 0x2b}, {lanC, remote2, 0xc2, 0x2c}} {
				l.espOut(pr.host, pr.remote, pr.out)
				l.espIn(pr.remote, pr.in, pr.host)
			}
		})
	}
}

// genuineSA is one SA pair of a random script: the host's outbound SPI, the
// remote's inbound SPI and the remote's next sequence number.
type genuineSA struct {
	host, remote netip.Addr
	out, in      uint32
	seq          uint32
}

// runESPScript plays a random sequence of genuine IKE and ESP events, and
// one forged ESP packet at step forgeAt (none when forgeAt < 0), and
// returns the fate of every genuine packet.
func runESPScript(t *testing.T, seed uint64, forgeAt int) []string {
	rng := seed
	next := func(n int) int {
		rng ^= rng << 13
		rng ^= rng >> 7
		rng ^= rng << 17
		return int(rng % uint64(n))
	}
	hosts := []netip.Addr{lanA, lanB, lanC}
	remotes := []netip.Addr{remote1, remote2}
	l := newLab(t, Config{})
	var sas []*genuineSA
	var fates []string
	fate := func(r Result, p *Packet) string {
		if r.Verdict == VerdictDrop {
			return "drop " + r.Reason.String()
		}
		return verdictName(r.Verdict) + " " + p.DstAddr().String()
	}
	for step := range 60 {
		if step == forgeAt { // its own randomness: the script stays the same
			remote := remotes[seed>>7%2]
			l.in(espPkt(remote, wanAddr, 0xf0000000|uint32(seed>>9&0xfffff), uint32(1+seed>>31%3)))
		}
		switch next(8) {
		case 0: // an IKE exchange (a negotiation, a rekey or dead peer detection)
			h, r := hosts[next(3)], remotes[next(2)]
			l.ikeExchange(h, r, uint64(h.As4()[3])<<8|uint64(r.As4()[3]))
		case 1: // a new SA, then the host sends on one of its SAs
			sa := &genuineSA{host: hosts[next(3)], remote: remotes[next(2)], out: 0xa0000000 | uint32(len(sas)), in: 0xb0000000 | uint32(len(sas)), seq: 1}
			sas = append(sas, sa)
			fallthrough
		case 2, 3: // the host sends on one of its SAs
			if len(sas) == 0 {
				continue
			}
			sa := sas[next(len(sas))]
			r, p := l.out(espPkt(sa.host, sa.remote, sa.out, 1))
			fates = append(fates, fmt.Sprintf("step %d out %#x: %s", step, sa.out, fate(r, p)))
		case 4, 5, 6: // the remote sends on one of the SAs
			if len(sas) == 0 {
				continue
			}
			sa := sas[next(len(sas))]
			r, p := l.in(espPkt(sa.remote, wanAddr, sa.in, sa.seq))
			sa.seq++
			fates = append(fates, fmt.Sprintf("step %d in %#x: %s", step, sa.in, fate(r, p)))
		default:
			l.advance(time.Duration(1+next(150)) * time.Second)
		}
	}
	return fates
}

func TestOneForgedESPPacketChangesNoGenuinePacketsFate(t *testing.T) {
	// The invariant of esp.go, checked over random genuine exchanges of
	// three hosts with two gateways: the same exchange with one forged ESP
	// packet (unknown SPI, any sequence number, from either gateway)
	// inserted anywhere delivers or drops every genuine packet exactly as
	// without it.
	changed := 0
	for seed := uint64(1); seed <= 400; seed++ {
		want := runESPScript(t, seed*0x9e3779b97f4a7c15, -1)
		forgeAt := int(seed % 60)
		got := runESPScript(t, seed*0x9e3779b97f4a7c15, forgeAt)
		if len(got) != len(want) {
			t.Fatalf("seed %d: %d genuine packets with the forgery, %d without", seed, len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				changed++
				if changed <= 5 {
					t.Errorf("seed %d, forged at step %d: %s without the forgery, %s with it", seed, forgeAt, want[i], got[i])
				}
				break
			}
		}
	}
	if changed > 0 {
		t.Errorf("one forged packet changed genuine packets' fate in %d of 400 exchanges", changed)
	}
}

func TestForgedESPRacingTheGenuineAnswer(t *testing.T) {
	const forgedSPI, realSPI = 0x0bad0001, 0x1a1a1a1a
	for _, when := range []string{"", "before", "after"} {
		name := "no forged packet (control)"
		if when != "" {
			name = "one forged packet just " + when + " the genuine answer"
		}
		t.Run(name+": the other host is released a reply window after the host's last packet and the real SA stays with its host", func(t *testing.T) {
			l := newLab(t, Config{})
			l.espPairSPIs(lanC, remote1, 0xc1, 0x1c) // another host with ESP to the gateway
			l.advance(5 * time.Minute)
			l.espOut(lanA, remote1, 0xa1)
			if when == "before" {
				l.espForged(remote1, forgedSPI, 1, lanA)
			}
			l.advance(20 * time.Millisecond) // one RTT
			l.espIn(remote1, realSPI, lanA)
			if when == "after" {
				l.espForged(remote1, forgedSPI, 1, lanA)
			}
			// lanA got its answer and goes quiet; lanB starts an SA.
			l.espDrop(espPkt(lanB, remote1, 0xb1, 1), true, DropESPHeldBack)
			l.advance(espReplyWindow)
			l.espOut(lanB, remote1, 0xb1)
			l.espIn(remote1, 0x1b, lanB)
			// Both SAs speak again, minutes later.
			l.advance(time.Minute)
			l.espIn(remote1, realSPI, lanA)
			l.espIn(remote1, 0x1b, lanB)
			l.espOut(lanA, remote1, 0xa1)
			l.espOut(lanB, remote1, 0xb1)
			for _, want := range []struct {
				host    netip.Addr
				out, in uint32
			}{{lanA, 0xa1, realSPI}, {lanB, 0xb1, 0x1b}, {lanC, 0xc1, 0x1c}} {
				if pr, ok := l.pairOf(want.host, want.out, 0); !ok || pr.InSPI != want.in || pr.State != "established" {
					t.Errorf("%v's pair %+v (found %v), want inbound SPI %#x established", want.host, pr, ok, want.in)
				}
			}
			if host, state := l.inboundHost(remote1, forgedSPI); host.IsValid() && (host != lanA || state != "tentative") {
				t.Errorf("the forged SPI is bound to %v (%s)", host, state)
			}
		})
	}
	t.Run("one forged packet while a host waits and its answer comes after the reply window: every genuine packet fares as without it", func(t *testing.T) {
		run := func(forge bool) []string {
			l := newLab(t, Config{})
			var fates []string
			rec := func(r Result, p *Packet) {
				if r.Verdict == VerdictDrop {
					fates = append(fates, "drop "+r.Reason.String())
				} else {
					fates = append(fates, verdictName(r.Verdict)+" "+p.DstAddr().String())
				}
			}
			rec(l.out(espPkt(lanA, remote1, 0xa1, 1)))
			if forge {
				l.in(espPkt(remote1, wanAddr, forgedSPI, 1))
			}
			rec(l.out(espPkt(lanB, remote1, 0xb1, 1)))
			l.advance(espReplyWindow + time.Nanosecond)
			rec(l.out(espPkt(lanB, remote1, 0xb1, 2)))
			rec(l.in(espPkt(remote1, wanAddr, 0x1b, 1)))
			rec(l.in(espPkt(remote1, wanAddr, 0x1b, 2)))
			l.advance(espReplyWindow + time.Nanosecond)
			rec(l.out(espPkt(lanA, remote1, 0xa1, 2)))
			rec(l.in(espPkt(remote1, wanAddr, realSPI, 1)))
			rec(l.in(espPkt(remote1, wanAddr, realSPI, 2)))
			return fates
		}
		without, with := run(false), run(true)
		if fmt.Sprint(without) != fmt.Sprint(with) {
			t.Errorf("genuine packets without the forgery: %v; with it: %v", without, with)
		}
	})
}

func TestNATTFlowIsRefreshedFromTheInsideOnly(t *testing.T) {
	// lanA keeps WAN:4500 towards remote1; then only the remote's side
	// (or someone forging it) sends, every 10 s, past ike_timeout.
	run := func(t *testing.T, cfg Config) (alive bool) {
		l := newLab(t, cfg)
		l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), 0x1111, 0), VerdictToWAN)
		l.mustIn(nattIKEPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0x1111, 0x2222), VerdictToLAN)
		for range int(DefaultIKETimeoutForTest / (10 * time.Second)) {
			l.in(nattESPPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xd0000001))
			l.advance(10 * time.Second)
		}
		l.advance(10 * time.Second)
		r, _ := l.in(nattESPPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xd0000001))
		return r.Verdict == VerdictToLAN
	}
	t.Run("ESP-in-UDP from the outside alone does not keep the flow past ike_timeout", func(t *testing.T) {
		if run(t, Config{}) {
			t.Error("the NAT-T flow outlived ike_timeout on inbound packets alone")
		}
	})
	t.Run("control: with udp_inbound_refresh it does", func(t *testing.T) {
		if !run(t, Config{UDPInboundRefresh: true}) {
			t.Error("inbound refresh did not keep the NAT-T flow")
		}
	})
}

// DefaultIKETimeoutForTest is ipsec.ike_timeout's default.
const DefaultIKETimeoutForTest = 35 * time.Minute
