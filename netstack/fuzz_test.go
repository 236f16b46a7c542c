package netstack

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// FuzzDeliver feeds arbitrary bytes to Deliver and, bypassing its checks,
// to the stack itself: neither may panic, whatever a LAN host sends.
func FuzzDeliver(f *testing.F) {
	client := netip.AddrPortFrom(lanHost, 40000)
	dnsPort := netip.AddrPortFrom(serviceAddr, 53)
	f.Add(echoRequest(lanHost, serviceAddr, 1, 1, "ping"))
	f.Add(udpPacket(client, dnsPort, query(f, 1, "www.example.", dns.TypeA, true)))
	f.Add(udpPacket(client, dnsPort, []byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c}))
	f.Add(tcpSYN(client, netip.AddrPortFrom(serviceAddr, 80)))
	f.Add(tcpSYN(client, dnsPort))
	f.Add(echoRequest(lanHost, otherHost, 1, 1, "ping"))
	frag := echoRequest(lanHost, serviceAddr, 1, 1, "fragment me please")
	header.IPv4(frag).SetFlagsFragmentOffset(header.IPv4FlagMoreFragments, 0)
	header.IPv4(frag).SetChecksum(0)
	header.IPv4(frag).SetChecksum(^header.IPv4(frag).CalculateChecksum())
	f.Add(frag)
	f.Add([]byte{0x45})
	f.Add([]byte{})

	up := startUpstream(f, answerA("198.18.7.7", 300))
	s, c := newTestStack(f, Config{DNSUpstreams: []netip.AddrPort{up.addr}})
	l, err := s.ListenTCP(80)
	if err != nil {
		f.Fatalf("ListenTCP: %v", err)
	}
	defer l.Close()
	f.Fuzz(func(t *testing.T, pkt []byte) {
		s.Deliver(pkt)
		s.inject(append([]byte(nil), pkt...))
		// Keep the capture from filling; what comes out is not the point.
		for len(c.ch) > 0 {
			<-c.ch
		}
	})
}

// FuzzDNSAnswer feeds arbitrary messages to the DNS forwarder over both
// transports: no panic, and a reply only ever as a parseable response.
func FuzzDNSAnswer(f *testing.F) {
	f.Add(query(f, 1, "www.example.", dns.TypeA, false), false)
	f.Add(query(f, 2, "www.example.", dns.TypeAAAA, true), true)
	f.Add([]byte{0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0}, false)
	f.Add([]byte{0, 1, 0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1}, true)
	f.Add([]byte{0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 41, 0xff, 0xff, 0, 0, 0, 0, 0, 0}, false)

	up := startUpstream(f, answerA("198.18.7.7", 300))
	s, _ := newTestStack(f, Config{DNSUpstreams: []netip.AddrPort{up.addr}})
	f.Fuzz(func(t *testing.T, msg []byte, overTCP bool) {
		out := s.dns.answer(msg, overTCP)
		if out == nil {
			return
		}
		r := new(dns.Msg)
		if err := r.Unpack(out); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
		if !r.Response {
			t.Fatal("reply is not a response")
		}
		if !overTCP && len(out) > upstreamUDPSize {
			t.Fatalf("UDP reply of %d bytes", len(out))
		}
	})
}
