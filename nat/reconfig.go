package nat

import "slices"

// ReconfigResult says what Reconfigure changed.
type ReconfigResult struct {
	// Changed names the settings whose value changed, in Config's order
	// ("udp_timeout", "limits", "forwards", ...).
	Changed []string
	// Added and Removed are the forwards installed and taken away; a
	// forward whose target changed is one of each.
	Added, Removed []Forward
	// FlowsEnded counts the flows ended: those through removed forwards
	// and those of dynamic mappings an added forward took the internal
	// endpoint of.
	FlowsEnded int
}

// Reconfigure applies a new configuration to the running engine without
// dropping any mapping or flow that the new configuration still allows.
//
// What changes, and when it takes effect:
//
//   - Timeouts (UDP, TCP, ICMP, unreplied, IPsec, PPTP) apply from each
//     flow's next refresh: a flow keeps the expiry it has until a packet
//     refreshes it, as a kernel's conntrack does after a sysctl change.
//   - Limits and MaxMappings apply to new state only. A bound lowered below
//     what is held evicts nothing; new flows, mappings, SPI pairs or calls
//     are refused (or expendable flows evicted first, as at any full table)
//     until the state falls under the bound by expiry.
//   - UDPFiltering and UDPInboundRefresh apply to the next packet.
//   - Forwards are compared as a whole (protocol, ports, target): an
//     unchanged forward keeps its mappings and flows. A removed TCP/UDP
//     forward takes its static mappings away and ends every flow through
//     them; its external ports are free again. A removed ESP/GRE forward
//     stops taking the protocol's unclaimed packets. An added forward
//     installs its static mappings; when a dynamic mapping holds the
//     forward's internal endpoint (the target sent from that port), that
//     mapping and its flows end: the configuration wins, as it does at
//     start, where the forward exists first.
//
// WANAddr, Ports (the mapping range) and Clock are not changed here: the
// range needs a restart, the WAN address has its own path.
func (e *Engine) Reconfigure(cfg Config) ReconfigResult {
	cfg = cfg.withDefaults()
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.cfg
	var res ReconfigResult
	changed := func(name string, differs bool) {
		if differs {
			res.Changed = append(res.Changed, name)
		}
	}
	changed("udp_timeout", old.UDPTimeout != cfg.UDPTimeout)
	changed("tcp_established_timeout", old.TCPEstablishedTimeout != cfg.TCPEstablishedTimeout)
	changed("tcp_transitory_timeout", old.TCPTransitoryTimeout != cfg.TCPTransitoryTimeout)
	changed("icmp_timeout", old.ICMPTimeout != cfg.ICMPTimeout)
	changed("udp_filtering", old.UDPFiltering != cfg.UDPFiltering)
	changed("max_mappings", old.MaxMappings != cfg.MaxMappings)
	changed("udp_inbound_refresh", old.UDPInboundRefresh != cfg.UDPInboundRefresh)
	changed("limits", old.Limits != cfg.Limits)
	changed("ipsec", old.IPsec != cfg.IPsec)
	changed("pptp", old.PPTP != cfg.PPTP)

	now := e.now()
	for _, f := range old.Forwards {
		if !slices.Contains(cfg.Forwards, f) {
			res.FlowsEnded += e.removeForward(f, now)
			res.Removed = append(res.Removed, f)
		}
	}
	for _, f := range cfg.Forwards {
		if !slices.Contains(old.Forwards, f) {
			res.FlowsEnded += e.installForward(f, now)
			res.Added = append(res.Added, f)
		}
	}
	changed("forwards", len(res.Added)+len(res.Removed) > 0)

	e.cfg.UDPTimeout = cfg.UDPTimeout
	e.cfg.TCPEstablishedTimeout = cfg.TCPEstablishedTimeout
	e.cfg.TCPTransitoryTimeout = cfg.TCPTransitoryTimeout
	e.cfg.ICMPTimeout = cfg.ICMPTimeout
	e.cfg.UDPFiltering = cfg.UDPFiltering
	e.cfg.MaxMappings = cfg.MaxMappings
	e.cfg.UDPInboundRefresh = cfg.UDPInboundRefresh
	e.cfg.Limits = cfg.Limits
	e.cfg.IPsec = cfg.IPsec
	e.cfg.PPTP = cfg.PPTP
	e.cfg.Forwards = slices.Clone(cfg.Forwards)
	return res
}

// installForward adds one forward to the running engine and returns how
// many flows it ended to take its internal endpoints.
func (e *Engine) installForward(f Forward, now int64) int {
	switch f.Proto {
	case ProtoTCP, ProtoUDP:
		ended := 0
		to := f.To.As4()
		for p := int(f.Ports.First); p <= int(f.Ports.Last); p++ {
			in := endpoint{to, f.ToPort + uint16(p-int(f.Ports.First))}
			if f.ToPort == 0 {
				in.port = uint16(p)
			}
			if m := e.table.byInt[intKey{f.Proto, in}]; m != nil && !m.Static {
				ended += e.table.endMapping(m, now, "forward added on its internal endpoint")
			}
			if m := e.table.byExt[extKey{f.Proto, uint16(p)}]; m != nil && !m.Static {
				// Not reachable with a valid configuration (forwards
				// lie outside the mapping range), kept for safety.
				ended += e.table.endMapping(m, now, "forward added on its external port")
			}
		}
		e.table.addForward(f)
		return ended
	case ProtoESP:
		e.esp.forward, e.esp.forwardTo = true, f.To.As4()
	case ProtoGRE:
		e.gre.forward, e.gre.forwardTo = true, f.To.As4()
	}
	return 0
}

// removeForward takes one forward away from the running engine and
// returns how many flows through it ended.
func (e *Engine) removeForward(f Forward, now int64) int {
	switch f.Proto {
	case ProtoTCP, ProtoUDP:
		ended := 0
		for p := int(f.Ports.First); p <= int(f.Ports.Last); p++ {
			m := e.table.byExt[extKey{f.Proto, uint16(p)}]
			if m == nil || !m.Static {
				continue
			}
			ended += e.table.endMapping(m, now, "forward removed")
		}
		return ended
	case ProtoESP:
		if e.esp.forwardTo == f.To.As4() {
			e.esp.forward, e.esp.forwardTo = false, [4]byte{}
		}
	case ProtoGRE:
		if e.gre.forwardTo == f.To.As4() {
			e.gre.forward, e.gre.forwardTo = false, [4]byte{}
		}
	}
	return 0
}

// endMapping ends every flow of a mapping and removes the mapping, static
// or dynamic, freeing its external port. It returns the flows ended.
func (t *table) endMapping(m *Mapping, now int64, why string) int {
	var flows []*Flow
	for _, f := range t.flows {
		if f.m == m {
			flows = append(flows, f)
		}
	}
	static := m.Static
	// A static mapping outlives its flows in removeFlow; a dynamic one
	// goes with its last flow there.
	for _, f := range flows {
		t.removeFlow(f, now, why)
	}
	if !static {
		if t.byExt[extKey{m.Proto, m.Ext}] == m && m.flows == 0 {
			t.removeMapping(m, now) // had no flows at all
		}
		return len(flows)
	}
	if t.byExt[extKey{m.Proto, m.Ext}] == m {
		delete(t.byExt, extKey{m.Proto, m.Ext})
	}
	if t.byInt[intKey{m.Proto, m.Int}] == m {
		delete(t.byInt, intKey{m.Proto, m.Int})
	}
	if !(m.Proto == ProtoUDP && (m.Ext == PortIKE || m.Ext == PortNATT)) {
		t.pools[m.Proto].release(m.Ext)
	}
	t.e.log.Debug().Str("proto", protoName(m.Proto)).
		Stringer("lan", m.Int.AddrPort()).
		Stringer("wan", endpoint{t.e.wan, m.Ext}.AddrPort()).
		Int("flows", len(flows)).
		Msg("forward mapping removed")
	return len(flows)
}
