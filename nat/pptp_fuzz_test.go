package nat

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// FuzzPPTPControl feeds an arbitrary byte stream through a control
// connection, cut into segments by the second input: each byte of it is a
// segment length (low 7 bits, 0 meaning 1) and its high bit sends the
// segment from the server instead of the client. A segment the router cut
// or dropped is resent from where it stopped, as TCP would. Nothing may
// panic, every packet that passes must have correct checksums and carry a
// prefix of what was sent (same length or cut), and only bytes of Call ID
// fields may change: at most two per rewritten message.
func FuzzPPTPControl(f *testing.F) {
	var stream []byte
	for _, typ := range allPPTPTypes() {
		stream = append(stream, pptpMsg(typ, 0x0101, 0x0001)...)
	}
	f.Add(stream, []byte{12, 1, 3, 100, 0x85, 0x90, 7})
	f.Add(pptpMsg(PPTPOutgoingCallRequest, 1, 0), []byte{13, 127})
	f.Add(append(pptpMsg(PPTPOutgoingCallRequest, 1, 0), pptpMsg(PPTPOutgoingCallReply, 2, 1)...), []byte{0x7f, 0x7f, 0xff})
	f.Add([]byte{0, 12, 0, 1, 0x1a, 0x2b, 0x3c, 0x4d, 0, 7, 0, 0}, []byte{1})
	f.Fuzz(func(t *testing.T, data, cuts []byte) {
		if len(cuts) == 0 || len(data) > 1024 {
			return
		}
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		var pos [2]int // bytes of data delivered per direction
		for i := 0; i < 4*len(data)+len(cuts) && (pos[0] < len(data) || pos[1] < len(data)); i++ {
			cut := cuts[i%len(cuts)]
			dir := int(cut >> 7)
			if pos[dir] >= len(data) {
				dir ^= 1
			}
			n := max(int(cut&0x7f), 1)
			seg := data[pos[dir]:min(pos[dir]+n, len(data))]
			var b []byte
			var run func([]byte) (Result, *Packet)
			if dir == 0 {
				b = tcpSeqPkt(c.client, c.server, header.TCPFlagAck, c.cseq+uint32(pos[0]), seg)
				run = s.out
			} else {
				b = tcpSeqPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagAck, c.sseq+uint32(pos[1]), seg)
				run = s.in
			}
			r, p := run(b) // checks the checksums of what passes
			if r.Verdict == VerdictDrop {
				switch r.Reason {
				case DropPPTPMalformed:
					pos[dir] = len(data) // that direction is over
				case DropPPTPSplitCallID:
					// resent with more data next time round
				default:
					t.Fatalf("dropped with %v", r.Reason)
				}
				continue
			}
			got := payloadOf(p)
			if len(got) > len(seg) {
				t.Fatalf("%d bytes in, %d out", len(seg), len(got))
			}
			diff := 0
			for j := range got {
				if got[j] != seg[j] {
					diff++
				}
			}
			if msgs := len(seg)/pptpHeaderLen + 2; diff > 2*msgs {
				t.Fatalf("%d bytes changed in a %d-byte segment", diff, len(seg))
			}
			pos[dir] += len(got)
			checkPPTPIndexes(t, s.e)
		}
		s.e.Expire()
		checkPPTPIndexes(t, s.e)
	})
}

// FuzzGRE sends arbitrary GRE both ways while a call exists: nothing may
// panic, what passes has a correct IP checksum, and only the Call ID half of
// the key may change.
func FuzzGRE(f *testing.F) {
	f.Add(grePkt(lanA, remote1, 0x77, []byte("ppp"))[20:], false)
	f.Add(grePkt(remote1, wanAddr, 1, []byte("ppp"))[20:], true)
	f.Add(greV0Pkt(remote1, wanAddr, []byte("ip"))[20:], true)
	f.Add([]byte{0x30, 0x81, 0x88, 0x0b, 0, 0, 0, 1}, true)
	f.Fuzz(func(t *testing.T, gre []byte, inbound bool) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		masq := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 0x0101, 0))), 12)
		c.fromServer(pptpMsg(PPTPOutgoingCallReply, 0x77, masq))
		var r Result
		var p *Packet
		if inbound {
			r, p = s.in(testpacket.IPv4(testpacket.IPv4Header{Src: remote1, Dst: wanAddr, Proto: ProtoGRE}, gre))
		} else {
			r, p = s.out(testpacket.IPv4(testpacket.IPv4Header{Src: lanA, Dst: remote1, Proto: ProtoGRE}, gre))
		}
		if r.Verdict == VerdictDrop {
			return
		}
		for j := range gre {
			if p.L4[j] != gre[j] && (j < 6 || j > 7) {
				t.Fatalf("GRE byte %d changed", j)
			}
		}
	})
}

// checkPPTPIndexes checks that the tracker's indexes and the per-host call
// quota agree with the calls its records hold.
func checkPPTPIndexes(t testing.TB, e *Engine) {
	t.Helper()
	pt := &e.pptp
	held := map[[4]byte]int{}
	perServer := map[[4]byte]int{}
	claims := map[pptpPeerKey]int{} // calls that know their server's Call ID, by key
	for _, c := range pt.conns {
		for _, call := range c.calls {
			if call.peerKnown {
				claims[pptpPeerKey{call.server, call.peer}]++
			}
		}
	}
	n := 0
	for k, c := range pt.conns {
		if c.key != k {
			t.Fatalf("record %v filed under %v", c.key, k)
		}
		for _, call := range c.calls {
			n++
			held[call.client]++
			perServer[call.server]++
			if call.conn != c || call.masq == 0 {
				t.Fatalf("call %+v in the wrong record or with Call ID 0", call)
			}
			if pt.calls[pptpCallKey{call.server, call.masq}] != call {
				t.Fatalf("call %d→%d missing from the index by masqueraded Call ID", call.orig, call.masq)
			}
			live := pt.byOrig[pptpOrigKey{c.key, call.orig}] == call
			if live != (call.releaseAt == 0) {
				t.Fatalf("call %d: in the index of live calls %v, releaseAt %d", call.orig, live, call.releaseAt)
			}
			if call.peerKnown {
				k := pptpPeerKey{call.server, call.peer}
				found := false
				for _, other := range pt.byPeer[k] {
					found = found || other == call
				}
				if !found {
					t.Fatalf("call %d with server Call ID %#x not in the index", call.orig, call.peer)
				}
				if h := pt.callAtPeer(call.server, call.peer); call.releaseAt == 0 && h.releaseAt != 0 {
					t.Fatalf("live call %d with server Call ID %#x behind an ending one", call.orig, call.peer)
				}
				if f := pt.callByPeer(c, call.peer); call.releaseAt == 0 && (f == nil || f.peer != call.peer) {
					t.Fatalf("live call %d with server Call ID %#x not found by it", call.orig, call.peer)
				}
			}
		}
	}
	if len(pt.calls) != n {
		t.Fatalf("%d calls indexed, %d in records", len(pt.calls), n)
	}
	indexed := 0
	for k, calls := range pt.byPeer {
		if len(calls) == 0 {
			t.Fatalf("empty list under %+v", k)
		}
		for _, call := range calls {
			indexed++
			if !call.peerKnown || call.peer != k.peer || call.server != k.server || pt.calls[pptpCallKey{call.server, call.masq}] != call {
				t.Fatalf("index by server Call ID: %+v under %+v", call, k)
			}
		}
	}
	if known := func() (n int) {
		for _, m := range claims {
			n += m
		}
		return
	}(); indexed != known {
		t.Fatalf("%d calls indexed by server Call ID, %d know it", indexed, known)
	}
	for k, call := range pt.byOrig {
		if call.releaseAt != 0 || call.orig != k.orig || call.conn.key != k.conn {
			t.Fatalf("index of live calls: %+v under %+v", call, k)
		}
	}
	for s, m := range perServer {
		if pt.perServer[s] != m {
			t.Fatalf("server %v: %d calls counted, %d held", s, pt.perServer[s], m)
		}
	}
	if len(pt.perServer) != len(perServer) {
		t.Fatalf("%d servers counted, %d with calls", len(pt.perServer), len(perServer))
	}
	for h, u := range e.hosts.m {
		if u.held[quotaCalls] != held[h] {
			t.Fatalf("host %v holds %d units of its call quota for %d calls", h, u.held[quotaCalls], held[h])
		}
	}
	for h, m := range held {
		if u := e.hosts.m[h]; u == nil || u.held[quotaCalls] != m {
			t.Fatalf("host %v has %d calls outside its quota", h, m)
		}
	}
}

// FuzzPPTPLifecycle runs calls through their lives on four control
// connections in an order the fuzzer picks — requests, replies, clears,
// disconnects, closes, flows gone, time passing, GRE — with small limits,
// and checks after every step that the indexes, the per-server counts and
// the per-host quota agree with the calls held. Time may pass beyond the
// established TCP timeout with nothing sent: the control connection's flow
// then expires, and the server's next message must be dropped as
// unsolicited (it reaches no state) until the client speaks again.
func FuzzPPTPLifecycle(f *testing.F) {
	f.Add([]byte{0, 1, 8, 9, 2, 6, 6, 6})
	f.Add([]byte{0, 8, 16, 24, 32, 1, 4, 6, 14, 0, 5, 22})
	f.Add([]byte{0, 0x11, 0x22, 0x33, 3, 0x43, 6, 6, 6, 6})
	// The server gives its Call ID to a second client's call, the first
	// call ends and is released: the second is still found by it.
	f.Add([]byte(" \x7f\xff!010\""))
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 200 {
			return
		}
		s := newPPTPLab(t, Config{PPTP: PPTPConfig{MaxCalls: 6}, Limits: Limits{MaxCallsPerHost: 4}})
		conns := []*pptpConnLab{
			s.open(ap(lanA, 40000), ap(remote1, PortPPTP)),
			s.open(ap(lanA, 40001), ap(remote2, PortPPTP)),
			s.open(ap(lanB, 40000), ap(remote1, PortPPTP)),
			s.open(ap(lanB, 40001), ap(remote1, PortPPTP)),
		}
		masqs := map[uint16]uint16{} // masqueraded Call IDs seen on the wire, by byte
		for _, op := range ops {
			c := conns[op>>3&3]
			arg := uint16(op >> 5)
			switch op & 7 {
			case 0:
				m := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, arg+1, 0))), 12)
				masqs[arg] = m
			case 1:
				c.fromServerIfLive(pptpMsg(PPTPOutgoingCallReply, 0x100+arg, masqs[arg]))
			case 2:
				c.fromClient(pptpMsg(PPTPCallClearRequest, arg+1, 0))
			case 3:
				c.fromServerIfLive(pptpMsg(PPTPCallDisconnectNotify, 0x100+arg, 0))
			case 4:
				s.e.pptp.gone(s.e.pptp.lookup(pptpConnKey{endpoint{c.client.Addr().As4(), c.client.Port()}, endpoint{c.server.Addr().As4(), c.server.Port()}}), s.e.now())
			case 5:
				s.e.pptp.closeConn(s.e.pptp.lookup(pptpConnKey{endpoint{c.client.Addr().As4(), c.client.Port()}, endpoint{c.server.Addr().As4(), c.server.Port()}}), "fuzz", s.e.now())
			case 6:
				s.advance([]time.Duration{time.Second, 20 * time.Second, 40 * time.Second, 3 * time.Minute}[arg&3])
			case 7:
				s.in(grePkt(c.server.Addr(), wanAddr, masqs[arg], nil))
				s.out(grePkt(c.client.Addr(), c.server.Addr(), 0x100+arg, nil))
			}
			checkPPTPIndexes(t, s.e)
		}
		s.advance(10 * time.Minute)
		checkPPTPIndexes(t, s.e)
	})
}

// fromServerIfLive is fromServer while the control connection's flow is in
// the table. Once it has expired, the segment must be dropped as
// unsolicited: a server cannot revive a connection the router forgot.
func (c *pptpConnLab) fromServerIfLive(payload []byte) {
	c.l.t.Helper()
	for _, m := range c.l.e.Mappings() {
		if m.Proto == "tcp" && m.LAN == c.client && m.WAN.Port() == c.ext && m.Flows > 0 {
			c.fromServer(payload)
			return
		}
	}
	r, _ := c.l.in(tcpSeqAckPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagAck|header.TCPFlagPsh, c.sseq, c.cseq, payload))
	wantDrop(c.l.t, r, DropUnsolicited)
}
