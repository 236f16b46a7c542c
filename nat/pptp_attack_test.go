package nat

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Attacks on PPTP masquerading. The attacker on the WAN forges any source
// address but does not see the traffic; a LAN host may misbehave. Each test
// shows the attack failing and, as its control, the genuine exchange it
// imitates still working.

// seedCallIDs makes the masqueraded Call IDs of an engine reproducible.
func seedCallIDs(e *Engine, seed uint64) {
	var s [32]byte
	for i := range 8 {
		s[i] = byte(seed >> (8 * i))
	}
	e.pptp.rng = rand.NewChaCha8(s)
}

// setUpCall opens a call from the client with Call ID orig and answers it
// from the server with Call ID peer; it returns the masqueraded Call ID.
func (c *pptpConnLab) setUpCall(orig, peer uint16) uint16 {
	c.l.t.Helper()
	masq := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, orig, 0))), 12)
	if masq == 0 {
		c.l.t.Fatalf("call %d refused", orig)
	}
	if p := c.fromServer(pptpMsg(PPTPOutgoingCallReply, peer, masq)); be16(payloadOf(p), 14) != orig {
		c.l.t.Fatalf("Outgoing-Call-Reply arrived with Peer's Call ID %#x, want %#x", be16(payloadOf(p), 14), orig)
	}
	return masq
}

// wantCall checks that the client's call is set up with the server's Call
// ID and that the server's GRE reaches the client.
func (s *pptpLab) wantCall(client netip.Addr, orig, masq, peer uint16) {
	s.t.Helper()
	call, ok := s.call(client, orig)
	if !ok || call.State != "established" || call.PeerCallID != peer || call.MasqCallID != masq {
		s.t.Fatalf("call %d of %v: %+v (found %v), want established with server Call ID %#x", orig, client, call, ok, peer)
	}
	p := s.mustIn(grePkt(call.Server.Addr(), wanAddr, masq, []byte("ppp")), VerdictToLAN)
	if p.DstAddr() != client || greHeader(p.L4).callID() != orig {
		s.t.Fatalf("server GRE went to %v with Call ID %d", p.DstAddr(), greHeader(p.L4).callID())
	}
}

func TestPPTPAttackForgedSYN(t *testing.T) {
	for _, tc := range []struct {
		name  string
		forge func(s *pptpLab, c *pptpConnLab)
	}{
		{"nothing forged (control)", func(s *pptpLab, c *pptpConnLab) {}},
		{"the server's SYN-ACK retransmitted (control)", func(s *pptpLab, c *pptpConnLab) {
			s.in(tcpSeqAckPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagSyn|header.TCPFlagAck, c.sseq-1, c.cseq, nil))
		}},
		{"a forged SYN from the server's address behind its stream", func(s *pptpLab, c *pptpConnLab) {
			s.in(tcpSeqPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagSyn, c.sseq-5000, nil))
		}},
		{"a forged SYN-ACK from the server's address ahead of its stream", func(s *pptpLab, c *pptpConnLab) {
			s.in(tcpSeqAckPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagSyn|header.TCPFlagAck, c.sseq+100, c.cseq, nil))
		}},
		{"a forged SYN carrying a message", func(s *pptpLab, c *pptpConnLab) {
			s.in(tcpSeqPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagSyn, c.sseq-1000, pptpMsg(PPTPStopControlRequest, 0, 0)))
		}},
		{"a SYN on the client's side of an established connection", func(s *pptpLab, c *pptpConnLab) {
			s.out(tcpSeqPkt(c.client, c.server, header.TCPFlagSyn, c.cseq+77777, nil))
		}},
	} {
		t.Run("after "+tc.name+" the server's Outgoing-Call-Reply gets through and the call is set up", func(t *testing.T) {
			s := newPPTPLab(t, Config{})
			c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
			c.fromClient(pptpMsg(PPTPStartControlRequest, 0, 0))
			c.fromServer(pptpMsg(PPTPStartControlReply, 0, 0))
			masq := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 1, 0))), 12)
			tc.forge(s, c)
			// The reply, and a retransmission of it, reach the client.
			ocrp := pptpMsg(PPTPOutgoingCallReply, 0x77, masq)
			for range 2 {
				r, p := s.in(tcpSeqPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagAck|header.TCPFlagPsh, c.sseq, ocrp))
				if r.Verdict != VerdictToLAN {
					t.Fatalf("Outgoing-Call-Reply: verdict %s reason %v", verdictName(r.Verdict), r.Reason)
				}
				if got := be16(payloadOf(p), 14); got != 1 {
					t.Fatalf("Outgoing-Call-Reply arrived with Peer's Call ID %#x, want 1", got)
				}
			}
			c.sseq += uint32(len(ocrp))
			s.wantCall(lanA, 1, masq, 0x77)
			// And the client's next call is parsed where its stream is.
			m2 := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 2, 0))), 12)
			if call, ok := s.call(lanA, 2); !ok || m2 != call.MasqCallID || m2 == 0 {
				t.Errorf("second call: wire %#x, %+v", m2, call)
			}
		})
	}
	t.Run("a forged SYN-ACK that does not acknowledge the client's SYN does not synchronise the server's side", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		client, server := ap(lanA, 40000), ap(remote1, PortPPTP)
		c := &pptpConnLab{l: s, client: client, server: server, cseq: 1000, sseq: 900000}
		c.ext = s.mustOut(tcpSeqPkt(client, server, header.TCPFlagSyn, c.cseq-1, nil), VerdictToWAN).SrcPort
		// The forger does not know the client's initial sequence number.
		s.in(tcpSeqAckPkt(server, ap(wanAddr, c.ext), header.TCPFlagSyn|header.TCPFlagAck, 5, 0x12345678, nil))
		s.mustIn(tcpSeqAckPkt(server, ap(wanAddr, c.ext), header.TCPFlagSyn|header.TCPFlagAck, c.sseq-1, c.cseq, nil), VerdictToLAN)
		s.mustOut(tcpSeqPkt(client, server, header.TCPFlagAck, c.cseq, nil), VerdictToWAN)
		masq := c.setUpCall(1, 0x77)
		s.wantCall(lanA, 1, masq, 0x77)
	})
}

func TestPPTPAttackForgedClose(t *testing.T) {
	const grace = 30 * time.Second
	for _, tc := range []struct {
		name  string
		forge func(s *pptpLab, c *pptpConnLab)
	}{
		// Sequence numbers far outside the window: the TCP layer drops
		// them, and today's tcp.go passes them to control, which must
		// not act on them either.
		{"a forged RST from the server's address", func(s *pptpLab, c *pptpConnLab) {
			s.in(tcpSeqPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagRst, c.sseq+0x40000000, nil))
		}},
		{"a forged RST-ACK from the server's address", func(s *pptpLab, c *pptpConnLab) {
			s.in(tcpSeqPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagRst|header.TCPFlagAck, c.sseq+0x40000000, nil))
		}},
		{"a forged FIN from the server's address after the client's FIN", func(s *pptpLab, c *pptpConnLab) {
			s.out(tcpSeqPkt(c.client, c.server, header.TCPFlagFin|header.TCPFlagAck, c.cseq, nil))
			s.in(tcpSeqPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagFin|header.TCPFlagAck, c.sseq+0x40000000, nil))
		}},
	} {
		t.Run(tc.name+" ends no call", func(t *testing.T) {
			s := newPPTPLab(t, Config{})
			c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
			masq := c.setUpCall(1, 0x77)
			tc.forge(s, c)
			s.advance(grace + time.Second)
			s.wantCall(lanA, 1, masq, 0x77)
		})
	}
	t.Run("an RST passed to control releases nothing: closing is the TCP layer's decision", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		masq := c.setUpCall(1, 0x77)
		rec := c.record()
		for _, dir := range []int{fromServer, fromClient} {
			src, dst := c.server, ap(wanAddr, c.ext)
			if dir == fromClient {
				src, dst = c.client, c.server
			}
			for _, flags := range []header.TCPFlags{header.TCPFlagRst, header.TCPFlagRst | header.TCPFlagAck, header.TCPFlagFin | header.TCPFlagAck} {
				p := mustParse(t, tcpSeqPkt(src, dst, flags, c.sseq, nil))
				if r := s.e.pptp.control(rec, p, dir, s.e.now()); r != DropNone {
					t.Errorf("control dropped %v: %v", flags, r)
				}
			}
		}
		s.advance(grace + time.Second)
		s.wantCall(lanA, 1, masq, 0x77)
	})
	t.Run("the TCP layer's closeConn still ends the calls after the grace time (control)", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		masq := c.setUpCall(1, 0x77)
		s.e.pptp.closeConn(c.record(), "control connection reset", s.e.now())
		s.advance(grace + time.Second)
		r, _ := s.in(grePkt(remote1, wanAddr, masq, nil))
		wantDrop(t, r, DropGREUnknownCall)
	})
}

func TestPPTPAttackCallIDs(t *testing.T) {
	t.Run("1000 Call IDs handed out to one server are unique, never 0, not a sequence and spread over the space", func(t *testing.T) {
		s := newPPTPLab(t, Config{Limits: Limits{MaxCallsPerHost: 2000}})
		seedCallIDs(s.e, 1)
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		const n = 1000
		ids := make([]uint16, 0, n)
		seen := map[uint16]bool{}
		var buckets [16]int
		for orig := range uint16(n) {
			if orig%100 == 0 {
				c.fromServer(nil) // the server acknowledges, or its window closes
			}
			m := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, orig+1, 0))), 12)
			if m == 0 || seen[m] {
				t.Fatalf("call %d got Call ID %d (seen before: %v)", orig+1, m, seen[m])
			}
			seen[m] = true
			ids = append(ids, m)
			buckets[m>>12]++
		}
		for i := 2; i < n; i++ {
			if d1, d2 := ids[i-1]-ids[i-2], ids[i]-ids[i-1]; d1 == d2 {
				t.Fatalf("Call IDs %d, %d, %d step by %d twice: the next one is guessable", ids[i-2], ids[i-1], ids[i], d1)
			}
		}
		// 62.5 expected per sixteenth of the space.
		for b, k := range buckets {
			if k < 25 || k > 110 {
				t.Errorf("%d of %d Call IDs in [%#x, %#x]: not spread over the space", k, n, b<<12, b<<12|0xfff)
			}
		}
	})
	t.Run("an attacker calling his own server cannot predict the next user's Call ID", func(t *testing.T) {
		hits := 0
		for seed := range uint64(50) {
			s := newPPTPLab(t, Config{})
			seedCallIDs(s.e, seed+100)
			attacker := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
			victim := s.open(ap(lanB, 40000), ap(remote1, PortPPTP))
			mine := be16(payloadOf(attacker.fromClient(pptpMsg(PPTPOutgoingCallRequest, 1, 0))), 12)
			theirs := be16(payloadOf(victim.fromClient(pptpMsg(PPTPOutgoingCallRequest, 1, 0))), 12)
			if d := theirs - mine; d < 16 || d > 0xfff0 {
				hits++
			}
		}
		// A guess within 16 either way hits 32 in 65535 at random.
		if hits > 2 {
			t.Errorf("the next Call ID was within 16 of the attacker's %d times in 50", hits)
		}
	})
	t.Run("with a server's Call IDs nearly all taken the free ones are found, then the call is refused", func(t *testing.T) {
		s := newPPTPLab(t, Config{PPTP: PPTPConfig{MaxCalls: 70000}})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		// Another client's calls hold every ID but five.
		free := map[uint16]bool{1: true, 0x4000: true, 0x8001: true, 0xfffe: true, 0xffff: true}
		other := &pptpConn{key: pptpConnKey{endpoint{lanB.As4(), 1}, endpoint{remote1.As4(), PortPPTP}}}
		for id := 1; id <= 0xffff; id++ {
			if !free[uint16(id)] {
				s.e.pptp.calls[pptpCallKey{remote1.As4(), uint16(id)}] = &pptpCall{conn: other, server: remote1.As4(), masq: uint16(id), releaseAt: 1}
				s.e.pptp.perServer[remote1.As4()]++
			}
		}
		for orig := range uint16(5) {
			m := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, orig+1, 0))), 12)
			if !free[m] {
				t.Fatalf("call %d got Call ID %#x, which is taken or was handed out already", orig+1, m)
			}
			delete(free, m)
		}
		before := s.e.Limits.Refused(LimitCalls)
		if m := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 6, 0))), 12); m != 0 {
			t.Errorf("a sixth call got Call ID %#x with none free", m)
		}
		if got := s.e.Limits.Refused(LimitCalls) - before; got != 1 {
			t.Errorf("max_calls refusals counted %d, want 1", got)
		}
	})
}

func TestPPTPAttackCallQuota(t *testing.T) {
	t.Run("a LAN host holding its share of calls leaves room for another host", func(t *testing.T) {
		s := newPPTPLab(t, Config{Limits: Limits{MaxCallsPerHost: 3}})
		a := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		a2 := s.open(ap(lanA, 40001), ap(remote2, PortPPTP))
		for orig := range uint16(3) {
			if m := be16(payloadOf(a.fromClient(pptpMsg(PPTPOutgoingCallRequest, orig+1, 0))), 12); m == 0 {
				t.Fatalf("call %d within the quota refused", orig+1)
			}
		}
		// Over its share, on any connection: the server gets Call ID 0,
		// as when the router is out of calls, and the refusal is counted.
		if m := be16(payloadOf(a.fromClient(pptpMsg(PPTPOutgoingCallRequest, 4, 0))), 12); m != 0 {
			t.Errorf("a fourth call of the host got Call ID %#x", m)
		}
		if m := be16(payloadOf(a2.fromClient(pptpMsg(PPTPOutgoingCallRequest, 5, 0))), 12); m != 0 {
			t.Errorf("a fourth call of the host on another connection got Call ID %#x", m)
		}
		if got := s.e.Limits.Refused(LimitCallsPerHost); got != 2 {
			t.Errorf("max_calls_per_host refusals %d, want 2", got)
		}
		if _, ok := s.call(lanA, 4); ok {
			t.Error("the refused call is listed")
		}
		b := s.open(ap(lanB, 40000), ap(remote1, PortPPTP))
		masq := b.setUpCall(1, 0x99)
		s.wantCall(lanB, 1, masq, 0x99)
	})
	t.Run("a released call gives its unit of the quota back", func(t *testing.T) {
		s := newPPTPLab(t, Config{Limits: Limits{MaxCallsPerHost: 1}})
		a := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		a.setUpCall(1, 0x77)
		a.fromClient(pptpMsg(PPTPCallClearRequest, 1, 0))
		// Ending, not released: the unit is still held.
		if m := be16(payloadOf(a.fromClient(pptpMsg(PPTPOutgoingCallRequest, 2, 0))), 12); m != 0 {
			t.Errorf("a call during the grace time got Call ID %#x", m)
		}
		s.advance(31 * time.Second)
		masq := a.setUpCall(3, 0x78)
		s.wantCall(lanA, 3, masq, 0x78)
	})
	t.Run("pptp.max_calls bounds all hosts together and counts its refusals", func(t *testing.T) {
		s := newPPTPLab(t, Config{PPTP: PPTPConfig{MaxCalls: 2}, Limits: Limits{MaxCallsPerHost: 2}})
		a := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		b := s.open(ap(lanB, 40000), ap(remote1, PortPPTP))
		a.setUpCall(1, 0x77)
		b.setUpCall(1, 0x78)
		if m := be16(payloadOf(b.fromClient(pptpMsg(PPTPOutgoingCallRequest, 2, 0))), 12); m != 0 {
			t.Errorf("a third call got Call ID %#x", m)
		}
		if s.e.Limits.Refused(LimitCalls) != 1 || s.e.Limits.Refused(LimitCallsPerHost) != 0 {
			t.Errorf("refusals: max_calls %d, max_calls_per_host %d; want 1, 0",
				s.e.Limits.Refused(LimitCalls), s.e.Limits.Refused(LimitCallsPerHost))
		}
	})
	t.Run("clearing a call the client never opened creates no call", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		a := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		for orig := range uint16(10) {
			for _, typ := range []PPTPControlType{PPTPCallClearRequest, PPTPCallDisconnectNotify} {
				if m := be16(payloadOf(a.fromClient(pptpMsg(typ, orig+1, 0))), 12); m != 0 {
					t.Errorf("%v for unknown call %d left with Call ID %#x, want 0", typ, orig+1, m)
				}
			}
		}
		if n := len(s.e.PPTPCalls()); n != 0 {
			t.Errorf("%d calls", n)
		}
	})
}

func TestPPTPAttackServerReplies(t *testing.T) {
	t.Run("a second reply naming a set-up call does not change its server Call ID", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		masq := c.setUpCall(1, 0x77)
		c.fromServer(pptpMsg(PPTPOutgoingCallReply, 0x99, masq))
		s.wantCall(lanA, 1, masq, 0x77)
		// Errors about the client's GRE still find it by 0x77.
		sent := s.mustOut(grePkt(lanA, remote1, 0x77, make([]byte, 64)), VerdictToWAN)
		p := s.mustIn(icmpErrPkt(router, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, sent.Buf, 28), VerdictToLAN)
		if p.DstAddr() != lanA {
			t.Errorf("error delivered to %v", p.DstAddr())
		}
		if call, _ := s.call(lanA, 1); call.GREOut != 1 {
			t.Errorf("client GRE counted %d, want 1", call.GREOut)
		}
	})
}

func TestPPTPAttackGone(t *testing.T) {
	const grace = 30 * time.Second
	t.Run("when the TCP flow is gone the calls end after the grace time and the record is deleted", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		masq := c.setUpCall(1, 0x77)
		s.e.pptp.gone(c.record(), s.e.now())
		if call, _ := s.call(lanA, 1); call.State != "ending" {
			t.Errorf("state %q after gone", call.State)
		}
		s.advance(grace - time.Second)
		s.mustIn(grePkt(remote1, wanAddr, masq, nil), VerdictToLAN) // in flight
		s.advance(2 * time.Second)
		r, _ := s.in(grePkt(remote1, wanAddr, masq, nil))
		wantDrop(t, r, DropGREUnknownCall)
		if n := len(s.e.pptp.conns); n != 0 {
			t.Errorf("%d connection records left", n)
		}
		if u := s.e.hosts.m[lanA.As4()]; u != nil && u.held[quotaCalls] != 0 {
			t.Errorf("lanA still holds %d calls of its quota", u.held[quotaCalls])
		}
	})
	t.Run("a record without calls is deleted when its flow is gone", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		s.e.pptp.gone(c.record(), s.e.now())
		if n := len(s.e.pptp.conns); n != 0 {
			t.Errorf("%d connection records left", n)
		}
	})
	t.Run("a record does not outlive its TCP flow", func(t *testing.T) {
		s := newPPTPLab(t, Config{TCPTransitoryTimeout: 4 * time.Minute})
		// A segment to port 1723 picked up mid-stream: no handshake.
		s.mustOut(tcpSeqPkt(ap(lanA, 40000), ap(remote1, PortPPTP), header.TCPFlagAck, 5, nil), VerdictToWAN)
		// The client's FIN puts the flow on the transitory timer; the
		// record goes with the flow, not 2 h 4 min later.
		s.mustOut(tcpSeqPkt(ap(lanA, 40000), ap(remote1, PortPPTP), header.TCPFlagFin|header.TCPFlagAck, 5, nil), VerdictToWAN)
		s.advance(4*time.Minute + time.Second)
		if n := len(s.e.pptp.conns); n != 0 {
			t.Errorf("%d connection records left after the flow expired", n)
		}
	})
	t.Run("an open control connection keeps its record and calls (control)", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		masq := c.setUpCall(1, 0x77)
		for range 5 {
			s.advance(time.Minute)
			c.fromClient(pptpMsg(PPTPEchoRequest, 0, 0))
		}
		s.wantCall(lanA, 1, masq, 0x77)
	})
	t.Run("a new connection opened on the same endpoints after gone starts afresh", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		old := c.setUpCall(1, 0x77)
		s.e.pptp.gone(c.record(), s.e.now())
		rec := s.e.pptp.open(pptpConnKey{endpoint{lanA.As4(), 40000}, endpoint{remote1.As4(), PortPPTP}}, s.e.now())
		if rec.closed || rec.gone || rec.dirs[fromClient].synced {
			t.Errorf("reopened record: closed %v gone %v synced %v", rec.closed, rec.gone, rec.dirs[fromClient].synced)
		}
		s.advance(31 * time.Second)
		r, _ := s.in(grePkt(remote1, wanAddr, old, nil))
		wantDrop(t, r, DropGREUnknownCall)
		if s.e.pptp.lookup(rec.key) != rec {
			t.Error("the reopened record was deleted with the old connection's calls")
		}
	})
}

func TestGREErrorOwnerIndex(t *testing.T) {
	t.Run("an error about GRE with a server Call ID reused after a call ended reaches the live call's client", func(t *testing.T) {
		// The old call is in its grace time when the server hands its
		// Call ID to another client's call. Run it often: a lookup that
		// picks among candidates in map order would be right by chance.
		for range 20 {
			s := newPPTPLab(t, Config{})
			a := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
			b := s.open(ap(lanB, 40000), ap(remote1, PortPPTP))
			a.setUpCall(1, 0x100)
			a.fromClient(pptpMsg(PPTPCallClearRequest, 1, 0))
			b.setUpCall(1, 0x100)
			sent := s.mustOut(grePkt(lanB, remote1, 0x100, make([]byte, 64)), VerdictToWAN)
			p := s.mustIn(icmpErrPkt(router, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, sent.Buf, 28), VerdictToLAN)
			if p.DstAddr() != lanB {
				t.Fatalf("error delivered to %v, want %v", p.DstAddr(), lanB)
			}
		}
	})
	t.Run("among 2000 calls to one server the error reaches the client whose call it names", func(t *testing.T) {
		s := newPPTPLab(t, Config{Limits: Limits{MaxCallsPerHost: 2000}})
		a := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		for orig := range uint16(2000) {
			a.setUpCall(orig+1, 0x1000+orig)
		}
		b := s.open(ap(lanB, 40000), ap(remote1, PortPPTP))
		b.setUpCall(1, 0x100)
		for _, tc := range []struct {
			host netip.Addr
			peer uint16
		}{{lanB, 0x100}, {lanA, 0x1000}, {lanA, 0x1000 + 1999}} {
			sent := s.mustOut(grePkt(tc.host, remote1, tc.peer, make([]byte, 64)), VerdictToWAN)
			p := s.mustIn(icmpErrPkt(router, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, sent.Buf, 28), VerdictToLAN)
			if p.DstAddr() != tc.host {
				t.Errorf("error about %#x delivered to %v, want %v", tc.peer, p.DstAddr(), tc.host)
			}
		}
		// An error naming no call of that server goes nowhere.
		sent := s.mustOut(grePkt(lanA, remote2, 0x100, make([]byte, 64)), VerdictToWAN)
		r, _ := s.in(icmpErrPkt(router, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, sent.Buf, 28))
		if r.Verdict == VerdictToLAN {
			t.Error("an error about a call of no server was delivered to the LAN")
		}
	})
}
