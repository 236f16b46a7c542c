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
	var v tcpVerdict
	var pc *pptpConn
	if !pptp {
		v = f.tcp.segment(p.L4, p.MoreFragments, outbound)
	} else {
		// The PPTP hook may still drop the segment, or cut it before
		// a Call ID (FIN cleared): try on a copy, track what leaves.
		trial := f.tcp
		v = trial.segment(p.L4, p.MoreFragments, outbound)
		if v == tcpAccept || v == tcpAcceptClose {
			k := pptpConnKey{f.m.Int, f.remote}
			dir := fromServer
			if outbound {
				pc, dir = h.e.pptp.conn(k, now), fromClient
			} else {
				pc = h.e.pptp.conns[k]
			}
			if pc != nil {
				if r := h.e.pptp.control(pc, p, dir, now); r != DropNone {
					return r
				}
				pc.lastSeen = now
				if again := f.tcp.segment(p.L4, p.MoreFragments, outbound); again != tcpDrop {
					v = again
					trial = f.tcp
				}
			}
		}
		f.tcp = trial
	}
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
		if f.tcp.state == tcpClose {
			h.e.pptp.closeConn(pc, "control connection reset", now)
		} else {
			h.e.pptp.closeConn(pc, "control connection closed", now)
		}
	}
	return DropNone
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
	if r := h.track(f, p, true, pptp, now); r != DropNone {
		return drop(r)
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
		f = t.addFlow(m, remote, now)
	}
	if r := h.track(f, p, false, remote.port == PortPPTP && !m.Static, now); r != DropNone {
		return drop(r)
	}
	rewriteDst(p, m.Int.addr, m.Int.port)
	return toLAN
}
