package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vpnmasq/vpnmasq/internal/lab"
)

func TestMasqueradeCarriesLANTrafficToTheWAN(t *testing.T) {
	l := newLab(t, lab.Options{})
	r := startRouter(t, l, labConfig)
	web, err := lab.ServeHTTP(l.WAN, "198.18.0.2:80", "wan")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { web.Close() })
	echo, err := lab.ServeUDPEcho(l.WAN, "198.18.0.2:7")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { echo.Close() })

	t.Run("lan1 downloads 100 MB over HTTP with a matching SHA-256, seen by the server as 198.18.0.1", func(t *testing.T) {
		const size = 100 << 20
		curlBlob(t, l.LAN1, fmt.Sprintf("http://198.18.0.2/blob?bytes=%d", size), size, 180*time.Second)
		peers := web.Peers()
		if len(peers) == 0 {
			t.Fatal("the WAN server saw no request")
		}
		for _, p := range peers {
			if p.Addr() != lab.RouterWANAddr {
				t.Errorf("the WAN server saw a request from %s, want %s (the masquerade address)", p, lab.RouterWANAddr)
			}
		}
	})

	t.Run("lan1 and lan2 download 20 MB each at the same time, both with a matching SHA-256", func(t *testing.T) {
		const size = 20 << 20
		var wg sync.WaitGroup
		msgs, errs := make([]string, 2), make([]error, 2)
		for i, ns := range []*lab.NS{l.LAN1, l.LAN2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				msgs[i], errs[i] = fetchBlob(ns, fmt.Sprintf("http://198.18.0.2/blob?bytes=%d", size), size, 120*time.Second)
			}()
		}
		wg.Wait()
		for i := range errs {
			if errs[i] != nil {
				t.Error(errs[i])
			} else {
				t.Log(msgs[i])
			}
		}
	})

	t.Run("lan1 and lan2 using the same UDP source port both get answers, via two distinct WAN ports", func(t *testing.T) {
		before := len(echo.Peers())
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, ns := range []*lab.NS{l.LAN1, l.LAN2} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				payload := []byte("echo request from " + ns.Name)
				_, errs[i] = lab.UDPRoundTrip(ns, "0.0.0.0:40000", "198.18.0.2:7", payload, 3, 2*time.Second)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("lan%d: %v", i+1, err)
			}
		}
		ports := map[uint16]bool{}
		for _, p := range echo.Peers()[before:] {
			if p.Addr() != lab.RouterWANAddr {
				t.Errorf("echo server saw source %s, want %s", p, lab.RouterWANAddr)
			}
			ports[p.Port()] = true
		}
		if len(ports) != 2 {
			t.Errorf("echo server saw source ports %v on %s, want exactly 2 distinct", keys(ports), lab.RouterWANAddr)
		}
	})

	t.Run("an ICMP port unreachable from the WAN host is translated back to lan1's socket", func(t *testing.T) {
		// Nothing listens on 198.18.0.2:5: the WAN host answers with ICMP
		// port unreachable about the masqueraded datagram, and the router
		// must rewrite the error and its embedded header so that lan1's
		// connected socket sees ECONNREFUSED.
		c, err := l.LAN1.DialFrom(context.Background(), nil, "udp4", "198.18.0.2:5")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte("anyone there?")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, err = c.Read(make([]byte, 100))
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("read on lan1's socket returned %v, want ECONNREFUSED from the translated ICMP error", err)
		}
	})

	t.Run("SIGUSR1 lists the live UDP mappings of lan1 and lan2", func(t *testing.T) {
		mappings, err := r.natMappings()
		if err != nil {
			t.Fatal(err)
		}
		for _, lan := range []string{"192.168.77.10:40000", "192.168.77.11:40000"} {
			found := false
			for _, m := range mappings {
				if m.Str("proto") == "udp" && m.Str("lan") == lan && m.Str("remote") == "198.18.0.2:7" &&
					strings.HasPrefix(m.Str("wan"), "198.18.0.1:") && m.Str("idle") != "" {
					found = true
				}
			}
			if !found {
				var got []string
				for _, m := range mappings {
					got = append(got, m.Raw)
				}
				t.Errorf("no udp mapping for %s to 198.18.0.2:7 in the dump:\n%s", lan, strings.Join(got, "\n"))
			}
		}
	})

	for _, ns := range []*lab.NS{l.LAN1, l.LAN2} {
		role := ns.Name[strings.LastIndex(ns.Name, "-")+1:]
		t.Run(role+" pings the WAN host and gets every answer", func(t *testing.T) {
			out, code := runIn(t, ns, 15*time.Second, "ping", "-n", "-c", "3", "-i", "0.2", "-W", "2", "198.18.0.2")
			if code != 0 || !strings.Contains(out, " 0% packet loss") {
				t.Errorf("ping exit %d, want 0 and no loss:\n%s", code, out)
			}
		})
	}

	t.Run("ping with TTL 1 is answered with Time to live exceeded from 192.168.77.1", func(t *testing.T) {
		out, _ := runIn(t, l.LAN1, 15*time.Second, "ping", "-n", "-c", "1", "-t", "1", "-W", "2", "198.18.0.2")
		if !regexp.MustCompile(`From 192\.168\.77\.1[ :].*Time to live exceeded`).MatchString(out) {
			t.Errorf("ping -t 1 output lacks \"From 192.168.77.1 ... Time to live exceeded\":\n%s", out)
		}
	})
}

func TestPathMTUOfASmallerWANLinkIsReportedAndRespected(t *testing.T) {
	l := newLab(t, lab.Options{WANMTU: 1280})
	startRouter(t, l, labConfig)
	web, err := lab.ServeHTTP(l.WAN, "198.18.0.2:80", "wan")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { web.Close() })

	t.Run("ping with DF and 1400 bytes learns mtu 1280", func(t *testing.T) {
		out, _ := runIn(t, l.LAN1, 15*time.Second, "ping", "-n", "-M", "do", "-s", "1400", "-c", "2", "-i", "0.5", "-W", "2", "198.18.0.2")
		// iputils prints "Frag needed and DF set (mtu = 1280)" for the ICMP
		// error and "message too long, mtu=1280" once the route has learnt it.
		if !strings.Contains(out, "mtu = 1280") && !strings.Contains(out, "mtu=1280") {
			t.Errorf("ping output names no mtu 1280:\n%s", out)
		}
	})
	t.Run("a 1400-byte UDP datagram from lan2 without DF is fragmented by the router and its fragmented echo comes back whole", func(t *testing.T) {
		echo, err := lab.ServeUDPEcho(l.WAN, "198.18.0.2:7")
		if err != nil {
			t.Fatal(err)
		}
		defer echo.Close()
		var conn net.PacketConn
		// From lan2: lan1 has learnt the 1280-byte path MTU from the ping
		// above and would fragment the datagram itself.
		err = l.LAN2.Do(func() (err error) {
			lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				if err := rc.Control(func(fd uintptr) {
					// Clear DF: the datagram must be fragmented on the way.
					serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_DONT)
				}); err != nil {
					return err
				}
				return serr
			}}
			conn, err = lc.ListenPacket(context.Background(), "udp4", "0.0.0.0:0")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		lanCap := startCapture(t, l.LAN2, lab.HostIf, "ip and dst host 198.18.0.2")
		wanCap := startCapture(t, l.WAN, lab.HostIf, "udp or (ip[6:2] & 0x1fff != 0)")
		payload := bytes.Repeat([]byte("fragment me "), 1400/12+1)[:1400]
		if _, err := conn.WriteTo(payload, &net.UDPAddr{IP: net.IPv4(198, 18, 0, 2), Port: 7}); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		buf := make([]byte, 2000)
		n, _, err := conn.ReadFrom(buf)
		if err != nil || !bytes.Equal(buf[:n], payload) {
			t.Errorf("echo of the 1400-byte datagram: got %d bytes, %v", n, err)
		}
		// The datagram left lan2 whole (1428 bytes with headers): the
		// fragments on the WAN link are the router's.
		if sent := strings.Join(lanCap.stop(), "\n"); !strings.Contains(sent, "length 1428") {
			t.Errorf("lan2 did not send the datagram in one piece:\n%s", sent)
		}
		pkts := strings.Join(wanCap.stop(), "\n")
		if !strings.Contains(pkts, "198.18.0.1") || !strings.Contains(pkts, "flags [+]") {
			t.Errorf("no fragments from 198.18.0.1 seen on the WAN link:\n%s", pkts)
		}
	})
	t.Run("HTTP download of 8 MB completes with a matching SHA-256", func(t *testing.T) {
		const size = 8 << 20
		curlBlob(t, l.LAN1, fmt.Sprintf("http://198.18.0.2/blob?bytes=%d", size), size, 60*time.Second)
	})
}

func TestUnsolicitedWANTrafficReachesNoLANHost(t *testing.T) {
	l := newLab(t, lab.Options{})
	startRouter(t, l, labConfig)

	// Every unicast IPv4 packet reaching a LAN host's interface during a
	// probe is a leak: the LAN hosts themselves are idle. (Multicast and
	// broadcast are the hosts' own chatter, e.g. IGMP reports.)
	lanCaptures := func(t *testing.T) func() {
		const filter = "ip and not ip multicast and not ip broadcast"
		c1 := startCapture(t, l.LAN1, lab.HostIf, filter)
		c2 := startCapture(t, l.LAN2, lab.HostIf, filter)
		return func() {
			for i, c := range []*capture{c1, c2} {
				if pkts := c.stop(); len(pkts) > 0 {
					t.Errorf("lan%d received %d packets:\n%s", i+1, len(pkts), strings.Join(pkts, "\n"))
				}
			}
		}
	}

	t.Run("TCP SYN and UDP to ports in the NAT range get no answer at all and reach no LAN host", func(t *testing.T) {
		checkLAN := lanCaptures(t)
		wanCap := startCapture(t, l.WAN, lab.HostIf, "src host 198.18.0.1 and (tcp[tcpflags] & tcp-rst != 0 or icmp)")
		for _, err := range probeAll(l.WAN, []int{20000, 25000, 32767}) {
			t.Error(err)
		}
		if pkts := wanCap.stop(); len(pkts) > 0 {
			t.Errorf("the WAN host got RST/ICMP answers to probes of the NAT range:\n%s", strings.Join(pkts, "\n"))
		}
		checkLAN()
	})

	t.Run("TCP SYN and UDP to ports outside the NAT range reach no LAN host", func(t *testing.T) {
		checkLAN := lanCaptures(t)
		// The host's own stack answers these (RST, port unreachable) as it
		// would without vpnmasq: the host's own traffic outside the NAT
		// range keeps working. Every probe getting its answer is also the
		// proof that the probes of the NAT range above really went out.
		ports := []int{22, 5555, 40000}
		if answered := probeAll(l.WAN, ports); len(answered) != 2*len(ports) {
			t.Errorf("the host answered %d of %d probes outside the NAT range, want all: %v", len(answered), 2*len(ports), answered)
		}
		checkLAN()
	})

	t.Run("packets from the WAN addressed straight to lan1 are not delivered", func(t *testing.T) {
		if err := l.WAN.AddRoute(lab.LANPrefix, lab.RouterWANAddr); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := l.WAN.DelRoute(lab.LANPrefix); err != nil {
				t.Error(err)
			}
		})
		listener, err := l.LAN1.Listen("tcp4", "0.0.0.0:80")
		if err != nil {
			t.Fatal(err)
		}
		defer listener.Close()
		accepted := make(chan net.Addr, 1)
		go func() {
			if c, err := listener.Accept(); err == nil {
				accepted <- c.RemoteAddr()
				c.Close()
			}
		}()
		checkLAN := lanCaptures(t)
		dialCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := l.WAN.DialContext(dialCtx, "tcp4", "192.168.77.10:80")
		cancel()
		if err == nil {
			c.Close()
			t.Error("a TCP connection from the WAN to 192.168.77.10:80 was established")
		}
		_, _ = lab.UDPRoundTrip(l.WAN, "", "192.168.77.10:9", []byte("unsolicited"), 1, time.Second)
		if res, err := lab.Ping(l.WAN, lab.LAN1Addr, 2, 500*time.Millisecond); err == nil && res.Received > 0 {
			t.Errorf("lan1 answered %d pings from the WAN", res.Received)
		}
		checkLAN()
		select {
		case a := <-accepted:
			t.Errorf("lan1's server accepted a connection from %s", a)
		default:
		}
	})
}

// probeAll sends a TCP SYN and a UDP datagram to each port of 198.18.0.1
// from ns, all at once, and returns one error per probe that got an answer.
func probeAll(ns *lab.NS, ports []int) []error {
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for _, port := range ports {
		addr := fmt.Sprintf("198.18.0.1:%d", port)
		for _, probe := range []func(*lab.NS, string) error{probeTCP, probeUDP} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := probe(ns, addr); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	return errs
}

// probeTCP sends SYNs to addr from ns and fails if anything answers: a
// connection or a refusal (RST) both mean the probe got a reply.
func probeTCP(ns *lab.NS, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	c, err := ns.DialContext(ctx, "tcp4", addr)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("TCP connection to %s was accepted", addr)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("TCP SYN to %s was answered with RST", addr)
	case errors.Is(err, context.DeadlineExceeded), isTimeout(err):
		return nil
	default:
		return fmt.Errorf("TCP probe of %s: unexpected %v", addr, err)
	}
}

// probeUDP sends a datagram to addr from ns and fails if anything answers:
// data, or an ICMP port unreachable (reported as ECONNREFUSED on the
// connected socket).
func probeUDP(ns *lab.NS, addr string) error {
	c, err := ns.DialFrom(context.Background(), nil, "udp4", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("probe")); err != nil {
		return fmt.Errorf("UDP probe of %s: %v", addr, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	switch {
	case err == nil:
		return fmt.Errorf("UDP probe of %s was answered with %q", addr, buf[:n])
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("UDP probe of %s was answered with ICMP port unreachable", addr)
	case isTimeout(err):
		return nil
	default:
		return fmt.Errorf("UDP probe of %s: unexpected %v", addr, err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func TestPortForwardReachesTheLANServer(t *testing.T) {
	l := newLab(t, lab.Options{})
	startRouter(t, l, labConfig)
	web, err := lab.ServeHTTP(l.LAN1, "0.0.0.0:80", "lan1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { web.Close() })

	tests := []struct {
		name     string
		from     *lab.NS
		wantPeer netip.Addr
	}{
		{"GET 198.18.0.1:8080 from the WAN reaches lan1:80, which sees the real client 198.18.0.2", l.WAN, lab.WANAddr},
		{"hairpin: GET 198.18.0.1:8080 from lan2 reaches lan1:80, which sees 198.18.0.1", l.LAN2, lab.RouterWANAddr},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runIn(t, tc.from, 20*time.Second, "curl", "--silent", "--show-error", "--fail", "--connect-timeout", "5", "--max-time", "10", "http://198.18.0.1:8080/peer")
			if code != 0 {
				t.Fatalf("curl exit %d: %s", code, out)
			}
			peer, err := netip.ParseAddrPort(strings.TrimSpace(out))
			if err != nil {
				t.Fatalf("lan1's server answered %q, want its client's address: %v", out, err)
			}
			if peer.Addr() != tc.wantPeer {
				t.Errorf("lan1's server saw the client as %s, want %s", peer, tc.wantPeer)
			}
		})
	}
}

func TestNoNATDestinationSeesTheLANSourceAddress(t *testing.T) {
	l := newLab(t, lab.Options{})
	startRouter(t, l, labConfig)
	// The no-NAT site routes the LAN back through the router, as a site
	// reached over a VPN would.
	if err := l.WAN.AddRoute(lab.LANPrefix, lab.RouterWANAddr); err != nil {
		t.Fatal(err)
	}
	web, err := lab.ServeHTTP(l.WAN, "10.20.0.1:80", "no-nat site")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { web.Close() })

	out, code := runIn(t, l.LAN1, 20*time.Second, "curl", "--silent", "--show-error", "--fail", "--connect-timeout", "5", "--max-time", "10", "http://10.20.0.1/peer")
	if code != 0 {
		t.Fatalf("curl from lan1 to 10.20.0.1 exit %d (the reply did not come back?): %s", code, out)
	}
	peer, err := netip.ParseAddrPort(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("server answered %q: %v", out, err)
	}
	if peer.Addr() != lab.LAN1Addr {
		t.Errorf("the no-NAT server saw %s, want lan1's own address %s", peer, lab.LAN1Addr)
	}
}

func keys[K comparable, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
