package netstack

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// SetDNSUpstreams replaces the DNS forwarder's upstreams; queries already
// under way finish with the old ones, and cached answers stay until their
// TTL. The forwarder itself starts with the stack: a stack started without
// upstreams refuses a list, and an empty list is refused too (turning the
// forwarder on or off takes a restart).
func (s *Stack) SetDNSUpstreams(ups []netip.AddrPort) error {
	if s.dns == nil {
		return errors.New("netstack: no DNS forwarder runs (started without upstreams)")
	}
	if len(ups) == 0 {
		return errors.New("netstack: an empty upstream list would turn the DNS forwarder off")
	}
	for _, u := range ups {
		if !u.IsValid() || u.Port() == 0 {
			return fmt.Errorf("netstack: DNS upstream %v is not an address and port", u)
		}
	}
	s.dns.setUpstreams(ups)
	return nil
}

func (d *dnsServer) setUpstreams(ups []netip.AddrPort) {
	ups = slices.Clone(ups)
	d.upstreams.Store(&ups)
}
