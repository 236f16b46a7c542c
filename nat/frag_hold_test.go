package nat

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// fragHoldDuration is how long a fragment waits for its first fragment.
const fragHoldDuration = time.Duration(fragHoldTime)

// fragments splits an IPv4 datagram at the given payload offsets (multiples
// of 8, ascending) into len(cuts)+1 fragments, the first one first.
func fragments(b []byte, cuts ...int) [][]byte {
	ip := header.IPv4(b)
	hlen := int(ip.HeaderLength())
	payload := ip.Payload()
	bounds := append(append([]int{0}, cuts...), len(payload))
	var out [][]byte
	for i := 0; i+1 < len(bounds); i++ {
		part := payload[bounds[i]:bounds[i+1]]
		f := make([]byte, hlen+len(part))
		copy(f, b[:hlen])
		copy(f[hlen:], part)
		fip := header.IPv4(f)
		var flags uint8
		if i+2 < len(bounds) {
			flags = header.IPv4FlagMoreFragments
		}
		fip.SetFlagsFragmentOffset(flags, uint16(bounds[i]))
		fip.SetTotalLength(uint16(len(f)))
		fip.SetChecksum(0)
		fip.SetChecksum(^fip.CalculateChecksum())
		out = append(out, f)
	}
	return out
}

// udpOfSize is a UDP datagram with a payload of n bytes.
func udpOfSize(src, dst netip.AddrPort, id uint16, n int) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: ProtoUDP, ID: id},
		testpacket.UDP(src, dst, []byte(strings.Repeat("x", n))))
}

// tailPkt is a non-first fragment (offset 64, last) of a UDP datagram,
// size bytes of payload: what an outsider forges.
func tailPkt(src, dst netip.Addr, id uint16, size int) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoUDP, ID: id, FragOff: 64}, make([]byte, size))
}

// espOfSize is an ESP packet with SPI spi and a body of n bytes.
func espOfSize(src, dst netip.Addr, spi uint32, n int) []byte {
	b := make([]byte, 8, 8+n)
	binary.BigEndian.PutUint32(b[0:4], spi)
	binary.BigEndian.PutUint32(b[4:8], 1)
	b = append(b, bytes.Repeat([]byte{0xe5}, n)...)
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoESP, ID: 0x0e5e}, b)
}

func TestFragmentsOutOfOrder(t *testing.T) {
	// Each case sends one datagram's fragments in the given order
	// (0 is the first fragment): every non-first fragment before the first
	// one is held, the first one passes, the held ones are released
	// translated in the order they came, later ones follow directly; the
	// datagram reassembled from what left has valid checksums and the
	// expected addresses.
	type dgram struct {
		pkt      []byte
		outbound bool
	}
	cases := []struct {
		name  string
		cfg   Config
		setup func(l *lab) dgram
		cuts  []int
		order []int
		want  Verdict
		src   netip.Addr
		dst   netip.Addr
	}{
		{
			name:  "a udp datagram's last fragment before its first leaves translated behind the first",
			setup: func(l *lab) dgram { return dgram{bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0xa001), true} },
			cuts:  []int{32}, order: []int{1, 0},
			want: VerdictToWAN, src: wanAddr, dst: remote1,
		},
		{
			name:  "a tcp segment's last fragment before its first leaves translated behind the first",
			setup: func(l *lab) dgram { return dgram{bigTCP(ap(lanA, 40000), ap(remote1, 443), 0xa002), true} },
			cuts:  []int{32}, order: []int{1, 0},
			want: VerdictToWAN, src: wanAddr, dst: remote1,
		},
		{
			name:  "an echo request's last fragment before its first leaves translated behind the first",
			setup: func(l *lab) dgram { return dgram{bigEcho(lanA, remote1, 77), true} },
			cuts:  []int{32}, order: []int{1, 0},
			want: VerdictToWAN, src: wanAddr, dst: remote1,
		},
		{
			name:  "an esp packet's last fragment before its first leaves translated behind the first",
			setup: func(l *lab) dgram { return dgram{espOfSize(lanA, remote1, 0x5151, 200), true} },
			cuts:  []int{64}, order: []int{1, 0},
			want: VerdictToWAN, src: wanAddr, dst: remote1,
		},
		{
			name:  "three fragments from the lan, last, middle, first: both held ones leave in the order they came",
			setup: func(l *lab) dgram { return dgram{bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0xa003), true} },
			cuts:  []int{48, 240}, order: []int{2, 1, 0},
			want: VerdictToWAN, src: wanAddr, dst: remote1,
		},
		{
			name:  "three fragments from the lan, last, first, middle: the middle one follows directly",
			setup: func(l *lab) dgram { return dgram{bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0xa004), true} },
			cuts:  []int{48, 240}, order: []int{2, 0, 1},
			want: VerdictToWAN, src: wanAddr, dst: remote1,
		},
		{
			name: "a udp reply's last fragment before its first reaches the lan host translated behind the first",
			setup: func(l *lab) dgram {
				ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "hello"), VerdictToWAN).SrcPort
				return dgram{bigUDP(ap(remote1, 4500), ap(wanAddr, ext), 0xb001), false}
			},
			cuts: []int{64}, order: []int{1, 0},
			want: VerdictToLAN, src: remote1, dst: lanA,
		},
		{
			name: "a udp reply in three fragments, last, middle, first, reaches the lan host whole",
			setup: func(l *lab) dgram {
				ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "hello"), VerdictToWAN).SrcPort
				return dgram{bigUDP(ap(remote1, 4500), ap(wanAddr, ext), 0xb002), false}
			},
			cuts: []int{64, 320}, order: []int{2, 1, 0},
			want: VerdictToLAN, src: remote1, dst: lanA,
		},
		{
			name: "a tcp reply's last fragment before its first reaches the lan host translated behind the first",
			setup: func(l *lab) dgram {
				ext := l.mustOut(tcpPkt(ap(lanA, 40000), ap(remote1, 443), syn), VerdictToWAN).SrcPort
				l.mustIn(tcpPkt(ap(remote1, 443), ap(wanAddr, ext), syn|ack), VerdictToLAN)
				l.mustOut(tcpPkt(ap(lanA, 40000), ap(remote1, 443), ack), VerdictToWAN)
				return dgram{testpacket.IPv4(testpacket.IPv4Header{Src: remote1, Dst: wanAddr, Proto: ProtoTCP, ID: 0xb003},
					tcpSegment(ap(remote1, 443), ap(wanAddr, ext), ack|header.TCPFlagPsh, 0, []byte(bigPayload))), false}
			},
			cuts: []int{64}, order: []int{1, 0},
			want: VerdictToLAN, src: remote1, dst: lanA,
		},
		{
			name: "a hairpinned datagram's last fragment before its first reaches the other lan host",
			cfg:  Config{UDPFiltering: EndpointIndependentFiltering},
			setup: func(l *lab) dgram {
				extB := l.mustOut(udpPkt(ap(lanB, 6000), ap(remote1, 3478), "stun"), VerdictToWAN).SrcPort
				return dgram{bigUDP(ap(lanA, 5000), ap(wanAddr, extB), 0xc001), true}
			},
			cuts: []int{48}, order: []int{1, 0},
			want: VerdictToLAN, src: wanAddr, dst: lanB,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := newLab(t, tc.cfg)
			d := tc.setup(l)
			frags := fragments(d.pkt, tc.cuts...)
			send := func(b []byte, want Verdict) *Packet {
				if d.outbound {
					return l.mustOut(b, want)
				}
				return l.mustIn(b, want)
			}
			var left [][]byte
			var held []int
			headSeen := false
			for _, i := range tc.order {
				switch {
				case i == 0:
					p := send(frags[i], tc.want)
					left = append(left, p.Buf)
					headSeen = true
					got := l.take(d.outbound)
					if len(got) != len(held) {
						t.Fatalf("released %d fragments, want %d", len(got), len(held))
					}
					for k, r := range got {
						if r.v != tc.want {
							t.Errorf("released fragment %d with verdict %s, want %s", k, verdictName(r.v), verdictName(tc.want))
						}
						if off := int(header.IPv4(r.b).FragmentOffset()); off != int(header.IPv4(frags[held[k]]).FragmentOffset()) {
							t.Errorf("released fragment %d is at offset %d: not in the order they came", k, off)
						}
						left = append(left, r.b)
					}
				case headSeen:
					left = append(left, send(frags[i], tc.want).Buf)
				default:
					send(frags[i], VerdictHeld)
					held = append(held, i)
					if got := l.take(d.outbound); len(got) != 0 {
						t.Fatalf("released %d fragments before the first one came", len(got))
					}
				}
			}
			whole, err := reassemble(left...)
			if err != nil {
				t.Fatal(err)
			}
			if err := validatePacket(whole); err != nil {
				t.Fatalf("reassembled datagram: %v", err)
			}
			ip := header.IPv4(whole)
			if src, dst := ip.SourceAddress(), ip.DestinationAddress(); src != taddr(tc.src) || dst != taddr(tc.dst) {
				t.Errorf("datagram %v→%v, want %v→%v", src, dst, tc.src, tc.dst)
			}
			h := l.e.FragmentHold()
			if h.Total != uint64(len(held)) || h.Released != h.Total || h.HeldLAN+h.HeldWAN != 0 || h.Dropped != 0 {
				t.Errorf("hold %+v after the datagram, want %d held and released", h, len(held))
			}
			if s := l.e.Stats(); len(s.Hosts) > 0 && s.Hosts[0].Fragments > 2 {
				t.Errorf("host holds %d fragment units after the datagram", s.Hosts[0].Fragments)
			}
		})
	}

	t.Run("a held fragment of another datagram does not follow a first fragment", func(t *testing.T) {
		l := newLab(t, Config{})
		_, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 2), 32)
		first, _ := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 1), 32)
		l.mustOut(tail, VerdictHeld)
		l.mustOut(first, VerdictToWAN)
		if got := l.take(true); len(got) != 0 {
			t.Fatalf("released %d fragments of another datagram", len(got))
		}
	})
	t.Run("a held fragment from the wan does not follow a first fragment from another source", func(t *testing.T) {
		l := newLab(t, Config{UDPFiltering: EndpointIndependentFiltering})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "hello"), VerdictToWAN).SrcPort
		_, forged := fragmentAt(bigUDP(ap(remote2, 4500), ap(wanAddr, ext), 0x77), 64)
		first, _ := fragmentAt(bigUDP(ap(remote1, 4500), ap(wanAddr, ext), 0x77), 64)
		l.mustIn(forged, VerdictHeld)
		l.mustIn(first, VerdictToLAN)
		if got := l.take(false); len(got) != 0 {
			t.Fatalf("released %d fragments from another source", len(got))
		}
	})
	t.Run("held fragments of a first fragment that is dropped are dropped with it as unmatched", func(t *testing.T) {
		l := newLab(t, Config{})
		first, tail := fragmentAt(bigUDP(ap(remote1, 4500), ap(wanAddr, 20000), 0x4444), 32)
		l.mustIn(tail, VerdictHeld)
		r, _ := l.in(first)
		wantDrop(t, r, DropUnsolicited)
		if n := l.e.Drops.Get(DropFragment); n != 1 {
			t.Errorf("unmatched_fragment %d, want 1 (the held tail)", n)
		}
		if h := l.e.FragmentHold(); h.HeldWAN != 0 || h.Dropped != 1 || len(l.take(false)) != 0 {
			t.Errorf("hold %+v, want the tail dropped", h)
		}
	})
	t.Run("held fragments are dropped as unmatched when their first fragment passes untracked", func(t *testing.T) {
		l := newLab(t, Config{Limits: Limits{MaxFragmentsPerHost: 1}})
		first, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x4545), 32)
		l.mustOut(tail, VerdictHeld) // takes lanA's one unit
		l.mustOut(first, VerdictToWAN)
		if n := l.e.Drops.Get(DropFragment); n != 1 || len(l.take(true)) != 0 {
			t.Errorf("unmatched_fragment %d, want the held tail dropped", n)
		}
		if n := l.e.Limits.Refused(LimitFragmentsPerHost); n != 1 {
			t.Errorf("max_fragments_per_host refusals %d, want 1", n)
		}
	})
	t.Run("a held fragment whose first fragment does not come within 5 s is dropped as expired", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "hello"), VerdictToWAN).SrcPort
		first, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x5555), 32)
		firstIn, tailIn := fragmentAt(bigUDP(ap(remote1, 4500), ap(wanAddr, ext), 0x5555), 32)
		l.mustOut(tail, VerdictHeld)
		l.mustIn(tailIn, VerdictHeld)
		l.advance(fragHoldDuration - time.Nanosecond)
		if n := l.e.Drops.Get(DropFragmentExpired); n != 0 {
			t.Fatalf("fragment_expired %d before 5 s", n)
		}
		l.advance(time.Nanosecond)
		if n := l.e.Drops.Get(DropFragmentExpired); n != 2 {
			t.Fatalf("fragment_expired %d, want 2", n)
		}
		if s := l.e.Stats(); len(s.Hosts) > 0 && s.Hosts[0].Fragments != 0 {
			t.Errorf("lanA still holds %d fragment units", s.Hosts[0].Fragments)
		}
		l.mustOut(first, VerdictToWAN)
		l.mustIn(firstIn, VerdictToLAN)
		if got := len(l.take(true)) + len(l.take(false)); got != 0 {
			t.Errorf("released %d expired fragments", got)
		}
	})
	t.Run("a held fragment past its time is not released even before the sweep", func(t *testing.T) {
		l := newLab(t, Config{})
		first, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x5656), 32)
		l.mustOut(tail, VerdictHeld)
		l.clock.Advance(fragHoldDuration) // no Expire
		l.mustOut(first, VerdictToWAN)
		if got := l.take(true); len(got) != 0 {
			t.Fatalf("released %d fragments past their time", len(got))
		}
		if n := l.e.Drops.Get(DropFragmentExpired); n != 1 {
			t.Errorf("fragment_expired %d, want 1", n)
		}
	})
	t.Run("a lan host holds at most its share of fragments, the others keep theirs", func(t *testing.T) {
		l := newLab(t, Config{Limits: Limits{MaxFragmentsPerHost: 4}})
		for id := range uint16(4) {
			_, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), id), 32)
			l.mustOut(tail, VerdictHeld)
		}
		_, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 4), 32)
		r, _ := l.out(tail)
		wantDrop(t, r, DropFragmentBufferFull)
		if n := l.e.Limits.Refused(LimitFragmentsPerHost); n != 1 {
			t.Errorf("max_fragments_per_host refusals %d, want 1", n)
		}
		first, tailB := fragmentAt(bigUDP(ap(lanB, 5000), ap(remote1, 4500), 4), 32)
		l.mustOut(tailB, VerdictHeld)
		l.mustOut(first, VerdictToWAN)
		if got := l.take(true); len(got) != 1 {
			t.Fatalf("lanB's datagram released %d fragments, want 1", len(got))
		}
	})
	t.Run("fragments from the lan are held up to 1024 in all", func(t *testing.T) {
		l := newLab(t, Config{})
		for i := range fragHoldMax {
			host := netip.AddrFrom4([4]byte{10, 0, 1, byte(i / 200)})
			_, tail := fragmentAt(bigUDP(ap(host, 5000), ap(remote1, 4500), uint16(i)), 32)
			l.mustOut(tail, VerdictHeld)
		}
		_, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 1), 32)
		r, _ := l.out(tail)
		wantDrop(t, r, DropFragmentBufferFull)
		if n := l.e.Limits.Refused(LimitHeldFragmentsLAN); n != 1 {
			t.Errorf("max_held_fragments_lan refusals %d, want 1", n)
		}
		l.advance(fragHoldDuration)
		l.mustOut(tail, VerdictHeld) // room again
	})
	t.Run("fragments from the lan are held up to 2 MiB in all", func(t *testing.T) {
		l := newLab(t, Config{})
		const size = 16000 // payload of each held fragment
		n := 0
		for ; (n+1)*(size+header.IPv4MinimumSize) <= fragHoldBytes; n++ {
			host := netip.AddrFrom4([4]byte{10, 0, 1, byte(n / 100)})
			_, tail := fragmentAt(udpOfSize(ap(host, 5000), ap(remote1, 4500), uint16(n), size+56), 64)
			l.mustOut(tail, VerdictHeld)
		}
		_, tail := fragmentAt(udpOfSize(ap(lanA, 5000), ap(remote1, 4500), 9999, size+56), 64)
		r, _ := l.out(tail)
		wantDrop(t, r, DropFragmentBufferFull)
		if h := l.e.FragmentHold(); h.HeldLAN != n || h.BytesLAN > fragHoldBytes {
			t.Errorf("hold %+v, want %d fragments within %d bytes", h, n, fragHoldBytes)
		}
		small := tailPkt(lanA, remote1, 1, 8)
		r, _ = l.out(small)
		if r.Verdict != VerdictHeld {
			t.Errorf("a small fragment that fits: verdict %s (%v)", verdictName(r.Verdict), r.Reason)
		}
	})
	t.Run("fragments from the wan are held up to 1024, the oldest making room", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "hello"), VerdictToWAN).SrcPort
		firstOld, tailOld := fragmentAt(bigUDP(ap(remote1, 4500), ap(wanAddr, ext), 0x0101), 64)
		l.mustIn(tailOld, VerdictHeld)
		for i := range fragHoldMax - 1 {
			l.mustIn(tailPkt(netip.AddrFrom4([4]byte{203, 0, byte(i >> 8), byte(i)}), wanAddr, 7, 100), VerdictHeld)
		}
		firstNew, tailNew := fragmentAt(bigUDP(ap(remote1, 4500), ap(wanAddr, ext), 0x0202), 64)
		l.mustIn(tailNew, VerdictHeld) // evicts tailOld
		if n := l.e.Limits.Evicted(LimitHeldFragmentsWAN); n != 1 {
			t.Errorf("max_held_fragments_wan evictions %d, want 1", n)
		}
		if n := l.e.Drops.Get(DropFragmentBufferFull); n != 1 {
			t.Errorf("fragment_buffer_full %d, want 1", n)
		}
		l.mustIn(firstOld, VerdictToLAN)
		if got := l.take(false); len(got) != 0 {
			t.Errorf("the evicted fragment was released")
		}
		l.mustIn(firstNew, VerdictToLAN)
		if got := l.take(false); len(got) != 1 {
			t.Errorf("the newest fragment: %d released, want 1", len(got))
		}
		if h := l.e.FragmentHold(); h.HeldWAN != fragHoldMax-1 || h.HeldLAN != 0 {
			t.Errorf("hold %+v", h)
		}
	})
	t.Run("a flood of forged fragments from the wan does not stop a lan host's own out-of-order datagram", func(t *testing.T) {
		l := newLab(t, Config{})
		rng := rand.New(rand.NewPCG(1, 2))
		for range 20000 {
			src := netip.AddrFrom4([4]byte{byte(1 + rng.IntN(200)), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())})
			r, _ := l.in(tailPkt(src, wanAddr, uint16(rng.Uint32()), 1200))
			if r.Verdict != VerdictHeld {
				t.Fatalf("forged fragment: verdict %s (%v)", verdictName(r.Verdict), r.Reason)
			}
		}
		if h := l.e.FragmentHold(); h.HeldWAN > fragHoldMax || h.BytesWAN > fragHoldBytes || h.HeldLAN != 0 {
			t.Fatalf("hold %+v beyond its bounds", h)
		}
		if s := l.e.Stats(); len(s.Hosts) != 0 {
			t.Errorf("forged fragments count against lan hosts: %+v", s.Hosts)
		}
		// The lan host's datagram, last fragment first, during the flood.
		frags := fragments(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x1234), 48, 240)
		l.mustOut(frags[2], VerdictHeld)
		l.mustOut(frags[1], VerdictHeld)
		l.in(tailPkt(netip.MustParseAddr("203.0.113.9"), wanAddr, 1, 1200))
		head := l.mustOut(frags[0], VerdictToWAN)
		got := l.take(true)
		if len(got) != 2 {
			t.Fatalf("released %d fragments, want 2", len(got))
		}
		whole, err := reassemble(head.Buf, got[0].b, got[1].b)
		if err != nil {
			t.Fatal(err)
		}
		if err := validatePacket(whole); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("a reply reordered by less than the wan budget gets through a flood of forged fragments", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "hello"), VerdictToWAN).SrcPort
		rng := rand.New(rand.NewPCG(3, 4))
		forge := func(n int) {
			for range n {
				src := netip.AddrFrom4([4]byte{byte(1 + rng.IntN(200)), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())})
				l.in(tailPkt(src, wanAddr, uint16(rng.Uint32()), 1200))
			}
		}
		forge(5000)
		first, tail := fragmentAt(bigUDP(ap(remote1, 4500), ap(wanAddr, ext), 0x4321), 64)
		l.mustIn(tail, VerdictHeld)
		forge(fragHoldMax - 1)
		p := l.mustIn(first, VerdictToLAN)
		got := l.take(false)
		if len(got) != 1 {
			t.Fatalf("released %d fragments, want the reply's tail", len(got))
		}
		whole, err := reassemble(p.Buf, got[0].b)
		if err != nil {
			t.Fatal(err)
		}
		if err := validatePacket(whole); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("with both holds full, in-order fragments and unfragmented packets pass both ways (REQ-14a)", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "hello"), VerdictToWAN).SrcPort
		// The LAN's hold full (a greedy host at its share, others up to
		// the bound), and the WAN's under a flood of forged fragments.
		for i := range fragHoldMax {
			host := lanB
			if i >= DefaultMaxFragmentsPerHost {
				host = netip.AddrFrom4([4]byte{10, 0, 1, byte(i / 200)})
			}
			l.mustOut(tailPkt(host, remote1, uint16(i), 100), VerdictHeld)
		}
		rng := rand.New(rand.NewPCG(7, 8))
		for range 3 * fragHoldMax {
			src := netip.AddrFrom4([4]byte{byte(1 + rng.IntN(200)), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())})
			l.mustIn(tailPkt(src, wanAddr, uint16(rng.Uint32()), 1200), VerdictHeld)
		}
		if r, _ := l.out(tailPkt(lanA, remote1, 1, 100)); r.Reason != DropFragmentBufferFull {
			t.Fatalf("the LAN's hold is not full: %s (%v)", verdictName(r.Verdict), r.Reason)
		}
		l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "unfragmented"), VerdictToWAN)
		l.mustIn(udpPkt(ap(remote1, 4500), ap(wanAddr, ext), "unfragmented"), VerdictToLAN)
		l.mustOut(udpPkt(ap(lanB, 7000), ap(remote2, 53), "the greedy host too"), VerdictToWAN)
		for _, tc := range []struct {
			pkt      []byte
			outbound bool
		}{
			{bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x1414), true},
			{bigUDP(ap(remote1, 4500), ap(wanAddr, ext), 0x1414), false},
		} {
			first, tail := fragmentAt(tc.pkt, 64)
			var p1, p2 *Packet
			if tc.outbound {
				p1, p2 = l.mustOut(first, VerdictToWAN), l.mustOut(tail, VerdictToWAN)
			} else {
				p1, p2 = l.mustIn(first, VerdictToLAN), l.mustIn(tail, VerdictToLAN)
			}
			whole, err := reassemble(p1.Buf, p2.Buf)
			if err != nil {
				t.Fatal(err)
			}
			if err := validatePacket(whole); err != nil {
				t.Fatalf("in-order datagram (outbound %v): %v", tc.outbound, err)
			}
		}
	})
	t.Run("a fragment from the wan address itself is never held", func(t *testing.T) {
		l := newLab(t, Config{})
		r, _ := l.in(tailPkt(wanAddr, wanAddr, 1, 100))
		wantDrop(t, r, DropFragment)
	})
	t.Run("released fragments count against the bounds until they are taken", func(t *testing.T) {
		l := newLab(t, Config{Limits: Limits{MaxFragmentsPerHost: 3}})
		first, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x0909), 32)
		l.mustOut(tail, VerdictHeld)
		l.mustOut(first, VerdictToWAN) // one unit for the entry, one for the released tail
		_, other := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x0a0a), 32)
		l.mustOut(other, VerdictHeld)
		_, more := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x0b0b), 32)
		r, _ := l.out(more)
		wantDrop(t, r, DropFragmentBufferFull)
		if got := l.take(true); len(got) != 1 {
			t.Fatalf("released %d, want 1", len(got))
		}
		l.mustOut(more, VerdictHeld)
	})
	t.Run("a released fragment stays when the router has no buffer for it", func(t *testing.T) {
		l := newLab(t, Config{})
		first, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x0c0c), 32)
		l.mustOut(tail, VerdictHeld)
		l.mustOut(first, VerdictToWAN)
		if !l.e.HasReleased(true) || l.e.HasReleased(false) {
			t.Fatal("HasReleased does not report the released fragment on its side")
		}
		if n, _ := l.e.TakeReleased(true, func(int) []byte { return nil }); n != 0 {
			t.Fatalf("took %d bytes into no buffer", n)
		}
		if got := l.take(true); len(got) != 1 || l.e.HasReleased(true) {
			t.Fatalf("released %d after a failed take", len(got))
		}
	})
	t.Run("a wan address change drops the fragments from the wan and keeps the lan's", func(t *testing.T) {
		l := newLab(t, Config{})
		l.mustIn(tailPkt(remote1, wanAddr, 1, 100), VerdictHeld)
		first, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x0d0d), 32)
		l.mustOut(tail, VerdictHeld)
		newWAN := netip.MustParseAddr("198.18.0.7")
		l.e.SetWANAddr(newWAN)
		if h := l.e.FragmentHold(); h.HeldWAN != 0 || h.HeldLAN != 1 {
			t.Fatalf("hold %+v after the change", h)
		}
		if n := l.e.Drops.Get(DropFragment); n != 1 {
			t.Errorf("unmatched_fragment %d, want 1", n)
		}
		p := mustParse(t, first)
		if r := l.e.Outbound(p); r.Verdict != VerdictToWAN {
			t.Fatalf("first fragment: %s", verdictName(r.Verdict))
		}
		got := l.take(true)
		if len(got) != 1 || header.IPv4(got[0].b).SourceAddress() != taddr(newWAN) {
			t.Fatalf("released %d fragments, want the tail from the new address", len(got))
		}
	})
	t.Run("held fragments are not saved with the state and the saved state restores", func(t *testing.T) {
		l := newLab(t, Config{})
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "hello"), VerdictToWAN).SrcPort
		first, tail := fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), 0x0e0e), 32)
		l.mustOut(tail, VerdictHeld)
		l.mustIn(tailPkt(remote1, wanAddr, 2, 100), VerdictHeld)
		b := saveBytes(t, l.e)
		r, _ := restoredLab(t, Config{}, b, l.clock.T)
		if h := r.e.FragmentHold(); h != (FragmentHold{}) {
			t.Fatalf("restored engine holds %+v", h)
		}
		if m, ok := r.mapping("udp", ap(lanA, 5000)); !ok || m.WAN.Port() != ext {
			t.Fatalf("mapping not restored: %+v", m)
		}
		for _, h := range r.e.Stats().Hosts {
			if h.Fragments != 0 {
				t.Errorf("restored host %v holds %d fragment units", h.Host, h.Fragments)
			}
		}
		// The datagram whose fragments straddle the restart is lost: its
		// first fragment passes, the held tail is gone.
		r.mustOut(first, VerdictToWAN)
		if got := r.take(true); len(got) != 0 {
			t.Fatalf("released %d fragments held before the restart", len(got))
		}
	})
}

func TestFragmentHoldDrops(t *testing.T) {
	t.Run("every held fragment is released, dropped under a fragment reason, or still held", func(t *testing.T) {
		l := newLab(t, Config{Limits: Limits{MaxFragmentsPerHost: 8}})
		rng := rand.New(rand.NewPCG(5, 6))
		ext := l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "hello"), VerdictToWAN).SrcPort
		fragReasons := func() uint64 {
			return l.e.Drops.Get(DropFragment) + l.e.Drops.Get(DropFragmentExpired) + l.e.Drops.Get(DropFragmentBufferFull)
		}
		var own uint64 // fragments dropped on arrival under those reasons
		for i := range 3000 {
			id := uint16(rng.IntN(64))
			var frags [][]byte
			out := rng.IntN(2) == 0
			if out {
				frags = fragments(bigUDP(ap(lanA, 5000), ap(remote1, 4500), id), 48, 240)
			} else {
				frags = fragments(bigUDP(ap(remote1, 4500), ap(wanAddr, ext), id), 48, 240)
			}
			var r Result
			if f := frags[rng.IntN(3)]; out {
				r, _ = l.out(f)
			} else {
				r, _ = l.in(f)
			}
			switch r.Reason {
			case DropFragment, DropFragmentExpired, DropFragmentBufferFull:
				own++
			}
			l.take(rng.IntN(2) == 0)
			if i%100 == 0 {
				l.advance(time.Second)
			}
		}
		check := func() FragmentHold {
			h := l.e.FragmentHold()
			if h.Total == 0 || h.Total != h.Released+h.Dropped+uint64(h.HeldLAN+h.HeldWAN) {
				t.Fatalf("hold %+v does not add up", h)
			}
			if n := fragReasons() - own; n != h.Dropped {
				t.Fatalf("%d held fragments dropped, %d counted under the fragment reasons", h.Dropped, n)
			}
			return h
		}
		h := check()
		if h.Released == 0 || h.Dropped == 0 {
			t.Fatalf("hold %+v: the test exercises too little", h)
		}
		l.take(true)
		l.take(false)
		l.advance(fragHoldDuration)
		if h := check(); h.HeldLAN+h.HeldWAN != 0 || h.BytesLAN+h.BytesWAN != 0 {
			t.Fatalf("hold %+v after every fragment's time ran out", h)
		}
		if s := l.e.Stats(); len(s.Hosts) > 0 && s.Hosts[0].Fragments > 0 {
			// Table entries (30 s) may remain; held units must not.
			l.advance(30 * time.Second)
			if s := l.e.Stats(); len(s.Hosts) > 0 && s.Hosts[0].Fragments > 0 {
				t.Fatalf("host %v holds %d fragment units with nothing held", s.Hosts[0].Host, s.Hosts[0].Fragments)
			}
		}
	})
}

// heldFuzz follows an engine's held fragments for the fuzz harnesses.
type heldFuzz struct{ dropped uint64 }

// droppedSince returns how many held fragments the engine dropped (each
// counted under a drop reason) since the last call.
func (h *heldFuzz) droppedSince(e *Engine) uint64 {
	d := e.FragmentHold().Dropped
	n := d - h.dropped
	h.dropped = d
	return n
}

// checkReleased takes what both sides released, as the router does after a
// pass, and checks each fragment: a valid IPv4 header, cached fields that
// match its bytes, out to the WAN only from the WAN address, in to the LAN
// only to a LAN address. It returns the fragments delivered to the LAN.
func checkReleased(t *testing.T, e *Engine, lan func(netip.Addr) bool) []*Packet {
	t.Helper()
	var toLAN []*Packet
	for _, outbound := range []bool{true, false} {
		for {
			var buf []byte
			n, v := e.TakeReleased(outbound, func(n int) []byte { buf = make([]byte, n); return buf })
			if n == 0 {
				break
			}
			p := &Packet{}
			if r := p.Parse(buf); r != DropNone {
				t.Fatalf("released fragment does not parse: %v", r)
			}
			if !p.IP.IsChecksumValid() || p.FragOffset == 0 {
				t.Fatalf("released fragment: checksum valid %v, offset %d", p.IP.IsChecksumValid(), p.FragOffset)
			}
			if err := checkCached(p); err != nil {
				t.Fatal(err)
			}
			switch {
			case v == VerdictToWAN && outbound:
				if p.Src != wanAddr.As4() {
					t.Fatalf("released to the WAN from %v", p.SrcAddr())
				}
			case v == VerdictToLAN:
				if !lan(p.DstAddr()) {
					t.Fatalf("released to the LAN for %v (outbound %v)", p.DstAddr(), outbound)
				}
				toLAN = append(toLAN, p)
			default:
				t.Fatalf("released with verdict %s (outbound %v)", verdictName(v), outbound)
			}
		}
	}
	return toLAN
}

// checkHold checks the held fragments' gauges against their bounds and
// counters.
func checkHold(t *testing.T, e *Engine) {
	t.Helper()
	h := e.FragmentHold()
	if h.Total != h.Released+h.Dropped+uint64(h.HeldLAN+h.HeldWAN) {
		t.Fatalf("hold %+v does not add up", h)
	}
	if h.HeldLAN > fragHoldMax || h.HeldWAN > fragHoldMax || h.BytesLAN > fragHoldBytes || h.BytesWAN > fragHoldBytes ||
		h.HeldLAN < 0 || h.HeldWAN < 0 || h.BytesLAN < 0 || h.BytesWAN < 0 {
		t.Fatalf("hold %+v beyond its bounds", h)
	}
}

// BenchmarkFragments measures one two-fragment datagram from the LAN per
// op, in order and last fragment first (held, released, taken into a
// reused buffer as the router does). The fragment table is swept every
// 200 datagrams, outside the timer, so that its per-host share never
// runs out.
func BenchmarkFragments(b *testing.B) {
	for _, lastFirst := range []bool{false, true} {
		name := "in order"
		if lastFirst {
			name = "last fragment first"
		}
		b.Run(name, func(b *testing.B) {
			l := newLab(b, Config{})
			l.mustOut(udpPkt(ap(lanA, 5000), ap(remote1, 4500), "open"), VerdictToWAN)
			var heads, tails [256][]byte
			for i := range heads {
				heads[i], tails[i] = fragmentAt(bigUDP(ap(lanA, 5000), ap(remote1, 4500), uint16(i)), 256)
			}
			hbuf, tbuf := make([]byte, len(heads[0])), make([]byte, len(tails[0]))
			out := make([]byte, 2048)
			alloc := func(n int) []byte { return out[:n] }
			var p Packet
			send := func(buf, tmpl []byte, want Verdict) {
				copy(buf, tmpl)
				if p.Parse(buf) != DropNone {
					b.Fatal("parse")
				}
				if r := l.e.Outbound(&p); r.Verdict != want {
					b.Fatalf("verdict %s (%v)", verdictName(r.Verdict), r.Reason)
				}
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(heads[0]) + len(tails[0])))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				k := i % 200
				if k == 0 && i > 0 {
					b.StopTimer()
					l.clock.Advance(31 * time.Second)
					l.e.Expire()
					b.StartTimer()
				}
				if lastFirst {
					send(tbuf, tails[k], VerdictHeld)
					send(hbuf, heads[k], VerdictToWAN)
					if n, v := l.e.TakeReleased(true, alloc); n != len(tbuf) || v != VerdictToWAN {
						b.Fatalf("took %d bytes (%s)", n, verdictName(v))
					}
				} else {
					send(hbuf, heads[k], VerdictToWAN)
					send(tbuf, tails[k], VerdictToWAN)
				}
			}
		})
	}
}
