package nat

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"slices"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// FuzzIKEParse feeds arbitrary bytes to parseIKEHeader and classifyNATT:
// no panic, input untouched, every accepted header described by its bytes
// and every rejected one failing a stated rule; then the same bytes as a
// UDP 500 and 4500 payload through an engine holding IKE state, both ways:
// a parse failure is always an ike_malformed drop, a pass always has valid
// checksums and keeps the SPIs.
func FuzzIKEParse(f *testing.F) {
	for _, seed := range [][]byte{
		ikeMessage(2, 0x1111222233334444, 0, ikeSAInit),
		ikeMessage(1, 0x1111222233334444, 0x5555666677778888, ikev1MainMode),
		append([]byte{0, 0, 0, 0}, ikeMessage(2, 0x1111222233334444, 0xa, ikeInformational)...),
		{0xff},
		{0xc0, 0, 0, 1, 0, 0, 0, 1, 9, 9},
		{0, 0, 0, 0},
		make([]byte, 27),
		nil,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := append([]byte(nil), b...)
		h, ok := parseIKEHeader(b)
		kind := classifyNATT(b)
		if !bytes.Equal(b, orig) {
			t.Fatal("the parsers modified their input")
		}
		wantOK := len(b) >= ikeHeaderLen &&
			binary.BigEndian.Uint64(b[0:8]) != 0 &&
			(b[17]>>4 == 1 || b[17]>>4 == 2) &&
			binary.BigEndian.Uint32(b[24:28]) >= ikeHeaderLen
		if ok != wantOK {
			t.Fatalf("parseIKEHeader ok=%v, want %v for % x", ok, wantOK, b)
		}
		if !ok && h != (ikeHeader{}) {
			t.Fatalf("rejected header carries fields: %+v", h)
		}
		if ok && (h.ispi != binary.BigEndian.Uint64(b[0:8]) || h.rspi != binary.BigEndian.Uint64(b[8:16]) ||
			h.exchange != b[18] || h.major != b[17]>>4) {
			t.Fatalf("header %+v disagrees with its bytes % x", h, b[:ikeHeaderLen])
		}
		var wantKind nattKind
		switch {
		case len(b) == 1 && b[0] == 0xff:
			wantKind = nattKeepalive
		case len(b) >= 4 && b[0]|b[1]|b[2]|b[3] == 0:
			wantKind = nattIKE
		case len(b) >= 8:
			wantKind = nattESP
		default:
			wantKind = nattMalformed
		}
		if kind != wantKind {
			t.Fatalf("classifyNATT = %d, want %d for % x", kind, wantKind, b)
		}
		if len(b) > 1400 {
			return
		}

		// The same bytes on the wire, to an engine where lanA has an IKE
		// session and a NAT-T flow with remote1.
		l := newLab(t, Config{})
		const ispi, rspi = 0x1111222233334444, 0x5555666677778888
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispi, 0), VerdictToWAN)
		l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispi, rspi), VerdictToLAN)
		l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispi, rspi), VerdictToWAN)
		lanBSpoke := false // lanB's IKE on 500 passed: it may get the remote's new SPIs
		for _, port := range []uint16{PortIKE, PortNATT} {
			for _, outbound := range []bool{true, false} {
				var pkt []byte
				if outbound {
					pkt = udpPkt(ap(lanB, port), ap(remote1, port), string(b))
				} else {
					pkt = udpPkt(ap(remote1, port), ap(wanAddr, port), string(b))
				}
				var r Result
				var p *Packet
				if outbound {
					r, p = l.out(pkt)
				} else {
					r, p = l.in(pkt)
				}
				malformed := !ok
				if port == PortNATT {
					malformed = kind == nattMalformed
					if kind == nattIKE {
						_, ikeOK := parseIKEHeader(b[4:])
						malformed = !ikeOK
					}
				}
				// lanB's 4500 to remote1 takes an ordinary mapping (lanA
				// keeps 4500 there), so its payload is not looked at.
				ordinary := outbound && port == PortNATT
				if malformed && !ordinary {
					wantDrop(t, r, DropIKEMalformed)
					continue
				}
				if r.Verdict == VerdictDrop {
					if r.Reason == DropIKEMalformed {
						t.Fatalf("port %d outbound %v: well-formed payload dropped as malformed", port, outbound)
					}
					continue
				}
				if got := header.UDP(p.L4).Payload(); !bytes.Equal(got, b) {
					t.Fatalf("port %d outbound %v: payload changed", port, outbound)
				}
				if outbound && port == PortIKE {
					lanBSpoke = true
				}
				if !outbound && p.DstAddr() != lanA && !(lanBSpoke && p.DstAddr() == lanB) {
					t.Fatalf("port %d: delivered to %v, which never spoke IKE", port, p.DstAddr())
				}
			}
		}
	})
}

// The IPsec fuzz world: LAN hosts (the last one may be an IPsec server
// behind a forward), remotes and small SPI sets, so that sessions, pairs
// and collisions meet.
var (
	ipsecFuzzHosts   = []netip.Addr{lanA, lanB, lanC, ipsecSrv}
	ipsecFuzzRemotes = []netip.Addr{remote1, remote2, router}
	ipsecFuzzISPIs   = []uint64{0x1111111111111111, 0x2222222222222222, 0x3333333333333333, 1, 0xffffffffffffffff, 0x4444, 0x5555, 0}
	ipsecFuzzRSPIs   = []uint64{0, 0xaaaa, 0xbbbb, 0xcccc}
	ipsecFuzzSPIs    = []uint32{0, 1, 2, 0xa1, 0xb1, 0x1a, 0x1b, 0xffffffff}
)

// ipsecFuzz is one engine driven by a decoded fuzz input.
type ipsecFuzz struct {
	t       *testing.T
	l       *lab
	fwdUDP  map[uint16]bool // WAN UDP ports forwarded to ipsecSrv
	fwdESP  bool
	spoke   map[[2]netip.Addr]bool // (host, remote): the host's IKE, NAT-T or ESP to the remote passed
	history []passed
	drops   [numDropReasons]uint64
	held    heldFuzz
}

func newIPsecFuzz(t *testing.T, flags byte) *ipsecFuzz {
	fz := &ipsecFuzz{t: t, fwdUDP: map[uint16]bool{}, spoke: map[[2]netip.Addr]bool{}}
	var cfg Config
	if flags&1 != 0 {
		cfg.Forwards = append(cfg.Forwards, Forward{Proto: ProtoUDP, Ports: PortRange{First: 500, Last: 500}, To: ipsecSrv})
		fz.fwdUDP[500] = true
	}
	if flags&2 != 0 {
		cfg.Forwards = append(cfg.Forwards, Forward{Proto: ProtoUDP, Ports: PortRange{First: 4500, Last: 4500}, To: ipsecSrv})
		fz.fwdUDP[4500] = true
	}
	if flags&4 != 0 {
		cfg.Forwards = append(cfg.Forwards, Forward{Proto: ProtoESP, To: ipsecSrv})
		fz.fwdESP = true
	}
	if flags&8 != 0 {
		cfg.IPsec = IPsecConfig{IKETimeout: 3 * time.Minute, ESPTimeout: 5 * time.Minute, ESPWait: 30 * time.Second,
			ESPRetries: 2, ESPSquelch: 10 * time.Second}
		cfg.UDPTimeout = time.Minute
	}
	if flags&16 != 0 {
		cfg.Ports = PortRange{First: 4490, Last: 4510} // contains 4500, and fills up fast
	}
	if flags&32 != 0 {
		cfg.IPsec.MaxESP = 3
	}
	if flags&64 != 0 {
		cfg.Limits = Limits{MaxESPPerHost: 2, MaxIKEPerHost: 3, MaxRemoteIKE: 2, RemoteIKETimeout: 20 * time.Second}
	}
	fz.l = newLab(t, cfg)
	return fz
}

func (fz *ipsecFuzz) step(in *fuzzInput) {
	op := in.byte()
	sel := in.byte()
	host := ipsecFuzzHosts[sel%4]
	remote := ipsecFuzzRemotes[(sel>>2)%3]
	switch op % 11 {
	case 0:
		d := in.byte()
		if d&0x80 != 0 {
			fz.l.clock.Advance(time.Duration(d&0x7f) * time.Minute)
		} else {
			fz.l.clock.Advance(time.Duration(d) * time.Second)
		}
	case 1:
		fz.l.e.Expire()
	case 2: // IKE on 500, either way
		c := in.byte()
		ispi, rspi := ipsecFuzzISPIs[c%8], ipsecFuzzRSPIs[(c>>3)%4]
		if c&0x80 == 0 {
			fz.send(ikePkt(ap(host, 500), ap(remote, 500), ispi, rspi), true)
		} else {
			fz.send(ikePkt(ap(remote, 500), ap(wanAddr, 500), ispi, rspi), false)
		}
	case 3, 4: // NAT-T on 4500: IKE, ESP in UDP, keepalive, junk; either way
		c := in.byte()
		remotePort := uint16(4500)
		if c&0x40 != 0 {
			remotePort = 61000
		}
		src, dst := ap(host, 4500), ap(remote, remotePort)
		outbound := op%11 == 3
		if !outbound {
			src, dst = ap(remote, remotePort), ap(wanAddr, 4500)
		}
		switch c % 4 {
		case 0:
			fz.send(nattIKEPkt(src, dst, ipsecFuzzISPIs[(c>>2)%8], ipsecFuzzRSPIs[(c>>5)%4]), outbound)
		case 1:
			spi := ipsecFuzzSPIs[(c>>2)%8]
			if spi == 0 {
				spi = 0xc0000000 // SPI 0 after a marker would be IKE
			}
			fz.send(nattESPPkt(src, dst, spi), outbound)
		case 2:
			fz.send(nattKeepalivePkt(src, dst), outbound)
		default:
			fz.send(udpPkt(src, dst, string(in.bytes(int(in.byte()%40)))), outbound)
		}
	case 5, 6: // raw ESP, either way, sequence numbers 1 to 4
		b := in.byte()
		spi, seq := ipsecFuzzSPIs[b%8], uint32(1+(b>>3)%4)
		if op%11 == 5 {
			fz.send(espPkt(host, remote, spi, seq), true)
		} else {
			fz.send(espPkt(remote, wanAddr, spi, seq), false)
		}
	case 7: // AH, either way
		if sel&0x80 == 0 {
			fz.send(ahPkt(host, remote, 1), true)
		} else {
			fz.send(ahPkt(remote, wanAddr, 1), false)
		}
	case 8: // a fragmented ESP packet, pieces in either order
		outbound := sel&0x80 == 0
		src, dst := host, remote
		if !outbound {
			src, dst = remote, wanAddr
		}
		body := make([]byte, 8, 8+len(bigPayload))
		binary.BigEndian.PutUint32(body, ipsecFuzzSPIs[in.byte()%8])
		first, tail := fragmentAt(testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoESP, ID: uint16(op)}, append(body, bigPayload...)), 64)
		if sel&0x40 != 0 {
			first, tail = tail, first
		}
		fz.send(first, outbound)
		fz.send(tail, outbound)
	case 9: // the answer to a packet that went through
		if len(fz.history) == 0 {
			return
		}
		h := fz.history[int(in.byte())%len(fz.history)]
		var p Packet
		if p.Parse(append([]byte(nil), h.b...)) != DropNone {
			return
		}
		src, dst := netip.AddrPortFrom(p.DstAddr(), p.DstPort), netip.AddrPortFrom(p.SrcAddr(), p.SrcPort)
		switch p.Proto {
		case ProtoUDP:
			fz.send(udpPkt(src, dst, string(header.UDP(p.L4).Payload())), !h.outbound)
		case ProtoESP:
			fz.send(espPkt(src.Addr(), dst.Addr(), ipsecFuzzSPIs[in.byte()%8], 2), !h.outbound)
		}
	default: // UDP 500 with arbitrary payload, either way
		payload := string(in.bytes(int(in.byte() % 64)))
		if sel&0x80 == 0 {
			fz.send(udpPkt(ap(host, 500), ap(remote, 500), payload), true)
		} else {
			fz.send(udpPkt(ap(remote, 500), ap(wanAddr, 500), payload), false)
		}
	}
}

// send runs one packet through the engine and checks the invariants.
func (fz *ipsecFuzz) send(b []byte, outbound bool) {
	t := fz.t
	t.Helper()
	var p Packet
	if p.Parse(b) != DropNone {
		t.Fatal("fuzz packet does not parse")
	}
	before := p
	var spi []byte
	if p.Proto == ProtoESP && len(p.L4) >= 4 {
		spi = append([]byte(nil), p.L4[:4]...)
	}
	var r Result
	if outbound {
		r = fz.l.e.Outbound(&p)
	} else {
		r = fz.l.e.Inbound(&p)
	}
	var grown uint64
	for reason := DropReason(0); reason < numDropReasons; reason++ {
		now := fz.l.e.Drops.Get(reason)
		if now < fz.drops[reason] {
			t.Fatalf("drop counter %v went back from %d to %d", reason, fz.drops[reason], now)
		}
		grown += now - fz.drops[reason]
		fz.drops[reason] = now
	}
	// Held fragments dropped meanwhile are counted too, each once.
	if heldDrops := fz.held.droppedSince(fz.l.e); heldDrops > grown {
		t.Fatalf("%d held fragments dropped, %d drops counted", heldDrops, grown)
	} else {
		grown -= heldDrops
	}
	// Released fragments from the WAN reach only a host that spoke to
	// their source, or the forward's target.
	for _, rp := range checkReleased(t, fz.l.e, func(a netip.Addr) bool { return a == ipsecSrv || slices.Contains(ipsecFuzzHosts, a) }) {
		if rp.DstAddr() != ipsecSrv && !fz.spoke[[2]netip.Addr{rp.DstAddr(), rp.SrcAddr()}] {
			t.Fatalf("fragment from %v released to %v, which never sent IKE or ESP to it", rp.SrcAddr(), rp.DstAddr())
		}
	}
	if r.Verdict == VerdictHeld {
		if grown != 0 || r.Reason != DropNone || p.FragOffset == 0 {
			t.Fatalf("held (offset %d) with reason %v, %d drops counted", p.FragOffset, r.Reason, grown)
		}
		return
	}
	if r.Verdict == VerdictDrop {
		if r.Reason == DropNone || grown != 1 {
			t.Fatalf("drop with reason %v counted %d times", r.Reason, grown)
		}
		return
	}
	if grown != 0 || r.Reason != DropNone {
		t.Fatalf("verdict %s with reason %v, %d drops counted", verdictName(r.Verdict), r.Reason, grown)
	}
	if err := validatePacket(p.Buf); err != nil {
		t.Fatalf("passed (%s, outbound %v) %s: %v", verdictName(r.Verdict), outbound, protoName(before.Proto), err)
	}
	if err := checkCached(&p); err != nil {
		t.Fatal(err)
	}
	if before.Proto == ProtoAH {
		t.Fatalf("AH passed (%s)", verdictName(r.Verdict))
	}
	if spi != nil && !bytes.Equal(spi, p.L4[:4]) {
		t.Fatalf("ESP SPI changed from % x to % x", spi, p.L4[:4])
	}
	switch {
	case outbound && r.Verdict == VerdictToWAN:
		if p.Src != wanAddr.As4() {
			t.Fatalf("left from %v", p.SrcAddr())
		}
		if before.Proto == ProtoUDP && before.SrcPort == PortIKE && !fz.fwdUDP[PortIKE] && p.SrcPort != PortIKE {
			t.Fatalf("IKE from %v:500 left from port %d", before.SrcAddr(), p.SrcPort)
		}
		if before.Proto == ProtoUDP && (before.SrcPort == PortIKE || before.SrcPort == PortNATT) || before.Proto == ProtoESP {
			fz.spoke[[2]netip.Addr{before.SrcAddr(), before.DstAddr()}] = true
		}
	case !outbound && r.Verdict == VerdictToLAN:
		if p.Src != before.Src {
			t.Fatalf("inbound source changed from %v to %v", before.SrcAddr(), p.SrcAddr())
		}
		forwarded := p.DstAddr() == ipsecSrv &&
			(before.Proto == ProtoESP && fz.fwdESP || before.Proto == ProtoUDP && fz.fwdUDP[before.DstPort])
		if !forwarded && !fz.spoke[[2]netip.Addr{p.DstAddr(), p.SrcAddr()}] {
			t.Fatalf("%v from %v (to WAN port %d) delivered to %v, which never sent IKE or ESP to it",
				protoName(before.Proto), p.SrcAddr(), before.DstPort, p.DstAddr())
		}
	default:
		t.Fatalf("verdict %s (outbound %v) for %v", verdictName(r.Verdict), outbound, protoName(before.Proto))
	}
	if !p.IsFragment() {
		fz.history = append(fz.history, passed{append([]byte(nil), p.Buf...), r.Verdict, outbound})
		if len(fz.history) > 8 {
			fz.history = fz.history[1:]
		}
	}
}

// checkState checks the IPsec tables against their bounds and the hosts.
func (fz *ipsecFuzz) checkState() {
	t, e := fz.t, fz.l.e
	if n := len(e.esp.out); n > e.cfg.IPsec.MaxESP {
		t.Fatalf("%d outbound SPIs, max_esp %d", n, e.cfg.IPsec.MaxESP)
	}
	for remote, list := range e.esp.pending {
		if len(list) > espMaxPending {
			t.Fatalf("%d pending SPIs from %v", len(list), netip.AddrFrom4(remote))
		}
	}
	for _, pr := range e.ESPPairs() {
		if !fz.spoke[[2]netip.Addr{netip.AddrFrom4(pr.Host), netip.AddrFrom4(pr.Remote)}] {
			t.Fatalf("pair %+v for a host that never sent ESP to the remote", pr)
		}
		if pr.OutSPI == 0 && pr.InSPI == 0 {
			t.Fatalf("pair without SPIs: %+v", pr)
		}
	}
	// Quotas: what each host is charged is what it holds.
	espHeld, ikeHeld := map[[4]byte]int{}, map[[4]byte]int{}
	charged := 0
	for pr := range e.esp.pairs {
		if !pr.linked {
			t.Fatalf("unlinked pair in the pair set: %+v", *pr)
		}
		if pr.charged {
			charged++
			espHeld[pr.host]++
		}
		if (pr.state == espTentative) == pr.charged {
			t.Fatalf("pair %+v: tentative %v but charged %v", *pr, pr.state == espTentative, pr.charged)
		}
		if pr.inSPI != 0 && e.esp.in[espInKey{pr.remote, pr.inSPI}] != pr {
			t.Fatalf("pair %+v not indexed by its inbound SPI", *pr)
		}
	}
	if charged != e.esp.npairs || charged > e.cfg.IPsec.MaxESP {
		t.Fatalf("%d charged pairs, npairs %d, max_esp %d", charged, e.esp.npairs, e.cfg.IPsec.MaxESP)
	}
	for _, byRemote := range e.esp.inOnly {
		for _, list := range byRemote {
			if len(list) == 0 || len(list) > espMaxInboundOnly {
				t.Fatalf("%d inbound-only pairs for one (host, remote)", len(list))
			}
			for _, pr := range list {
				if !pr.linked || pr.state != espInboundOnly {
					t.Fatalf("listed inbound-only pair %+v", *pr)
				}
			}
		}
	}
	for hr, list := range e.esp.cands {
		if len(list) == 0 || len(list) > espMaxCandidates {
			t.Fatalf("%d candidates for %v", len(list), hr)
		}
	}
	for _, s := range e.ike.byI {
		if !s.charged || s.removed {
			t.Fatalf("IKE session %+v in the table but not charged", *s)
		}
		ikeHeld[s.host.addr]++
	}
	for host, u := range e.hosts.m {
		if u.held[quotaESP] != espHeld[host] || u.held[quotaIKE] != ikeHeld[host] {
			t.Fatalf("host %v charged %d ESP / %d IKE, holds %d / %d", netip.AddrFrom4(host),
				u.held[quotaESP], u.held[quotaIKE], espHeld[host], ikeHeld[host])
		}
		if u.held[quotaESP] > e.cfg.Limits.MaxESPPerHost || u.held[quotaIKE] > e.cfg.Limits.MaxIKEPerHost {
			t.Fatalf("host %v over its quota: %v", netip.AddrFrom4(host), u.held)
		}
	}
	for host, n := range espHeld {
		if e.hosts.m[host] == nil && n > 0 {
			t.Fatalf("host %v holds %d ESP pairs, charged none", netip.AddrFrom4(host), n)
		}
	}
	for host, n := range ikeHeld {
		if e.hosts.m[host] == nil && n > 0 {
			t.Fatalf("host %v holds %d IKE sessions, charged none", netip.AddrFrom4(host), n)
		}
	}
	for _, byRemote := range e.ike.unconf {
		for _, list := range byRemote {
			if len(list) == 0 || len(list) > e.cfg.Limits.MaxRemoteIKE {
				t.Fatalf("%d unconfirmed IKE sessions for one (host, remote)", len(list))
			}
		}
	}
	for _, idx := range []map[ikeKey]*ikeSession{e.ike.byI, e.ike.byR} {
		for k, s := range idx {
			if k.remote != s.remote {
				t.Fatalf("IKE session of %v indexed under %v", netip.AddrFrom4(s.remote), netip.AddrFrom4(k.remote))
			}
		}
	}
}

// FuzzIPsecEngine decodes its input into sequences of UDP 500/4500 (IKE,
// NAT-T ESP, keepalives, junk), raw ESP (whole and fragmented) and AH from
// several LAN hosts and remotes, both ways, answers to earlier packets,
// clock moves and sweeps, under configurations with and without IPsec
// forwards: no panic; every passed packet has valid checksums and its SPI
// unchanged; IKE from port 500 keeps 500; AH never passes; nothing
// delivered from a remote reaches a host that has not sent IKE or ESP to
// it (the forward's server aside); counters only grow, one per drop.
func FuzzIPsecEngine(f *testing.F) {
	// Seeds: [config flags] then steps (see ipsecFuzz.step): op, selector,
	// op-specific bytes.
	f.Add([]byte{0, 2, 0x00, 0x00, 2, 0x00, 0x88, 9, 0, 0, 3, 0x00, 0x01, 4, 0x00, 0x05})     // IKE, reply, NAT-T
	f.Add([]byte{0, 5, 0x00, 3, 5, 0x01, 4, 5, 0x02, 4, 6, 0x00, 5, 5, 0x01, 4, 6, 0, 6})     // ESP serialization
	f.Add([]byte{8, 5, 0x00, 3, 0, 40, 5, 0x00, 3, 0, 0x81, 1, 5, 0x01, 4, 6, 0, 5})          // ESP wait expiry, short timers
	f.Add([]byte{4, 5, 0x00, 3, 6, 0, 5, 6, 0, 6, 6, 0x04, 6})                                // ESP forward
	f.Add([]byte{3, 2, 0x00, 0x00, 2, 0x01, 0x80, 3, 0x00, 0x00, 4, 0x00, 0x00})              // forwards of 500, 4500
	f.Add([]byte{16, 3, 0x00, 0x00, 3, 0x01, 0x00, 4, 0x00, 0x01, 9, 1, 9, 0})                // range with 4500
	f.Add([]byte{32, 7, 0x00, 7, 0x80, 8, 0x00, 3, 8, 0xc0, 5, 10, 0x00, 5, 1, 2, 3, 4, 5})   // AH, fragments, junk
	f.Add([]byte{40, 2, 0x00, 0x00, 2, 0x00, 0x88, 0, 0x82, 2, 0x00, 0x81, 1, 6, 0x00, 3, 0}) // timers
	// Tentative bindings: a host waits, the remote answers with two
	// sequence numbers, another SPI comes in between; per-host limits.
	f.Add([]byte{64, 5, 0x00, 3, 6, 0x00, 0x0e, 6, 0x00, 0x07, 6, 0x00, 0x16, 5, 0x01, 4, 6, 0x00, 0x0c})
	f.Add([]byte{64, 2, 0x00, 0x00, 2, 0x00, 0x88, 2, 0x00, 0x81, 2, 0x00, 0x82, 2, 0x00, 0x83, 2, 0x01, 0x01, 0, 25, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzInput{b: data}
		fz := newIPsecFuzz(t, in.byte())
		for steps := 0; !in.done() && steps < 300; steps++ {
			fz.step(in)
			fz.checkState()
		}
	})
}
