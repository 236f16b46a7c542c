package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// Addresses of the test topology: the WAN side lives in 198.18.0.0/15, the
// LAN in 10.0.0.0/24.
var (
	wanAddr = netip.MustParseAddr("198.18.0.1")
	remote1 = netip.MustParseAddr("198.18.100.1")
	remote2 = netip.MustParseAddr("198.18.100.2")
	router  = netip.MustParseAddr("198.18.50.1") // a router on the path that sends ICMP errors
	lanA    = netip.MustParseAddr("10.0.0.10")
	lanB    = netip.MustParseAddr("10.0.0.20")
)

func ap(a netip.Addr, port uint16) netip.AddrPort { return netip.AddrPortFrom(a, port) }

func taddr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

// testISS is the initial sequence number of every endpoint the builders
// speak for. With one ISS on both sides, each segment is coherent whichever
// way it goes: a SYN is at testISS, everything after it at testISS+1, and
// every acknowledgement is testISS+1 (the other side's SYN, no data yet).
// The connection tracker then sees retransmissions of a quiet connection,
// which are in window in any state.
const testISS = 0x01020304

// tcpSegment builds a TCP header (optWords of NOP options) and payload with
// a correct checksum, at the sequence numbers testISS describes.
func tcpSegment(src, dst netip.AddrPort, flags header.TCPFlags, optWords int, payload []byte) []byte {
	seq := uint32(testISS + 1)
	if flags&header.TCPFlagSyn != 0 {
		seq = testISS
	}
	return testpacket.TCP(testpacket.TCPHeader{Src: src, Dst: dst, Seq: seq, Ack: testISS + 1, Flags: flags, Window: 65000, OptWords: optWords}, payload)
}

func udpPkt(src, dst netip.AddrPort, payload string) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: ProtoUDP, ID: 0x1111},
		testpacket.UDP(src, dst, []byte(payload)))
}

func tcpPkt(src, dst netip.AddrPort, flags header.TCPFlags) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: ProtoTCP, ID: 0x2222},
		tcpSegment(src, dst, flags, 0, nil))
}

func tcpDataPkt(src, dst netip.AddrPort, flags header.TCPFlags, payload string) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: ProtoTCP, ID: 0x2223},
		tcpSegment(src, dst, flags, 1, []byte(payload)))
}

func echoPkt(typ header.ICMPv4Type, src, dst netip.Addr, ident, seq uint16) []byte {
	rest := [4]byte{byte(ident >> 8), byte(ident), byte(seq >> 8), byte(seq)}
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoICMP, ID: 0x3333},
		testpacket.ICMP(typ, 0, rest, []byte("ping payload 0123456789")))
}

// icmpErrPkt builds an ICMP error from src to dst about the packet orig,
// quoting its first keep bytes (all of it when keep is larger).
func icmpErrPkt(src, dst netip.Addr, typ header.ICMPv4Type, code header.ICMPv4Code, orig []byte, keep int) []byte {
	if keep > len(orig) {
		keep = len(orig)
	}
	quoted := append([]byte(nil), orig[:keep]...)
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: ProtoICMP, ID: 0x4444},
		testpacket.ICMP(typ, code, [4]byte{}, quoted))
}

// portUnreachable is the most common error: ICMP 3/3 quoting the whole packet.
func portUnreachable(src, dst netip.Addr, orig []byte) []byte {
	return icmpErrPkt(src, dst, header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, orig, len(orig))
}

// fragmentAt splits an unfragmented IPv4 packet into a first fragment with
// at payload bytes (a multiple of 8) and a second fragment with the rest.
func fragmentAt(b []byte, at int) (first, second []byte) {
	ip := header.IPv4(b)
	hlen := int(ip.HeaderLength())
	payload := ip.Payload()
	mk := func(part []byte, off int, more bool) []byte {
		f := make([]byte, hlen+len(part))
		copy(f, b[:hlen])
		copy(f[hlen:], part)
		fip := header.IPv4(f)
		var flags uint8
		if more {
			flags = header.IPv4FlagMoreFragments
		}
		fip.SetFlagsFragmentOffset(flags, uint16(off))
		fip.SetTotalLength(uint16(len(f)))
		fip.SetChecksum(0)
		fip.SetChecksum(^fip.CalculateChecksum())
		return f
	}
	return mk(payload[:at], 0, true), mk(payload[at:], at, false)
}

// reassemble glues fragments (in any order) back into one datagram with a
// fresh IPv4 header, so the transport checksum can be checked end to end.
func reassemble(frags ...[]byte) ([]byte, error) {
	sorted := append([][]byte(nil), frags...)
	sort.Slice(sorted, func(i, j int) bool {
		return header.IPv4(sorted[i]).FragmentOffset() < header.IPv4(sorted[j]).FragmentOffset()
	})
	first := header.IPv4(sorted[0])
	hlen := int(first.HeaderLength())
	out := append([]byte(nil), sorted[0][:hlen]...)
	for _, f := range sorted {
		ip := header.IPv4(f)
		if int(ip.FragmentOffset()) != len(out)-hlen {
			return nil, fmt.Errorf("fragment at %d, expected %d", ip.FragmentOffset(), len(out)-hlen)
		}
		if ip.SourceAddress() != first.SourceAddress() || ip.DestinationAddress() != first.DestinationAddress() {
			return nil, fmt.Errorf("fragments disagree on addresses: %v→%v vs %v→%v",
				ip.SourceAddress(), ip.DestinationAddress(), first.SourceAddress(), first.DestinationAddress())
		}
		out = append(out, ip.Payload()...)
	}
	ip := header.IPv4(out)
	ip.SetFlagsFragmentOffset(0, 0)
	ip.SetTotalLength(uint16(len(out)))
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	return out, nil
}

// validatePacket checks every checksum of an IPv4 packet from scratch: the
// IPv4 header, and for unfragmented packets the TCP/UDP checksum with its
// pseudo-header or the ICMP checksum; for ICMP errors also the embedded IPv4
// header. It is how the tests prove the engine's incremental updates.
func validatePacket(b []byte) error {
	if len(b) < header.IPv4MinimumSize {
		return errors.New("shorter than an IPv4 header")
	}
	ip := header.IPv4(b)
	if !ip.IsValid(len(b)) {
		return errors.New("invalid IPv4 header")
	}
	if int(ip.TotalLength()) != len(b) {
		return fmt.Errorf("total length %d, buffer %d", ip.TotalLength(), len(b))
	}
	if !ip.IsChecksumValid() {
		return errors.New("bad IPv4 header checksum")
	}
	if ip.More() || ip.FragmentOffset() != 0 {
		return nil // the transport checksum covers the reassembled datagram
	}
	return validateTransport(ip.Protocol(), ip.SourceAddress(), ip.DestinationAddress(), ip.Payload())
}

func validateTransport(proto uint8, src, dst tcpip.Address, l4 []byte) error {
	switch proto {
	case ProtoTCP:
		if len(l4) < header.TCPMinimumSize {
			return errors.New("short TCP")
		}
		xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(l4)))
		if checksum.Checksum(l4, xsum) != 0xffff {
			return errors.New("bad TCP checksum")
		}
	case ProtoUDP:
		if len(l4) < header.UDPMinimumSize {
			return errors.New("short UDP")
		}
		if header.UDP(l4).Checksum() == 0 {
			return nil
		}
		xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, src, dst, uint16(len(l4)))
		if checksum.Checksum(l4, xsum) != 0xffff {
			return errors.New("bad UDP checksum")
		}
	case ProtoICMP:
		if len(l4) < header.ICMPv4MinimumSize {
			return errors.New("short ICMP")
		}
		if checksum.Checksum(l4, 0) != 0xffff {
			return errors.New("bad ICMP checksum")
		}
		if isICMPError(header.ICMPv4(l4).Type()) {
			in := l4[header.ICMPv4MinimumSize:]
			if len(in) < header.IPv4MinimumSize {
				return errors.New("ICMP error without embedded header")
			}
			hlen := int(header.IPv4(in).HeaderLength())
			if hlen < header.IPv4MinimumSize || hlen > len(in) {
				return errors.New("bad embedded IHL")
			}
			if !header.IPv4(in[:hlen]).IsChecksumValid() {
				return errors.New("bad embedded IPv4 header checksum")
			}
		}
	}
	return nil
}

// validateEmbeddedTransport checks the transport checksum of a packet
// embedded whole in an ICMP error (the engine updates it incrementally
// without validating; a complete quote lets the test verify it).
func validateEmbeddedTransport(icmpPayload []byte) error {
	in := header.IPv4(icmpPayload)
	if int(in.TotalLength()) != len(icmpPayload) {
		return fmt.Errorf("embedded packet is truncated (%d of %d bytes)", len(icmpPayload), in.TotalLength())
	}
	return validateTransport(in.Protocol(), in.SourceAddress(), in.DestinationAddress(), in.Payload())
}

// checkCached verifies that the fields a Packet caches still describe its
// bytes after a rewrite.
func checkCached(p *Packet) error {
	ip := header.IPv4(p.Buf)
	if got := ip.SourceAddress().As4(); got != p.Src {
		return fmt.Errorf("cached Src %v, bytes say %v", netip.AddrFrom4(p.Src), netip.AddrFrom4(got))
	}
	if got := ip.DestinationAddress().As4(); got != p.Dst {
		return fmt.Errorf("cached Dst %v, bytes say %v", netip.AddrFrom4(p.Dst), netip.AddrFrom4(got))
	}
	if p.L4 == nil {
		return nil
	}
	var sp, dp uint16
	switch p.Proto {
	case ProtoTCP:
		sp, dp = header.TCP(p.L4).SourcePort(), header.TCP(p.L4).DestinationPort()
	case ProtoUDP:
		sp, dp = header.UDP(p.L4).SourcePort(), header.UDP(p.L4).DestinationPort()
	case ProtoICMP:
		if !isICMPQuery(header.ICMPv4(p.L4).Type()) {
			return nil
		}
		sp = header.ICMPv4(p.L4).Ident()
		dp = sp
	default:
		return nil
	}
	if sp != p.SrcPort || dp != p.DstPort {
		return fmt.Errorf("cached ports %d→%d, bytes say %d→%d", p.SrcPort, p.DstPort, sp, dp)
	}
	return nil
}

func mustParse(t testing.TB, b []byte) *Packet {
	t.Helper()
	p := new(Packet)
	if r := p.Parse(b); r != DropNone {
		t.Fatalf("test packet does not parse: %v", r)
	}
	return p
}

// lab is one engine on a fake clock.
type lab struct {
	t     testing.TB
	clock *FakeClock
	e     *Engine
}

var labEpoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

func newLab(t testing.TB, cfg Config) *lab {
	clock := &FakeClock{T: labEpoch}
	if !cfg.WANAddr.IsValid() {
		cfg.WANAddr = wanAddr
	}
	cfg.Clock = clock
	return &lab{t: t, clock: clock, e: New(cfg)}
}

// out runs a packet from the LAN through the engine and, when it passes,
// checks every checksum of the result.
func (l *lab) out(b []byte) (Result, *Packet) {
	l.t.Helper()
	p := mustParse(l.t, b)
	r := l.e.Outbound(p)
	l.checkPassed(r, p)
	return r, p
}

// in runs a packet from the WAN through the engine, like out.
func (l *lab) in(b []byte) (Result, *Packet) {
	l.t.Helper()
	p := mustParse(l.t, b)
	r := l.e.Inbound(p)
	l.checkPassed(r, p)
	return r, p
}

func (l *lab) checkPassed(r Result, p *Packet) {
	l.t.Helper()
	if r.Verdict == VerdictDrop {
		if r.Reason == DropNone {
			l.t.Errorf("drop without a reason")
		}
		return
	}
	if r.Reason != DropNone {
		l.t.Errorf("verdict %s carries drop reason %v", verdictName(r.Verdict), r.Reason)
	}
	if r.Verdict == VerdictHeld {
		return // nothing leaves now; see take
	}
	if err := validatePacket(p.Buf); err != nil {
		l.t.Errorf("translated packet: %v", err)
	}
	if err := checkCached(p); err != nil {
		l.t.Errorf("translated packet: %v", err)
	}
}

// mustOut expects a packet from the LAN to pass with the given verdict.
func (l *lab) mustOut(b []byte, want Verdict) *Packet {
	l.t.Helper()
	r, p := l.out(b)
	if r.Verdict != want {
		l.t.Fatalf("outbound verdict %s (reason %v), want %s", verdictName(r.Verdict), r.Reason, verdictName(want))
	}
	return p
}

// mustIn expects a packet from the WAN to pass with the given verdict.
func (l *lab) mustIn(b []byte, want Verdict) *Packet {
	l.t.Helper()
	r, p := l.in(b)
	if r.Verdict != want {
		l.t.Fatalf("inbound verdict %s (reason %v), want %s", verdictName(r.Verdict), r.Reason, verdictName(want))
	}
	return p
}

// wantDrop checks a drop and its reason.
func wantDrop(t testing.TB, r Result, reason DropReason) {
	t.Helper()
	if r.Verdict != VerdictDrop || r.Reason != reason {
		t.Fatalf("got verdict %s reason %v, want drop %v", verdictName(r.Verdict), r.Reason, reason)
	}
}

// advance moves the clock and sweeps, as the router does once a second.
func (l *lab) advance(d time.Duration) {
	l.clock.Advance(d)
	l.e.Expire()
}

// mapping returns the mapping of a LAN endpoint from the Mappings snapshot.
func (l *lab) mapping(proto string, lan netip.AddrPort) (MappingInfo, bool) {
	for _, m := range l.e.Mappings() {
		if m.Proto == proto && m.LAN == lan {
			return m, true
		}
	}
	return MappingInfo{}, false
}

// verdictName spells a verdict for test messages.
func verdictName(v Verdict) string {
	switch v {
	case VerdictDrop:
		return "drop"
	case VerdictToWAN:
		return "to_wan"
	case VerdictToLAN:
		return "to_lan"
	case VerdictHost:
		return "host"
	case VerdictHeld:
		return "held"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

func srcAP(p *Packet) netip.AddrPort { return netip.AddrPortFrom(p.SrcAddr(), p.SrcPort) }
func dstAP(p *Packet) netip.AddrPort { return netip.AddrPortFrom(p.DstAddr(), p.DstPort) }

// released is a fragment the engine held and then handed over.
type released struct {
	b []byte
	v Verdict
}

// take collects the fragments one side released (TakeReleased, as the
// router does after a pass), checking each one's IPv4 header.
func (l *lab) take(outbound bool) []released {
	l.t.Helper()
	var out []released
	for {
		var buf []byte
		n, v := l.e.TakeReleased(outbound, func(n int) []byte { buf = make([]byte, n); return buf })
		if n == 0 {
			return out
		}
		if v != VerdictToWAN && v != VerdictToLAN {
			l.t.Fatalf("released with verdict %s", verdictName(v))
		}
		var p Packet
		if r := p.Parse(buf[:n]); r != DropNone {
			l.t.Fatalf("released fragment does not parse: %v", r)
		}
		if p.FragOffset == 0 {
			l.t.Fatalf("released a first fragment")
		}
		out = append(out, released{buf[:n], v})
	}
}
