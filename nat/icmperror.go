package nat

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// ICMP errors (RFC 5508 section 4) embed the IP header and at least the first
// 8 bytes of the packet that caused them. Crossing the NAT, both the outer
// header and the embedded one are translated so the sender can match the
// error to its socket; the outer address follows the embedded one.
//
// Errors never create, refresh or delete a mapping (RFC 5508 REQ-6, RFC 4787
// REQ-12, RFC 5382 REQ-10), errors with a bad ICMP checksum or a bad embedded
// IP checksum are dropped, and the embedded transport checksum is updated but
// not validated (it is usually truncated).

// embedded is the offending packet inside an ICMP error.
type embedded struct {
	ip      header.IPv4
	l4      []byte // transport bytes present (at least 8)
	proto   uint8
	src     [4]byte
	dst     [4]byte
	srcPort uint16 // TCP/UDP port, or ICMP echo identifier
	dstPort uint16
	spi     uint32 // ESP
}

// parseEmbedded validates and parses the packet inside an ICMP error.
func parseEmbedded(icmp header.ICMPv4) (embedded, DropReason) {
	var in embedded
	if !icmpChecksumValid(icmp) {
		return in, DropBadICMPChecksum
	}
	b := icmp[header.ICMPv4MinimumSize:]
	if len(b) < header.IPv4MinimumSize || header.IPVersion(b) != header.IPv4Version {
		return in, DropMalformed
	}
	ip := header.IPv4(b)
	hlen := int(ip.HeaderLength())
	if hlen < header.IPv4MinimumSize || len(b) < hlen+header.ICMPv4MinimumErrorPayloadSize {
		return in, DropMalformed
	}
	if !header.IPv4(b[:hlen]).IsChecksumValid() {
		return in, DropBadICMPChecksum
	}
	if ip.FragmentOffset() != 0 {
		// A non-first fragment's error has no ports to match.
		return in, DropICMPError
	}
	in.ip = header.IPv4(b[:hlen])
	in.l4 = b[hlen:]
	in.proto = ip.Protocol()
	in.src = ip.SourceAddress().As4()
	in.dst = ip.DestinationAddress().As4()
	switch in.proto {
	case ProtoTCP, ProtoUDP:
		in.srcPort = uint16(in.l4[0])<<8 | uint16(in.l4[1])
		in.dstPort = uint16(in.l4[2])<<8 | uint16(in.l4[3])
	case ProtoICMP:
		t := header.ICMPv4(in.l4)
		if !isICMPQuery(t.Type()) {
			// Errors about errors are never sent (RFC 1122).
			return in, DropICMPError
		}
		in.srcPort = t.Ident()
		in.dstPort = in.srcPort
	case ProtoESP:
		// Fragmentation Needed about ESP is how an IPsec tunnel learns its
		// path MTU; the SPI names the pair.
		in.spi = uint32(in.l4[0])<<24 | uint32(in.l4[1])<<16 | uint32(in.l4[2])<<8 | uint32(in.l4[3])
	case ProtoGRE:
		// The first 8 bytes of enhanced GRE hold the key: the Call ID
		// names the call (greErrorOwner).
	default:
		return in, DropICMPError
	}
	return in, DropNone
}

// setSrc rewrites the embedded source address and port.
func (in *embedded) setSrc(addr [4]byte, port uint16) {
	in.rewrite(true, addr, port)
}

// setDst rewrites the embedded destination address and port.
func (in *embedded) setDst(addr [4]byte, port uint16) {
	in.rewrite(false, addr, port)
}

func (in *embedded) rewrite(src bool, addr [4]byte, port uint16) {
	oldAddr, oldPort := in.dst, in.dstPort
	if src {
		oldAddr, oldPort = in.src, in.srcPort
	}
	newA, oldA := tcpip.AddrFrom4(addr), tcpip.AddrFrom4(oldAddr)
	if src {
		in.ip.SetSourceAddressWithChecksumUpdate(newA)
		in.src, in.srcPort = addr, port
	} else {
		in.ip.SetDestinationAddressWithChecksumUpdate(newA)
		in.dst, in.dstPort = addr, port
	}
	switch in.proto {
	case ProtoTCP:
		in.rewriteTransport(src, oldA, newA, oldPort, port, 16)
	case ProtoUDP:
		if in.l4[6]|in.l4[7] != 0 { // UDP checksum 0 means none
			in.rewriteTransport(src, oldA, newA, oldPort, port, 6)
		} else {
			in.putPort(src, port)
		}
	case ProtoICMP:
		// The echo identifier sits at the same offset in both directions,
		// and the ICMP checksum does not cover a pseudo-header.
		echo := header.ICMPv4(in.l4)
		if echo.Ident() != port {
			echo.SetIdentWithChecksumUpdate(port)
		}
	}
}

// rewriteTransport changes a port and the pseudo-header address of an
// embedded TCP or UDP header whose checksum sits at csumOff, when those
// bytes were included in the error.
func (in *embedded) rewriteTransport(src bool, oldA, newA tcpip.Address, oldPort, newPort uint16, csumOff int) {
	in.putPort(src, newPort)
	if len(in.l4) < csumOff+2 {
		return
	}
	xsum := uint16(in.l4[csumOff])<<8 | uint16(in.l4[csumOff+1])
	o4, n4 := oldA.As4(), newA.As4()
	xsum = updateChecksum16(xsum, uint16(o4[0])<<8|uint16(o4[1]), uint16(n4[0])<<8|uint16(n4[1]))
	xsum = updateChecksum16(xsum, uint16(o4[2])<<8|uint16(o4[3]), uint16(n4[2])<<8|uint16(n4[3]))
	xsum = updateChecksum16(xsum, oldPort, newPort)
	in.l4[csumOff], in.l4[csumOff+1] = byte(xsum>>8), byte(xsum)
}

func (in *embedded) putPort(src bool, port uint16) {
	off := 2
	if src {
		off = 0
	}
	in.l4[off], in.l4[off+1] = byte(port>>8), byte(port)
}

// icmpErrorInbound translates an error from the WAN about a packet the NAT
// sent out: the embedded source is the WAN address and a mapped port.
func (e *Engine) icmpErrorInbound(p *Packet) Result {
	in, why := parseEmbedded(header.ICMPv4(p.L4))
	if why != DropNone {
		return drop(why)
	}
	if in.src != e.wan {
		return drop(DropICMPError)
	}
	var to endpoint
	if m := e.table.lookupExt(in.proto, in.srcPort); m != nil {
		// Only about a live flow (RFC 5508 REQ-4): the quoted
		// packet's destination must be a remote the mapping talks to, so
		// an error forged from anywhere cannot reach the LAN host.
		if e.table.flow(m, quotedRemote(&in, true), e.now()) == nil {
			return drop(DropICMPError)
		}
		to = m.Int
	} else if host, ok := e.ipsecErrorOwner(&in); ok {
		to = host
	} else {
		// About a packet the host itself sent: the host's stack gets its
		// own copy and handles it.
		return Result{Verdict: VerdictHost}
	}
	in.setSrc(to.addr, to.port)
	p.IP.SetDestinationAddressWithChecksumUpdate(tcpip.AddrFrom4(to.addr))
	p.Dst = to.addr
	setICMPChecksum(header.ICMPv4(p.L4))
	return toLAN
}

// icmpErrorOutbound translates an error a LAN host sends about a packet it
// received through the NAT: the embedded destination is the LAN host.
func (e *Engine) icmpErrorOutbound(p *Packet) Result {
	in, why := parseEmbedded(header.ICMPv4(p.L4))
	if why != DropNone {
		return drop(why)
	}
	if in.dst != p.Src {
		return drop(DropICMPError)
	}
	m := e.table.lookupInt(in.proto, endpoint{in.dst, in.dstPort})
	if m == nil || e.table.flow(m, quotedRemote(&in, false), e.now()) == nil {
		return drop(DropICMPError)
	}
	in.setDst(e.wan, m.Ext)
	p.IP.SetSourceAddressWithChecksumUpdate(tcpip.AddrFrom4(e.wan))
	p.Src = e.wan
	setICMPChecksum(header.ICMPv4(p.L4))
	return toWAN
}

// quotedRemote is the remote endpoint of the flow a quoted packet belongs
// to: its destination when the NAT sent it out, its source when it came in.
// ICMP query flows are keyed by the remote address alone.
func quotedRemote(in *embedded, sentOut bool) endpoint {
	ep := endpoint{in.src, in.srcPort}
	if sentOut {
		ep = endpoint{in.dst, in.dstPort}
	}
	if in.proto == ProtoICMP {
		ep.port = 0
	}
	return ep
}

// ipsecErrorOwner finds the LAN endpoint behind an ICMP error about VPN
// traffic, which the port table does not hold: ESP by its outbound SPI, IKE
// on 500 by the SPIs in the quoted header, NAT-T on 4500 by its flow, GRE by
// its Call ID or address binding.
func (e *Engine) ipsecErrorOwner(in *embedded) (endpoint, bool) {
	switch {
	case in.proto == ProtoESP:
		if pr := e.esp.outBySPI[espInKey{in.dst, in.spi}]; pr != nil {
			return endpoint{pr.host, 0}, true
		}
	case in.proto == ProtoUDP && in.srcPort == PortNATT:
		if f := e.ike.natt[nattKey{endpoint{in.dst, in.dstPort}}]; f != nil {
			return f.host, true
		}
	case in.proto == ProtoUDP && in.srcPort == PortIKE && len(in.l4) >= 8:
		if h, ok := parseIKEHeader(in.l4[8:]); ok {
			if s := e.ike.lookup(in.dst, h, e.now()); s != nil {
				return s.host, true
			}
		}
	case in.proto == ProtoGRE:
		return e.greErrorOwner(in)
	}
	return endpoint{}, false
}

// greErrorOwner finds the LAN host that sent the GRE an ICMP error quotes:
// enhanced GRE names the server's Call ID (unique at that server), other
// GRE goes by the address binding; a GRE forward owns the rest.
func (e *Engine) greErrorOwner(in *embedded) (endpoint, bool) {
	// An error quotes only 8 bytes of GRE for sure: enough for the key,
	// not for the sequence number parseGRE wants room for.
	g := greHeader(in.l4)
	if g.version() == 1 && g.flags()&greFlagKey != 0 && g.protocol() == GREProtoPPP {
		// The server's Call ID names one call at that server (the
		// live one when the server reused an ID): an index lookup.
		if call := e.pptp.callAtPeer(in.dst, g.callID()); call != nil {
			return endpoint{call.client, 0}, true
		}
	} else if g.version() == 0 {
		if b := e.gre.bindings[in.dst]; b != nil && b.expires > e.now() {
			return endpoint{b.host, 0}, true
		}
	}
	if e.gre.forward {
		return endpoint{e.gre.forwardTo, 0}, true
	}
	return endpoint{}, false
}
