package nat

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// ahPkt is an AH packet (IP protocol 51, RFC 4302) carrying ESP: next
// header, payload length, reserved, SPI, sequence number, 96-bit ICV.
func ahPkt(src, dst netip.Addr, spi uint32) []byte {
	b := make([]byte, 24, 64)
	b[0] = ProtoESP
	b[1] = 4 // length in 32-bit words minus 2
	binary.BigEndian.PutUint32(b[4:8], spi)
	binary.BigEndian.PutUint32(b[8:12], 1)
	copy(b[12:24], "integrity-cv")
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoAH}, append(b, "inner payload"...))
}

func TestAHRefused(t *testing.T) {
	const msg = "AH dropped: it authenticates the IP addresses, so it cannot be masqueraded; use ESP, or route the remote network without NAT (routing.no_nat)"
	t.Run("AH from a LAN host to the WAN is dropped and counted", func(t *testing.T) {
		l := newLab(t, Config{})
		r, _ := l.out(ahPkt(lanA, remote1, 0x100))
		wantDrop(t, r, DropAHNotMasqueradable)
		if n := l.e.Drops.Get(DropAHNotMasqueradable); n != 1 {
			t.Errorf("ah_not_masqueradable counter %d, want 1", n)
		}
	})
	t.Run("AH from the WAN is dropped and counted, even from a remote the host talks IPsec with", func(t *testing.T) {
		l := newLab(t, Config{})
		l.ikeExchange(lanA, remote1, 0x1111)
		l.espPairSPIs(lanA, remote1, 0xa1, 0x1a)
		r, _ := l.in(ahPkt(remote1, wanAddr, 0x1a))
		wantDrop(t, r, DropAHNotMasqueradable)
		if n := l.e.Drops.Get(DropAHNotMasqueradable); n != 1 {
			t.Errorf("ah_not_masqueradable counter %d, want 1", n)
		}
	})
	t.Run("the reason is logged once per host and remote", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		for range 3 {
			for _, b := range []struct {
				pkt      []byte
				outbound bool
			}{
				{ahPkt(lanA, remote1, 1), true},
				{ahPkt(lanA, remote2, 2), true},
				{ahPkt(lanB, remote1, 3), true},
				{ahPkt(remote1, wanAddr, 4), false},
			} {
				var r Result
				if b.outbound {
					r, _ = l.out(b.pkt)
				} else {
					r, _ = l.in(b.pkt)
				}
				wantDrop(t, r, DropAHNotMasqueradable)
			}
		}
		if n := l.e.Drops.Get(DropAHNotMasqueradable); n != 12 {
			t.Errorf("ah_not_masqueradable counter %d, want 12", n)
		}
		lines := logs.entries(t, msg)
		if len(lines) != 4 {
			t.Fatalf("%d AH log lines, want 4 (one per host and remote): %v", len(lines), lines)
		}
		want := []struct{ dir, host, remote string }{
			{"outbound", "10.0.0.10", "198.18.100.1"},
			{"outbound", "10.0.0.10", "198.18.100.2"},
			{"outbound", "10.0.0.20", "198.18.100.1"},
			{"inbound", "198.18.0.1", "198.18.100.1"}, // the LAN host is unknown: the WAN address stands in
		}
		for i, w := range want {
			e := lines[i]
			if e["level"] != "warn" || e["direction"] != w.dir || e["host"] != w.host || e["remote"] != w.remote {
				t.Errorf("line %d: %v, want %+v", i, e, w)
			}
		}
	})
	t.Run("the memory of explained pairs is bounded", func(t *testing.T) {
		l, logs := newLoggingLab(t, Config{})
		for i := range ahMaxRefused + 100 {
			remote := netip.AddrFrom4([4]byte{198, 18, byte(1 + i/250), byte(1 + i%250)})
			r, _ := l.out(ahPkt(lanA, remote, uint32(i+1)))
			wantDrop(t, r, DropAHNotMasqueradable)
		}
		ah := l.e.handlers[ProtoAH].(*ahHandler)
		if len(ah.refused) > ahMaxRefused {
			t.Errorf("%d explained pairs remembered, bound %d", len(ah.refused), ahMaxRefused)
		}
		if n := len(logs.entries(t, msg)); n != ahMaxRefused {
			t.Errorf("%d AH log lines, want %d", n, ahMaxRefused)
		}
	})
}
