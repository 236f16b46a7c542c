package nat

// AH (IP protocol 51, RFC 4302) authenticates the IP header, addresses
// included, so a masqueraded AH packet always fails its integrity check at
// the far end: no NAT can carry it. vpnmasq drops AH that would need
// masquerading, counts it, and logs the reason once per (host, remote) so
// the operator learns why the VPN does not come up. AH on a no-NAT route is
// routed unchanged by the routing core and never reaches the engine.
type ahHandler struct {
	e      *Engine
	logged map[hostRemote]bool
}

// ahMaxLogged bounds the memory of which pairs were already explained.
const ahMaxLogged = 1024

func (h *ahHandler) refuse(host, remote [4]byte, dir string) Result {
	hr := hostRemote{host, remote}
	if !h.logged[hr] && len(h.logged) < ahMaxLogged {
		h.logged[hr] = true
		h.e.log.Warn().Str("direction", dir).
			Stringer("host", endpoint{host, 0}.AddrPort().Addr()).
			Stringer("remote", endpoint{remote, 0}.AddrPort().Addr()).
			Msg("AH dropped: it authenticates the IP addresses, so it cannot be masqueraded; use ESP, or route the remote network without NAT (routing.no_nat)")
	}
	return drop(DropAHNotMasqueradable)
}

func (h *ahHandler) Outbound(p *Packet, now int64) Result { return h.refuse(p.Src, p.Dst, "outbound") }

func (h *ahHandler) Inbound(p *Packet, now int64) Result { return h.refuse(p.Dst, p.Src, "inbound") }
