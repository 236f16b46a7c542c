package nat

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// FuzzParse feeds arbitrary bytes to Packet.Parse: it must never panic, and
// whatever it accepts must be described by its fields exactly.
func FuzzParse(f *testing.F) {
	udp := udpPkt(ap(lanA, 5000), ap(remote1, 53), "query")
	first, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 53), 1), 32)
	for _, seed := range [][]byte{
		udp,
		tcpPkt(ap(lanA, 40000), ap(remote1, 443), syn),
		tcpDataPkt(ap(remote1, 443), ap(wanAddr, 20000), ack, "data"),
		echoPkt(header.ICMPv4Echo, lanA, remote1, 7, 1),
		portUnreachable(remote1, wanAddr, udp),
		testpacket.IPv4(testpacket.IPv4Header{Src: lanA, Dst: remote1, Proto: ProtoUDP, OptWords: 10}, testpacket.UDP(ap(lanA, 1), ap(remote1, 2), nil)),
		testpacket.IPv4(testpacket.IPv4Header{Src: remote1, Dst: wanAddr, Proto: ProtoGRE}, make([]byte, 8)),
		first, tail,
		append(append([]byte(nil), udp...), 0, 0, 0, 0),
		udp[:20],
		{0x45},
		nil,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := append([]byte(nil), b...)
		var p Packet
		r := p.Parse(b)
		if string(b) != string(orig) {
			t.Fatal("Parse modified its input")
		}
		if r != DropNone {
			switch r {
			case DropMalformed, DropNotIPv4, DropBadChecksum:
			default:
				t.Fatalf("Parse rejected with %v, not a parse reason", r)
			}
			return
		}
		if err := parsedConsistent(&p, b); err != nil {
			t.Fatal(err)
		}
		// Parsing the accepted bytes again gives the same packet.
		var again Packet
		if r := again.Parse(p.Buf); r != DropNone || !reflect.DeepEqual(again, p) {
			t.Fatalf("reparse: %v, %+v vs %+v", r, again, p)
		}
	})
}

// parsedConsistent checks every field of an accepted packet against the bytes.
func parsedConsistent(p *Packet, b []byte) error {
	if len(b) < header.IPv4MinimumSize || header.IPVersion(b) != 4 {
		return fmt.Errorf("accepted a non-IPv4 buffer")
	}
	ip := header.IPv4(b)
	tlen, hlen := int(ip.TotalLength()), int(ip.HeaderLength())
	if hlen < header.IPv4MinimumSize || hlen > tlen || tlen > len(b) {
		return fmt.Errorf("accepted IHL %d total length %d buffer %d", hlen, tlen, len(b))
	}
	if len(p.Buf) != tlen || &p.Buf[0] != &b[0] || len(p.IP) != tlen || &p.IP[0] != &b[0] {
		return fmt.Errorf("Buf/IP do not view the packet's %d bytes", tlen)
	}
	if !p.IP.IsChecksumValid() {
		return fmt.Errorf("accepted a bad header checksum")
	}
	if p.Proto != ip.Protocol() || p.Src != ip.SourceAddress().As4() || p.Dst != ip.DestinationAddress().As4() {
		return fmt.Errorf("proto/addresses disagree with the header")
	}
	if p.FragOffset != ip.FragmentOffset() || p.MoreFragments != ip.More() {
		return fmt.Errorf("fragment fields disagree with the header")
	}
	if p.FragOffset != 0 {
		if p.L4 != nil || p.SrcPort != 0 || p.DstPort != 0 || p.TCPFlags != 0 {
			return fmt.Errorf("non-first fragment has transport fields")
		}
		return nil
	}
	if len(p.L4) != tlen-hlen || (len(p.L4) > 0 && &p.L4[0] != &b[hlen]) {
		return fmt.Errorf("L4 is not the payload")
	}
	switch p.Proto {
	case ProtoTCP:
		tcp := header.TCP(p.L4)
		if len(p.L4) < header.TCPMinimumSize || int(tcp.DataOffset()) < header.TCPMinimumSize || int(tcp.DataOffset()) > len(p.L4) {
			return fmt.Errorf("accepted a bad TCP header")
		}
		if p.SrcPort != tcp.SourcePort() || p.DstPort != tcp.DestinationPort() || p.TCPFlags != tcp.Flags() {
			return fmt.Errorf("TCP fields disagree")
		}
	case ProtoUDP:
		udp := header.UDP(p.L4)
		if len(p.L4) < header.UDPMinimumSize || udp.Length() < header.UDPMinimumSize ||
			(int(udp.Length()) > len(p.L4) && !p.MoreFragments) {
			return fmt.Errorf("accepted a bad UDP header")
		}
		if p.SrcPort != udp.SourcePort() || p.DstPort != udp.DestinationPort() {
			return fmt.Errorf("UDP ports disagree")
		}
	case ProtoICMP:
		if len(p.L4) < header.ICMPv4MinimumSize {
			return fmt.Errorf("accepted a short ICMP header")
		}
		icmp := header.ICMPv4(p.L4)
		if p.ICMPType != icmp.Type() || p.ICMPCode != icmp.Code() {
			return fmt.Errorf("ICMP type/code disagree")
		}
		want := uint16(0)
		if isICMPQuery(icmp.Type()) {
			want = icmp.Ident()
		}
		if p.SrcPort != want || p.DstPort != want {
			return fmt.Errorf("ICMP identifier fields %d/%d, want %d", p.SrcPort, p.DstPort, want)
		}
	default:
		if p.SrcPort != 0 || p.DstPort != 0 {
			return fmt.Errorf("ports on protocol %d", p.Proto)
		}
	}
	return nil
}

// fuzzInput hands out the bytes of a fuzz input; past its end it returns
// zeros, so every input decodes to some scenario.
type fuzzInput struct{ b []byte }

func (in *fuzzInput) done() bool { return len(in.b) == 0 }

func (in *fuzzInput) byte() byte {
	if len(in.b) == 0 {
		return 0
	}
	c := in.b[0]
	in.b = in.b[1:]
	return c
}

func (in *fuzzInput) bytes(n int) []byte {
	n = min(n, len(in.b))
	out := in.b[:n]
	in.b = in.b[n:]
	return out
}

var (
	fuzzLAN     = []netip.Addr{lanA, lanB, netip.MustParseAddr("10.0.0.30")}
	fuzzRemotes = []netip.Addr{remote1, remote2, router}
	// fuzzPorts mixes well-known ports, the forwarded ones and the edges of
	// the fuzz engine's port range, so that collisions are likely.
	fuzzPorts = []uint16{53, 80, 443, 1194, 5000, 5001, 8080, 8081, 40000, 0, 65535, 19999, 20016, 3, 22, 20001}
)

func fuzzPort(c byte) uint16 {
	if c%32 < 16 {
		return 20000 + uint16(c%16)
	}
	return fuzzPorts[c%16]
}

// fuzzEngineConfig is small on purpose: 16 ports and 24 mappings fill up
// within a few packets, so exhaustion and expiry paths are reached.
func fuzzEngineConfig(flags byte) Config {
	cfg := Config{
		Ports:       PortRange{First: 20000, Last: 20015},
		MaxMappings: 24,
		Forwards: []Forward{
			{Proto: ProtoTCP, Ports: PortRange{First: 8080, Last: 8081}, To: lanB, ToPort: 80},
			{Proto: ProtoUDP, Ports: PortRange{First: 1194, Last: 1194}, To: lanB},
			{Proto: ProtoGRE, To: lanB},
		},
	}
	if flags&1 != 0 {
		cfg.UDPFiltering = EndpointIndependentFiltering
	}
	if flags&2 != 0 {
		cfg.MaxMappings = 4
	}
	if flags&4 != 0 {
		cfg.Limits.MaxFragmentsPerHost = 2 // table entries and held fragments
	}
	return cfg
}

type passed struct {
	b        []byte
	verdict  Verdict
	outbound bool
}

// fuzzRun is one engine driven by a decoded fuzz input.
type fuzzRun struct {
	t       *testing.T
	l       *lab
	history []passed // recent translated packets, for replies and errors
	drops   [numDropReasons]uint64
	held    heldFuzz
}

// build makes a packet from the LAN (outbound) or to the WAN address; big
// ones carry enough payload to be fragmented.
func (fr *fuzzRun) build(in *fuzzInput, outbound, big bool) []byte {
	payload := "fuzz"
	if big {
		payload = bigPayload[:80]
	}
	sel := in.byte()
	src, dst := fuzzLAN[sel%3], fuzzRemotes[(sel>>2)%3]
	if !outbound {
		src, dst = fuzzRemotes[sel%3], wanAddr
	}
	sp, dp := fuzzPort(in.byte()), fuzzPort(in.byte())
	switch (sel >> 4) % 6 {
	case 0:
		return udpPkt(ap(src, sp), ap(dst, dp), payload)
	case 1:
		return tcpPkt(ap(src, sp), ap(dst, dp), header.TCPFlags(in.byte()&0x3f))
	case 2:
		return tcpDataPkt(ap(src, sp), ap(dst, dp), header.TCPFlags(in.byte()&0x3f), payload)
	case 3:
		if outbound {
			return echoPkt(header.ICMPv4Echo, src, dst, sp, dp)
		}
		return echoPkt(header.ICMPv4EchoReply, src, dst, sp, dp)
	case 4:
		return echoPkt(header.ICMPv4Type(in.byte()%20), src, dst, sp, dp)
	default:
		return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: []uint8{ProtoGRE, ProtoESP, ProtoAH}[sel%3]}, []byte(payload+payload))
	}
}

// reply builds the answer to a packet that went through, in the other
// direction.
func (fr *fuzzRun) reply(in *fuzzInput) ([]byte, bool) {
	if len(fr.history) == 0 {
		return nil, false
	}
	h := fr.history[int(in.byte())%len(fr.history)]
	var p Packet
	if p.Parse(append([]byte(nil), h.b...)) != DropNone || p.L4 == nil {
		return nil, false
	}
	src, dst := netip.AddrPortFrom(p.DstAddr(), p.DstPort), netip.AddrPortFrom(p.SrcAddr(), p.SrcPort)
	var b []byte
	switch p.Proto {
	case ProtoUDP:
		b = udpPkt(src, dst, "reply")
	case ProtoTCP:
		b = tcpPkt(src, dst, header.TCPFlags(in.byte()&0x3f))
	case ProtoICMP:
		typ := header.ICMPv4EchoReply
		if p.ICMPType == header.ICMPv4EchoReply {
			typ = header.ICMPv4Echo
		}
		b = echoPkt(typ, src.Addr(), dst.Addr(), p.SrcPort, 1)
	default:
		b = testpacket.IPv4(testpacket.IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: p.Proto}, make([]byte, 16))
	}
	// A packet that left for the WAN is answered from the WAN; one that was
	// delivered to the LAN is answered by the LAN host.
	return b, h.verdict == VerdictToLAN
}

// icmpError builds an ICMP error about a packet that went through, sent
// back by its receiver (or a router on the way).
func (fr *fuzzRun) icmpError(in *fuzzInput) ([]byte, bool) {
	if len(fr.history) == 0 {
		return nil, false
	}
	h := fr.history[int(in.byte())%len(fr.history)]
	ip := header.IPv4(h.b)
	from := netip.AddrFrom4(ip.DestinationAddress().As4())
	to := netip.AddrFrom4(ip.SourceAddress().As4())
	if viaRouter := in.byte()&1 != 0; viaRouter && h.verdict == VerdictToWAN {
		from = router
	}
	keep := header.IPv4MinimumSize + int(in.byte())
	typ := []header.ICMPv4Type{header.ICMPv4DstUnreachable, header.ICMPv4TimeExceeded, header.ICMPv4ParamProblem, header.ICMPv4SrcQuench, header.ICMPv4Redirect}
	c := in.byte()
	return icmpErrPkt(from, to, typ[c%5], header.ICMPv4Code(c>>4), h.b, keep), h.verdict == VerdictToLAN
}

func (fr *fuzzRun) step(in *fuzzInput) {
	switch op := in.byte(); op % 10 {
	case 0:
		d := in.byte()
		if d&0x80 != 0 {
			fr.l.clock.Advance(time.Duration(d&0x7f) * 2 * time.Minute)
		} else {
			fr.l.clock.Advance(time.Duration(d) * time.Second)
		}
	case 1:
		fr.l.e.Expire()
	case 2, 3:
		fr.send(fr.build(in, true, false), true)
	case 4:
		fr.send(fr.build(in, false, false), false)
	case 5:
		if b, out := fr.reply(in); b != nil {
			fr.send(b, out)
		}
	case 6:
		if b, out := fr.icmpError(in); b != nil {
			fr.send(b, out)
		}
	case 7:
		// A fragmented datagram, its pieces in any order: two, or (op
		// bit 0x40) three, the order then picked by the next byte. A
		// piece may be sent twice or lost, and the clock may move
		// between pieces (0x80).
		outbound := op&0x10 != 0
		b := fr.build(in, outbound, true)
		payload := len(b) - header.IPv4MinimumSize
		at := 8 * (1 + int(in.byte())%4)
		if at >= payload {
			fr.send(b, outbound)
			return
		}
		pieces := fragments(b, at)
		order := []int{0, 1}
		if op&0x20 != 0 {
			order = []int{1, 0}
		}
		if op&0x40 != 0 {
			if at2 := at + 8*(1+int(in.byte())%4); at2 < payload {
				pieces = fragments(b, at, at2)
				perms := [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}, {2, 1, 1, 0}, {2, 0}, {1, 2}}
				order = perms[int(in.byte())%len(perms)]
			}
		}
		for k, i := range order {
			if k > 0 && op&0x80 != 0 {
				fr.l.clock.Advance(time.Duration(in.byte()) * 50 * time.Millisecond)
			}
			fr.send(pieces[i], outbound)
		}
	default:
		// Raw bytes; inbound ones are addressed to the WAN address as the
		// router guarantees.
		outbound := op&0x10 != 0
		b := append([]byte(nil), in.bytes(int(in.byte()))...)
		if !outbound && len(b) >= header.IPv4MinimumSize {
			ip := header.IPv4(b)
			ip.SetDestinationAddress(taddr(wanAddr))
			if op&0x20 == 0 && int(ip.HeaderLength()) <= len(b) && ip.HeaderLength() >= header.IPv4MinimumSize {
				ip.SetChecksum(0)
				ip.SetChecksum(^ip.CalculateChecksum())
			}
		}
		fr.send(b, outbound)
	}
}

// send runs one packet through the engine and checks the invariants.
func (fr *fuzzRun) send(b []byte, outbound bool) {
	t := fr.t
	t.Helper()
	wholeValid := validatePacket(b) == nil
	var p Packet
	if p.Parse(b) != DropNone {
		return
	}
	// The router hands the engine only LAN packets not claiming the WAN
	// address, and WAN packets addressed to it.
	if outbound && p.Src == wanAddr.As4() || !outbound && p.Dst != wanAddr.As4() {
		return
	}
	n := len(p.Buf)
	var r Result
	if outbound {
		r = fr.l.e.Outbound(&p)
	} else {
		r = fr.l.e.Inbound(&p)
	}
	var grown uint64
	for reason := DropReason(0); reason < numDropReasons; reason++ {
		now := fr.l.e.Drops.Get(reason)
		if now < fr.drops[reason] {
			t.Fatalf("drop counter %v went back from %d to %d", reason, fr.drops[reason], now)
		}
		grown += now - fr.drops[reason]
		fr.drops[reason] = now
	}
	// Held fragments dropped meanwhile (expired, evicted, their first
	// fragment dropped) are counted too, each once.
	if heldDrops := fr.held.droppedSince(fr.l.e); heldDrops > grown {
		t.Fatalf("%d held fragments dropped, %d drops counted", heldDrops, grown)
	} else {
		grown -= heldDrops
	}
	fr.checkReleased()
	if r.Verdict == VerdictHeld {
		if grown != 0 || r.Reason != DropNone || r.Unreachable || p.FragOffset == 0 {
			t.Fatalf("held (offset %d) with reason %v, unreachable %v, %d drops counted", p.FragOffset, r.Reason, r.Unreachable, grown)
		}
		return
	}
	if r.Verdict == VerdictDrop {
		if r.Reason == DropNone || grown != 1 {
			t.Fatalf("drop with reason %v counted %d times", r.Reason, grown)
		}
		return
	}
	if grown != 0 || r.Reason != DropNone || r.Unreachable {
		t.Fatalf("verdict %s with reason %v, unreachable %v, %d drops counted", verdictName(r.Verdict), r.Reason, r.Unreachable, grown)
	}
	if len(p.Buf) != n {
		t.Fatalf("packet length changed from %d to %d", n, len(p.Buf))
	}
	if !header.IPv4(p.Buf).IsChecksumValid() {
		t.Fatalf("passed (%s) a packet with a bad IPv4 header checksum", verdictName(r.Verdict))
	}
	if wholeValid {
		if err := validatePacket(p.Buf); err != nil {
			t.Fatalf("valid packet passed (%s) with %v", verdictName(r.Verdict), err)
		}
	}
	if err := checkCached(&p); err != nil {
		t.Fatal(err)
	}
	switch r.Verdict {
	case VerdictToWAN:
		if !outbound || p.Src != wanAddr.As4() {
			t.Fatalf("to the WAN from %v (outbound %v)", p.SrcAddr(), outbound)
		}
	case VerdictToLAN, VerdictHost:
	default:
		t.Fatalf("unknown verdict %d", r.Verdict)
	}
	if (r.Verdict == VerdictToWAN || r.Verdict == VerdictToLAN) && !p.IsFragment() {
		fr.history = append(fr.history, passed{append([]byte(nil), p.Buf...), r.Verdict, outbound})
		if len(fr.history) > 8 {
			fr.history = fr.history[1:]
		}
	}
}

// checkReleased takes and checks the fragments the engine released.
func (fr *fuzzRun) checkReleased() {
	fr.t.Helper()
	checkReleased(fr.t, fr.l.e, func(a netip.Addr) bool { return slices.Contains(fuzzLAN, a) })
}

// checkTables checks the engine's gauges against each other and its limits.
func (fr *fuzzRun) checkTables(cfg Config) {
	t := fr.t
	checkHold(t, fr.l.e)
	s := fr.l.e.Stats()
	ms := fr.l.e.Mappings()
	total, dynamic := 0, 0
	for _, n := range s.Mappings {
		total += n
	}
	for _, m := range ms {
		if !m.Static {
			dynamic++
		}
		if m.WAN.Addr() != wanAddr {
			t.Fatalf("mapping on %v", m.WAN)
		}
	}
	if total != len(ms) {
		t.Fatalf("Stats counts %d mappings, Mappings lists %d", total, len(ms))
	}
	if dynamic > cfg.MaxMappings {
		t.Fatalf("%d dynamic mappings, limit %d", dynamic, cfg.MaxMappings)
	}
	for _, proto := range []string{"tcp", "udp"} {
		if s.PortsInUse[proto] > s.PortRangeSize || s.PortsInUse[proto] < 0 {
			t.Fatalf("%s ports in use %d of %d", proto, s.PortsInUse[proto], s.PortRangeSize)
		}
	}
}

// FuzzEngine decodes its input into a sequence of packets (built ones,
// replies to earlier ones, ICMP errors about them, fragments and raw bytes),
// directions and clock moves, and runs them through one engine: it must
// never panic, every packet it passes has a valid IPv4 header checksum (and
// valid transport checksums when it came in with them), and every drop is
// counted exactly once.
func FuzzEngine(f *testing.F) {
	// Seeds: [config flags] then steps (see fuzzRun.step).
	f.Add([]byte{0, 2, 0x00, 53, 53, 5, 0})                                    // udp out, reply
	f.Add([]byte{0, 2, 0x10, 0, 44, 0x02, 5, 0, 0x12, 2, 0x10, 0, 44, 0x10})   // tcp handshake
	f.Add([]byte{1, 2, 0x00, 17, 53, 4, 0x01, 60, 0})                          // udp out, unknown inbound (EIF)
	f.Add([]byte{0, 2, 0x30, 7, 7, 5, 0, 0, 61, 1, 5, 0})                      // echo, reply, timeout
	f.Add([]byte{0, 2, 0x00, 53, 53, 6, 0, 1, 40, 0x03})                       // udp out, ICMP error back
	f.Add([]byte{0, 4, 0x10, 40, 22, 0x02, 5, 0, 0x12, 6, 0, 0, 60, 0})        // forward, LAN error
	f.Add([]byte{0, 17, 0x00, 53, 53, 2, 57, 0x00, 53, 53, 1})                 // fragments both orders
	f.Add([]byte{0, 0x57, 0x00, 53, 53, 1, 2, 5})                              // three fragments out, last first
	f.Add([]byte{0, 2, 0x00, 1, 2, 0x4d, 0x00, 2, 1, 1, 2, 5})                 // udp out, its reply in three fragments, last first
	f.Add([]byte{4, 0x57, 0x00, 53, 53, 1, 2, 6, 0x57, 0x00, 53, 53, 1, 2, 7}) // a host's share of held fragments
	f.Add([]byte{0, 0xcf, 0x00, 2, 1, 1, 2, 5, 40, 90, 1})                     // fragments in, the clock moving between them
	f.Add([]byte{2, 2, 0, 1, 1, 2, 0, 2, 2, 2, 0, 3, 3, 2, 0, 4, 4, 2, 0, 5, 5, 0, 0xff, 1, 2, 0, 5, 5})
	raw := udpPkt(ap(lanA, 1), ap(remote1, 2), "raw")
	f.Add(append([]byte{0, 18, byte(len(raw))}, raw...)) // raw outbound
	f.Add(append([]byte{0, 8, byte(len(raw))}, raw...))  // raw inbound
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzInput{b: data}
		cfg := fuzzEngineConfig(in.byte())
		fr := &fuzzRun{t: t, l: newLab(t, cfg)}
		for steps := 0; !in.done() && steps < 200; steps++ {
			fr.step(in)
			fr.checkTables(fr.l.e.cfg)
		}
	})
}

// FuzzICMPError sends arbitrary bytes as the body of an ICMP error from the
// WAN (and the same body from the LAN) to an engine holding UDP, TCP and
// echo mappings: no panic, valid checksums on whatever passes, the embedded
// packet aimed at the mapping's LAN endpoint, and no mapping refreshed.
func FuzzICMPError(f *testing.F) {
	seedLab := newLab(f, Config{})
	var seeds [][]byte
	for _, b := range [][]byte{
		udpPkt(ap(lanA, 5000), ap(remote1, 53), "a query"),
		tcpPkt(ap(lanA, 40000), ap(remote1, 443), syn),
		echoPkt(header.ICMPv4Echo, lanA, remote1, 0x4321, 1),
	} {
		p := seedLab.mustOut(b, VerdictToWAN)
		seeds = append(seeds, p.Buf, p.Buf[:28])
	}
	for i, s := range seeds {
		f.Add(byte(0), byte(3), true, s)
		f.Add(byte(1), byte(0), i%2 == 0, s)
	}
	f.Add(byte(0), byte(3), true, []byte{0x4f, 0, 0, 0})
	f.Add(byte(2), byte(0), false, make([]byte, 60))

	f.Fuzz(func(t *testing.T, typ, code byte, fixEmbedded bool, body []byte) {
		l := newLab(t, Config{})
		for _, b := range [][]byte{
			udpPkt(ap(lanA, 5000), ap(remote1, 53), "a query"),
			tcpPkt(ap(lanA, 40000), ap(remote1, 443), syn),
			echoPkt(header.ICMPv4Echo, lanA, remote1, 0x4321, 1),
		} {
			l.mustOut(b, VerdictToWAN)
		}
		l.clock.Advance(time.Second)
		before := l.e.Mappings()

		body = append([]byte(nil), body...)
		if fixEmbedded && len(body) >= header.IPv4MinimumSize {
			// Help the fuzzer past the embedded checksum check.
			ip := header.IPv4(body)
			if hl := int(ip.HeaderLength()); hl >= header.IPv4MinimumSize && hl <= len(body) {
				ip.SetChecksum(0)
				ip.SetChecksum(^ip.CalculateChecksum())
			}
		}
		types := []header.ICMPv4Type{header.ICMPv4DstUnreachable, header.ICMPv4TimeExceeded,
			header.ICMPv4ParamProblem, header.ICMPv4SrcQuench, header.ICMPv4Redirect}
		var rest [4]byte
		binary.BigEndian.PutUint16(rest[2:], 1400)
		msg := testpacket.ICMP(types[int(typ)%len(types)], header.ICMPv4Code(code), rest, body)
		if len(msg)+header.IPv4MinimumSize > 0xffff {
			return
		}
		for _, outbound := range []bool{false, true} {
			src, dst := remote1, wanAddr
			if outbound {
				src, dst = lanA, remote1
			}
			var p Packet
			if p.Parse(testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoICMP}, msg)) != DropNone {
				t.Fatal("test packet does not parse")
			}
			var r Result
			if outbound {
				r = l.e.Outbound(&p)
			} else {
				r = l.e.Inbound(&p)
			}
			if r.Verdict == VerdictDrop {
				if r.Reason == DropNone {
					t.Fatal("drop without a reason")
				}
				continue
			}
			if err := validatePacket(p.Buf); err != nil {
				t.Fatalf("passed (%s, outbound %v): %v", verdictName(r.Verdict), outbound, err)
			}
			if err := checkCached(&p); err != nil {
				t.Fatal(err)
			}
			if r.Verdict == VerdictHost {
				continue
			}
			embedded := header.IPv4(p.L4[header.ICMPv4MinimumSize:])
			switch {
			case !outbound && r.Verdict == VerdictToLAN:
				if p.DstAddr() != lanA || embedded.SourceAddress() != taddr(lanA) {
					t.Fatalf("error delivered to %v about a packet from %v", p.DstAddr(), embedded.SourceAddress())
				}
			case outbound && r.Verdict == VerdictToWAN:
				if p.SrcAddr() != wanAddr || embedded.DestinationAddress() != taddr(wanAddr) {
					t.Fatalf("error left from %v about a packet to %v", p.SrcAddr(), embedded.DestinationAddress())
				}
			default:
				t.Fatalf("verdict %s for an error (outbound %v)", verdictName(r.Verdict), outbound)
			}
		}
		if after := l.e.Mappings(); !reflect.DeepEqual(before, after) {
			t.Fatalf("an ICMP error changed the mappings:\n%+v\n%+v", before, after)
		}
	})
}
