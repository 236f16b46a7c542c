package netstack

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

func TestSetDNSUpstreams(t *testing.T) {
	t.Run("the next query goes to the new upstreams", func(t *testing.T) {
		old := startUpstream(t, answerA("198.18.1.1", 60))
		next := startUpstream(t, answerA("198.18.2.2", 60))
		s, c := dnsStack(t, nil, old.addr)
		onlyA(t, exchangeUDP(t, s, c, 41100, query(t, 1, "a.example.", dns.TypeA, false)))
		if err := s.SetDNSUpstreams([]netip.AddrPort{next.addr}); err != nil {
			t.Fatal(err)
		}
		a := onlyA(t, exchangeUDP(t, s, c, 41101, query(t, 2, "b.example.", dns.TypeA, false)))
		if a.A.String() != "198.18.2.2" || old.total() != 1 || next.total() != 1 {
			t.Fatalf("answer %v; queries old %d, new %d", a, old.total(), next.total())
		}
	})
	t.Run("turning the forwarder off or on is refused", func(t *testing.T) {
		up := startUpstream(t, answerA("198.18.1.1", 60))
		s, _ := dnsStack(t, nil, up.addr)
		if err := s.SetDNSUpstreams(nil); err == nil {
			t.Error("an empty list was accepted")
		}
		off, _ := dnsStack(t, nil)
		if err := off.SetDNSUpstreams([]netip.AddrPort{up.addr}); err == nil {
			t.Error("a stack without a forwarder accepted upstreams")
		}
	})
}
