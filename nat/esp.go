package nat

import (
	"encoding/binary"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// ESP (IP protocol 50, RFC 4303) through the NAT.
//
// ESP has no ports, and its two directions use different SPIs with nothing
// unencrypted linking them. An outbound packet's SPI says which LAN host
// sent it; an inbound packet's SPI is chosen by the remote and must be
// associated with a LAN host by watching which host is waiting for one.
//
// As in the VPN Masquerade HOWTO: an outbound packet with an unseen SPI from
// host L to remote R creates an entry waiting for its inbound SPI, and the
// first inbound packet from R with an unknown SPI binds to it. While one
// entry to R waits, new outbound SPIs from other hosts to R are held back
// (dropped; the hosts retransmit), so the binding stays unambiguous. The
// waiting entry holds the remote for esp_wait (2 min); the waiting host's
// retransmissions re-arm it at most esp_retries (5) times, after which its
// SPI is squelched for esp_squelch (30 s) so that others get a turn.
//
// Better than the HOWTO, an unknown inbound SPI is bound at once when only
// one LAN host can own it: the one host with a live IKE session to R (or,
// among several, the one that exchanged IKE with R most recently, which is
// who just negotiated new SAs), or the one host with ESP to R. That binds
// the new inbound SPI of a rekey even when the remote sends on it before the
// LAN host sends on its new outbound SPI; the host's next unseen outbound
// SPI to R completes that pair instead of waiting. An inbound SPI nobody can
// own yet is remembered (not delivered) and bound to the next LAN host that
// sends a new outbound SPI to R.
//
// SPI 0 is reserved and dropped. An inbound packet whose SPI is bound to
// another remote address is dropped as a spoof. Established pairs idle out
// after esp_timeout (35 min). Every decision is logged at debug ("esp bind").

// espState is where an SPI pair stands.
type espState uint8

const (
	espWaiting     espState = iota // outbound SPI seen, inbound unknown
	espInboundOnly                 // inbound SPI bound ahead of the host's new outbound SPI
	espEstablished
)

func (s espState) String() string {
	switch s {
	case espWaiting:
		return "waiting"
	case espInboundOnly:
		return "inbound-only"
	}
	return "established"
}

// espPair associates a LAN host's outbound SPI with the remote's inbound SPI.
type espPair struct {
	host, remote  [4]byte
	outSPI, inSPI uint32 // 0 while unknown
	state         espState
	created       int64
	lastSeen      int64
	waitDeadline  int64 // espWaiting: holds the remote until then
	retries       int
}

type espOutKey struct {
	host, remote [4]byte
	spi          uint32
}

type espInKey struct {
	remote [4]byte
	spi    uint32
}

// pendingInbound is an inbound SPI from a remote that no LAN host could own
// yet.
type pendingInbound struct {
	spi  uint32
	seen int64
}

// espMaxPending bounds the remembered unowned inbound SPIs per remote.
const espMaxPending = 8

type espHandler struct {
	e         *Engine
	out       map[espOutKey]*espPair
	in        map[espInKey]*espPair
	bySPI     map[uint32]*espPair     // inbound SPIs of every remote, for spoof checks
	waiting   map[[4]byte]*espPair    // remote → the one entry holding it
	inOnly    map[hostRemote]*espPair // inbound-only pairs awaiting the host's outbound SPI
	pending   map[[4]byte][]pendingInbound
	squelch   map[espOutKey]int64 // until when
	forwardTo [4]byte             // an ESP port forward's host, if any
	forward   bool
}

func newESPHandler(e *Engine) *espHandler {
	return &espHandler{
		e:       e,
		out:     make(map[espOutKey]*espPair),
		in:      make(map[espInKey]*espPair),
		bySPI:   make(map[uint32]*espPair),
		waiting: make(map[[4]byte]*espPair),
		inOnly:  make(map[hostRemote]*espPair),
		pending: make(map[[4]byte][]pendingInbound),
		squelch: make(map[espOutKey]int64),
	}
}

func espSPI(p *Packet) (uint32, bool) {
	if len(p.L4) < 8 {
		return 0, false
	}
	return binary.BigEndian.Uint32(p.L4), true
}

func (h *espHandler) cfg() IPsecConfig { return h.e.cfg.IPsec }

func (h *espHandler) logBind(pr *espPair, why string) {
	h.e.log.Debug().
		Stringer("host", endpoint{pr.host, 0}.AddrPort().Addr()).
		Stringer("remote", endpoint{pr.remote, 0}.AddrPort().Addr()).
		Hex("out_spi", u32(pr.outSPI)).Hex("in_spi", u32(pr.inSPI)).
		Stringer("state", pr.state).Str("why", why).
		Msg("esp bind")
}

func (h *espHandler) Outbound(p *Packet, now int64) Result {
	if p.FragOffset != 0 {
		return drop(DropFragment) // handled by the fragment table before this
	}
	spi, ok := espSPI(p)
	if !ok {
		return drop(DropMalformed)
	}
	if h.forward && p.Src == h.forwardTo {
		// The IPsec server behind the router: its ESP leaves with the WAN
		// address, whatever its SPIs.
		return h.send(p)
	}
	if spi == 0 {
		return drop(DropESPZeroSPI)
	}
	k := espOutKey{p.Src, p.Dst, spi}
	if until, ok := h.squelch[k]; ok {
		if now < until {
			return drop(DropESPSquelched)
		}
		delete(h.squelch, k)
	}
	if pr := h.out[k]; pr != nil {
		if pr.state == espWaiting && now > pr.waitDeadline {
			pr.retries++
			if pr.retries > h.cfg().ESPRetries {
				h.unlink(pr)
				h.squelch[k] = now + dur(h.cfg().ESPSquelch)
				h.logBind(pr, "no inbound SPI after all retries: squelched")
				return drop(DropESPSquelched)
			}
			if w := h.waiting[k.remote]; w != nil && w != pr && now <= w.waitDeadline {
				return drop(DropESPHeldBack) // another host's SPI holds the remote now
			}
			pr.waitDeadline = now + dur(h.cfg().ESPWait)
			h.waiting[k.remote] = pr
		}
		pr.lastSeen = now
		return h.send(p)
	}
	return h.newOutbound(p, k, now)
}

// newOutbound handles the first packet on an unseen outbound SPI.
func (h *espHandler) newOutbound(p *Packet, k espOutKey, now int64) Result {
	if len(h.out) >= h.e.cfg.IPsec.MaxESP {
		return Result{Verdict: VerdictDrop, Reason: DropTableFull, Unreachable: true}
	}
	// The remote rekeyed first and its new inbound SPI is already bound
	// to this host: this is the other half.
	if pr := h.inOnly[hostRemote{k.host, k.remote}]; pr != nil {
		delete(h.inOnly, hostRemote{k.host, k.remote})
		pr.outSPI, pr.state, pr.lastSeen = k.spi, espEstablished, now
		h.out[k] = pr
		h.logBind(pr, "host's new outbound SPI completes the pair the remote started")
		return h.send(p)
	}
	// An inbound SPI from this remote is waiting for an owner.
	if list := h.livePending(k.remote, now); len(list) > 0 {
		pi := list[0]
		h.pending[k.remote] = list[1:]
		pr := &espPair{host: k.host, remote: k.remote, outSPI: k.spi, inSPI: pi.spi, state: espEstablished, created: now, lastSeen: now}
		h.link(pr)
		h.logBind(pr, "new outbound SPI takes the remote's unowned inbound SPI")
		return h.send(p)
	}
	if w := h.waiting[k.remote]; w != nil && w.host != k.host && now <= w.waitDeadline {
		h.e.log.Debug().Stringer("host", p.SrcAddr()).Stringer("remote", p.DstAddr()).
			Hex("out_spi", u32(k.spi)).Stringer("waiting_host", endpoint{w.host, 0}.AddrPort().Addr()).
			Msg("esp held back: another host's new SPI to this remote awaits its reply")
		return drop(DropESPHeldBack)
	}
	if w := h.waiting[k.remote]; w != nil {
		// Its wait ran out (or it is this host's own older SPI): the
		// remote is free for a new waiting entry.
		delete(h.waiting, k.remote)
	}
	pr := &espPair{host: k.host, remote: k.remote, outSPI: k.spi, state: espWaiting, created: now, lastSeen: now,
		waitDeadline: now + dur(h.cfg().ESPWait)}
	h.out[k] = pr
	h.waiting[k.remote] = pr
	h.logBind(pr, "new outbound SPI waits for the remote's inbound SPI")
	return h.send(p)
}

func (h *espHandler) send(p *Packet) Result {
	p.IP.SetSourceAddressWithChecksumUpdate(tcpip.AddrFrom4(h.e.wan))
	p.Src = h.e.wan
	return toWAN
}

func (h *espHandler) deliver(p *Packet, host [4]byte) Result {
	p.IP.SetDestinationAddressWithChecksumUpdate(tcpip.AddrFrom4(host))
	p.Dst = host
	return toLAN
}

func (h *espHandler) Inbound(p *Packet, now int64) Result {
	if p.FragOffset != 0 {
		return drop(DropFragment)
	}
	spi, ok := espSPI(p)
	if !ok {
		return drop(DropMalformed)
	}
	if spi == 0 {
		return drop(DropESPZeroSPI)
	}
	if pr := h.in[espInKey{p.Src, spi}]; pr != nil {
		pr.lastSeen = now
		return h.deliver(p, pr.host)
	}
	if pr := h.bySPI[spi]; pr != nil && pr.remote != p.Src {
		h.e.log.Debug().Stringer("from", p.SrcAddr()).Hex("in_spi", u32(spi)).
			Stringer("bound_remote", endpoint{pr.remote, 0}.AddrPort().Addr()).
			Msg("esp with a bound SPI from another address: dropped")
		return drop(DropESPSpoofed)
	}
	if h.forward && h.waiting[p.Src] == nil {
		// No LAN host's new SPI to this remote awaits its answer, so no
		// pair claims this SPI: it is the IPsec server's.
		return h.deliver(p, h.forwardTo)
	}
	return h.newInbound(p, spi, now)
}

// newInbound binds an unknown inbound SPI to the LAN host that can own it.
func (h *espHandler) newInbound(p *Packet, spi uint32, now int64) Result {
	remote := p.Src
	if w := h.waiting[remote]; w != nil {
		delete(h.waiting, remote)
		w.inSPI, w.state, w.lastSeen = spi, espEstablished, now
		h.link(w)
		h.logBind(w, "first unknown inbound SPI answers the waiting outbound SPI")
		return h.deliver(p, w.host)
	}
	if host, why, ok := h.soleOwner(remote, now); ok {
		if old := h.inOnly[hostRemote{host, remote}]; old != nil {
			h.unlink(old) // superseded by a newer rekey
		}
		pr := &espPair{host: host, remote: remote, inSPI: spi, state: espInboundOnly, created: now, lastSeen: now}
		h.link(pr)
		h.inOnly[hostRemote{host, remote}] = pr
		h.logBind(pr, why)
		return h.deliver(p, host)
	}
	list := h.livePending(remote, now)
	found := false
	for _, pi := range list {
		found = found || pi.spi == spi
	}
	// Anyone can send ESP from any address: bound the remotes remembered
	// (by max_esp) as well as the SPIs per remote.
	if !found && len(list) < espMaxPending && (len(list) > 0 || len(h.pending) < h.cfg().MaxESP) {
		h.pending[remote] = append(list, pendingInbound{spi: spi, seen: now})
		h.e.log.Debug().Stringer("remote", p.SrcAddr()).Hex("in_spi", u32(spi)).
			Msg("esp inbound SPI has no owner yet: kept for the next new outbound SPI to this remote")
	}
	return drop(DropESPUnbound)
}

// soleOwner finds the one LAN host an unknown inbound SPI from remote can
// belong to, using what IKE tracking and existing ESP pairs know.
func (h *espHandler) soleOwner(remote [4]byte, now int64) (host [4]byte, why string, ok bool) {
	if n, latest := h.e.ike.hostsWith(remote, now); n == 1 {
		return latest, "only LAN host with a live IKE session to the remote", true
	} else if n > 1 {
		// Several hosts talk IKE with this remote: new SAs come right
		// after an IKE exchange, so the host that had one most recently
		// (within esp_wait) owns the new SPI.
		if at, _ := h.e.ike.lastContact(latest, remote, now); now-at <= dur(h.cfg().ESPWait) {
			return latest, "LAN host with the most recent IKE exchange with the remote", true
		}
		return host, "", false
	}
	var owner [4]byte
	n := 0
	for _, pr := range h.out {
		if pr.remote == remote && pr.host != owner {
			owner = pr.host
			n++
		}
	}
	for hr := range h.inOnly {
		if hr.remote == remote && hr.host != owner {
			owner = hr.host
			n++
		}
	}
	if n == 1 {
		return owner, "only LAN host with ESP to the remote", true
	}
	return host, "", false
}

func (h *espHandler) livePending(remote [4]byte, now int64) []pendingInbound {
	list := h.pending[remote]
	i := 0
	for i < len(list) && now-list[i].seen > dur(h.cfg().ESPWait) {
		i++
	}
	if i == len(list) {
		delete(h.pending, remote)
		return nil
	}
	return list[i:]
}

// link indexes a pair's inbound SPI.
func (h *espHandler) link(pr *espPair) {
	if pr.inSPI != 0 {
		h.in[espInKey{pr.remote, pr.inSPI}] = pr
		h.bySPI[pr.inSPI] = pr
	}
	if pr.outSPI != 0 {
		h.out[espOutKey{pr.host, pr.remote, pr.outSPI}] = pr
	}
}

// unlink removes every index of a pair.
func (h *espHandler) unlink(pr *espPair) {
	if pr.outSPI != 0 {
		delete(h.out, espOutKey{pr.host, pr.remote, pr.outSPI})
	}
	if pr.inSPI != 0 {
		delete(h.in, espInKey{pr.remote, pr.inSPI})
		if h.bySPI[pr.inSPI] == pr {
			delete(h.bySPI, pr.inSPI)
		}
	}
	if h.waiting[pr.remote] == pr {
		delete(h.waiting, pr.remote)
	}
	if h.inOnly[hostRemote{pr.host, pr.remote}] == pr {
		delete(h.inOnly, hostRemote{pr.host, pr.remote})
	}
}

// expire removes idle pairs, stale waiting entries, squelches and pending
// inbound SPIs.
func (h *espHandler) expire(now int64) {
	seen := map[*espPair]bool{}
	check := func(pr *espPair) {
		if seen[pr] {
			return
		}
		seen[pr] = true
		idle := now - pr.lastSeen
		switch {
		case pr.state == espWaiting && now > pr.waitDeadline+dur(h.cfg().ESPWait),
			pr.state != espWaiting && idle >= dur(h.cfg().ESPTimeout):
			h.unlink(pr)
			h.e.log.Debug().Stringer("host", endpoint{pr.host, 0}.AddrPort().Addr()).
				Stringer("remote", endpoint{pr.remote, 0}.AddrPort().Addr()).
				Hex("out_spi", u32(pr.outSPI)).Hex("in_spi", u32(pr.inSPI)).Stringer("state", pr.state).
				Dur("age", time.Duration(now-pr.created)).Msg("esp pair expired")
		}
	}
	for _, pr := range h.out {
		check(pr)
	}
	for _, pr := range h.in {
		check(pr)
	}
	for k, until := range h.squelch {
		if now >= until {
			delete(h.squelch, k)
		}
	}
	for remote := range h.pending {
		h.livePending(remote, now)
	}
}

// ESPPair is an SPI pair as shown to operators.
type ESPPair struct {
	Host, Remote  [4]byte
	OutSPI, InSPI uint32
	State         string
	Age, Idle     time.Duration
}

// ESPPairs returns a snapshot of the ESP associations.
func (e *Engine) ESPPairs() []ESPPair {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	seen := map[*espPair]bool{}
	var out []ESPPair
	add := func(pr *espPair) {
		if seen[pr] {
			return
		}
		seen[pr] = true
		out = append(out, ESPPair{Host: pr.host, Remote: pr.remote, OutSPI: pr.outSPI, InSPI: pr.inSPI,
			State: pr.state.String(), Age: time.Duration(now - pr.created), Idle: time.Duration(now - pr.lastSeen)})
	}
	for _, pr := range e.esp.out {
		add(pr)
	}
	for _, pr := range e.esp.in {
		add(pr)
	}
	return out
}
