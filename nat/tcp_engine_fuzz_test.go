package nat

import (
	"bytes"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// fzTransitory is FuzzTCPEngine's transitory timeout: short, so that a flow
// a forged segment moved towards closing expires within the run.
const fzTransitory = 5 * time.Second

// fzForged are the flags of the attacker's segments, by kind.
var fzForged = [...]header.TCPFlags{rst, rst | ack, finAck, syn, synAck}

// FuzzTCPEngine runs FuzzTCPConn's two genuine endpoints (fzConv) through
// the whole engine: the LAN host 10.0.0.10:40000 opens a connection to
// 198.18.100.1:443, its segments go through Outbound and the remote's
// through Inbound to the external port its first segment got, as real IPv4
// packets, with random segmentation, loss and reordering before the NAT,
// loss after it, retransmissions, window scaling, SACK and zero windows. It
// checks that
//
//   - no genuine segment is dropped (but for FuzzTCPConn's one exception, a
//     copy of data acknowledged more than a window ago, dropped as
//     tcp_out_of_window), and each leaves with valid IPv4 and TCP checksums,
//     its addresses and ports translated and the rest of the TCP header and
//     payload unchanged;
//   - an off-path attacker's segments from the WAN, forged with the remote's
//     address and port (RSTs, FIN-ACKs, SYNs and SYN-ACKs with random
//     sequence and acknowledgement numbers), are dropped or passed, but
//     change neither the tracker nor the flow's timer: a SYN is dropped, an
//     RST passes at most to draw a challenge ACK. Excluded, because the
//     genuine rules let them through: the RST at the exact next sequence
//     number, and FIN-ACKs and SYN-ACKs whose sequence and acknowledgement
//     numbers both fall in window (the tracker must not take one outside the
//     windows the endpoints advertised);
//   - the flow survives: between operations the clock moves (while the
//     connection is established) and the engine sweeps, and after the
//     conversation the flow still exists and, once the clock passed the
//     transitory timeout, still carries genuine segments both ways.
//
// In pickup mode the engine first sees the connection mid-stream (the
// router restarted): the handshake does not cross it, and the remote's
// segments find no mapping until the LAN host speaks. The tracker's windows
// are then guesses (scale 14) and its ends loose, so which forged FIN-ACKs
// and SYN-ACKs it may take is not checked against the endpoints' windows;
// they are excluded all the same.
//
// The input is FuzzTCPConn's: a mode byte (2: no SACK, 4: pickup; the LAN
// host always opens, there is no port forward), the endpoints' parameters
// and operations; operations 8 and 9 (op&0x7f%11) are
// the attacker's (a kind, then sequence and acknowledgement numbers), 10
// advances the clock by a byte's worth of 10 ms and sweeps.
func FuzzTCPEngine(f *testing.F) {
	// Plain: no window scale, data both ways, crossings in order, a
	// forged RST, FIN-ACK, SYN and SYN-ACK, clock moves.
	f.Add([]byte{0, 0x10, 0, 0, 0, 0xf0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0, 0x05, 0xdc, 1, 0, 1, 0x80, 0x02, 0x00, 1, 0, 1, 1, 0, 1, 1, 0, 1,
		8, 0, 0x12, 0x34, 0x56, 0x78, 0, 0, 0, 0, 10, 200,
		9, 2, 0xf0, 0, 0x10, 0, 0x0f, 0xff, 0, 0, 8, 3, 1, 2, 3, 4, 0, 0, 0, 0,
		9, 4, 0x70, 0, 0, 1, 0x10, 0, 0, 1, 9, 2, 0xf0, 0, 0x10, 0, 0x10, 0, 0x05, 0xdd, 10, 255, 10, 255,
		6, 0x86, 1, 0, 1, 1, 0, 1})
	// Scaled: window scale 7 and 14, large windows, a zero window and
	// its probes, a window reopened, forged segments around the edges.
	f.Add([]byte{0, 0xff, 0xff, 0xff, 0x00, 0x7f, 0xff, 0xff, 0xf0, 7, 0xff, 0xff, 14, 0x80, 0x00,
		0, 0x0f, 0xa0, 0, 0x0f, 0xa0, 1, 0, 1, 1, 0, 1, 0x85, 0, 0, 0, 1, 0, 1, 1, 0, 1,
		7, 0, 2, 0, 1, 0, 1, 0x85, 0x10, 0, 1, 1, 0, 1,
		0, 0x0f, 0xa0, 1, 0, 1, 1, 0, 1, 9, 2, 0x7f, 0xff, 0xff, 0xf0, 0x7f, 0xff, 0xf0, 0x10,
		8, 1, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 10, 100,
		0x80, 0x0f, 0xa0, 1, 0, 1, 1, 0, 1, 9, 4, 0x80, 0x00, 0x0f, 0xa1, 0xff, 0xff, 0xfa, 0})
	// Lossy: reordering, loss before and after the NAT, duplicates,
	// retransmissions, SACK, forged RSTs in between, clock moves.
	f.Add([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 3, 0x40, 0, 5, 0x40, 0,
		0, 0x05, 0xb4, 0, 0x05, 0xb4, 0, 0x05, 0xb4, 0, 0x05, 0xb4,
		4, 0, 1, 1, 0, 1, 2, 0, 1, 0, 3, 1, 1, 0, 1, 0, 1, 0, 1, 2, 0, 1,
		8, 0, 0x01, 0x02, 0x0a, 0x00, 0, 0, 0, 0, 10, 50, 8, 1, 5, 6, 7, 8, 1, 2, 3, 4,
		2, 0x05, 0xb4, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 1,
		0x80, 0x10, 0, 0x80, 0x10, 0, 1, 1, 0, 1, 0, 1, 1, 1, 10, 30, 1, 0, 1, 1, 0, 1, 1, 0, 1,
		9, 2, 5, 6, 7, 8, 1, 2, 3, 4, 0x82, 0x10, 0, 1, 0, 1, 1, 0, 1})
	// Pickup, without SACK: the remote speaks first and finds no flow.
	f.Add([]byte{6, 0xaa, 0xbb, 0xcc, 0xdd, 0x11, 0x22, 0x33, 0x44, 2, 0x20, 0, 2, 0x20, 0,
		0x80, 0x01, 0, 1, 0, 0, 0x20, 0, 1, 0, 1, 0x86, 1, 0, 1, 1, 0, 1,
		8, 0, 0x11, 0x22, 0x33, 0x45, 0, 0, 0, 0, 10, 200, 6, 1, 0, 1})
	// Pickup from a LAN host segment with a zero window, then more data
	// from the host: the host's right edge is unknown until the remote
	// speaks (it once was taken from the host's own zero window).
	f.Add([]byte("6000000000\x00\x0000070080070020028"))
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fzInput{data}
		mode := in.byte()
		l := newLab(t, Config{TCPTransitoryTimeout: fzTransitory})
		lan, rem := ap(lanA, 40000), ap(remote1, 443)
		cv := &fzConv{in: in}
		ep := &cv.ep
		ep[0].dir, ep[1].dir = tcpInside, tcpOutside
		ep[0].sackOK, ep[1].sackOK = mode&2 == 0, mode&2 == 0
		pickup := mode&4 != 0

		var ext uint16 // the external port, from the first segment that left
		var ipID uint16
		// packet builds a segment from the LAN host (k 0) or from the
		// remote's address and port (k 1), with a correct checksum.
		packet := func(k int, r rawSeg) []byte {
			src, dst := lan, rem
			if k == tcpOutside {
				src, dst = rem, ap(wanAddr, ext)
				if ext == 0 {
					dst = ap(wanAddr, lan.Port()) // no mapping yet
				}
			}
			b := r.bytes()
			tcp := header.TCP(b)
			tcp.SetSourcePort(src.Port())
			tcp.SetDestinationPort(dst.Port())
			for i, payload := 0, b[tcp.DataOffset():]; i < len(payload); i++ {
				payload[i] = byte(r.seq + uint32(i)) // a retransmission carries the same bytes
			}
			xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, taddr(src.Addr()), taddr(dst.Addr()), uint16(len(b)))
			tcp.SetChecksum(^checksum.Checksum(b, xsum))
			ipID++
			return testpacket.IPv4(testpacket.IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: ProtoTCP, ID: ipID}, b)
		}
		// through runs a packet through the engine, Outbound from the LAN
		// host and Inbound from the WAN. l.out and l.in check the
		// checksums and cached fields of what passes; through checks its
		// translation.
		through := func(k int, b []byte) Result {
			orig := bytes.Clone(b)
			var r Result
			var p *Packet
			want := VerdictToWAN
			if k == tcpInside {
				r, p = l.out(b)
			} else {
				r, p = l.in(b)
				want = VerdictToLAN
			}
			if r.Verdict == VerdictDrop {
				return r
			}
			if r.Verdict != want {
				t.Fatalf("verdict %s, want %s or drop", verdictName(r.Verdict), verdictName(want))
			}
			if k == tcpInside && ext == 0 {
				ext = p.SrcPort
			}
			wantSrc, wantDst := ap(wanAddr, ext), rem
			if k == tcpOutside {
				wantSrc, wantDst = rem, lan
			}
			if srcAP(p) != wantSrc || dstAP(p) != wantDst {
				t.Fatalf("%s: %v→%v, want %v→%v", verdictName(r.Verdict), srcAP(p), dstAP(p), wantSrc, wantDst)
			}
			got, sent := p.L4, orig[header.IPv4MinimumSize:]
			if len(got) != len(sent) || !bytes.Equal(got[4:16], sent[4:16]) || !bytes.Equal(got[18:], sent[18:]) {
				t.Fatalf("%s: TCP header or payload changed beyond ports and checksum:\n got %x\nsent %x", verdictName(r.Verdict), got, sent)
			}
			return r
		}
		// flow is the connection's live flow in the engine's table.
		flow := func() *Flow {
			fl := l.e.table.flows[flowKey{ProtoTCP, ext, endpoint{rem.Addr().As4(), rem.Port()}}]
			if ext == 0 || fl == nil || fl.dead || fl.expires <= l.e.now() {
				return nil
			}
			return fl
		}
		// established: the connection is established as far as the
		// endpoints know (the handshake crossed, or in pickup mode both
		// sides did): the engine holds it on the established timer.
		established := func() bool { return ep[0].passed && ep[1].passed }

		cv.handshake(func(k int, r rawSeg, what string) {
			if pickup {
				return
			}
			if v := through(k, packet(k, r)); v.Verdict == VerdictDrop {
				t.Fatalf("%s dropped (%v): %+v", what, v.Reason, r)
			}
			cv.crossed(k, r)
		})
		if fl := flow(); !pickup && (fl == nil || !fl.tcp.established() || !fl.assured) {
			t.Fatalf("flow not established and assured after the handshake: %+v", fl)
		}

		var ops int
		cross := func(s fzSeg) bool {
			k := s.from
			if k == tcpOutside && ext == 0 {
				// Pickup mode, the LAN host has not spoken: no mapping.
				if r := through(k, packet(k, s.raw)); r.Verdict != VerdictDrop || r.Reason != DropUnsolicited {
					t.Fatalf("the remote's segment before any mapping: %s %v, want unsolicited", verdictName(r.Verdict), r.Reason)
				}
				return false
			}
			stale := cv.stale(s)
			if r := through(k, packet(k, s.raw)); r.Verdict == VerdictDrop {
				if stale && r.Reason == DropTCPOutOfWindow {
					return false // conntrack's one drop: it does not reach the receiver
				}
				var tc tcpConn
				if fl := flow(); fl != nil {
					tc = fl.tcp
				}
				t.Fatalf("genuine segment dropped (%v, op %d): %+v\nfrom %+v\nto %+v\ntracker %+v", r.Reason, ops, s.raw, ep[k], ep[1-k], tc)
			}
			cv.crossed(k, s.raw)
			fl := flow()
			if fl == nil {
				t.Fatalf("no live flow after a genuine segment passed (op %d)", ops)
			}
			if established() && (!fl.tcp.established() || !fl.assured) {
				t.Fatalf("seen both ways but the flow is not established and assured: %+v", fl.tcp)
			}
			return true
		}

		// window reports a forged segment with one sequence number (a
		// FIN or a SYN) from the remote that falls within the windows the
		// endpoints advertised through the NAT, with generous bounds:
		// sequence number within twice the LAN host's largest window
		// below what the remote sent and one above, acknowledgement no
		// further than the remote may acknowledge late (twice its largest
		// window, at least conntrack's 66000) below what the LAN host
		// sent, and not beyond.
		window := func(seq, ackN uint32) bool {
			inWin, outWin := uint64(ep[0].passedWin), uint64(ep[1].passedWin)
			lo := ep[1].passedEnd - uint32(min(2*inWin+8, 1<<32-1))
			if uint64(seq-lo) > 3*inWin+16 {
				return false
			}
			below := max(2*outWin+8, tcpMaxAckWin)
			return below >= 1<<32 || uint64(ep[0].passedEnd-ackN) <= below
		}
		attack := func() {
			kind, seq, ackN := in.byte(), in.u32(), in.u32()
			flags := fzForged[int(kind)%len(fzForged)]
			if ext == 0 {
				return // no flow for it to reach yet
			}
			fl := flow()
			if fl == nil {
				t.Fatalf("the flow is gone before a forged segment (op %d, %v on the clock)", ops, l.clock.T.Sub(labEpoch))
			}
			before, expires := fl.tcp, fl.expires
			exact := before.peer[tcpOutside].end
			if !pickup && exact != ep[1].passedEnd {
				t.Fatalf("tracker's next outside sequence number %#x, the remote sent up to %#x", exact, ep[1].passedEnd)
			}
			raw := rawSeg{seq: seq, ack: ackN, flags: flags, win: uint16(kind) << 8, ws: -1}
			if flags&rst != 0 && seq == exact {
				return // the genuine rule: an RST there closes
			}
			if flags == finAck || flags == synAck {
				// A FIN or SYN-ACK in window, its acknowledgement too,
				// is taken as the remote's: excluded, once checked to be
				// in window indeed.
				trial := before
				if v := trial.segment(raw.bytes(), false, false); v == tcpAccept || v == tcpAcceptClose {
					if !pickup && !window(seq, ackN) {
						t.Fatalf("tracker takes a forged %v at seq %#x ack %#x outside the windows: remote sent to %#x, LAN host to %#x, largest windows %#x and %#x\ntracker %+v",
							flags, seq, ackN, ep[1].passedEnd, ep[0].passedEnd, ep[0].passedWin, ep[1].passedWin, before)
					}
					return
				}
			}
			r := through(tcpOutside, packet(tcpOutside, raw))
			switch after := flow(); {
			case after == nil:
				t.Fatalf("forged %v at seq %#x ack %#x (next %#x) ended the flow", flags, seq, ackN, exact)
			case after.tcp.state != tcpEstablished:
				t.Fatalf("forged %v at seq %#x ack %#x (next %#x) moved the connection to %v", flags, seq, ackN, exact, after.tcp.state)
			case after.tcp != before:
				t.Fatalf("forged %v at seq %#x ack %#x (%s %v) changed the tracker:\n%+v\n%+v", flags, seq, ackN, verdictName(r.Verdict), r.Reason, before, after.tcp)
			case after.expires != expires:
				t.Fatalf("forged %v at seq %#x ack %#x (%s) refreshed the flow's timer", flags, seq, ackN, verdictName(r.Verdict))
			case r.Verdict == VerdictDrop && r.Reason != DropTCPOutOfWindow:
				t.Fatalf("forged %v dropped as %v, want %v", flags, r.Reason, DropTCPOutOfWindow)
			case flags == syn && r.Verdict != VerdictDrop:
				t.Fatalf("forged SYN at seq %#x passed on a synchronised connection", seq)
			}
		}

		var elapsed time.Duration
		for ; len(in.b) > 0 && ops < 2000; ops++ {
			switch cv.step(cross) & 0x7f % 11 {
			case 8, 9:
				attack()
			case 10:
				// At most 2000 × 2.55 s: well within the established
				// timeout, whatever the traffic. A connection not yet
				// established (pickup) is on the transitory timer.
				d := time.Duration(in.byte()) * 10 * time.Millisecond
				if established() {
					l.clock.Advance(d)
					elapsed += d
				}
				l.e.Expire()
			}
		}

		if !established() {
			return // picked up one way at most: on the transitory timer
		}
		check := func(when string) {
			if n := l.e.Stats().Flows; n != 1 {
				t.Fatalf("%s: %d flows, want the connection's", when, n)
			}
			m, ok := l.mapping("tcp", lan)
			if !ok || m.WAN != ap(wanAddr, ext) || m.Flows != 1 {
				t.Fatalf("%s: mapping %+v (present %v), want %v with one flow", when, m, ok, ap(wanAddr, ext))
			}
		}
		check("after the conversation")
		l.advance(fzTransitory + time.Second)
		check("after the transitory timeout")
		for _, k := range []int{tcpOutside, tcpInside} {
			r := cv.ackOf(k, ack, ep[k].sndNxt, 0)
			if v := through(k, packet(k, r)); v.Verdict == VerdictDrop {
				var tc tcpConn
				if fl := flow(); fl != nil {
					tc = fl.tcp
				}
				t.Fatalf("genuine ACK dropped (%v) %v after the conversation: %+v\ntracker %+v", v.Reason, elapsed+fzTransitory+time.Second, r, tc)
			}
		}
	})
}
