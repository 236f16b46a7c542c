package nat

import (
	"net/netip"
	"sort"
	"time"
)

// Snapshots of the VPN tables, for the admin API and the status page. Each
// takes the engine's lock once and copies what it shows.

// IKESession describes one IKE session tracked by its SPIs.
type IKESession struct {
	Host         netip.AddrPort // LAN host and the port it speaks IKE from
	Remote       netip.AddrPort
	WANPort      uint16 // 500 kept; for NAT-T 4500 kept or a range port
	InitiatorSPI uint64
	ResponderSPI uint64 // 0 until the responder answered
	// Unconfirmed: the remote started this IKE SA and the LAN host has not
	// answered yet (it lives limits.remote_ike_timeout until then).
	Unconfirmed bool
	Age, Idle   time.Duration
}

// IKESessions lists the live IKE sessions, ordered by host and SPI.
func (e *Engine) IKESessions() []IKESession {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	var out []IKESession
	for _, s := range e.ike.byI {
		if e.ike.live(s, now) == nil {
			continue
		}
		wanPort := s.host.port
		if wanPort != PortIKE {
			if f := e.ike.natt[nattKey{endpoint{s.remote, s.remotePort}}]; f != nil && f.host == s.host {
				wanPort = PortNATT
			} else if m := e.table.lookupInt(ProtoUDP, s.host); m != nil {
				wanPort = m.Ext
			}
		}
		out = append(out, IKESession{
			WANPort:      wanPort,
			Host:         s.host.AddrPort(),
			Remote:       netip.AddrPortFrom(netip.AddrFrom4(s.remote), s.remotePort),
			InitiatorSPI: s.ispi,
			ResponderSPI: s.rspi,
			Unconfirmed:  s.unconfirmed,
			Age:          time.Duration(now - s.created),
			Idle:         time.Duration(now - s.lastSeen),
		})
	}
	sort.Slice(out, func(i, j int) bool {
		if c := out[i].Host.Compare(out[j].Host); c != 0 {
			return c < 0
		}
		return out[i].InitiatorSPI < out[j].InitiatorSPI
	})
	return out
}

// AHRefusal is a (LAN host, remote) pair whose AH the engine refused.
type AHRefusal struct {
	Host, Remote netip.Addr
	Packets      uint64
	LastSeen     time.Duration // ago
}

// AHRefusals lists the pairs whose AH was dropped, most recent first.
func (e *Engine) AHRefusals() []AHRefusal {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	h := e.ah
	out := make([]AHRefusal, 0, len(h.refused))
	for hr, r := range h.refused {
		out = append(out, AHRefusal{Host: netip.AddrFrom4(hr.host), Remote: netip.AddrFrom4(hr.remote),
			Packets: r.packets, LastSeen: time.Duration(now - r.last)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].LastSeen < out[j].LastSeen })
	return out
}
