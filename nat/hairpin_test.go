package nat

import (
	"testing"
	"time"
)

// Hairpinning as RFC 5780's test (section 4.6) exercises it: a LAN host
// learns its mapped address from a STUN server, then sends to that address
// from another socket (or another LAN host does), and the datagram must
// arrive on the first socket from an external address (RFC 4787 REQ-9).
// The first socket never sent to the WAN address, so filtering decides.

// udpTimeout is the default UDP mapping timer (RFC 4787 REQ-5).
const udpTimeout = 5 * time.Minute

// filteringModes are both values of udp_filtering.
var filteringModes = []struct {
	name string
	f    Filtering
}{
	{"address-dependent", AddressDependentFiltering},
	{"endpoint-independent", EndpointIndependentFiltering},
}

// stunMapped sends from a LAN endpoint to a STUN server on the WAN, lets
// the server answer, and returns the mapped (external) port.
func stunMapped(l *lab, from uint16) uint16 {
	l.t.Helper()
	ext := l.mustOut(udpPkt(ap(lanB, from), ap(remote1, 3478), "binding request"), VerdictToWAN).SrcPort
	l.mustIn(udpPkt(ap(remote1, 3478), ap(wanAddr, ext), "binding response"), VerdictToLAN)
	return ext
}

func TestHairpinnedUDPReachesMappingsAsEndpointIndependentFilteringWould(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, l *lab, mode Filtering)
	}{
		{"a datagram from another socket of the host reaches the mapping that never sent to the WAN address, from the sender's external endpoint", func(t *testing.T, l *lab, _ Filtering) {
			ext := stunMapped(l, 6000)
			p := l.mustOut(udpPkt(ap(lanB, 6001), ap(wanAddr, ext), "hairpin"), VerdictToLAN)
			if dstAP(p) != ap(lanB, 6000) {
				t.Fatalf("hairpinned to %v, want the first socket %v", dstAP(p), ap(lanB, 6000))
			}
			m, ok := l.mapping("udp", ap(lanB, 6001))
			if !ok || srcAP(p) != m.WAN {
				t.Fatalf("hairpinned from %v, want the second socket's external endpoint %v (REQ-9)", srcAP(p), m.WAN)
			}
		}},
		{"a datagram from another LAN host reaches it too", func(t *testing.T, l *lab, _ Filtering) {
			ext := stunMapped(l, 6000)
			p := l.mustOut(udpPkt(ap(lanA, 5000), ap(wanAddr, ext), "hairpin"), VerdictToLAN)
			if dstAP(p) != ap(lanB, 6000) || p.SrcAddr() != wanAddr {
				t.Fatalf("hairpinned %v→%v, want from %v to %v", srcAP(p), dstAP(p), wanAddr, ap(lanB, 6000))
			}
		}},
		{"the target's answer goes back around to the sender", func(t *testing.T, l *lab, _ Filtering) {
			ext := stunMapped(l, 6000)
			extA := l.mustOut(udpPkt(ap(lanA, 5000), ap(wanAddr, ext), "hello"), VerdictToLAN).SrcPort
			r := l.mustOut(udpPkt(ap(lanB, 6000), ap(wanAddr, extA), "answer"), VerdictToLAN)
			if srcAP(r) != ap(wanAddr, ext) || dstAP(r) != ap(lanA, 5000) {
				t.Fatalf("answer %v→%v, want %v→%v", srcAP(r), dstAP(r), ap(wanAddr, ext), ap(lanA, 5000))
			}
		}},
		{"a datagram to an external port no mapping holds is dropped and maps nothing there", func(t *testing.T, l *lab, _ Filtering) {
			r, _ := l.out(udpPkt(ap(lanA, 5000), ap(wanAddr, 25000), "nobody"))
			wantDrop(t, r, DropUnsolicited)
			for _, m := range l.e.Mappings() {
				if m.WAN.Port() == 25000 {
					t.Errorf("mapping %v ↔ %v appeared", m.LAN, m.WAN)
				}
			}
		}},
		{"a datagram to a mapping whose own timer ran out is dropped, even before the sweep", func(t *testing.T, l *lab, _ Filtering) {
			ext := stunMapped(l, 6000)
			l.clock.Advance(udpTimeout) // no Expire: the lookup must honour the timer
			r, _ := l.out(udpPkt(ap(lanA, 5000), ap(wanAddr, ext), "late"))
			wantDrop(t, r, DropUnsolicited)
		}},
		{"hairpinned datagrams do not keep the target's mapping alive", func(t *testing.T, l *lab, _ Filtering) {
			ext := stunMapped(l, 6000)
			for range 14 { // every 20 s for 4 min 40 s
				l.out(udpPkt(ap(lanA, 5000), ap(wanAddr, ext), "keepalive?"))
				l.advance(20 * time.Second)
			}
			l.advance(udpTimeout - 14*20*time.Second)
			if _, ok := l.mapping("udp", ap(lanB, 6000)); ok {
				t.Fatal("the mapping outlived its own timer: hairpinned traffic refreshed it")
			}
			r, _ := l.out(udpPkt(ap(lanA, 5000), ap(wanAddr, ext), "late"))
			wantDrop(t, r, DropUnsolicited)
		}},
		{"a hairpinned TCP SYN reaches no LAN host's connection, only forwards", func(t *testing.T, l *lab, _ Filtering) {
			ext := l.mustOut(tcpPkt(ap(lanB, 40000), ap(remote1, 443), syn), VerdictToWAN).SrcPort
			r, _ := l.out(tcpPkt(ap(lanA, 40001), ap(wanAddr, ext), syn))
			if r.Verdict != VerdictDrop {
				t.Fatalf("verdict %s, want the SYN dropped as from the WAN", verdictName(r.Verdict))
			}
		}},
		{"from the WAN the mapping is still filtered as configured", func(t *testing.T, l *lab, mode Filtering) {
			ext := stunMapped(l, 6000)
			r, _ := l.in(udpPkt(ap(remote2, 3478), ap(wanAddr, ext), "stranger"))
			if mode == AddressDependentFiltering {
				wantDrop(t, r, DropUnsolicited)
			} else if r.Verdict != VerdictToLAN {
				t.Fatalf("verdict %s (reason %v), want to_lan", verdictName(r.Verdict), r.Reason)
			}
		}},
		{"a WAN packet forged with the WAN address as its source is filtered as from the WAN", func(t *testing.T, l *lab, mode Filtering) {
			ext := stunMapped(l, 6000)
			r, _ := l.in(udpPkt(ap(wanAddr, 20001), ap(wanAddr, ext), "forged"))
			if mode == AddressDependentFiltering {
				wantDrop(t, r, DropUnsolicited)
			} else if r.Verdict != VerdictToLAN {
				t.Fatalf("verdict %s (reason %v), want to_lan", verdictName(r.Verdict), r.Reason)
			}
		}},
	}
	for _, mode := range filteringModes {
		t.Run("udp_filtering="+mode.name, func(t *testing.T) {
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					tc.run(t, newLab(t, Config{UDPFiltering: mode.f}), mode.f)
				})
			}
		})
	}
}

func TestHairpinnedFlowsAreHeldToTheLimits(t *testing.T) {
	tests := []struct {
		name   string
		limits Limits
		run    func(t *testing.T, l *lab)
	}{
		{"each flow a hairpinned datagram opens takes a token of its sender's new-flow rate", Limits{HostFlowRate: 1, HostFlowBurst: 2},
			func(t *testing.T, l *lab) {
				ext := stunMapped(l, 6000)
				// Out through lanA's new mapping, in through lanB's: two flows.
				l.mustOut(udpPkt(ap(lanA, 5000), ap(wanAddr, ext), "one"), VerdictToLAN)
				r, _ := l.out(udpPkt(ap(lanA, 5001), ap(wanAddr, ext), "two"))
				wantDrop(t, r, DropRateLimited)
			}},
		{"control: a host's new flows within its rate pass", Limits{HostFlowRate: 1, HostFlowBurst: 4},
			func(t *testing.T, l *lab) {
				ext := stunMapped(l, 6000)
				l.mustOut(udpPkt(ap(lanA, 5000), ap(wanAddr, ext), "one"), VerdictToLAN)
				l.mustOut(udpPkt(ap(lanA, 5001), ap(wanAddr, ext), "two"), VerdictToLAN)
			}},
		{"a flow that timed out is opened again only with a new token", Limits{HostFlowRate: 1, HostFlowBurst: 2},
			func(t *testing.T, l *lab) {
				ext := stunMapped(l, 6000)
				l.mustOut(udpPkt(ap(lanA, 5000), ap(wanAddr, ext), "one"), VerdictToLAN)
				l.clock.Advance(DefaultUnrepliedTimeout + time.Second) // the bucket refills: 2 tokens
				l.e.Expire()
				// lanA's outbound flow lives on; the hairpinned one expired.
				l.mustOut(udpPkt(ap(lanA, 5001), ap(remote2, 53), "spend"), VerdictToWAN)
				l.mustOut(udpPkt(ap(lanA, 5002), ap(remote2, 53), "spend"), VerdictToWAN)
				r, _ := l.out(udpPkt(ap(lanA, 5000), ap(wanAddr, ext), "again"))
				wantDrop(t, r, DropRateLimited)
			}},
		{"the hairpinned flow counts against the target's max_flows_per_host", Limits{MaxFlowsPerHost: 1},
			func(t *testing.T, l *lab) {
				ext := stunMapped(l, 6000) // lanB's one flow, answered: not evictable
				r, _ := l.out(udpPkt(ap(lanA, 5000), ap(wanAddr, ext), "one too many"))
				wantDrop(t, r, DropHostQuota)
				if r.Unreachable {
					t.Error("the sender is told with ICMP about a packet already translated")
				}
			}},
		{"a WAN packet forged with the WAN address as its source is held to a WAN source's rate", Limits{ForwardFlowRate: 10, ForwardFlowBurst: 20},
			func(t *testing.T, l *lab) {
				passed := 0
				for i := range 100 {
					if r, _ := l.in(udpPkt(ap(wanAddr, 1024+uint16(i)), ap(wanAddr, 5353), "forged")); r.Verdict == VerdictToLAN {
						passed++
					}
				}
				if passed != 20 {
					t.Errorf("%d forged flows passed, want the burst of 20: only the engine's own hairpinning is exempt", passed)
				}
			}},
		{"a hairpinned flow lives on the unreplied timer until the target answers", Limits{},
			func(t *testing.T, l *lab) {
				ext := stunMapped(l, 6000)
				l.mustOut(udpPkt(ap(lanA, 5000), ap(wanAddr, ext), "hello"), VerdictToLAN)
				before := l.e.Stats().Flows
				l.advance(DefaultUnrepliedTimeout + time.Second)
				if n := l.e.Stats().Flows; n != before-1 {
					t.Errorf("%d flows after the unreplied timeout, want %d (the hairpinned one gone)", n, before-1)
				}
			}},
	}
	for _, mode := range filteringModes {
		t.Run("udp_filtering="+mode.name, func(t *testing.T) {
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					tc.run(t, newLab(t, Config{
						UDPFiltering: mode.f,
						Limits:       tc.limits,
						Forwards:     []Forward{{Proto: ProtoUDP, Ports: PortRange{First: 5353, Last: 5353}, To: lanA}},
					}))
				})
			}
		})
	}
}
