package nat

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

const (
	syn    = header.TCPFlagSyn
	ack    = header.TCPFlagAck
	fin    = header.TCPFlagFin
	rst    = header.TCPFlagRst
	synAck = header.TCPFlagSyn | header.TCPFlagAck
	finAck = header.TCPFlagFin | header.TCPFlagAck
)

// tcpSession drives one TCP connection from lanA:40000 to remote1:443 through
// a lab.
type tcpSession struct {
	l   *lab
	lan netip.AddrPort
	rem netip.AddrPort
	ext uint16
}

func openTCP(l *lab) *tcpSession {
	c := &tcpSession{l: l, lan: ap(lanA, 40000), rem: ap(remote1, 443)}
	c.ext = l.mustOut(tcpPkt(c.lan, c.rem, syn), VerdictToWAN).SrcPort
	return c
}

func (c *tcpSession) out(flags header.TCPFlags) Result {
	c.l.t.Helper()
	r, p := c.l.out(tcpPkt(c.lan, c.rem, flags))
	if r.Verdict == VerdictToWAN && srcAP(p) != ap(wanAddr, c.ext) {
		c.l.t.Fatalf("outbound left as %v, want %v", srcAP(p), ap(wanAddr, c.ext))
	}
	return r
}

func (c *tcpSession) in(flags header.TCPFlags) Result {
	c.l.t.Helper()
	r, p := c.l.in(tcpPkt(c.rem, ap(wanAddr, c.ext), flags))
	if r.Verdict == VerdictToLAN && dstAP(p) != c.lan {
		c.l.t.Fatalf("inbound delivered to %v, want %v", dstAP(p), c.lan)
	}
	return r
}

func TestTCPMasquerade(t *testing.T) {
	t.Run("three-way handshake and data pass both ways", func(t *testing.T) {
		l := newLab(t, Config{})
		c := openTCP(l)
		for i, step := range []struct {
			outbound bool
			flags    header.TCPFlags
		}{{false, synAck}, {true, ack}, {true, ack | header.TCPFlagPsh}, {false, ack}} {
			var r Result
			if step.outbound {
				r = c.out(step.flags)
			} else {
				r = c.in(step.flags)
			}
			if r.Verdict == VerdictDrop {
				t.Fatalf("step %d (%v) dropped: %v", i, step.flags, r.Reason)
			}
		}
	})
	t.Run("segments with tcp options and payload keep valid checksums", func(t *testing.T) {
		l := newLab(t, Config{})
		c := openTCP(l)
		c.in(synAck)
		p := l.mustOut(tcpDataPkt(c.lan, c.rem, ack|header.TCPFlagPsh, "GET / HTTP/1.1\r\n\r\n"), VerdictToWAN)
		if string(header.TCP(p.L4).Payload()) != "GET / HTTP/1.1\r\n\r\n" {
			t.Errorf("payload changed")
		}
		l.mustIn(tcpDataPkt(c.rem, ap(wanAddr, c.ext), ack, "HTTP/1.1 200 OK\r\n\r\n"), VerdictToLAN)
	})
	t.Run("unsolicited SYN is dropped", func(t *testing.T) {
		l := newLab(t, Config{})
		r, _ := l.in(tcpPkt(ap(remote1, 5555), ap(wanAddr, 20000), syn))
		wantDrop(t, r, DropUnsolicited)
	})
	t.Run("unsolicited SYN to a mapped port from another remote is dropped", func(t *testing.T) {
		l := newLab(t, Config{})
		c := openTCP(l)
		r, _ := l.in(tcpPkt(ap(remote2, 443), ap(wanAddr, c.ext), syn))
		wantDrop(t, r, DropUnsolicited)
	})
	t.Run("inbound segment of an unknown connection is dropped", func(t *testing.T) {
		l := newLab(t, Config{})
		c := openTCP(l)
		r, _ := l.in(tcpPkt(ap(remote1, 444), ap(wanAddr, c.ext), ack))
		wantDrop(t, r, DropUnsolicited)
	})
	t.Run("endpoint-independent mapping: a second connection reuses the external port", func(t *testing.T) {
		l := newLab(t, Config{})
		c := openTCP(l)
		p := l.mustOut(tcpPkt(c.lan, ap(remote2, 80), syn), VerdictToWAN)
		if p.SrcPort != c.ext {
			t.Errorf("second connection on port %d, first on %d", p.SrcPort, c.ext)
		}
	})
	t.Run("simultaneous open is accepted", func(t *testing.T) {
		l := newLab(t, Config{})
		c := openTCP(l)
		if r := c.in(syn); r.Verdict != VerdictToLAN {
			t.Fatalf("inbound SYN of a simultaneous open dropped: %v", r.Reason)
		}
		if r := c.out(synAck); r.Verdict != VerdictToWAN {
			t.Fatalf("SYN-ACK dropped: %v", r.Reason)
		}
	})
}

// TestTCPTimers drives a connection into a state and checks which timer
// then applies, to the nanosecond.
func TestTCPTimers(t *testing.T) {
	const established = 2*time.Hour + 4*time.Minute
	const transitory = 4 * time.Minute
	tests := []struct {
		name  string
		steps []string // "o:FLAGS" outbound, "i:FLAGS" inbound, after the opening SYN
		want  time.Duration
	}{
		{"tcp SYN only is on the transitory timer of 4m", nil, transitory},
		{"tcp established timer is 2h4m after the handshake", []string{"i:SA", "o:A"}, established},
		{"tcp RST moves to the transitory timer", []string{"i:SA", "o:A", "o:R"}, transitory},
		{"tcp RST from the remote moves to the transitory timer", []string{"i:SA", "o:A", "i:R"}, transitory},
		{"tcp FIN from the lan moves to the transitory timer", []string{"i:SA", "o:A", "o:FA"}, transitory},
		{"tcp FIN from the remote moves to the transitory timer", []string{"i:SA", "o:A", "i:FA"}, transitory},
		{"a new SYN after RST starts over on the transitory timer", []string{"i:SA", "o:R", "o:S"}, transitory},
		{"a handshake without its third ACK stays on the transitory timer", []string{"i:SA"}, transitory},
		{"a new handshake after RST is established again", []string{"i:SA", "o:R", "o:S", "i:SA", "o:A"}, established},
	}
	flagsOf := map[string]header.TCPFlags{"S": syn, "SA": synAck, "A": ack, "R": rst, "FA": finAck}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, Config{})
			c := openTCP(l)
			for _, s := range tc.steps {
				var r Result
				if s[0] == 'o' {
					r = c.out(flagsOf[s[2:]])
				} else {
					r = c.in(flagsOf[s[2:]])
				}
				if r.Verdict == VerdictDrop {
					t.Fatalf("step %s dropped: %v", s, r.Reason)
				}
			}
			l.advance(tc.want - time.Nanosecond)
			if _, ok := l.mapping("tcp", c.lan); !ok {
				t.Fatalf("mapping gone before %v", tc.want)
			}
			if r := c.in(ack); r.Verdict != VerdictToLAN {
				t.Fatalf("segment 1 ns before the %v timer ran out dropped: %v", tc.want, r.Reason)
			}
			// That segment refreshed the flow; let the same timer run out
			// again, then check that it is gone.
			l.advance(tc.want)
			if _, ok := l.mapping("tcp", c.lan); ok {
				t.Fatalf("mapping still present after %v idle", tc.want)
			}
			wantDrop(t, c.in(ack), DropUnsolicited)
		})
	}
	t.Run("a connection picked up mid-stream is on the transitory timer until seen both ways", func(t *testing.T) {
		l := newLab(t, Config{})
		lan, rem := ap(lanA, 40001), ap(remote1, 22)
		ext := l.mustOut(tcpPkt(lan, rem, ack), VerdictToWAN).SrcPort
		l.advance(4 * time.Minute)
		r, _ := l.in(tcpPkt(rem, ap(wanAddr, ext), ack))
		wantDrop(t, r, DropUnsolicited)
	})
	t.Run("a connection picked up mid-stream and seen both ways is established", func(t *testing.T) {
		l := newLab(t, Config{})
		lan, rem := ap(lanA, 40001), ap(remote1, 22)
		ext := l.mustOut(tcpPkt(lan, rem, ack), VerdictToWAN).SrcPort
		l.mustIn(tcpPkt(rem, ap(wanAddr, ext), ack), VerdictToLAN)
		l.advance(2*time.Hour + 3*time.Minute)
		l.mustIn(tcpPkt(rem, ap(wanAddr, ext), ack), VerdictToLAN)
	})
	t.Run("configured tcp timers replace the defaults", func(t *testing.T) {
		l := newLab(t, Config{TCPEstablishedTimeout: time.Hour, TCPTransitoryTimeout: time.Minute})
		c := openTCP(l)
		l.advance(time.Minute)
		if _, ok := l.mapping("tcp", c.lan); ok {
			t.Fatal("half-open connection outlived the 1 min transitory timer")
		}
		c = openTCP(l)
		c.in(synAck)
		c.out(ack)
		l.advance(time.Hour - time.Nanosecond)
		if _, ok := l.mapping("tcp", c.lan); !ok {
			t.Fatal("established connection gone before 1 h")
		}
		l.advance(time.Nanosecond)
		if _, ok := l.mapping("tcp", c.lan); ok {
			t.Fatal("established connection outlived the 1 h timer")
		}
	})
}

func TestTCPPortForward(t *testing.T) {
	fwd := Forward{Proto: ProtoTCP, Ports: PortRange{First: 8080, Last: 8082}, To: lanB, ToPort: 80}
	t.Run("port forward reaches the internal host and its replies leave with the external port", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{fwd}})
		client := ap(remote1, 50000)
		p := l.mustIn(tcpPkt(client, ap(wanAddr, 8081), syn), VerdictToLAN)
		if dstAP(p) != ap(lanB, 81) || srcAP(p) != client {
			t.Fatalf("forwarded %v→%v, want %v→%v", srcAP(p), dstAP(p), client, ap(lanB, 81))
		}
		r := l.mustOut(tcpPkt(ap(lanB, 81), client, synAck), VerdictToWAN)
		if srcAP(r) != ap(wanAddr, 8081) || dstAP(r) != client {
			t.Fatalf("reply left as %v→%v, want %v→%v", srcAP(r), dstAP(r), ap(wanAddr, 8081), client)
		}
		l.mustIn(tcpPkt(client, ap(wanAddr, 8081), ack), VerdictToLAN)
	})
	t.Run("forward without a target port keeps the external port", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{{Proto: ProtoTCP, Ports: PortRange{First: 22, Last: 22}, To: lanB}}})
		p := l.mustIn(tcpPkt(ap(remote1, 50000), ap(wanAddr, 22), syn), VerdictToLAN)
		if dstAP(p) != ap(lanB, 22) {
			t.Errorf("forwarded to %v", dstAP(p))
		}
	})
	t.Run("a forward accepts a new connection only with a SYN", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{fwd}})
		for _, flags := range []header.TCPFlags{ack, synAck, rst, finAck} {
			r, _ := l.in(tcpPkt(ap(remote1, 50000), ap(wanAddr, 8080), flags))
			wantDrop(t, r, DropUnsolicited)
		}
	})
	t.Run("forwarded ports are never handed out to other lan hosts", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 8080, Last: 8083}, Forwards: []Forward{fwd}})
		p := l.mustOut(tcpPkt(ap(lanA, 8081), ap(remote1, 443), syn), VerdictToWAN)
		if p.SrcPort != 8083 {
			t.Fatalf("lan host got external port %d, want the only free one, 8083", p.SrcPort)
		}
		r, _ := l.out(tcpPkt(ap(lanA, 8082), ap(remote1, 443), syn))
		wantDrop(t, r, DropNoPorts)
	})
	t.Run("a forward outside the dynamic range does not cost the range a port", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 20001},
			Forwards: []Forward{{Proto: ProtoTCP, Ports: PortRange{First: 80, Last: 80}, To: lanB}}})
		for _, sport := range []uint16{1000, 1001} {
			l.mustOut(tcpPkt(ap(lanA, sport), ap(remote1, 443), syn), VerdictToWAN)
		}
	})
	t.Run("a forwarded connection expires but the forward stays", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{fwd}})
		l.mustIn(tcpPkt(ap(remote1, 50000), ap(wanAddr, 8080), syn), VerdictToLAN)
		if _, ok := l.mapping("tcp", ap(lanB, 80)); !ok {
			t.Fatal("active forward missing from Mappings")
		}
		l.advance(4 * time.Minute)
		if _, ok := l.mapping("tcp", ap(lanB, 80)); ok {
			t.Fatal("idle forward still listed in Mappings")
		}
		l.mustIn(tcpPkt(ap(remote2, 50000), ap(wanAddr, 8080), syn), VerdictToLAN)
	})
}

func TestHairpin(t *testing.T) {
	t.Run("hairpin: LAN host reaches a forwarded port on the WAN address and sees the masqueraded source", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{{Proto: ProtoTCP, Ports: PortRange{First: 8080, Last: 8080}, To: lanB, ToPort: 80}}})
		p := l.mustOut(tcpPkt(ap(lanA, 40000), ap(wanAddr, 8080), syn), VerdictToLAN)
		if p.SrcAddr() != wanAddr || dstAP(p) != ap(lanB, 80) {
			t.Fatalf("hairpinned SYN %v→%v, want from %v to %v", srcAP(p), dstAP(p), wanAddr, ap(lanB, 80))
		}
		ext := p.SrcPort
		// The server answers the masqueraded source; the reply comes back
		// around to the client, seemingly from the forwarded port.
		r := l.mustOut(tcpPkt(ap(lanB, 80), ap(wanAddr, ext), synAck), VerdictToLAN)
		if srcAP(r) != ap(wanAddr, 8080) || dstAP(r) != ap(lanA, 40000) {
			t.Fatalf("hairpinned reply %v→%v, want %v→%v", srcAP(r), dstAP(r), ap(wanAddr, 8080), ap(lanA, 40000))
		}
		l.mustOut(tcpPkt(ap(lanA, 40000), ap(wanAddr, 8080), ack), VerdictToLAN)
	})
	t.Run("hairpin: an icmp error from the server reaches the hairpinned client", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{{Proto: ProtoUDP, Ports: PortRange{First: 5353, Last: 5353}, To: lanB}}})
		p := l.mustOut(udpPkt(ap(lanA, 5000), ap(wanAddr, 5353), "query"), VerdictToLAN)
		ext := p.SrcPort
		e := l.mustOut(portUnreachable(lanB, wanAddr, p.Buf), VerdictToLAN)
		if e.SrcAddr() != wanAddr || e.DstAddr() != lanA {
			t.Fatalf("error %v→%v, want %v→%v", e.SrcAddr(), e.DstAddr(), wanAddr, lanA)
		}
		if q := quotedIn(t, e.L4); q.src != ap(lanA, 5000) || q.dst != ap(wanAddr, 5353) {
			t.Errorf("embedded %v→%v, want %v→%v (client's external port %d)", q.src, q.dst, ap(lanA, 5000), ap(wanAddr, 5353), ext)
		}
		if err := validateEmbeddedTransport(e.L4[header.ICMPv4MinimumSize:]); err != nil {
			t.Errorf("embedded packet: %v", err)
		}
	})
	t.Run("hairpin: udp between two lan hosts through their external endpoints", func(t *testing.T) {
		l := newLab(t, Config{UDPFiltering: EndpointIndependentFiltering})
		extB := l.mustOut(udpPkt(ap(lanB, 6000), ap(remote1, 3478), "stun"), VerdictToWAN).SrcPort
		p := l.mustOut(udpPkt(ap(lanA, 5000), ap(wanAddr, extB), "hello"), VerdictToLAN)
		if dstAP(p) != ap(lanB, 6000) || p.SrcAddr() != wanAddr {
			t.Fatalf("hairpinned %v→%v", srcAP(p), dstAP(p))
		}
	})
	t.Run("lan host to a wan address port nobody owns is dropped", func(t *testing.T) {
		l := newLab(t, Config{})
		r, _ := l.out(udpPkt(ap(lanA, 5000), ap(wanAddr, 9), "discard"))
		if r.Verdict != VerdictDrop {
			t.Fatalf("verdict %s", verdictName(r.Verdict))
		}
	})
	t.Run("lan host pinging the wan address is not hairpinned", func(t *testing.T) {
		l := newLab(t, Config{})
		r, _ := l.out(echoPkt(header.ICMPv4Echo, lanA, wanAddr, 7, 1))
		wantDrop(t, r, DropLANtoWANAddr)
	})
}

// tcpSegPkt is a TCP segment with explicit sequence and acknowledgement
// numbers, for the tests that play both endpoints exactly.
func tcpSegPkt(src, dst netip.AddrPort, flags header.TCPFlags, seq, ackN uint32, payload string) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: ProtoTCP, ID: 0x5555},
		testpacket.TCP(testpacket.TCPHeader{Src: src, Dst: dst, Seq: seq, Ack: ackN, Flags: flags, Window: 65000}, []byte(payload)))
}

// seqConn is an established connection lanA:40000 → remote1:443 whose
// sequence numbers the test knows: the inside's next is lan, the outside's
// next is rem.
type seqConn struct {
	l        *lab
	ext      uint16
	lan, rem uint32
}

func establish(l *lab) *seqConn {
	c := &seqConn{l: l, lan: 0x10000000, rem: 0x80000000}
	lan, rem := ap(lanA, 40000), ap(remote1, 443)
	c.ext = l.mustOut(tcpSegPkt(lan, rem, syn, c.lan-1, 0, ""), VerdictToWAN).SrcPort
	l.mustIn(tcpSegPkt(rem, ap(wanAddr, c.ext), synAck, c.rem-1, c.lan, ""), VerdictToLAN)
	l.mustOut(tcpSegPkt(lan, rem, ack, c.lan, c.rem, ""), VerdictToWAN)
	c.fromLAN("GET / HTTP/1.1\r\n\r\n")
	c.fromWAN("HTTP/1.1 200 OK\r\n\r\n")
	return c
}

func (c *seqConn) fromLAN(data string) {
	c.l.t.Helper()
	c.l.mustOut(tcpSegPkt(ap(lanA, 40000), ap(remote1, 443), ack|header.TCPFlagPsh, c.lan, c.rem, data), VerdictToWAN)
	c.lan += uint32(len(data))
}

func (c *seqConn) fromWAN(data string) {
	c.l.t.Helper()
	c.l.mustIn(tcpSegPkt(ap(remote1, 443), ap(wanAddr, c.ext), ack|header.TCPFlagPsh, c.rem, c.lan, data), VerdictToLAN)
	c.rem += uint32(len(data))
}

// forge sends a segment from the remote's address and port with the given
// numbers, as an off-path attacker can.
func (c *seqConn) forge(flags header.TCPFlags, seq, ackN uint32) Result {
	c.l.t.Helper()
	r, _ := c.l.in(tcpSegPkt(ap(remote1, 443), ap(wanAddr, c.ext), flags, seq, ackN, ""))
	return r
}

// carriesTrafficAfterTransitory lets the transitory timer (and a minute
// more) run out, then has the WAN side speak first: on an established flow
// the segment reaches the LAN host.
func (c *seqConn) carriesTrafficAfterTransitory() Result {
	c.l.advance(5 * time.Minute)
	r, _ := c.l.in(tcpSegPkt(ap(remote1, 443), ap(wanAddr, c.ext), ack|header.TCPFlagPsh, c.rem, c.lan, "still here"))
	return r
}

// TestTCPBlindAttacks plays an off-path attacker on the WAN who knows the
// connection's addresses and ports but not its sequence numbers. Each attack
// has a control: the same exchange with the genuine segment instead, which
// must end the flow, so each test can fail.
func TestTCPBlindAttacks(t *testing.T) {
	const tries = 10000
	t.Run("blind RSTs with random sequence numbers leave an established flow on the established timer", func(t *testing.T) {
		l := newLab(t, Config{})
		c := establish(l)
		rng := rand.New(rand.NewPCG(1, 2))
		for range tries {
			seq := rng.Uint32()
			if seq == c.rem {
				continue // the one value the attacker must guess
			}
			flags := rst
			if rng.IntN(2) == 0 {
				flags |= ack
			}
			if r := c.forge(flags, seq, rng.Uint32()); r.Verdict == VerdictToLAN && seq-c.rem > 1<<20 && c.rem-seq > 1<<20 {
				t.Fatalf("RST with seq %#x, far from the window at %#x, passed", seq, c.rem)
			}
		}
		if r := c.carriesTrafficAfterTransitory(); r.Verdict != VerdictToLAN {
			t.Fatalf("after %d blind RSTs the flow is gone: %s %v", tries, verdictName(r.Verdict), r.Reason)
		}
		if n := l.e.Drops.Get(DropTCPOutOfWindow); n == 0 {
			t.Errorf("no blind RST counted as tcp_out_of_window")
		}
	})
	t.Run("control: the genuine RST at the exact sequence number closes the flow", func(t *testing.T) {
		l := newLab(t, Config{})
		c := establish(l)
		if r := c.forge(rst, c.rem, 0); r.Verdict != VerdictToLAN {
			t.Fatalf("genuine RST dropped: %v", r.Reason)
		}
		r := c.carriesTrafficAfterTransitory()
		wantDrop(t, r, DropUnsolicited)
	})
	t.Run("an in-window RST that is not exact passes to the host but does not close the flow", func(t *testing.T) {
		l := newLab(t, Config{})
		c := establish(l)
		if r := c.forge(rst, c.rem+1000, 0); r.Verdict != VerdictToLAN {
			t.Fatalf("in-window RST dropped (%v): the endpoint must see it to send its challenge ACK", r.Reason)
		}
		if r := c.carriesTrafficAfterTransitory(); r.Verdict != VerdictToLAN {
			t.Fatalf("in-window RST closed the flow: %s %v", verdictName(r.Verdict), r.Reason)
		}
	})
	t.Run("blind FINs with random numbers leave an established flow on the established timer", func(t *testing.T) {
		l := newLab(t, Config{})
		c := establish(l)
		rng := rand.New(rand.NewPCG(3, 4))
		for range tries {
			seq, ackN := rng.Uint32(), rng.Uint32()
			if ackN == c.lan {
				continue
			}
			c.forge(finAck, seq, ackN)
		}
		if r := c.carriesTrafficAfterTransitory(); r.Verdict != VerdictToLAN {
			t.Fatalf("after %d blind FINs the flow is gone: %s %v", tries, verdictName(r.Verdict), r.Reason)
		}
	})
	t.Run("control: the genuine FIN moves the flow to the transitory timer", func(t *testing.T) {
		l := newLab(t, Config{})
		c := establish(l)
		if r := c.forge(finAck, c.rem, c.lan); r.Verdict != VerdictToLAN {
			t.Fatalf("genuine FIN dropped: %v", r.Reason)
		}
		wantDrop(t, c.carriesTrafficAfterTransitory(), DropUnsolicited)
	})
	t.Run("a forged SYN from the WAN on an established connection is dropped and counted", func(t *testing.T) {
		l := newLab(t, Config{})
		c := establish(l)
		before := l.e.Drops.Get(DropTCPOutOfWindow)
		wantDrop(t, c.forge(syn, 0x12345678, 0), DropTCPOutOfWindow)
		if got := l.e.Drops.Get(DropTCPOutOfWindow) - before; got != 1 {
			t.Errorf("tcp_out_of_window counted %d times, want 1", got)
		}
		c.fromWAN("more")
		c.fromLAN("more")
		if r := c.carriesTrafficAfterTransitory(); r.Verdict != VerdictToLAN {
			t.Fatalf("flow gone after the forged SYN: %s %v", verdictName(r.Verdict), r.Reason)
		}
	})
	t.Run("control: the same SYN after the connection was reset opens a new one", func(t *testing.T) {
		l := newLab(t, Config{})
		c := establish(l)
		c.forge(rst, c.rem, 0)
		if r := c.forge(syn, 0x12345678, 0); r.Verdict != VerdictToLAN {
			t.Fatalf("SYN reusing a reset connection's tuple dropped: %v", r.Reason)
		}
	})
	t.Run("out-of-window data from the WAN is dropped and does not refresh the flow", func(t *testing.T) {
		l := newLab(t, Config{TCPEstablishedTimeout: 10 * time.Minute})
		c := establish(l)
		l.advance(9 * time.Minute)
		wantDrop(t, c.forge(ack, c.rem+0x40000000, c.lan), DropTCPOutOfWindow)
		l.advance(time.Minute)
		r, _ := l.in(tcpSegPkt(ap(remote1, 443), ap(wanAddr, c.ext), ack, c.rem, c.lan, ""))
		wantDrop(t, r, DropUnsolicited)
	})
}

func TestTCPPortForwardTracking(t *testing.T) {
	fwd := Forward{Proto: ProtoTCP, Ports: PortRange{First: 8080, Last: 8080}, To: lanB, ToPort: 80}
	client := ap(remote1, 50000)
	t.Run("a port forward's SYN the inside does not answer lives on the unreplied timer", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{fwd}})
		l.mustIn(tcpSegPkt(client, ap(wanAddr, 8080), syn, 5000, 0, ""), VerdictToLAN)
		l.advance(30 * time.Second)
		if _, ok := l.mapping("tcp", ap(lanB, 80)); ok {
			t.Fatal("unanswered forwarded connection outlived the 30 s unreplied timer")
		}
	})
	t.Run("a port forward's connection the inside answers is on the transitory timer, then established", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{fwd}})
		l.mustIn(tcpSegPkt(client, ap(wanAddr, 8080), syn, 5000, 0, ""), VerdictToLAN)
		l.mustOut(tcpSegPkt(ap(lanB, 80), client, synAck, 9000, 5001, ""), VerdictToWAN)
		l.advance(time.Minute)
		l.mustIn(tcpSegPkt(client, ap(wanAddr, 8080), ack, 5001, 9001, ""), VerdictToLAN)
		l.advance(2*time.Hour + 3*time.Minute)
		l.mustOut(tcpSegPkt(ap(lanB, 80), client, ack, 9001, 5001, "hello"), VerdictToWAN)
	})
	t.Run("a forged third ACK from the WAN does not establish a forwarded connection", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{fwd}})
		l.mustIn(tcpSegPkt(client, ap(wanAddr, 8080), syn, 5000, 0, ""), VerdictToLAN)
		l.mustOut(tcpSegPkt(ap(lanB, 80), client, synAck, 9000, 5001, ""), VerdictToWAN)
		r, _ := l.in(tcpSegPkt(client, ap(wanAddr, 8080), ack, 5001, 9000+0x10000000, ""))
		wantDrop(t, r, DropTCPOutOfWindow)
		l.advance(4 * time.Minute)
		if _, ok := l.mapping("tcp", ap(lanB, 80)); ok {
			t.Fatal("half-open forwarded connection outlived the transitory timer")
		}
	})
}

// TestTCPAssured checks the flow's assured mark, which decides eviction.
func TestTCPAssured(t *testing.T) {
	flowOf := func(l *lab, c *seqConn) *Flow {
		return l.e.table.flows[flowKey{ProtoTCP, c.ext, endpoint{remote1.As4(), 443}}]
	}
	t.Run("a flow is assured after the handshake and not once it closes", func(t *testing.T) {
		l := newLab(t, Config{})
		c := establish(l)
		f := flowOf(l, c)
		if !f.assured {
			t.Fatal("established flow not assured")
		}
		c.l.mustIn(tcpSegPkt(ap(remote1, 443), ap(wanAddr, c.ext), finAck, c.rem, c.lan, ""), VerdictToLAN)
		if f.assured {
			t.Fatal("closing flow still assured")
		}
	})
	t.Run("a flow is not assured before the third ACK", func(t *testing.T) {
		l := newLab(t, Config{})
		lan, rem := ap(lanA, 40000), ap(remote1, 443)
		ext := l.mustOut(tcpSegPkt(lan, rem, syn, 99, 0, ""), VerdictToWAN).SrcPort
		l.mustIn(tcpSegPkt(rem, ap(wanAddr, ext), synAck, 7, 100, ""), VerdictToLAN)
		f := l.e.table.flows[flowKey{ProtoTCP, ext, endpoint{remote1.As4(), 443}}]
		if f.assured {
			t.Fatal("half-open flow assured")
		}
		l.mustOut(tcpSegPkt(lan, rem, ack, 100, 8, ""), VerdictToWAN)
		if !f.assured {
			t.Fatal("flow not assured after the third ACK")
		}
	})
}

func TestTCPTrackerAndPPTPCalls(t *testing.T) {
	client, server := ap(lanA, 40000), ap(remote1, PortPPTP)
	// open runs a PPTP control connection's handshake and an
	// Outgoing-Call-Request; it returns the external port and both sides'
	// next sequence numbers.
	open := func(l *lab) (ext uint16, cseq, sseq uint32) {
		cseq, sseq = 1000, 900000
		ext = l.mustOut(tcpSegPkt(client, server, syn, cseq-1, 0, ""), VerdictToWAN).SrcPort
		l.mustIn(tcpSegPkt(server, ap(wanAddr, ext), synAck, sseq-1, cseq, ""), VerdictToLAN)
		l.mustOut(tcpSegPkt(client, server, ack, cseq, sseq, ""), VerdictToWAN)
		ocrq := string(pptpMsg(PPTPOutgoingCallRequest, 1, 0))
		l.mustOut(tcpSegPkt(client, server, ack|header.TCPFlagPsh, cseq, sseq, ocrq), VerdictToWAN)
		return ext, cseq + uint32(len(ocrq)), sseq
	}
	callState := func(l *lab) string {
		for _, c := range l.e.PPTPCalls() {
			if c.CallID == 1 {
				return c.State + "/" + c.Connection
			}
		}
		return "none"
	}
	t.Run("an in-window RST that is not exact ends no PPTP call", func(t *testing.T) {
		l := newLab(t, Config{})
		ext, _, sseq := open(l)
		l.mustIn(tcpSegPkt(server, ap(wanAddr, ext), rst, sseq+10, 0, ""), VerdictToLAN)
		if got := callState(l); got != "setup/open" {
			t.Fatalf("call %s after an inexact RST, want setup/open", got)
		}
	})
	t.Run("an out-of-window FIN ends no PPTP call", func(t *testing.T) {
		l := newLab(t, Config{})
		ext, cseq, sseq := open(l)
		l.mustOut(tcpSegPkt(client, server, finAck, cseq, sseq, ""), VerdictToWAN)
		r, _ := l.in(tcpSegPkt(server, ap(wanAddr, ext), finAck, sseq+0x40000000, cseq+1, ""))
		wantDrop(t, r, DropTCPOutOfWindow)
		if got := callState(l); got != "setup/open" {
			t.Fatalf("call %s after an out-of-window FIN, want setup/open", got)
		}
	})
	t.Run("control: the exact RST ends the connection's calls", func(t *testing.T) {
		l := newLab(t, Config{})
		ext, _, sseq := open(l)
		l.mustIn(tcpSegPkt(server, ap(wanAddr, ext), rst, sseq, 0, ""), VerdictToLAN)
		if got := callState(l); got != "ending/closed" {
			t.Fatalf("call %s after the exact RST, want ending/closed", got)
		}
	})
	t.Run("control: both FINs end the connection's calls", func(t *testing.T) {
		l := newLab(t, Config{})
		ext, cseq, sseq := open(l)
		l.mustOut(tcpSegPkt(client, server, finAck, cseq, sseq, ""), VerdictToWAN)
		l.mustIn(tcpSegPkt(server, ap(wanAddr, ext), finAck, sseq, cseq+1, ""), VerdictToLAN)
		if got := callState(l); got != "ending/closed" {
			t.Fatalf("call %s after both FINs, want ending/closed", got)
		}
	})
}

func TestTCPReopen(t *testing.T) {
	lan, rem := ap(lanA, 40000), ap(remote1, 443)
	t.Run("a LAN host re-opening an established tuple is tracked anew once the remote's SYN-ACK acknowledges it", func(t *testing.T) {
		l := newLab(t, Config{})
		c := establish(l)
		l.mustOut(tcpSegPkt(lan, rem, syn, 0x55550000, 0, ""), VerdictToWAN)
		l.mustIn(tcpSegPkt(rem, ap(wanAddr, c.ext), synAck, 0x66660000, 0x55550001, ""), VerdictToLAN)
		l.mustOut(tcpSegPkt(lan, rem, ack, 0x55550001, 0x66660001, "new"), VerdictToWAN)
		// The new numbers are tracked, the old ones are gone.
		l.mustIn(tcpSegPkt(rem, ap(wanAddr, c.ext), ack, 0x66660001, 0x55550004, ""), VerdictToLAN)
		r, _ := l.in(tcpSegPkt(rem, ap(wanAddr, c.ext), ack, c.rem, c.lan, "old"))
		wantDrop(t, r, DropTCPOutOfWindow)
	})
	t.Run("control: a SYN-ACK for another SYN does not restart the tracking", func(t *testing.T) {
		l := newLab(t, Config{})
		c := establish(l)
		l.mustOut(tcpSegPkt(lan, rem, syn, 0x55550000, 0, ""), VerdictToWAN)
		r, _ := l.in(tcpSegPkt(rem, ap(wanAddr, c.ext), synAck, 0x66660000, 0x55550002, ""))
		wantDrop(t, r, DropTCPOutOfWindow)
		c.fromWAN("old numbers still work")
	})
	t.Run("the remote's challenge ACK and the LAN host's RST answering it reset the tuple for a new SYN", func(t *testing.T) {
		l := newLab(t, Config{})
		c := establish(l)
		l.mustOut(tcpSegPkt(lan, rem, syn, 0x55550000, 0, ""), VerdictToWAN)
		// RFC 5961 section 4: the remote, still established, answers
		// the SYN with an ACK of the old connection; the LAN host, which
		// lost it, resets it at exactly that acknowledgement.
		l.mustIn(tcpSegPkt(rem, ap(wanAddr, c.ext), ack, c.rem, c.lan, ""), VerdictToLAN)
		l.mustOut(tcpSegPkt(lan, rem, rst, c.lan, 0, ""), VerdictToWAN)
		l.mustOut(tcpSegPkt(lan, rem, syn, 0x55550000, 0, ""), VerdictToWAN)
		l.mustIn(tcpSegPkt(rem, ap(wanAddr, c.ext), synAck, 0x66660000, 0x55550001, ""), VerdictToLAN)
		l.mustOut(tcpSegPkt(lan, rem, ack, 0x55550001, 0x66660001, ""), VerdictToWAN)
		l.advance(2*time.Hour + 3*time.Minute)
		l.mustIn(tcpSegPkt(rem, ap(wanAddr, c.ext), ack, 0x66660001, 0x55550001, "established again"), VerdictToLAN)
	})
}
