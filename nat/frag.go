package nat

import (
	"sync/atomic"

	"gvisor.dev/gvisor/pkg/tcpip"
)

// Fragments: only the first fragment of a datagram carries the transport
// header, so the NAT translates it like any packet and remembers, by the
// datagram's (source, destination, protocol, IPv4 identification) as it
// arrived, which address the datagram's other fragments must get. Later
// fragments are then rewritten at the IP layer alone.
//
// Fragments that arrive before their first fragment are held (RFC 4787
// REQ-14: a NAT must handle fragments out of order). The engine keeps a
// copy, returns VerdictHeld (the router sends nothing), and when the first
// fragment passes and its translation is remembered, the held fragments of
// that datagram are translated like any later fragment and queued, in the
// order they arrived, for the side that made the call: Outbound releases
// fragments from the LAN, Inbound fragments from the WAN. The router takes
// them with TakeReleased after each pass over a batch, before it writes
// the batch, so they leave right behind their first fragment. The engine
// never reassembles: every fragment leaves as it came, rewritten.
//
// A held fragment ends in exactly one of these ways, each counted:
//   - released and taken (FragmentHold.Released);
//   - its first fragment was dropped, or passed without its translation
//     being remembered (a bound of the table below): unmatched_fragment;
//   - it waited fragHoldTime (5 s) and no first fragment came (a lost
//     first fragment, or a forgery): fragment_expired;
//   - a bound of the hold was reached: fragment_buffer_full, for the
//     fragment refused or, from the WAN, the oldest one evicted.
//
// Bounds. Fragments from the LAN count against their source host's share
// (limits.max_fragments_per_host, together with its table entries), and
// against 1024 fragments and 2 MiB for all LAN hosts (max_held_fragments_lan),
// past which new ones are refused. Fragments from the WAN name no LAN host
// (they carry no port) and their sources can be forged, so they get a
// budget of their own, 1024 fragments and 2 MiB (max_held_fragments_wan),
// which only fragments addressed to the WAN address reach (the router hands
// the engine nothing else; one whose source is the WAN address itself, a
// hairpinned fragment, is never held). A flood of forged fragments from the
// WAN therefore cannot take the LAN hosts' budget, nor their shares: their
// own fragments out of order keep working. Within the WAN budget the
// oldest fragment makes room for a new one, so a genuine fragment is lost
// only when more than 1024 others arrive between it and its first fragment
// (a reordering gap is typically below a millisecond; refusing new ones
// instead would let 200 forged packets a second block every genuine one).
// Released fragments count against the bounds until the router takes them.
// Buffers come from a small free list (at most 64 kept, 2 KiB each); the
// packet path without held fragments allocates nothing.
//
// Held fragments, like the translations, are not kept across a restart
// (state.go) and the ones from the WAN are dropped when the WAN address
// changes (wanaddr.go): they were addressed to the old one.

const (
	fragLifetime   = int64(30e9) // a datagram's fragments arrive within 30 s or are lost
	fragMaxEntries = 4096

	fragHoldTime  = int64(5e9) // a fragment waits at most 5 s for its first fragment
	fragHoldMax   = 1024       // fragments held per side (from the LAN, from the WAN)
	fragHoldBytes = 2 << 20    // bytes of fragments held per side
	fragBufSize   = 2048       // the free list's buffers; larger fragments get their own
	fragFreeMax   = 64         // buffers kept on the free list
)

type fragKey struct {
	src, dst [4]byte
	id       uint16
	proto    uint8
}

// fragKeyOf must be taken before the packet is rewritten.
func fragKeyOf(p *Packet) fragKey {
	return fragKey{src: p.Src, dst: p.Dst, id: p.ipID(), proto: p.Proto}
}

type fragEntry struct {
	// newAddr replaces the source (outbound) or destination (inbound).
	newAddr [4]byte
	// host is the LAN host whose share the entry counts against.
	host    [4]byte
	expires int64
}

// heldFrag is one fragment waiting for its first fragment, then for the
// router to take it.
type heldFrag struct {
	key     fragKey
	buf     []byte // the packet; cap from the free list or its own
	host    [4]byte
	expires int64
	verdict Verdict // once released: VerdictToWAN or VerdictToLAN
	// prev and next link the side's waiting fragments in arrival order
	// (which is expiry order); same links the fragments of one datagram.
	prev, next *heldFrag
	same       *heldFrag
}

// heldChain is one datagram's waiting fragments, in arrival order.
type heldChain struct{ first, last *heldFrag }

// holdQueue is one side's held fragments.
type holdQueue struct {
	outbound bool
	limit    Limit
	byKey    map[fragKey]heldChain
	// head and tail: the waiting fragments, oldest first.
	head, tail *heldFrag
	// n and bytes count waiting and released fragments: the bounds.
	n, bytes int
	// ready: datagrams whose first fragment passed during this call, to
	// release before the call returns.
	ready []*heldFrag
	// released: translated, for TakeReleased, from pos on.
	released []*heldFrag
	pos      int
	avail    atomic.Int32 // len(released) - pos, read without the lock
}

// fragTable remembers first fragments' translations, 4096 entries in all
// and limits.max_fragments_per_host per LAN host, so that one host (or
// an outsider fragmenting towards one host) cannot take the table; and it
// holds the fragments that came before their first fragment.
type fragTable struct {
	e   *Engine
	out map[fragKey]fragEntry
	in  map[fragKey]fragEntry

	heldOut, heldIn holdQueue
	free            []*heldFrag
	pkt             Packet // scratch for releasing
	// Counters of FragmentHold.
	total, released, dropped uint64
}

func (ft *fragTable) init(e *Engine) {
	ft.e = e
	ft.out = make(map[fragKey]fragEntry)
	ft.in = make(map[fragKey]fragEntry)
	ft.heldOut = holdQueue{outbound: true, limit: LimitHeldFragmentsLAN, byKey: make(map[fragKey]heldChain)}
	ft.heldIn = holdQueue{limit: LimitHeldFragmentsWAN, byKey: make(map[fragKey]heldChain)}
}

// first is called for a first fragment (k is its key from before the
// rewrite) with the handler's result: a first fragment that passed has its
// translation remembered, and its held fragments follow it; one that did
// not pass takes its held fragments with it.
func (ft *fragTable) first(outbound bool, k fragKey, r Result, newAddr [4]byte, now int64) {
	q, pass := &ft.heldIn, VerdictToLAN
	if outbound {
		q, pass = &ft.heldOut, VerdictToWAN
	}
	if r.Verdict == pass && ft.remember(outbound, k, newAddr, now) {
		q.markReady(k)
		return
	}
	ft.discard(q, k, now)
}

// remember records the translation of a first fragment (k is its key from
// before the rewrite) and reports whether it is known. When a bound refuses
// it, the first fragment still goes on but the others are dropped as
// unmatched.
func (ft *fragTable) remember(outbound bool, k fragKey, newAddr [4]byte, now int64) bool {
	m, host := ft.in, newAddr
	if outbound {
		m, host = ft.out, k.src
	}
	if old, ok := m[k]; ok {
		// The same datagram again (a retransmitted first fragment).
		old.expires = now + fragLifetime
		m[k] = old
		return true
	}
	if len(ft.out)+len(ft.in) >= fragMaxEntries {
		ft.e.Limits.refuse(LimitFragments)
		return false
	}
	if !ft.e.hostAdmit(host, quotaFragments) {
		return false
	}
	m[k] = fragEntry{newAddr: newAddr, host: host, expires: now + fragLifetime}
	return true
}

// outboundTail translates a non-first outbound fragment, or holds it when
// its first fragment has not been seen.
func (ft *fragTable) outboundTail(p *Packet, now int64) Result {
	if r, ok := ft.followOut(p, now); ok {
		return r
	}
	return ft.hold(&ft.heldOut, p, now)
}

// inboundTail translates a non-first inbound fragment, or holds it when
// its first fragment has not been seen. A fragment from the WAN address
// itself is hairpinned (Outbound translated it already) and is not held.
func (ft *fragTable) inboundTail(p *Packet, now int64) Result {
	if r, ok := ft.followIn(p, now); ok {
		return r
	}
	if p.Src == ft.e.wan {
		return drop(DropFragment)
	}
	return ft.hold(&ft.heldIn, p, now)
}

func (ft *fragTable) followOut(p *Packet, now int64) (Result, bool) {
	e, ok := ft.out[fragKeyOf(p)]
	if !ok || e.expires <= now {
		return Result{}, false
	}
	p.IP.SetSourceAddressWithChecksumUpdate(tcpip.AddrFrom4(e.newAddr))
	p.Src = e.newAddr
	return toWAN, true
}

func (ft *fragTable) followIn(p *Packet, now int64) (Result, bool) {
	e, ok := ft.in[fragKeyOf(p)]
	if !ok || e.expires <= now {
		return Result{}, false
	}
	p.IP.SetDestinationAddressWithChecksumUpdate(tcpip.AddrFrom4(e.newAddr))
	p.Dst = e.newAddr
	return toLAN, true
}

// hold keeps a copy of a fragment whose first fragment has not been seen.
func (ft *fragTable) hold(q *holdQueue, p *Packet, now int64) Result {
	ft.expireHeld(q, now)
	size := len(p.Buf)
	for !q.outbound && q.head != nil && (q.n >= fragHoldMax || q.bytes+size > fragHoldBytes) {
		// From the WAN: the oldest makes room.
		ft.e.Limits.evict(q.limit)
		ft.dropHeld(q, q.head, DropFragmentBufferFull)
	}
	if q.n >= fragHoldMax || q.bytes+size > fragHoldBytes {
		ft.e.Limits.refuse(q.limit)
		return drop(DropFragmentBufferFull)
	}
	if q.outbound && !ft.e.hostAdmit(p.Src, quotaFragments) {
		return drop(DropFragmentBufferFull)
	}
	hf := ft.alloc(size)
	copy(hf.buf, p.Buf)
	hf.key = fragKeyOf(p)
	hf.host = p.Src
	hf.expires = now + fragHoldTime
	q.n++
	q.bytes += size
	ft.total++
	// Link: arrival order, and the datagram's chain.
	hf.prev = q.tail
	if q.tail != nil {
		q.tail.next = hf
	} else {
		q.head = hf
	}
	q.tail = hf
	c := q.byKey[hf.key]
	if c.last != nil {
		c.last.same = hf
	} else {
		c.first = hf
	}
	c.last = hf
	q.byKey[hf.key] = c
	return Result{Verdict: VerdictHeld}
}

// unlink takes a waiting fragment out of the arrival order.
func (q *holdQueue) unlink(hf *heldFrag) {
	if hf.prev != nil {
		hf.prev.next = hf.next
	} else {
		q.head = hf.next
	}
	if hf.next != nil {
		hf.next.prev = hf.prev
	} else {
		q.tail = hf.prev
	}
	hf.prev, hf.next = nil, nil
}

// markReady takes datagram k's waiting fragments off the map and the
// arrival order, for release before the call returns (a hairpinned first
// fragment's second translation is remembered after this).
func (q *holdQueue) markReady(k fragKey) {
	first := q.take(k)
	if first == nil {
		return
	}
	for hf := first; hf != nil; hf = hf.same {
		q.unlink(hf)
	}
	q.ready = append(q.ready, first)
}

// take removes datagram k from the map and returns its first waiting
// fragment (nil if none waits); the chain stays in the arrival order for
// the caller to unlink.
func (q *holdQueue) take(k fragKey) *heldFrag {
	if len(q.byKey) == 0 {
		return nil
	}
	c, ok := q.byKey[k]
	if !ok {
		return nil
	}
	delete(q.byKey, k)
	return c.first
}

// discard drops datagram k's waiting fragments: unmatched, or expired
// for those whose time ran out before the sweep.
func (ft *fragTable) discard(q *holdQueue, k fragKey, now int64) {
	for hf := q.take(k); hf != nil; {
		next := hf.same
		hf.same = nil
		q.unlink(hf)
		why := DropFragment
		if hf.expires <= now {
			why = DropFragmentExpired
		}
		ft.freeHeld(q, hf, why)
		hf = next
	}
}

// dropHeld drops the oldest waiting fragment hf (the first of its chain).
func (ft *fragTable) dropHeld(q *holdQueue, hf *heldFrag, why DropReason) {
	if hf.same == nil {
		delete(q.byKey, hf.key)
	} else {
		c := q.byKey[hf.key]
		c.first = hf.same
		q.byKey[hf.key] = c
	}
	hf.same = nil
	q.unlink(hf)
	ft.freeHeld(q, hf, why)
}

// expireHeld drops the waiting fragments whose time ran out.
func (ft *fragTable) expireHeld(q *holdQueue, now int64) {
	for q.head != nil && q.head.expires <= now {
		ft.dropHeld(q, q.head, DropFragmentExpired)
	}
}

// release translates the fragments whose first fragment passed during this
// call and queues them for TakeReleased. It runs at the end of Outbound and
// Inbound, under the lock, after the first fragment's every translation.
func (ft *fragTable) release(now int64) {
	ft.releaseQueue(&ft.heldOut, now)
	ft.releaseQueue(&ft.heldIn, now)
}

func (ft *fragTable) releaseQueue(q *holdQueue, now int64) {
	if len(q.ready) == 0 {
		return
	}
	p := &ft.pkt
	for i, hf := range q.ready {
		q.ready[i] = nil
		for hf != nil {
			next := hf.same
			hf.same = nil
			r := drop(DropFragment)
			if hf.expires <= now {
				r = drop(DropFragmentExpired)
			} else if p.Parse(hf.buf) == DropNone { // it parsed when it came
				r = ft.follow(q.outbound, p, now)
			}
			if r.Verdict == VerdictDrop {
				ft.freeHeld(q, hf, r.Reason)
			} else {
				hf.verdict = r.Verdict
				q.released = append(q.released, hf)
				q.avail.Add(1)
			}
			hf = next
		}
	}
	q.ready = q.ready[:0]
	*p = Packet{}
}

// follow translates a released fragment as if it had just arrived after
// its first fragment: from the LAN as Outbound does, hairpin included;
// from the WAN as Inbound does.
func (ft *fragTable) follow(outbound bool, p *Packet, now int64) Result {
	if !outbound {
		if r, ok := ft.followIn(p, now); ok {
			return r
		}
		return drop(DropFragment)
	}
	src := p.Src
	r, ok := ft.followOut(p, now)
	if !ok {
		return drop(DropFragment)
	}
	if p.Dst == ft.e.wan {
		// Hairpinned: in again, as Outbound does; the first fragment's
		// inbound translation was remembered by now.
		r = ft.e.hairpin(p, src, now)
	}
	return r
}

// alloc returns a held fragment with room for size bytes.
func (ft *fragTable) alloc(size int) *heldFrag {
	var hf *heldFrag
	if n := len(ft.free); n > 0 {
		hf = ft.free[n-1]
		ft.free[n-1] = nil
		ft.free = ft.free[:n-1]
	} else {
		hf = &heldFrag{}
	}
	if cap(hf.buf) < size {
		hf.buf = make([]byte, max(size, fragBufSize))
	}
	hf.buf = hf.buf[:size]
	return hf
}

// freeHeld gives back what a held fragment took, counting it as dropped
// for why, or as released when why is DropNone.
func (ft *fragTable) freeHeld(q *holdQueue, hf *heldFrag, why DropReason) {
	q.n--
	q.bytes -= len(hf.buf)
	if q.outbound {
		ft.e.hostRelease(hf.host, quotaFragments)
	}
	if why == DropNone {
		ft.released++
	} else {
		ft.dropped++
		ft.e.Drops.Add(why)
	}
	buf := hf.buf
	if cap(buf) > fragBufSize {
		buf = nil
	}
	*hf = heldFrag{buf: buf[:0]}
	if len(ft.free) < fragFreeMax {
		ft.free = append(ft.free, hf)
	}
}

// HasReleased reports, without the lock, whether fragments that waited
// for their first fragment are translated and ready for TakeReleased:
// outbound ones (from the LAN, released by Outbound) or inbound ones (from
// the WAN, released by Inbound).
func (e *Engine) HasReleased(outbound bool) bool {
	if outbound {
		return e.frags.heldOut.avail.Load() > 0
	}
	return e.frags.heldIn.avail.Load() > 0
}

// TakeReleased hands over the oldest released fragment of one side, in
// the order they arrived: it copies the packet into the buffer alloc
// returns for its length and returns the length and where the packet goes
// (VerdictToWAN, or VerdictToLAN: from the WAN, or hairpinned). It returns
// 0 when none is waiting, or when alloc returns a buffer shorter than n
// (the fragment then stays for the next call). alloc runs under the
// engine's lock and must not call the engine.
func (e *Engine) TakeReleased(outbound bool, alloc func(n int) []byte) (int, Verdict) {
	ft := &e.frags
	q := &ft.heldIn
	if outbound {
		q = &ft.heldOut
	}
	if q.avail.Load() == 0 {
		return 0, VerdictDrop
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if q.pos == len(q.released) {
		return 0, VerdictDrop
	}
	hf := q.released[q.pos]
	n := len(hf.buf)
	buf := alloc(n)
	if len(buf) < n {
		return 0, VerdictDrop
	}
	copy(buf, hf.buf)
	v := hf.verdict
	q.released[q.pos] = nil
	q.pos++
	if q.pos == len(q.released) {
		q.released, q.pos = q.released[:0], 0
	}
	q.avail.Add(-1)
	ft.freeHeld(q, hf, DropNone)
	return n, v
}

// FragmentHold describes the fragments held for their first fragment.
type FragmentHold struct {
	// HeldLAN and HeldWAN are the fragments from each side held now,
	// released ones not yet taken included; BytesLAN and BytesWAN their
	// sizes.
	HeldLAN, HeldWAN   int
	BytesLAN, BytesWAN int
	// Total counts the fragments ever held; each was then Released
	// (taken by the router) or Dropped (counted under a drop reason), or
	// is still held.
	Total, Released, Dropped uint64
}

// FragmentHold returns the gauges and counters of the held fragments.
func (e *Engine) FragmentHold() FragmentHold {
	e.mu.Lock()
	defer e.mu.Unlock()
	ft := &e.frags
	return FragmentHold{
		HeldLAN: ft.heldOut.n, HeldWAN: ft.heldIn.n,
		BytesLAN: ft.heldOut.bytes, BytesWAN: ft.heldIn.bytes,
		Total: ft.total, Released: ft.released, Dropped: ft.dropped,
	}
}

func (ft *fragTable) expire(now int64) {
	for _, m := range []map[fragKey]fragEntry{ft.out, ft.in} {
		for k, fe := range m {
			if fe.expires <= now {
				delete(m, k)
				ft.e.hostRelease(fe.host, quotaFragments)
			}
		}
	}
	ft.expireHeld(&ft.heldOut, now)
	ft.expireHeld(&ft.heldIn, now)
}

// wanChanged forgets the translations made for the old WAN address, and
// the fragments from the WAN waiting for their first fragment, which were
// addressed to it. Fragments from the LAN still wait: their first fragment
// will be translated to the new address.
func (ft *fragTable) wanChanged() {
	for _, m := range []map[fragKey]fragEntry{ft.out, ft.in} {
		for k, fe := range m {
			delete(m, k)
			ft.e.hostRelease(fe.host, quotaFragments)
		}
	}
	for ft.heldIn.head != nil {
		ft.dropHeld(&ft.heldIn, ft.heldIn.head, DropFragment)
	}
}
