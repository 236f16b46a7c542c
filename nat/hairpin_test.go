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
