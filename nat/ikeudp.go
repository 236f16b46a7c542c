package nat

import "gvisor.dev/gvisor/pkg/tcpip/header"

// UDP 500 and 4500: the UDP handler hands these to the IKE tracker before
// its ordinary endpoint mapping, unless a port forward owns the port (an
// IPsec server behind the router), in which case the static mapping wins.

// udpPayload is the UDP payload of a first (or only) fragment.
func udpPayload(p *Packet) []byte {
	if len(p.L4) < header.UDPMinimumSize {
		return nil
	}
	return p.L4[header.UDPMinimumSize:]
}

// ikeOutbound masquerades IKE and NAT-T from a LAN host. handled is false
// when the packet should take an ordinary UDP mapping instead.
func (h *udpHandler) ikeOutbound(p *Packet, now int64) (r Result, handled bool) {
	e := h.e
	if e.table.lookupExt(ProtoUDP, p.SrcPort) != nil {
		// A port forward owns this WAN port: its replies go to the
		// forward's host, so this host takes an ordinary mapping.
		return Result{}, false
	}
	payload := udpPayload(p)
	switch p.SrcPort {
	case PortIKE:
		hdr, ok := parseIKEHeader(payload)
		if !ok {
			return drop(DropIKEMalformed), true
		}
		if why := e.ike.outbound(p, hdr, now); why != DropNone {
			return drop(why), true
		}
		rewriteSrc(p, e.wan, PortIKE)
		return toWAN, true
	case PortNATT:
		k := nattKey{endpoint{p.Dst, p.DstPort}}
		host := endpoint{p.Src, p.SrcPort}
		f := e.ike.natt[k]
		kind := classifyNATT(payload)
		if f != nil && f.expires > now && f.host != host || f == nil && e.ike.nattFull() {
			// Another LAN host keeps WAN:4500 towards this remote (or the
			// NAT-T flows are at their bound): this one takes an ordinary
			// mapping, which NAT-T peers accept. Its IKE is still tracked,
			// so the ESP handler and the logs know it talks to the remote.
			if kind == nattIKE {
				if hdr, ok := parseIKEHeader(payload[4:]); ok {
					if why := e.ike.outbound(p, hdr, now); why != DropNone {
						return drop(why), true
					}
				}
			}
			return Result{}, false
		}
		switch kind {
		case nattMalformed:
			return drop(DropIKEMalformed), true
		case nattIKE:
			hdr, ok := parseIKEHeader(payload[4:])
			if !ok {
				return drop(DropIKEMalformed), true
			}
			if why := e.ike.outbound(p, hdr, now); why != DropNone {
				return drop(why), true
			}
		}
		if f == nil || f.expires <= now {
			f = &nattFlow{host: host}
			e.ike.natt[k] = f
		}
		f.expires = now + e.ike.timeout()
		rewriteSrc(p, e.wan, PortNATT)
		return toWAN, true
	}
	return Result{}, false
}

// ikeInbound delivers IKE and NAT-T from the WAN. handled is false when the
// packet is not the IKE tracker's (the ordinary UDP path then decides).
func (h *udpHandler) ikeInbound(p *Packet, now int64) (r Result, handled bool) {
	e := h.e
	payload := udpPayload(p)
	switch p.DstPort {
	case PortIKE:
		hdr, ok := parseIKEHeader(payload)
		if !ok {
			return drop(DropIKEMalformed), true
		}
		s, why := e.ike.inbound(p, hdr, now)
		if why != DropNone {
			return drop(why), true
		}
		// Port 500, not the session's port: after a NAT-T float that is
		// 4500, where a message without the non-ESP marker reads as ESP.
		rewriteDst(p, s.host.addr, PortIKE)
		return toLAN, true
	case PortNATT:
		kind := classifyNATT(payload)
		if kind == nattMalformed {
			return drop(DropIKEMalformed), true
		}
		var hdr ikeHeader
		if kind == nattIKE {
			var ok bool
			if hdr, ok = parseIKEHeader(payload[4:]); !ok {
				return drop(DropIKEMalformed), true
			}
		}
		k := nattKey{endpoint{p.Src, p.SrcPort}}
		f := e.ike.natt[k]
		opened := false
		if f == nil || f.expires <= now {
			// No flow yet from this remote endpoint: only IKE whose SPIs
			// name a LAN host may open one (e.g. the remote's port changed).
			if kind != nattIKE {
				return drop(DropUnsolicited), true
			}
			s, why := e.ike.inbound(p, hdr, now)
			if why != DropNone {
				return drop(why), true
			}
			if s.unconfirmed || e.ike.nattFull() {
				// A session the remote started opens no flow: anyone can
				// send such a message from any port. The host's answer
				// from 4500 opens it.
				rewriteDst(p, s.host.addr, PortNATT)
				return toLAN, true
			}
			f = &nattFlow{host: endpoint{s.host.addr, PortNATT}}
			e.ike.natt[k] = f
			opened = true
		} else if kind == nattIKE {
			// The flow names the host; the SPIs keep the IKE tracking
			// current, including an IKE SA the remote's rekey created.
			if s := e.ike.lookup(p.Src, hdr, now); s != nil {
				e.ike.seen(s, hdr, now)
			} else {
				// Delivered on the flow even when it cannot be tracked.
				e.ike.newSession(f.host, p.Src, hdr, now, true, "new SPIs on the host's NAT-T flow")
			}
		}
		// Like any UDP mapping, the flow is refreshed from the inside (the
		// host's NAT-T keepalives, RFC 3948 section 2.3): an outsider
		// sending to it cannot keep it alive.
		if opened || e.cfg.UDPInboundRefresh {
			f.expires = now + e.ike.timeout()
		}
		rewriteDst(p, f.host.addr, f.host.port)
		return toLAN, true
	}
	return Result{}, false
}
