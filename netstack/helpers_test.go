package netstack

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/rs/zerolog"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// The test topology: the service address in TEST-NET-1, LAN hosts in the
// lab's LAN prefix.
var (
	serviceAddr = netip.MustParseAddr("192.0.2.53")
	lanHost     = netip.MustParseAddr("192.168.77.10")
	otherHost   = netip.MustParseAddr("192.168.77.20")
)

// waitFor bounds every wait for a packet or an answer.
const waitFor = 5 * time.Second

func taddr(a netip.Addr) tcpip.Address { return tcpip.AddrFrom4(a.As4()) }

// capture collects what the stack passes to Output.
type capture struct {
	ch      chan []byte
	mu      sync.Mutex
	dropped int
}

func newCapture() *capture { return &capture{ch: make(chan []byte, 4096)} }

func (c *capture) output(pkt []byte) {
	b := append([]byte(nil), pkt...) // pkt is only valid during the call
	select {
	case c.ch <- b:
	default:
		// Never block the stack's goroutine: Close waits for it.
		c.mu.Lock()
		c.dropped++
		c.mu.Unlock()
	}
}

// next returns the next packet the stack sent, failing the test after
// waitFor.
func (c *capture) next(t *testing.T) []byte {
	t.Helper()
	select {
	case p := <-c.ch:
		return p
	case <-time.After(waitFor):
		t.Fatal("no packet from the stack")
		return nil
	}
}

// none fails the test if the stack sends anything within d.
func (c *capture) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case p := <-c.ch:
		t.Fatalf("unexpected packet from the stack: %s", describe(p))
	case <-time.After(d):
	}
}

func describe(p []byte) string {
	ip := header.IPv4(p)
	if !ip.IsValid(len(p)) {
		return fmt.Sprintf("%d invalid bytes", len(p))
	}
	return fmt.Sprintf("%v → %v proto %d, %d bytes", ip.SourceAddress(), ip.DestinationAddress(), ip.Protocol(), len(p))
}

// newTestStack starts a stack on serviceAddr whose output goes to the
// returned capture; it is closed when the test ends.
func newTestStack(t testing.TB, cfg Config) (*Stack, *capture) {
	t.Helper()
	c := newCapture()
	cfg.Address = serviceAddr
	cfg.Output = c.output
	cfg.Log = zerolog.Nop()
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, c
}

// buildIPv4 puts an IPv4 header with a correct checksum in front of payload.
func buildIPv4(src, dst netip.Addr, proto tcpip.TransportProtocolNumber, payload []byte) []byte {
	return testpacket.IPv4(testpacket.IPv4Header{Src: src, Dst: dst, Proto: uint8(proto), ID: 0x4242}, payload)
}

func echoRequest(src, dst netip.Addr, ident, seq uint16, payload string) []byte {
	rest := [4]byte{byte(ident >> 8), byte(ident), byte(seq >> 8), byte(seq)}
	return buildIPv4(src, dst, header.ICMPv4ProtocolNumber, testpacket.ICMP(header.ICMPv4Echo, 0, rest, []byte(payload)))
}

func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	return buildIPv4(src.Addr(), dst.Addr(), header.UDPProtocolNumber, testpacket.UDP(src, dst, payload))
}

// checkIPv4 fails the test unless p is a valid IPv4 packet with correct
// header and transport checksums.
func checkIPv4(t *testing.T, p []byte) header.IPv4 {
	t.Helper()
	ip := header.IPv4(p)
	if !ip.IsValid(len(p)) || !ip.IsChecksumValid() {
		t.Fatalf("stack sent an invalid IPv4 packet: %x", p)
	}
	payload := ip.Payload()
	switch ip.TransportProtocol() {
	case header.ICMPv4ProtocolNumber:
		if checksum.Checksum(payload, 0) != 0xffff {
			t.Fatalf("ICMP checksum wrong in %s", describe(p))
		}
	case header.UDPProtocolNumber, header.TCPProtocolNumber:
		xsum := header.PseudoHeaderChecksum(ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress(), uint16(len(payload)))
		if checksum.Checksum(payload, xsum) != 0xffff {
			t.Fatalf("transport checksum wrong in %s", describe(p))
		}
	}
	return ip
}

// upstream is a fake DNS server on 127.0.0.1 (UDP and TCP on one port)
// whose answers come from respond; it counts the queries it gets.
type upstream struct {
	addr    netip.AddrPort
	respond func(q *dns.Msg, network string) *dns.Msg

	mu      sync.Mutex
	queries map[string]int // by network
	ports   []uint16       // the forwarder's source port of each query
}

// sourcePorts returns the source ports the queries came from, in order.
func (u *upstream) sourcePorts() []uint16 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.ports)
}

func (u *upstream) count(network string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.queries[network]
}

func (u *upstream) total() int { return u.count("udp") + u.count("tcp") }

func startUpstream(t testing.TB, respond func(q *dns.Msg, network string) *dns.Msg) *upstream {
	t.Helper()
	u := &upstream{respond: respond, queries: map[string]int{}}
	var pc net.PacketConn
	var l net.Listener
	// The TCP port must be free too; a few tries make a collision harmless.
	for try := 0; ; try++ {
		var err error
		pc, err = net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen UDP: %v", err)
		}
		l, err = net.Listen("tcp4", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
		if try == 5 {
			t.Fatalf("listen TCP: %v", err)
		}
	}
	u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	handler := func(network string) dns.HandlerFunc {
		return func(w dns.ResponseWriter, q *dns.Msg) {
			u.mu.Lock()
			u.queries[network]++
			if ap, err := netip.ParseAddrPort(w.RemoteAddr().String()); err == nil {
				u.ports = append(u.ports, ap.Port())
			}
			u.mu.Unlock()
			r := u.respond(q, network)
			if r == nil {
				return // silence: the forwarder's timeout applies
			}
			r.Id = q.Id
			if network == "udp" {
				// Like a real server: fit the client's buffer, set TC if cut.
				size := dns.MinMsgSize
				if opt := q.IsEdns0(); opt != nil {
					size = int(opt.UDPSize())
				}
				r.Truncate(size)
			}
			_ = w.WriteMsg(r)
		}
	}
	servers := []*dns.Server{
		{PacketConn: pc, Handler: handler("udp")},
		{Listener: l, Handler: handler("tcp")},
	}
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { _ = srv.ActivateAndServe() }()
		select {
		case <-started:
		case <-time.After(waitFor):
			t.Fatal("fake upstream did not start")
		}
	}
	t.Cleanup(func() {
		for _, srv := range servers {
			_ = srv.Shutdown()
		}
	})
	return u
}

// deadUpstream is a loopback port nobody listens on: queries to it are
// refused at once.
func deadUpstream(t testing.TB) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen UDP: %v", err)
	}
	a := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	return a
}

// answerA answers every A query with addr and the given TTL.
func answerA(addr string, ttl uint32) func(q *dns.Msg, network string) *dns.Msg {
	return func(q *dns.Msg, _ string) *dns.Msg {
		r := new(dns.Msg)
		r.SetReply(q)
		r.RecursionAvailable = true
		if q.Question[0].Qtype == dns.TypeA {
			r.Answer = append(r.Answer, mustRR(fmt.Sprintf("%s %d IN A %s", q.Question[0].Name, ttl, addr)))
		}
		return r
	}
}

// negative answers with rcode and a SOA with the given TTL and minimum.
func negative(rcode int, soaTTL, minimum uint32) func(q *dns.Msg, network string) *dns.Msg {
	return func(q *dns.Msg, _ string) *dns.Msg {
		r := new(dns.Msg)
		r.SetRcode(q, rcode)
		r.Ns = append(r.Ns, mustRR(fmt.Sprintf("example. %d IN SOA ns.example. admin.example. 1 7200 3600 1209600 %d", soaTTL, minimum)))
		return r
	}
}

func mustRR(s string) dns.RR {
	rr, err := dns.NewRR(s)
	if err != nil {
		panic(err)
	}
	return rr
}

// fakeClock is a settable clock for the DNS cache.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// query packs a DNS query for name/qtype with the given ID.
func query(t testing.TB, id uint16, name string, qtype uint16, edns bool) []byte {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = id
	if edns {
		m.SetEdns0(4096, false)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("pack query: %v", err)
	}
	return b
}

// exchangeUDP delivers a DNS query from the LAN host's port and returns the
// parsed reply packet, checking that it is a UDP datagram from the
// service's port 53 back to that port.
func exchangeUDP(t *testing.T, s *Stack, c *capture, srcPort uint16, msg []byte) *dns.Msg {
	t.Helper()
	client := netip.AddrPortFrom(lanHost, srcPort)
	s.Deliver(udpPacket(client, netip.AddrPortFrom(serviceAddr, 53), msg))
	p := c.next(t)
	ip := checkIPv4(t, p)
	if ip.TransportProtocol() != header.UDPProtocolNumber {
		t.Fatalf("reply is not UDP: %s", describe(p))
	}
	u := header.UDP(ip.Payload())
	if got := netip.AddrFrom4(ip.SourceAddress().As4()); got != serviceAddr || u.SourcePort() != 53 {
		t.Fatalf("reply from %v:%d, want %v:53", got, u.SourcePort(), serviceAddr)
	}
	if got := netip.AddrFrom4(ip.DestinationAddress().As4()); got != lanHost || u.DestinationPort() != srcPort {
		t.Fatalf("reply to %v:%d, want %v", got, u.DestinationPort(), client)
	}
	r := new(dns.Msg)
	if err := r.Unpack(u.Payload()); err != nil {
		t.Fatalf("reply does not parse: %v", err)
	}
	return r
}

func tcpSYN(src, dst netip.AddrPort) []byte {
	return buildIPv4(src.Addr(), dst.Addr(), header.TCPProtocolNumber,
		testpacket.TCP(testpacket.TCPHeader{Src: src, Dst: dst, Seq: 0x01020304, Flags: header.TCPFlagSyn, Window: 65000}, nil))
}

// eventually polls cond until it holds or waitFor passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
