package nat

import (
	"net/netip"
	"sort"
	"time"
)

// PPTPConfig holds the PPTP timers ([pptp] in the configuration). Zero
// values take the defaults below.
type PPTPConfig struct {
	// CallSetupTimeout is how long a call the LAN client requested may wait
	// for the server's Outgoing-Call-Reply before its Call ID is freed.
	// Default 2 min.
	CallSetupTimeout time.Duration
	// TeardownGrace is how long a cleared call keeps its GRE mapping, for
	// packets still in flight. Default 30 s.
	TeardownGrace time.Duration
	// GRETimeout is how long GRE that is not PPTP (version 0) keeps its
	// address-only binding of a remote to a LAN host without traffic.
	// Default 5 min.
	GRETimeout time.Duration
	// MaxCalls bounds the masqueraded calls. Default 4096.
	MaxCalls int
}

func (c PPTPConfig) withDefaults() PPTPConfig {
	if c.CallSetupTimeout <= 0 {
		c.CallSetupTimeout = 2 * time.Minute
	}
	if c.TeardownGrace <= 0 {
		c.TeardownGrace = 30 * time.Second
	}
	if c.GRETimeout <= 0 {
		c.GRETimeout = 5 * time.Minute
	}
	if c.MaxCalls <= 0 {
		c.MaxCalls = 4096
	}
	return c
}

// pptpConnKey names a control connection: the LAN client's endpoint and the
// server's.
type pptpConnKey struct {
	client, server endpoint
}

// pptpConn is one PPTP control connection from a LAN client to a server on
// the WAN side, with its calls.
type pptpConn struct {
	key      pptpConnKey
	dirs     [2]pptpStream // [0] client→server, [1] server→client
	calls    []*pptpCall
	lastSeen int64
	finOut   bool
	finIn    bool
	closed   bool // reset, both FINs, or the control connection stopped
}

const (
	fromClient = 0
	fromServer = 1
)

// pptpCallKey finds a call from the server's side: GRE from the server
// carries the masqueraded Call ID in its key.
type pptpCallKey struct {
	server [4]byte
	masq   uint16
}

// pptpPeerKey finds a call from the client's side: its GRE carries the
// server's Call ID.
type pptpPeerKey struct {
	client, server [4]byte
	peer           uint16
}

// pptpCall is one call: the LAN client's Call ID, the value the server sees
// instead, and the server's own Call ID once known.
type pptpCall struct {
	conn      *pptpConn
	client    [4]byte
	server    [4]byte
	orig      uint16 // the Call ID the LAN client chose
	masq      uint16 // the Call ID the server sees
	peer      uint16 // the server's Call ID (0 until its reply)
	peerKnown bool
	created   int64
	releaseAt int64 // 0 while the call lives
	greOut    uint64
	greIn     uint64
}

// pptpTracker holds the control connections and the calls.
type pptpTracker struct {
	e      *Engine
	conns  map[pptpConnKey]*pptpConn
	calls  map[pptpCallKey]*pptpCall
	byPeer map[pptpPeerKey]*pptpCall
	nextID uint16
	stats  PPTPStats
}

// PPTPStats counts what the PPTP tracker noticed without dropping anything.
type PPTPStats struct {
	UnknownCallIDs uint64 // server messages naming a Call ID this router did not hand out
	Truncated      uint64 // segments cut before a Call ID split across segments
	Untracked      uint64 // control connections picked up mid-stream, passed unparsed
}

func (pt *pptpTracker) init(e *Engine) {
	pt.e = e
	pt.conns = make(map[pptpConnKey]*pptpConn)
	pt.calls = make(map[pptpCallKey]*pptpCall)
	pt.byPeer = make(map[pptpPeerKey]*pptpCall)
	// The counter starts where the start time puts it, not at 1: Call
	// IDs of routers restarted in a row do not repeat, and small IDs
	// clients like to pick are not handed out to others first.
	pt.nextID = uint16(e.base.UnixNano() / 1000)
}

// conn returns the tracked connection, creating it for a SYN. A connection
// first seen without a SYN (picked up after a restart) starts unsynchronised:
// its message boundaries are unknown, so it is passed unparsed.
func (pt *pptpTracker) conn(k pptpConnKey, now int64) *pptpConn {
	c := pt.conns[k]
	if c == nil {
		c = &pptpConn{key: k}
		pt.conns[k] = c
	}
	c.lastSeen = now
	return c
}

// newCall hands out a Call ID for the LAN client's call, unique among the
// calls this router has with the server (so also across LAN clients and
// control connections: the Linux helper reuses the control connection's
// port instead and so cannot carry two calls in one connection). IDs are
// taken in turn from one counter, skipping 0 and those in use, so a freed ID
// is not reused at once.
func (pt *pptpTracker) newCall(c *pptpConn, orig uint16, now int64) *pptpCall {
	if len(pt.calls) >= pt.e.cfg.PPTP.MaxCalls {
		return nil
	}
	for range 65536 {
		id := pt.nextID
		pt.nextID++
		if pt.nextID == 0 {
			pt.nextID = 1
		}
		if id == 0 {
			continue
		}
		k := pptpCallKey{c.key.server.addr, id}
		if pt.calls[k] != nil {
			continue
		}
		call := &pptpCall{conn: c, client: c.key.client.addr, server: c.key.server.addr,
			orig: orig, masq: id, created: now}
		pt.calls[k] = call
		c.calls = append(c.calls, call)
		pt.e.log.Info().Stringer("client", netip.AddrFrom4(call.client)).
			Stringer("server", netip.AddrFrom4(call.server)).
			Uint16("call_id", orig).Uint16("masq_call_id", id).
			Msg("pptp call created")
		return call
	}
	return nil
}

// callByOrig finds the live call with the client's Call ID in a connection.
func (c *pptpConn) callByOrig(orig uint16) *pptpCall {
	for _, call := range c.calls {
		if call.orig == orig && call.releaseAt == 0 {
			return call
		}
	}
	return nil
}

// callByMasq finds a call of this connection by the Call ID the server knows.
func (c *pptpConn) callByMasq(masq uint16) *pptpCall {
	for _, call := range c.calls {
		if call.masq == masq {
			return call
		}
	}
	return nil
}

// callByPeer finds a call of this connection by the server's Call ID.
func (c *pptpConn) callByPeer(peer uint16) *pptpCall {
	for _, call := range c.calls {
		if call.peerKnown && call.peer == peer && call.releaseAt == 0 {
			return call
		}
	}
	return nil
}

// end schedules the call's release after the grace time, so GRE in flight
// still finds its way.
func (pt *pptpTracker) end(call *pptpCall, why string, now int64) {
	if call == nil || call.releaseAt != 0 {
		return
	}
	call.releaseAt = now + dur(pt.e.cfg.PPTP.TeardownGrace)
	pt.e.log.Debug().Stringer("client", netip.AddrFrom4(call.client)).
		Uint16("call_id", call.orig).Uint16("masq_call_id", call.masq).
		Str("why", why).Msg("pptp call ended")
}

// closeConn ends every call of a connection that stopped, closed or reset.
func (pt *pptpTracker) closeConn(c *pptpConn, why string, now int64) {
	if c.closed {
		return
	}
	c.closed = true
	for _, call := range c.calls {
		pt.end(call, why, now)
	}
}

// setPeer records the server's Call ID for a call.
func (pt *pptpTracker) setPeer(call *pptpCall, peer uint16) {
	if call.peerKnown {
		if call.peer == peer {
			return
		}
		pt.dropPeer(call)
	}
	call.peer, call.peerKnown = peer, true
	pt.byPeer[pptpPeerKey{call.client, call.server, peer}] = call
}

func (pt *pptpTracker) dropPeer(call *pptpCall) {
	k := pptpPeerKey{call.client, call.server, call.peer}
	if pt.byPeer[k] == call {
		delete(pt.byPeer, k)
	}
}

func (pt *pptpTracker) release(call *pptpCall) {
	delete(pt.calls, pptpCallKey{call.server, call.masq})
	if call.peerKnown {
		pt.dropPeer(call)
	}
	pt.e.log.Info().Stringer("client", netip.AddrFrom4(call.client)).
		Stringer("server", netip.AddrFrom4(call.server)).
		Uint16("call_id", call.orig).Uint16("masq_call_id", call.masq).
		Uint64("gre_out", call.greOut).Uint64("gre_in", call.greIn).
		Msg("pptp call released")
}

// expire releases calls past their grace or setup time and forgets
// connections that closed (once their calls are gone) or went idle past the
// TCP established timeout.
func (pt *pptpTracker) expire(now int64) {
	setup := dur(pt.e.cfg.PPTP.CallSetupTimeout)
	idle := dur(pt.e.cfg.TCPEstablishedTimeout)
	for k, c := range pt.conns {
		if !c.closed && now-c.lastSeen > idle {
			pt.closeConn(c, "control connection idle", now)
			for _, call := range c.calls {
				call.releaseAt = now
			}
		}
		kept := c.calls[:0]
		for _, call := range c.calls {
			if call.releaseAt == 0 && !call.peerKnown && now-call.created > setup {
				pt.e.log.Info().Stringer("client", netip.AddrFrom4(call.client)).
					Uint16("call_id", call.orig).Msg("pptp call got no reply")
				call.releaseAt = now
			}
			if call.releaseAt != 0 && call.releaseAt <= now {
				pt.release(call)
				continue
			}
			kept = append(kept, call)
		}
		clear(c.calls[len(kept):])
		c.calls = kept
		if c.closed && len(c.calls) == 0 {
			delete(pt.conns, k)
		}
	}
}

// PPTPCall describes one masqueraded PPTP call, for status displays.
type PPTPCall struct {
	Client     netip.AddrPort // LAN client, control connection endpoint
	Server     netip.AddrPort
	CallID     uint16 // the client's own Call ID
	MasqCallID uint16 // what the server sees
	PeerCallID uint16 // the server's Call ID (0 until its reply)
	State      string // "setup", "established", "ending"
	Age        time.Duration
	GREOut     uint64
	GREIn      uint64
	Connection string // "open" or "closed"
}

// PPTPCalls lists the PPTP calls, ordered by client and Call ID.
func (e *Engine) PPTPCalls() []PPTPCall {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	var out []PPTPCall
	for _, c := range e.pptp.conns {
		for _, call := range c.calls {
			info := PPTPCall{
				Client:     c.key.client.AddrPort(),
				Server:     c.key.server.AddrPort(),
				CallID:     call.orig,
				MasqCallID: call.masq,
				PeerCallID: call.peer,
				State:      "setup",
				Age:        time.Duration(now - call.created),
				GREOut:     call.greOut,
				GREIn:      call.greIn,
				Connection: "open",
			}
			if call.peerKnown {
				info.State = "established"
			}
			if call.releaseAt != 0 {
				info.State = "ending"
			}
			if c.closed {
				info.Connection = "closed"
			}
			out = append(out, info)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if c := a.Client.Compare(b.Client); c != 0 {
			return c < 0
		}
		return a.CallID < b.CallID
	})
	return out
}

// PPTPStats returns the PPTP tracker's counters.
func (e *Engine) PPTPStats() PPTPStats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.pptp.stats
}
