package nat

import (
	"net/netip"
	"sync/atomic"
)

// A WAN address that changes under the engine (DHCP renewal, PPPoE
// reconnect) ends every conversation masqueraded behind the old one: the
// remotes know the LAN hosts only by the old address and port, and nothing
// they send reaches the new one. So, as Linux's MASQUERADE forgets its
// conntrack entries when the address of its interface goes, SetWANAddr drops
// all of that state at once instead of letting it time out: dynamic
// mappings with their flows, IKE sessions and NAT-T flows, ESP pairs, PPTP
// control connections and calls, GRE bindings, and the fragments in flight.
// Port forwards are configuration and stay (on the new address), but their
// flows go: the remotes talked to the old address.

// wanAddrWord is the WAN address as one word, for readers without the lock.
type wanAddrWord struct{ v atomic.Uint32 }

func (w *wanAddrWord) load() [4]byte {
	v := w.v.Load()
	return [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}
}

func (w *wanAddrWord) store(a [4]byte) {
	w.v.Store(uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]))
}

// WANChangeCounters count the WAN address changes the engine followed.
type WANChangeCounters struct {
	// Changes counts SetWANAddr calls that changed the address.
	Changes atomic.Uint64
	// MappingsDropped counts the dynamic mappings those changes dropped.
	MappingsDropped atomic.Uint64
	// FlowsDropped counts the flows (forwarded ones included) they dropped.
	FlowsDropped atomic.Uint64
}

// WANChangeStats is what one SetWANAddr dropped.
type WANChangeStats struct {
	Mappings    int // dynamic mappings
	Flows       int // flows of every mapping, forwards included
	IKESessions int
	NATTFlows   int
	ESPPairs    int
	PPTPCalls   int
	GREBindings int
}

// SetWANAddr moves the engine to a new WAN address and drops every
// mapping, flow and VPN association bound to the old one (see above); port
// forwards stay and answer on the new address. It returns the number of
// dynamic mappings dropped; setting the current address changes nothing.
func (e *Engine) SetWANAddr(a netip.Addr) (dropped int) {
	return e.SetWANAddrStats(a).Mappings
}

// SetWANAddrStats is SetWANAddr reporting everything it dropped.
func (e *Engine) SetWANAddrStats(a netip.Addr) WANChangeStats {
	var st WANChangeStats
	if !a.Is4() {
		return st
	}
	e.mu.Lock()
	old := e.wan
	if a.As4() == old {
		e.mu.Unlock()
		return st
	}
	now := e.now()
	t := &e.table

	// Flows first: removeFlow keeps the per-host accounting, the gauges
	// and the expendable lists right, frees a dynamic mapping with its
	// last flow, and tells the PPTP tracker its control connection is
	// gone. The timer wheel skips the dead flows.
	dynamic := t.dynamic
	for _, f := range t.flows {
		t.removeFlow(f, now, "")
		st.Flows++
	}
	// Mappings without flows do not exist (the last flow takes its
	// mapping along), but stay safe against one left behind.
	for _, m := range t.byExt {
		if !m.Static && m.flows == 0 {
			t.removeMapping(m, now)
		}
	}
	st.Mappings = dynamic - t.dynamic
	clear(t.byRemote)

	// IKE and NAT-T.
	for _, s := range e.ike.byI {
		e.ike.remove(s)
		st.IKESessions++
	}
	for _, s := range e.ike.byR {
		e.ike.remove(s)
	}
	clear(e.ike.byR)
	clear(e.ike.lastIKE)
	clear(e.ike.unconf)
	st.NATTFlows = len(e.ike.natt)
	clear(e.ike.natt)

	// ESP: unlink gives back each pair's quotas and indexes.
	h := e.esp
	for pr := range h.pairs {
		h.unlink(pr)
		st.ESPPairs++
	}
	clear(h.waiting)
	clear(h.recent)
	clear(h.pending)
	clear(h.squelch)
	clear(h.waitQ)
	h.waitQ = h.waitQ[:0]

	// PPTP: the control connections' flows are gone, which ended their
	// calls with a grace time for GRE in flight; no GRE can arrive on the
	// old address, so the calls are released now.
	for k, c := range e.pptp.conns {
		for _, call := range c.calls {
			e.pptp.release(call)
			st.PPTPCalls++
		}
		c.calls = nil
		delete(e.pptp.conns, k)
	}
	st.GREBindings = len(e.gre.bindings)
	clear(e.gre.bindings)

	// Fragments translated for the old address, and the ones from the
	// WAN that wait for a first fragment addressed to it.
	e.frags.wanChanged()

	e.wan = a.As4()
	e.cfg.WANAddr = a
	e.wanWord.store(e.wan)
	e.mu.Unlock()

	e.WANChanges.Changes.Add(1)
	e.WANChanges.MappingsDropped.Add(uint64(st.Mappings))
	e.WANChanges.FlowsDropped.Add(uint64(st.Flows))
	e.log.Info().Stringer("old", netip.AddrFrom4(old)).Stringer("new", a).
		Int("mappings", st.Mappings).Int("flows", st.Flows).
		Int("ike_sessions", st.IKESessions).Int("natt_flows", st.NATTFlows).
		Int("esp_pairs", st.ESPPairs).Int("pptp_calls", st.PPTPCalls).Int("gre_bindings", st.GREBindings).
		Msg("WAN address changed: mappings bound to the old address dropped, forwards kept")
	return st
}
