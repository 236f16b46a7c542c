package nat

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// A third LAN host and an IPsec server behind the router.
var (
	lanC     = netip.MustParseAddr("10.0.0.30")
	ipsecSrv = netip.MustParseAddr("10.0.0.77")
)

// IKEv2 exchange types (RFC 7296 section 3.1) and the IKEv1 one the tests use.
const (
	ikeSAInit        = 34
	ikeInformational = 37
	ikev1MainMode    = 2
)

// ikeMessage encodes an IKE header of the given major version with the two
// SPIs, followed by a few body bytes; its length field is the whole message.
func ikeMessage(major uint8, ispi, rspi uint64, exchange uint8) []byte {
	b := make([]byte, ikeHeaderLen+12)
	binary.BigEndian.PutUint64(b[0:8], ispi)
	binary.BigEndian.PutUint64(b[8:16], rspi)
	b[16] = 33 // next payload: SA
	b[17] = major << 4
	b[18] = exchange
	b[19] = 0x08 // initiator flag
	binary.BigEndian.PutUint32(b[20:24], 1)
	binary.BigEndian.PutUint32(b[24:28], uint32(len(b)))
	copy(b[ikeHeaderLen:], "ike body...")
	return b
}

// ikePkt is an IKEv2 message on UDP (port 500: no marker).
func ikePkt(src, dst netip.AddrPort, ispi, rspi uint64) []byte {
	return udpPkt(src, dst, string(ikeMessage(2, ispi, rspi, ikeSAInit)))
}

// nattIKEPkt is an IKEv2 message after the 4-byte non-ESP marker (UDP 4500).
func nattIKEPkt(src, dst netip.AddrPort, ispi, rspi uint64) []byte {
	return udpPkt(src, dst, "\x00\x00\x00\x00"+string(ikeMessage(2, ispi, rspi, ikeInformational)))
}

// nattESPPkt is ESP in UDP (RFC 3948): SPI, sequence number, ciphertext.
func nattESPPkt(src, dst netip.AddrPort, spi uint32) []byte {
	b := make([]byte, 8, 40)
	binary.BigEndian.PutUint32(b[0:4], spi)
	binary.BigEndian.PutUint32(b[4:8], 1)
	b = append(b, "encrypted payload 0123456789abc"...)
	return udpPkt(src, dst, string(b))
}

// nattKeepalive is the one-byte NAT-keepalive (RFC 3948 section 2.3).
func nattKeepalivePkt(src, dst netip.AddrPort) []byte { return udpPkt(src, dst, "\xff") }

// logCapture collects an engine's JSON log lines at debug level.
type logCapture struct{ buf bytes.Buffer }

func (c *logCapture) logger() zerolog.Logger {
	return zerolog.New(&c.buf).Level(zerolog.DebugLevel)
}

// entries returns the log lines with the given message, decoded.
func (c *logCapture) entries(t testing.TB, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(c.buf.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		if m["message"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// newLoggingLab is newLab with the engine's debug log captured.
func newLoggingLab(t testing.TB, cfg Config) (*lab, *logCapture) {
	c := &logCapture{}
	cfg.Log = c.logger()
	return newLab(t, cfg), c
}

func hex64(v uint64) string { return fmt.Sprintf("%016x", v) }
func hex32(v uint32) string { return fmt.Sprintf("%08x", v) }

// ikePayload returns the IKE header of a UDP packet that went through
// (after the marker on 4500).
func ikePayload(t testing.TB, p *Packet) ikeHeader {
	t.Helper()
	payload := header.UDP(p.L4).Payload()
	if p.SrcPort == PortNATT || p.DstPort == PortNATT {
		payload = payload[4:]
	}
	h, ok := parseIKEHeader(payload)
	if !ok {
		t.Fatalf("delivered payload is no longer an IKE message: % x", payload)
	}
	return h
}

func TestParseIKEHeader(t *testing.T) {
	valid := ikeMessage(2, 0x1122334455667788, 0x99aabbccddeeff00, ikeSAInit)
	with := func(f func(b []byte)) []byte {
		b := append([]byte(nil), valid...)
		f(b)
		return b
	}
	for _, tc := range []struct {
		name string
		b    []byte
		ok   bool
		want ikeHeader
	}{
		{"an IKEv2 header yields both SPIs, the exchange and the version", valid, true,
			ikeHeader{ispi: 0x1122334455667788, rspi: 0x99aabbccddeeff00, exchange: ikeSAInit, major: 2}},
		{"an IKEv1 (ISAKMP) header is accepted", ikeMessage(1, 7, 0, ikev1MainMode), true,
			ikeHeader{ispi: 7, exchange: ikev1MainMode, major: 1}},
		{"a zero responder SPI is a first message", ikeMessage(2, 1, 0, ikeSAInit), true,
			ikeHeader{ispi: 1, exchange: ikeSAInit, major: 2}},
		{"a length field larger than the datagram is accepted (a first fragment)",
			with(func(b []byte) { binary.BigEndian.PutUint32(b[24:], 9000) }), true,
			ikeHeader{ispi: 0x1122334455667788, rspi: 0x99aabbccddeeff00, exchange: ikeSAInit, major: 2}},
		{"27 bytes are too short", valid[:27], false, ikeHeader{}},
		{"nothing at all is rejected", nil, false, ikeHeader{}},
		{"a zero initiator SPI is rejected", ikeMessage(2, 0, 5, ikeSAInit), false, ikeHeader{}},
		{"major version 3 is rejected", with(func(b []byte) { b[17] = 0x30 }), false, ikeHeader{}},
		{"major version 0 is rejected", with(func(b []byte) { b[17] = 0x02 }), false, ikeHeader{}},
		{"a length field shorter than the header is rejected",
			with(func(b []byte) { binary.BigEndian.PutUint32(b[24:], 27) }), false, ikeHeader{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ok := parseIKEHeader(tc.b)
			if ok != tc.ok || h != tc.want {
				t.Errorf("parseIKEHeader = %+v, %v; want %+v, %v", h, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestClassifyNATT(t *testing.T) {
	esp := []byte{0xc0, 0, 0, 1, 0, 0, 0, 1}
	for _, tc := range []struct {
		name    string
		payload []byte
		want    nattKind
	}{
		{"a single 0xFF byte is a keepalive", []byte{0xff}, nattKeepalive},
		{"a zero marker followed by IKE is IKE", append([]byte{0, 0, 0, 0}, ikeMessage(2, 1, 0, ikeSAInit)...), nattIKE},
		{"a bare zero marker is IKE (its header is checked later)", []byte{0, 0, 0, 0}, nattIKE},
		{"a non-zero SPI and sequence number is ESP", esp, nattESP},
		{"an ESP packet starting with 0xFF is ESP, not a keepalive", append([]byte{0xff}, esp[1:]...), nattESP},
		{"an empty payload is malformed", nil, nattMalformed},
		{"a single byte other than 0xFF is malformed", []byte{0}, nattMalformed},
		{"seven bytes of a non-zero SPI are malformed", esp[:7], nattMalformed},
		{"three zero bytes are malformed", []byte{0, 0, 0}, nattMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := classifyNATT(tc.payload); got != tc.want {
				t.Errorf("classifyNATT(% x) = %d, want %d", tc.payload, got, tc.want)
			}
		})
	}
}

func TestIKEOnPort500(t *testing.T) {
	const ispiA, ispiB, ispiC = 0xa1a1a1a1a1a1a1a1, 0xb2b2b2b2b2b2b2b2, 0xc3c3c3c3c3c3c3c3
	const rspiA, rspiB, rspiC = 0x0a0a0a0a0a0a0a0a, 0x0b0b0b0b0b0b0b0b, 0x0c0c0c0c0c0c0c0c

	t.Run("source port 500 is kept on the WAN side for every LAN host", func(t *testing.T) {
		l := newLab(t, Config{})
		for i, host := range []netip.Addr{lanA, lanB, lanC} {
			p := l.mustOut(ikePkt(ap(host, 500), ap(remote1, 500), uint64(0x100+i), 0), VerdictToWAN)
			if srcAP(p) != ap(wanAddr, 500) || dstAP(p) != ap(remote1, 500) {
				t.Errorf("host %v: left as %v→%v, want %v→%v", host, srcAP(p), dstAP(p), ap(wanAddr, 500), ap(remote1, 500))
			}
		}
		if ms := l.e.Mappings(); len(ms) != 0 {
			t.Errorf("IKE took ordinary mappings: %+v", ms)
		}
	})
	t.Run("several LAN hosts to one remote at once: replies are demultiplexed by initiator SPI", func(t *testing.T) {
		l := newLab(t, Config{})
		hosts := []struct {
			addr       netip.Addr
			ispi, rspi uint64
		}{{lanA, ispiA, rspiA}, {lanB, ispiB, rspiB}, {lanC, ispiC, rspiC}}
		for _, h := range hosts {
			l.mustOut(ikePkt(ap(h.addr, 500), ap(remote1, 500), h.ispi, 0), VerdictToWAN)
		}
		// Replies in reverse order, then the hosts' next messages and the
		// remote's answers interleaved.
		for i := len(hosts) - 1; i >= 0; i-- {
			h := hosts[i]
			p := l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), h.ispi, h.rspi), VerdictToLAN)
			if dstAP(p) != ap(h.addr, 500) || srcAP(p) != ap(remote1, 500) {
				t.Errorf("reply with ispi %x went %v→%v, want to %v", h.ispi, srcAP(p), dstAP(p), ap(h.addr, 500))
			}
			if got := ikePayload(t, p); got.ispi != h.ispi || got.rspi != h.rspi {
				t.Errorf("SPIs changed in transit: %+v", got)
			}
		}
		for round := range 3 {
			for _, h := range hosts {
				p := l.mustOut(ikePkt(ap(h.addr, 500), ap(remote1, 500), h.ispi, h.rspi), VerdictToWAN)
				if p.SrcPort != 500 {
					t.Fatalf("round %d host %v: source port %d", round, h.addr, p.SrcPort)
				}
				r := l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), h.ispi, h.rspi), VerdictToLAN)
				if r.DstAddr() != h.addr {
					t.Fatalf("round %d: reply for %v delivered to %v", round, h.addr, r.DstAddr())
				}
			}
		}
	})
	t.Run("once seen, the responder SPI alone finds the session", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispiA, rspiA), VerdictToLAN)
		l.clock.Advance(time.Second)
		// lanB is now the most recent IKE host of remote1, so only the
		// responder SPI can send this one to lanA.
		l.mustOut(ikePkt(ap(lanB, 500), ap(remote1, 500), ispiB, 0), VerdictToWAN)
		p := l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), 0x7777, rspiA), VerdictToLAN)
		if p.DstAddr() != lanA {
			t.Errorf("message with lanA's responder SPI delivered to %v", p.DstAddr())
		}
	})
	t.Run("a host retransmitting its own initiator SPI is not a collision", func(t *testing.T) {
		l := newLab(t, Config{})
		for range 3 {
			l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		}
		if n := l.e.Drops.Get(DropIKECollision); n != 0 {
			t.Errorf("ike_cookie_collision %d", n)
		}
	})
	t.Run("the same initiator SPI towards different remotes is no collision", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		l.mustOut(ikePkt(ap(lanB, 500), ap(remote2, 500), ispiA, 0), VerdictToWAN)
		if p := l.mustIn(ikePkt(ap(remote2, 500), ap(wanAddr, 500), ispiA, rspiB), VerdictToLAN); p.DstAddr() != lanB {
			t.Errorf("remote2's reply delivered to %v", p.DstAddr())
		}
		if p := l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispiA, rspiA), VerdictToLAN); p.DstAddr() != lanA {
			t.Errorf("remote1's reply delivered to %v", p.DstAddr())
		}
	})
	t.Run("an initiator SPI colliding with another host's live session is dropped, counted and logged", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		r, _ := l.out(ikePkt(ap(lanB, 500), ap(remote1, 500), ispiA, 0))
		wantDrop(t, r, DropIKECollision)
		if n := l.e.Drops.Get(DropIKECollision); n != 1 {
			t.Errorf("ike_cookie_collision counter %d, want 1", n)
		}
		lines := logs.entries(t, "ike initiator spi collides with another LAN host's live session; dropped")
		if len(lines) != 1 {
			t.Fatalf("%d collision log lines, want 1", len(lines))
		}
		if e := lines[0]; e["level"] != "warn" || e["host"] != "10.0.0.20:500" || e["owner"] != "10.0.0.10:500" ||
			e["ispi"] != hex64(ispiA) || e["remote"] != remote1.String() {
			t.Errorf("collision log line %v", e)
		}
		// The owner is unaffected.
		if p := l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispiA, rspiA), VerdictToLAN); p.DstAddr() != lanA {
			t.Errorf("owner's reply delivered to %v", p.DstAddr())
		}
		// A collision through the responder SPI is one too.
		r, _ = l.out(ikePkt(ap(lanB, 500), ap(remote1, 500), ispiB, rspiA))
		wantDrop(t, r, DropIKECollision)
	})
	t.Run("after the owner's session timed out the initiator SPI is free again", func(t *testing.T) {
		l := newLab(t, Config{IPsec: IPsecConfig{IKETimeout: 10 * time.Minute}})
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		l.clock.Advance(10 * time.Minute) // no sweep: lookups honour the timer
		l.mustOut(ikePkt(ap(lanB, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		if p := l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispiA, rspiB), VerdictToLAN); p.DstAddr() != lanB {
			t.Errorf("reply delivered to %v, want the new owner", p.DstAddr())
		}
	})
	t.Run("a new IKE SA the remote starts goes to the host that exchanged IKE with it most recently", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		l.clock.Advance(time.Second)
		l.mustOut(ikePkt(ap(lanB, 500), ap(remote1, 500), ispiB, 0), VerdictToWAN)
		l.clock.Advance(time.Second)
		l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispiA, rspiA), VerdictToLAN) // lanA most recent now
		const remoteISPI = 0xfefefefefefefefe
		p := l.mustIn(udpPkt(ap(remote1, 500), ap(wanAddr, 500), string(ikeMessage(1, remoteISPI, 0, ikev1MainMode))), VerdictToLAN)
		if dstAP(p) != ap(lanA, 500) {
			t.Fatalf("remote-started exchange delivered to %v, want lanA", dstAP(p))
		}
		// It is tracked from then on: lanA's answer is no collision and the
		// remote's next message finds lanA even after lanB talks again.
		l.mustOut(udpPkt(ap(lanA, 500), ap(remote1, 500), string(ikeMessage(1, remoteISPI, 0x4242, ikev1MainMode))), VerdictToWAN)
		l.clock.Advance(time.Second)
		l.mustOut(ikePkt(ap(lanB, 500), ap(remote1, 500), ispiB, 0), VerdictToWAN)
		if p := l.mustIn(udpPkt(ap(remote1, 500), ap(wanAddr, 500), string(ikeMessage(1, remoteISPI, 0x4242, ikev1MainMode))), VerdictToLAN); p.DstAddr() != lanA {
			t.Errorf("second message of the remote's exchange delivered to %v", p.DstAddr())
		}
		var found bool
		for _, e := range logs.entries(t, "ike session") {
			found = found || (e["host"] == "10.0.0.10:500" && e["ispi"] == hex64(remoteISPI) && strings.Contains(fmt.Sprint(e["why"]), "most recent"))
		}
		if !found {
			t.Error("no ike session log line for the remote-started exchange")
		}
	})
	t.Run("IKE from a remote no LAN host talks to is dropped as unsolicited", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		r, _ := l.in(ikePkt(ap(remote2, 500), ap(wanAddr, 500), ispiA, rspiA))
		wantDrop(t, r, DropUnsolicited)
	})
	t.Run("each IKE session is logged with host, remote and both SPIs", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispiA, rspiA), VerdictToLAN)
		sessions := logs.entries(t, "ike session")
		if len(sessions) != 1 {
			t.Fatalf("%d ike session lines, want 1", len(sessions))
		}
		if e := sessions[0]; e["level"] != "debug" || e["host"] != "10.0.0.10:500" || e["remote"] != remote1.String() ||
			e["ispi"] != hex64(ispiA) || e["rspi"] != hex64(0) {
			t.Errorf("ike session line %v", e)
		}
		learned := logs.entries(t, "ike session responder spi learned")
		if len(learned) != 1 || learned[0]["rspi"] != hex64(rspiA) {
			t.Errorf("responder SPI log lines %v", learned)
		}
	})
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"an empty payload", nil},
		{"a payload shorter than an IKE header", ikeMessage(2, ispiA, 0, ikeSAInit)[:20]},
		{"a zero initiator SPI", ikeMessage(2, 0, 0, ikeSAInit)},
		{"an unknown major version", ikeMessage(4, ispiA, 0, ikeSAInit)},
		{"a NAT-T non-ESP marker", append([]byte{0, 0, 0, 0}, ikeMessage(2, ispiA, 0, ikeSAInit)...)},
	} {
		t.Run(tc.name+" on UDP 500 is dropped as malformed both ways", func(t *testing.T) {
			l := newLab(t, Config{})
			l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
			r, _ := l.out(udpPkt(ap(lanA, 500), ap(remote1, 500), string(tc.payload)))
			wantDrop(t, r, DropIKEMalformed)
			r, _ = l.in(udpPkt(ap(remote1, 500), ap(wanAddr, 500), string(tc.payload)))
			wantDrop(t, r, DropIKEMalformed)
			if n := l.e.Drops.Get(DropIKEMalformed); n != 2 {
				t.Errorf("ike_malformed counter %d, want 2", n)
			}
		})
	}
	t.Run("a fragmented IKE message keeps port 500 and its tail follows", func(t *testing.T) {
		l := newLab(t, Config{})
		big := append(ikeMessage(2, ispiA, 0, ikeSAInit), bigPayload[:200]...)
		binary.BigEndian.PutUint32(big[24:], uint32(len(big)))
		first, tail := fragmentAt(udpPkt(ap(lanA, 500), ap(remote1, 500), string(big)), 64)
		p := l.mustOut(first, VerdictToWAN)
		if srcAP(p) != ap(wanAddr, 500) {
			t.Errorf("first fragment left from %v", srcAP(p))
		}
		pt := l.mustOut(tail, VerdictToWAN)
		if pt.SrcAddr() != wanAddr {
			t.Errorf("tail left from %v", pt.SrcAddr())
		}
		whole, err := reassemble(p.Buf, pt.Buf)
		if err != nil {
			t.Fatal(err)
		}
		if err := validatePacket(whole); err != nil {
			t.Errorf("reassembled IKE message: %v", err)
		}
	})
}

func TestIKETimers(t *testing.T) {
	const ispi, rspi = 0x1111222233334444, 0x5555666677778888
	const newISPI = 0x9999aaaabbbbcccc // a new ISAKMP SA the remote starts
	establish := func(l *lab) {
		l.t.Helper()
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispi, 0), VerdictToWAN)
		l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispi, rspi), VerdictToLAN)
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispi, rspi), VerdictToWAN)
	}
	remoteMessages := []struct {
		name string
		b    []byte
	}{
		{"a message of the existing IKE SA", ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispi, rspi)},
		{"a new IKE SA", udpPkt(ap(remote1, 500), ap(wanAddr, 500), string(ikeMessage(1, newISPI, 0, ikev1MainMode)))},
	}
	for _, m := range remoteMessages {
		t.Run("after 30 min without traffic a remote-initiated rekey ("+m.name+") still reaches the host", func(t *testing.T) {
			l := newLab(t, Config{})
			establish(l)
			l.advance(30 * time.Minute)
			if p := l.mustIn(append([]byte(nil), m.b...), VerdictToLAN); dstAP(p) != ap(lanA, 500) {
				t.Errorf("delivered to %v", dstAP(p))
			}
		})
		t.Run("after ike_timeout without traffic a remote-initiated rekey ("+m.name+") is dropped", func(t *testing.T) {
			l := newLab(t, Config{})
			establish(l)
			l.advance(35 * time.Minute)
			r, _ := l.in(append([]byte(nil), m.b...))
			wantDrop(t, r, DropUnsolicited)
		})
		t.Run("just before ike_timeout a remote-initiated rekey ("+m.name+") still arrives, even unswept", func(t *testing.T) {
			l := newLab(t, Config{})
			establish(l)
			l.clock.Advance(35*time.Minute - time.Nanosecond)
			l.mustIn(append([]byte(nil), m.b...), VerdictToLAN)
		})
		t.Run("a configured ike_timeout ("+m.name+") is honoured without a sweep", func(t *testing.T) {
			l := newLab(t, Config{IPsec: IPsecConfig{IKETimeout: 5 * time.Minute}})
			establish(l)
			l.clock.Advance(5 * time.Minute)
			r, _ := l.in(append([]byte(nil), m.b...))
			wantDrop(t, r, DropUnsolicited)
		})
	}
	t.Run("inbound traffic refreshes the session as well as outbound", func(t *testing.T) {
		l := newLab(t, Config{})
		establish(l)
		for range 4 { // 2 hours, only the remote talking
			l.advance(30 * time.Minute)
			l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispi, rspi), VerdictToLAN)
		}
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispi, rspi), VerdictToWAN)
		if n := l.e.Drops.Get(DropIKECollision); n != 0 {
			t.Errorf("collisions %d", n)
		}
	})
	t.Run("an expired session is swept from every index", func(t *testing.T) {
		l := newLab(t, Config{})
		establish(l)
		l.advance(35 * time.Minute)
		if n := len(l.e.ike.byI) + len(l.e.ike.byR) + len(l.e.ike.lastIKE); n != 0 {
			t.Errorf("%d IKE index entries left after expiry", n)
		}
	})
	t.Run("a session replaced before the sweep leaves no stale responder index behind", func(t *testing.T) {
		l := newLab(t, Config{IPsec: IPsecConfig{IKETimeout: 10 * time.Minute}})
		establish(l)
		l.clock.Advance(10 * time.Minute) // timed out, not swept yet
		// The same initiator SPI starts over (e.g. the host restarted).
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispi, 0), VerdictToWAN)
		l.advance(10 * time.Minute)
		if n := len(l.e.ike.byI) + len(l.e.ike.byR) + len(l.e.ike.lastIKE); n != 0 {
			t.Errorf("%d IKE index entries left after everything expired (byI %d, byR %d)", n, len(l.e.ike.byI), len(l.e.ike.byR))
		}
	})
}

func TestNATTraversal(t *testing.T) {
	const ispiA, ispiB = 0xa1a1a1a1a1a1a1a1, 0xb2b2b2b2b2b2b2b2
	const rspiA, rspiB = 0x0a0a0a0a0a0a0a0a, 0x0b0b0b0b0b0b0b0b

	t.Run("IKE after the non-ESP marker keeps 4500 and its reply reaches the host", func(t *testing.T) {
		l := newLab(t, Config{})
		p := l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, 0), VerdictToWAN)
		if srcAP(p) != ap(wanAddr, 4500) {
			t.Errorf("left from %v, want %v", srcAP(p), ap(wanAddr, 4500))
		}
		r := l.mustIn(nattIKEPkt(ap(remote1, 4500), ap(wanAddr, 4500), ispiA, rspiA), VerdictToLAN)
		if dstAP(r) != ap(lanA, 4500) {
			t.Errorf("reply delivered to %v", dstAP(r))
		}
		if h := ikePayload(t, r); h.ispi != ispiA || h.rspi != rspiA {
			t.Errorf("SPIs changed: %+v", h)
		}
	})
	t.Run("ESP in UDP passes both ways on the host's flow", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, 0), VerdictToWAN)
		p := l.mustOut(nattESPPkt(ap(lanA, 4500), ap(remote1, 4500), 0xc0000001), VerdictToWAN)
		if srcAP(p) != ap(wanAddr, 4500) {
			t.Errorf("ESP-in-UDP left from %v", srcAP(p))
		}
		r := l.mustIn(nattESPPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xd0000001), VerdictToLAN)
		if dstAP(r) != ap(lanA, 4500) {
			t.Errorf("ESP-in-UDP delivered to %v", dstAP(r))
		}
		if spi := binary.BigEndian.Uint32(header.UDP(r.L4).Payload()); spi != 0xd0000001 {
			t.Errorf("SPI changed to %#x", spi)
		}
	})
	t.Run("a NAT-T float from 500 to 4500 keeps the IKE session", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispiA, rspiA), VerdictToLAN)
		l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, rspiA), VerdictToWAN)
		if n := l.e.Drops.Get(DropIKECollision); n != 0 {
			t.Fatalf("the float counted as a collision")
		}
		if r := l.mustIn(nattIKEPkt(ap(remote1, 4500), ap(wanAddr, 4500), ispiA, rspiA), VerdictToLAN); dstAP(r) != ap(lanA, 4500) {
			t.Errorf("reply after the float delivered to %v", dstAP(r))
		}
	})
	t.Run("IKE to WAN port 500 reaches the host's port 500 even after its session floated to 4500", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispiA, rspiA), VerdictToLAN)
		l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, rspiA), VerdictToWAN)
		// Without a non-ESP marker the message must not reach port 4500,
		// where the host would take it for ESP.
		if r := l.mustIn(ikePkt(ap(remote1, 500), ap(wanAddr, 500), ispiA, rspiA), VerdictToLAN); dstAP(r) != ap(lanA, 500) {
			t.Errorf("marker-less IKE delivered to %v", dstAP(r))
		}
		if r := l.mustIn(nattIKEPkt(ap(remote1, 4500), ap(wanAddr, 4500), ispiA, rspiA), VerdictToLAN); dstAP(r) != ap(lanA, 4500) {
			t.Errorf("NAT-T IKE delivered to %v", dstAP(r))
		}
	})
	t.Run("keepalives pass both ways and keep the flow alive past ike_timeout", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, 0), VerdictToWAN)
		for range 6 { // an hour of keepalives only
			l.advance(10 * time.Minute)
			p := l.mustOut(nattKeepalivePkt(ap(lanA, 4500), ap(remote1, 4500)), VerdictToWAN)
			if srcAP(p) != ap(wanAddr, 4500) || string(header.UDP(p.L4).Payload()) != "\xff" {
				t.Fatalf("keepalive left as %v with % x", srcAP(p), header.UDP(p.L4).Payload())
			}
		}
		r := l.mustIn(nattKeepalivePkt(ap(remote1, 4500), ap(wanAddr, 4500)), VerdictToLAN)
		if dstAP(r) != ap(lanA, 4500) {
			t.Errorf("remote keepalive delivered to %v", dstAP(r))
		}
		l.advance(34 * time.Minute) // refreshed by the inbound keepalive
		l.mustIn(nattESPPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xd0000001), VerdictToLAN)
	})
	t.Run("without traffic the NAT-T flow ends after ike_timeout", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, 0), VerdictToWAN)
		l.advance(35 * time.Minute)
		r, _ := l.in(nattESPPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xd0000001))
		wantDrop(t, r, DropUnsolicited)
		if len(l.e.ike.natt) != 0 {
			t.Errorf("%d NAT-T flows left", len(l.e.ike.natt))
		}
	})
	t.Run("the first host per remote keeps 4500, a second host gets a port from the range", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 30000}})
		pa := l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, 0), VerdictToWAN)
		pb := l.mustOut(nattIKEPkt(ap(lanB, 4500), ap(remote1, 4500), ispiB, 0), VerdictToWAN)
		if pa.SrcPort != 4500 {
			t.Errorf("first host left from port %d", pa.SrcPort)
		}
		extB := pb.SrcPort
		if extB < 20000 || extB > 30000 {
			t.Fatalf("second host left from port %d, want one of the range", extB)
		}
		// A third host to another remote keeps 4500 there.
		if pc := l.mustOut(nattIKEPkt(ap(lanC, 4500), ap(remote2, 4500), 0xc3, 0), VerdictToWAN); pc.SrcPort != 4500 {
			t.Errorf("host to another remote left from port %d", pc.SrcPort)
		}
		// Both hosts' IKE and ESP-in-UDP reach them.
		for range 2 {
			if r := l.mustIn(nattIKEPkt(ap(remote1, 4500), ap(wanAddr, 4500), ispiA, rspiA), VerdictToLAN); dstAP(r) != ap(lanA, 4500) {
				t.Errorf("lanA's reply delivered to %v", dstAP(r))
			}
			if r := l.mustIn(nattIKEPkt(ap(remote1, 4500), ap(wanAddr, extB), ispiB, rspiB), VerdictToLAN); dstAP(r) != ap(lanB, 4500) {
				t.Errorf("lanB's reply delivered to %v", dstAP(r))
			}
			if r := l.mustIn(nattESPPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xd000000a), VerdictToLAN); dstAP(r) != ap(lanA, 4500) {
				t.Errorf("lanA's ESP delivered to %v", dstAP(r))
			}
			if r := l.mustIn(nattESPPkt(ap(remote1, 4500), ap(wanAddr, extB), 0xd000000b), VerdictToLAN); dstAP(r) != ap(lanB, 4500) {
				t.Errorf("lanB's ESP delivered to %v", dstAP(r))
			}
			if p := l.mustOut(nattESPPkt(ap(lanB, 4500), ap(remote1, 4500), 0xe000000b), VerdictToWAN); p.SrcPort != extB {
				t.Errorf("lanB's ESP left from %d, want %d", p.SrcPort, extB)
			}
		}
	})
	t.Run("a second host never gets WAN port 4500 from a range that contains it", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 1024, Last: 65535}})
		l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, 0), VerdictToWAN)
		pb := l.mustOut(nattIKEPkt(ap(lanB, 4500), ap(remote1, 4500), ispiB, 0), VerdictToWAN)
		if pb.SrcPort == 4500 {
			t.Errorf("second host shares WAN port 4500 with the first")
		}
		if r := l.mustIn(nattESPPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xd000000a), VerdictToLAN); dstAP(r) != ap(lanA, 4500) {
			t.Errorf("lanA's ESP-in-UDP delivered to %v", dstAP(r))
		}
		if p := l.mustOut(nattESPPkt(ap(lanA, 4500), ap(remote1, 4500), 0xe000000a), VerdictToWAN); p.SrcPort != 4500 {
			t.Errorf("lanA's ESP-in-UDP left from %d", p.SrcPort)
		}
	})
	t.Run("ordinary UDP never takes WAN port 4500 from a range that contains it", func(t *testing.T) {
		l := newLab(t, Config{Ports: PortRange{First: 4490, Last: 4510}})
		passed := 0
		for port := uint16(1); port <= 30; port++ {
			r, p := l.out(udpPkt(ap(lanC, port), ap(remote2, 53), "q"))
			if r.Verdict == VerdictDrop {
				wantDrop(t, r, DropNoPorts)
				continue
			}
			passed++
			if p.SrcPort == PortNATT {
				t.Fatalf("ordinary UDP from port %d mapped to WAN port 4500", port)
			}
		}
		if passed != 20 {
			t.Errorf("%d mappings from a range of 21 ports less 4500, want 20", passed)
		}
		l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, 0), VerdictToWAN)
		if r := l.mustIn(nattESPPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xd000000a), VerdictToLAN); dstAP(r) != ap(lanA, 4500) {
			t.Errorf("NAT-T delivered to %v", dstAP(r))
		}
	})
	t.Run("inbound ESP in UDP or a keepalive without a flow is dropped as unsolicited", func(t *testing.T) {
		l := newLab(t, Config{})
		for _, b := range [][]byte{
			nattESPPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xd0000001),
			nattKeepalivePkt(ap(remote1, 4500), ap(wanAddr, 4500)),
			nattIKEPkt(ap(remote1, 4500), ap(wanAddr, 4500), ispiA, 0),
		} {
			r, _ := l.in(b)
			wantDrop(t, r, DropUnsolicited)
		}
	})
	t.Run("IKE from a new remote port opens a flow to the host its SPIs name", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, 0), VerdictToWAN)
		l.mustIn(nattIKEPkt(ap(remote1, 4500), ap(wanAddr, 4500), ispiA, rspiA), VerdictToLAN)
		// The remote's own NAT changed its port.
		r := l.mustIn(nattIKEPkt(ap(remote1, 61000), ap(wanAddr, 4500), ispiA, rspiA), VerdictToLAN)
		if dstAP(r) != ap(lanA, 4500) {
			t.Fatalf("IKE from the new port delivered to %v", dstAP(r))
		}
		if r := l.mustIn(nattESPPkt(ap(remote1, 61000), ap(wanAddr, 4500), 0xd0000001), VerdictToLAN); dstAP(r) != ap(lanA, 4500) {
			t.Errorf("ESP from the new port delivered to %v", dstAP(r))
		}
	})
	t.Run("a new IKE SA the remote starts on 4500 reaches the most recent IKE host and opens a flow", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		r := l.mustIn(nattIKEPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xfeed, 0), VerdictToLAN)
		if dstAP(r) != ap(lanA, 4500) {
			t.Fatalf("delivered to %v", dstAP(r))
		}
		if p := l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), 0xfeed, 0xbeef), VerdictToWAN); p.SrcPort != 4500 {
			t.Errorf("answer left from %d", p.SrcPort)
		}
		if r := l.mustIn(nattESPPkt(ap(remote1, 4500), ap(wanAddr, 4500), 0xd0000001), VerdictToLAN); dstAP(r) != ap(lanA, 4500) {
			t.Errorf("ESP-in-UDP delivered to %v", dstAP(r))
		}
	})
	t.Run("an initiator SPI colliding on 4500 is dropped", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustOut(ikePkt(ap(lanA, 500), ap(remote1, 500), ispiA, 0), VerdictToWAN)
		// lanB owns remote1:4500's flow and reuses lanA's SPI.
		r, _ := l.out(nattIKEPkt(ap(lanB, 4500), ap(remote1, 4500), ispiA, 0))
		wantDrop(t, r, DropIKECollision)
	})
	for _, tc := range []struct {
		name    string
		payload []byte
	}{
		{"an empty payload", nil},
		{"a single zero byte", []byte{0}},
		{"seven bytes", []byte{1, 2, 3, 4, 5, 6, 7}},
		{"a marker followed by a short IKE header", append([]byte{0, 0, 0, 0}, ikeMessage(2, ispiA, 0, ikeSAInit)[:20]...)},
		{"a marker followed by a zero initiator SPI", append([]byte{0, 0, 0, 0}, ikeMessage(2, 0, 0, ikeSAInit)...)},
		{"a marker followed by a bad IKE version", append([]byte{0, 0, 0, 0}, ikeMessage(7, ispiA, 0, ikeSAInit)...)},
	} {
		t.Run(tc.name+" on UDP 4500 is dropped as malformed both ways", func(t *testing.T) {
			l := newLab(t, Config{})
			l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, 0), VerdictToWAN)
			r, _ := l.out(udpPkt(ap(lanA, 4500), ap(remote1, 4500), string(tc.payload)))
			wantDrop(t, r, DropIKEMalformed)
			r, _ = l.in(udpPkt(ap(remote1, 4500), ap(wanAddr, 4500), string(tc.payload)))
			wantDrop(t, r, DropIKEMalformed)
			if n := l.e.Drops.Get(DropIKEMalformed); n != 2 {
				t.Errorf("ike_malformed counter %d, want 2", n)
			}
		})
	}
}

func TestIPsecPortForwards(t *testing.T) {
	const ispiA, rspiA = 0xa1a1a1a1a1a1a1a1, 0x0a0a0a0a0a0a0a0a
	for _, port := range []uint16{PortIKE, PortNATT} {
		pkt := ikePkt
		if port == PortNATT {
			pkt = nattIKEPkt
		}
		t.Run(fmt.Sprintf("a forward of udp %d takes precedence over IKE tracking", port), func(t *testing.T) {
			l := newLab(t, Config{Ports: PortRange{First: 20000, Last: 30000},
				Forwards: []Forward{{Proto: ProtoUDP, Ports: PortRange{First: port, Last: port}, To: ipsecSrv}}})
			// A LAN host's IKE from the same port takes an ordinary mapping.
			pa := l.mustOut(pkt(ap(lanA, port), ap(remote1, port), ispiA, 0), VerdictToWAN)
			if pa.SrcPort < 20000 || pa.SrcPort > 30000 {
				t.Fatalf("LAN host's IKE left from port %d, want one of the range", pa.SrcPort)
			}
			if r := l.mustIn(pkt(ap(remote1, port), ap(wanAddr, pa.SrcPort), ispiA, rspiA), VerdictToLAN); dstAP(r) != ap(lanA, port) {
				t.Errorf("reply to the LAN host's port delivered to %v", dstAP(r))
			}
			// Even with the LAN host's SPIs, WAN:port belongs to the server.
			if r := l.mustIn(pkt(ap(remote1, port), ap(wanAddr, port), ispiA, rspiA), VerdictToLAN); dstAP(r) != ap(ipsecSrv, port) {
				t.Errorf("IKE to WAN:%d delivered to %v, want the server", port, dstAP(r))
			}
			if r := l.mustIn(pkt(ap(remote2, 7777), ap(wanAddr, port), 0x1234, 0), VerdictToLAN); dstAP(r) != ap(ipsecSrv, port) {
				t.Errorf("a road warrior's IKE delivered to %v, want the server", dstAP(r))
			}
			// The server answers from its port, which stays port on the WAN.
			if p := l.mustOut(pkt(ap(ipsecSrv, port), ap(remote2, 7777), 0x1234, 0x5678), VerdictToWAN); srcAP(p) != ap(wanAddr, port) {
				t.Errorf("server's answer left from %v", srcAP(p))
			}
			if len(l.e.ike.byI) != 0 || len(l.e.ike.natt) != 0 {
				t.Errorf("IKE tracker holds %d sessions and %d NAT-T flows, want none", len(l.e.ike.byI), len(l.e.ike.natt))
			}
		})
	}
	t.Run("a forward of udp 500 leaves 4500 to the IKE tracker", func(t *testing.T) {
		l := newLab(t, Config{Forwards: []Forward{{Proto: ProtoUDP, Ports: PortRange{First: 500, Last: 500}, To: ipsecSrv}}})
		if p := l.mustOut(nattIKEPkt(ap(lanA, 4500), ap(remote1, 4500), ispiA, 0), VerdictToWAN); p.SrcPort != 4500 {
			t.Errorf("NAT-T left from %d", p.SrcPort)
		}
		if r := l.mustIn(nattIKEPkt(ap(remote1, 4500), ap(wanAddr, 4500), ispiA, rspiA), VerdictToLAN); dstAP(r) != ap(lanA, 4500) {
			t.Errorf("NAT-T reply delivered to %v", dstAP(r))
		}
	})
}

func TestIKESessionsAreBounded(t *testing.T) {
	t.Run("at max_esp sessions a new exchange from a LAN host is dropped as table_full", func(t *testing.T) {
		l := newLab(t, Config{IPsec: IPsecConfig{MaxESP: 2}})
		for i := range 2 {
			l.mustOut(ikePkt(ap(lanA, PortIKE), ap(remote1, PortIKE), uint64(0x100+i), 0), VerdictToWAN)
		}
		r, _ := l.out(ikePkt(ap(lanB, PortIKE), ap(remote1, PortIKE), 0x200, 0))
		wantDrop(t, r, DropTableFull)
	})
}
