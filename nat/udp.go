package nat

// udpHandler masquerades UDP per RFC 4787: endpoint-independent mapping,
// filtering by configuration (address-dependent by default; hairpinned
// packets, which come from the LAN, as endpoint-independent), a 5-minute
// timer refreshed by outbound traffic (REQ-6) — and by inbound traffic only
// when udp_inbound_refresh is set, so that an outsider who forges a remote's
// address cannot keep a silent host's mapping alive.
//
// A flow the outside opens (a port forward, or a new remote endpoint that
// filtering admits) counts against the source's new-flow rate (for a
// hairpinned packet, its sending LAN host's) and lives on the unreplied
// timer until the inside sends on it; then it is assured and gets the full
// timer.
type udpHandler struct{ e *Engine }

func (h *udpHandler) Outbound(p *Packet, now int64) Result {
	t := &h.e.table
	if (p.SrcPort == PortIKE || p.SrcPort == PortNATT) && !t.isForwarded(ProtoUDP, endpoint{p.Src, p.SrcPort}) {
		if r, handled := h.ikeOutbound(p, now); handled {
			return r
		}
	}
	f, _, r := t.outboundFlow(ProtoUDP, endpoint{p.Src, p.SrcPort}, endpoint{p.Dst, p.DstPort}, now)
	if f == nil {
		return r
	}
	t.touch(f, now, h.e.cfg.UDPTimeout)
	if f.in {
		t.setAssured(f, true)
	}
	rewriteSrc(p, h.e.wan, f.m.Ext)
	return toWAN
}

func (h *udpHandler) Inbound(p *Packet, now int64) Result {
	t := &h.e.table
	m := t.lookupExt(ProtoUDP, p.DstPort)
	if m == nil && (p.DstPort == PortIKE || p.DstPort == PortNATT) {
		if r, handled := h.ikeInbound(p, now); handled {
			return r
		}
	}
	if m == nil {
		return drop(DropUnsolicited)
	}
	remote := endpoint{p.Src, p.SrcPort}
	f := t.flow(m, remote, now)
	switch {
	case f == nil:
		// Flows that timed out but were not swept yet count as gone, and
		// so does a mapping whose own (outbound) timer ran out.
		//
		// A hairpinned packet comes from a LAN host, which could reach
		// the mapping's host directly: it passes as under
		// endpoint-independent filtering, whatever the setting (RFC 4787
		// REQ-9; RFC 5780's hairpinning test sends from a socket the
		// mapping never sent to).
		eif := h.e.cfg.UDPFiltering == EndpointIndependentFiltering || h.e.hairpinning
		allowed := m.Static ||
			(eif && m.expires > now) ||
			t.seenRemoteAddr(m, p.Src, now)
		if !allowed {
			return drop(DropUnsolicited)
		}
		var r Result
		if f, r = t.inboundFlow(m, remote, now); f == nil {
			return r
		}
		t.setExpiry(f, now, now+dur(h.e.cfg.Limits.UnrepliedTimeout))
		f.m.lastUsed = now
	case h.e.cfg.UDPInboundRefresh:
		f.in = true
		t.touch(f, now, h.e.cfg.UDPTimeout)
	default:
		f.in = true
		f.lastSeen = now
	}
	if f.out {
		t.setAssured(f, true)
	}
	rewriteDst(p, m.Int.addr, m.Int.port)
	return toLAN
}
