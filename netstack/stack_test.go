package netstack

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

func TestNewRejectsBadConfig(t *testing.T) {
	out := func([]byte) {}
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"an IPv6 service address is refused", Config{Address: netip.MustParseAddr("2001:db8::53"), Output: out}, "not IPv4"},
		{"a missing service address is refused", Config{Output: out}, "not IPv4"},
		{"a loopback service address is refused", Config{Address: netip.MustParseAddr("127.0.0.53"), Output: out}, "not a unicast"},
		{"a multicast service address is refused", Config{Address: netip.MustParseAddr("224.0.0.53"), Output: out}, "not a unicast"},
		{"the broadcast address is refused", Config{Address: netip.MustParseAddr("255.255.255.255"), Output: out}, "not a unicast"},
		{"a missing Output is refused", Config{Address: serviceAddr}, "Output is nil"},
		{"an MTU below the IPv4 minimum is refused", Config{Address: serviceAddr, Output: out, MTU: 100}, "MTU 100"},
		{"an MTU above 65535 is refused", Config{Address: serviceAddr, Output: out, MTU: 70000}, "MTU 70000"},
		{"a negative DNS cache size is refused", Config{Address: serviceAddr, Output: out, DNSCacheSize: -1}, "cache size"},
		{"a negative DNS timeout is refused", Config{Address: serviceAddr, Output: out, DNSTimeout: -time.Second}, "timeout"},
		{"a DNS upstream without a port is refused", Config{Address: serviceAddr, Output: out,
			DNSUpstreams: []netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), 0)}}, "upstream"},
		{"an invalid DNS upstream is refused", Config{Address: serviceAddr, Output: out,
			DNSUpstreams: []netip.AddrPort{{}}}, "upstream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Log = zerolog.Nop()
			s, err := New(tt.cfg)
			if err == nil {
				s.Close()
				t.Fatalf("New accepted %+v", tt.cfg)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

func TestICMPEcho(t *testing.T) {
	s, c := newTestStack(t, Config{})

	t.Run("an echo request to the service address gets an echo reply from it to the sender", func(t *testing.T) {
		s.Deliver(echoRequest(lanHost, serviceAddr, 0x77, 3, "hello netstack"))
		p := c.next(t)
		ip := checkIPv4(t, p)
		if src, dst := netip.AddrFrom4(ip.SourceAddress().As4()), netip.AddrFrom4(ip.DestinationAddress().As4()); src != serviceAddr || dst != lanHost {
			t.Fatalf("reply %v → %v, want %v → %v", src, dst, serviceAddr, lanHost)
		}
		if ip.TransportProtocol() != header.ICMPv4ProtocolNumber {
			t.Fatalf("reply is not ICMP: %s", describe(p))
		}
		icmp := header.ICMPv4(ip.Payload())
		if icmp.Type() != header.ICMPv4EchoReply || icmp.Ident() != 0x77 || icmp.Sequence() != 3 {
			t.Fatalf("reply type %d ident %#x seq %d, want echo reply 0x77/3", icmp.Type(), icmp.Ident(), icmp.Sequence())
		}
		if got := string(icmp.Payload()); got != "hello netstack" {
			t.Fatalf("reply payload %q, want the request's", got)
		}
	})

	t.Run("echo requests from two LAN hosts are answered to each", func(t *testing.T) {
		for _, host := range []netip.Addr{lanHost, otherHost} {
			s.Deliver(echoRequest(host, serviceAddr, 1, 1, "x"))
			ip := checkIPv4(t, c.next(t))
			if dst := netip.AddrFrom4(ip.DestinationAddress().As4()); dst != host {
				t.Fatalf("reply to %v, want %v", dst, host)
			}
		}
	})

	notForUs := []struct {
		name string
		dst  netip.Addr
	}{
		{"another LAN host", otherHost},
		{"an Internet address", netip.MustParseAddr("198.18.0.1")},
		{"the limited broadcast address", broadcast},
		{"a multicast group", netip.MustParseAddr("224.0.0.1")},
	}
	for _, tt := range notForUs {
		t.Run("an echo request to "+tt.name+" is refused by Deliver and gets no reply", func(t *testing.T) {
			before := s.Stats()
			s.Deliver(echoRequest(lanHost, tt.dst, 2, 2, "spoof me"))
			c.none(t, 200*time.Millisecond)
			after := s.Stats()
			if after.Misaddressed != before.Misaddressed+1 || after.Dropped != before.Dropped+1 {
				t.Fatalf("misaddressed %d→%d, dropped %d→%d: want both counted once", before.Misaddressed, after.Misaddressed, before.Dropped, after.Dropped)
			}
		})
	}
}

// Deliver's check is a first line; the stack itself must not answer for
// others either (no promiscuous mode, no spoofing), or a LAN host could
// make it impersonate any address.
func TestStackAnswersOnlyForItsAddress(t *testing.T) {
	s, c := newTestStack(t, Config{DNSUpstreams: []netip.AddrPort{deadUpstream(t)}})
	l, err := s.ListenTCP(80)
	if err != nil {
		t.Fatalf("ListenTCP: %v", err)
	}
	defer l.Close()
	client := netip.AddrPortFrom(lanHost, 40000)
	for _, dst := range []netip.Addr{otherHost, netip.MustParseAddr("198.18.0.1")} {
		tests := []struct {
			name string
			pkt  []byte
		}{
			{"an echo request", echoRequest(lanHost, dst, 2, 2, "spoof me")},
			{"a TCP SYN to port 80", tcpSYN(client, netip.AddrPortFrom(dst, 80))},
			{"a TCP SYN to a closed port", tcpSYN(client, netip.AddrPortFrom(dst, 81))},
			{"a UDP datagram to port 53", udpPacket(client, netip.AddrPortFrom(dst, 53), []byte("not DNS"))},
			{"a UDP datagram to a closed port", udpPacket(client, netip.AddrPortFrom(dst, 9), []byte("x"))},
		}
		for _, tt := range tests {
			t.Run(tt.name+" to "+dst.String()+" gets nothing back", func(t *testing.T) {
				s.inject(tt.pkt)
				c.none(t, 100*time.Millisecond)
			})
		}
	}
	t.Run("the same SYN to the service address is answered (the test can see answers)", func(t *testing.T) {
		s.inject(tcpSYN(client, netip.AddrPortFrom(serviceAddr, 80)))
		tcp := header.TCP(checkIPv4(t, c.next(t)).Payload())
		if tcp.Flags() != header.TCPFlagSyn|header.TCPFlagAck {
			t.Fatalf("answer flags %v, want SYN|ACK", tcp.Flags())
		}
	})
}

func TestDeliverDropsMalformedPackets(t *testing.T) {
	s, c := newTestStack(t, Config{})
	good := echoRequest(lanHost, serviceAddr, 9, 9, "payload")
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	tests := []struct {
		name         string
		pkt          []byte
		misaddressed bool
	}{
		{"an empty packet", nil, false},
		{"a packet shorter than an IPv4 header", good[:19], false},
		{"an IPv6 packet", mutate(func(b []byte) []byte { b[0] = 0x60; return b }), false},
		{"a header length below 20 bytes", mutate(func(b []byte) []byte { b[0] = 0x44; return b }), false},
		{"a total length beyond the packet", mutate(func(b []byte) []byte { header.IPv4(b).SetTotalLength(uint16(len(b) + 1)); return b }), false},
		{"a wrong header checksum", mutate(func(b []byte) []byte { b[10] ^= 0xff; return b }), false},
		{"a source that is the service address", echoRequest(serviceAddr, serviceAddr, 1, 1, "loop"), true},
		{"a multicast source", echoRequest(netip.MustParseAddr("224.0.0.5"), serviceAddr, 1, 1, "x"), true},
		{"the unspecified source", echoRequest(netip.IPv4Unspecified(), serviceAddr, 1, 1, "x"), true},
		{"the broadcast source", echoRequest(broadcast, serviceAddr, 1, 1, "x"), true},
		{"a loopback source", echoRequest(netip.MustParseAddr("127.0.0.1"), serviceAddr, 1, 1, "x"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name+" is dropped, counted and not answered", func(t *testing.T) {
			before := s.Stats()
			s.Deliver(tt.pkt)
			c.none(t, 100*time.Millisecond)
			after := s.Stats()
			if after.Dropped != before.Dropped+1 {
				t.Fatalf("dropped %d→%d, want one more", before.Dropped, after.Dropped)
			}
			if tt.misaddressed && after.Misaddressed != before.Misaddressed+1 {
				t.Fatalf("misaddressed %d→%d, want one more", before.Misaddressed, after.Misaddressed)
			}
			if !tt.misaddressed && after.Malformed != before.Malformed+1 {
				t.Fatalf("malformed %d→%d, want one more", before.Malformed, after.Malformed)
			}
			if after.PacketsIn != before.PacketsIn {
				t.Fatalf("packets in %d→%d: a dropped packet was counted as delivered", before.PacketsIn, after.PacketsIn)
			}
		})
	}

	t.Run("a packet with link padding after the datagram is answered", func(t *testing.T) {
		s.Deliver(append(append([]byte(nil), good...), 0, 0, 0, 0))
		icmp := header.ICMPv4(checkIPv4(t, c.next(t)).Payload())
		if string(icmp.Payload()) != "payload" {
			t.Fatalf("reply payload %q, want the request's without padding", icmp.Payload())
		}
	})

	t.Run("Deliver copies the packet: the caller may reuse its buffer at once", func(t *testing.T) {
		buf := append([]byte(nil), good...)
		s.Deliver(buf)
		for i := range buf {
			buf[i] = 0
		}
		icmp := header.ICMPv4(checkIPv4(t, c.next(t)).Payload())
		if !bytes.Equal(icmp.Payload(), []byte("payload")) {
			t.Fatalf("reply payload %q, want the request's", icmp.Payload())
		}
	})
}

func TestDeliverNeverBlocks(t *testing.T) {
	s, _ := newTestStack(t, Config{})
	// Stopping the stack's goroutines (without closing it) makes it fall
	// behind for good: the queue fills and must overflow, not block.
	s.cancel()
	s.loops.Wait()
	pkt := echoRequest(lanHost, serviceAddr, 1, 1, "x")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range inQueueLen + 100 {
			s.Deliver(pkt)
		}
	}()
	select {
	case <-done:
	case <-time.After(waitFor):
		t.Fatal("Deliver blocked on a full queue")
	}
	st := s.Stats()
	if st.PacketsIn != inQueueLen || st.QueueFull != 100 || st.Dropped != 100 {
		t.Fatalf("in %d, queue full %d, dropped %d; want %d, 100, 100", st.PacketsIn, st.QueueFull, st.Dropped, inQueueLen)
	}
}

func TestClose(t *testing.T) {
	s, c := newTestStack(t, Config{})
	l, err := s.ListenTCP(8080)
	if err != nil {
		t.Fatalf("ListenTCP: %v", err)
	}
	accepted := make(chan error, 1)
	go func() {
		conn, err := l.Accept()
		if conn != nil {
			conn.Close()
		}
		accepted <- err
	}()
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	t.Run("a blocked Accept returns net.ErrClosed", func(t *testing.T) {
		select {
		case err := <-accepted:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Accept error %v, want net.ErrClosed", err)
			}
		case <-time.After(waitFor):
			t.Fatal("Accept still blocked after Close")
		}
	})
	t.Run("packets after Close are dropped, counted and not answered", func(t *testing.T) {
		before := s.Stats().Dropped
		s.Deliver(echoRequest(lanHost, serviceAddr, 1, 1, "late"))
		c.none(t, 100*time.Millisecond)
		if got := s.Stats().Dropped; got != before+1 {
			t.Fatalf("dropped %d→%d, want one more", before, got)
		}
	})
	t.Run("ListenTCP after Close fails", func(t *testing.T) {
		if l, err := s.ListenTCP(8081); err == nil {
			l.Close()
			t.Fatal("ListenTCP succeeded after Close")
		}
	})
	t.Run("a second Close is harmless", func(t *testing.T) {
		if err := s.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
	})
}

func TestListenTCP(t *testing.T) {
	s, _ := newTestStack(t, Config{})
	t.Run("port 0 is refused", func(t *testing.T) {
		if l, err := s.ListenTCP(0); err == nil {
			l.Close()
			t.Fatal("ListenTCP(0) succeeded")
		}
	})
	t.Run("a port in use is refused until its listener is closed", func(t *testing.T) {
		l, err := s.ListenTCP(80)
		if err != nil {
			t.Fatalf("ListenTCP(80): %v", err)
		}
		if got := l.Addr().String(); got != "192.0.2.53:80" {
			t.Fatalf("listener address %s, want 192.0.2.53:80", got)
		}
		if l2, err := s.ListenTCP(80); err == nil {
			l2.Close()
			t.Fatal("second ListenTCP(80) succeeded")
		}
		l.Close()
		l3, err := s.ListenTCP(80)
		if err != nil {
			t.Fatalf("ListenTCP(80) after closing the first listener: %v", err)
		}
		l3.Close()
	})
}

func TestOutputBehind(t *testing.T) {
	release := make(chan struct{})
	var out atomic.Int64
	s, err := New(Config{
		Address: serviceAddr,
		Log:     zerolog.Nop(),
		Output: func([]byte) {
			out.Add(1)
			<-release // a router that cannot write to the TUN for now
		},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer s.Close()
	defer close(release) // before Close: Close waits for Output to return
	l, err := s.ListenTCP(80)
	if err != nil {
		t.Fatalf("ListenTCP: %v", err)
	}
	defer l.Close()

	// Each SYN from another port is answered with a SYN-ACK (not rate
	// limited like ICMP), so the replies outnumber the Output queue.
	const n = outQueueLen + 100
	deadline := time.Now().Add(waitFor)
	for i := range n {
		// Pace the SYNs so that none is lost at the input queue: the
		// replies are what must overflow.
		for len(s.in) > inQueueLen/2 {
			if time.Now().After(deadline) {
				t.Fatal("the stack stopped taking packets while Output was behind")
			}
			time.Sleep(time.Millisecond)
		}
		s.Deliver(tcpSYN(netip.AddrPortFrom(lanHost, uint16(10000+i)), netip.AddrPortFrom(serviceAddr, 80)))
	}
	// 1 packet in the blocked Output call, outQueueLen queued, the rest
	// dropped and counted.
	const wantDropped = n - 1 - outQueueLen
	for s.Stats().OutputDropped < wantDropped {
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v: want %d replies dropped at the full Output queue", s.Stats(), wantDropped)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := s.Stats(); st.PacketsIn != n || st.QueueFull != 0 {
		t.Fatalf("stats %+v: want %d in and none lost at the input", st, n)
	}
	if got := out.Load(); got != 1 {
		t.Fatalf("Output called %d times while the first call blocked, want 1 (one goroutine)", got)
	}
}
