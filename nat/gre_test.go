package nat

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// grePkt is enhanced GRE (RFC 2637 section 4.1) with a sequence number:
// key = payload length + the receiver's Call ID.
func grePkt(src, dst netip.Addr, callID uint16, payload []byte) []byte {
	b := make([]byte, 12+len(payload))
	binary.BigEndian.PutUint16(b[0:], greFlagKey|greFlagSeq|1)
	binary.BigEndian.PutUint16(b[2:], GREProtoPPP)
	binary.BigEndian.PutUint16(b[4:], uint16(len(payload)))
	binary.BigEndian.PutUint16(b[6:], callID)
	binary.BigEndian.PutUint32(b[8:], 1)
	copy(b[12:], payload)
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoGRE, ID: 0x4444}, b)
}

// greV0Pkt is plain GRE (RFC 2784) carrying IPv4.
func greV0Pkt(src, dst netip.Addr, payload []byte) []byte {
	b := make([]byte, 4+len(payload))
	binary.BigEndian.PutUint16(b[2:], 0x0800)
	copy(b[4:], payload)
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoGRE, ID: 0x5555}, b)
}

func TestGRE(t *testing.T) {
	t.Run("client GRE keeps the server's Call ID and only changes the source address", func(t *testing.T) {
		l := newLab(t, Config{})
		in := grePkt(lanA, remote1, 0x4242, []byte("lcp"))
		p := l.mustOut(in, VerdictToWAN)
		if p.SrcAddr() != wanAddr || p.DstAddr() != remote1 || string(p.L4) != string(in[20:]) {
			t.Errorf("left as %v→%v %x", p.SrcAddr(), p.DstAddr(), p.L4)
		}
	})
	t.Run("server GRE with a Call ID this router did not hand out is dropped", func(t *testing.T) {
		l := newLab(t, Config{})
		r, _ := l.in(grePkt(remote1, wanAddr, 1, nil))
		wantDrop(t, r, DropGREUnknownCall)
	})
	for _, tc := range []struct {
		name  string
		gre   []byte
		inbnd bool
	}{
		{"enhanced GRE without a key", func() []byte { b := grePkt(lanA, remote1, 1, nil)[20:]; b[0] &^= 0x20; return b }(), false},
		{"enhanced GRE with a checksum bit", func() []byte { b := grePkt(lanA, remote1, 1, nil)[20:]; b[0] |= 0x80; return b }(), false},
		{"enhanced GRE with another protocol", func() []byte { b := grePkt(lanA, remote1, 1, nil)[20:]; b[2] = 0x08; b[3] = 0; return b }(), true},
		{"enhanced GRE cut inside its sequence number", grePkt(lanA, remote1, 1, nil)[20:30], true},
		{"a GRE header of 3 bytes", []byte{0, 0, 8}, true},
		{"GRE version 2", []byte{0, 2, 8, 0}, false},
	} {
		t.Run(tc.name+" is dropped as malformed", func(t *testing.T) {
			l := newLab(t, Config{})
			src, dst := lanA, remote1
			run := l.out
			if tc.inbnd {
				src, dst, run = remote1, wanAddr, l.in
			}
			r, _ := run(testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoGRE}, tc.gre))
			wantDrop(t, r, DropGREMalformed)
		})
	}
	t.Run("GRE version 0 gets address-only masquerade, one LAN host per remote", func(t *testing.T) {
		l := newLab(t, Config{})
		p := l.mustOut(greV0Pkt(lanA, remote1, []byte("ip")), VerdictToWAN)
		if p.SrcAddr() != wanAddr {
			t.Errorf("source %v", p.SrcAddr())
		}
		if p := l.mustIn(greV0Pkt(remote1, wanAddr, []byte("ip")), VerdictToLAN); p.DstAddr() != lanA {
			t.Errorf("reply to %v", p.DstAddr())
		}
		r, _ := l.out(greV0Pkt(lanB, remote1, nil))
		wantDrop(t, r, DropGRERemoteBusy)
		// Another remote is free for lanB.
		l.mustOut(greV0Pkt(lanB, remote2, nil), VerdictToWAN)
		r, _ = l.in(greV0Pkt(netip.MustParseAddr("198.18.100.3"), wanAddr, nil))
		wantDrop(t, r, DropUnsolicited)
		// The binding ends after gre_timeout without outbound traffic.
		l.advance(5*time.Minute + time.Second)
		r, _ = l.in(greV0Pkt(remote1, wanAddr, nil))
		wantDrop(t, r, DropUnsolicited)
		l.mustOut(greV0Pkt(lanB, remote1, nil), VerdictToWAN)
	})
	t.Run("a GRE forward takes enhanced GRE that matches no call", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{{Proto: ProtoGRE, To: lanB}}})
		if p := l.mustIn(grePkt(remote1, wanAddr, 0x9000, nil), VerdictToLAN); p.DstAddr() != lanB || greHeader(p.L4).callID() != 0x9000 {
			t.Errorf("forwarded to %v key %#x", p.DstAddr(), greHeader(p.L4).callID())
		}
		// The PPTP server's GRE to its outside clients leaves masqueraded.
		if p := l.mustOut(grePkt(lanB, remote1, 0x10, nil), VerdictToWAN); p.SrcAddr() != wanAddr {
			t.Errorf("source %v", p.SrcAddr())
		}
	})
	t.Run("a GRE forward does not take a LAN client's call", func(t *testing.T) {
		s := newPPTPLab(t, Config{Forwards: []Forward{{Proto: ProtoGRE, To: lanB}}})
		c := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		masq := be16(payloadOf(c.fromClient(pptpMsg(PPTPOutgoingCallRequest, 5, 0))), 12)
		if p := s.mustIn(grePkt(remote1, wanAddr, masq, nil), VerdictToLAN); p.DstAddr() != lanA {
			t.Errorf("call GRE went to %v", p.DstAddr())
		}
	})
}

func TestGREICMPErrors(t *testing.T) {
	t.Run("fragmentation needed about a client's enhanced GRE reaches that client", func(t *testing.T) {
		s := newPPTPLab(t, Config{})
		a := s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
		b := s.open(ap(lanB, 40000), ap(remote1, PortPPTP))
		ma := be16(payloadOf(a.fromClient(pptpMsg(PPTPOutgoingCallRequest, 1, 0))), 12)
		mb := be16(payloadOf(b.fromClient(pptpMsg(PPTPOutgoingCallRequest, 1, 0))), 12)
		a.fromServer(pptpMsg(PPTPOutgoingCallReply, 0x100, ma))
		b.fromServer(pptpMsg(PPTPOutgoingCallReply, 0x200, mb))
		sent := s.mustOut(grePkt(lanB, remote1, 0x200, make([]byte, 64)), VerdictToWAN)
		errPkt := icmpErrPkt(router, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, sent.Buf, 28)
		p := s.mustIn(errPkt, VerdictToLAN)
		if p.DstAddr() != lanB {
			t.Errorf("error delivered to %v, want %v", p.DstAddr(), lanB)
		}
		inner := header.IPv4(p.L4[8:])
		if inner.SourceAddress().As4() != lanB.As4() {
			t.Errorf("embedded source %v", inner.SourceAddress())
		}
	})
	t.Run("an error about non-PPTP GRE reaches the bound host", func(t *testing.T) {
		l := newLab(t, Config{})
		sent := l.mustOut(greV0Pkt(lanA, remote1, make([]byte, 40)), VerdictToWAN)
		p := l.mustIn(icmpErrPkt(router, wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4HostUnreachable, sent.Buf, 28), VerdictToLAN)
		if p.DstAddr() != lanA {
			t.Errorf("error delivered to %v", p.DstAddr())
		}
	})
}
