package datapath

import (
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

func TestICMPLimiter(t *testing.T) {
	dst := func(i int) [4]byte { return [4]byte{198, 18, byte(i >> 8), byte(i)} }
	type step struct {
		at    time.Duration
		dests int // errors to this many distinct destinations, one each, ...
		each  int // ... this many times each
		want  int // allowed in the step
	}
	cases := []struct {
		name        string
		rate, burst int
		steps       []step
	}{
		{"one destination gets its burst at once, then the rate", 1, 6, []step{
			{0, 1, 10, 6}, {500 * time.Millisecond, 1, 5, 0}, {time.Second, 1, 5, 1}, {3 * time.Second, 1, 5, 2}}},
		{"an idle destination earns no more than its burst", 1, 6, []step{
			{0, 1, 6, 6}, {time.Hour, 1, 10, 6}}},
		{"each destination has a bucket of its own", 1, 2, []step{
			{0, 10, 3, 20}}},
		{"all destinations together are capped by the global rate", 100, 100, []step{
			{0, 200, 1, icmpGlobalBurst}, {time.Second, 200, 1, icmpGlobalBurst}, {1020 * time.Millisecond, 200, 1, icmpGlobalRate / 50}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := newICMPLimiter(tc.rate, tc.burst)
			for i, s := range tc.steps {
				got := 0
				for range s.each {
					for d := range s.dests {
						if l.allow(dst(d), int64(s.at)) {
							got++
						}
					}
				}
				if got != s.want {
					t.Errorf("step %d (at %v): %d allowed, want %d", i, s.at, got, s.want)
				}
			}
		})
	}
	t.Run("a flood of forged destinations never grows the table past its bound", func(t *testing.T) {
		l := newICMPLimiter(1, 6)
		for i := range 3 * icmpMaxDestinations {
			l.allow([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}, int64(i)*int64(time.Microsecond))
		}
		if got := l.size(); got > icmpMaxDestinations {
			t.Errorf("%d destinations remembered, bound %d", got, icmpMaxDestinations)
		}
		l.expire(int64(time.Minute))
		if got := l.size(); got != 0 {
			t.Errorf("%d destinations still remembered after their buckets refilled", got)
		}
	})
	t.Run("asking allocates nothing", func(t *testing.T) {
		l := newICMPLimiter(1, 6)
		var now int64
		if n := testing.AllocsPerRun(1000, func() { now += 1000; l.allow(dst(int(now%50)), now) }); n != 0 {
			t.Errorf("%.1f allocations per error", n)
		}
	})
}

// TestRouterErrorsAreRateLimited sends floods that each make the core build
// ICMP errors, and checks that only the burst goes out and the rest is
// counted as suppressed.
func TestRouterErrorsAreRateLimited(t *testing.T) {
	const flood, burst = 20, 6
	cases := []struct {
		name   string
		send   func(c *Path, o *outbox, p *nat.Packet)
		typ    header.ICMPv4Type
		toWAN  bool
		sentTo [4]byte
	}{
		{"Time Exceeded to a WAN remote sending TTL 1 through a mapping is limited",
			func(c *Path, o *outbox, p *nat.Packet) {
				buf, n := udpPacket(lanHost, remote, 40000, 53, 8, 60, false)
				c.fromLAN(buf, n, p, o)
				o.reset()
				for range flood {
					buf, n := udpPacket(remote, wanAddr, 53, 20000, 8, 1, false)
					c.fromWAN(buf, n, offload.Header{}, p, o)
				}
			}, header.ICMPv4TimeExceeded, true, remote},
		{"Time Exceeded to a no-NAT site sending TTL 1 is limited",
			func(c *Path, o *outbox, p *nat.Packet) {
				buf, n := udpPacket(lanHost, site, 40000, 53, 8, 60, false)
				c.fromLAN(buf, n, p, o)
				o.reset()
				for range flood {
					buf, n := udpPacket(site, lanHost, 53, 40000, 8, 1, false)
					c.fromWAN(buf, n, offload.Header{}, p, o)
				}
			}, header.ICMPv4TimeExceeded, true, site},
		{"Fragmentation Needed to a LAN host sending big DF packets is limited",
			func(c *Path, o *outbox, p *nat.Packet) {
				for range flood {
					buf, n := udpPacket(lanHost, remote, 40000, 53, 1400, 60, true)
					c.fromLAN(buf, n, p, o)
				}
			}, header.ICMPv4DstUnreachable, false, lanHost},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := testCore(t, 1000)
			c.icmp = newICMPLimiter(1, burst)
			o := newOutbox(64, 64, 2048)
			var p nat.Packet
			tc.send(c, o, &p)
			q := o.lan
			if tc.toWAN {
				q = o.wan
			}
			errors := 0
			for _, b := range queued(q) {
				ip := header.IPv4(b)
				if ip.Protocol() == uint8(header.ICMPv4ProtocolNumber) && header.ICMPv4(ip.Payload()).Type() == tc.typ &&
					ip.DestinationAddress().As4() == tc.sentTo {
					errors++
				}
			}
			if errors != burst {
				t.Errorf("%d errors sent, want the burst of %d", errors, burst)
			}
			if got := c.stats.ICMPErrorsSent.Load(); got != burst {
				t.Errorf("ICMPErrorsSent %d, want %d", got, burst)
			}
			if got := c.stats.ICMPErrorsSuppressed.Load(); got != flood-burst {
				t.Errorf("ICMPErrorsSuppressed %d, want %d", got, flood-burst)
			}
		})
	}
}

// size is how many destinations the limiter remembers.
func (l *icmpLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.dests)
}
