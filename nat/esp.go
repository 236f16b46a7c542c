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
// host L to remote R creates an entry waiting for its inbound SPI (L's
// claim on R), and other hosts' new outbound SPIs to R are held back
// (dropped; the hosts retransmit) while it claims R, so the binding stays
// unambiguous. Unlike the HOWTO, whose claim held R for minutes whether or
// not its host was still waiting, the claim lasts for the entry's reply
// window: espReplyWindow (1 s) after L's last packet on that SPI. A
// genuine reply comes one round trip after the packet it answers, so the
// window covers it, and a host answered once that goes quiet (one query
// over a new SA) releases R a second later instead of minutes. A host still
// without its answer retransmits and so keeps its window open; its packet
// on the waiting SPI while another host's window is open on R is held back
// like a new SPI (its reply would be taken for the other host's), and
// takes R once that window closed. At most for esp_wait (2 min): the
// waiting host's retransmissions after that re-arm the wait at most
// esp_retries (5) times, after which its SPI is squelched for esp_squelch
// (30 s) so that others get a turn.
//
// Better than the HOWTO, an unknown inbound SPI also finds its host when
// only one LAN host can own it: the one host with a live IKE session to R
// (or, among several, the one that exchanged IKE with R most recently,
// within esp_wait, which is who just negotiated new SAs), or the one host
// with ESP to R (pairs with the host's own outbound SPI: an inbound-only
// pair proves nothing, see below). That binds the new inbound SPI of a rekey even when the
// remote sends on it before the LAN host sends on its new outbound SPI; the
// host's next unseen outbound SPI to R completes that pair instead of
// waiting. An inbound SPI nobody can own yet is remembered (not delivered)
// and offered to the next LAN host that sends a new outbound SPI to R.
//
// Anyone on the WAN can send ESP from R's address with an SPI of its
// choosing, so binding an unknown inbound SPI is tentative. An unknown SPI
// from R goes, in this order, to: the host whose new outbound SPI to R has
// its reply window open (its claim on R); the host whose claim on R was
// answered while the answered pair's reply window stays open (the host
// keeps sending on it: its real reply may still come, see below; at most
// esp_wait), unless another host's IKE exchange with R is newer; the host
// IKE or ESP knowledge names (above). It is delivered to that host and
// becomes a candidate of it, not yet its binding:
//
//   - A later unknown SPI from R does not replace it: it becomes another
//     candidate, of the host the same order names at its own arrival (at
//     most espMaxCandidates per host and remote, the oldest giving way; the
//     SPI of an evicted candidate is decided afresh at its next packet). A
//     host's IPsec stack drops packets of an SA it does not know, so a
//     forged candidate costs the host nothing.
//   - A candidate is confirmed by a later inbound packet on it with a higher
//     sequence number: a new SA's sequence numbers start at 1 and grow by
//     one per packet (RFC 4303 section 2.2). The first candidate confirmed
//     wins: it answers the host's waiting entry (or becomes an inbound-only
//     pair the host's next new outbound SPI completes, which then counts as
//     an answered claim, see below); the host's other
//     candidates stay its candidates. Candidates idle out after esp_timeout
//     like pairs: a quiet SA's second packet may come minutes after its
//     first, and must still find its host.
//   - A candidate does not end the claim, nor does it prolong it: while
//     the waiting host's reply window is open, other hosts' new SPIs to R
//     stay held back and every unknown SPI from R is a candidate of the
//     waiting host, answered or not; once it closed, other hosts may claim
//     R while the candidates stay the waiting host's. The host's real SA
//     is then confirmed by its own traffic whenever its second packet
//     comes: its SPI is known, whoever claims R since.
//   - SPIs kept while nobody could own them become candidates of the next
//     host that sends a new outbound SPI to R; one confirmed while it was
//     kept answers that host at once.
//
// Hence one forged packet can never bind a host's SA to another host: each
// unknown SPI is attributed by the order above, and a forged packet changes
// none of its inputs — it confirms nothing, ends no claim (reply windows
// are opened and closed by LAN hosts' packets and time alone, never by
// inbound ones), is no ESP pair of a host with R and no IKE contact
// (remote-started IKE sessions do not count until the host answers, see
// ike.go). That is why an answered-once candidate is not confirmed after a
// quiet while: a forged packet racing the genuine reply would be one, and
// if the genuine reply were late it would end the claim early. Two forged
// packets with increasing sequence numbers can confirm a forged SPI and so
// answer the waiting entry; that is why an answered claim lingers while
// its host keeps sending on it (it got no real answer, so it retransmits):
// the host's real SPI arriving after the forgery, a round trip after one of
// those packets, is still its candidate and is confirmed by its own
// traffic. What remains is the HOWTO's own ambiguity, now bounded by the
// reply window: an unknown SPI from R arriving within a host's window
// (another host's SA the remote starts sending on in that second, or a
// reply slower than the window, which then goes by the rest of the order
// or waits as an unowned SPI) is taken for that host's.
//
// Rekeys keep working: a CHILD_SA rekey started by either side, with either
// side sending on the new SAs first, binds through the waiting entry or the
// IKE knowledge (the host that rekeyed had the latest IKE exchange), and an
// IKE SA rekey's new IKE SA is confirmed by the host's answer.
//
// Limits: one LAN host holds at most limits.max_esp_per_host pairs (waiting,
// inbound-only or established), all hosts together ipsec.max_esp. At the
// global bound the oldest waiting entry (an unanswered new SPI, whose host
// retransmits) is evicted, then an inbound-only pair; established pairs are
// never evicted for another host. Inbound-only pairs are what two forged
// packets can create, so there are at most espMaxInboundOnly per (host,
// remote), the oldest giving way, and they give way first when their host
// reaches its share. Candidates are bounded per (host, remote), pending SPIs
// per remote and in remotes, squelches by max_esp.
//
// Lookups per packet are by index: inbound SPI, (remote, outbound SPI) for
// ICMP errors, the hosts with pairs to a remote, and the IKE contacts of a
// remote; nothing ranges over the whole table.
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
	espTentative // a candidate inbound SPI delivered to a host, not yet confirmed
)

func (s espState) String() string {
	switch s {
	case espWaiting:
		return "waiting"
	case espInboundOnly:
		return "inbound-only"
	case espTentative:
		return "tentative"
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
	waitDeadline  int64 // espWaiting: its wait (esp_wait, re-armed by retransmissions) ends then
	retries       int
	lastOut       int64    // the host's last packet on outSPI: its reply window
	firstSeq      uint32   // espTentative: sequence number of its first packet
	claim         *espPair // espTentative: the waiting entry it may answer
	linked        bool
	charged       bool // holds a unit of the host's quotaESP and of max_esp
	counted       bool // in remoteHosts
	// out and in are the pair's health each way (tunnel.go), from the
	// first packet on SPI (a candidate's packets pass to the pair it
	// confirms).
	out, in seqHealth
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
	spi       uint32
	seen      int64
	firstSeq  uint32
	confirmed bool // a later packet had a higher sequence number
}

// recentClaim is a claim on a remote that was answered: it lingers while
// its host keeps sending on the answered pair, at most esp_wait (see the
// header comment).
type recentClaim struct {
	host      [4]byte
	pair      *espPair // the answered pair: the claim lingers while its reply window is open
	at, until int64
}

// espMaxPending bounds the remembered unowned inbound SPIs per remote;
// espMaxCandidates the candidate SPIs per (host, remote).
const (
	espMaxPending     = 8
	espMaxCandidates  = 8
	espMaxInboundOnly = 2 // per (host, remote): a rekey's, and one more
)

// espReplyWindow is how long after a host's packet on a new outbound SPI
// an unknown inbound SPI from the remote is taken as its reply, and so
// how long other hosts' new SPIs to that remote are held back after the
// waiting host's last packet (see the header comment). A genuine reply
// comes one round trip (plus the remote's turnaround) after the packet
// it answers: tens of milliseconds on land, about 600 ms by
// geostationary satellite, so 1 s covers them. It is also the pause a
// host starting an SA right after another host's one waits at most
// (each retransmission of its held-back packet is dropped until then):
// N hosts starting together are served in about N-1 seconds, well
// within what their retransmissions (TCP's first at 1 s, ping every
// second) sit through. It is not configurable: shorter cuts off slow
// genuine replies, longer holds other hosts back for nothing.
const espReplyWindow = time.Second

// replyOpen reports whether pr is a new outbound SPI whose reply window is
// open: its host sent on it within espReplyWindow, and its wait (esp_wait,
// re-armed by the host's retransmissions) has not run out.
func (h *espHandler) replyOpen(pr *espPair, now int64) bool {
	return pr != nil && pr.state == espWaiting && now <= pr.waitDeadline && now-pr.lastOut <= dur(espReplyWindow)
}

type espHandler struct {
	e        *Engine
	out      map[espOutKey]*espPair
	outBySPI map[espInKey]*espPair // by (remote, outbound SPI), for ICMP errors
	in       map[espInKey]*espPair
	bySPI    map[uint32]*espPair     // inbound SPIs of every remote, for spoof checks
	waiting  map[[4]byte]*espPair    // remote → the one entry holding it
	recent   map[[4]byte]recentClaim // remote → its lingering answered claim
	// inOnly holds the inbound-only pairs awaiting the host's outbound
	// SPI, by host and remote, oldest first (at most espMaxInboundOnly).
	inOnly      map[[4]byte]map[[4]byte][]*espPair
	cands       map[hostRemote][]*espPair
	remoteHosts map[[4]byte]map[[4]byte]int // remote → host → its pairs with the remote that have its outbound SPI
	pairs       map[*espPair]struct{}       // every pair and candidate
	npairs      int                         // pairs charged against max_esp
	waitQ       []*espPair                  // waiting entries, oldest first (evicted first)
	pending     map[[4]byte][]pendingInbound
	squelch     map[espOutKey]int64 // until when
	forwardTo   [4]byte             // an ESP port forward's host, if any
	forward     bool
}

func newESPHandler(e *Engine) *espHandler {
	return &espHandler{
		e:           e,
		out:         make(map[espOutKey]*espPair),
		outBySPI:    make(map[espInKey]*espPair),
		in:          make(map[espInKey]*espPair),
		bySPI:       make(map[uint32]*espPair),
		waiting:     make(map[[4]byte]*espPair),
		recent:      make(map[[4]byte]recentClaim),
		inOnly:      make(map[[4]byte]map[[4]byte][]*espPair),
		cands:       make(map[hostRemote][]*espPair),
		remoteHosts: make(map[[4]byte]map[[4]byte]int),
		pairs:       make(map[*espPair]struct{}),
		pending:     make(map[[4]byte][]pendingInbound),
		squelch:     make(map[espOutKey]int64),
	}
}

func espSPI(p *Packet) (uint32, bool) {
	if len(p.L4) < 8 {
		return 0, false
	}
	return binary.BigEndian.Uint32(p.L4), true
}

func espSeq(p *Packet) uint32 { return binary.BigEndian.Uint32(p.L4[4:8]) }

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
		if pr.state == espWaiting {
			// A packet on a new SPI still waiting for its answer asks
			// for a reply again: it (re)opens the host's reply window,
			// which only one host may have open on a remote.
			w := h.waiting[k.remote]
			if now > pr.waitDeadline {
				pr.retries++
				if pr.retries > h.cfg().ESPRetries {
					h.unlink(pr)
					if len(h.squelch) < h.cfg().MaxESP {
						h.squelch[k] = now + dur(h.cfg().ESPSquelch)
					}
					h.logBind(pr, "no inbound SPI after all retries: squelched")
					return drop(DropESPSquelched)
				}
				if w != pr && h.replyOpen(w, now) {
					return drop(DropESPHeldBack) // another SPI's reply window is open on the remote
				}
				pr.waitDeadline = now + dur(h.cfg().ESPWait)
			} else if w != pr && w != nil && w.host != pr.host && h.replyOpen(w, now) {
				return drop(DropESPHeldBack) // its reply would be taken for the other host's
			}
			h.waiting[k.remote] = pr
		}
		pr.lastSeen, pr.lastOut = now, now
		pr.out.note(espSeq(p), true, len(p.Buf), now)
		return h.send(p)
	}
	r := h.newOutbound(p, k, now)
	if pr := h.out[k]; pr != nil && r.Verdict == VerdictToWAN {
		pr.out.note(espSeq(p), true, len(p.Buf), now)
	}
	return r
}

// newOutbound handles the first packet on an unseen outbound SPI.
func (h *espHandler) newOutbound(p *Packet, k espOutKey, now int64) Result {
	hr := hostRemote{k.host, k.remote}
	// The remote rekeyed first and its new inbound SPI is already bound
	// (confirmed) to this host: this is the other half.
	if pr := h.newestInOnly(hr); pr != nil {
		h.dropInOnly(pr)
		pr.outSPI, pr.state, pr.lastSeen, pr.lastOut = k.spi, espEstablished, now, now
		h.link(pr)
		// Its inbound SPI may be a forgery two packets confirmed: the new
		// SPI's real answer may still come, so the host's claim lingers.
		h.recent[k.remote] = recentClaim{host: k.host, pair: pr, at: now, until: now + dur(h.cfg().ESPWait)}
		h.logBind(pr, "host's new outbound SPI completes the pair the remote started")
		return h.send(p)
	}
	if w := h.waiting[k.remote]; w != nil && w.host != k.host && h.replyOpen(w, now) {
		h.e.log.Debug().Stringer("host", p.SrcAddr()).Stringer("remote", p.DstAddr()).
			Hex("out_spi", u32(k.spi)).Stringer("waiting_host", endpoint{w.host, 0}.AddrPort().Addr()).
			Msg("esp held back: another host's new SPI to this remote awaits its reply")
		return drop(DropESPHeldBack)
	}
	if why := h.admit(k.host); why != DropNone {
		return Result{Verdict: VerdictDrop, Reason: why, Unreachable: true}
	}
	if w := h.waiting[k.remote]; w != nil {
		// Its reply window closed (or it is this host's own older SPI):
		// the remote is free for a new waiting entry.
		delete(h.waiting, k.remote)
	}
	pr := &espPair{host: k.host, remote: k.remote, outSPI: k.spi, state: espWaiting, created: now, lastSeen: now, lastOut: now,
		waitDeadline: now + dur(h.cfg().ESPWait), charged: true}
	h.link(pr)
	h.waiting[k.remote] = pr
	h.waitQ = append(h.waitQ, pr)
	delete(h.recent, k.remote) // a newer claim
	h.logBind(pr, "new outbound SPI waits for the remote's inbound SPI")
	// The host's own candidates from this remote may answer it.
	for _, c := range h.cands[hr] {
		if c.claim == nil || !c.claim.linked || c.claim.state != espWaiting {
			c.claim = pr
		}
	}
	// So may the inbound SPIs from this remote that nobody could own: they
	// become this host's candidates, and one already confirmed while it
	// waited answers at once.
	for _, pi := range h.livePending(k.remote, now) {
		if h.bySPI[pi.spi] != nil {
			continue
		}
		c := h.addCandidate(k.host, k.remote, pi.spi, pi.firstSeq, pr, now,
			"the remote's unowned inbound SPI is a candidate for the host's new outbound SPI")
		if pi.confirmed && pr.state == espWaiting {
			h.confirm(c, now, "new outbound SPI takes the remote's unowned inbound SPI")
		}
	}
	delete(h.pending, k.remote)
	return h.send(p)
}

// admit takes a slot for a new pair of host. At max_esp_per_host the
// host's own oldest inbound-only pair gives way (two forged packets can
// confirm one), else the new pair is refused; at max_esp the oldest waiting
// entry gives way, else any inbound-only pair, else the new pair is
// refused. Pairs that carry traffic both ways are never evicted.
func (h *espHandler) admit(host [4]byte) DropReason {
	e := h.e
	if e.hostFull(host, quotaESP) {
		for _, list := range h.inOnly[host] {
			h.evict(list[0], "the host holds max_esp_per_host pairs")
			e.Limits.evict(LimitESPPerHost)
			break
		}
	}
	if h.npairs >= h.cfg().MaxESP {
		if !h.evictWaiting() && !h.evictAnyInOnly() {
			e.Limits.refuse(LimitESP)
			return DropTableFull
		}
		e.Limits.evict(LimitESP)
	}
	if !e.hostAdmit(host, quotaESP) {
		return DropHostQuota
	}
	h.npairs++
	return DropNone
}

func (h *espHandler) evict(pr *espPair, why string) {
	h.unlink(pr)
	h.logBind(pr, "evicted: "+why)
}

// evictAnyInOnly removes some host's oldest inbound-only pair, if any.
func (h *espHandler) evictAnyInOnly() bool {
	for _, byRemote := range h.inOnly {
		for _, list := range byRemote {
			h.evict(list[0], "max_esp reached and the host never sent on it")
			return true
		}
	}
	return false
}

// newestInOnly is the latest inbound-only pair of (host, remote), which the
// host's next new outbound SPI completes.
func (h *espHandler) newestInOnly(hr hostRemote) *espPair {
	list := h.inOnly[hr.host][hr.remote]
	if len(list) == 0 {
		return nil
	}
	return list[len(list)-1]
}

// addInOnly lists a new inbound-only pair; beyond espMaxInboundOnly per
// (host, remote) the oldest gives way.
func (h *espHandler) addInOnly(pr *espPair) {
	byRemote := h.inOnly[pr.host]
	if byRemote == nil {
		byRemote = make(map[[4]byte][]*espPair, 1)
		h.inOnly[pr.host] = byRemote
	}
	if list := byRemote[pr.remote]; len(list) >= espMaxInboundOnly {
		h.evict(list[0], "a newer inbound-only pair from the remote")
	}
	byRemote[pr.remote] = append(byRemote[pr.remote], pr)
}

// dropInOnly takes pr off the inbound-only lists.
func (h *espHandler) dropInOnly(pr *espPair) {
	byRemote := h.inOnly[pr.host]
	list := byRemote[pr.remote]
	for i, o := range list {
		if o == pr {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(byRemote, pr.remote)
		if len(byRemote) == 0 {
			delete(h.inOnly, pr.host)
		}
	} else {
		byRemote[pr.remote] = list
	}
}

// evictWaiting removes the oldest waiting entry, if any.
func (h *espHandler) evictWaiting() bool {
	for len(h.waitQ) > 0 {
		pr := h.waitQ[0]
		h.waitQ[0] = nil
		h.waitQ = h.waitQ[1:]
		if pr.linked && pr.state == espWaiting {
			h.evict(pr, "max_esp reached and its new SPI was not answered")
			return true
		}
	}
	return false
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
	seq := espSeq(p)
	if pr := h.in[espInKey{p.Src, spi}]; pr != nil {
		host := pr.host
		pr.lastSeen = now
		pr.in.note(seq, true, len(p.Buf), now) // before confirm, which hands it on
		if pr.state == espTentative && seq > pr.firstSeq {
			h.confirm(pr, now, "")
		}
		return h.deliver(p, host)
	}
	if pr := h.bySPI[spi]; pr != nil && pr.remote != p.Src {
		h.e.log.Debug().Stringer("from", p.SrcAddr()).Hex("in_spi", u32(spi)).
			Stringer("bound_remote", endpoint{pr.remote, 0}.AddrPort().Addr()).
			Msg("esp with a bound SPI from another address: dropped")
		return drop(DropESPSpoofed)
	}
	if h.forward && !h.replyOpen(h.waiting[p.Src], now) {
		// No LAN host's new SPI to this remote awaits its answer now, so
		// no pair claims this SPI: it is the IPsec server's.
		return h.deliver(p, h.forwardTo)
	}
	return h.newInbound(p, spi, seq, now)
}

// newInbound gives an unknown inbound SPI to the LAN host that can own it,
// as a candidate.
func (h *espHandler) newInbound(p *Packet, spi, seq uint32, now int64) Result {
	remote := p.Src
	if w := h.waiting[remote]; h.replyOpen(w, now) {
		c := h.addCandidate(w.host, remote, spi, seq, w, now, "unknown inbound SPI from the remote within the reply window of the host's new outbound SPI")
		c.in.note(seq, true, len(p.Buf), now)
		return h.deliver(p, w.host)
	}
	if host, why, ok := h.owner(remote, now); ok {
		c := h.addCandidate(host, remote, spi, seq, nil, now, why)
		c.in.note(seq, true, len(p.Buf), now)
		return h.deliver(p, host)
	}
	list := h.livePending(remote, now)
	for i := range list {
		if list[i].spi == spi {
			if seq > list[i].firstSeq {
				list[i].confirmed = true
			}
			return drop(DropESPUnbound)
		}
	}
	// Anyone can send ESP from any address: bound the remotes remembered
	// (by max_esp) as well as the SPIs per remote.
	if len(list) < espMaxPending && (len(list) > 0 || len(h.pending) < h.cfg().MaxESP) {
		h.pending[remote] = append(list, pendingInbound{spi: spi, seen: now, firstSeq: seq})
		h.e.log.Debug().Stringer("remote", p.SrcAddr()).Hex("in_spi", u32(spi)).
			Msg("esp inbound SPI has no owner yet: kept for the next new outbound SPI to this remote")
	}
	return drop(DropESPUnbound)
}

// addCandidate makes spi a candidate inbound SPI of host, answering claim
// if it is confirmed while claim waits.
func (h *espHandler) addCandidate(host, remote [4]byte, spi, seq uint32, claim *espPair, now int64, why string) *espPair {
	hr := hostRemote{host, remote}
	if list := h.cands[hr]; len(list) >= espMaxCandidates {
		old := list[0]
		h.unlink(old)
		h.logBind(old, "candidate dropped: newer candidates from the remote")
	}
	c := &espPair{host: host, remote: remote, inSPI: spi, state: espTentative, created: now, lastSeen: now,
		firstSeq: seq, claim: claim}
	h.link(c)
	h.cands[hr] = append(h.cands[hr], c)
	h.logBind(c, why+": a candidate until a later packet confirms it")
	return c
}

// confirm makes a candidate the host's binding: the answer of the host's
// waiting entry, or an inbound-only pair.
func (h *espHandler) confirm(c *espPair, now int64, why string) {
	w := c.claim
	if w == nil || !w.linked || w.state != espWaiting {
		w = nil
		if x := h.waiting[c.remote]; x != nil && x.host == c.host && x.state == espWaiting {
			w = x
		}
	}
	h.unlink(c)
	if w != nil {
		w.inSPI, w.state, w.lastSeen = c.inSPI, espEstablished, now
		w.in = c.in // the candidate's packets were the pair's first inbound ones
		h.link(w)
		if h.waiting[w.remote] == w {
			delete(h.waiting, w.remote)
		}
		if now-w.lastOut <= dur(espReplyWindow) {
			// (A claim confirmed after its host went quiet has no
			// reply to wait for: it does not displace a newer one.)
			h.recent[w.remote] = recentClaim{host: w.host, pair: w, at: now, until: now + dur(h.cfg().ESPWait)}
		}
		for _, o := range h.cands[hostRemote{w.host, w.remote}] {
			if o.claim == w {
				o.claim = nil
			}
		}
		if why == "" {
			why = "first unknown inbound SPI answers the waiting outbound SPI: confirmed by a later packet"
		}
		h.logBind(w, why)
		return
	}
	if h.admit(c.host) != DropNone {
		h.logBind(c, "candidate confirmed but the host has no room for another pair: dropped")
		return
	}
	c.state, c.claim, c.charged, c.lastSeen = espInboundOnly, nil, true, now
	h.link(c)
	h.addInOnly(c)
	h.logBind(c, "remote's new inbound SPI confirmed by a later packet: waits for the host's new outbound SPI")
}

// owner finds the one LAN host an unknown inbound SPI from remote can
// belong to when no new outbound SPI's reply window is open on it: the
// host whose claim on the remote was answered and still lingers (unless
// another host's IKE exchange is newer), else what IKE tracking and
// existing ESP pairs know.
func (h *espHandler) owner(remote [4]byte, now int64) (host [4]byte, why string, ok bool) {
	n, latest, latestAt := h.e.ike.hostsWith(remote, now)
	if rc, ok := h.recent[remote]; ok {
		if !h.lingers(rc, now) {
			delete(h.recent, remote)
		} else if n == 0 || latest == rc.host || latestAt <= rc.at {
			return rc.host, "the host whose new SPI to the remote was answered last (within its reply window)", true
		}
	}
	if n == 1 {
		return latest, "only LAN host with a live IKE session to the remote", true
	} else if n > 1 {
		// Several hosts talk IKE with this remote: new SAs come right
		// after an IKE exchange, so the host that had one most recently
		// (within esp_wait) owns the new SPI.
		if now-latestAt <= dur(h.cfg().ESPWait) {
			return latest, "LAN host with the most recent IKE exchange with the remote", true
		}
		return host, "", false
	}
	if hosts := h.remoteHosts[remote]; len(hosts) == 1 {
		for owner := range hosts {
			return owner, "only LAN host with ESP to the remote", true
		}
	}
	return host, "", false
}

// lingers reports whether an answered claim still takes unknown SPIs: its
// pair is there and its host sent on it within espReplyWindow, at most
// esp_wait after the answer.
func (h *espHandler) lingers(rc recentClaim, now int64) bool {
	return now <= rc.until && rc.pair.linked && now-rc.pair.lastOut <= dur(espReplyWindow)
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

// link indexes a pair by its SPIs.
func (h *espHandler) link(pr *espPair) {
	pr.linked = true
	h.pairs[pr] = struct{}{}
	if pr.inSPI != 0 {
		h.in[espInKey{pr.remote, pr.inSPI}] = pr
		h.bySPI[pr.inSPI] = pr
	}
	if pr.outSPI != 0 {
		h.out[espOutKey{pr.host, pr.remote, pr.outSPI}] = pr
		h.outBySPI[espInKey{pr.remote, pr.outSPI}] = pr
	}
	if pr.outSPI != 0 && !pr.counted {
		pr.counted = true
		m := h.remoteHosts[pr.remote]
		if m == nil {
			m = make(map[[4]byte]int, 1)
			h.remoteHosts[pr.remote] = m
		}
		m[pr.host]++
	}
}

// unlink removes every index of a pair and gives back its quota.
func (h *espHandler) unlink(pr *espPair) {
	if !pr.linked {
		return
	}
	pr.linked = false
	delete(h.pairs, pr)
	if pr.outSPI != 0 {
		if k := (espOutKey{pr.host, pr.remote, pr.outSPI}); h.out[k] == pr {
			delete(h.out, k)
		}
		if k := (espInKey{pr.remote, pr.outSPI}); h.outBySPI[k] == pr {
			delete(h.outBySPI, k)
		}
	}
	if pr.inSPI != 0 {
		if k := (espInKey{pr.remote, pr.inSPI}); h.in[k] == pr {
			delete(h.in, k)
		}
		if h.bySPI[pr.inSPI] == pr {
			delete(h.bySPI, pr.inSPI)
		}
	}
	if h.waiting[pr.remote] == pr {
		delete(h.waiting, pr.remote)
	}
	hr := hostRemote{pr.host, pr.remote}
	if pr.state == espInboundOnly {
		h.dropInOnly(pr)
	}
	if pr.state == espTentative {
		list := h.cands[hr]
		for i, c := range list {
			if c == pr {
				list = append(list[:i:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(h.cands, hr)
		} else {
			h.cands[hr] = list
		}
	}
	if pr.counted {
		pr.counted = false
		m := h.remoteHosts[pr.remote]
		if m[pr.host]--; m[pr.host] <= 0 {
			delete(m, pr.host)
			if len(m) == 0 {
				delete(h.remoteHosts, pr.remote)
			}
		}
	}
	if pr.charged {
		pr.charged = false
		h.npairs--
		h.e.hostRelease(pr.host, quotaESP)
	}
}

// expire removes idle pairs, stale waiting entries and candidates,
// squelches and pending inbound SPIs.
func (h *espHandler) expire(now int64) {
	for pr := range h.pairs {
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
	for k, until := range h.squelch {
		if now >= until {
			delete(h.squelch, k)
		}
	}
	for remote := range h.pending {
		h.livePending(remote, now)
	}
	for remote, rc := range h.recent {
		if !h.lingers(rc, now) {
			delete(h.recent, remote)
		}
	}
	// Drop the entries of the eviction queue that no longer wait.
	q := h.waitQ[:0]
	for _, pr := range h.waitQ {
		if pr.linked && pr.state == espWaiting {
			q = append(q, pr)
		}
	}
	clear(h.waitQ[len(q):])
	h.waitQ = q
}

// ESPPair is an SPI pair as shown to operators.
type ESPPair struct {
	Host, Remote  [4]byte
	OutSPI, InSPI uint32
	State         string
	Age, Idle     time.Duration
	// Out and In are the pair's health each way: Out on OutSPI (LAN to
	// WAN), In on InSPI.
	Out, In TunnelHealth
}

// ESPPairs returns a snapshot of the ESP associations, candidates
// (state "tentative") included.
func (e *Engine) ESPPairs() []ESPPair {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	out := make([]ESPPair, 0, len(e.esp.pairs))
	for pr := range e.esp.pairs {
		out = append(out, ESPPair{Host: pr.host, Remote: pr.remote, OutSPI: pr.outSPI, InSPI: pr.inSPI,
			State: pr.state.String(), Age: time.Duration(now - pr.created), Idle: time.Duration(now - pr.lastSeen),
			Out: pr.out.snapshot(now), In: pr.in.snapshot(now)})
	}
	return out
}
