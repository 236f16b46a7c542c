package nat

import (
	"encoding/binary"
	"time"
)

// IKE (ISAKMP, RFC 2408; IKEv2, RFC 7296) through the NAT.
//
// Some IPsec servers insist on IKE coming from UDP port 500, and a port per
// LAN host cannot give every host port 500. So, as the VPN Masquerade
// patches did, vpnmasq keeps source port 500 on the WAN side for every LAN
// host and tells the hosts' IKE sessions apart by the SPIs (IKEv1 "cookies")
// in the IKE header instead of by port: the initiator SPI, and the responder
// SPI as soon as it is seen. A new exchange whose initiator SPI collides with
// a live session of another LAN host to the same remote is dropped and
// logged. Sessions live ike_timeout (default 35 min, longer than common
// rekey intervals), refreshed by traffic in either direction, so a rekey
// started by the remote still finds its LAN host.
//
// NAT traversal (RFC 3947/3948) moves IKE to UDP 4500, where IKE messages
// follow a 4-byte zero non-ESP marker, ESP packets start with their
// non-zero SPI, and a single 0xFF byte is a keepalive. The first LAN host to
// talk to a remote from port 4500 keeps 4500 on the WAN side; the flows of
// WAN:4500 are told apart by remote address and port. Another LAN host to
// the same remote gets an ordinary mapping from the port range — NAT-T
// peers accept a port that is not 4500 — so two hosts never share one
// (WAN port, remote) pair and ESP-in-UDP never needs SPI demultiplexing.
//
// A message with SPIs the NAT has not seen, from a remote (a new IKE SA it
// starts, e.g. an IKE SA rekey), goes to the LAN host that exchanged IKE
// with that remote most recently. Anyone can forge such a message from the
// remote's address, so the session it creates is unconfirmed until the LAN
// host sends a message on it:
//   - it lives limits.remote_ike_timeout (30 s), not ike_timeout;
//   - a (host, remote) holds at most limits.max_remote_ike (4) of them, the
//     oldest giving way to a newer one (the remote retransmits; the host's
//     answer to an evicted one simply starts a confirmed session);
//   - it is evicted first when the host holds limits.max_ike_per_host
//     sessions or the table holds max_esp, and when a LAN host's own
//     message uses its SPIs, so it never stands in the way of a LAN host's
//     own exchange;
//   - it does not count as the host's IKE contact with the remote, and on
//     UDP 4500 it opens no NAT-T flow (the host's answer does).
// Every session is charged to its host's IKE quota until it expires or is
// evicted. The NAT-T flows are bounded by max_esp; at the bound a LAN host
// takes an ordinary mapping.
//
// The IKE tracker also remembers which LAN hosts talk IKE with which
// remote, and when they last did, indexed by remote: the ESP handler asks
// it for every unknown inbound SPI, to bind the SPI to the one host that
// can own it.

// IKE and NAT-T ports.
const (
	PortIKE  = 500
	PortNATT = 4500
)

// ikeHeaderLen is the fixed ISAKMP/IKEv2 header: initiator SPI (8),
// responder SPI (8), next payload, version, exchange type, flags, message
// ID (4), length (4).
const ikeHeaderLen = 28

// ikeHeader is the part of an IKE header the NAT uses.
type ikeHeader struct {
	ispi, rspi uint64
	exchange   uint8
	major      uint8
}

// parseIKEHeader reads an ISAKMP (IKEv1) or IKEv2 header. It checks only
// what the NAT relies on: the length, a non-zero initiator SPI, a major
// version of 1 or 2, and a length field covering at least the header.
func parseIKEHeader(b []byte) (ikeHeader, bool) {
	if len(b) < ikeHeaderLen {
		return ikeHeader{}, false
	}
	h := ikeHeader{
		ispi:     binary.BigEndian.Uint64(b[0:8]),
		rspi:     binary.BigEndian.Uint64(b[8:16]),
		exchange: b[18],
		major:    b[17] >> 4,
	}
	if h.ispi == 0 || (h.major != 1 && h.major != 2) || binary.BigEndian.Uint32(b[24:28]) < ikeHeaderLen {
		return ikeHeader{}, false
	}
	return h, true
}

// nattKind is what a UDP 4500 payload carries (RFC 3948 section 2).
type nattKind uint8

const (
	nattMalformed nattKind = iota
	nattKeepalive          // a single 0xFF byte
	nattIKE                // 4-byte zero non-ESP marker, then IKE
	nattESP                // ESP: non-zero SPI, sequence number, ...
)

// classifyNATT tells the three kinds of UDP 4500 payload apart.
func classifyNATT(payload []byte) nattKind {
	switch {
	case len(payload) == 1 && payload[0] == 0xff:
		return nattKeepalive
	case len(payload) >= 4 && binary.BigEndian.Uint32(payload) == 0:
		return nattIKE
	case len(payload) >= 8:
		return nattESP
	}
	return nattMalformed
}

// ikeKey finds an IKE session by remote address and one of its SPIs. The
// remote's port is not part of it: NAT-T moves the session from 500 to 4500.
type ikeKey struct {
	remote [4]byte
	spi    uint64
}

// ikeSession is one IKE SA (or IKEv1 ISAKMP SA) of a LAN host.
type ikeSession struct {
	host       endpoint // LAN host and the port it speaks IKE from
	remote     [4]byte
	remotePort uint16 // the remote's port in the latest message (500 or 4500), for display
	ispi, rspi uint64
	created    int64
	lastSeen   int64
	// unconfirmed: the remote started this IKE SA and the LAN host has not
	// sent a message on it yet. Anyone can forge such a message, so these
	// sessions live remote_ike_timeout, are bounded per (host, remote) by
	// max_remote_ike and are evicted first.
	unconfirmed bool
	charged     bool // holds one unit of the host's quotaIKE
	removed     bool // taken out of the table (remove ran)
}

// hostRemote is a (LAN host, remote) pair.
type hostRemote struct{ host, remote [4]byte }

// nattKey is one remote endpoint of WAN port 4500.
type nattKey struct {
	remote endpoint
}

// nattFlow is the LAN endpoint that owns WAN:4500 towards one remote.
type nattFlow struct {
	host    endpoint
	expires int64
}

// ikeContacts are the LAN hosts' latest IKE exchanges with one remote. The
// latest is kept apart: contact times only grow, so it is the last to
// time out.
type ikeContacts struct {
	hosts    map[[4]byte]int64
	latest   [4]byte
	latestAt int64
}

// ikeTracker holds IKE sessions (UDP 500 and 4500) and the NAT-T flows that
// keep port 4500.
type ikeTracker struct {
	e   *Engine
	byI map[ikeKey]*ikeSession // by initiator SPI
	byR map[ikeKey]*ikeSession // by responder SPI, once seen
	// lastIKE is when each LAN host last exchanged IKE with a remote, by
	// remote then host: the ESP handler asks per remote, per packet.
	// Only confirmed sessions count: a message the remote alone sent
	// proves nothing about the LAN host.
	lastIKE map[[4]byte]*ikeContacts
	// unconf lists the unconfirmed sessions by host and remote, oldest
	// first.
	unconf map[[4]byte]map[[4]byte][]*ikeSession
	natt   map[nattKey]*nattFlow
}

func (t *ikeTracker) init(e *Engine) {
	t.e = e
	t.byI = make(map[ikeKey]*ikeSession)
	t.byR = make(map[ikeKey]*ikeSession)
	t.lastIKE = make(map[[4]byte]*ikeContacts)
	t.unconf = make(map[[4]byte]map[[4]byte][]*ikeSession)
	t.natt = make(map[nattKey]*nattFlow)
}

func (t *ikeTracker) timeout() int64 { return dur(t.e.cfg.IPsec.IKETimeout) }

// dead reports whether s timed out: an unconfirmed session
// remote_ike_timeout after the remote started it, a confirmed one
// ike_timeout after its last message.
func (t *ikeTracker) dead(s *ikeSession, now int64) bool {
	if s.unconfirmed {
		return now-s.created >= dur(t.e.cfg.Limits.RemoteIKETimeout)
	}
	return now-s.lastSeen >= t.timeout()
}

// live returns s unless it timed out.
func (t *ikeTracker) live(s *ikeSession, now int64) *ikeSession {
	if s == nil || t.dead(s, now) {
		return nil
	}
	return s
}

// lookup finds the live session of an IKE message from or to remote.
func (t *ikeTracker) lookup(remote [4]byte, h ikeHeader, now int64) *ikeSession {
	if s := t.live(t.byI[ikeKey{remote, h.ispi}], now); s != nil {
		return s
	}
	if h.rspi != 0 {
		return t.live(t.byR[ikeKey{remote, h.rspi}], now)
	}
	return nil
}

// seen records an IKE message of session s: refreshes it, learns the
// responder SPI, and notes the host's latest IKE contact with the remote.
func (t *ikeTracker) seen(s *ikeSession, h ikeHeader, now int64) {
	s.lastSeen = now
	if !s.unconfirmed {
		t.contact(s.host.addr, s.remote, now)
	}
	if s.rspi == 0 && h.rspi != 0 {
		s.rspi = h.rspi
		t.byR[ikeKey{s.remote, h.rspi}] = s
		t.e.log.Debug().Stringer("host", s.host.AddrPort()).Stringer("remote", endpoint{s.remote, 0}.AddrPort().Addr()).
			Hex("ispi", u64(s.ispi)).Hex("rspi", u64(s.rspi)).Msg("ike session responder spi learned")
	}
}

func (t *ikeTracker) contact(host, remote [4]byte, now int64) {
	c := t.lastIKE[remote]
	if c == nil {
		c = &ikeContacts{hosts: make(map[[4]byte]int64, 1)}
		t.lastIKE[remote] = c
	}
	c.hosts[host] = now
	c.latest, c.latestAt = host, now
}

// admit makes room for a new session of host with remote and takes the
// host's quota for it, or says why not. Unconfirmed sessions give way
// first: the (host, remote)'s oldest when a remote starts more than
// max_remote_ike, then the host's own when it holds max_ike_per_host, then
// anyone's when the table holds max_esp.
func (t *ikeTracker) admit(host, remote [4]byte, remoteStarted bool) DropReason {
	e := t.e
	if remoteStarted {
		if list := t.unconf[host][remote]; len(list) >= e.cfg.Limits.MaxRemoteIKE {
			t.evict(list[0], "a newer IKE SA the remote started")
			e.Limits.evict(LimitRemoteIKE)
		}
	}
	if e.hostFull(host, quotaIKE) {
		for _, list := range t.unconf[host] {
			t.evict(list[0], "the host holds max_ike_per_host sessions")
			e.Limits.evict(LimitIKEPerHost)
			break
		}
	}
	if t.full() {
		evicted := false
		for _, byRemote := range t.unconf {
			for _, list := range byRemote {
				t.evict(list[0], "the IKE table is full")
				e.Limits.evict(LimitIKE)
				evicted = true
				break
			}
			break
		}
		if !evicted {
			e.Limits.refuse(LimitIKE)
			return DropTableFull
		}
	}
	if !e.hostAdmit(host, quotaIKE) {
		return DropHostQuota
	}
	return DropNone
}

func (t *ikeTracker) evict(s *ikeSession, why string) {
	t.e.log.Debug().Stringer("host", s.host.AddrPort()).Stringer("remote", endpoint{s.remote, 0}.AddrPort().Addr()).
		Hex("ispi", u64(s.ispi)).Bool("unconfirmed", s.unconfirmed).Str("why", why).Msg("ike session evicted")
	t.remove(s)
}

// newSession admits and indexes a new session. A remote-started one is
// unconfirmed until the LAN host sends on it.
func (t *ikeTracker) newSession(host endpoint, remote [4]byte, h ikeHeader, now int64, remoteStarted bool, why string) (*ikeSession, DropReason) {
	if old := t.byI[ikeKey{remote, h.ispi}]; old != nil {
		t.remove(old) // timed out, not swept yet
	}
	if why := t.admit(host.addr, remote, remoteStarted); why != DropNone {
		return nil, why
	}
	s := &ikeSession{host: host, remote: remote, ispi: h.ispi, created: now, lastSeen: now, unconfirmed: remoteStarted, charged: true}
	t.byI[ikeKey{remote, h.ispi}] = s
	if remoteStarted {
		byRemote := t.unconf[host.addr]
		if byRemote == nil {
			byRemote = make(map[[4]byte][]*ikeSession, 1)
			t.unconf[host.addr] = byRemote
		}
		byRemote[remote] = append(byRemote[remote], s)
	}
	t.seen(s, h, now)
	t.e.log.Debug().Stringer("host", host.AddrPort()).Stringer("remote", endpoint{remote, 0}.AddrPort().Addr()).
		Hex("ispi", u64(h.ispi)).Hex("rspi", u64(h.rspi)).Uint8("exchange", h.exchange).Bool("unconfirmed", remoteStarted).
		Str("why", why).Msg("ike session")
	return s, DropNone
}

// confirm marks a remote-started session as answered by its LAN host.
func (t *ikeTracker) confirm(s *ikeSession) {
	t.dropUnconf(s)
	s.unconfirmed = false
	t.e.log.Debug().Stringer("host", s.host.AddrPort()).Stringer("remote", endpoint{s.remote, 0}.AddrPort().Addr()).
		Hex("ispi", u64(s.ispi)).Hex("rspi", u64(s.rspi)).Msg("ike session confirmed by the LAN host")
}

// dropUnconf takes s off the unconfirmed lists.
func (t *ikeTracker) dropUnconf(s *ikeSession) {
	if !s.unconfirmed {
		return
	}
	byRemote := t.unconf[s.host.addr]
	list := byRemote[s.remote]
	for i, o := range list {
		if o == s {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(byRemote, s.remote)
		if len(byRemote) == 0 {
			delete(t.unconf, s.host.addr)
		}
	} else {
		byRemote[s.remote] = list
	}
}

// remove takes a session out of every index and gives back its quota.
func (t *ikeTracker) remove(s *ikeSession) {
	if s.removed {
		return
	}
	s.removed = true
	if k := (ikeKey{s.remote, s.ispi}); t.byI[k] == s {
		delete(t.byI, k)
	}
	if k := (ikeKey{s.remote, s.rspi}); s.rspi != 0 && t.byR[k] == s {
		delete(t.byR, k)
	}
	t.dropUnconf(s)
	if s.charged {
		s.charged = false
		t.e.hostRelease(s.host.addr, quotaIKE)
	}
}

// full reports whether the session table reached its bound (max_esp bounds
// IKE sessions as well as ESP pairs): anyone able to send from a peer's
// address could otherwise create a session per fresh SPI.
func (t *ikeTracker) full() bool { return len(t.byI) >= t.e.cfg.IPsec.MaxESP }

// nattFull reports whether the NAT-T flows that keep WAN port 4500 reached
// their bound (max_esp, like the sessions).
func (t *ikeTracker) nattFull() bool { return len(t.natt) >= t.e.cfg.IPsec.MaxESP }

// outbound tracks an IKE message a LAN host sends (from UDP 500, or after
// the non-ESP marker on 4500). It reports a collision: the initiator SPI is
// live for another LAN host towards the same remote.
func (t *ikeTracker) outbound(p *Packet, h ikeHeader, now int64) DropReason {
	host := endpoint{p.Src, p.SrcPort}
	s := t.lookup(p.Dst, h, now)
	if s != nil && s.host.addr != p.Src && s.unconfirmed {
		// A session a remote started towards another host never stands
		// in the way of a LAN host's own exchange.
		t.evict(s, "a LAN host's own message on its SPIs")
		s = nil
	}
	switch {
	case s == nil:
		why := "new exchange from the LAN host"
		if h.rspi != 0 {
			// E.g. the first message of an IKE SA the remote's rekey created.
			why = "LAN host's message on SPIs not seen before"
		}
		ns, drop := t.newSession(host, p.Dst, h, now, false, why)
		if drop != DropNone {
			return drop
		}
		ns.remotePort = p.DstPort
	case s.host.addr != p.Src:
		t.e.log.Warn().Stringer("host", host.AddrPort()).Stringer("remote", p.DstAddr()).
			Hex("ispi", u64(h.ispi)).Stringer("owner", s.host.AddrPort()).
			Msg("ike initiator spi collides with another LAN host's live session; dropped")
		return DropIKECollision
	default:
		if s.unconfirmed {
			t.confirm(s)
		}
		s.host.port = p.SrcPort // NAT-T floats from 500 to 4500
		s.remotePort = p.DstPort
		t.seen(s, h, now)
	}
	return DropNone
}

// inbound finds the LAN host an IKE message from the WAN belongs to. A
// message with SPIs the NAT has not seen (a new IKE SA the remote starts,
// e.g. an IKEv2 IKE SA rekey) goes to the LAN host that exchanged IKE with
// that remote most recently, and is tracked from then on as unconfirmed
// until that host answers.
func (t *ikeTracker) inbound(p *Packet, h ikeHeader, now int64) (*ikeSession, DropReason) {
	if s := t.lookup(p.Src, h, now); s != nil {
		s.remotePort = p.SrcPort
		t.seen(s, h, now)
		return s, DropNone
	}
	host, ok := t.mostRecentHost(p.Src, now)
	if !ok {
		return nil, DropUnsolicited
	}
	port := uint16(PortIKE)
	if p.DstPort == PortNATT {
		port = PortNATT
	}
	s, why := t.newSession(endpoint{host, port}, p.Src, h, now, true, "new SPIs from the remote: most recent LAN host in IKE with it")
	if why != DropNone {
		return nil, why
	}
	s.remotePort = p.SrcPort
	return s, DropNone
}

// hostsWith says how many LAN hosts have a live IKE contact to remote (0,
// 1, or 2 for several), and which one had it most recently (and when). It
// costs a lookup and, with several hosts, a step or two of that remote's
// contacts: it runs per unknown inbound SPI.
func (t *ikeTracker) hostsWith(remote [4]byte, now int64) (n int, latest [4]byte, latestAt int64) {
	c := t.lastIKE[remote]
	if c == nil || now-c.latestAt >= t.timeout() {
		return 0, latest, -1
	}
	n = 1
	for host, at := range c.hosts {
		if host != c.latest && now-at < t.timeout() {
			n = 2
			break
		}
	}
	return n, c.latest, c.latestAt
}

func (t *ikeTracker) mostRecentHost(remote [4]byte, now int64) ([4]byte, bool) {
	n, latest, _ := t.hostsWith(remote, now)
	return latest, n > 0
}

func (t *ikeTracker) expire(now int64) {
	for _, s := range t.byI {
		if t.dead(s, now) {
			t.remove(s)
			t.e.log.Debug().Stringer("host", s.host.AddrPort()).Stringer("remote", endpoint{s.remote, 0}.AddrPort().Addr()).
				Hex("ispi", u64(s.ispi)).Hex("rspi", u64(s.rspi)).Bool("unconfirmed", s.unconfirmed).
				Dur("age", time.Duration(now-s.created)).Msg("ike session expired")
		}
	}
	// Swept on its own: a session replaced in byI before it was swept, or
	// whose responder SPI a newer session took over, must neither stay
	// here forever nor take the newer session's entry with it.
	for k, s := range t.byR {
		if s.removed || t.dead(s, now) {
			delete(t.byR, k)
		}
	}
	for remote, c := range t.lastIKE {
		if now-c.latestAt >= t.timeout() {
			delete(t.lastIKE, remote) // every contact is older
			continue
		}
		for host, at := range c.hosts {
			if now-at >= t.timeout() {
				delete(c.hosts, host)
			}
		}
	}
	for k, f := range t.natt {
		if f.expires <= now {
			delete(t.natt, k)
		}
	}
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func u32(v uint32) []byte {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return b[:]
}
