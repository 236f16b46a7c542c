package nat

import "gvisor.dev/gvisor/pkg/tcpip"

// wholeProtoForward forwards an entire IP protocol without ports (GRE, ESP)
// to one internal host: inbound packets get the host as destination, and
// that host's outbound packets of the protocol leave with the WAN address.
// It is the "VPN server behind the router" case; the protocol-aware VPN
// handlers replace it where they exist.
type wholeProtoForward struct {
	e     *Engine
	proto uint8
	to    [4]byte
}

func (h *wholeProtoForward) Outbound(p *Packet, now int64) Result {
	if p.Src != h.to {
		return drop(DropUnsupported)
	}
	p.IP.SetSourceAddressWithChecksumUpdate(tcpip.AddrFrom4(h.e.wan))
	p.Src = h.e.wan
	return toWAN
}

func (h *wholeProtoForward) Inbound(p *Packet, now int64) Result {
	p.IP.SetDestinationAddressWithChecksumUpdate(tcpip.AddrFrom4(h.to))
	p.Dst = h.to
	return toLAN
}
