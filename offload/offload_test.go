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
		pkt  craftedPacket
	}{
		{"a udp checksum left to offload is completed", craftedPacket{src: src, dst: dst, proto: 17, srcPort: 53, dstPort: 20000, payload: testPayload(333)}},
		{"a tcp checksum left to offload is completed", craftedPacket{src: src, dst: dst, proto: 6, srcPort: 443, dstPort: 20000, tcpFlags: header.TCPFlagAck, payload: testPayload(1000)}},
		{"an odd-length payload is summed right", craftedPacket{src: src, dst: dst, proto: 17, srcPort: 53, dstPort: 20000, payload: testPayload(1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := craftIPv4(t, tt.pkt)
			pkt := append([]byte(nil), want...)
			start, offset := testpacket.PartialChecksum(pkt)
			if testpacket.TransportChecksumValid(pkt) {
				t.Fatal("the partial checksum already validates: the test proves nothing")
			}
			if err := CompleteChecksum(pkt, start, offset, tt.pkt.proto); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(pkt, want) {
				t.Fatalf("completed packet differs from the original:\n got % x\nwant % x", pkt, want)
			}
		})
	}
	t.Run("a checksum position outside the packet is an error, not a panic", func(t *testing.T) {
		pkt := craftIPv4(t, tests[0].pkt)
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
		pkt      craftedPacket
		gsoType  uint8
		wantSegs int
	}{
		{"a tcp super-packet splits into mss-sized segments", craftedPacket{src: src, dst: dst, proto: 6, srcPort: 443, dstPort: 20001, seq: 0xfffff000, id: 0xfffe,
			tcpFlags: header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin | header.TCPFlagCwr, payload: testPayload(5 * 1000)}, GSOTCPv4, 4},
		{"a tcp super-packet with ECN splits the same", craftedPacket{src: src, dst: dst, proto: 6, srcPort: 443, dstPort: 20001, seq: 1,
			tcpFlags: header.TCPFlagAck | header.TCPFlagCwr, payload: testPayload(2 * mss)}, GSOTCPv4 | GSOECN, 2},
		{"a tcp super-packet of one segment stays one packet", craftedPacket{src: src, dst: dst, proto: 6, srcPort: 443, dstPort: 20001, seq: 1,
			tcpFlags: header.TCPFlagAck | header.TCPFlagPsh, payload: testPayload(100)}, GSOTCPv4, 1},
		{"a udp gso super-packet splits into datagrams", craftedPacket{src: src, dst: dst, proto: 17, srcPort: 443, dstPort: 20001,
			payload: testPayload(3*mss + 10)}, GSOUDPL4, 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			super := craftIPv4(t, tt.pkt)
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
				switch tt.pkt.proto {
				case nat.ProtoTCP:
					tcp := header.TCP(ip.Payload())
					if want := tt.pkt.seq + uint32(k*mss); tcp.SequenceNumber() != want {
						t.Errorf("segment %d: seq %d, want %d", k, tcp.SequenceNumber(), want)
					}
					f := tcp.Flags()
					orig := tt.pkt.tcpFlags
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
			if !bytes.Equal(payload, tt.pkt.payload) {
				t.Fatalf("segments carry %d bytes that differ from the %d sent", len(payload), len(tt.pkt.payload))
			}
		})
	}

	bad := []struct {
		name string
		pkt  craftedPacket
		hdr  Header
	}{
		{"tcp gso on a udp packet is refused", craftedPacket{src: src, dst: dst, proto: 17, srcPort: 1, dstPort: 2, payload: testPayload(3000)}, Header{GSOType: GSOTCPv4, GSOSize: mss}},
		{"udp gso on a tcp packet is refused", craftedPacket{src: src, dst: dst, proto: 6, srcPort: 1, dstPort: 2, payload: testPayload(3000)}, Header{GSOType: GSOUDPL4, GSOSize: mss}},
		{"an IPv6 gso type is refused", craftedPacket{src: src, dst: dst, proto: 6, srcPort: 1, dstPort: 2, payload: testPayload(3000)}, Header{GSOType: GSOTCPv6, GSOSize: mss}},
		{"a zero segment size is refused", craftedPacket{src: src, dst: dst, proto: 6, srcPort: 1, dstPort: 2, payload: testPayload(3000)}, Header{GSOType: GSOTCPv4}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			pkt := craftIPv4(t, tt.pkt)
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
