package nat

import "gvisor.dev/gvisor/pkg/tcpip/header"

// icmpHandler masquerades ICMP echo (the query messages): the identifier is
// mapped like a port, independent of the remote (RFC 5508 REQ-1), with a 60 s
// timer refreshed by the requests. Errors are handled separately in icmperror.go.
type icmpHandler struct{ e *Engine }

func (h *icmpHandler) Outbound(p *Packet, now int64) Result {
	if p.ICMPType != header.ICMPv4Echo {
		return drop(DropUnsupported)
	}
	t := &h.e.table
	f, _, r := t.outboundFlow(ProtoICMP, endpoint{p.Src, p.SrcPort}, endpoint{p.Dst, 0}, now)
	if f == nil {
		return r
	}
	t.touch(f, now, h.e.cfg.ICMPTimeout)
	rewriteSrc(p, h.e.wan, f.m.Ext)
	return toWAN
}

func (h *icmpHandler) Inbound(p *Packet, now int64) Result {
	if p.ICMPType != header.ICMPv4EchoReply {
		// Echo requests and anything else to the WAN address are the
		// host's to answer.
		return Result{Verdict: VerdictHost}
	}
	t := &h.e.table
	m := t.lookupExt(ProtoICMP, p.DstPort)
	if m == nil {
		// Most likely a reply to the host's own ping.
		return Result{Verdict: VerdictHost}
	}
	f := t.flow(m, endpoint{p.Src, 0}, now)
	if f == nil {
		return drop(DropUnsolicited)
	}
	// Replies do not extend the timer (as for UDP): the pinging host's
	// requests do, and forged replies must not keep its identifier.
	f.in, f.lastSeen = true, now
	t.setAssured(f, true)
	rewriteDst(p, m.Int.addr, m.Int.port)
	return toLAN
}
