package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

// newWANAddr is the address the router's WAN interface moves to.
var newWANAddr = netip.MustParseAddr("198.18.0.5")

// must runs a command in ns and fails the test unless it exits 0.
func must(t *testing.T, ns *lab.NS, args ...string) {
	t.Helper()
	if out, code := runIn(t, ns, 10*time.Second, args...); code != 0 {
		t.Fatalf("%s: exit %d: %s", strings.Join(args, " "), code, out)
	}
}

// udpTicker sends a datagram every interval from one LAN socket to a WAN
// echo server, as long-running traffic through the router.
type udpTicker struct {
	conn net.Conn
	stop chan struct{}
	done chan struct{}
}

func startUDPTicker(t *testing.T, ns *lab.NS, remote string, every time.Duration) *udpTicker {
	t.Helper()
	c, err := ns.Dial("udp4", remote, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	u := &udpTicker{conn: c, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(u.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for i := 0; ; i++ {
			_, _ = c.Write([]byte(fmt.Sprintf("tick %d", i)))
			select {
			case <-u.stop:
				return
			case <-tick.C:
			}
		}
	}()
	go func() { _, _ = io.Copy(io.Discard, c) }()
	t.Cleanup(u.close)
	return u
}

func (u *udpTicker) close() {
	select {
	case <-u.stop:
		return
	default:
	}
	close(u.stop)
	<-u.done
	u.conn.Close()
}

// mappingsOn returns the "nat mapping" lines whose WAN endpoint is on addr.
func mappingsOn(t *testing.T, r *router, addr netip.Addr) []string {
	t.Helper()
	lines, err := r.natMappings()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range lines {
		if ap, err := netip.ParseAddrPort(l.Str("wan")); err == nil && ap.Addr() == addr {
			out = append(out, l.Raw)
		}
	}
	return out
}

func TestWANAddrChangeWhileTrafficRuns(t *testing.T) {
	l := newLab(t, lab.Options{})
	r := startRouter(t, l, labConfig)

	echo, err := lab.ServeUDPEcho(l.WAN, "198.18.0.2:7")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	web, err := l.LAN1.Listen("tcp4", "192.168.77.10:80")
	if err != nil {
		t.Fatal(err)
	}
	defer web.Close()
	go func() {
		for {
			c, err := web.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()

	// Traffic runs from lan1 through the old address.
	startUDPTicker(t, l.LAN1, "198.18.0.2:7", 20*time.Millisecond)
	deadline := time.Now().Add(5 * time.Second)
	for len(echo.Peers()) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if len(echo.Peers()) == 0 || echo.Peers()[0].Addr() != lab.RouterWANAddr {
		t.Fatalf("traffic before the change: peers %v, want from %v", echo.Peers(), lab.RouterWANAddr)
	}
	if m := mappingsOn(t, r, lab.RouterWANAddr); len(m) == 0 {
		t.Fatal("no mapping on the old address before the change")
	}

	// The WAN address changes as a DHCP client does it: the new one is
	// added, the old one removed (the new one is promoted to primary).
	logFrom := r.log.len()
	must(t, l.Router, "sysctl", "-qw", "net.ipv4.conf."+lab.RouterWANIf+".promote_secondaries=1")
	must(t, l.Router, "ip", "addr", "add", newWANAddr.String()+"/24", "dev", lab.RouterWANIf)
	changed := time.Now()
	must(t, l.Router, "ip", "addr", "del", lab.RouterWANAddr.String()+"/24", "dev", lab.RouterWANIf)
	// The default route went with the old primary address; the DHCP
	// client puts it back.
	runIn(t, l.Router, 5*time.Second, "ip", "route", "replace", "default", "via", lab.WANAddr.String())

	t.Run("within a second new flows leave from the new address", func(t *testing.T) {
		seen := 0
		var first time.Duration
		for time.Since(changed) < 3*time.Second && first == 0 {
			peers := echo.Peers()
			for _, p := range peers[seen:] {
				if p.Addr() == newWANAddr {
					first = time.Since(changed)
					break
				}
			}
			seen = len(peers)
			time.Sleep(5 * time.Millisecond)
		}
		if first == 0 {
			t.Fatalf("no packet from %v within 3s of the change; peers since: %v", newWANAddr, lastN(echo.Peers(), 5))
		}
		t.Logf("first packet from the new address %v after the change", first)
		if first > time.Second {
			t.Errorf("first packet from the new address after %v, want within a second", first)
		}
		// A fresh flow, too.
		before := len(echo.Peers())
		if _, err := lab.UDPRoundTrip(l.LAN1, "", "198.18.0.2:7", []byte("fresh flow"), 3, time.Second); err != nil {
			t.Fatalf("fresh flow after the change: %v", err)
		}
		for _, p := range echo.Peers()[before:] {
			if p.Addr() != newWANAddr {
				t.Errorf("a packet after the change came from %v", p)
			}
		}
	})
	t.Run("the old mappings are gone, with a log line and a counter", func(t *testing.T) {
		if m := mappingsOn(t, r, lab.RouterWANAddr); len(m) != 0 {
			t.Errorf("mappings on the old address remain:\n%s", strings.Join(m, "\n"))
		}
		if m := mappingsOn(t, r, newWANAddr); len(m) == 0 {
			t.Error("no mapping on the new address")
		}
		line, ok := r.log.waitFor("WAN address changed: mappings bound to the old address dropped, forwards kept", logFrom, time.Second, r.exited)
		if !ok {
			t.Fatal("no log line for the change")
		}
		if line.Str("old") != lab.RouterWANAddr.String() || line.Str("new") != newWANAddr.String() || line.Str("mappings") == "0" {
			t.Errorf("log line %s", line.Raw)
		}
	})
	// The router says when the capture filter, the nftables rules and the
	// engine all moved.
	followed, ok := r.log.waitFor("WAN address followed: capture filter and nftables rules replaced", logFrom, 2*time.Second, r.exited)
	if !ok {
		t.Fatal("the router did not finish following the new address")
	}
	t.Logf("followed: %s", followed.Raw)
	if followed.Str("ok") != "true" {
		t.Errorf("following the new address failed: %s", followed.Raw)
	}
	t.Run("a forward answers on the new address", func(t *testing.T) {
		c, err := l.WAN.Dial("tcp4", netip.AddrPortFrom(newWANAddr, 8080).String(), 2*time.Second)
		if err != nil {
			t.Fatalf("forward on the new address: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("hello forward")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 13)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello forward" {
			t.Fatalf("forward echoed %q, %v", buf, err)
		}
	})
	t.Run("a LAN host reaches the forward on the new address (hairpin)", func(t *testing.T) {
		c, err := l.LAN2.Dial("tcp4", netip.AddrPortFrom(newWANAddr, 8080).String(), 2*time.Second)
		if err != nil {
			t.Fatalf("hairpin to the new address: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte("hairpin")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 7)
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hairpin" {
			t.Fatalf("hairpin echoed %q, %v", buf, err)
		}
	})
	t.Run("the nftables guard and the capture name the new address", func(t *testing.T) {
		out, _ := runIn(t, l.Router, 5*time.Second, "nft", "list", "table", "ip", "vpnmasq_vpnmasq0")
		if !strings.Contains(out, newWANAddr.String()) || strings.Contains(out, lab.RouterWANAddr.String()) {
			t.Errorf("guard table after the change:\n%s", out)
		}
		// Unsolicited UDP to a NAT port of the new address is the NAT's:
		// the host does not answer it with port unreachable.
		td := startCapture(t, l.WAN, lab.HostIf, "icmp")
		c, err := l.WAN.Dial("udp4", netip.AddrPortFrom(newWANAddr, 20999).String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("probe"))
		time.Sleep(300 * time.Millisecond)
		c.Close()
		for _, line := range td.stop() {
			if strings.Contains(line, "unreachable") {
				t.Errorf("the host answered a NAT port of the new address: %s", line)
			}
		}
	})
}

func lastN[T any](s []T, n int) []T { return s[max(0, len(s)-n):] }

func TestWANAddrLinkDownAndUp(t *testing.T) {
	l := newLab(t, lab.Options{})
	r := startRouter(t, l, labConfig)

	// A UDP conversation: lan1 speaks first, then the WAN side speaks
	// through the mapping.
	remote, err := l.WAN.ListenPacket("udp4", "198.18.0.2:9")
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	local, err := l.LAN1.Dial("udp4", "198.18.0.2:9", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	if _, err := local.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	remote.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 100)
	_, peer, err := remote.ReadFrom(buf)
	if err != nil {
		t.Fatalf("lan1's first datagram: %v", err)
	}
	fromWAN := func(msg string) error {
		if _, err := remote.WriteTo([]byte(msg), peer); err != nil {
			return err
		}
		local.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := local.Read(buf)
		if err != nil {
			return err
		}
		if !bytes.Equal(buf[:n], []byte(msg)) {
			return fmt.Errorf("got %q", buf[:n])
		}
		return nil
	}
	if err := fromWAN("before"); err != nil {
		t.Fatalf("WAN side before the link went down: %v", err)
	}

	// A long TCP connection with data both ways.
	srv, err := l.WAN.Listen("tcp4", "198.18.0.2:5000")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var wg sync.WaitGroup
	accepted := make(chan net.Conn, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := srv.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	client, err := l.LAN1.DialContext(context.Background(), "tcp4", "198.18.0.2:5000")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	wg.Wait()
	server := <-accepted
	defer server.Close()

	must(t, l.Router, "ip", "link", "set", lab.RouterWANIf, "down")
	time.Sleep(time.Second)
	must(t, l.Router, "ip", "link", "set", lab.RouterWANIf, "up")
	// The default route went with the link; the network manager puts it
	// back.
	runIn(t, l.Router, 5*time.Second, "ip", "route", "replace", "default", "via", lab.WANAddr.String())
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := runIn(t, l.Router, 2*time.Second, "cat", "/sys/class/net/"+lab.RouterWANIf+"/carrier")
		if strings.TrimSpace(out) == "1" || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	t.Run("the router keeps running", func(t *testing.T) {
		time.Sleep(200 * time.Millisecond)
		if r.hasExited() {
			t.Fatalf("vpnmasq exited after the WAN link went down and up")
		}
	})
	t.Run("an existing UDP flow resumes with the WAN side speaking first", func(t *testing.T) {
		var err error
		for try := 0; try < 3; try++ {
			if err = fromWAN(fmt.Sprintf("after %d", try)); err == nil {
				return
			}
		}
		t.Fatalf("WAN side after the link came back: %v", err)
	})
	t.Run("an existing TCP connection resumes", func(t *testing.T) {
		server.SetDeadline(time.Now().Add(5 * time.Second))
		client.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := server.Write([]byte("server speaks")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 13)
		if _, err := io.ReadFull(client, b); err != nil || string(b) != "server speaks" {
			t.Fatalf("client read %q, %v", b, err)
		}
		if _, err := client.Write([]byte("client answers")); err != nil {
			t.Fatal(err)
		}
		b = make([]byte, 14)
		if _, err := io.ReadFull(server, b); err != nil || string(b) != "client answers" {
			t.Fatalf("server read %q, %v", b, err)
		}
	})
	t.Run("the state was kept", func(t *testing.T) {
		if m := mappingsOn(t, r, lab.RouterWANAddr); len(m) < 2 {
			t.Errorf("mappings after the link came back: %d, want the UDP and TCP ones", len(m))
		}
		if n := len(r.log.find("WAN address changed: mappings bound to the old address dropped, forwards kept")); n != 0 {
			t.Errorf("the address was changed %d times", n)
		}
	})
}

func TestWANAddrPinnedAndLANChangesAreOnlyLogged(t *testing.T) {
	l := newLab(t, lab.Options{})
	config := strings.Replace(labConfig, "interface = \"rtr-wan\"\n", "interface = \"rtr-wan\"\naddress = \"198.18.0.1\"\n", 1)
	r := startRouter(t, l, config)
	from := r.log.len()

	t.Run("a configured WAN address that disappears is logged loudly and kept", func(t *testing.T) {
		must(t, l.Router, "sysctl", "-qw", "net.ipv4.conf."+lab.RouterWANIf+".promote_secondaries=1")
		must(t, l.Router, "ip", "addr", "add", newWANAddr.String()+"/24", "dev", lab.RouterWANIf)
		must(t, l.Router, "ip", "addr", "del", lab.RouterWANAddr.String()+"/24", "dev", lab.RouterWANIf)
		line, ok := r.log.waitFor("the configured wan.address is no longer on the WAN interface; keeping it (remove wan.address from the configuration to follow the interface)", from, 2*time.Second, r.exited)
		if !ok {
			t.Fatal("no log line for the lost address")
		}
		if line.Level() != "error" || line.Str("wan_addr") != lab.RouterWANAddr.String() {
			t.Errorf("log line %s", line.Raw)
		}
		if n := len(r.log.find("WAN address changed: mappings bound to the old address dropped, forwards kept")); n != 0 {
			t.Errorf("the pinned address was changed")
		}
	})
	t.Run("a LAN prefix that changes is logged loudly, not applied", func(t *testing.T) {
		must(t, l.Router, "ip", "addr", "add", "192.168.78.1/24", "dev", lab.RouterLANIf)
		line, ok := r.log.waitFor("LAN interface prefixes changed; not applied (routing and capture still use the old ones): restart vpnmasq", from, 2*time.Second, r.exited)
		if !ok {
			t.Fatal("no log line for the LAN change")
		}
		if line.Level() != "error" || !strings.Contains(line.Str("change"), "192.168.78.1/24") {
			t.Errorf("log line %s", line.Raw)
		}
	})
	if r.hasExited() {
		t.Fatal("vpnmasq exited")
	}
}
