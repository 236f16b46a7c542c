package nat

import (
	"fmt"
	"io"
	"net/netip"
	"slices"
	"time"
)

// Restored says what RestoreState took over from a state file.
type Restored struct {
	// Age is how old the snapshot was.
	Age time.Duration
	// Kept counts the restored records by kind: mappings, flows, ike,
	// contacts, natt, esp, pending, recent, squelch, pptp_conns,
	// pptp_calls, gre.
	Kept map[string]int
	// Dropped counts the records left out by kind: expired, outside the
	// port range, beyond a limit of the current configuration, or in
	// conflict with state the engine already holds.
	Dropped map[string]int
}

// Total is the number of records kept.
func (r Restored) Total() int {
	n := 0
	for _, v := range r.Kept {
		n += v
	}
	return n
}

// DroppedTotal is the number of records dropped.
func (r Restored) DroppedTotal() int {
	n := 0
	for _, v := range r.Dropped {
		n += v
	}
	return n
}

// RestoreState reads a state file that SaveState wrote and takes its
// state over. It must run on a new engine, before the engine handles a
// packet. The file must be for this engine's WAN address and the LAN
// prefixes lan, and be at most maxAge old (no bound when maxAge is 0); a
// corrupt, foreign, too old or newer-format file returns an error wrapping
// ErrStateCorrupt, ErrStateForeign, ErrStateTooOld or ErrStateNewer, and
// the engine is left as it was. Timers continue from where the snapshot
// left them. What the current configuration does not admit (ports outside
// the range, state beyond a limit) is dropped and counted in Restored.
func (e *Engine) RestoreState(r io.Reader, lan []netip.Prefix, maxAge time.Duration) (Restored, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxStateFile+1))
	if err != nil {
		return Restored{}, err
	}
	if len(b) > maxStateFile {
		return Restored{}, stateCorrupt("larger than %d bytes", maxStateFile)
	}
	s, err := decodeState(b)
	if err != nil {
		return Restored{}, err
	}
	age := e.clock.Now().Sub(s.created)
	if s.wan != e.WANAddr() {
		return Restored{Age: age}, fmt.Errorf("%w: WAN address %s, this router's is %s", ErrStateForeign,
			netip.AddrFrom4(s.wan), netip.AddrFrom4(e.WANAddr()))
	}
	if want := normPrefixes(lan); !slices.Equal(s.lan, want) {
		return Restored{Age: age}, fmt.Errorf("%w: LAN prefixes %v, this router's are %v", ErrStateForeign, s.lan, want)
	}
	if age < -time.Minute {
		return Restored{Age: age}, stateCorrupt("written %s in the future", -age)
	}
	if maxAge > 0 && age > maxAge {
		return Restored{Age: age}, fmt.Errorf("%w: %s old, max_age is %s", ErrStateTooOld, age.Round(time.Millisecond), maxAge)
	}
	res := Restored{Age: age, Kept: map[string]int{}, Dropped: map[string]int{}}
	e.mu.Lock()
	e.restore(s, e.now(), &res)
	e.mu.Unlock()
	return res, nil
}

// restore applies a decoded snapshot at engine time now, under the lock.
func (e *Engine) restore(s *stateSnap, now int64, res *Restored) {
	keep := func(kind string) { res.Kept[kind]++ }
	dropN := func(kind string, n int) {
		if n > 0 {
			res.Dropped[kind] += n
		}
	}
	at := func(rel int64) int64 { return now + rel }
	t := &e.table
	lim := &e.cfg.Limits

	// Mappings and their flows.
	var expendable []*Flow
	for i := range s.mappings {
		sm := &s.mappings[i]
		var m *Mapping
		if sm.static {
			m = t.byExt[extKey{sm.proto, sm.ext}]
			if m == nil || !m.Static || m.Int != sm.in {
				dropN("flows", len(sm.flows)) // the forward is gone or changed
				continue
			}
			m.created, m.lastUsed, m.remote, m.expires = at(sm.created), at(sm.lastUsed), sm.remote, at(sm.expires)
		} else {
			pool := t.pools[sm.proto]
			live := 0
			for _, f := range sm.flows {
				if f.expires > 0 {
					live++
				}
			}
			switch {
			case live == 0,
				sm.proto != ProtoICMP && !pool.inRange(sm.ext),
				pool.isUsed(sm.ext), t.byInt[intKey{sm.proto, sm.in}] != nil,
				t.dynamic >= e.cfg.MaxMappings, e.hostFull(sm.in.addr, quotaMappings):
				dropN("mappings", 1)
				dropN("flows", len(sm.flows))
				continue
			}
			pool.mark(sm.ext)
			e.hostAdmit(sm.in.addr, quotaMappings)
			m = &Mapping{Proto: sm.proto, Int: sm.in, Ext: sm.ext, created: at(sm.created), lastUsed: at(sm.lastUsed),
				remote: sm.remote, expires: at(sm.expires)}
			t.byInt[intKey{sm.proto, sm.in}] = m
			t.byExt[extKey{sm.proto, sm.ext}] = m
			t.dynamic++
			keep("mappings")
		}
		for j := range sm.flows {
			sf := &sm.flows[j]
			k := flowKey{m.Proto, m.Ext, sf.remote}
			if sf.expires <= 0 || len(t.flows) >= lim.MaxFlows || t.flows[k] != nil || e.hostFull(m.Int.addr, quotaFlows) {
				dropN("flows", 1)
				continue
			}
			e.hostAdmit(m.Int.addr, quotaFlows)
			rk := remoteAddrKey{m.Proto, m.Ext, sf.remote.addr}
			ra := t.byRemote[rk]
			if ra == nil {
				ra = &remoteAddr{}
				t.byRemote[rk] = ra
			}
			ra.flows++
			f := &Flow{m: m, ra: ra, remote: sf.remote, expires: at(sf.expires), lastSeen: at(sf.lastSeen),
				tcp: sf.tcp, out: sf.out, in: sf.in}
			if f.expires == 0 {
				f.expires = 1 // zero means "not yet on the wheel"
			}
			if f.out || m.Proto == ProtoTCP {
				ra.expires = max(ra.expires, f.expires)
			}
			t.flows[k] = f
			m.flows++
			t.perProto[protoIndex(m.Proto)]++
			if sf.assured {
				f.assured = true
				t.assured[protoIndex(m.Proto)]++
			} else {
				expendable = append(expendable, f)
			}
			t.wheel.add(f)
			keep("flows")
		}
		if !m.Static && m.flows == 0 {
			t.removeMapping(m, now)
			res.Kept["mappings"]--
			dropN("mappings", 1)
		}
	}
	// Early drop takes the oldest first.
	slices.SortStableFunc(expendable, func(a, b *Flow) int { return cmpI64(a.lastSeen, b.lastSeen) })
	for _, f := range expendable {
		t.list(f)
	}

	e.restoreIKE(s, now, keep, dropN)
	e.restoreESP(s, now, keep, dropN)
	e.restorePPTP(s, now, keep, dropN)

	for _, g := range s.gre {
		if g.expires <= 0 || e.gre.bindings[g.remote] != nil {
			dropN("gre", 1)
			continue
		}
		e.gre.bindings[g.remote] = &greBinding{host: g.host, expires: at(g.expires)}
		keep("gre")
	}
}

func cmpI64(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (e *Engine) restoreIKE(s *stateSnap, now int64, keep func(string), dropN func(string, int)) {
	t := &e.ike
	sessions := slices.Clone(s.ike)
	slices.SortStableFunc(sessions, func(a, b snapIKE) int { return cmpI64(a.created, b.created) })
	for _, x := range sessions {
		ss := &ikeSession{host: x.host, remote: x.remote, remotePort: x.remotePort, ispi: x.ispi, rspi: x.rspi,
			created: now + x.created, lastSeen: now + x.lastSeen, unconfirmed: x.unconfirmed, charged: true}
		ik := ikeKey{x.remote, x.ispi}
		switch {
		case x.ispi == 0, t.dead(ss, now), t.byI[ik] != nil, t.full(), e.hostFull(x.host.addr, quotaIKE),
			x.unconfirmed && len(t.unconf[x.host.addr][x.remote]) >= e.cfg.Limits.MaxRemoteIKE:
			dropN("ike", 1)
			continue
		}
		e.hostAdmit(x.host.addr, quotaIKE)
		t.byI[ik] = ss
		if rk := (ikeKey{x.remote, x.rspi}); x.rspi != 0 && t.byR[rk] == nil {
			t.byR[rk] = ss
		}
		if x.unconfirmed {
			byRemote := t.unconf[x.host.addr]
			if byRemote == nil {
				byRemote = make(map[[4]byte][]*ikeSession, 1)
				t.unconf[x.host.addr] = byRemote
			}
			byRemote[x.remote] = append(byRemote[x.remote], ss)
		}
		keep("ike")
	}
	timeout := t.timeout()
	for _, c := range s.contacts {
		if -c.latestAt >= timeout || len(t.lastIKE) >= e.cfg.IPsec.MaxESP || t.lastIKE[c.remote] != nil {
			dropN("contacts", 1)
			continue
		}
		ic := &ikeContacts{hosts: make(map[[4]byte]int64, len(c.hosts)), latest: c.latest, latestAt: now + c.latestAt}
		for _, h := range c.hosts {
			if -h.at < timeout {
				ic.hosts[h.host] = now + h.at
			}
		}
		t.lastIKE[c.remote] = ic
		keep("contacts")
	}
	for _, n := range s.natt {
		k := nattKey{n.remote}
		if n.expires <= 0 || t.natt[k] != nil || t.nattFull() {
			dropN("natt", 1)
			continue
		}
		t.natt[k] = &nattFlow{host: n.host, expires: now + n.expires}
		keep("natt")
	}
}

func (e *Engine) restoreESP(s *stateSnap, now int64, keep func(string), dropN func(string, int)) {
	h := e.esp
	cfg := h.cfg()
	restored := make([]*espPair, len(s.esp))
	order := make([]int, len(s.esp))
	for i := range order {
		order[i] = i
	}
	// Oldest first: the lists they join (waiting queue, candidates,
	// inbound-only) are oldest first.
	slices.SortStableFunc(order, func(a, b int) int { return cmpI64(s.esp[a].created, s.esp[b].created) })
	for _, i := range order {
		p := &s.esp[i]
		pr := &espPair{host: p.host, remote: p.remote, outSPI: p.outSPI, inSPI: p.inSPI, state: p.state,
			created: now + p.created, lastSeen: now + p.lastSeen, waitDeadline: now + p.waitDeadline,
			retries: int(p.retries), firstSeq: p.firstSeq}
		hr := hostRemote{p.host, p.remote}
		expired := p.state == espWaiting && now > pr.waitDeadline+dur(cfg.ESPWait) ||
			p.state != espWaiting && now-pr.lastSeen >= dur(cfg.ESPTimeout)
		conflict := p.inSPI != 0 && h.bySPI[p.inSPI] != nil ||
			p.outSPI != 0 && h.out[espOutKey{p.host, p.remote, p.outSPI}] != nil
		full := p.charged && (h.npairs >= cfg.MaxESP || e.hostFull(p.host, quotaESP)) ||
			p.state == espTentative && len(h.cands[hr]) >= espMaxCandidates ||
			p.state == espInboundOnly && len(h.inOnly[p.host][p.remote]) >= espMaxInboundOnly
		if expired || conflict || full {
			dropN("esp", 1)
			continue
		}
		if p.charged {
			pr.charged = true
			h.npairs++
			e.hostAdmit(p.host, quotaESP)
		}
		h.link(pr)
		switch p.state {
		case espWaiting:
			h.waitQ = append(h.waitQ, pr)
		case espTentative:
			h.cands[hr] = append(h.cands[hr], pr)
		case espInboundOnly:
			h.addInOnly(pr)
		}
		if p.waiting && h.waiting[p.remote] == nil {
			h.waiting[p.remote] = pr
		}
		restored[i] = pr
		keep("esp")
	}
	for i, pr := range restored {
		if pr != nil && s.esp[i].claim >= 0 {
			if c := restored[s.esp[i].claim]; c != nil && c.state == espWaiting {
				pr.claim = c
			}
		}
	}
	for _, p := range s.pending {
		var list []pendingInbound
		for _, pi := range p.list {
			if -pi.seen <= dur(cfg.ESPWait) {
				pi.seen += now
				list = append(list, pi)
			}
		}
		if len(list) == 0 || len(h.pending) >= cfg.MaxESP || h.pending[p.remote] != nil {
			dropN("pending", 1)
			continue
		}
		h.pending[p.remote] = list
		keep("pending")
	}
	for _, r := range s.recent {
		if r.claim.until < 0 || len(h.recent) >= cfg.MaxESP {
			dropN("recent", 1)
			continue
		}
		h.recent[r.remote] = recentClaim{host: r.claim.host, at: now + r.claim.at, until: now + r.claim.until}
		keep("recent")
	}
	for _, q := range s.squelch {
		if q.until <= 0 || len(h.squelch) >= cfg.MaxESP {
			dropN("squelch", 1)
			continue
		}
		h.squelch[q.k] = now + q.until
		keep("squelch")
	}
}

func (e *Engine) restorePPTP(s *stateSnap, now int64, keep func(string), dropN func(string, int)) {
	pt := &e.pptp
	for i := range s.pptp {
		sc := &s.pptp[i]
		if pt.conns[sc.key] != nil {
			dropN("pptp_conns", 1)
			dropN("pptp_calls", len(sc.calls))
			continue
		}
		c := &pptpConn{key: sc.key, dirs: sc.dirs, lastSeen: now + sc.lastSeen, closed: sc.closed, gone: sc.gone}
		// The record lives with the TCP flow of the control connection:
		// without it (dropped, or expired) the connection is gone.
		flowGone := true
		if m := e.table.lookupInt(ProtoTCP, sc.key.client); m != nil && e.table.flow(m, sc.key.server, now) != nil {
			flowGone = false
		}
		for _, scall := range sc.calls {
			server, client := sc.key.server.addr, sc.key.client.addr
			ck := pptpCallKey{server, scall.masq}
			switch {
			case scall.masq == 0, pt.calls[ck] != nil, len(pt.calls) >= e.cfg.PPTP.MaxCalls,
				e.hostFull(client, quotaCalls), scall.ending && scall.releaseAt <= 0:
				dropN("pptp_calls", 1)
				continue
			}
			e.hostAdmit(client, quotaCalls)
			call := &pptpCall{conn: c, client: client, server: server, orig: scall.orig, masq: scall.masq,
				peer: scall.peer, peerKnown: scall.peerKnown, created: now + scall.created,
				greOut: scall.greOut, greIn: scall.greIn}
			if scall.ending {
				call.releaseAt = now + scall.releaseAt
			}
			pt.calls[ck] = call
			pt.perServer[server]++
			if ok := (pptpOrigKey{c.key, call.orig}); call.releaseAt == 0 && pt.byOrig[ok] == nil {
				pt.byOrig[ok] = call
			}
			if call.peerKnown {
				k := pptpPeerKey{server, call.peer}
				pt.byPeer[k] = append(pt.byPeer[k], call)
				pt.liveFirst(k)
			}
			c.calls = append(c.calls, call)
			keep("pptp_calls")
		}
		if c.gone && len(c.calls) == 0 {
			dropN("pptp_conns", 1)
			continue
		}
		pt.conns[c.key] = c
		keep("pptp_conns")
		if flowGone && !c.gone {
			pt.gone(c, now)
		}
	}
}
