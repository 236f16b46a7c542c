package nat

import "gvisor.dev/gvisor/pkg/tcpip"

// Fragments: only the first fragment of a datagram carries the transport
// header, so the NAT translates it like any packet and remembers, by the
// datagram's (source, destination, protocol, IPv4 identification) as it
// arrived, which address the datagram's other fragments must get. Later
// fragments are then rewritten at the IP layer alone.
//
// Fragments that arrive before their first fragment are dropped and counted
// (DropFragment); RFC 4787 REQ-14 asks NATs to accept them out of order,
// which needs buffering this table does not do yet.

const (
	fragLifetime   = int64(30e9) // a datagram's fragments arrive within 30 s or are lost
	fragMaxEntries = 4096
)

type fragKey struct {
	src, dst [4]byte
	id       uint16
	proto    uint8
}

// fragKeyOf must be taken before the packet is rewritten.
func fragKeyOf(p *Packet) fragKey {
	return fragKey{src: p.Src, dst: p.Dst, id: p.ipID(), proto: p.Proto}
}

type fragEntry struct {
	// newAddr replaces the source (outbound) or destination (inbound).
	newAddr [4]byte
	// host is the LAN host whose share the entry counts against.
	host    [4]byte
	expires int64
}

// fragTable remembers first fragments' translations, 4096 entries in all
// and limits.max_fragments_per_host per LAN host, so that one host (or
// an outsider fragmenting towards one host) cannot take the table.
type fragTable struct {
	e   *Engine
	out map[fragKey]fragEntry
	in  map[fragKey]fragEntry
}

func (ft *fragTable) init(e *Engine) {
	ft.e = e
	ft.out = make(map[fragKey]fragEntry)
	ft.in = make(map[fragKey]fragEntry)
}

// remember records the translation of a first fragment (k is its key from
// before the rewrite). When a bound refuses it, the first fragment still
// goes on but the others are dropped as unmatched.
func (ft *fragTable) remember(outbound bool, k fragKey, newAddr [4]byte, now int64) {
	m, host := ft.in, newAddr
	if outbound {
		m, host = ft.out, k.src
	}
	if old, ok := m[k]; ok {
		// The same datagram again (a retransmitted first fragment).
		old.expires = now + fragLifetime
		m[k] = old
		return
	}
	if len(ft.out)+len(ft.in) >= fragMaxEntries {
		ft.e.Limits.refuse(LimitFragments)
		return
	}
	if !ft.e.hostAdmit(host, quotaFragments) {
		return
	}
	m[k] = fragEntry{newAddr: newAddr, host: host, expires: now + fragLifetime}
}

// outboundTail translates a non-first outbound fragment.
func (ft *fragTable) outboundTail(p *Packet, now int64) Result {
	e, ok := ft.out[fragKeyOf(p)]
	if !ok || e.expires <= now {
		return drop(DropFragment)
	}
	p.IP.SetSourceAddressWithChecksumUpdate(tcpip.AddrFrom4(e.newAddr))
	p.Src = e.newAddr
	return toWAN
}

// inboundTail translates a non-first inbound fragment.
func (ft *fragTable) inboundTail(p *Packet, now int64) Result {
	e, ok := ft.in[fragKeyOf(p)]
	if !ok || e.expires <= now {
		return drop(DropFragment)
	}
	p.IP.SetDestinationAddressWithChecksumUpdate(tcpip.AddrFrom4(e.newAddr))
	p.Dst = e.newAddr
	return toLAN
}

func (ft *fragTable) expire(now int64) {
	for _, m := range []map[fragKey]fragEntry{ft.out, ft.in} {
		for k, fe := range m {
			if fe.expires <= now {
				delete(m, k)
				ft.e.hostRelease(fe.host, quotaFragments)
			}
		}
	}
}
