package integration

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// Packets from the LAN are expired by the router namespace's own kernel
// before they reach the TUN (see TestMasqueradeCarriesLANTrafficToTheWAN).
// Packets from the WAN bypass the kernel's forwarding, so vpnmasq answers
// those itself: a reply whose TTL would run out on the way to the LAN host
// draws Time Exceeded from the WAN address, quoting the untranslated packet.
func TestReplyAboutToExpireOnTheWayInDrawsTimeExceededFromTheWANAddress(t *testing.T) {
	l := newLab(t, lab.Options{})
	startRouter(t, l, labConfig)

	wanConn, err := l.WAN.ListenPacket("udp4", "198.18.0.2:9999")
	if err != nil {
		t.Fatal(err)
	}
	defer wanConn.Close()
	lanConn, err := l.LAN1.ListenPacket("udp4", "0.0.0.0:41000")
	if err != nil {
		t.Fatal(err)
	}
	defer lanConn.Close()

	// lan1 opens the mapping; the WAN side learns its external address.
	if _, err := lanConn.WriteTo([]byte("hello"), &net.UDPAddr{IP: net.IPv4(198, 18, 0, 2), Port: 9999}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1500)
	_ = wanConn.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, mapped, err := wanConn.ReadFrom(buf)
	if err != nil {
		t.Fatalf("the WAN side never heard lan1: %v", err)
	}
	wanIP := ipv4.NewPacketConn(wanConn)

	t.Run("a reply with TTL 1 does not reach lan1 and is answered with Time Exceeded from 198.18.0.1", func(t *testing.T) {
		icmpCap := startCapture(t, l.WAN, lab.HostIf, "icmp and src host 198.18.0.1 and dst host 198.18.0.2")
		if err := wanIP.SetTTL(1); err != nil {
			t.Fatal(err)
		}
		if _, err := wanConn.WriteTo([]byte("expiring reply"), mapped); err != nil {
			t.Fatal(err)
		}
		_ = lanConn.SetReadDeadline(time.Now().Add(time.Second))
		if n, _, err := lanConn.ReadFrom(buf); err == nil {
			t.Errorf("lan1 received %q although its TTL ran out at the router", buf[:n])
		}
		pkts := icmpCap.stop()
		text := strings.Join(pkts, "\n")
		if !strings.Contains(text, "time exceeded in-transit") {
			t.Fatalf("no Time Exceeded from 198.18.0.1 on the WAN side; captured:\n%s", text)
		}
		// The quote is the packet as the WAN host sent it: to the WAN
		// address and the mapped port, not to lan1.
		ua := mapped.(*net.UDPAddr)
		if !strings.Contains(text, fmt.Sprintf("198.18.0.2.9999 > %s.%d:", ua.IP, ua.Port)) {
			t.Errorf("Time Exceeded does not quote the untranslated reply to %s:\n%s", mapped, text)
		}
	})

	t.Run("the same reply with TTL 64 reaches lan1", func(t *testing.T) {
		if err := wanIP.SetTTL(64); err != nil {
			t.Fatal(err)
		}
		if _, err := wanConn.WriteTo([]byte("normal reply"), mapped); err != nil {
			t.Fatal(err)
		}
		_ = lanConn.SetReadDeadline(time.Now().Add(3 * time.Second))
		n, _, err := lanConn.ReadFrom(buf)
		if err != nil || string(buf[:n]) != "normal reply" {
			t.Fatalf("lan1 got %q, %v; want the reply", buf[:n], err)
		}
	})
}
