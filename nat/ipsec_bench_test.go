package nat

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// ipsecBenchHosts × ipsecBenchRemotes SPI pairs (3840) and as many IKE
// contacts fill the tables the per-packet lookups used to scan.
const (
	ipsecBenchHosts   = 64
	ipsecBenchRemotes = 60
)

func benchHost(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}) }
func benchRemote(j int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 19, byte(j >> 8), byte(1 + j)})
}

// ipsecBenchLab builds an engine where every bench host has a confirmed
// SPI pair and an IKE session with every bench remote.
func ipsecBenchLab(b *testing.B) *lab {
	l := newLab(b, Config{IPsec: IPsecConfig{MaxESP: 1 << 16}, Limits: Limits{MaxESPPerHost: 1 << 10, MaxIKEPerHost: 1 << 10}})
	for j := range ipsecBenchRemotes {
		r := benchRemote(j)
		for i := range ipsecBenchHosts {
			h := benchHost(i)
			ispi := uint64(j)<<32 | uint64(i) + 1
			l.mustOut(ikePkt(ap(h, 500), ap(r, 500), ispi, 0), VerdictToWAN)
			l.mustIn(ikePkt(ap(r, 500), ap(wanAddr, 500), ispi, ispi^0xffff), VerdictToLAN)
			out, in := uint32(0x10000000|j<<12|i), uint32(0x20000000|j<<12|i)
			l.mustOut(espPkt(h, r, out, 1), VerdictToWAN)
			for seq := uint32(1); seq <= 2; seq++ {
				if p := l.mustIn(espPkt(r, wanAddr, in, seq), VerdictToLAN); p.DstAddr() != h {
					b.Fatalf("bench pair bound to %v, want %v", p.DstAddr(), h)
				}
			}
		}
	}
	// Past esp_wait: no host's IKE exchange is recent enough to own a new
	// SPI, so a forged one is dropped rather than delivered.
	l.clock.Advance(3 * time.Minute)
	return l
}

// BenchmarkESPUnknownSPI measures the cost of a forged ESP packet with an
// unknown SPI under the engine lock, with thousands of pairs in the table:
// from a remote every host has ESP and IKE with, and from an address no
// host talks to.
func BenchmarkESPUnknownSPI(b *testing.B) {
	for _, tc := range []struct {
		name string
		from netip.Addr
	}{
		{"from a remote shared by many hosts", benchRemote(7)},
		{"from an unknown address", netip.MustParseAddr("198.18.222.2")},
	} {
		b.Run(tc.name, func(b *testing.B) {
			l := ipsecBenchLab(b)
			tmpl := espPkt(tc.from, wanAddr, 0x7fff0001, 1)
			buf := make([]byte, len(tmpl))
			var p Packet
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				copy(buf, tmpl)
				// A new SPI each time, as a forger would send.
				binary.BigEndian.PutUint32(buf[20:], 0x7f000000|uint32(i&0xffff))
				if p.Parse(buf) != DropNone {
					b.Fatal("parse")
				}
				if r := l.e.Inbound(&p); r.Verdict != VerdictDrop {
					b.Fatalf("forged SPI passed: %s", verdictName(r.Verdict))
				}
			}
		})
	}
}

// BenchmarkICMPErrorAboutESP measures an ICMP error from the WAN quoting
// an ESP packet, with thousands of pairs in the table: about a pair's
// outbound SPI (delivered to its host) and about an SPI nobody sent.
func BenchmarkICMPErrorAboutESP(b *testing.B) {
	for _, tc := range []struct {
		name string
		spi  uint32
		want Verdict
	}{
		{"about a known outbound SPI", 0x10000000 | 7<<12 | 5, VerdictToLAN},
		{"about an unknown SPI", 0x30000001, VerdictHost},
	} {
		b.Run(tc.name, func(b *testing.B) {
			l := ipsecBenchLab(b)
			orig := testpacket.IPv4(testpacket.IPv4Header{Src: wanAddr, Dst: benchRemote(7), Proto: ProtoESP}, espBody(tc.spi, 1))
			tmpl := icmpErrPkt(benchRemote(7), wanAddr, header.ICMPv4DstUnreachable, header.ICMPv4FragmentationNeeded, orig, 28)
			buf := make([]byte, len(tmpl))
			var p Packet
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				copy(buf, tmpl)
				if p.Parse(buf) != DropNone {
					b.Fatal("parse")
				}
				if r := l.e.Inbound(&p); r.Verdict != tc.want {
					b.Fatalf("verdict %s, want %s", verdictName(r.Verdict), verdictName(tc.want))
				}
			}
		})
	}
}
