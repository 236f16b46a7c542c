package datapath

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

// sizedICMPError builds an ICMP error (type 3 code 3) quoting quote, padded
// with pad zero bytes, with the given TTL and DF bit, into a buffer with
// headroom, and returns the buffer and the packet length.
func sizedICMPError(src, dst [4]byte, quote []byte, pad int, ttl uint8, df bool) ([]byte, int) {
	var flags uint8
	if df {
		flags = header.IPv4FlagDontFragment
	}
	body := append(append([]byte(nil), quote...), make([]byte, pad)...)
	return inBuffer(testpacket.IPv4(testpacket.IPv4Header{Src: netip.AddrFrom4(src), Dst: netip.AddrFrom4(dst), Proto: uint8(header.ICMPv4ProtocolNumber),
		ID: 9, Flags: flags, TTL: ttl}, testpacket.ICMP(header.ICMPv4DstUnreachable, header.ICMPv4PortUnreachable, [4]byte{}, body)))
}

// TestRFC5508WhenNotToSendICMPErrors shows RFC 5508 REQ-10e (RFC 1812
// section 4.3.2.7) for the errors the router builds: none about an ICMP
// error or a non-first fragment. The controls are the same situations with
// an ordinary packet, which do draw the error.
func TestRFC5508WhenNotToSendICMPErrors(t *testing.T) {
	// mapped sends lanHost:20001 → remote:53 out, so that WAN:20001 is
	// lanHost's mapping, and returns the translated datagram.
	mapped := func(c *Path, o *outbox) []byte {
		var p nat.Packet
		buf, n := udpPacket(lanHost, remote, 20001, 53, 8, 63, false)
		c.fromLAN(buf, n, &p, o)
		out := append([]byte(nil), queued(o.wan)[0]...)
		o.reset()
		return out
	}
	// fragments splits a reply to the mapping into fragments and returns the
	// first and the last, the last with the given TTL.
	fragments := func(ttl uint8) (first, second []byte) {
		buf, n := udpPacket(remote, wanAddr, 53, 20001, 64, 60, false)
		var frags [][]byte
		var cur []byte
		fragment(buf[Headroom:Headroom+n], 56,
			func() []byte { cur = make([]byte, Headroom+MaxPacket); return cur[Headroom:] },
			func(n int) { frags = append(frags, cur[:Headroom+n]) })
		return frags[0], withTTL(frags[len(frags)-1], ttl)
	}
	cases := []struct {
		name             string
		send             func(t *testing.T, c *Path, o *outbox)
		wantWAN, wantLAN int               // packets queued each way
		wantError        header.ICMPv4Type // the type of the one queued, when it is an error
	}{
		{"an ICMP error arriving with TTL 1 draws no Time Exceeded", func(t *testing.T, c *Path, o *outbox) {
			out := mapped(c, o)
			buf, n := sizedICMPError(remote, wanAddr, out, 0, 1, false)
			var p nat.Packet
			c.fromWAN(buf, n, offload.Header{}, &p, o)
		}, 0, 0, 0},
		{"control: a UDP reply arriving with TTL 1 draws Time Exceeded", func(t *testing.T, c *Path, o *outbox) {
			mapped(c, o)
			buf, n := udpPacket(remote, wanAddr, 53, 20001, 8, 1, false)
			var p nat.Packet
			c.fromWAN(buf, n, offload.Header{}, &p, o)
		}, 1, 0, header.ICMPv4TimeExceeded},
		{"a non-first fragment arriving with TTL 1 draws no Time Exceeded", func(t *testing.T, c *Path, o *outbox) {
			mapped(c, o)
			first, second := fragments(1)
			var p nat.Packet
			c.fromWAN(first, len(first)-Headroom, offload.Header{}, &p, o)
			if len(o.lan) != 1 {
				t.Fatalf("first fragment not delivered (lan=%d)", len(o.lan))
			}
			o.reset()
			c.fromWAN(second, len(second)-Headroom, offload.Header{}, &p, o)
		}, 0, 0, 0},
		{"control: the same non-first fragment with TTL 60 is delivered", func(t *testing.T, c *Path, o *outbox) {
			mapped(c, o)
			first, second := fragments(60)
			var p nat.Packet
			c.fromWAN(first, len(first)-Headroom, offload.Header{}, &p, o)
			o.reset()
			c.fromWAN(second, len(second)-Headroom, offload.Header{}, &p, o)
		}, 0, 1, 0},
		{"an ICMP error too big for the WAN with DF set draws no Fragmentation Needed", func(t *testing.T, c *Path, o *outbox) {
			buf, n := sizedICMPError(lanHost, remote, mapped(c, o), 1400, 63, true)
			var p nat.Packet
			c.fromLAN(buf, n, &p, o)
		}, 0, 0, 0},
		{"control: a UDP datagram too big for the WAN with DF set draws Fragmentation Needed", func(t *testing.T, c *Path, o *outbox) {
			buf, n := udpPacket(lanHost, remote, 40000, 53, 1400, 63, true)
			var p nat.Packet
			c.fromLAN(buf, n, &p, o)
		}, 0, 1, header.ICMPv4DstUnreachable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, o := testCore(t, 1280), newTestOutbox()
			tc.send(t, c, o)
			if len(o.wan) != tc.wantWAN || len(o.lan) != tc.wantLAN {
				t.Fatalf("queued wan=%d lan=%d, want %d/%d", len(o.wan), len(o.lan), tc.wantWAN, tc.wantLAN)
			}
			if tc.wantError == 0 {
				return
			}
			q := queued(append(o.wan, o.lan...))
			if ip := header.IPv4(q[0]); ip.Protocol() != uint8(header.ICMPv4ProtocolNumber) || header.ICMPv4(ip.Payload()).Type() != tc.wantError {
				t.Errorf("queued protocol %d, want ICMP type %d", ip.Protocol(), tc.wantError)
			}
		})
	}
}
