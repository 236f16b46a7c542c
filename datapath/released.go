package datapath

import (
	"github.com/vpnmasq/vpnmasq/nat"
	"github.com/vpnmasq/vpnmasq/offload"
)

// sendReleased queues fragments that the engine held because they came
// before their first fragment, and released translated when it passed
// (nat/frag.go): from the LAN (outbound, the LAN loop's) or from the WAN
// (the WAN loop's). The loop calls it after a pass, so they leave in the
// same write as their first fragment, behind it. It takes at most max, in
// buffers from pool, and reports whether more are waiting.
func (p *Path) sendReleased(outbound bool, o *outbox, pool *offload.Segments, pk *nat.Packet, max int) bool {
	for range max {
		if !p.nat.HasReleased(outbound) {
			return false
		}
		n, v := p.nat.TakeReleased(outbound, pool.Next)
		if n == 0 {
			return p.nat.HasReleased(outbound)
		}
		buf := pool.Out[len(pool.Out)-1]
		if pk.Parse(buf[Headroom:Headroom+n]) != nat.DropNone {
			p.drop(nat.DropMalformed) // the engine checked it when it came
			continue
		}
		switch {
		case v == nat.VerdictToWAN:
			p.sendWAN(buf, pk, o, len(pk.Buf) > p.wanMTU)
		case v == nat.VerdictToLAN && outbound: // hairpinned
			p.stats.HairpinPackets.Add(1)
			o.toLAN(buf, n)
		case v == nat.VerdictToLAN:
			// Like fromWAN: expiring on the way in. A non-first
			// fragment gets no Time Exceeded (it quotes no ports).
			if pk.IP.TTL() <= 1 {
				p.drop(nat.DropTTLExceeded)
				continue
			}
			p.deliverLAN(buf, pk, o, offload.Header{})
		}
	}
	return p.nat.HasReleased(outbound)
}
