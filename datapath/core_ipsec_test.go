package datapath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

// ipsecPacket builds an AH or ESP packet (SPI, sequence number and some
// bytes) into a buffer with headroom and returns the buffer and the length.
func ipsecPacket(proto uint8, src, dst [4]byte, spi uint32) ([]byte, int) {
	body := make([]byte, 40)
	switch proto {
	case nat.ProtoAH:
		body[0] = nat.ProtoESP
		body[1] = 4
		binary.BigEndian.PutUint32(body[4:8], spi)
		binary.BigEndian.PutUint32(body[8:12], 1)
	default:
		binary.BigEndian.PutUint32(body[0:4], spi)
		binary.BigEndian.PutUint32(body[4:8], 1)
	}
	return inBuffer(testpacket.IPv4(testpacket.IPv4Header{Src: netip.AddrFrom4(src), Dst: netip.AddrFrom4(dst), Proto: proto, ID: 9, TTL: 60}, body))
}

func TestCoreIPsec(t *testing.T) {
	for _, tc := range []struct {
		name  string
		proto uint8
	}{{"AH", nat.ProtoAH}, {"ESP", nat.ProtoESP}} {
		t.Run(tc.name+" on a no-NAT route is routed unchanged both ways", func(t *testing.T) {
			c, o := testCore(t, 1500), newTestOutbox()
			var p nat.Packet
			buf, n := ipsecPacket(tc.proto, lanHost, site, 0x100)
			sent := append([]byte(nil), buf[Headroom:Headroom+n]...)
			c.fromLAN(buf, n, &p, o)
			if len(o.wan) != 1 || len(o.lan) != 0 {
				t.Fatalf("from the LAN: queued wan=%d lan=%d, want 1/0", len(o.wan), len(o.lan))
			}
			if got := queued(o.wan)[0][:n]; !bytes.Equal(got, sent) {
				t.Errorf("from the LAN: packet changed\n got % x\nwant % x", got, sent)
			}
			o.reset()
			buf, n = ipsecPacket(tc.proto, site, lanHost, 0x200)
			sent = append([]byte(nil), buf[Headroom:Headroom+n]...)
			c.fromWAN(buf, n, offload.Header{}, &p, o)
			if len(o.lan) != 1 || len(o.wan) != 0 {
				t.Fatalf("from the WAN: queued wan=%d lan=%d, want 0/1", len(o.wan), len(o.lan))
			}
			if got := queued(o.lan)[0][:n]; !bytes.Equal(got, sent) {
				t.Errorf("from the WAN: packet changed\n got % x\nwant % x", got, sent)
			}
			if got := c.nat.Drops.Get(nat.DropAHNotMasqueradable); got != 0 {
				t.Errorf("ah_not_masqueradable counted %d times on a no-NAT route", got)
			}
		})
	}
	t.Run("AH that would need masquerading is dropped both ways and counted", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		var p nat.Packet
		buf, n := ipsecPacket(nat.ProtoAH, lanHost, remote, 0x100)
		c.fromLAN(buf, n, &p, o)
		buf, n = ipsecPacket(nat.ProtoAH, remote, wanAddr, 0x200)
		c.fromWAN(buf, n, offload.Header{}, &p, o)
		if len(o.wan)+len(o.lan) != 0 {
			t.Fatalf("AH was queued (wan=%d lan=%d)", len(o.wan), len(o.lan))
		}
		if got := c.nat.Drops.Get(nat.DropAHNotMasqueradable); got != 2 {
			t.Errorf("ah_not_masqueradable counted %d times, want 2", got)
		}
	})
	t.Run("ESP to the internet leaves masqueraded and its reply reaches the host", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		var p nat.Packet
		buf, n := ipsecPacket(nat.ProtoESP, lanHost, remote, 0xa1)
		c.fromLAN(buf, n, &p, o)
		if len(o.wan) != 1 {
			t.Fatalf("queued wan=%d, want 1", len(o.wan))
		}
		if ip := header.IPv4(queued(o.wan)[0]); ip.SourceAddress().As4() != wanAddr || !ip.IsChecksumValid() {
			t.Errorf("left from %v, checksum valid %v", ip.SourceAddress(), ip.IsChecksumValid())
		}
		o.reset()
		buf, n = ipsecPacket(nat.ProtoESP, remote, wanAddr, 0x1a)
		c.fromWAN(buf, n, offload.Header{}, &p, o)
		if len(o.lan) != 1 {
			t.Fatalf("queued lan=%d, want 1", len(o.lan))
		}
		if ip := header.IPv4(queued(o.lan)[0]); ip.DestinationAddress().As4() != lanHost || !ip.IsChecksumValid() {
			t.Errorf("delivered to %v, checksum valid %v", ip.DestinationAddress(), ip.IsChecksumValid())
		}
	})
}
