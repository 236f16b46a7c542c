package nat

import (
	crand "crypto/rand"
	"math/rand/v2"
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

// pptpConnKey names a control connection: the LAN client's endpoint and the
// server's.
type pptpConnKey struct {
	client, server endpoint
}

// pptpConn is one PPTP control connection from a LAN client to a server on
// the WAN side, with its calls.
//
// A record lives and dies with the TCP flow that carries the connection:
// the TCP layer opens it (open) for a connection it tracks from its SYN,
// passes it the segments it accepted (control), closes it when it accepts a
// closing RST or both FINs (closeConn), and reports it gone when the flow is
// removed (gone). The record is deleted once the calls of a gone connection
// are released. Nothing in a segment closes or resets it: a forged RST, FIN
// or SYN that reached the tracker would otherwise end every call of the
// connection.
type pptpConn struct {
	key   pptpConnKey
	dirs  [2]pptpStream // [0] client→server, [1] server→client
	calls []*pptpCall   // live, ending, and not yet released; at most the client's quota
	// lastSeen is when the TCP layer last passed a segment (display and
	// debugging only: the record's lifetime is the TCP flow's).
	lastSeen int64
	closed   bool // closed by the TCP layer or stopped (Stop-Control-Connection): no new calls
	gone     bool // the TCP flow is gone: deleted once its calls are released
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

// pptpPeerKey finds a call by the server's Call ID. GRE from the client
// carries it, and so does the GRE an ICMP error quotes. A server tells its
// calls apart by Call ID alone (all of this router's calls come from one
// address), so the server's Call IDs are unique among the calls it has with
// this router.
type pptpPeerKey struct {
	server [4]byte
	peer   uint16
}

// pptpOrigKey finds a live call of a control connection by the Call ID the
// LAN client chose.
type pptpOrigKey struct {
	conn pptpConnKey
	orig uint16
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
	// out and in are the call's health each way from its GRE sequence
	// numbers (tunnel.go); greOut and greIn count across restarts, these
	// since this run.
	out, in seqHealth
}

// pptpTracker holds the control connections and the calls, indexed so that
// no packet costs a scan: GRE and ICMP errors find their call by one map
// lookup, control messages too.
type pptpTracker struct {
	e     *Engine
	conns map[pptpConnKey]*pptpConn
	// calls holds every call until its release, by (server, masqueraded
	// Call ID): its GRE from the server carries that ID.
	calls map[pptpCallKey]*pptpCall
	// byPeer holds calls whose server's Call ID is known, until release,
	// by (server, server's Call ID). A key has one call unless the server
	// gave its Call ID to several (reused after a call ended, or scoped
	// per control connection); the first is then a live one if any is
	// live, and GRE and ICMP errors go to it.
	byPeer map[pptpPeerKey][]*pptpCall
	// byOrig holds the live calls by control connection and the client's
	// Call ID.
	byOrig map[pptpOrigKey]*pptpCall
	// perServer counts the calls in calls per server address, so that a
	// server whose Call ID space is full is refused at once.
	perServer map[[4]byte]int
	// rng picks the masqueraded Call IDs. It is seeded from crypto/rand
	// when the engine starts; tests may replace it for reproducible IDs.
	rng   *rand.ChaCha8
	stats PPTPStats
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
	pt.byPeer = make(map[pptpPeerKey][]*pptpCall)
	pt.byOrig = make(map[pptpOrigKey]*pptpCall)
	pt.perServer = make(map[[4]byte]int)
	var seed [32]byte
	crand.Read(seed[:]) // never fails (crypto/rand aborts the program instead)
	pt.rng = rand.NewChaCha8(seed)
}

// open creates the record of a control connection the TCP layer tracks from
// its SYN, and returns it. When a record for the same endpoints exists (the
// 4-tuple starts a new connection), the old connection's calls end as on a
// close and the record starts over.
func (pt *pptpTracker) open(k pptpConnKey, now int64) *pptpConn {
	c := pt.conns[k]
	if c == nil {
		c = &pptpConn{key: k}
		pt.conns[k] = c
	} else {
		pt.endAll(c, "control connection restarted", now)
		c.dirs = [2]pptpStream{}
		c.closed, c.gone = false, false
	}
	c.lastSeen = now
	return c
}

// lookup returns the record of a live control connection, or nil: it never
// creates one. A connection without a record (picked up mid-stream, or not
// tracked from its SYN) is passed unparsed.
func (pt *pptpTracker) lookup(k pptpConnKey) *pptpConn {
	if c := pt.conns[k]; c != nil && !c.gone {
		return c
	}
	return nil
}

// untracked counts a control connection passed unparsed because it was
// picked up mid-stream: by the TCP layer, which then opens no record, or by
// control for a direction that never showed its SYN. Its calls get no GRE
// mapping.
func (pt *pptpTracker) untracked(k pptpConnKey) {
	pt.stats.Untracked++
	pt.e.log.Info().Stringer("client", k.client.AddrPort()).
		Stringer("server", k.server.AddrPort()).
		Msg("pptp control connection picked up mid-stream: not parsed, its calls get no GRE mapping")
}

// pptpRandomTries is how many random Call IDs newCall draws before it scans
// for a free one: with max_calls at most 4096 of the 65535 IDs of a server
// taken, all 8 draws hit a taken ID about once in 4·10^9 calls.
const pptpRandomTries = 8

// newCall hands out a masqueraded Call ID for the LAN client's call: random,
// never 0, and unused among the calls this router has with the server (so
// also across LAN clients and control connections; the Linux helper reuses
// the control connection's port instead and so cannot carry two calls in one
// connection). A counter would let anyone who calls a server he runs learn
// the next ID, and his forged GRE would land in another user's call
// (RFC 6056 argues the same for ports). The call takes one unit of the
// client's quota (limits.max_calls_per_host) and one of pptp.max_calls;
// when either is used up, or the server's IDs are, there is no call and the
// refusal is counted.
func (pt *pptpTracker) newCall(c *pptpConn, orig uint16, now int64) *pptpCall {
	server, client := c.key.server.addr, c.key.client.addr
	if len(pt.calls) >= pt.e.cfg.PPTP.MaxCalls || pt.perServer[server] >= 65535 {
		pt.e.Limits.refuse(LimitCalls)
		pt.refused(c, orig, "pptp.max_calls")
		return nil
	}
	id, ok := pt.pickID(server)
	if !ok {
		// Not reached: perServer says when the IDs are all taken.
		pt.e.Limits.refuse(LimitCalls)
		pt.refused(c, orig, "the server's Call IDs")
		return nil
	}
	if !pt.e.hostAdmit(client, quotaCalls) {
		pt.refused(c, orig, "limits.max_calls_per_host")
		return nil
	}
	call := &pptpCall{conn: c, client: client, server: server,
		orig: orig, masq: id, created: now}
	pt.calls[pptpCallKey{server, id}] = call
	pt.perServer[server]++
	pt.byOrig[pptpOrigKey{c.key, orig}] = call
	c.calls = append(c.calls, call)
	pt.e.log.Info().Stringer("client", netip.AddrFrom4(client)).
		Stringer("server", netip.AddrFrom4(server)).
		Uint16("call_id", orig).Uint16("masq_call_id", id).
		Msg("pptp call created")
	return call
}

// pickID draws a free Call ID at a server that has one: random draws first,
// then a scan from a random start, so the time is bounded however full the
// server's ID space is.
func (pt *pptpTracker) pickID(server [4]byte) (uint16, bool) {
	free := func(id uint16) bool { return id != 0 && pt.calls[pptpCallKey{server, id}] == nil }
	for range pptpRandomTries {
		if id := uint16(pt.rng.Uint64()); free(id) {
			return id, true
		}
	}
	start := uint16(pt.rng.Uint64())
	for i := range 65536 {
		if id := start + uint16(i); free(id) {
			return id, true
		}
	}
	return 0, false
}

func (pt *pptpTracker) refused(c *pptpConn, orig uint16, limit string) {
	pt.e.log.Debug().Stringer("client", c.key.client.AddrPort()).
		Stringer("server", c.key.server.AddrPort()).
		Uint16("call_id", orig).Str("limit", limit).
		Msg("pptp call refused: the server gets Call ID 0")
}

// callByOrig finds the live call with the client's Call ID in a connection.
func (pt *pptpTracker) callByOrig(c *pptpConn, orig uint16) *pptpCall {
	return pt.byOrig[pptpOrigKey{c.key, orig}]
}

// callByMasq finds a call of this connection (live or ending) by the Call
// ID the server knows.
func (pt *pptpTracker) callByMasq(c *pptpConn, masq uint16) *pptpCall {
	if call := pt.calls[pptpCallKey{c.key.server.addr, masq}]; call != nil && call.conn == c {
		return call
	}
	return nil
}

// callByPeer finds the live call of this connection with the server's Call
// ID.
func (pt *pptpTracker) callByPeer(c *pptpConn, peer uint16) *pptpCall {
	for _, call := range pt.byPeer[pptpPeerKey{c.key.server.addr, peer}] {
		if call.conn == c && call.releaseAt == 0 {
			return call
		}
	}
	return nil
}

// end schedules the call's release after the grace time, so GRE in flight
// still finds its way. The client's Call ID is free again at once: a new
// call with it is a new call.
func (pt *pptpTracker) end(call *pptpCall, why string, now int64) {
	if call == nil || call.releaseAt != 0 {
		return
	}
	pt.endAt(call, now+dur(pt.e.cfg.PPTP.TeardownGrace))
	pt.e.log.Debug().Stringer("client", netip.AddrFrom4(call.client)).
		Uint16("call_id", call.orig).Uint16("masq_call_id", call.masq).
		Str("why", why).Msg("pptp call ended")
}

// endAt sets the release time of a live call and takes it out of the index
// of live calls.
func (pt *pptpTracker) endAt(call *pptpCall, at int64) {
	call.releaseAt = at
	k := pptpOrigKey{call.conn.key, call.orig}
	if pt.byOrig[k] == call {
		delete(pt.byOrig, k)
	}
	if call.peerKnown {
		pt.liveFirst(pptpPeerKey{call.server, call.peer})
	}
}

// liveFirst puts a live call first among those with one server Call ID.
func (pt *pptpTracker) liveFirst(k pptpPeerKey) {
	calls := pt.byPeer[k]
	if len(calls) < 2 || calls[0].releaseAt == 0 {
		return
	}
	for i, call := range calls {
		if call.releaseAt == 0 {
			calls[0], calls[i] = calls[i], calls[0]
			return
		}
	}
}

// endAll ends every live call of a connection.
func (pt *pptpTracker) endAll(c *pptpConn, why string, now int64) {
	for _, call := range c.calls {
		pt.end(call, why, now)
	}
}

// closeConn ends every call of a connection that closed, reset or stopped;
// a closed connection takes no new calls. The TCP layer calls it when it
// accepts a closing RST or the second FIN; the tracker itself when the
// connection is stopped (Stop-Control-Connection-Request or -Reply).
func (pt *pptpTracker) closeConn(c *pptpConn, why string, now int64) {
	if c == nil || c.closed {
		return
	}
	c.closed = true
	pt.endAll(c, why, now)
}

// gone tells the tracker that the TCP flow carrying a control connection is
// gone (expired or evicted): its calls end as on a close, and the record is
// deleted once they are released (at once if it has none).
func (pt *pptpTracker) gone(c *pptpConn, now int64) {
	if c == nil || c.gone {
		return
	}
	pt.closeConn(c, "control connection gone", now)
	pt.endAll(c, "control connection gone", now)
	c.gone = true
	if len(c.calls) == 0 && pt.conns[c.key] == c {
		delete(pt.conns, c.key)
	}
}

// setPeer records the server's Call ID for a call. A call learns it once:
// a later reply naming the call with another ID changes nothing.
func (pt *pptpTracker) setPeer(call *pptpCall, peer uint16) {
	if call.peerKnown {
		return
	}
	call.peer, call.peerKnown = peer, true
	k := pptpPeerKey{call.server, peer}
	pt.byPeer[k] = append(pt.byPeer[k], call)
	pt.liveFirst(k)
}

func (pt *pptpTracker) release(call *pptpCall) {
	k := pptpCallKey{call.server, call.masq}
	if pt.calls[k] == call {
		delete(pt.calls, k)
		if pt.perServer[call.server]--; pt.perServer[call.server] <= 0 {
			delete(pt.perServer, call.server)
		}
	}
	if call.peerKnown {
		pk := pptpPeerKey{call.server, call.peer}
		calls := pt.byPeer[pk]
		for i, other := range calls {
			if other == call {
				last := len(calls) - 1
				copy(calls[i:], calls[i+1:])
				calls[last] = nil
				calls = calls[:last]
				break
			}
		}
		if len(calls) == 0 {
			delete(pt.byPeer, pk)
		} else {
			pt.byPeer[pk] = calls
			pt.liveFirst(pk)
		}
	}
	if ok := (pptpOrigKey{call.conn.key, call.orig}); pt.byOrig[ok] == call {
		delete(pt.byOrig, ok)
	}
	pt.e.hostRelease(call.client, quotaCalls)
	pt.e.log.Info().Stringer("client", netip.AddrFrom4(call.client)).
		Stringer("server", netip.AddrFrom4(call.server)).
		Uint16("call_id", call.orig).Uint16("masq_call_id", call.masq).
		Uint64("gre_out", call.greOut).Uint64("gre_in", call.greIn).
		Msg("pptp call released")
}

// expire releases calls past their grace or setup time, and deletes the
// records of gone connections once their calls are released (the table
// calls gone when a control connection's TCP flow is removed).
func (pt *pptpTracker) expire(now int64) {
	setup := dur(pt.e.cfg.PPTP.CallSetupTimeout)
	for k, c := range pt.conns {
		kept := c.calls[:0]
		for _, call := range c.calls {
			if call.releaseAt == 0 && !call.peerKnown && now-call.created > setup {
				pt.e.log.Info().Stringer("client", netip.AddrFrom4(call.client)).
					Uint16("call_id", call.orig).Msg("pptp call got no reply")
				pt.endAt(call, now)
			}
			if call.releaseAt != 0 && call.releaseAt <= now {
				pt.release(call)
				continue
			}
			kept = append(kept, call)
		}
		clear(c.calls[len(kept):])
		c.calls = kept
		if c.gone && len(c.calls) == 0 {
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
	// Out and In are the call's health each way (client to server, and
	// back), from the GRE sequence numbers.
	Out, In TunnelHealth
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
				Out:        call.out.snapshot(now),
				In:         call.in.snapshot(now),
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
