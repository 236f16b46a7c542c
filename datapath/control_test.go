package datapath

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

func TestSetNoNATForgetsFlowsToMasqueradedNetworks(t *testing.T) {
	c, o := testCore(t, 1500), newTestOutbox()
	c.SetNoNAT([]netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")})
	var p nat.Packet
	buf, n := udpPacket(lanHost, [4]byte{203, 0, 113, 9}, 40000, 53, 8, 60, false)
	c.fromLAN(buf, n, &p, o)
	if c.RoutedFlows() == 0 {
		t.Fatal("the flow to the no-NAT network is not tracked")
	}
	c.SetNoNAT(nil)
	if n := c.RoutedFlows(); n != 0 {
		t.Errorf("%d routed flows left", n)
	}
	if c.IsNoNAT([4]byte{203, 0, 113, 9}) {
		t.Error("203.0.113.9 is still routed without NAT")
	}
}

// TestControlChangesRaceWithNothingTheLoopsRead changes what a reload
// changes while a loop's packets read it (run with -race).
func TestControlChangesRaceWithNothingTheLoopsRead(t *testing.T) {
	c := testCore(t, 1500)
	c.icmp = newICMPLimiter(1, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		o := newTestOutbox()
		var p nat.Packet
		for i := range 2000 {
			o.reset()
			buf, n := udpPacket(lanHost, [4]byte{203, 0, 113, byte(i)}, 40000, 53, 8, 60, false)
			c.fromLAN(buf, n, &p, o)
			buf, n = udpPacket([4]byte{203, 0, 113, byte(i)}, lanHost, 53, 40000, 8, 1, false)
			c.fromWAN(buf, n, offload.Header{}, &p, o)
			c.routed.put(routedKey{proto: 17, lan: lanHost, remote: [4]byte{203, 0, 113, byte(i)}}, int64(i))
			c.icmp.allow([4]byte{198, 18, 0, byte(i)}, int64(i))
		}
	}()
	for i := range 50 {
		if i%2 == 0 {
			c.SetNoNAT([]netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")})
			c.SetICMPErrorRate(5, 5)
		} else {
			c.SetNoNAT(nil)
			c.SetRoutedTimeouts(RoutedTimeouts{TCP: time.Hour, UDP: time.Minute, ICMP: time.Minute, ESP: time.Hour, GRE: time.Hour})
		}
		c.Expire()
	}
	<-done
}
