package nat

// AH (IP protocol 51, RFC 4302) authenticates the IP header, addresses
// included, so a masqueraded AH packet always fails its integrity check at
// the far end: no NAT can carry it. vpnmasq drops AH that would need
// masquerading, counts it, and logs the reason once per (host, remote) so
// the operator learns why the VPN does not come up. AH on a no-NAT route is
// routed unchanged by the routing core and never reaches the engine.
type ahHandler struct {
	e       *Engine
	refused map[hostRemote]*ahRefused
}

// ahRefused is what the status page shows of a refused pair.
type ahRefused struct {
	packets uint64
	last    int64
}

// ahMaxRefused bounds the memory of refused pairs; beyond it, new pairs
// are still dropped and counted, just not listed or explained again.
const ahMaxRefused = 1024

func (h *ahHandler) refuse(host, remote [4]byte, dir string, now int64) Result {
	hr := hostRemote{host, remote}
	if r := h.refused[hr]; r != nil {
		r.packets++
		r.last = now
	} else if len(h.refused) < ahMaxRefused {
		h.refused[hr] = &ahRefused{packets: 1, last: now}
		h.e.log.Warn().Str("direction", dir).
			Stringer("host", endpoint{host, 0}.AddrPort().Addr()).
			Stringer("remote", endpoint{remote, 0}.AddrPort().Addr()).
			Msg("AH dropped: it authenticates the IP addresses, so it cannot be masqueraded; use ESP, or route the remote network without NAT (routing.no_nat)")
	}
	return drop(DropAHNotMasqueradable)
}

func (h *ahHandler) Outbound(p *Packet, now int64) Result {
	return h.refuse(p.Src, p.Dst, "outbound", now)
}

func (h *ahHandler) Inbound(p *Packet, now int64) Result {
	return h.refuse(p.Dst, p.Src, "inbound", now)
}
