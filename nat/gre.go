package nat

import (
	"encoding/binary"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// GRE (IP protocol 47). PPTP's data channel is enhanced GRE (RFC 2637
// section 4.1): version 1, protocol type 0x880B, and a key field holding the
// payload length and the Call ID of the packet's receiver. So client→server
// GRE carries the server's Call ID and needs only the source address
// masqueraded, while server→client GRE carries the masqueraded Call ID the
// router handed out, which says which LAN client and which of its calls it
// belongs to.
//
// Other GRE (version 0: IP-in-GRE, Ethernet over GRE, ...) has no field that
// names the LAN host, so it gets address-only masquerade: one LAN host per
// remote address at a time, the binding refreshed by outbound packets
// ([pptp] gre_timeout). A second LAN host to the same remote is dropped
// while the first one's binding lives (gre_remote_busy).

// GRE flag bits (RFC 2784, RFC 2890, RFC 2637 section 4.1).
const (
	greFlagChecksum = 0x8000
	greFlagRouting  = 0x4000
	greFlagKey      = 0x2000
	greFlagSeq      = 0x1000
	greFlagStrict   = 0x0800
	greRecurMask    = 0x0700
	greFlagAck      = 0x0080
	greVersionMask  = 0x0007
)

// GREProtoPPP is the protocol type of enhanced GRE.
const GREProtoPPP = 0x880B

// greHeader is a view of a GRE header.
type greHeader []byte

func (g greHeader) flags() uint16    { return binary.BigEndian.Uint16(g[0:]) }
func (g greHeader) version() uint16  { return g.flags() & greVersionMask }
func (g greHeader) protocol() uint16 { return binary.BigEndian.Uint16(g[2:]) }

// callID is the enhanced GRE key's Call ID half.
func (g greHeader) callID() uint16      { return binary.BigEndian.Uint16(g[6:]) }
func (g greHeader) setCallID(id uint16) { binary.BigEndian.PutUint16(g[6:], id) }

// seq is an enhanced GRE header's sequence number, when its S bit says it
// has one; parseGRE checked the header is long enough for it.
func (g greHeader) seq() (uint32, bool) {
	if g.flags()&greFlagSeq == 0 {
		return 0, false
	}
	return binary.BigEndian.Uint32(g[8:]), true
}

// parseGRE checks a GRE header and reports its version. Enhanced GRE must
// look like RFC 2637 says: no checksum, routing, strict source route or
// recursion, the key present, protocol 0x880B, and room for the optional
// sequence and acknowledgment numbers. Enhanced GRE carries no checksum, so
// rewriting its key needs no checksum update.
func parseGRE(b []byte) (greHeader, uint16, bool) {
	if len(b) < 4 {
		return nil, 0, false
	}
	g := greHeader(b)
	v := g.version()
	switch v {
	case 0:
		return g, 0, true
	case 1:
		f := g.flags()
		if f&(greFlagChecksum|greFlagRouting|greFlagStrict|greRecurMask) != 0 ||
			f&greFlagKey == 0 || g.protocol() != GREProtoPPP {
			return nil, 1, false
		}
		n := 8
		if f&greFlagSeq != 0 {
			n += 4
		}
		if f&greFlagAck != 0 {
			n += 4
		}
		if len(b) < n {
			return nil, 1, false
		}
		return g, 1, true
	}
	return nil, v, false
}

// greBinding is an address-only GRE binding of a remote to a LAN host.
type greBinding struct {
	host    [4]byte
	expires int64
}

// greHandler masquerades GRE: enhanced GRE by Call ID through the PPTP
// tracker, other GRE by address. A GRE forward ([[forward]] proto "gre",
// the PPTP server behind the router) takes inbound GRE that matches no call
// and no binding.
type greHandler struct {
	e         *Engine
	bindings  map[[4]byte]*greBinding
	forward   bool
	forwardTo [4]byte
}

func newGREHandler(e *Engine) *greHandler {
	return &greHandler{e: e, bindings: make(map[[4]byte]*greBinding)}
}

func (h *greHandler) Outbound(p *Packet, now int64) Result {
	g, v, ok := parseGRE(p.L4)
	if !ok {
		return drop(DropGREMalformed)
	}
	if v == 1 {
		// The key is the server's Call ID: the call it belongs to is
		// the client's call to that server whose peer ID it is.
		if call := h.e.pptp.callToPeer(p.Src, p.Dst, g.callID()); call != nil {
			call.greOut++
			seq, numbered := g.seq()
			call.out.note(seq, numbered, len(p.Buf), now)
		}
	} else if r := h.bindOutbound(p, now); r != DropNone {
		return drop(r)
	}
	h.setSrc(p, h.e.wan)
	return toWAN
}

// bindOutbound binds the remote of non-PPTP GRE to the sending LAN host.
func (h *greHandler) bindOutbound(p *Packet, now int64) DropReason {
	b := h.bindings[p.Dst]
	if b != nil && b.expires > now && b.host != p.Src {
		return DropGRERemoteBusy
	}
	if b == nil || b.expires <= now {
		b = &greBinding{host: p.Src}
		h.bindings[p.Dst] = b
		h.e.log.Info().Stringer("lan", netip.AddrFrom4(p.Src)).
			Stringer("remote", netip.AddrFrom4(p.Dst)).
			Msg("gre without pptp: address-only masquerade, one LAN host per remote")
	}
	b.expires = now + dur(h.e.cfg.PPTP.GRETimeout)
	return DropNone
}

func (h *greHandler) Inbound(p *Packet, now int64) Result {
	g, v, ok := parseGRE(p.L4)
	if !ok {
		return drop(DropGREMalformed)
	}
	if v == 1 {
		if call := h.e.pptp.callToMasq(p.Src, g.callID()); call != nil {
			call.greIn++
			seq, numbered := g.seq()
			call.in.note(seq, numbered, len(p.Buf), now)
			g.setCallID(call.orig)
			h.setDst(p, call.client)
			return toLAN
		}
		return h.toForward(p, DropGREUnknownCall)
	}
	if b := h.bindings[p.Src]; b != nil && b.expires > now {
		h.setDst(p, b.host)
		return toLAN
	}
	return h.toForward(p, DropUnsolicited)
}

// toForward hands inbound GRE that no call or binding claims to the GRE
// forward, or drops it for the reason given.
func (h *greHandler) toForward(p *Packet, otherwise DropReason) Result {
	if !h.forward {
		return drop(otherwise)
	}
	h.setDst(p, h.forwardTo)
	return toLAN
}

func (h *greHandler) setSrc(p *Packet, a [4]byte) {
	p.IP.SetSourceAddressWithChecksumUpdate(tcpip.AddrFrom4(a))
	p.Src = a
}

func (h *greHandler) setDst(p *Packet, a [4]byte) {
	p.IP.SetDestinationAddressWithChecksumUpdate(tcpip.AddrFrom4(a))
	p.Dst = a
}

// expire forgets address-only bindings past their time.
func (h *greHandler) expire(now int64) {
	for k, b := range h.bindings {
		if b.expires <= now {
			delete(h.bindings, k)
		}
	}
}

// callToPeer finds the call of a LAN client to a server by the server's
// Call ID: one map lookup.
func (pt *pptpTracker) callToPeer(client, server [4]byte, peer uint16) *pptpCall {
	if call := pt.callAtPeer(server, peer); call != nil && call.client == client {
		return call
	}
	return nil
}

// callAtPeer finds the call a server knows by its own Call ID, whoever the
// client: one map lookup. When the server gave the ID to several calls, a
// live one.
func (pt *pptpTracker) callAtPeer(server [4]byte, peer uint16) *pptpCall {
	if calls := pt.byPeer[pptpPeerKey{server, peer}]; len(calls) > 0 {
		return calls[0]
	}
	return nil
}

// callToMasq finds the call a server's GRE names by its masqueraded Call ID:
// one map lookup.
func (pt *pptpTracker) callToMasq(server [4]byte, masq uint16) *pptpCall {
	return pt.calls[pptpCallKey{server, masq}]
}
