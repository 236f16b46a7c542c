package nat

// udpHandler masquerades UDP per RFC 4787: endpoint-independent mapping,
// filtering by configuration (address-dependent by default), a 5-minute
// timer refreshed by traffic in both directions.
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
	if f == nil {
		// Flows that timed out but were not swept yet count as gone.
		allowed := m.Static ||
			(h.e.cfg.UDPFiltering == EndpointIndependentFiltering && m.expires > now) ||
			t.seenRemoteAddr(m, p.Src, now)
		if !allowed {
			return drop(DropUnsolicited)
		}
		f = t.addFlow(m, remote, now)
	}
	t.touch(f, now, h.e.cfg.UDPTimeout)
	rewriteDst(p, m.Int.addr, m.Int.port)
	return toLAN
}
