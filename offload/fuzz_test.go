package offload

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
	"github.com/vpnmasq/vpnmasq/nat"
)

func FuzzDecode(f *testing.F) {
	f.Add([]byte{1, 1, 52, 0, 0xa8, 5, 20, 0, 16, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < HeaderLen {
			return
		}
		h := Decode(b)
		var out [HeaderLen]byte
		h.Encode(out[:])
		if Decode(out[:]) != h {
			t.Fatalf("%+v does not survive a round trip", h)
		}
	})
}

// seedSuperPacket is a TCP super-packet for the fuzz corpora.
func seedSuperPacket(f *testing.F) []byte {
	return testpacket.Build(testpacket.Spec{Src: netip.MustParseAddr("198.18.0.2"), Dst: netip.MustParseAddr("198.18.0.1"),
		Proto: nat.ProtoTCP, SrcPort: 443, DstPort: 20000, TCPFlags: header.TCPFlagAck, Payload: testPayload(4000)})
}

func FuzzSplit(f *testing.F) {
	f.Add(seedSuperPacket(f), uint8(GSOTCPv4), uint16(1448))
	f.Add(seedSuperPacket(f), uint8(GSOUDPL4), uint16(1))
	f.Fuzz(func(t *testing.T, pkt []byte, gsoType uint8, gsoSize uint16) {
		h := Header{Flags: FlagNeedsChecksum, GSOType: gsoType, GSOSize: gsoSize}
		segments := 0
		first, n, err := Split(pkt, h, func(size int) []byte {
			segments++
			return make([]byte, size)
		})
		if err != nil {
			return
		}
		if first > len(pkt) || n != segments+1 {
			t.Fatalf("first %d of %d bytes, %d segments for %d buffers", first, len(pkt), n, segments)
		}
	})
}

func FuzzCompleteChecksum(f *testing.F) {
	f.Add(seedSuperPacket(f), 20, 16)
	f.Fuzz(func(t *testing.T, pkt []byte, start, offset int) {
		_ = CompleteChecksum(pkt, start, offset, nat.ProtoTCP)
	})
}

func FuzzForTUN(f *testing.F) {
	f.Add(seedSuperPacket(f), uint8(FlagDataValid), uint8(GSOTCPv4), uint16(1448), true)
	f.Add(seedSuperPacket(f), uint8(FlagDataValid), uint8(GSOUDPL4), uint16(1400), true)
	f.Fuzz(func(t *testing.T, pkt []byte, flags, gsoType uint8, gsoSize uint16, udp bool) {
		ForTUN(pkt, Header{Flags: flags, GSOType: gsoType, GSOSize: gsoSize}, udp)
	})
}
