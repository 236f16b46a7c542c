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
// The IKE tracker also remembers which LAN hosts talk IKE with which
// remote, and when they last did: the ESP handler uses it to bind an
// unknown inbound SPI to the one host that can own it.

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

// ikeTracker holds IKE sessions (UDP 500 and 4500) and the NAT-T flows that
// keep port 4500.
type ikeTracker struct {
	e       *Engine
	byI     map[ikeKey]*ikeSession // by initiator SPI
	byR     map[ikeKey]*ikeSession // by responder SPI, once seen
	lastIKE map[hostRemote]int64   // when a LAN host last exchanged IKE with a remote
	natt    map[nattKey]*nattFlow
}

func (t *ikeTracker) init(e *Engine) {
	t.e = e
	t.byI = make(map[ikeKey]*ikeSession)
	t.byR = make(map[ikeKey]*ikeSession)
	t.lastIKE = make(map[hostRemote]int64)
	t.natt = make(map[nattKey]*nattFlow)
}

func (t *ikeTracker) timeout() int64 { return dur(t.e.cfg.IPsec.IKETimeout) }

// live returns s unless it timed out.
func (t *ikeTracker) live(s *ikeSession, now int64) *ikeSession {
	if s == nil || now-s.lastSeen >= t.timeout() {
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
	t.lastIKE[hostRemote{s.host.addr, s.remote}] = now
	if s.rspi == 0 && h.rspi != 0 {
		s.rspi = h.rspi
		t.byR[ikeKey{s.remote, h.rspi}] = s
		t.e.log.Debug().Stringer("host", s.host.AddrPort()).Stringer("remote", endpoint{s.remote, 0}.AddrPort().Addr()).
			Hex("ispi", u64(s.ispi)).Hex("rspi", u64(s.rspi)).Msg("ike session responder spi learned")
	}
}

func (t *ikeTracker) newSession(host endpoint, remote [4]byte, h ikeHeader, now int64, why string) *ikeSession {
	s := &ikeSession{host: host, remote: remote, ispi: h.ispi, created: now, lastSeen: now}
	t.byI[ikeKey{remote, h.ispi}] = s
	t.seen(s, h, now)
	t.e.log.Debug().Stringer("host", host.AddrPort()).Stringer("remote", endpoint{remote, 0}.AddrPort().Addr()).
		Hex("ispi", u64(h.ispi)).Hex("rspi", u64(h.rspi)).Uint8("exchange", h.exchange).Str("why", why).
		Msg("ike session")
	return s
}

// full reports whether the session table reached its bound (max_esp bounds
// IKE sessions as well as ESP pairs): anyone able to send from a peer's
// address could otherwise create a session per fresh SPI.
func (t *ikeTracker) full() bool { return len(t.byI) >= t.e.cfg.IPsec.MaxESP }

// outbound tracks an IKE message a LAN host sends (from UDP 500, or after
// the non-ESP marker on 4500). It reports a collision: the initiator SPI is
// live for another LAN host towards the same remote.
func (t *ikeTracker) outbound(p *Packet, h ikeHeader, now int64) DropReason {
	host := endpoint{p.Src, p.SrcPort}
	s := t.lookup(p.Dst, h, now)
	switch {
	case s == nil && t.full():
		return DropTableFull
	case s == nil && h.rspi == 0:
		t.newSession(host, p.Dst, h, now, "new exchange from the LAN host").remotePort = p.DstPort
	case s == nil:
		// E.g. the first message of an IKE SA the remote's rekey created.
		t.newSession(host, p.Dst, h, now, "LAN host's message on SPIs not seen before").remotePort = p.DstPort
	case s.host.addr != p.Src:
		t.e.log.Warn().Stringer("host", host.AddrPort()).Stringer("remote", p.DstAddr()).
			Hex("ispi", u64(h.ispi)).Stringer("owner", s.host.AddrPort()).
			Msg("ike initiator spi collides with another LAN host's live session; dropped")
		return DropIKECollision
	default:
		s.host.port = p.SrcPort // NAT-T floats from 500 to 4500
		s.remotePort = p.DstPort
		t.seen(s, h, now)
	}
	return DropNone
}

// inbound finds the LAN host an IKE message from the WAN belongs to. A
// message with SPIs the NAT has not seen (a new IKE SA the remote starts,
// e.g. an IKEv2 IKE SA rekey) goes to the LAN host that exchanged IKE with
// that remote most recently, and is tracked from then on.
func (t *ikeTracker) inbound(p *Packet, h ikeHeader, now int64) (endpoint, bool) {
	if s := t.lookup(p.Src, h, now); s != nil {
		s.remotePort = p.SrcPort
		t.seen(s, h, now)
		return s.host, true
	}
	host, ok := t.mostRecentHost(p.Src, now)
	if !ok || t.full() {
		return endpoint{}, false
	}
	port := uint16(PortIKE)
	if p.DstPort == PortNATT {
		port = PortNATT
	}
	s := t.newSession(endpoint{host, port}, p.Src, h, now, "new SPIs from the remote: most recent LAN host in IKE with it")
	s.remotePort = p.SrcPort
	return s.host, true
}

// hostsWith returns the LAN hosts with a live IKE contact to remote, and the
// one that had it most recently.
func (t *ikeTracker) hostsWith(remote [4]byte, now int64) (n int, latest [4]byte) {
	var latestAt int64 = -1
	for hr, at := range t.lastIKE {
		if hr.remote != remote || now-at >= t.timeout() {
			continue
		}
		n++
		if at > latestAt {
			latestAt, latest = at, hr.host
		}
	}
	return n, latest
}

func (t *ikeTracker) mostRecentHost(remote [4]byte, now int64) ([4]byte, bool) {
	n, latest := t.hostsWith(remote, now)
	return latest, n > 0
}

// lastContact is when host last exchanged IKE with remote (ok false if
// never, or timed out).
func (t *ikeTracker) lastContact(host, remote [4]byte, now int64) (int64, bool) {
	at, ok := t.lastIKE[hostRemote{host, remote}]
	return at, ok && now-at < t.timeout()
}

func (t *ikeTracker) expire(now int64) {
	for k, s := range t.byI {
		if now-s.lastSeen >= t.timeout() {
			delete(t.byI, k)
			t.e.log.Debug().Stringer("host", s.host.AddrPort()).Stringer("remote", endpoint{s.remote, 0}.AddrPort().Addr()).
				Hex("ispi", u64(s.ispi)).Hex("rspi", u64(s.rspi)).Dur("age", time.Duration(now-s.created)).
				Msg("ike session expired")
		}
	}
	// Swept on its own: a session replaced in byI before it was swept, or
	// whose responder SPI a newer session took over, must neither stay
	// here forever nor take the newer session's entry with it.
	for k, s := range t.byR {
		if now-s.lastSeen >= t.timeout() {
			delete(t.byR, k)
		}
	}
	for k, at := range t.lastIKE {
		if now-at >= t.timeout() {
			delete(t.lastIKE, k)
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
