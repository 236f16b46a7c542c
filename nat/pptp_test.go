package nat

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// pptpMsg builds a control message of its type's fixed length. The sender's
// Call ID and the Peer's Call ID go where the type carries them; every other
// byte after the header is a pattern, so a stray rewrite shows. Replies get
// Result Code 1 (success) at offset 16.
func pptpMsg(typ PPTPControlType, callID, peerID uint16) []byte {
	n := typ.FixedLen()
	if n == 0 {
		n = 16
	}
	b := make([]byte, n)
	for i := pptpHeaderLen; i < n; i++ {
		b[i] = byte(0xA0 + i)
	}
	binary.BigEndian.PutUint16(b[0:], uint16(n))
	binary.BigEndian.PutUint16(b[2:], 1)
	binary.BigEndian.PutUint32(b[4:], PPTPMagic)
	binary.BigEndian.PutUint16(b[8:], uint16(typ))
	b[10], b[11] = 0, 0
	if off := typ.senderCallIDOffset(); off != 0 {
		binary.BigEndian.PutUint16(b[off:], callID)
	}
	if off := typ.peerCallIDOffset(); off != 0 {
		binary.BigEndian.PutUint16(b[off:], peerID)
	}
	if _, ok := PPTPMessage(b).resultCode(); ok {
		b[16] = 1
	}
	return b
}

func allPPTPTypes() []PPTPControlType {
	var ts []PPTPControlType
	for t := PPTPControlType(1); t < pptpNumTypes; t++ {
		ts = append(ts, t)
	}
	return ts
}

func TestPPTPCodec(t *testing.T) {
	// RFC 2637 section 2: the fixed length of each control message type.
	wantLen := map[PPTPControlType]int{1: 156, 2: 156, 3: 16, 4: 16, 5: 16, 6: 20, 7: 168,
		8: 32, 9: 220, 10: 24, 11: 28, 12: 16, 13: 148, 14: 40, 15: 24}
	// Which fields name a call: the sender's own Call ID, the receiver's
	// (Peer's Call ID).
	wantSender := map[PPTPControlType]int{7: 12, 8: 12, 9: 12, 10: 12, 12: 12, 13: 12}
	wantPeer := map[PPTPControlType]int{8: 14, 10: 14, 11: 12, 14: 12, 15: 12}
	for _, typ := range allPPTPTypes() {
		t.Run(typ.String()+" round-trips with its fixed length and Call ID fields", func(t *testing.T) {
			b := pptpMsg(typ, 0x1234, 0x5678)
			m := PPTPMessage(b)
			if err := m.Validate(); err != PPTPOK {
				t.Fatalf("Validate: %v", err)
			}
			if int(m.Length()) != wantLen[typ] || typ.FixedLen() != wantLen[typ] {
				t.Errorf("length %d / fixed %d, want %d", m.Length(), typ.FixedLen(), wantLen[typ])
			}
			if m.ControlType() != typ || m.Magic() != PPTPMagic || m.MessageType() != 1 {
				t.Errorf("header: type %d magic %#x message type %d", m.ControlType(), m.Magic(), m.MessageType())
			}
			id, ok := m.CallID()
			if want := wantSender[typ]; ok != (want != 0) || (ok && (id != 0x1234 || binary.BigEndian.Uint16(b[want:]) != 0x1234)) {
				t.Errorf("CallID = %#x, %v; want at offset %d", id, ok, want)
			}
			peer, ok := m.PeerCallID()
			if want := wantPeer[typ]; ok != (want != 0) || (ok && (peer != 0x5678 || binary.BigEndian.Uint16(b[want:]) != 0x5678)) {
				t.Errorf("PeerCallID = %#x, %v; want at offset %d", peer, ok, want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		mod  func([]byte) []byte
		want PPTPError
	}{
		{"a header cut short is refused", func(b []byte) []byte { return b[:11] }, PPTPShort},
		{"a wrong magic cookie is refused", func(b []byte) []byte { b[4] ^= 0xff; return b }, PPTPBadMagic},
		{"a management message is refused", func(b []byte) []byte { b[3] = 2; return b }, PPTPNotControl},
		{"control type 0 is refused", func(b []byte) []byte { b[9] = 0; return b }, PPTPUnknownType},
		{"control type 16 is refused", func(b []byte) []byte { b[9] = 16; return b }, PPTPUnknownType},
		{"a length below the fixed length is refused", func(b []byte) []byte { b[1]--; return b }, PPTPTooShort},
		{"a length of 0 is refused", func(b []byte) []byte { b[0], b[1] = 0, 0; return b }, PPTPTooShort},
		{"a length above the fixed length is accepted", func(b []byte) []byte { b[1]++; return b }, PPTPOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.mod(pptpMsg(PPTPOutgoingCallRequest, 1, 0))
			if got := PPTPMessage(b).Validate(); got != tc.want {
				t.Errorf("Validate = %v, want %v", got, tc.want)
			}
		})
	}
}

// pptpLab is one PPTP control connection through the engine: a LAN client
// (lanA:40000, or another endpoint) to a server on remote1:1723, with each
// side's sequence numbers.
type pptpLab struct {
	*lab
}

func newPPTPLab(t *testing.T, cfg Config) *pptpLab {
	return &pptpLab{lab: newLab(t, cfg)}
}

// tcpSeqPkt is a TCP segment with explicit sequence number and flags.
func tcpSeqPkt(src, dst netip.AddrPort, flags header.TCPFlags, seq uint32, payload []byte) []byte {
	return tcpSeqAckPkt(src, dst, flags, seq, pptpAck(src), payload)
}

// pptpAck acknowledges the other side's SYN in the lab's sequence spaces
// (open): in window for the connection tracker as long as less than a
// window of data was sent since.
func pptpAck(src netip.AddrPort) uint32 {
	if src.Addr().Is4() && src.Addr().As4()[0] == 10 {
		return pptpServerISS + 1
	}
	return pptpClientISS + 1
}

// tcpSeqAckPkt is tcpSeqPkt with an explicit acknowledgment number.
func tcpSeqAckPkt(src, dst netip.AddrPort, flags header.TCPFlags, seq, ack uint32, payload []byte) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: ProtoTCP, ID: 0x3333},
		testpacket.TCP(testpacket.TCPHeader{Src: src, Dst: dst, Seq: seq, Ack: ack, Flags: flags, Window: 65000}, payload))
}

// The initial sequence numbers of the lab's control connections.
const (
	pptpClientISS = 999
	pptpServerISS = 899999
)

// open runs the handshake of a control connection from client to server.
// The segments of the lab's connections acknowledge what the other side
// sent, as a TCP layer that checks windows wants.
func (s *pptpLab) open(client, server netip.AddrPort) *pptpConnLab {
	s.t.Helper()
	c := &pptpConnLab{l: s, client: client, server: server, cseq: pptpClientISS + 1, sseq: pptpServerISS + 1}
	p := s.mustOut(tcpSeqPkt(client, server, header.TCPFlagSyn, c.cseq-1, nil), VerdictToWAN)
	c.ext = p.SrcPort
	s.mustIn(tcpSeqAckPkt(server, ap(wanAddr, c.ext), header.TCPFlagSyn|header.TCPFlagAck, c.sseq-1, c.cseq, nil), VerdictToLAN)
	s.mustOut(tcpSeqAckPkt(client, server, header.TCPFlagAck, c.cseq, c.sseq, nil), VerdictToWAN)
	return c
}

type pptpConnLab struct {
	l              *pptpLab
	client, server netip.AddrPort
	cseq, sseq     uint32
	ext            uint16
}

// fromClient sends payload as one segment at the client's next sequence
// number and returns what left on the WAN.
func (c *pptpConnLab) fromClient(payload []byte) *Packet {
	c.l.t.Helper()
	p := c.l.mustOut(tcpSeqAckPkt(c.client, c.server, header.TCPFlagAck|header.TCPFlagPsh, c.cseq, c.sseq, payload), VerdictToWAN)
	c.cseq += uint32(len(payload))
	c.ext = p.SrcPort // a new mapping if the old one expired
	return p
}

// fromServer is fromClient for the server.
func (c *pptpConnLab) fromServer(payload []byte) *Packet {
	c.l.t.Helper()
	p := c.l.mustIn(tcpSeqAckPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagAck|header.TCPFlagPsh, c.sseq, c.cseq, payload), VerdictToLAN)
	c.sseq += uint32(len(payload))
	return p
}

// record is the tracker's record of the connection.
func (c *pptpConnLab) record() *pptpConn {
	c.l.t.Helper()
	r := c.l.e.pptp.lookup(pptpConnKey{endpoint{c.client.Addr().As4(), c.client.Port()}, endpoint{c.server.Addr().As4(), c.server.Port()}})
	if r == nil {
		c.l.t.Fatalf("no record of %v→%v", c.client, c.server)
	}
	return r
}

// payloadOf is a translated segment's TCP payload.
func payloadOf(p *Packet) []byte {
	return p.L4[header.TCP(p.L4).DataOffset():]
}

// call returns the one call of the engine with the client's Call ID.
func (s *pptpLab) call(client netip.Addr, id uint16) (PPTPCall, bool) {
	for _, c := range s.e.PPTPCalls() {
		if c.Client.Addr() == client && c.CallID == id {
			return c, true
		}
	}
	return PPTPCall{}, false
}

func be16(b []byte, off int) uint16 { return binary.BigEndian.Uint16(b[off:]) }

// TestPPTPRewriteTable checks every message type in both directions: which
// field changes and to what.
func TestPPTPRewriteTable(t *testing.T) {
	const orig, serverID = 0x0101, 0x5001
	setup := func(t *testing.T) (*pptpLab, *pptpConnLab, uint16) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		c.fromClient(pptpMsg(PPTPOutgoingCallRequest, orig, 0))
		call, ok := s.call(lanA, orig)
		if !ok {
			t.Fatal("no call after the Outgoing-Call-Request")
		}
		if call.MasqCallID == orig {
			t.Fatalf("masqueraded Call ID %#x equals the client's", call.MasqCallID)
		}
		return s, c, call.MasqCallID
	}
	// From the client: every field holding the client's own Call ID is
	// masqueraded; Peer's Call IDs (the server's) stay.
	clientRewrites := map[PPTPControlType]int{7: 12, 8: 12, 9: 12, 10: 12, 12: 12, 13: 12}
	for _, typ := range allPPTPTypes() {
		if typ == PPTPStopControlRequest || typ == PPTPStopControlReply {
			continue // they end the calls: TestPPTPTeardown
		}
		t.Run("client's "+typ.String()+" gets the client's own Call ID masqueraded and nothing else", func(t *testing.T) {
			s, c, masq := setup(t)
			msg := pptpMsg(typ, orig, serverID)
			if typ.peerCallIDOffset() == 12 {
				binary.BigEndian.PutUint16(msg[12:], serverID) // the server's ID
			}
			p := c.fromClient(msg)
			got := payloadOf(p)
			want := append([]byte(nil), msg...)
			if off := clientRewrites[typ]; off != 0 {
				binary.BigEndian.PutUint16(want[off:], masq)
			}
			if string(got) != string(want) {
				t.Errorf("sent\n%x\nleft as\n%x\nwant\n%x", msg, got, want)
			}
			if n := len(s.e.PPTPCalls()); n != 1 {
				t.Errorf("%d calls, want the one", n)
			}
		})
	}
	// From the server: the Peer's Call ID (the client's, as masqueraded) is
	// restored; the server's own Call ID stays, in Call-Disconnect-Notify
	// too (RFC 2637 section 2.13; the Linux helper rewrites it).
	serverRestores := map[PPTPControlType]int{8: 14, 10: 14, 11: 12, 14: 12, 15: 12}
	for _, typ := range allPPTPTypes() {
		if typ == PPTPStopControlRequest || typ == PPTPStopControlReply {
			continue
		}
		t.Run("server's "+typ.String()+" gets only the Peer's Call ID restored", func(t *testing.T) {
			_, c, masq := setup(t)
			msg := pptpMsg(typ, serverID, masq)
			if typ.senderCallIDOffset() == 12 && typ.peerCallIDOffset() != 12 {
				binary.BigEndian.PutUint16(msg[12:], serverID)
			}
			p := c.fromServer(msg)
			got := payloadOf(p)
			want := append([]byte(nil), msg...)
			if off := serverRestores[typ]; off != 0 {
				binary.BigEndian.PutUint16(want[off:], orig)
			}
			if string(got) != string(want) {
				t.Errorf("sent\n%x\narrived as\n%x\nwant\n%x", msg, got, want)
			}
		})
	}
}

func TestPPTPCallIDs(t *testing.T) {
	t.Run("two clients with the same Call ID to one server get distinct Call IDs and their own GRE", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		a := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		b := s.open(ap(lanB, 40000), ap(remote1, PortPPTP))
		pa := a.fromClient(pptpMsg(PPTPOutgoingCallRequest, 7, 0))
		pb := b.fromClient(pptpMsg(PPTPOutgoingCallRequest, 7, 0))
		ma, mb := be16(payloadOf(pa), 12), be16(payloadOf(pb), 12)
		if ma == mb {
			t.Fatalf("both calls are %#x on the WAN", ma)
		}
		a.fromServer(pptpMsg(PPTPOutgoingCallReply, 0x100, ma))
		b.fromServer(pptpMsg(PPTPOutgoingCallReply, 0x200, mb))
		for _, tc := range []struct {
			masq uint16
			to   netip.Addr
		}{{ma, lanA}, {mb, lanB}} {
			p := s.mustIn(grePkt(remote1, wanAddr, tc.masq, []byte("ppp")), VerdictToLAN)
			if p.DstAddr() != tc.to || greHeader(p.L4).callID() != 7 {
				t.Errorf("GRE for %#x went to %v with Call ID %d", tc.masq, p.DstAddr(), greHeader(p.L4).callID())
			}
		}
	})
	t.Run("two calls in one control connection get two Call IDs and each its GRE", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		m1 := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 1, 0))), 12)
		m2 := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 2, 0))), 12)
		if m1 == m2 {
			t.Fatal("same masqueraded Call ID for two calls")
		}
		c.fromServer(pptpMsg(PPTPOutgoingCallReply, 0x100, m1))
		c.fromServer(pptpMsg(PPTPOutgoingCallReply, 0x101, m2))
		for orig, masq := range map[uint16]uint16{1: m1, 2: m2} {
			p := s.mustIn(grePkt(remote1, wanAddr, masq, nil), VerdictToLAN)
			if got := greHeader(p.L4).callID(); got != orig {
				t.Errorf("GRE %#x restored to %d, want %d", masq, got, orig)
			}
		}
		// The client's GRE names the server's Call ID and keeps it.
		p := s.mustOut(grePkt(lanA, remote1, 0x101, []byte("x")), VerdictToWAN)
		if p.SrcAddr() != wanAddr || greHeader(p.L4).callID() != 0x101 {
			t.Errorf("client GRE left as %v key %#x", p.SrcAddr(), greHeader(p.L4).callID())
		}
		if call, _ := s.call(lanA, 2); call.GREOut != 1 || call.GREIn != 1 || call.PeerCallID != 0x101 {
			t.Errorf("call 2: %+v", call)
		}
	})
	t.Run("the same Call ID to two servers may get the same masqueraded value only per server", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		a := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		b := s.open(ap(lanA, 40001), ap(remote2, PortPPTP))
		ma := be16(payloadOf(a.fromClient(pptpMsg(PPTPOutgoingCallRequest, 9, 0))), 12)
		mb := be16(payloadOf(b.fromClient(pptpMsg(PPTPOutgoingCallRequest, 9, 0))), 12)
		a.fromServer(pptpMsg(PPTPOutgoingCallReply, 1, ma))
		b.fromServer(pptpMsg(PPTPOutgoingCallReply, 1, mb))
		if p := s.mustIn(grePkt(remote2, wanAddr, mb, nil), VerdictToLAN); p.DstAddr() != lanA {
			t.Errorf("GRE from the second server to %v", p.DstAddr())
		}
		// GRE naming a call of the other server is nobody's.
		if ma != mb {
			r, _ := s.in(grePkt(remote2, wanAddr, ma, nil))
			wantDrop(t, r, DropGREUnknownCall)
		}
	})
	t.Run("a Call ID the server did not get from this connection is passed unchanged and counted", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		a := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		b := s.open(ap(lanB, 40000), ap(remote1, PortPPTP))
		mb := be16(payloadOf(b.fromClient(pptpMsg(PPTPOutgoingCallRequest, 3, 0))), 12)
		// The server names b's call on a's connection: a does not learn b's ID.
		p := a.fromServer(pptpMsg(PPTPSetLinkInfo, 0, mb))
		if got := be16(payloadOf(p), 12); got != mb {
			t.Errorf("Peer's Call ID became %#x", got)
		}
		if n := s.e.PPTPStats().UnknownCallIDs; n != 1 {
			t.Errorf("unknown Call IDs counted %d, want 1", n)
		}
	})
	t.Run("masqueraded Call IDs are never 0 and not reused while in use", func(t *testing.T) {
		s := newPPTPLab(t, Config{Limits: Limits{MaxCallsPerHost: 1000}})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		seen := map[uint16]bool{}
		for id := range uint16(300) {
			m := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, id, 0))), 12)
			if m == 0 || seen[m] {
				t.Fatalf("Call ID %d masqueraded to %d (seen before: %v)", id, m, seen[m])
			}
			seen[m] = true
		}
	})
	t.Run("beyond max_calls the server gets Call ID 0", func(t *testing.T) {
		s := newPPTPLab(t, Config{PPTP: PPTPConfig{MaxCalls: 2}})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 1, 0))
		c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 2, 0))
		if m := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 3, 0))), 12); m != 0 {
			t.Errorf("third call got %#x", m)
		}
	})
}

func TestPPTPStream(t *testing.T) {
	ocrq := pptpMsg(PPTPOutgoingCallRequest, 0x0101, 0)
	t.Run("a message split over three segments is rewritten across them", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		var wire []byte
		for _, part := range [][]byte{ocrq[:5], ocrq[5:30], ocrq[30:]} {
			wire = append(wire, payloadOf(c.fromClient(part))...)
		}
		call, ok := s.call(lanA, 0x0101)
		if !ok || be16(wire, 12) != call.MasqCallID || string(wire[14:]) != string(ocrq[14:]) || string(wire[:12]) != string(ocrq[:12]) {
			t.Errorf("reassembled %x, call %+v", wire, call)
		}
	})
	t.Run("a segment ending inside the Call ID is cut before it and the rest is rewritten on retransmission", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		p := c.fromClient(ocrq[:13]) // header + first byte of the Call ID
		if got := payloadOf(p); string(got) != string(ocrq[:12]) {
			t.Fatalf("first segment left with %d bytes %x, want the 12 header bytes", len(got), got)
		}
		// The receiver acknowledged 12 bytes; the sender retransmits from
		// there. The next segment the sender already sent (byte 13 on) is
		// beyond the parsed point and dropped.
		r, _ := s.out(tcpSeqPkt(c.client, c.server, header.TCPFlagAck, c.cseq, ocrq[13:]))
		wantDrop(t, r, DropPPTPOutOfOrder)
		c.cseq -= 1
		p = c.fromClient(ocrq[12:])
		call, _ := s.call(lanA, 0x0101)
		if got := payloadOf(p); be16(got, 0) != call.MasqCallID || string(got[2:]) != string(ocrq[14:]) {
			t.Errorf("retransmission left as %x", got)
		}
		if s.e.PPTPStats().Truncated != 1 {
			t.Errorf("truncated %d", s.e.PPTPStats().Truncated)
		}
	})
	t.Run("a segment holding only part of a Call ID is dropped", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		c.fromClient(ocrq[:12])
		r, _ := s.out(tcpSeqPkt(c.client, c.server, header.TCPFlagAck, c.cseq, ocrq[12:13]))
		wantDrop(t, r, DropPPTPSplitCallID)
		p := c.fromClient(ocrq[12:])
		if call, _ := s.call(lanA, 0x0101); be16(payloadOf(p), 0) != call.MasqCallID {
			t.Error("not rewritten after the drop")
		}
	})
	t.Run("three messages in one segment are all rewritten", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		var seg []byte
		seg = append(seg, pptpMsg(PPTPEchoRequest, 0, 0)...)
		seg = append(seg, pptpMsg(PPTPOutgoingCallRequest, 1, 0)...)
		seg = append(seg, pptpMsg(PPTPOutgoingCallRequest, 2, 0)...)
		got := payloadOf(c.fromClient(seg))
		c1, _ := s.call(lanA, 1)
		c2, _ := s.call(lanA, 2)
		if be16(got, 16+12) != c1.MasqCallID || be16(got, 16+168+12) != c2.MasqCallID || c1.MasqCallID == c2.MasqCallID {
			t.Errorf("calls %#x %#x, wire %#x %#x", c1.MasqCallID, c2.MasqCallID, be16(got, 28), be16(got, 196))
		}
		// And the server's replies, two in one segment, split mid-message
		// into the next.
		replies := append(pptpMsg(PPTPOutgoingCallReply, 0x71, c1.MasqCallID), pptpMsg(PPTPOutgoingCallReply, 0x72, c2.MasqCallID)...)
		in1 := payloadOf(c.fromServer(replies[:40]))
		in2 := payloadOf(c.fromServer(replies[40:]))
		if be16(in1, 14) != 1 || be16(append(in1, in2...), 32+14) != 2 {
			t.Errorf("replies arrived as %x %x", in1, in2)
		}
	})
	t.Run("a retransmitted segment is rewritten the same way again", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		first := payloadOf(c.fromClient(ocrq))
		again := payloadOf(s.mustOut(tcpSeqPkt(c.client, c.server, header.TCPFlagAck, c.cseq-uint32(len(ocrq)), ocrq), VerdictToWAN))
		if string(first) != string(again) {
			t.Errorf("first %x, again %x", first[:16], again[:16])
		}
		// A retransmission that overlaps new data: old part replayed,
		// new part parsed.
		more := pptpMsg(PPTPOutgoingCallRequest, 0x0202, 0)
		both := payloadOf(s.mustOut(tcpSeqPkt(c.client, c.server, header.TCPFlagAck, c.cseq-uint32(len(ocrq)), append(append([]byte(nil), ocrq...), more...)), VerdictToWAN))
		c2, _ := s.call(lanA, 0x0202)
		if string(both[:len(ocrq)]) != string(first) || be16(both, len(ocrq)+12) != c2.MasqCallID {
			t.Errorf("overlapping retransmission %x", both[:len(ocrq)+16])
		}
		if n := len(s.e.PPTPCalls()); n != 2 {
			t.Errorf("%d calls, want 2", n)
		}
	})
	for _, tc := range []struct {
		name string
		msg  []byte
	}{
		{"bad magic", func() []byte { b := pptpMsg(PPTPOutgoingCallRequest, 1, 0); b[4] = 0; return b }()},
		{"a length below the fixed length", func() []byte { b := pptpMsg(PPTPOutgoingCallRequest, 1, 0); b[1] = 12; return b[:12] }()},
		{"an unknown control type", func() []byte { b := pptpMsg(PPTPOutgoingCallRequest, 1, 0); b[9] = 99; return b }()},
		{"a short message", []byte{0, 16, 0, 1, 0x1a, 0x2b, 0x3c, 0x4d, 0, 7, 0, 0}},
	} {
		t.Run("a message with "+tc.name+" is dropped with the rest of its direction, and counted", func(t *testing.T) {
			s := newPPTPLab(t, Config{})
			c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
			c.fromClient(pptpMsg(PPTPStartControlRequest, 0, 0))
			r, _ := s.out(tcpSeqPkt(c.client, c.server, header.TCPFlagAck, c.cseq, tc.msg))
			wantDrop(t, r, DropPPTPMalformed)
			c.cseq += uint32(len(tc.msg))
			r, _ = s.out(tcpSeqPkt(c.client, c.server, header.TCPFlagAck, c.cseq, pptpMsg(PPTPOutgoingCallRequest, 1, 0)))
			wantDrop(t, r, DropPPTPMalformed)
			// Segments without data still pass, so the connection can end.
			s.mustOut(tcpSeqPkt(c.client, c.server, header.TCPFlagAck|header.TCPFlagFin, c.cseq, nil), VerdictToWAN)
			// The other direction is unaffected.
			c.fromServer(pptpMsg(PPTPStartControlReply, 0, 0))
			if n := s.e.Drops.Get(DropPPTPMalformed); n != 2 {
				t.Errorf("pptp_malformed %d, want 2", n)
			}
		})
	}
	t.Run("a segment after a gap is dropped until the missing one arrives", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		echo := pptpMsg(PPTPEchoRequest, 0, 0)
		r, _ := s.out(tcpSeqPkt(c.client, c.server, header.TCPFlagAck, c.cseq+uint32(len(echo)), ocrq))
		wantDrop(t, r, DropPPTPOutOfOrder)
		c.fromClient(echo)
		p := c.fromClient(ocrq)
		if call, ok := s.call(lanA, 0x0101); !ok || be16(payloadOf(p), 12) != call.MasqCallID {
			t.Error("not rewritten after the gap filled")
		}
	})
	t.Run("a connection picked up mid-stream passes unparsed", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		p := s.mustOut(tcpSeqPkt(ap(lanA, 40000), ap(remote1, PortPPTP), header.TCPFlagAck, 5, ocrq), VerdictToWAN)
		if string(payloadOf(p)) != string(ocrq) || len(s.e.PPTPCalls()) != 0 || s.e.PPTPStats().Untracked != 1 {
			t.Errorf("calls %v stats %+v", s.e.PPTPCalls(), s.e.PPTPStats())
		}
	})
	t.Run("a FIN in a cut segment is removed with the data after the cut", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		p := s.mustOut(tcpSeqPkt(c.client, c.server, header.TCPFlagAck|header.TCPFlagFin, c.cseq, ocrq[:14]), VerdictToWAN)
		if p.TCPFlags&header.TCPFlagFin != 0 || header.TCP(p.L4).Flags()&header.TCPFlagFin != 0 || len(payloadOf(p)) != 12 {
			t.Errorf("flags %v payload %d", p.TCPFlags, len(payloadOf(p)))
		}
	})
}

func TestPPTPTeardown(t *testing.T) {
	const grace = 30 * time.Second
	type step func(s *pptpLab, c *pptpConnLab, masq uint16)
	for _, tc := range []struct {
		name string
		end  step
	}{
		{"Call-Clear-Request from the client", func(s *pptpLab, c *pptpConnLab, masq uint16) {
			c.fromClient(pptpMsg(PPTPCallClearRequest, 1, 0))
		}},
		{"Call-Disconnect-Notify from the server", func(s *pptpLab, c *pptpConnLab, masq uint16) {
			c.fromServer(pptpMsg(PPTPCallDisconnectNotify, 0x77, 0))
		}},
		{"Stop-Control-Connection-Request", func(s *pptpLab, c *pptpConnLab, masq uint16) {
			c.fromClient(pptpMsg(PPTPStopControlRequest, 0, 0))
		}},
		// Closing is the TCP layer's decision: it accepts an RST only at
		// the exact sequence number and a FIN only in window, and calls
		// closeConn; the RST and FIN flags seen by control change nothing.
		{"the TCP flow of the control connection going away", func(s *pptpLab, c *pptpConnLab, masq uint16) {
			s.e.pptp.gone(c.record(), s.e.now())
		}},
		{"a reset of the control connection", func(s *pptpLab, c *pptpConnLab, masq uint16) {
			s.mustIn(tcpSeqPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagRst, c.sseq, nil), VerdictToLAN)
		}},
		{"both FINs", func(s *pptpLab, c *pptpConnLab, masq uint16) {
			s.mustOut(tcpSeqPkt(c.client, c.server, header.TCPFlagFin|header.TCPFlagAck, c.cseq, nil), VerdictToWAN)
			s.mustIn(tcpSeqPkt(c.server, ap(wanAddr, c.ext), header.TCPFlagFin|header.TCPFlagAck, c.sseq, nil), VerdictToLAN)
		}},
	} {
		t.Run(tc.name+" frees the call's GRE mapping after the grace time", func(t *testing.T) {
			s := newPPTPLab(t, Config{})
			c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
			masq := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 1, 0))), 12)
			c.fromServer(pptpMsg(PPTPOutgoingCallReply, 0x77, masq))
			tc.end(s, c, masq)
			if call, _ := s.call(lanA, 1); call.State != "ending" {
				t.Errorf("state %q after teardown", call.State)
			}
			s.advance(grace - time.Second)
			s.mustIn(grePkt(remote1, wanAddr, masq, nil), VerdictToLAN) // in flight
			s.advance(2 * time.Second)
			r, _ := s.in(grePkt(remote1, wanAddr, masq, nil))
			wantDrop(t, r, DropGREUnknownCall)
			if n := len(s.e.PPTPCalls()); n != 0 {
				t.Errorf("%d calls left", n)
			}
		})
	}
	t.Run("a call the server never answers is freed after call_setup_timeout", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 1, 0))
		s.advance(2*time.Minute + time.Second)
		if n := len(s.e.PPTPCalls()); n != 0 {
			t.Errorf("%d calls left", n)
		}
	})
	t.Run("a refused call is freed", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		masq := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 1, 0))), 12)
		refusal := pptpMsg(PPTPOutgoingCallReply, 0x77, masq)
		refusal[16] = 3 // Busy
		c.fromServer(refusal)
		s.advance(grace + time.Second)
		if n := len(s.e.PPTPCalls()); n != 0 {
			t.Errorf("%d calls left", n)
		}
	})
	t.Run("an established call lives as long as its control connection", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		masq := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 1, 0))), 12)
		c.fromServer(pptpMsg(PPTPOutgoingCallReply, 0x77, masq))
		for range 10 {
			s.advance(time.Minute)
			c.fromClient(pptpMsg(PPTPEchoRequest, 0, 0))
		}
		s.mustIn(grePkt(remote1, wanAddr, masq, nil), VerdictToLAN)
	})
}
