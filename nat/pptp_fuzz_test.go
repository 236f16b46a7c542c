package nat

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"
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
		}
		s.e.Expire()
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
			r, p = s.in(buildIPv4(ipHdr{src: remote1, dst: wanAddr, proto: ProtoGRE}, gre))
		} else {
			r, p = s.out(buildIPv4(ipHdr{src: lanA, dst: remote1, proto: ProtoGRE}, gre))
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
