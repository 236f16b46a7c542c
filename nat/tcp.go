package nat

import (
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// tcpState is what the NAT needs to know about a TCP connection: which
// handshake and teardown segments it has seen, to choose between the
// established and the transitory timer (RFC 5382 REQ-5).
type tcpState uint8

const (
	tcpSynOut tcpState = 1 << iota // SYN from the LAN side
	tcpSynIn                       // SYN from the WAN side
	tcpFinOut
	tcpFinIn
	tcpRst
)

func (s tcpState) established() bool {
	return s&(tcpSynOut|tcpSynIn) == tcpSynOut|tcpSynIn && s&(tcpFinOut|tcpFinIn|tcpRst) == 0
}

// update records a segment's flags seen in one direction.
func (s *tcpState) update(flags header.TCPFlags, outbound bool) {
	syn, fin := tcpSynIn, tcpFinIn
	if outbound {
		syn, fin = tcpSynOut, tcpFinOut
	}
	switch {
	case flags&header.TCPFlagRst != 0:
		*s |= tcpRst
	case flags&header.TCPFlagSyn != 0:
		// A new SYN on a closed flow (port reuse) starts over.
		if *s&(tcpRst|tcpFinOut|tcpFinIn) != 0 {
			*s = 0
		}
		*s |= syn
	case flags&header.TCPFlagFin != 0:
		*s |= fin
	}
}

// tcpHandler masquerades TCP with endpoint-independent mapping and
// connection-based filtering: inbound segments pass only on a connection the
// LAN side opened, or as a SYN to a port forward. An unsolicited SYN is
// dropped silently (RFC 5382 REQ-4 asks not to answer it for 6 s; vpnmasq
// never answers it).
type tcpHandler struct{ e *Engine }

func (h *tcpHandler) timeout(s tcpState) time.Duration {
	if s.established() {
		return h.e.cfg.TCPEstablishedTimeout
	}
	return h.e.cfg.TCPTransitoryTimeout
}

func (h *tcpHandler) Outbound(p *Packet, now int64) Result {
	t := &h.e.table
	f, created, r := t.outboundFlow(ProtoTCP, endpoint{p.Src, p.SrcPort}, endpoint{p.Dst, p.DstPort}, now)
	if f == nil {
		return r
	}
	if created && p.TCPFlags&header.TCPFlagSyn == 0 {
		// Picked up mid-stream (e.g. after a restart): the handshake
		// happened before we were watching.
		f.tcp = tcpSynOut | tcpSynIn
	}
	if p.DstPort == PortPPTP && p.Dst != h.e.wan && !f.m.Static {
		// A LAN client's PPTP control connection: its Call IDs are
		// masqueraded (a forwarded PPTP server's own replies are not).
		c := h.e.pptp.conn(pptpConnKey{f.m.Int, f.remote}, now)
		if r := h.e.pptp.control(c, p, fromClient, now); r != DropNone {
			return drop(r)
		}
	}
	f.tcp.update(p.TCPFlags, true)
	t.touch(f, now, h.timeout(f.tcp))
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
		var r Result
		if f, r = t.inboundFlow(m, remote, now); f == nil {
			return r
		}
	}
	if remote.port == PortPPTP && !m.Static {
		if c := h.e.pptp.conns[pptpConnKey{m.Int, remote}]; c != nil {
			c.lastSeen = now
			if r := h.e.pptp.control(c, p, fromServer, now); r != DropNone {
				return drop(r)
			}
		}
	}
	f.tcp.update(p.TCPFlags, false)
	t.touch(f, now, h.timeout(f.tcp))
	rewriteDst(p, m.Int.addr, m.Int.port)
	return toLAN
}
