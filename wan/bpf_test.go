package wan

import (
	"net/netip"
	"testing"

	"golang.org/x/net/bpf"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/vpnmasq/vpnmasq/config"
	"github.com/vpnmasq/vpnmasq/internal/testpacket"
)

// craftIPv4 builds the packet, starting at the IPv4 header. A non-first
// fragment carries payload bytes where the transport header would be; they
// are made to look like an out-of-range port, so that only the fragment rule
// can accept it.
func craftIPv4(t testing.TB, p testpacket.Spec) []byte {
	t.Helper()
	pkt := testpacket.Build(p)
	if p.FragOff != 0 {
		hdrLen := header.IPv4(pkt).HeaderLength()
		pkt[hdrLen+2], pkt[hdrLen+3] = 0, 1
	}
	return pkt
}

func TestBPFCaptureFilter(t *testing.T) {
	wan := netip.MustParseAddr("198.18.0.2")
	other := netip.MustParseAddr("198.18.0.3")
	remote := netip.MustParseAddr("198.19.7.7")
	lanHost := netip.MustParseAddr("192.168.50.10")
	capture := Capture{
		Interface: "wan0",
		Addr:      wan,
		Ports:     []config.PortRange{{First: 20000, Last: 32767}, {First: 8080, Last: 8080}, {First: 500, Last: 500}},
		Protocols: []uint8{47, 50},
		ICMP:      true,
		Prefixes:  []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24"), netip.MustParsePrefix("10.1.0.0/16")},
	}
	noICMP := capture
	noICMP.ICMP = false
	noPorts := capture
	noPorts.Ports = nil
	everything := capture
	everything.Ports = []config.PortRange{{First: 0, Last: 65535}}
	everything.Prefixes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0")}

	udpTo := func(dst netip.Addr, port uint16) testpacket.Spec {
		return testpacket.Spec{Src: remote, Dst: dst, Proto: 17, SrcPort: 53, DstPort: port, Payload: []byte("hello")}
	}
	tcpTo := func(dst netip.Addr, port uint16) testpacket.Spec {
		return testpacket.Spec{Src: remote, Dst: dst, Proto: 6, SrcPort: 443, DstPort: port}
	}
	withOptions := udpTo(wan, 20000)
	withOptions.Options = []byte{byte(header.IPv4OptionRouterAlertType), 4, 0, 0} // Router Alert (RFC 2113)
	optionsOutOfRange := udpTo(wan, 22)
	optionsOutOfRange.Options = withOptions.Options
	firstFragment := udpTo(wan, 22)
	firstFragment.MoreFrags = true
	laterFragment := udpTo(wan, 22)
	laterFragment.FragOff = 1480
	laterFragmentOtherDst := laterFragment
	laterFragmentOtherDst.Dst = other
	greFragment := testpacket.Spec{Src: remote, Dst: other, Proto: 47, FragOff: 8, Payload: make([]byte, 16)}
	otherProtoFragment := testpacket.Spec{Src: remote, Dst: wan, Proto: 51, FragOff: 8, Payload: make([]byte, 16)}

	tests := []struct {
		name    string
		capture Capture
		packet  func(t *testing.T) []byte
		want    bool
	}{
		{"udp to a port inside the mapping range is captured", capture, packetOf(udpTo(wan, 20000)), true},
		{"udp to the last port of the mapping range is captured", capture, packetOf(udpTo(wan, 32767)), true},
		{"udp to a single forwarded port is captured", capture, packetOf(udpTo(wan, 8080)), true},
		{"tcp to a port inside the mapping range is captured", capture, packetOf(tcpTo(wan, 25000)), true},
		{"tcp to the host's own ssh port is left to the host", capture, packetOf(tcpTo(wan, 22)), false},
		{"udp just below the mapping range is left to the host", capture, packetOf(udpTo(wan, 19999)), false},
		{"udp just above the mapping range is left to the host", capture, packetOf(udpTo(wan, 32768)), false},
		{"udp to a captured port on another address is ignored", capture, packetOf(udpTo(other, 20000)), false},
		{"gre to the wan address is captured", capture, packetOf(testpacket.Spec{Src: remote, Dst: wan, Proto: 47, Payload: make([]byte, 8)}), true},
		{"esp to the wan address is captured", capture, packetOf(testpacket.Spec{Src: remote, Dst: wan, Proto: 50, Payload: make([]byte, 16)}), true},
		{"ah not listed in protocols is left to the host", capture, packetOf(testpacket.Spec{Src: remote, Dst: wan, Proto: 51, Payload: make([]byte, 16)}), false},
		{"gre to another address is ignored", capture, packetOf(testpacket.Spec{Src: remote, Dst: other, Proto: 47, Payload: make([]byte, 8)}), false},
		{"icmp to the wan address is captured when ICMP is on", capture, packetOf(testpacket.Spec{Src: remote, Dst: wan, Proto: 1, Payload: make([]byte, 8)}), true},
		{"icmp to the wan address is ignored when ICMP is off", noICMP, packetOf(testpacket.Spec{Src: remote, Dst: wan, Proto: 1, Payload: make([]byte, 8)}), false},
		{"udp to a host in a LAN prefix is captured whatever the port", capture, packetOf(udpTo(lanHost, 22)), true},
		{"icmp to a host in a LAN prefix is captured even when ICMP is off", noICMP, packetOf(testpacket.Spec{Src: remote, Dst: lanHost, Proto: 1, Payload: make([]byte, 8)}), true},
		{"tcp to a host in the second LAN prefix is captured", capture, packetOf(tcpTo(netip.MustParseAddr("10.1.200.3"), 80)), true},
		{"udp to an address just outside the LAN prefixes is ignored", capture, packetOf(udpTo(netip.MustParseAddr("10.2.0.1"), 20000)), false},
		{"a header with options still finds the port (in range)", capture, packetOf(withOptions), true},
		{"a header with options still finds the port (out of range)", capture, packetOf(optionsOutOfRange), false},
		{"a first fragment is judged by its port", capture, packetOf(firstFragment), false},
		{"a later udp fragment to the wan address is captured for the NAT", capture, packetOf(laterFragment), true},
		{"a later udp fragment is captured even with no ports owned", noPorts, packetOf(laterFragment), true},
		{"a later udp fragment to another address is ignored", capture, packetOf(laterFragmentOtherDst), false},
		{"a later fragment of an unowned protocol is left to the host", capture, packetOf(otherProtoFragment), false},
		{"a gre fragment to another address is ignored", capture, packetOf(greFragment), false},
		{"tcp with no ports owned is left to the host", noPorts, packetOf(tcpTo(wan, 25000)), false},
		{"every port and a default prefix capture anything IPv4", everything, packetOf(udpTo(other, 1)), true},
		{"an IPv6 version nibble is rejected", capture, func(t *testing.T) []byte {
			p := craftIPv4(t, udpTo(wan, 20000))
			p[0] = 0x60 | p[0]&0x0f
			return p
		}, false},
		{"a version nibble of 5 is rejected", capture, func(t *testing.T) []byte {
			p := craftIPv4(t, udpTo(lanHost, 20000))
			p[0] = 0x50 | p[0]&0x0f
			return p
		}, false},
		{"a header length below 20 bytes is rejected", capture, func(t *testing.T) []byte {
			p := craftIPv4(t, udpTo(lanHost, 20000))
			p[0] = 0x44
			return p
		}, false},
		{"a packet cut inside the IPv4 header is rejected", capture, func(t *testing.T) []byte {
			return craftIPv4(t, udpTo(wan, 20000))[:12]
		}, false},
		{"a udp packet cut before its ports is rejected", capture, func(t *testing.T) []byte {
			return craftIPv4(t, udpTo(wan, 20000))[:21]
		}, false},
		{"an empty packet is rejected", capture, func(t *testing.T) []byte { return nil }, false},
	}
	// The same decisions with the IPv4 header at offset 0 (SOCK_DGRAM) and
	// behind an Ethernet header (SOCK_RAW on an Ethernet interface).
	ethernet := []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, link := range [][]byte{nil, ethernet} {
				prog, err := captureFilter(tt.capture, uint32(len(link)))
				if err != nil {
					t.Fatalf("captureFilter: %v", err)
				}
				vm, err := bpf.NewVM(prog)
				if err != nil {
					t.Fatalf("bpf.NewVM: %v", err)
				}
				pkt := append(append([]byte(nil), link...), tt.packet(t)...)
				n, err := vm.Run(pkt)
				if err != nil {
					t.Fatalf("vm.Run: %v", err)
				}
				if got := n > 0; got != tt.want {
					t.Fatalf("with a %d-byte link header: accepted=%v, want %v (returned %d for %d bytes)", len(link), got, tt.want, n, len(pkt))
				}
				if tt.want && n < len(pkt) {
					t.Fatalf("snap length %d cuts the %d-byte packet: the whole packet must reach the reader", n, len(pkt))
				}
			}
		})
	}
}

func packetOf(p testpacket.Spec) func(t *testing.T) []byte {
	return func(t *testing.T) []byte { return craftIPv4(t, p) }
}

func TestBPFCaptureFilterRefusesBadCaptures(t *testing.T) {
	good := Capture{Interface: "wan0", Addr: netip.MustParseAddr("198.18.0.2")}
	tests := []struct {
		name   string
		mutate func(c *Capture)
	}{
		{"a missing interface is refused", func(c *Capture) { c.Interface = "" }},
		{"a missing address is refused", func(c *Capture) { c.Addr = netip.Addr{} }},
		{"an IPv6 address is refused", func(c *Capture) { c.Addr = netip.MustParseAddr("2001:db8::1") }},
		{"a reversed port range is refused", func(c *Capture) { c.Ports = []config.PortRange{{First: 9, Last: 1}} }},
		{"owning all of TCP is refused", func(c *Capture) { c.Protocols = []uint8{6} }},
		{"owning all of ICMP is refused", func(c *Capture) { c.Protocols = []uint8{1} }},
		{"an IPv6 prefix is refused", func(c *Capture) { c.Prefixes = []netip.Prefix{netip.MustParsePrefix("2001:db8::/32")} }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good
			tt.mutate(&c)
			if _, err := captureFilter(c, 0); err == nil {
				t.Fatalf("captureFilter(%+v, 0) succeeded, want an error", c)
			}
		})
	}
}

func TestBPFCaptureFilterStaysWithinKernelLimits(t *testing.T) {
	c := Capture{Interface: "wan0", Addr: netip.MustParseAddr("198.18.0.2")}
	for p := 0; p < 600; p++ {
		// Every other port, so nothing merges: 600 separate ranges.
		c.Ports = append(c.Ports, config.PortRange{First: uint16(1000 + 2*p), Last: uint16(1000 + 2*p)})
	}
	prog, err := captureFilter(c, 0)
	if err != nil {
		t.Fatalf("captureFilter: %v", err)
	}
	raw, err := bpf.Assemble(prog)
	if err != nil {
		t.Fatalf("assembling %d instructions: %v", len(prog), err)
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatalf("bpf.NewVM: %v", err)
	}
	remote := netip.MustParseAddr("198.19.0.9")
	for _, tc := range []struct {
		port uint16
		want bool
	}{{1000, true}, {1001, false}, {2198, true}, {2199, false}, {2200, false}} {
		n, err := vm.Run(craftIPv4(t, testpacket.Spec{Src: remote, Dst: c.Addr, Proto: 17, SrcPort: 1, DstPort: tc.port}))
		if err != nil {
			t.Fatalf("vm.Run: %v", err)
		}
		if (n > 0) != tc.want {
			t.Errorf("port %d: accepted=%v, want %v (program of %d instructions)", tc.port, n > 0, tc.want, len(raw))
		}
	}

	for p := 0; p < 2000; p++ {
		c.Ports = append(c.Ports, config.PortRange{First: uint16(10000 + 2*p), Last: uint16(10000 + 2*p)})
	}
	if _, err := captureFilter(c, 0); err == nil {
		t.Fatal("a filter above the kernel's 4096 instructions was built, want an error")
	}
}
