package nat

import (
	"net/netip"
	"testing"
	"time"
)

// espRetransmitTick is how often the scripted LAN hosts below retransmit an
// unanswered new SPI (as the integration harness's hosts do).
const espRetransmitTick = 150 * time.Millisecond

// espStart plays LAN hosts starting raw ESP to one remote at the same
// instant: every tick each host without a reply (re)sends on its new SPI,
// the remote answers every packet that reaches it once on the host's
// inbound SPI, and a host stops sending once answered. It returns when
// each host got its reply, or fails after limit.
func (l *lab) espStart(remote netip.Addr, hosts []netip.Addr, out, in func(i int) uint32, limit time.Duration) (answeredAt []time.Duration) {
	l.t.Helper()
	answeredAt = make([]time.Duration, len(hosts))
	answered := 0
	for elapsed := time.Duration(0); answered < len(hosts); elapsed += espRetransmitTick {
		if elapsed > limit {
			for i, h := range hosts {
				if answeredAt[i] == 0 {
					l.t.Errorf("%v: no reply to its new SPI %#x within %v", h, out(i), limit)
				}
			}
			l.t.FailNow()
		}
		for i, h := range hosts {
			if answeredAt[i] != 0 {
				continue
			}
			r, _ := l.out(espPkt(h, remote, out(i), uint32(elapsed/espRetransmitTick)+1))
			if r.Verdict != VerdictToWAN {
				wantDrop(l.t, r, DropESPHeldBack)
				continue
			}
			r, p := l.in(espPkt(remote, wanAddr, in(i), espTestSeq.Add(1)))
			if r.Verdict != VerdictToLAN || p.DstAddr() != h {
				l.t.Fatalf("%v's reply on SPI %#x: verdict %s, delivered to %v", h, in(i), verdictName(r.Verdict), p.DstAddr())
			}
			answeredAt[i] = elapsed + time.Nanosecond // not zero
			answered++
		}
		l.advance(espRetransmitTick)
	}
	return answeredAt
}

func TestESPReplyWindow(t *testing.T) {
	outSPI := func(i int) uint32 { return 0xc0000100 + uint32(i) }
	inSPI := func(i int) uint32 { return 0xd0000100 + uint32(i) }
	hosts := []netip.Addr{lanA, lanB, lanC}

	t.Run("three hosts starting SAs to one gateway in the same second, each answered once and then quiet, all get their own replies, one reply window after another", func(t *testing.T) {
		l := newLab(t, Config{})
		answeredAt := l.espStart(remote1, hosts, outSPI, inSPI, 5*time.Second)
		// The first is answered at once, each other host within a reply
		// window (plus a retransmission) of the host before it.
		if max := time.Duration(len(hosts)-1) * (espReplyWindow + espRetransmitTick); answeredAt[1] > max || answeredAt[2] > max {
			t.Errorf("answered after %v, want all within %v", answeredAt, max)
		}
		if l.e.Drops.Get(DropESPHeldBack) == 0 {
			t.Error("nobody was held back: the starts were not serialised")
		}
		// Each SA's next packets confirm it, and traffic goes both ways.
		// (Until then a host sending again asks for a reply again: it
		// waits for the last starter's reply window to close.)
		l.advance(espReplyWindow)
		for range 2 {
			for i, h := range hosts {
				l.espOut(h, remote1, outSPI(i))
				l.espIn(remote1, inSPI(i), h)
			}
		}
		for i, h := range hosts {
			if pr, ok := l.pairOf(h, outSPI(i), 0); !ok || pr.InSPI != inSPI(i) || pr.State != "established" {
				t.Errorf("%v's pair %+v (found %v)", h, pr, ok)
			}
		}
	})
	t.Run("a host that keeps sending on its unanswered new SPI keeps the remote, and releases it a reply window after its last packet", func(t *testing.T) {
		l := newLab(t, Config{})
		l.espOut(lanA, remote1, 0xa1)
		for range 20 { // lanA retransmits every 500 ms for 10 s
			l.advance(500 * time.Millisecond)
			l.espDrop(espPkt(lanB, remote1, 0xb1, 1), true, DropESPHeldBack)
			l.espOut(lanA, remote1, 0xa1)
		}
		l.advance(espReplyWindow)
		l.espDrop(espPkt(lanB, remote1, 0xb1, 2), true, DropESPHeldBack)
		l.advance(time.Nanosecond)
		l.espOut(lanB, remote1, 0xb1)
		l.espIn(remote1, 0x1b, lanB)
		// lanA's late answer would now be lanB's: lanA is held back
		// while lanB's reply window is open, then has its turn.
		l.espDrop(espPkt(lanA, remote1, 0xa1, 30), true, DropESPHeldBack)
		l.advance(espReplyWindow + time.Nanosecond)
		l.espOut(lanA, remote1, 0xa1)
		l.espIn(remote1, 0x1a, lanA)
		l.espIn(remote1, 0x1a, lanA)
		l.espIn(remote1, 0x1b, lanB)
	})
	t.Run("after the hosts' reply windows closed, the gateway's new SPI for a host's rekey reaches that host alone", func(t *testing.T) {
		// The integration scenario: lanA, lanB, lanC each answered once;
		// then the gateway rekeys lanA first and answers lanA's old SPI on
		// its new inbound SPI, before lanA switches to its new outbound SPI.
		l := newLab(t, Config{})
		l.espStart(remote1, hosts, outSPI, inSPI, 5*time.Second)
		l.advance(espReplyWindow + time.Nanosecond)
		const newIn, newOut = 0xd0000200, 0xc0000200
		r, p := l.in(espPkt(remote1, wanAddr, newIn, 1)) // the gateway's notice on the new SA
		if r.Verdict == VerdictToLAN && p.DstAddr() != lanA {
			t.Fatalf("the gateway's new SPI for lanA delivered to %v", p.DstAddr())
		}
		for range 2 {
			l.espOut(lanA, remote1, outSPI(0))
			l.espIn(remote1, newIn, lanA)
		}
		l.espOut(lanA, remote1, newOut)
		l.espIn(remote1, newIn, lanA)
		l.advance(espReplyWindow + time.Nanosecond) // lanA's new SPI asked for a reply too
		for i, h := range hosts[1:] {
			l.espOut(h, remote1, outSPI(i+1))
			l.espIn(remote1, inSPI(i+1), h)
		}
		if host, _ := l.inboundHost(remote1, newIn); host != lanA {
			t.Errorf("the new inbound SPI is bound to %v, want lanA", host)
		}
	})
}
