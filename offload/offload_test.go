package offload

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
	"github.com/vpnmasq/vpnmasq/nat"
)

func testPayload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i/251)
	}
	return b
}

func TestCompleteChecksum(t *testing.T) {
	src, dst := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("198.18.0.1")
	tests := []struct {
		name string
		pkt  testpacket.Spec
	}{
		{"a udp checksum left to offload is completed", testpacket.Spec{Src: src, Dst: dst, Proto: 17, SrcPort: 53, DstPort: 20000, Payload: testPayload(333)}},
		{"a tcp checksum left to offload is completed", testpacket.Spec{Src: src, Dst: dst, Proto: 6, SrcPort: 443, DstPort: 20000, TCPFlags: header.TCPFlagAck, Payload: testPayload(1000)}},
		{"an odd-length payload is summed right", testpacket.Spec{Src: src, Dst: dst, Proto: 17, SrcPort: 53, DstPort: 20000, Payload: testPayload(1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := testpacket.Build(tt.pkt)
			pkt := append([]byte(nil), want...)
			start, offset := testpacket.PartialChecksum(pkt)
			if testpacket.TransportChecksumValid(pkt) {
				t.Fatal("the partial checksum already validates: the test proves nothing")
			}
			if err := CompleteChecksum(pkt, start, offset, tt.pkt.Proto); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pkt, want) {
				t.Fatalf("completed packet differs from the original:\n got % x\nwant % x", pkt, want)
			}
		})
	}
	t.Run("a checksum position outside the packet is an error, not a panic", func(t *testing.T) {
		pkt := testpacket.Build(tests[0].pkt)
		if err := CompleteChecksum(pkt, len(pkt)-1, 6, nat.ProtoUDP); err == nil {
			t.Fatal("no error")
		}
	})
}

func TestSplitSuperPackets(t *testing.T) {
	src, dst := netip.MustParseAddr("198.19.1.1"), netip.MustParseAddr("198.18.0.1")
	const mss = 1448
	tests := []struct {
		name     string
		pkt      testpacket.Spec
		gsoType  uint8
		wantSegs int
	}{
		{"a tcp super-packet splits into mss-sized segments", testpacket.Spec{Src: src, Dst: dst, Proto: 6, SrcPort: 443, DstPort: 20001, Seq: 0xfffff000, ID: 0xfffe,
			TCPFlags: header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin | header.TCPFlagCwr, Payload: testPayload(5 * 1000)}, GSOTCPv4, 4},
		{"a tcp super-packet with ECN splits the same", testpacket.Spec{Src: src, Dst: dst, Proto: 6, SrcPort: 443, DstPort: 20001, Seq: 1,
			TCPFlags: header.TCPFlagAck | header.TCPFlagCwr, Payload: testPayload(2 * mss)}, GSOTCPv4 | GSOECN, 2},
		{"a tcp super-packet of one segment stays one packet", testpacket.Spec{Src: src, Dst: dst, Proto: 6, SrcPort: 443, DstPort: 20001, Seq: 1,
			TCPFlags: header.TCPFlagAck | header.TCPFlagPsh, Payload: testPayload(100)}, GSOTCPv4, 1},
		{"a udp gso super-packet splits into datagrams", testpacket.Spec{Src: src, Dst: dst, Proto: 17, SrcPort: 443, DstPort: 20001,
			Payload: testPayload(3*mss + 10)}, GSOUDPL4, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			super := testpacket.Build(tt.pkt)
			start, offset := testpacket.PartialChecksum(super)
			hdrLen := int(header.IPv4(super).HeaderLength())
			origID := header.IPv4(super).ID()
			pkt := append([]byte(nil), super...)
			var rest [][]byte
			first, segs, err := Split(pkt, Header{Flags: FlagNeedsChecksum, GSOType: tt.gsoType, GSOSize: mss,
				CsumStart: uint16(start), CsumOffset: uint16(offset)}, func(size int) []byte {
				b := make([]byte, size)
				rest = append(rest, b)
				return b
			})
			if err != nil {
				t.Fatal(err)
			}
			if segs != tt.wantSegs || len(rest) != segs-1 {
				t.Fatalf("%d segments (%d written out), want %d", segs, len(rest), tt.wantSegs)
			}
			all := append([][]byte{pkt[:first]}, rest...)
			var payload []byte
			for k, seg := range all {
				ip := header.IPv4(seg)
				if !ip.IsValid(len(seg)) || int(ip.TotalLength()) != len(seg) || !ip.IsChecksumValid() {
					t.Fatalf("segment %d: bad IPv4 header % x", k, seg[:20])
				}
				if ip.ID() != origID+uint16(k) {
					t.Errorf("segment %d: IP ID %d, want %d", k, ip.ID(), origID+uint16(k))
				}
				if !testpacket.TransportChecksumValid(seg) {
					t.Errorf("segment %d: transport checksum invalid", k)
				}
				last := k == len(all)-1
				switch tt.pkt.Proto {
				case nat.ProtoTCP:
					tcp := header.TCP(ip.Payload())
					if want := tt.pkt.Seq + uint32(k*mss); tcp.SequenceNumber() != want {
						t.Errorf("segment %d: seq %d, want %d", k, tcp.SequenceNumber(), want)
					}
					f := tcp.Flags()
					orig := tt.pkt.TCPFlags
					if got, want := f&(header.TCPFlagFin|header.TCPFlagPsh), orig&(header.TCPFlagFin|header.TCPFlagPsh); last && got != want || !last && got != 0 {
						t.Errorf("segment %d (last=%v): FIN/PSH %v from %v", k, last, got, orig)
					}
					if got := f & header.TCPFlagCwr; k == 0 && got != orig&header.TCPFlagCwr || k > 0 && got != 0 {
						t.Errorf("segment %d: CWR %v from %v", k, got, orig)
					}
					if f&header.TCPFlagAck == 0 {
						t.Errorf("segment %d lost ACK", k)
					}
					payload = append(payload, ip.Payload()[tcp.DataOffset():]...)
				case nat.ProtoUDP:
					udp := header.UDP(ip.Payload())
					if int(udp.Length()) != len(seg)-hdrLen {
						t.Errorf("segment %d: UDP length %d for %d bytes", k, udp.Length(), len(seg)-hdrLen)
					}
					payload = append(payload, udp.Payload()...)
				}
				if !last && len(seg) > hdrLen+mss+header.TCPMinimumSize {
					t.Errorf("segment %d is %d bytes, more than one mss", k, len(seg))
				}
			}
			if !bytes.Equal(payload, tt.pkt.Payload) {
				t.Fatalf("segments carry %d bytes that differ from the %d sent", len(payload), len(tt.pkt.Payload))
			}
		})
	}

	bad := []struct {
		name string
		pkt  testpacket.Spec
		hdr  Header
	}{
		{"tcp gso on a udp packet is refused", testpacket.Spec{Src: src, Dst: dst, Proto: 17, SrcPort: 1, DstPort: 2, Payload: testPayload(3000)}, Header{GSOType: GSOTCPv4, GSOSize: mss}},
		{"udp gso on a tcp packet is refused", testpacket.Spec{Src: src, Dst: dst, Proto: 6, SrcPort: 1, DstPort: 2, Payload: testPayload(3000)}, Header{GSOType: GSOUDPL4, GSOSize: mss}},
		{"an IPv6 gso type is refused", testpacket.Spec{Src: src, Dst: dst, Proto: 6, SrcPort: 1, DstPort: 2, Payload: testPayload(3000)}, Header{GSOType: GSOTCPv6, GSOSize: mss}},
		{"a zero segment size is refused", testpacket.Spec{Src: src, Dst: dst, Proto: 6, SrcPort: 1, DstPort: 2, Payload: testPayload(3000)}, Header{GSOType: GSOTCPv4}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			pkt := testpacket.Build(tt.pkt)
			_, _, err := Split(pkt, tt.hdr, func(size int) []byte { return make([]byte, size) })
			if !errors.Is(err, ErrNotSegmentable) {
				t.Fatalf("got %v, want ErrNotSegmentable", err)
			}
		})
	}
	t.Run("a truncated IPv4 header is refused, not a panic", func(t *testing.T) {
		_, _, err := Split([]byte{0x45, 0, 0, 40}, Header{GSOType: GSOTCPv4, GSOSize: mss}, func(size int) []byte { return make([]byte, size) })
		if err == nil {
			t.Fatal("no error")
		}
	})
}

func TestDecodeIsHostOrder(t *testing.T) {
	var b [HeaderLen]byte
	b[0], b[1] = FlagNeedsChecksum, GSOTCPv4
	put := func(off int, v uint16) { binary.NativeEndian.PutUint16(b[off:], v) }
	put(2, 52)
	put(4, 1448)
	put(6, 20)
	put(8, 16)
	h := Decode(b[:])
	if h != (Header{Flags: 1, GSOType: 1, HdrLen: 52, GSOSize: 1448, CsumStart: 20, CsumOffset: 16}) {
		t.Fatalf("decoded %+v", h)
	}
	if !h.IsSuperPacket() || !h.NeedsChecksum() {
		t.Fatalf("IsSuperPacket=%v NeedsChecksum=%v", h.IsSuperPacket(), h.NeedsChecksum())
	}
}
