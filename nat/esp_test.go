package nat

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// espPkt is a raw ESP packet (IP protocol 50): SPI, sequence number and
// some ciphertext.
func espPkt(src, dst netip.Addr, spi, seq uint32) []byte {
	b := make([]byte, 8, 48)
	binary.BigEndian.PutUint32(b[0:4], spi)
	binary.BigEndian.PutUint32(b[4:8], seq)
	b = append(b, "ciphertext 0123456789abcdefghijklmnop"...)
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoESP, ID: uint16(seq)}, b)
}

func espSPIOf(p *Packet) uint32 { return binary.BigEndian.Uint32(p.L4[0:4]) }

// espOut expects a host's ESP to leave from the WAN address, SPI unchanged.
func (l *lab) espOut(host, remote netip.Addr, spi uint32) {
	l.t.Helper()
	p := l.mustOut(espPkt(host, remote, spi, 1), VerdictToWAN)
	if p.SrcAddr() != wanAddr || p.DstAddr() != remote || espSPIOf(p) != spi {
		l.t.Fatalf("ESP %#x from %v left as %v→%v SPI %#x", spi, host, p.SrcAddr(), p.DstAddr(), espSPIOf(p))
	}
}

// espTestSeq numbers the inbound ESP packets of the tests: every packet
// has a higher sequence number than the ones before it, as on a real SA.
var espTestSeq atomic.Uint32

// espIn expects a remote's ESP to reach host, SPI unchanged. Its sequence
// number is higher than any before it, so a second packet on an SPI
// confirms a tentative binding.
func (l *lab) espIn(remote netip.Addr, spi uint32, host netip.Addr) {
	l.t.Helper()
	p := l.mustIn(espPkt(remote, wanAddr, spi, espTestSeq.Add(1)), VerdictToLAN)
	if p.DstAddr() != host || p.SrcAddr() != remote || espSPIOf(p) != spi {
		l.t.Fatalf("ESP %#x from %v delivered %v→%v SPI %#x, want to %v", spi, remote, p.SrcAddr(), p.DstAddr(), espSPIOf(p), host)
	}
}

// espDrop expects a packet to be dropped for reason.
func (l *lab) espDrop(b []byte, outbound bool, reason DropReason) {
	l.t.Helper()
	var r Result
	if outbound {
		r, _ = l.out(b)
	} else {
		r, _ = l.in(b)
	}
	wantDrop(l.t, r, reason)
}

// espPairSPIs establishes an SA pair by raw ESP: the host sends first, the
// remote answers with two packets (the second confirms the binding).
func (l *lab) espPairSPIs(host, remote netip.Addr, out, in uint32) {
	l.t.Helper()
	l.espOut(host, remote, out)
	l.espIn(remote, in, host)
	l.espIn(remote, in, host)
}

// ikeExchange gives host a live IKE session with remote (one message each way).
func (l *lab) ikeExchange(host, remote netip.Addr, ispi uint64) {
	l.t.Helper()
	l.mustOut(ikePkt(ap(host, 500), ap(remote, 500), ispi, 0), VerdictToWAN)
	if p := l.mustIn(ikePkt(ap(remote, 500), ap(wanAddr, 500), ispi, ispi^0xffff), VerdictToLAN); p.DstAddr() != host {
		l.t.Fatalf("IKE reply delivered to %v, want %v", p.DstAddr(), host)
	}
}

// pairOf finds the snapshot of the pair with the given outbound or inbound SPI.
func (l *lab) pairOf(host netip.Addr, outSPI, inSPI uint32) (ESPPair, bool) {
	for _, pr := range l.e.ESPPairs() {
		if pr.Host == host.As4() && (outSPI != 0 && pr.OutSPI == outSPI || inSPI != 0 && pr.InSPI == inSPI) {
			return pr, true
		}
	}
	return ESPPair{}, false
}

// wantBind checks that an `esp bind` line records exactly this decision.
func wantBind(t *testing.T, logs *logCapture, host, remote netip.Addr, out, in uint32, state, why string) {
	t.Helper()
	for _, e := range logs.entries(t, "esp bind") {
		if e["level"] == "debug" && e["host"] == host.String() && e["remote"] == remote.String() &&
			e["out_spi"] == hex32(out) && e["in_spi"] == hex32(in) && e["state"] == state &&
			strings.Contains(fmt.Sprint(e["why"]), why) {
			return
		}
	}
	t.Errorf("no esp bind line host=%v remote=%v out_spi=%s in_spi=%s state=%s why~%q; have %v",
		host, remote, hex32(out), hex32(in), state, why, logs.entries(t, "esp bind"))
}

func TestESPAssociation(t *testing.T) {
	t.Run("outbound ESP leaves from the WAN address, the first unknown reply is its candidate and the next confirms it", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		l.espOut(lanA, remote1, 0xa1)
		wantBind(t, logs, lanA, remote1, 0xa1, 0, "waiting", "waits for the remote's inbound SPI")
		l.espIn(remote1, 0x1a, lanA)
		wantBind(t, logs, lanA, remote1, 0, 0x1a, "tentative", "a candidate until a later packet confirms it")
		l.espIn(remote1, 0x1a, lanA)
		wantBind(t, logs, lanA, remote1, 0xa1, 0x1a, "established", "answers the waiting outbound SPI")
		for range 3 {
			l.espOut(lanA, remote1, 0xa1)
			l.espIn(remote1, 0x1a, lanA)
		}
		if pr, ok := l.pairOf(lanA, 0xa1, 0); !ok || pr.InSPI != 0x1a || pr.State != "established" || pr.Remote != remote1.As4() {
			t.Errorf("pair %+v (found %v)", pr, ok)
		}
		if n := len(logs.entries(t, "esp bind")); n != 3 {
			t.Errorf("%d esp bind lines for one pair, want 3", n)
		}
	})
	for _, n := range []int{2, 3} {
		for _, withIKE := range []bool{false, true} {
			name := fmt.Sprintf("%d hosts starting together to one remote are served in turn as they retransmit", n)
			if withIKE {
				name += ", with IKE sessions to it"
			}
			t.Run(name, func(t *testing.T) {
				l, logs := newLoggingLab(t, Config{})
				hosts := []netip.Addr{lanA, lanB, lanC}[:n]
				outSPI := func(i int) uint32 { return 0xc0000100 + uint32(i) }
				inSPI := func(i int) uint32 { return 0xd0000100 + uint32(i) }
				if withIKE {
					for i, h := range hosts {
						l.ikeExchange(h, remote1, uint64(0x100+i))
					}
				}
				answered := map[int]bool{}
				heldBack := 0
				for round := 0; round < 10 && len(answered) < n; round++ {
					// Every host without an answer (re)transmits its new SPI;
					// the remote answers each new SPI that reaches it.
					var reached []int
					for i, h := range hosts {
						if answered[i] {
							continue
						}
						r, p := l.out(espPkt(h, remote1, outSPI(i), uint32(round+1)))
						switch {
						case r.Verdict == VerdictToWAN:
							if p.SrcAddr() != wanAddr || espSPIOf(p) != outSPI(i) {
								t.Fatalf("host %v: left from %v with SPI %#x", h, p.SrcAddr(), espSPIOf(p))
							}
							reached = append(reached, i)
						default:
							wantDrop(t, r, DropESPHeldBack)
							heldBack++
						}
					}
					if len(reached) != 1 {
						t.Fatalf("round %d: %d new SPIs reached the remote at once, want exactly 1", round, len(reached))
					}
					for _, i := range reached {
						l.espIn(remote1, inSPI(i), hosts[i])
						l.espIn(remote1, inSPI(i), hosts[i]) // confirms the binding
						answered[i] = true
					}
					l.advance(200 * time.Millisecond)
				}
				if len(answered) != n {
					t.Fatalf("%d of %d hosts answered", len(answered), n)
				}
				if want := n * (n - 1) / 2; heldBack != want || int(l.e.Drops.Get(DropESPHeldBack)) != want {
					t.Errorf("held back %d times (counter %d), want %d", heldBack, l.e.Drops.Get(DropESPHeldBack), want)
				}
				// Every pair now carries traffic both ways to the right host.
				for range 2 {
					for i, h := range hosts {
						l.espOut(h, remote1, outSPI(i))
						l.espIn(remote1, inSPI(i), h)
					}
				}
				for i, h := range hosts {
					wantBind(t, logs, h, remote1, outSPI(i), inSPI(i), "established", "answers the waiting outbound SPI")
				}
				if held := logs.entries(t, "esp held back: another host's new SPI to this remote awaits its reply"); len(held) != heldBack {
					t.Errorf("%d held-back log lines, want %d", len(held), heldBack)
				}
			})
		}
	}
	t.Run("a new SPI to another remote is not held back", func(t *testing.T) {
		l := newLab(t, Config{})
		l.espOut(lanA, remote1, 0xa1)
		l.espOut(lanB, remote2, 0xb1)
		l.espIn(remote2, 0x1b, lanB)
		l.espIn(remote1, 0x1a, lanA)
	})
	t.Run("a wait that expires lets another host have the remote even while the waiting host retransmits", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		l.espOut(lanA, remote1, 0xa1) // never answered in time
		l.espDrop(espPkt(lanB, remote1, 0xb1, 1), true, DropESPHeldBack)
		for range 239 { // lanA's retransmissions keep its reply window open
			l.advance(500 * time.Millisecond)
			l.espOut(lanA, remote1, 0xa1)
		}
		l.espDrop(espPkt(lanB, remote1, 0xb1, 2), true, DropESPHeldBack)
		l.advance(501 * time.Millisecond) // esp_wait is over
		l.espOut(lanB, remote1, 0xb1)
		wantBind(t, logs, lanB, remote1, 0xb1, 0, "waiting", "waits")
		l.espIn(remote1, 0x1b, lanB)
		l.espIn(remote1, 0x1b, lanB)
		// lanA retransmits: it re-arms its wait and gets its answer.
		l.espOut(lanA, remote1, 0xa1)
		l.espIn(remote1, 0x1a, lanA)
		l.espIn(remote1, 0x1b, lanB)
	})
	t.Run("a host whose wait ran out is held back while the host that took over waits", func(t *testing.T) {
		l := newLab(t, Config{})
		l.espOut(lanA, remote1, 0xa1)
		l.advance(2*time.Minute + time.Second)
		l.espOut(lanB, remote1, 0xb1) // takes the remote over
		l.espDrop(espPkt(lanA, remote1, 0xa1, 2), true, DropESPHeldBack)
		l.espIn(remote1, 0x1b, lanB)
		l.espIn(remote1, 0x1b, lanB)
		l.espOut(lanA, remote1, 0xa1) // its turn again
		l.espIn(remote1, 0x1a, lanA)
	})
	t.Run("a squelch that ran out is honoured before the sweep", func(t *testing.T) {
		l := newLab(t, Config{IPsec: IPsecConfig{ESPRetries: 1}})
		l.espOut(lanA, remote1, 0xa1)
		l.advance(2*time.Minute + time.Second)
		l.espOut(lanA, remote1, 0xa1)
		l.advance(2*time.Minute + time.Second)
		l.espDrop(espPkt(lanA, remote1, 0xa1, 3), true, DropESPSquelched)
		l.clock.Advance(30 * time.Second) // no sweep
		l.espOut(lanA, remote1, 0xa1)
		if len(l.e.esp.squelch) != 0 {
			t.Errorf("squelch entries left: %v", l.e.esp.squelch)
		}
	})
	t.Run("unanswered waits are dropped once esp_wait is over twice", func(t *testing.T) {
		l := newLab(t, Config{})
		l.espOut(lanA, remote1, 0xa1)
		l.advance(4*time.Minute + time.Second)
		if prs := l.e.ESPPairs(); len(prs) != 0 {
			t.Errorf("pairs left: %+v", prs)
		}
		// Nothing waits any more: the remote's late answer has no owner.
		l.espDrop(espPkt(remote1, wanAddr, 0x1a, 1), false, DropESPUnbound)
	})
	for _, retries := range []int{0, 2} {
		want := retries
		if want == 0 {
			want = 5
		}
		t.Run(fmt.Sprintf("after %d re-arms the unanswered SPI is squelched for esp_squelch, then allowed again", want), func(t *testing.T) {
			l, logs := newLoggingLab(t, Config{IPsec: IPsecConfig{ESPRetries: retries}})
			l.espOut(lanA, remote1, 0xa1)
			for range want {
				l.advance(2*time.Minute + time.Second)
				l.espOut(lanA, remote1, 0xa1) // re-arms
			}
			l.advance(2*time.Minute + time.Second)
			l.espDrop(espPkt(lanA, remote1, 0xa1, 9), true, DropESPSquelched)
			wantBind(t, logs, lanA, remote1, 0xa1, 0, "waiting", "squelched")
			l.advance(30*time.Second - time.Nanosecond)
			l.espDrop(espPkt(lanA, remote1, 0xa1, 10), true, DropESPSquelched)
			if n := l.e.Drops.Get(DropESPSquelched); n != 2 {
				t.Errorf("esp_squelched counter %d, want 2", n)
			}
			l.advance(time.Nanosecond)
			l.espOut(lanA, remote1, 0xa1)
			l.espIn(remote1, 0x1a, lanA)
		})
	}
	t.Run("a squelched SPI gives the remote to a held-back host", func(t *testing.T) {
		l := newLab(t, Config{IPsec: IPsecConfig{ESPRetries: 1}})
		l.espOut(lanA, remote1, 0xa1)
		l.espDrop(espPkt(lanB, remote1, 0xb1, 1), true, DropESPHeldBack)
		l.advance(2*time.Minute + time.Second)
		l.espOut(lanA, remote1, 0xa1) // its one re-arm
		l.espDrop(espPkt(lanB, remote1, 0xb1, 2), true, DropESPHeldBack)
		l.advance(2*time.Minute + time.Second)
		l.espDrop(espPkt(lanA, remote1, 0xa1, 3), true, DropESPSquelched)
		l.espOut(lanB, remote1, 0xb1)
		l.espIn(remote1, 0x1b, lanB)
	})
	t.Run("SPI 0 is dropped both ways", func(t *testing.T) {
		l := newLab(t, Config{})
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.espDrop(espPkt(lanA, remote1, 0, 1), true, DropESPZeroSPI)
		l.espDrop(espPkt(remote1, wanAddr, 0, 1), false, DropESPZeroSPI)
		if n := l.e.Drops.Get(DropESPZeroSPI); n != 2 {
			t.Errorf("esp_zero_spi counter %d, want 2", n)
		}
		if prs := l.e.ESPPairs(); len(prs) != 1 {
			t.Errorf("SPI 0 changed the pairs: %+v", prs)
		}
	})
	t.Run("ESP shorter than SPI and sequence number is dropped as malformed both ways", func(t *testing.T) {
		l := newLab(t, Config{})
		short := func(src, dst netip.Addr) []byte {
			return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoESP}, []byte{0, 0, 0, 0xa1, 0, 0, 0})
		}
		l.espDrop(short(lanA, remote1), true, DropMalformed)
		l.espDrop(short(remote1, wanAddr), false, DropMalformed)
	})
	t.Run("ESP with a known SPI from another address is dropped as spoofed and nothing is re-bound", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.espOut(lanB, remote2, 0xb1) // remote2 has a waiting entry
		l.espDrop(espPkt(remote2, wanAddr, 0x1a, 1), false, DropESPSpoofed)
		l.espDrop(espPkt(router, wanAddr, 0x1a, 2), false, DropESPSpoofed)
		if n := l.e.Drops.Get(DropESPSpoofed); n != 2 {
			t.Errorf("esp_spoofed counter %d, want 2", n)
		}
		if pr, ok := l.pairOf(lanB, 0xb1, 0); !ok || pr.State != "waiting" || pr.InSPI != 0 {
			t.Errorf("the spoof changed lanB's waiting pair: %+v", pr)
		}
		if pr, ok := l.pairOf(lanA, 0xa1, 0); !ok || pr.InSPI != 0x1a || pr.Remote != remote1.As4() {
			t.Errorf("the spoof changed lanA's pair: %+v", pr)
		}
		if n := len(logs.entries(t, "esp with a bound SPI from another address: dropped")); n != 2 {
			t.Errorf("%d spoof log lines, want 2", n)
		}
		l.espIn(remote1, 0x1a, lanA)
		l.espIn(remote2, 0x2b, lanB)
	})
	t.Run("an established pair idles out after esp_timeout, refreshed by traffic either way", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.advance(34 * time.Minute)
		l.espIn(remote1, 0x1a, lanA)
		l.advance(34 * time.Minute)
		l.espOut(lanA, remote1, 0xa1)
		l.advance(35*time.Minute - time.Nanosecond)
		if _, ok := l.pairOf(lanA, 0xa1, 0); !ok {
			t.Fatal("pair gone before esp_timeout")
		}
		l.advance(time.Nanosecond)
		if prs := l.e.ESPPairs(); len(prs) != 0 {
			t.Fatalf("pairs left after esp_timeout: %+v", prs)
		}
		if n := len(logs.entries(t, "esp pair expired")); n != 1 {
			t.Errorf("%d expiry log lines, want 1", n)
		}
		l.espDrop(espPkt(remote1, wanAddr, 0x1a, 5), false, DropESPUnbound)
	})
	t.Run("a configured esp_timeout is honoured", func(t *testing.T) {
		l := newLab(t, Config{IPsec: IPsecConfig{ESPTimeout: 3 * time.Minute}})
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.advance(3 * time.Minute)
		if prs := l.e.ESPPairs(); len(prs) != 0 {
			t.Fatalf("pairs left after esp_timeout: %+v", prs)
		}
	})
	t.Run("max_esp bounds the pairs and refuses new SPIs with unreachable", func(t *testing.T) {
		l := newLab(t, Config{IPsec: IPsecConfig{MaxESP: 2}})
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.espPairSPIs(lanA, remote2, 0xa2, 0x2a)
		r, _ := l.out(espPkt(lanB, router, 0xb3, 1))
		wantDrop(t, r, DropTableFull)
		if !r.Unreachable {
			t.Error("Unreachable not set")
		}
		l.espOut(lanA, remote1, 0xa1)
		l.espIn(remote2, 0x2a, lanA)
	})
	t.Run("a fragmented ESP packet is associated by its first fragment, tails follow", func(t *testing.T) {
		l := newLab(t, Config{})
		big := func(src, dst netip.Addr, spi uint32) []byte {
			b := make([]byte, 8, 8+len(bigPayload))
			binary.BigEndian.PutUint32(b, spi)
			binary.BigEndian.PutUint32(b[4:], 1)
			return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoESP, ID: 0x5151}, append(b, bigPayload...))
		}
		first, tail := fragmentAt(big(lanA, remote1, 0xa1), 64)
		if p := l.mustOut(first, VerdictToWAN); p.SrcAddr() != wanAddr {
			t.Errorf("first fragment left from %v", p.SrcAddr())
		}
		if p := l.mustOut(tail, VerdictToWAN); p.SrcAddr() != wanAddr {
			t.Errorf("tail left from %v", p.SrcAddr())
		}
		first, tail = fragmentAt(big(remote1, wanAddr, 0x1a), 64)
		if p := l.mustIn(first, VerdictToLAN); p.DstAddr() != lanA {
			t.Errorf("first fragment delivered to %v", p.DstAddr())
		}
		if p := l.mustIn(tail, VerdictToLAN); p.DstAddr() != lanA {
			t.Errorf("tail delivered to %v", p.DstAddr())
		}
	})
}

func TestESPRekeyRemoteFirst(t *testing.T) {
	t.Run("with IKE knowledge the remote's new SPI is bound at once and the host's next SPI completes the pair", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		l.ikeExchange(lanA, remote1, 0x1111)
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.advance(20 * time.Minute)
		l.ikeExchange(lanA, remote1, 0x1111) // the rekey exchange
		l.espIn(remote1, 0x1b, lanA)         // remote sends on its new SPI first
		wantBind(t, logs, lanA, remote1, 0, 0x1b, "tentative", "only LAN host with a live IKE session")
		l.espIn(remote1, 0x1b, lanA)
		wantBind(t, logs, lanA, remote1, 0, 0x1b, "inbound-only", "confirmed by a later packet")
		l.espOut(lanA, remote1, 0xa2)
		wantBind(t, logs, lanA, remote1, 0xa2, 0x1b, "established", "completes the pair")
		if pr, ok := l.pairOf(lanA, 0xa2, 0); !ok || pr.InSPI != 0x1b || pr.State != "established" {
			t.Errorf("new pair %+v", pr)
		}
		// Old and new SAs both work until the old one idles out.
		l.espIn(remote1, 0x1a, lanA)
		l.espIn(remote1, 0x1b, lanA)
		l.espOut(lanA, remote1, 0xa1)
	})
	t.Run("among several IKE hosts the one with the most recent exchange gets the new SPI", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		l.ikeExchange(lanA, remote1, 0x1111)
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.advance(time.Second)
		l.ikeExchange(lanB, remote1, 0x2222)
		l.espPairSPIs(lanB, remote1, 0xb1, 0x1b)
		l.advance(10 * time.Minute)
		l.ikeExchange(lanA, remote1, 0x1111) // lanA rekeys
		l.advance(time.Second)
		l.espIn(remote1, 0x2a, lanA)
		wantBind(t, logs, lanA, remote1, 0, 0x2a, "tentative", "most recent IKE exchange")
		l.espIn(remote1, 0x2a, lanA)
		wantBind(t, logs, lanA, remote1, 0, 0x2a, "inbound-only", "confirmed by a later packet")
		l.espOut(lanA, remote1, 0xa2)
		l.espIn(remote1, 0x1b, lanB)
	})
	t.Run("among several IKE hosts none gets a new SPI when the last exchange is older than esp_wait", func(t *testing.T) {
		l := newLab(t, Config{})
		l.ikeExchange(lanA, remote1, 0x1111)
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.ikeExchange(lanB, remote1, 0x2222)
		l.espPairSPIs(lanB, remote1, 0xb1, 0x1b)
		l.advance(3 * time.Minute)
		l.espDrop(espPkt(remote1, wanAddr, 0x2b, 1), false, DropESPUnbound)
		l.espOut(lanB, remote1, 0xb2) // lanB's new SPI takes it
		l.espIn(remote1, 0x2b, lanB)
	})
	t.Run("without IKE knowledge and two hosts with ESP the new SPI waits for the host's new outbound SPI", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.espPairSPIs(lanB, remote1, 0xb1, 0x1b)
		// Past esp_wait: lanB's answered claim no longer lingers.
		l.advance(3 * time.Minute)
		for seq := uint32(1); seq <= 3; seq++ { // the remote keeps sending
			l.espDrop(espPkt(remote1, wanAddr, 0x2a, seq), false, DropESPUnbound)
		}
		if n := len(l.e.esp.pending[remote1.As4()]); n != 1 {
			t.Errorf("%d pending inbound SPIs, want 1 (no duplicates)", n)
		}
		l.espOut(lanA, remote1, 0xa2)
		wantBind(t, logs, lanA, remote1, 0xa2, 0x2a, "established", "unowned inbound SPI")
		l.espIn(remote1, 0x2a, lanA)
		l.espIn(remote1, 0x1b, lanB)
		if n := l.e.Drops.Get(DropESPUnbound); n != 3 {
			t.Errorf("esp_unbound counter %d, want 3", n)
		}
	})
	t.Run("without IKE knowledge the one host with ESP to the remote gets its new SPI at once", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.advance(10 * time.Minute)
		l.espIn(remote1, 0x2a, lanA)
		wantBind(t, logs, lanA, remote1, 0, 0x2a, "tentative", "only LAN host with ESP to the remote")
		l.espIn(remote1, 0x2a, lanA)
		wantBind(t, logs, lanA, remote1, 0, 0x2a, "inbound-only", "confirmed by a later packet")
		l.espOut(lanA, remote1, 0xa2)
		wantBind(t, logs, lanA, remote1, 0xa2, 0x2a, "established", "completes the pair")
	})
	t.Run("a second new SPI from the remote joins the first as a candidate and the one confirmed is completed", func(t *testing.T) {
		// (It used to replace the first at once: then one forged packet
		// could unbind the remote's real new SPI.)
		l, logs := newLoggingLab(t, Config{})
		l.ikeExchange(lanA, remote1, 0x1111)
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.espIn(remote1, 0x2a, lanA)
		l.espIn(remote1, 0x3a, lanA)
		if pr, ok := l.pairOf(lanA, 0, 0x2a); !ok || pr.State != "tentative" {
			t.Errorf("the first candidate: %+v (found %v)", pr, ok)
		}
		l.espIn(remote1, 0x3a, lanA)
		l.espOut(lanA, remote1, 0xa3)
		wantBind(t, logs, lanA, remote1, 0xa3, 0x3a, "established", "completes the pair")
		l.espIn(remote1, 0x3a, lanA)
		l.espIn(remote1, 0x1a, lanA)
	})
	t.Run("an inbound-only pair the host never completes idles out after esp_timeout", func(t *testing.T) {
		l := newLab(t, Config{})
		l.ikeExchange(lanA, remote1, 0x1111)
		l.espIn(remote1, 0x1a, lanA)
		l.espIn(remote1, 0x1a, lanA)
		if pr, ok := l.pairOf(lanA, 0, 0x1a); !ok || pr.State != "inbound-only" {
			t.Fatalf("pair %+v", pr)
		}
		l.advance(35 * time.Minute)
		if prs := l.e.ESPPairs(); len(prs) != 0 || len(l.e.esp.inOnly) != 0 {
			t.Errorf("pairs left: %+v, inbound-only index %d", prs, len(l.e.esp.inOnly))
		}
	})
	t.Run("an inbound-only pair alone does not make its host the one host with ESP to the remote; its new outbound SPI does", func(t *testing.T) {
		// Two forged packets can make an inbound-only pair, so only pairs
		// with the host's own outbound SPI count as its ESP to the remote.
		l := newLab(t, Config{IPsec: IPsecConfig{IKETimeout: time.Minute}})
		l.ikeExchange(lanA, remote1, 0x1111)
		l.espIn(remote1, 0x1a, lanA)
		l.espIn(remote1, 0x1a, lanA)
		l.advance(2 * time.Minute) // IKE knowledge gone, the pair is not
		l.espDrop(espPkt(remote1, wanAddr, 0x2a, 1), false, DropESPUnbound)
		l.espOut(lanA, remote1, 0xa1) // completes the inbound-only pair
		l.espIn(remote1, 0x2a, lanA)
		l.advance(3 * time.Minute)   // lanA's answered claim no longer lingers
		l.espIn(remote1, 0x3a, lanA) // lanA is the one host with ESP to it
	})
	t.Run("unowned inbound SPIs are remembered for at most max_esp remotes", func(t *testing.T) {
		l := newLab(t, Config{IPsec: IPsecConfig{MaxESP: 16}})
		for i := range 200 { // ESP from anywhere, e.g. spoofed sources
			from := netip.AddrFrom4([4]byte{198, 19, byte(i / 250), byte(1 + i%250)})
			for spi := uint32(1); spi <= 3; spi++ {
				l.espDrop(espPkt(from, wanAddr, spi, 1), false, DropESPUnbound)
			}
		}
		total := 0
		for _, list := range l.e.esp.pending {
			total += len(list)
		}
		if len(l.e.esp.pending) > 16 || total > 16*espMaxPending {
			t.Errorf("%d pending SPIs from %d remotes remembered, max_esp 16", total, len(l.e.esp.pending))
		}
	})
	t.Run("a remembered inbound SPI is forgotten after esp_wait", func(t *testing.T) {
		l := newLab(t, Config{})
		l.espDrop(espPkt(remote1, wanAddr, 0x1a, 1), false, DropESPUnbound)
		l.advance(2*time.Minute + time.Second)
		l.espOut(lanA, remote1, 0xa1) // waits instead of taking the stale SPI
		if pr, ok := l.pairOf(lanA, 0xa1, 0); !ok || pr.State != "waiting" {
			t.Errorf("pair %+v", pr)
		}
		if len(l.e.esp.pending) != 0 {
			t.Errorf("pending SPIs left: %v", l.e.esp.pending)
		}
	})
}

func TestESPForward(t *testing.T) {
	fwd := Config{Forwards: []Forward{{Proto: ProtoESP, To: ipsecSrv}}}
	t.Run("unclaimed inbound SPIs go to the forward host and its ESP leaves masqueraded", func(t *testing.T) {
		l := newLab(t, fwd)
		l.espIn(remote2, 0x5001, ipsecSrv)
		l.espIn(remote1, 0x5002, ipsecSrv)
		l.espOut(ipsecSrv, remote2, 0x6001)
		l.espOut(ipsecSrv, remote1, 0x6002)
		l.espIn(remote2, 0x5001, ipsecSrv)
	})
	t.Run("another LAN host's new SPI still gets its reply", func(t *testing.T) {
		l, logs := newLoggingLab(t, fwd)
		l.espIn(remote2, 0x5001, ipsecSrv)
		l.espOut(lanA, remote1, 0xa1)
		l.espIn(remote1, 0x1a, lanA)
		l.espIn(remote1, 0x1a, lanA)
		wantBind(t, logs, lanA, remote1, 0xa1, 0x1a, "established", "answers the waiting outbound SPI")
		l.espOut(lanA, remote1, 0xa1)
		l.espIn(remote1, 0x1a, lanA)
		// Other new SPIs from that remote are the server's again.
		l.espIn(remote1, 0x5003, ipsecSrv)
		l.espIn(remote2, 0x5001, ipsecSrv)
	})
	t.Run("a known SPI from another address is still a spoof", func(t *testing.T) {
		l := newLab(t, fwd)
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		l.espDrop(espPkt(remote2, wanAddr, 0x1a, 1), false, DropESPSpoofed)
	})
}
