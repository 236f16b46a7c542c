package datapath

import (
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

// fragmentsOf splits the n-byte packet in buf (after the headroom) into
// fragments of at most mtu bytes, each in its own buffer with headroom.
func fragmentsOf(t *testing.T, buf []byte, n, mtu int) [][]byte {
	t.Helper()
	var out [][]byte
	var cur []byte
	ok := fragment(buf[Headroom:Headroom+n], mtu,
		func() []byte { cur = make([]byte, Headroom+mtu); return cur[Headroom:] },
		func(n int) { out = append(out, cur[:Headroom+n]) })
	if !ok || len(out) < 2 {
		t.Fatalf("fragmenting: ok %v, %d fragments", ok, len(out))
	}
	return out
}

// withTTL sets a fragment's TTL, keeping its header checksum right.
func withTTL(b []byte, ttl uint8) []byte {
	ip := header.IPv4(b[Headroom:])
	ip.SetTTL(ttl)
	ip.SetChecksum(0)
	ip.SetChecksum(^ip.CalculateChecksum())
	return b
}

// reassembled glues queued fragments (IPv4 from the first byte) into one
// datagram and checks its UDP checksum end to end.
func checkReassembled(t *testing.T, frags [][]byte) header.IPv4 {
	t.Helper()
	total := 0
	for _, f := range frags {
		total += len(header.IPv4(f).Payload())
	}
	payload := make([]byte, total)
	var first header.IPv4
	for _, f := range frags {
		ip := header.IPv4(f)
		if !ip.IsChecksumValid() {
			t.Fatalf("fragment at %d: bad IPv4 checksum", ip.FragmentOffset())
		}
		if ip.FragmentOffset() == 0 {
			first = ip
		}
		copy(payload[ip.FragmentOffset():], ip.Payload())
	}
	if first == nil {
		t.Fatal("no first fragment")
	}
	for _, f := range frags {
		ip := header.IPv4(f)
		if ip.SourceAddress() != first.SourceAddress() || ip.DestinationAddress() != first.DestinationAddress() {
			t.Fatalf("fragments disagree: %v→%v and %v→%v", ip.SourceAddress(), ip.DestinationAddress(),
				first.SourceAddress(), first.DestinationAddress())
		}
	}
	udp := header.UDP(payload)
	if int(udp.Length()) != total {
		t.Fatalf("UDP length %d, reassembled %d", udp.Length(), total)
	}
	xsum := header.PseudoHeaderChecksum(header.UDPProtocolNumber, first.SourceAddress(), first.DestinationAddress(), uint16(total))
	if checksum.Checksum(payload, xsum) != 0xffff {
		t.Fatal("reassembled UDP checksum invalid")
	}
	return first
}

func TestCoreReleasedFragments(t *testing.T) {
	t.Run("a LAN datagram's last fragment before its first leaves translated right behind the first, in the same write", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		pool := &offload.Segments{Headroom: Headroom}
		buf, n := udpPacket(lanHost, remote, 40000, 53, 1400, 63, false)
		frags := fragmentsOf(t, buf, n, 1000)
		var p nat.Packet
		c.fromLAN(frags[1], len(frags[1])-Headroom, &p, o)
		if len(o.wan)+len(o.lan) != 0 || c.sendReleased(true, o, pool, &p, 8) || len(o.wan) != 0 {
			t.Fatalf("the last fragment went somewhere before the first: wan %d lan %d", len(o.wan), len(o.lan))
		}
		c.fromLAN(frags[0], len(frags[0])-Headroom, &p, o)
		if more := c.sendReleased(true, o, pool, &p, 8); more || len(o.wan) != 2 {
			t.Fatalf("queued %d for the WAN (more %v), want the first fragment and the released one", len(o.wan), more)
		}
		q := queued(o.wan)
		if header.IPv4(q[0]).FragmentOffset() != 0 || header.IPv4(q[1]).FragmentOffset() == 0 {
			t.Error("the released fragment is not behind its first fragment")
		}
		if first := checkReassembled(t, q); first.SourceAddress().As4() != wanAddr {
			t.Errorf("left from %v", first.SourceAddress())
		}
		if got := c.stats.Traffic[LANToWAN][nat.ProtoUDP].Packets.Load(); got != 2 {
			t.Errorf("counted %d UDP packets to the WAN, want 2", got)
		}
	})
	t.Run("a reply's last fragment before its first reaches the LAN host right behind the first", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		pool := &offload.Segments{Headroom: Headroom}
		var p nat.Packet
		buf, n := udpPacket(lanHost, remote, 20001, 53, 8, 63, false)
		c.fromLAN(buf, n, &p, o)
		ext := header.UDP(header.IPv4(queued(o.wan)[0]).Payload()).SourcePort()
		o.reset()
		buf, n = udpPacket(remote, wanAddr, 53, ext, 1400, 60, false)
		frags := fragmentsOf(t, buf, n, 1000)
		c.fromWAN(frags[1], len(frags[1])-Headroom, offload.Header{}, &p, o)
		if len(o.lan) != 0 || c.sendReleased(false, o, pool, &p, 8) || len(o.lan) != 0 {
			t.Fatalf("the last fragment reached the LAN before the first")
		}
		c.fromWAN(frags[0], len(frags[0])-Headroom, offload.Header{}, &p, o)
		c.sendReleased(false, o, pool, &p, 8)
		if len(o.lan) != 2 {
			t.Fatalf("queued %d for the LAN, want 2", len(o.lan))
		}
		q := queued(o.lan)
		if header.IPv4(q[1]).FragmentOffset() == 0 {
			t.Error("the released fragment is not behind its first fragment")
		}
		if first := checkReassembled(t, q); first.DestinationAddress().As4() != lanHost {
			t.Errorf("delivered to %v", first.DestinationAddress())
		}
	})
	t.Run("a released fragment too big for the WAN MTU is fragmented again", func(t *testing.T) {
		c, o := testCore(t, 1280), newTestOutbox()
		pool := &offload.Segments{Headroom: Headroom}
		var p nat.Packet
		buf, n := udpPacket(lanHost, remote, 40000, 53, 2900, 63, false)
		frags := fragmentsOf(t, buf, n, 1500) // as the LAN, at its MTU
		c.fromLAN(frags[1], len(frags[1])-Headroom, &p, o)
		c.fromLAN(frags[0], len(frags[0])-Headroom, &p, o)
		c.sendReleased(true, o, pool, &p, 8)
		if len(o.wan) != 4 {
			t.Fatalf("queued %d for the WAN, want each 1500-byte fragment in two", len(o.wan))
		}
		for _, f := range queued(o.wan) {
			if len(f) > 1280 {
				t.Errorf("a %d-byte fragment for a 1280-byte MTU", len(f))
			}
		}
		checkReassembled(t, queued(o.wan))
	})
	t.Run("more released fragments than a write takes wait for the next one", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		pool := &offload.Segments{Headroom: Headroom}
		var p nat.Packet
		buf, n := udpPacket(lanHost, remote, 40000, 53, 1400, 63, false)
		frags := fragmentsOf(t, buf, n, 400)
		for i := len(frags) - 1; i >= 1; i-- {
			c.fromLAN(frags[i], len(frags[i])-Headroom, &p, o)
		}
		c.fromLAN(frags[0], len(frags[0])-Headroom, &p, o)
		var all [][]byte
		if !c.sendReleased(true, o, pool, &p, 2) || len(o.wan) != 3 {
			t.Fatalf("first write: %d queued, want the first fragment and 2 released, more waiting", len(o.wan))
		}
		for _, f := range queued(o.wan) { // written before the pool is reused
			all = append(all, append([]byte(nil), f...))
		}
		o.reset()
		pool.Reset()
		if more := c.sendReleased(true, o, pool, &p, 2); more || len(o.wan) != len(frags)-3 {
			t.Fatalf("second write: %d queued (more %v), want %d", len(o.wan), more, len(frags)-3)
		}
		all = append(all, queued(o.wan)...)
		checkReassembled(t, all)
	})
	t.Run("a released fragment from the WAN that would expire on the way in is dropped", func(t *testing.T) {
		c, o := testCore(t, 1500), newTestOutbox()
		pool := &offload.Segments{Headroom: Headroom}
		var p nat.Packet
		buf, n := udpPacket(lanHost, remote, 20001, 53, 8, 63, false)
		c.fromLAN(buf, n, &p, o)
		ext := header.UDP(header.IPv4(queued(o.wan)[0]).Payload()).SourcePort()
		o.reset()
		buf, n = udpPacket(remote, wanAddr, 53, ext, 1400, 60, false)
		frags := fragmentsOf(t, buf, n, 1000)
		c.fromWAN(withTTL(frags[1], 1), len(frags[1])-Headroom, offload.Header{}, &p, o)
		c.fromWAN(frags[0], len(frags[0])-Headroom, offload.Header{}, &p, o)
		c.sendReleased(false, o, pool, &p, 8)
		if len(o.lan) != 1 || c.drops.Get(nat.DropTTLExceeded) != 1 {
			t.Fatalf("queued %d for the LAN, ttl_exceeded %d: want the first fragment only", len(o.lan), c.drops.Get(nat.DropTTLExceeded))
		}
	})
}
