package nat

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"hash/crc32"
	"math/rand/v2"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var updateStateTestdata = flag.Bool("update-state-testdata", false,
	"rewrite nat/testdata/state-v<StateVersion>.bin from the scripted engine")

var (
	stateLAN = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}
	remote3  = netip.MustParseAddr("198.18.100.3")
)

// stateScript is what the scripted engine set up, for the checks after a
// restore.
type stateScript struct {
	tcpExt             uint16 // lanA:40001 → remote1:80, established
	tcpClientSeq       uint32 // the client's next sequence number
	tcpServerSeq       uint32 // the server's next sequence number
	udpExt             uint16 // lanA:5000 → remote1:53
	pptpMasq           uint16 // lanA's call 7 at remote1, server Call ID 0x100
	pptp               *pptpConnLab
	fwdRemote          netip.AddrPort // a flow through the UDP forward 7000 → lanB:7000
	espOut, espIn      uint32         // lanA ↔ remote1, established
	ikeSPI             uint64         // lanA ↔ remote1
	nattHost, nattPeer netip.AddrPort
}

func stateConfig() Config {
	return Config{
		IPsec:    IPsecConfig{ESPRetries: 1},
		Forwards: []Forward{{Proto: ProtoUDP, Ports: PortRange{First: 7000, Last: 7000}, To: lanB, ToPort: 7000}},
	}
}

// scriptedEngine builds an engine holding every kind of state the state
// file carries, with reproducible Call IDs.
func scriptedEngine(t testing.TB) (*pptpLab, *stateScript) {
	t.Helper()
	s := &pptpLab{lab: newLab(t, stateConfig())}
	s.e.pptp.rng = rand.NewChaCha8([32]byte{1})
	sc := &stateScript{}

	// A squelched SPI first: it takes two ESP waits.
	s.mustOut(espPkt(lanB, remote2, 0x5151, 1), VerdictToWAN)
	s.advance(2*time.Minute + time.Second)
	s.mustOut(espPkt(lanB, remote2, 0x5151, 2), VerdictToWAN)
	s.advance(2*time.Minute + time.Second)
	r, _ := s.out(espPkt(lanB, remote2, 0x5151, 3))
	wantDrop(t, r, DropESPSquelched)

	// TCP, established, with data both ways.
	cli, srv := ap(lanA, 40001), ap(remote1, 80)
	p := s.mustOut(tcpSeqPkt(cli, srv, header.TCPFlagSyn, pptpClientISS, nil), VerdictToWAN)
	sc.tcpExt = p.SrcPort
	s.mustIn(tcpSeqAckPkt(srv, ap(wanAddr, sc.tcpExt), header.TCPFlagSyn|header.TCPFlagAck, pptpServerISS, pptpClientISS+1, nil), VerdictToLAN)
	s.mustOut(tcpSeqAckPkt(cli, srv, header.TCPFlagAck|header.TCPFlagPsh, pptpClientISS+1, pptpServerISS+1, []byte("GET /")), VerdictToWAN)
	s.mustIn(tcpSeqAckPkt(srv, ap(wanAddr, sc.tcpExt), header.TCPFlagAck|header.TCPFlagPsh, pptpServerISS+1, pptpClientISS+6, []byte("200 OK")), VerdictToLAN)
	sc.tcpClientSeq, sc.tcpServerSeq = pptpClientISS+6, pptpServerISS+7

	// UDP and ICMP.
	sc.udpExt = s.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
	s.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, sc.udpExt), "a"), VerdictToLAN)
	s.mustOut(echoPkt(header.ICMPv4Echo, lanB, remote2, 77, 1), VerdictToWAN)

	// A flow through a port forward.
	sc.fwdRemote = ap(remote3, 9999)
	s.mustIn(udpPkt(sc.fwdRemote, ap(wanAddr, 7000), "hi"), VerdictToLAN)

	// PPTP: a control connection with an established call, and GRE.
	sc.pptp = s.open(ap(lanA, 40000), ap(remote1, PortPPTP))
	sc.pptpMasq = be16(payloadOf(sc.pptp.fromClient(pptpMsg(PPTPOutgoingCallRequest, 7, 0))), 12)
	sc.pptp.fromServer(pptpMsg(PPTPOutgoingCallReply, 0x100, sc.pptpMasq))
	s.mustIn(grePkt(remote1, wanAddr, sc.pptpMasq, []byte("ppp")), VerdictToLAN)
	// Plain GRE: an address binding.
	s.mustOut(greV0Pkt(lanB, remote2, []byte("ip")), VerdictToWAN)

	// IKE on 500, NAT-T on 4500, a session the remote started.
	sc.ikeSPI = 0x1111
	s.ikeExchange(lanA, remote1, sc.ikeSPI)
	sc.nattHost, sc.nattPeer = ap(lanB, 4500), ap(remote3, 4500)
	s.mustOut(nattIKEPkt(sc.nattHost, sc.nattPeer, 0x2222, 0), VerdictToWAN)
	s.mustIn(nattIKEPkt(sc.nattPeer, ap(wanAddr, 4500), 0x2222, 0x3333), VerdictToLAN)
	s.in(ikePkt(ap(remote1, 500), ap(wanAddr, 500), 0x4444, 0))

	// ESP: an established pair (with a recent claim), a waiting SPI, a
	// candidate and an unowned inbound SPI.
	sc.espOut, sc.espIn = 0xa0a0, 0xb0b0
	s.espPairSPIs(lanA, remote1, sc.espOut, sc.espIn)
	s.mustOut(espPkt(lanB, remote2, 0x6161, 1), VerdictToWAN)
	s.mustIn(espPkt(remote2, wanAddr, 0x7171, espTestSeq.Add(1)), VerdictToLAN) // a candidate for lanB's waiting SPI
	s.in(espPkt(netip.MustParseAddr("198.18.100.9"), wanAddr, 0x8181, 1))       // nobody's: pending
	return s, sc
}

func saveBytes(t testing.TB, e *Engine) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := e.SaveState(&buf, stateLAN); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// restoredLab restores b into a new engine whose clock starts at start.
func restoredLab(t testing.TB, cfg Config, b []byte, start time.Time) (*pptpLab, Restored) {
	t.Helper()
	l := &pptpLab{lab: newLab(t, cfg)}
	l.clock.T = start
	l.e = New(Config{WANAddr: wanAddr, Clock: l.clock, IPsec: cfg.IPsec, Forwards: cfg.Forwards,
		Ports: cfg.Ports, Limits: cfg.Limits, MaxMappings: cfg.MaxMappings})
	res, err := l.e.RestoreState(bytes.NewReader(b), stateLAN, 0)
	if err != nil {
		t.Fatalf("restore: %v", err)
	}
	return l, res
}

func sameSnap(a, b *stateSnap) bool {
	x, y := *a, *b
	x.created, y.created = time.Time{}, time.Time{}
	return bytes.Equal(encodeState(&x), encodeState(&y))
}

func TestStateRoundTrip(t *testing.T) {
	s, _ := scriptedEngine(t)
	snap := s.e.snapshot(stateLAN)
	for kind, n := range map[string]int{"mappings": len(snap.mappings), "ike": len(snap.ike), "contacts": len(snap.contacts),
		"natt": len(snap.natt), "esp": len(snap.esp), "pending": len(snap.pending), "recent": len(snap.recent),
		"squelch": len(snap.squelch), "pptp": len(snap.pptp), "gre": len(snap.gre)} {
		if n == 0 {
			t.Errorf("the scripted engine holds no %s", kind)
		}
	}
	unconfirmed, static, tentative, waiting := false, false, false, false
	for _, x := range snap.ike {
		unconfirmed = unconfirmed || x.unconfirmed
	}
	for _, m := range snap.mappings {
		static = static || m.static
	}
	for _, p := range snap.esp {
		tentative = tentative || p.state == espTentative && p.claim >= 0
		waiting = waiting || p.waiting
	}
	if !unconfirmed || !static || !tentative || !waiting {
		t.Errorf("scripted engine: unconfirmed IKE %v, forwarded flow %v, claiming candidate %v, waiting SPI %v",
			unconfirmed, static, tentative, waiting)
	}

	b := encodeState(snap)
	dec, err := decodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	if !dec.created.Equal(snap.created) || !sameSnap(dec, snap) {
		t.Fatalf("decode(encode(s)) differs from s")
	}
	if !bytes.Equal(encodeState(dec), b) {
		t.Fatal("re-encoding differs")
	}

	// Restored into a new engine started at another time, after a day
	// down: everything is kept, and a snapshot of it is the same state.
	r, res := restoredLab(t, stateConfig(), b, labEpoch.Add(24*time.Hour))
	if res.DroppedTotal() != 0 {
		t.Errorf("dropped %v", res.Dropped)
	}
	if !sameSnap(r.e.snapshot(stateLAN), snap) {
		t.Errorf("the restored engine's snapshot differs from the saved one")
	}
	// The rebuilt per-host accounting equals the original's.
	if got, want := r.e.Stats().Hosts, s.e.Stats().Hosts; !reflect.DeepEqual(got, want) {
		t.Errorf("per-host accounting\n got %+v\nwant %+v", got, want)
	}
	if got, want := r.e.Stats(), s.e.Stats(); !reflect.DeepEqual(got.PortsInUse, want.PortsInUse) ||
		!reflect.DeepEqual(got.FlowsByState, want.FlowsByState) || !reflect.DeepEqual(got.Mappings, want.Mappings) {
		t.Errorf("stats\n got %+v\nwant %+v", got, want)
	}
	if got, want := r.e.PPTPCalls(), s.e.PPTPCalls(); len(got) != 1 || got[0].MasqCallID != want[0].MasqCallID {
		t.Errorf("pptp calls %+v, want %+v", got, want)
	}
}

// TestStateRestoredTraffic checks that the restored engine forwards what
// the old one did, with the WAN side speaking first.
func TestStateRestoredTraffic(t *testing.T) {
	s, sc := scriptedEngine(t)
	r, _ := restoredLab(t, stateConfig(), saveBytes(t, s.e), labEpoch.Add(time.Hour))

	// TCP: the server sends first, in window: passes; far out of window:
	// dropped (the windows came back, not a mid-stream pickup).
	srv, cli := ap(remote1, 80), ap(lanA, 40001)
	p := r.mustIn(tcpSeqAckPkt(srv, ap(wanAddr, sc.tcpExt), header.TCPFlagAck|header.TCPFlagPsh, sc.tcpServerSeq, sc.tcpClientSeq, []byte("more")), VerdictToLAN)
	if dstAP(p) != cli {
		t.Fatalf("TCP from the server went to %v", dstAP(p))
	}
	res, _ := r.in(tcpSeqAckPkt(srv, ap(wanAddr, sc.tcpExt), header.TCPFlagAck, sc.tcpServerSeq+0x40000000, sc.tcpClientSeq, []byte("x")))
	wantDrop(t, res, DropTCPOutOfWindow)
	// An RST at the wrong place does not close it either.
	res, _ = r.in(tcpSeqAckPkt(srv, ap(wanAddr, sc.tcpExt), header.TCPFlagRst, sc.tcpServerSeq+0x40000000, 0, nil))
	wantDrop(t, res, DropTCPOutOfWindow)

	// UDP reply from the remote (address-dependent filtering remembered).
	if p := r.mustIn(udpPkt(ap(remote1, 53), ap(wanAddr, sc.udpExt), "late answer"), VerdictToLAN); dstAP(p) != ap(lanA, 5000) {
		t.Fatalf("UDP went to %v", dstAP(p))
	}
	// The forwarded flow's inside answers from its port.
	if p := r.mustOut(udpPkt(ap(lanB, 7000), sc.fwdRemote, "re"), VerdictToWAN); p.SrcPort != 7000 {
		t.Fatalf("forward reply left from port %d", p.SrcPort)
	}
	// GRE of the call from the server first, then the client's.
	p = r.mustIn(grePkt(remote1, wanAddr, sc.pptpMasq, []byte("ppp")), VerdictToLAN)
	if p.DstAddr() != lanA || greHeader(p.L4).callID() != 7 {
		t.Fatalf("GRE went to %v Call ID %d", p.DstAddr(), greHeader(p.L4).callID())
	}
	r.mustOut(grePkt(lanA, remote1, 0x100, []byte("ppp")), VerdictToWAN)
	// The control connection's stream state came back: the server's
	// next message names the masqueraded Call ID and is rewritten.
	sc.pptp.l = r
	p = sc.pptp.fromServer(pptpMsg(PPTPSetLinkInfo, 0, sc.pptpMasq))
	if got := be16(payloadOf(p), 12); got != 7 {
		t.Fatalf("Set-Link-Info from the server names Call ID %d after the restore, want 7", got)
	}
	// Plain GRE from the bound remote.
	if p := r.mustIn(greV0Pkt(remote2, wanAddr, []byte("ip")), VerdictToLAN); p.DstAddr() != lanB {
		t.Fatalf("plain GRE went to %v", p.DstAddr())
	}
	// ESP from the gateway first.
	r.espIn(remote1, sc.espIn, lanA)
	r.espOut(lanA, remote1, sc.espOut)
	// IKE and NAT-T from the remote first.
	if p := r.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), sc.ikeSPI, sc.ikeSPI^0xffff), VerdictToLAN); p.DstAddr() != lanA {
		t.Fatalf("IKE went to %v", p.DstAddr())
	}
	if p := r.mustIn(nattIKEPkt(sc.nattPeer, ap(wanAddr, 4500), 0x2222, 0x3333), VerdictToLAN); dstAP(p) != sc.nattHost {
		t.Fatalf("NAT-T went to %v", dstAP(p))
	}
	// The squelch holds.
	res, _ = r.out(espPkt(lanB, remote2, 0x5151, 9))
	wantDrop(t, res, DropESPSquelched)
}

// TestStateFailsOnFreshEngine shows what the restore is for: a new engine
// without it drops the WAN side's first packets.
func TestStateFailsOnFreshEngine(t *testing.T) {
	_, sc := scriptedEngine(t)
	fresh := newLab(t, stateConfig())
	res, _ := fresh.in(grePkt(remote1, wanAddr, sc.pptpMasq, []byte("ppp")))
	wantDrop(t, res, DropGREUnknownCall)
	res, _ = fresh.in(espPkt(remote1, wanAddr, sc.espIn, 99))
	if res.Verdict != VerdictDrop {
		t.Fatalf("ESP delivered by an engine that never saw it")
	}
}

func TestStateTimers(t *testing.T) {
	l := newLab(t, Config{})
	ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 53), "q"), VerdictToWAN).SrcPort
	l.advance(2 * time.Minute) // 3 min of the 5 min UDP timer left
	b := saveBytes(t, l.e)
	// Restored after an hour down: the timer continues from 3 min.
	r, _ := restoredLab(t, Config{}, b, labEpoch.Add(time.Hour))
	r.advance(2*time.Minute + 59*time.Second)
	if _, ok := r.mapping("udp", ap(lanA, 5000)); !ok {
		t.Fatal("mapping gone before its time")
	}
	if m, _ := r.mapping("udp", ap(lanA, 5000)); m.WAN.Port() != ext || m.Age != 5*time.Minute-time.Second {
		t.Errorf("restored mapping %+v: want port %d and age 4m59s", m, ext)
	}
	r.advance(2 * time.Second)
	if _, ok := r.mapping("udp", ap(lanA, 5000)); ok {
		t.Fatal("mapping outlived its timer")
	}
	// Expired while saved: not restored.
	_, res := restoredLab(t, Config{}, b, labEpoch.Add(time.Hour))
	if res.Kept["flows"] != 1 {
		t.Fatalf("kept %v", res.Kept)
	}
	l.advance(4 * time.Minute)
	_, res = restoredLab(t, Config{}, saveBytes(t, l.e), labEpoch.Add(time.Hour))
	if res.Kept["flows"] != 0 {
		t.Fatalf("an expired flow was restored: %v", res.Kept)
	}
}

func TestStateLimits(t *testing.T) {
	l := newLab(t, Config{})
	for i := range 10 {
		l.mustOut(udpPkt(ap(lanA, uint16(21000+i)), ap(remote1, 53), "q"), VerdictToWAN)
	}
	l.mustOut(udpPkt(ap(lanB, 25000), ap(remote1, 53), "q"), VerdictToWAN)
	b := saveBytes(t, l.e)

	// A narrower port range: the mappings outside it are dropped.
	_, res := restoredLab(t, Config{Ports: PortRange{First: 20000, Last: 21004}}, b, labEpoch)
	if res.Kept["mappings"] != 5 || res.Dropped["mappings"] != 6 {
		t.Errorf("port range: kept %v dropped %v", res.Kept, res.Dropped)
	}
	// Fewer flows per host: lanA keeps its share.
	r, res := restoredLab(t, Config{Limits: Limits{MaxFlowsPerHost: 4}}, b, labEpoch)
	if res.Kept["flows"] != 5 || res.Dropped["flows"] != 6 {
		t.Errorf("max_flows_per_host: kept %v dropped %v", res.Kept, res.Dropped)
	}
	if h := r.e.Stats().Hosts; len(h) != 2 || h[0].Flows != 4 || h[0].Mappings != 4 {
		t.Errorf("hosts %+v", h)
	}
	// Fewer mappings overall.
	_, res = restoredLab(t, Config{MaxMappings: 3}, b, labEpoch)
	if res.Kept["mappings"] != 3 {
		t.Errorf("max_mappings: kept %v dropped %v", res.Kept, res.Dropped)
	}
}

// withBody rebuilds a state file with its body edited and its header's
// length and checksum fixed, to reach the checks past the checksum.
func withBody(t *testing.T, b []byte, edit func(body []byte) []byte) []byte {
	t.Helper()
	hl := 8 + 2 + 2 + 8 + 4 + 1 + 5*int(b[24]) + 8
	body := edit(bytes.Clone(b[hl:]))
	out := bytes.Clone(b[:hl])
	binary.BigEndian.PutUint32(out[hl-8:], uint32(len(body)))
	binary.BigEndian.PutUint32(out[hl-4:], crc32.Checksum(body, crc32c))
	return append(out, body...)
}

func TestStateRejects(t *testing.T) {
	s, _ := scriptedEngine(t)
	good := saveBytes(t, s.e)
	try := func(b []byte, lan []netip.Prefix, maxAge time.Duration, now time.Time) error {
		l := newLab(t, Config{})
		l.clock.T = now
		before := l.e.snapshot(stateLAN)
		_, err := l.e.RestoreState(bytes.NewReader(b), lan, maxAge)
		if err != nil && !sameSnap(l.e.snapshot(stateLAN), before) {
			t.Errorf("a rejected file changed the engine")
		}
		return err
	}
	set := func(off int, v ...byte) []byte { b := bytes.Clone(good); copy(b[off:], v); return b }
	for _, tc := range []struct {
		name   string
		b      []byte
		lan    []netip.Prefix
		maxAge time.Duration
		now    time.Time
		want   error
		msg    string
	}{
		{name: "empty", b: nil, want: ErrStateCorrupt},
		{name: "magic", b: set(0, 'X'), want: ErrStateCorrupt, msg: "not a vpnmasq state file"},
		{name: "version 0", b: set(8, 0, 0), want: ErrStateCorrupt, msg: "version 0"},
		{name: "newer version", b: set(8, 0, 2), want: ErrStateNewer},
		{name: "flags", b: set(10, 0, 1), want: ErrStateCorrupt, msg: "flags"},
		{name: "foreign WAN", b: set(20, 198, 18, 0, 2), want: ErrStateForeign, msg: "WAN address"},
		{name: "foreign LAN", b: good, lan: []netip.Prefix{netip.MustParsePrefix("10.0.1.0/24")}, want: ErrStateForeign, msg: "LAN prefixes"},
		{name: "prefix length", b: set(29, 33), want: ErrStateCorrupt, msg: "prefix length"},
		{name: "prefix not masked", b: set(25, 10, 0, 0, 1), want: ErrStateCorrupt, msg: "not masked"},
		{name: "too old", b: good, maxAge: time.Minute, now: labEpoch.Add(time.Hour), want: ErrStateTooOld},
		{name: "from the future", b: good, now: labEpoch.Add(-time.Hour), want: ErrStateCorrupt, msg: "future"},
		{name: "body length", b: append(bytes.Clone(good), 0), want: ErrStateCorrupt, msg: "header says"},
		{name: "checksum", b: set(len(good)-1, good[len(good)-1]^1), want: ErrStateCorrupt, msg: "checksum"},
		{name: "section order", b: withBody(t, good, func(b []byte) []byte { b[0] = secIKE; return b }), want: ErrStateCorrupt, msg: "was expected"},
		{name: "section length", b: withBody(t, good, func(b []byte) []byte { binary.BigEndian.PutUint32(b[1:], 1<<30); return b }), want: ErrStateCorrupt, msg: "beyond the file"},
		{name: "count", b: withBody(t, good, func(b []byte) []byte { binary.BigEndian.PutUint32(b[5:], 1<<31); return b }), want: ErrStateCorrupt, msg: "exceeds"},
		{name: "protocol", b: withBody(t, good, func(b []byte) []byte { b[9] = 99; return b }), want: ErrStateCorrupt, msg: "protocol 99"},
		{name: "boolean", b: withBody(t, good, func(b []byte) []byte { b[10] = 2; return b }), want: ErrStateCorrupt, msg: "boolean"},
		{name: "trailing section bytes", b: withBody(t, good, func(b []byte) []byte {
			l := binary.BigEndian.Uint32(b[1:])
			binary.BigEndian.PutUint32(b[1:], l+1)
			return append(b[:5+l], append([]byte{0}, b[5+l:]...)...)
		}), want: ErrStateCorrupt, msg: "after the records"},
		{name: "trailing body bytes", b: withBody(t, good, func(b []byte) []byte { return append(b, 0) }), want: ErrStateCorrupt, msg: "after the last section"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lan, now := tc.lan, tc.now
			if lan == nil {
				lan = stateLAN
			}
			if now.IsZero() {
				now = labEpoch
			}
			err := try(tc.b, lan, tc.maxAge, now)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want %v with %q", err, tc.want, tc.msg)
			}
		})
	}
	t.Run("every truncation", func(t *testing.T) {
		for n := range len(good) {
			if _, err := decodeState(good[:n]); !errors.Is(err, ErrStateCorrupt) {
				t.Fatalf("%d of %d bytes: %v", n, len(good), err)
			}
		}
	})
	t.Run("inconsistent records", func(t *testing.T) {
		snap := s.e.snapshot(stateLAN)
		for name, edit := range map[string]func(*stateSnap){
			"tcp state":     func(s *stateSnap) { s.mappings[tcpMapping(s)].flows[0].tcp.state = 99 },
			"window scale":  func(s *stateSnap) { s.mappings[tcpMapping(s)].flows[0].tcp.peer[1].scale = 15 },
			"esp state":     func(s *stateSnap) { s.esp[0].state = 9 },
			"esp spis":      func(s *stateSnap) { s.esp[0].outSPI, s.esp[0].inSPI = 0, 0 },
			"esp claim":     func(s *stateSnap) { s.esp[0].claim = 1000 },
			"esp waiting":   func(s *stateSnap) { s.esp[0].waiting = s.esp[0].state != espWaiting },
			"pptp position": func(s *stateSnap) { s.pptp[0].dirs[0].length, s.pptp[0].dirs[0].have = 20, 30 },
			"pending":       func(s *stateSnap) { s.pending[0].list = make([]pendingInbound, espMaxPending+1) },
			"time":          func(s *stateSnap) { s.gre[0].expires = 1 << 62 },
			"max window":    func(s *stateSnap) { s.mappings[tcpMapping(s)].flows[0].tcp.peer[0].maxWin = tcpMaxWin + 1 },
			"pending syn":   func(s *stateSnap) { s.mappings[tcpMapping(s)].flows[0].tcp.pending.ws = 15 },
			"edit count":    func(s *stateSnap) { s.pptp[0].dirs[1].nEdits = 1 << 41 },
			"esp retries":   func(s *stateSnap) { s.esp[0].retries = 1 << 21 },
			"header length": func(s *stateSnap) { s.pptp[0].dirs[0].length, s.pptp[0].dirs[0].have = 0, pptpHeaderLen },
		} {
			c := *snap
			c.mappings = cloneMappings(snap.mappings)
			c.esp = bytesClone(snap.esp)
			c.pptp = bytesClone(snap.pptp)
			c.pending = bytesClone(snap.pending)
			c.gre = bytesClone(snap.gre)
			edit(&c)
			if _, err := decodeState(encodeState(&c)); !errors.Is(err, ErrStateCorrupt) {
				t.Errorf("%s: %v", name, err)
			}
		}
	})
}

func tcpMapping(s *stateSnap) int {
	for i, m := range s.mappings {
		if m.proto == ProtoTCP {
			return i
		}
	}
	panic("no TCP mapping")
}

func bytesClone[T any](s []T) []T { return append([]T(nil), s...) }

func cloneMappings(in []snapMapping) []snapMapping {
	out := bytesClone(in)
	for i := range out {
		out[i].flows = bytesClone(out[i].flows)
	}
	return out
}

const stateTestdataV1 = "testdata/state-v1.bin"

// TestStateWriteTestdata writes the file of the current format from the
// scripted engine when run with -update-state-testdata. Files of earlier
// formats are never rewritten: they are what a previous release wrote.
func TestStateWriteTestdata(t *testing.T) {
	if !*updateStateTestdata {
		t.Skip("run with -update-state-testdata to rewrite the file of the current format")
	}
	if StateVersion != 1 {
		t.Fatalf("write testdata/state-v%d.bin and keep %s", StateVersion, stateTestdataV1)
	}
	s, _ := scriptedEngine(t)
	if err := os.WriteFile(stateTestdataV1, saveBytes(t, s.e), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestStateReadsV1 reads the file of format 1 (the previous release's,
// once the format changes) and checks the state it restores.
func TestStateReadsV1(t *testing.T) {
	b, err := os.ReadFile(stateTestdataV1)
	if err != nil {
		t.Fatal(err)
	}
	r, res := restoredLab(t, stateConfig(), b, labEpoch.Add(time.Hour))
	if res.DroppedTotal() != 0 || res.Kept["flows"] < 5 || res.Kept["pptp_calls"] != 1 || res.Kept["esp"] < 3 || res.Kept["ike"] != 3 {
		t.Fatalf("kept %v dropped %v", res.Kept, res.Dropped)
	}
	calls := r.e.PPTPCalls()
	if len(calls) != 1 {
		t.Fatalf("calls %+v", calls)
	}
	if p := r.mustIn(grePkt(remote1, wanAddr, calls[0].MasqCallID, []byte("ppp")), VerdictToLAN); p.DstAddr() != lanA {
		t.Fatalf("GRE went to %v", p.DstAddr())
	}
	r.espIn(remote1, 0xb0b0, lanA)
}

func FuzzStateDecode(f *testing.F) {
	s, _ := scriptedEngine(f)
	f.Add(saveBytes(f, s.e))
	if b, err := os.ReadFile(stateTestdataV1); err == nil {
		f.Add(b)
	}
	f.Add([]byte("VMQSTATE"))
	f.Fuzz(func(t *testing.T, b []byte) {
		snap, err := decodeState(b)
		if err != nil {
			return
		}
		// What decodes re-encodes to the same bytes, and restores into an
		// engine (whatever its contents) without a panic.
		if again := encodeState(snap); !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs")
		}
		clock := &FakeClock{T: snap.created}
		e := New(Config{WANAddr: netip.AddrFrom4(snap.wan), Clock: clock, Limits: Limits{MaxFlows: 64}})
		if _, err := e.RestoreState(bytes.NewReader(b), snap.lan, 0); err != nil {
			t.Fatalf("restore of a decoded file: %v", err)
		}
		clock.Advance(time.Hour)
		e.Expire()
	})
}

// TestStateRejectsFlagBytes feeds sections with undefined flag bits to the
// section decoder.
func TestStateRejectsFlagBytes(t *testing.T) {
	for name, tc := range map[string]struct {
		kind  int
		write func(w *stateWriter)
	}{
		"flow flags": {secMappings, func(w *stateWriter) {
			w.u32(1)
			w.u8(ProtoUDP)
			w.flag(false)
			w.ep(endpoint{})
			w.u16(20000)
			w.i64(0)
			w.i64(0)
			w.ep(endpoint{})
			w.i64(0)
			w.u32(1)
			w.ep(endpoint{})
			w.i64(1)
			w.i64(0)
			w.u8(8)
		}},
		"esp flags": {secESP, func(w *stateWriter) {
			w.u32(1)
			w.b = append(w.b, make([]byte, 8)...)
			w.u32(1)
			w.u32(0)
			w.u8(uint8(espWaiting))
			w.i64(0)
			w.i64(0)
			w.i64(0)
			w.u32(0)
			w.u32(0)
			w.u32(^uint32(0))
			w.u8(5)
		}},
		"pptp connection flags": {secPPTP, func(w *stateWriter) {
			w.u32(1)
			w.ep(endpoint{})
			w.ep(endpoint{})
			w.i64(0)
			w.u8(4)
			var d pptpStream
			writeStream(w, &d)
			writeStream(w, &d)
			w.u32(0)
		}},
		"pptp call flags": {secPPTP, func(w *stateWriter) {
			w.u32(1)
			w.ep(endpoint{})
			w.ep(endpoint{})
			w.i64(0)
			w.u8(0)
			var d pptpStream
			writeStream(w, &d)
			writeStream(w, &d)
			w.u32(1)
			w.u16(1)
			w.u16(2)
			w.u16(3)
			w.u8(4)
			w.b = append(w.b, make([]byte, 32)...)
		}},
	} {
		var w stateWriter
		tc.write(&w)
		r := stateReader{b: w.b}
		decodeSection(&r, &stateSnap{}, tc.kind)
		if r.err == nil || !strings.Contains(r.err.Error(), "flags") && !strings.Contains(r.err.Error(), "inconsistent") {
			t.Errorf("%s: %v", name, r.err)
		}
	}
}

// BenchmarkStateSave100k saves an engine of 100 000 UDP flows and restores
// it, reporting the longest wait for the engine's lock while the snapshot
// copies (what the packet loops feel).
func BenchmarkStateSave100k(b *testing.B) {
	l := newLab(b, Config{Limits: Limits{HostFlowRate: 1 << 30, HostFlowBurst: 1 << 30, MaxFlowsPerHost: 1 << 20, MaxMappingsPerHost: 1 << 20}})
	for i := range 100000 { // 100 hosts × 10 ports × 100 remote ports
		host := netip.AddrFrom4([4]byte{10, 0, 1, byte(i / 1000)})
		l.mustOut(udpPkt(ap(host, uint16(1024+i/100%10)), ap(remote1, uint16(1+i%100)), "q"), VerdictToWAN)
	}
	b.ResetTimer()
	var n int
	for range b.N {
		// A packet loop's view: the longest wait for the lock while the
		// snapshot runs.
		stop, worst := make(chan struct{}), make(chan time.Duration)
		go func() {
			var w time.Duration
			for {
				select {
				case <-stop:
					worst <- w
					return
				default:
				}
				t0 := time.Now()
				l.e.mu.Lock()
				w = max(w, time.Since(t0))
				l.e.mu.Unlock()
				time.Sleep(50 * time.Microsecond)
			}
		}()
		start := time.Now()
		snap := l.e.snapshot(stateLAN)
		copyTime := time.Since(start)
		close(stop)
		b.ReportMetric(float64((<-worst).Microseconds()), "µs-max-lock-wait")
		enc := encodeState(snap)
		n = len(enc)
		b.ReportMetric(float64(copyTime.Microseconds()), "µs-snapshot")
		start = time.Now()
		c := 0
		for _, f := range l.e.table.flows {
			if f.expires > 0 {
				c++
			}
		}
		b.ReportMetric(float64(time.Since(start).Microseconds()), "µs-maploop")
		e := New(Config{WANAddr: wanAddr, Clock: l.clock, Limits: l.e.cfg.Limits})
		if _, err := e.RestoreState(bytes.NewReader(enc), stateLAN, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n), "bytes")
}

// TestStateSaveDuringTraffic saves while packets create and expire flows
// (run with -race): the batched copy releases the lock between batches.
func TestStateSaveDuringTraffic(t *testing.T) {
	e := New(Config{WANAddr: wanAddr, Limits: Limits{HostFlowRate: 1 << 30, HostFlowBurst: 1 << 30}})
	for i := range 3000 {
		p := mustParse(t, udpPkt(ap(lanA, uint16(21000+i%500)), ap(remote1, uint16(1+i/500)), "q"))
		e.Outbound(p)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20000 {
			p := mustParse(t, udpPkt(ap(lanB, uint16(22000+i%3000)), ap(remote2, 53), "q"))
			e.Outbound(p)
			if i%1000 == 0 {
				e.Expire()
			}
		}
	}()
	for range 20 {
		var buf bytes.Buffer
		if err := e.SaveState(&buf, stateLAN); err != nil {
			t.Fatal(err)
		}
		if _, err := decodeState(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
	}
	<-done
}
