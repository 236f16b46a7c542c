package nat

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// tcpHandler masquerades TCP with endpoint-independent mapping and
// connection-based filtering: inbound segments pass only on a connection the
// LAN side opened, or as a SYN to a port forward. An unsolicited SYN is
// dropped silently (RFC 5382 REQ-4 asks not to answer it for 6 s; vpnmasq
// never answers it). Every segment of a connection is checked against its
// sequence windows (tcpconn.go): what a blind attacker on the WAN forges
// changes no state here.
type tcpHandler struct{ e *Engine }

// timeout is the flow's timer (RFC 5382 REQ-5): established once the
// handshake completed (or a pickup was seen both ways) and nothing closes;
// short for a port forward's connection the inside has not answered;
// transitory for the handshake and the teardown.
func (h *tcpHandler) timeout(c *tcpConn) time.Duration {
	switch {
	case c.established():
		return h.e.cfg.TCPEstablishedTimeout
	case c.unreplied():
		return h.e.cfg.Limits.UnrepliedTimeout
	}
	return h.e.cfg.TCPTransitoryTimeout
}

// track runs a segment through the flow's connection tracker and, for a
// LAN client's PPTP control connection (pptp), through the PPTP hook. A
// segment the tracker drops changes nothing, the PPTP tracker included; one
// it passes without changing anything (an in-window RST that is not exact)
// neither refreshes the timer nor reaches the PPTP hook, so a blind attacker
// cannot end calls with it.
func (h *tcpHandler) track(f *Flow, p *Packet, outbound, pptp bool, now int64) DropReason {
	if !pptp {
		return h.settle(f, f.tcp.segment(p.L4, p.MoreFragments, outbound), nil, now)
	}
	// The PPTP hook may still drop the segment, or cut it before a Call
	// ID (FIN cleared): the tracker tries on a copy and tracks what leaves.
	trial := f.tcp
	v := trial.segment(p.L4, p.MoreFragments, outbound)
	if v != tcpAccept && v != tcpAcceptClose {
		f.tcp = trial
		return h.settle(f, v, nil, now)
	}
	pt := &h.e.pptp
	k := pptpConnKey{f.m.Int, f.remote}
	dir := fromServer
	if outbound {
		dir = fromClient
	}
	var pc *pptpConn
	switch {
	case outbound && p.TCPFlags&(header.TCPFlagSyn|header.TCPFlagAck) == header.TCPFlagSyn &&
		trial.state == tcpSynSent && (f.tcp.state != tcpSynSent || f.tcp.peer[tcpInside].iss != trial.peer[tcpInside].iss):
		// The client's SYN starts a connection (new, or the tuple
		// reused): its messages are followed from here.
		pc = pt.open(k, now)
	case f.tcp.state == tcpNone:
		// Picked up mid-stream: message boundaries unknown, passed
		// unparsed, no record.
		pt.untracked(k)
	default:
		pc = pt.lookup(k)
	}
	if pc != nil {
		if r := pt.control(pc, p, dir, now); r != DropNone {
			return r
		}
		if again := f.tcp.segment(p.L4, p.MoreFragments, outbound); again != tcpDrop {
			v, trial = again, f.tcp
		}
	}
	f.tcp = trial
	return h.settle(f, v, pc, now)
}

// settle applies the tracker's verdict on a segment to the flow: its timer,
// whether it is assured, and the end of a PPTP control connection.
func (h *tcpHandler) settle(f *Flow, v tcpVerdict, pc *pptpConn, now int64) DropReason {
	switch v {
	case tcpDrop:
		return DropTCPOutOfWindow
	case tcpIgnore:
		return DropNone
	}
	t := &h.e.table
	t.touch(f, now, h.timeout(&f.tcp))
	t.setAssured(f, f.tcp.established())
	if v == tcpAcceptClose && pc != nil {
		why := "control connection closed"
		if f.tcp.state == tcpClose {
			why = "control connection reset"
		}
		h.e.pptp.closeConn(pc, why, now)
	}
	return DropNone
}

// forget removes a flow that its first segment did not open (the tracker
// dropped or ignored it): it never got a timer, so no sweep would find it.
func (h *tcpHandler) forget(f *Flow, now int64) {
	if f.expires == 0 {
		h.e.table.removeFlow(f, now, "")
	}
}

func (h *tcpHandler) Outbound(p *Packet, now int64) Result {
	t := &h.e.table
	f, _, r := t.outboundFlow(ProtoTCP, endpoint{p.Src, p.SrcPort}, endpoint{p.Dst, p.DstPort}, now)
	if f == nil {
		return r
	}
	// A LAN client's PPTP control connection: its Call IDs are
	// masqueraded (a forwarded PPTP server's own replies are not).
	pptp := p.DstPort == PortPPTP && p.Dst != h.e.wan && !f.m.Static
	r = drop(h.track(f, p, true, pptp, now))
	h.forget(f, now)
	if r.Reason != DropNone {
		return r
	}
	rewriteSrc(p, h.e.wan, f.m.Ext)
	return toWAN
}

func (h *tcpHandler) Inbound(p *Packet, now int64) Result {
	t := &h.e.table
	m := t.lookupExt(ProtoTCP, p.DstPort)
	if m == nil {
		return drop(DropUnsolicited)
	}
	remote := endpoint{p.Src, p.SrcPort}
	f := t.flow(m, remote, now)
	if f == nil {
		if !m.Static || p.TCPFlags&(header.TCPFlagSyn|header.TCPFlagAck) != header.TCPFlagSyn {
			return drop(DropUnsolicited)
		}
		// A port forward's connection, tracked from the outside's SYN.
		var r Result
		if f, r = t.inboundFlow(m, remote, now); f == nil {
			return r
		}
	}
	r := drop(h.track(f, p, false, remote.port == PortPPTP && !m.Static, now))
	h.forget(f, now)
	if r.Reason != DropNone {
		return r
	}
	rewriteDst(p, m.Int.addr, m.Int.port)
	return toLAN
}
