package testpacket

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

var (
	src = netip.MustParseAddrPort("10.0.0.10:40000")
	dst = netip.MustParseAddrPort("198.18.100.1:443")
)

// transportSumOK reports whether the transport checksum of an unfragmented
// IPv4 packet sums to all ones over its pseudo-header.
func transportSumOK(ip header.IPv4) bool {
	l4 := ip.Payload()
	xsum := header.PseudoHeaderChecksum(ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4)))
	return checksum.Checksum(l4, xsum) == 0xffff
}

func TestIPv4(t *testing.T) {
	t.Run("every header field is written and the checksum is right", func(t *testing.T) {
		b := IPv4(IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: 50, ID: 0x1234,
			Flags: header.IPv4FlagMoreFragments, FragOff: 64, TTL: 3, OptWords: 2}, []byte("body"))
		ip := header.IPv4(b)
		if !ip.IsValid(len(b)) || !ip.IsChecksumValid() {
			t.Fatalf("invalid header: %x", b)
		}
		if ip.HeaderLength() != 28 || int(ip.TotalLength()) != len(b) || ip.ID() != 0x1234 || !ip.More() ||
			ip.FragmentOffset() != 64 || ip.TTL() != 3 || ip.Protocol() != 50 ||
			ip.SourceAddress().As4() != src.Addr().As4() || ip.DestinationAddress().As4() != dst.Addr().As4() ||
			string(ip.Payload()) != "body" {
			t.Errorf("header %x", b[:28])
		}
		for i := 20; i < 28; i++ {
			if b[i] != byte(header.IPv4OptionNOPType) {
				t.Errorf("option byte %d is %d, want NOP", i, b[i])
			}
		}
	})
	t.Run("options are written as given, padded to a word, before the NOP words", func(t *testing.T) {
		routerAlert := []byte{byte(header.IPv4OptionRouterAlertType), 4, 0, 0}
		b := IPv4(IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: 17, Options: append(routerAlert, 1), OptWords: 1}, []byte("x"))
		ip := header.IPv4(b)
		if !ip.IsValid(len(b)) || !ip.IsChecksumValid() {
			t.Fatalf("invalid header: %x", b)
		}
		want := append(append(routerAlert, 1, 0, 0, 0), 1, 1, 1, 1)
		if ip.HeaderLength() != 32 || string(ip.Options()) != string(want) || string(ip.Payload()) != "x" {
			t.Errorf("header length %d, options %x, want 32 and %x", ip.HeaderLength(), ip.Options(), want)
		}
	})
	t.Run("a zero TTL is 64", func(t *testing.T) {
		if ttl := header.IPv4(IPv4(IPv4Header{Src: src.Addr(), Dst: dst.Addr()}, nil)).TTL(); ttl != 64 {
			t.Errorf("TTL %d", ttl)
		}
	})
}

func TestTransport(t *testing.T) {
	t.Run("UDP has its ports, length and a checksum over the pseudo-header", func(t *testing.T) {
		ip := header.IPv4(IPv4(IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: uint8(header.UDPProtocolNumber)}, UDP(src, dst, []byte("q"))))
		u := header.UDP(ip.Payload())
		if u.SourcePort() != src.Port() || u.DestinationPort() != dst.Port() || u.Length() != 9 || u.Checksum() == 0 || !transportSumOK(ip) {
			t.Errorf("UDP %x", u)
		}
	})
	t.Run("TCP has every field, NOP options and a checksum over the pseudo-header", func(t *testing.T) {
		seg := TCP(TCPHeader{Src: src, Dst: dst, Seq: 7, Ack: 9, Flags: header.TCPFlagAck | header.TCPFlagPsh, Window: 1000, OptWords: 1}, []byte("data"))
		ip := header.IPv4(IPv4(IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: uint8(header.TCPProtocolNumber)}, seg))
		tcp := header.TCP(ip.Payload())
		if tcp.SourcePort() != src.Port() || tcp.DestinationPort() != dst.Port() || tcp.SequenceNumber() != 7 || tcp.AckNumber() != 9 ||
			tcp.Flags() != header.TCPFlagAck|header.TCPFlagPsh || tcp.WindowSize() != 1000 || tcp.DataOffset() != 24 ||
			tcp[20] != 1 || string(tcp.Payload()) != "data" || !transportSumOK(ip) {
			t.Errorf("TCP %x", tcp)
		}
	})
	t.Run("ICMP has its type, code, the rest of the header and a checksum", func(t *testing.T) {
		b := ICMP(header.ICMPv4Echo, 0, [4]byte{0, 5, 0, 6}, []byte("ping"))
		icmp := header.ICMPv4(b)
		if icmp.Type() != header.ICMPv4Echo || icmp.Code() != 0 || icmp.Ident() != 5 || icmp.Sequence() != 6 ||
			string(icmp.Payload()) != "ping" || checksum.Checksum(b, 0) != 0xffff {
			t.Errorf("ICMP %x", b)
		}
	})
}

func TestChecksumChecks(t *testing.T) {
	udp := func() []byte {
		return IPv4(IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: uint8(header.UDPProtocolNumber)}, UDP(src, dst, []byte("odd")))
	}
	tcp := func() []byte {
		return IPv4(IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: uint8(header.TCPProtocolNumber)},
			TCP(TCPHeader{Src: src, Dst: dst, Seq: 1, Flags: header.TCPFlagAck, OptWords: 1}, []byte("segment")))
	}
	for _, tc := range []struct {
		name  string
		pkt   func() []byte
		field int
	}{{"UDP", udp, 6}, {"TCP", tcp, header.TCPChecksumOffset}} {
		t.Run(tc.name+": a built packet verifies, a flipped bit does not", func(t *testing.T) {
			b := tc.pkt()
			if !TransportChecksumValid(b) {
				t.Fatal("a built packet does not verify")
			}
			b[len(b)-1] ^= 1
			if TransportChecksumValid(b) {
				t.Error("a changed payload verifies")
			}
		})
		t.Run(tc.name+": a partial checksum is the pseudo-header sum and completes", func(t *testing.T) {
			b := tc.pkt()
			start, offset := PartialChecksum(b)
			ip := header.IPv4(b)
			l4 := ip.Payload()
			want := header.PseudoHeaderChecksum(ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress(), uint16(len(l4)))
			if start != 20 || offset != tc.field || uint16(b[start+offset])<<8|uint16(b[start+offset+1]) != want {
				t.Fatalf("start %d offset %d field %x, want 20, %d, %x", start, offset, b[start+offset:start+offset+2], tc.field, want)
			}
			if TransportChecksumValid(b) {
				t.Error("a partial checksum verifies as a full one")
			}
			before := string(b)
			if !PartialChecksumCompletes(b) {
				t.Error("the partial checksum does not complete to a valid one")
			}
			if string(b) != before {
				t.Error("PartialChecksumCompletes changed the packet")
			}
			b[start+offset+1] ^= 1
			if PartialChecksumCompletes(b) {
				t.Error("a wrong pseudo-header sum completes to a valid checksum")
			}
		})
	}
	t.Run("other protocols and short packets are never valid, and are left alone", func(t *testing.T) {
		icmp := IPv4(IPv4Header{Src: src.Addr(), Dst: dst.Addr(), Proto: uint8(header.ICMPv4ProtocolNumber)}, ICMP(header.ICMPv4Echo, 0, [4]byte{}, nil))
		before := string(icmp)
		if start, offset := PartialChecksum(icmp); start != 0 || offset != 0 || string(icmp) != before {
			t.Errorf("PartialChecksum on ICMP: %d, %d, %x", start, offset, icmp)
		}
		short := udp()
		header.IPv4(short).SetTotalLength(uint16(len(short) + 1))
		for _, b := range [][]byte{icmp, short, tcp()[:30], nil} {
			if TransportChecksumValid(b) || PartialChecksumCompletes(b) {
				t.Errorf("%x is valid", b)
			}
		}
	})
}

func TestBuildWritesTheSpecifiedPacket(t *testing.T) {
	src, dst := netip.MustParseAddr("192.168.77.10"), netip.MustParseAddr("198.18.0.2")
	t.Run("UDP and TCP get their transport header from the ports, checksums valid", func(t *testing.T) {
		for _, proto := range []uint8{uint8(header.UDPProtocolNumber), uint8(header.TCPProtocolNumber)} {
			pkt := Build(Spec{Src: src, Dst: dst, Proto: proto, SrcPort: 40000, DstPort: 53, Payload: []byte("hi")})
			ip := header.IPv4(pkt)
			if !ip.IsChecksumValid() || !TransportChecksumValid(pkt) {
				t.Fatalf("protocol %d: checksums not valid", proto)
			}
			if ip.ID() != 7 || ip.Protocol() != proto || ip.SourceAddress() != addr(src) || ip.DestinationAddress() != addr(dst) {
				t.Fatalf("protocol %d: header %v→%v proto %d id %d", proto, ip.SourceAddress(), ip.DestinationAddress(), ip.Protocol(), ip.ID())
			}
			if proto == uint8(header.TCPProtocolNumber) && header.TCP(ip.Payload()).Flags() != header.TCPFlagSyn {
				t.Fatalf("TCP flags %v, want SYN when none are given", header.TCP(ip.Payload()).Flags())
			}
		}
	})
	t.Run("a fragment carries its offset, more-fragments flag, ID and options", func(t *testing.T) {
		pkt := Build(Spec{Src: src, Dst: dst, Proto: 50, ID: 99, FragOff: 1480, MoreFrags: true,
			Options: []byte{148, 4, 0, 0}, Payload: make([]byte, 16)})
		ip := header.IPv4(pkt)
		if ip.FragmentOffset() != 1480 || ip.Flags()&header.IPv4FlagMoreFragments == 0 || ip.ID() != 99 || ip.HeaderLength() != 24 {
			t.Fatalf("offset %d flags %#x id %d header %d bytes", ip.FragmentOffset(), ip.Flags(), ip.ID(), ip.HeaderLength())
		}
		if len(ip.Payload()) != 16 {
			t.Fatalf("%d payload bytes, want the 16 given as the whole transport part", len(ip.Payload()))
		}
	})
}
