package nat

// NAT state that outlives the process.
//
// SaveState writes everything a restarted router needs to keep forwarding
// the connections it was forwarding; RestoreState reads it back into a new
// engine before the engine sees a packet. The file is also the unit an
// active/standby pair would replicate: a standby that restores the
// active's latest snapshot takes over its mappings, flows with their TCP
// windows, IKE sessions, ESP pairs and PPTP calls, provided it owns the
// same WAN address and LAN prefixes (which the header records and the
// restore checks).
//
// Format (all integers big-endian):
//
//	header
//	  magic    8 bytes  "VMQSTATE"
//	  version  uint16   format version, 1 for this layout
//	  flags    uint16   0
//	  created  int64    wall-clock time of the snapshot, Unix nanoseconds
//	  wan      4 bytes  the WAN address the mappings live on
//	  nlan     uint8    LAN prefixes, then nlan × (4-byte address, uint8 bits)
//	  bodylen  uint32   length of the body
//	  crc      uint32   CRC-32C (Castagnoli) of the body
//	body: sections in this order, each kind uint8, length uint32, payload;
//	  every payload is a uint32 record count and the records:
//	  1 mappings   proto, static, internal endpoint, external port, created,
//	               last used, last remote, expiry, then its flows: remote
//	               endpoint, expiry, last seen, assured/out/in, and for TCP
//	               the sequence-window tracker of both directions
//	  2 ike        IKE sessions: host endpoint, remote, remote port, both
//	               SPIs, created, last seen, unconfirmed
//	  3 contacts   last IKE exchange per remote and host
//	  4 natt       NAT-T flows keeping WAN port 4500: remote, host, expiry
//	  5 esp        SPI pairs and candidates: host, remote, SPIs, state,
//	               times, retries, first sequence number, claim (index of
//	               a waiting pair in this section or -1), charged, waiting
//	  6 pending    unowned inbound SPIs per remote
//	  7 recent     answered claims per remote
//	  8 squelch    squelched outbound SPIs
//	  9 pptp       control connections with both streams' parser state and
//	               edit rings, and their calls (Call IDs, masqueraded ID,
//	               server's ID, created, release time)
//	  10 gre       address-only GRE bindings
//
// Engine times are stored relative to the snapshot (an expiry as the time
// left, a creation as a negative age) and continue from the restore: the
// time the router was down does not count against any timer.
//
// Not stored, deliberately: fragment translations (they live 30 s and a
// datagram whose fragments straddle a restart is lost like any other),
// the refused AH pairs (display only), the rate buckets of hosts and WAN
// sources (they start full), the counters of drops and limits, and the
// secondary indexes (remote-address filtering state, per-host accounting,
// expendable lists, timer wheel, Call ID indexes, ESP lookups), which the
// restore rebuilds from the records.
//
// Versioning: any change to a record's layout or a new section is a new
// version. A decoder reads every version up to its own and rejects a newer
// one. nat/testdata/state-v<N>.bin holds a file of each earlier format,
// written by a scripted engine (TestStateWriteTestdata), and a test decodes
// it: when the format changes, keep the old file and its test.
//
// The decoder treats the file as hostile: every count is bounded by the
// bytes left, every enum and length is checked, the checksum must match,
// and any error leaves the engine untouched.

import (
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/netip"
	"slices"
	"time"
)

// StateVersion is the format version SaveState writes.
const StateVersion = 1

var stateMagic = [8]byte{'V', 'M', 'Q', 'S', 'T', 'A', 'T', 'E'}

// maxStateFile bounds what RestoreState reads.
const maxStateFile = 512 << 20

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// Errors of RestoreState. Each is wrapped with the detail.
var (
	ErrStateCorrupt = errors.New("state file corrupt")
	ErrStateNewer   = errors.New("state file of a newer format")
	ErrStateForeign = errors.New("state file of another WAN address or LAN")
	ErrStateTooOld  = errors.New("state file too old")
)

const (
	secMappings = 1 + iota
	secIKE
	secContacts
	secNATT
	secESP
	secPending
	secRecent
	secSquelch
	secPPTP
	secGRE
	numSections = secGRE
)

var sectionNames = [...]string{secMappings: "mappings", secIKE: "ike", secContacts: "contacts", secNATT: "natt",
	secESP: "esp", secPending: "pending", secRecent: "recent", secSquelch: "squelch", secPPTP: "pptp", secGRE: "gre"}

// Snapshot records. Times are relative to the snapshot's engine time.

type snapFlow struct {
	remote            endpoint
	expires, lastSeen int64
	assured, out, in  bool
	tcp               tcpConn
}

type snapMapping struct {
	proto             uint8
	static            bool
	in                endpoint
	ext               uint16
	created, lastUsed int64
	remote            endpoint
	expires           int64
	flows             []snapFlow
}

type snapIKE struct {
	host              endpoint
	remote            [4]byte
	remotePort        uint16
	ispi, rspi        uint64
	created, lastSeen int64
	unconfirmed       bool
}

type snapContactHost struct {
	host [4]byte
	at   int64
}

type snapContact struct {
	remote, latest [4]byte
	latestAt       int64
	hosts          []snapContactHost
}

type snapNATT struct {
	remote, host endpoint
	expires      int64
}

type snapESP struct {
	host, remote                    [4]byte
	outSPI, inSPI                   uint32
	state                           espState
	created, lastSeen, waitDeadline int64
	retries                         uint32
	firstSeq                        uint32
	claim                           int32
	charged, waiting                bool
}

type snapPending struct {
	remote [4]byte
	list   []pendingInbound
}

type snapRecent struct {
	remote [4]byte
	claim  recentClaim
}

type snapSquelch struct {
	k     espOutKey
	until int64
}

type snapCall struct {
	orig, masq, peer uint16
	peerKnown        bool
	created          int64
	ending           bool
	releaseAt        int64
	greOut, greIn    uint64
}

type snapConn struct {
	key          pptpConnKey
	lastSeen     int64
	closed, gone bool
	dirs         [2]pptpStream
	calls        []snapCall
}

type snapGRE struct {
	remote, host [4]byte
	expires      int64
}

// stateSnap is the decoded form of a state file.
type stateSnap struct {
	version  uint16
	created  time.Time
	wan      [4]byte
	lan      []netip.Prefix
	mappings []snapMapping
	ike      []snapIKE
	contacts []snapContact
	natt     []snapNATT
	esp      []snapESP
	pending  []snapPending
	recent   []snapRecent
	squelch  []snapSquelch
	pptp     []snapConn
	gre      []snapGRE
}

// SaveState writes the engine's state to w, for the LAN prefixes lan (the
// restore checks them). The engine's lock is held only while the state is
// copied; the encoding and the write run outside it.
func (e *Engine) SaveState(w io.Writer, lan []netip.Prefix) error {
	s := e.snapshot(lan)
	_, err := w.Write(encodeState(s))
	return err
}

func cmpAddr(a, b [4]byte) int { return bytes.Compare(a[:], b[:]) }

func cmpEP(a, b endpoint) int {
	if c := cmpAddr(a.addr, b.addr); c != 0 {
		return c
	}
	return int(a.port) - int(b.port)
}

func rel(t, now int64) int64 { return t - now }

// stateCopyBatch is how many flows snapshot copies per hold of the engine
// lock: about as long a hold as one batch of Expire's sweep.
const stateCopyBatch = 1024

// flowCopy is a flow copied under the lock, with its mapping's identity.
type flowCopy struct {
	m *Mapping
	f snapFlow
}

// snapshot copies the engine's state. The flows are copied in batches, each
// under its own hold of the lock (each flow's times relative to the time of
// its batch), so that a table of a million flows never stalls the packet
// loops; the rest is copied under one hold at the end. A flow created
// between batches may be missed, as a snapshot taken a moment earlier
// would miss it.
func (e *Engine) snapshot(lan []netip.Prefix) *stateSnap {
	e.mu.Lock()
	n, nm := len(e.table.flows), len(e.table.byExt)
	e.mu.Unlock()
	// Allocated outside the lock.
	flows := make([]flowCopy, 0, n+n/8)
	mappings := make([]*Mapping, 0, nm+nm/8)
	mcopies := make([]snapMapping, 0, nm+nm/8)
	e.mu.Lock()
	t := &e.table
	s := &stateSnap{version: StateVersion, created: e.clock.Now(), wan: e.wan, lan: normPrefixes(lan)}
	now := e.now()
	i := 0
	for _, f := range t.flows {
		if i++; i%stateCopyBatch == 0 {
			e.mu.Unlock()
			e.mu.Lock()
			now = e.now()
		}
		if f.dead || f.expires <= now {
			continue
		}
		flows = append(flows, flowCopy{f.m, snapFlow{remote: f.remote, expires: rel(f.expires, now),
			lastSeen: rel(f.lastSeen, now), assured: f.assured, out: f.out, in: f.in, tcp: f.tcp}})
	}
	now = e.now()
	for _, m := range t.byExt {
		if m.flows > 0 {
			mappings = append(mappings, m)
			mcopies = append(mcopies, snapMapping{proto: m.Proto, static: m.Static, in: m.Int, ext: m.Ext,
				created: rel(m.created, now), lastUsed: rel(m.lastUsed, now), remote: m.remote,
				expires: rel(m.expires, now)})
		}
	}
	for _, x := range e.ike.byI {
		if x.removed || e.ike.dead(x, now) {
			continue
		}
		s.ike = append(s.ike, snapIKE{host: x.host, remote: x.remote, remotePort: x.remotePort, ispi: x.ispi,
			rspi: x.rspi, created: rel(x.created, now), lastSeen: rel(x.lastSeen, now), unconfirmed: x.unconfirmed})
	}
	for remote, c := range e.ike.lastIKE {
		sc := snapContact{remote: remote, latest: c.latest, latestAt: rel(c.latestAt, now)}
		for h, at := range c.hosts {
			sc.hosts = append(sc.hosts, snapContactHost{h, rel(at, now)})
		}
		s.contacts = append(s.contacts, sc)
	}
	for k, f := range e.ike.natt {
		if f.expires > now {
			s.natt = append(s.natt, snapNATT{remote: k.remote, host: f.host, expires: rel(f.expires, now)})
		}
	}
	h := e.esp
	pairs := make([]*espPair, 0, len(h.pairs))
	for pr := range h.pairs {
		pairs = append(pairs, pr)
	}
	for remote, list := range h.pending {
		s.pending = append(s.pending, snapPending{remote, slices.Clone(list)})
	}
	for remote, rc := range h.recent {
		s.recent = append(s.recent, snapRecent{remote, rc})
	}
	for k, until := range h.squelch {
		s.squelch = append(s.squelch, snapSquelch{k, until})
	}
	for _, c := range e.pptp.conns {
		sc := snapConn{key: c.key, lastSeen: rel(c.lastSeen, now), closed: c.closed, gone: c.gone, dirs: c.dirs}
		for _, call := range c.calls {
			sc.calls = append(sc.calls, snapCall{orig: call.orig, masq: call.masq, peer: call.peer,
				peerKnown: call.peerKnown, created: rel(call.created, now), ending: call.releaseAt != 0,
				releaseAt: rel(call.releaseAt, now), greOut: call.greOut, greIn: call.greIn})
			if call.releaseAt == 0 {
				sc.calls[len(sc.calls)-1].releaseAt = 0
			}
		}
		s.pptp = append(s.pptp, sc)
	}
	for remote, b := range e.gre.bindings {
		if b.expires > now {
			s.gre = append(s.gre, snapGRE{remote, b.host, rel(b.expires, now)})
		}
	}
	// ESP pairs are copied with their claims as pointers, turned into
	// indexes once sorted.
	esp := make([]snapESP, len(pairs))
	for i, pr := range pairs {
		esp[i] = snapESP{host: pr.host, remote: pr.remote, outSPI: pr.outSPI, inSPI: pr.inSPI, state: pr.state,
			created: rel(pr.created, now), lastSeen: rel(pr.lastSeen, now), waitDeadline: rel(pr.waitDeadline, now),
			retries: uint32(pr.retries), firstSeq: pr.firstSeq, claim: -1, charged: pr.charged,
			waiting: h.waiting[pr.remote] == pr}
	}
	claims := make([]*espPair, len(pairs))
	for i, pr := range pairs {
		if pr.claim != nil && pr.claim.linked {
			claims[i] = pr.claim
		}
	}
	e.mu.Unlock()
	index := make(map[*Mapping]int, len(mappings))
	for i, m := range mappings {
		index[m] = i
	}
	for _, fc := range flows {
		if i, ok := index[fc.m]; ok {
			mcopies[i].flows = append(mcopies[i].flows, fc.f)
		}
	}
	for _, m := range mcopies {
		if len(m.flows) > 0 {
			s.mappings = append(s.mappings, m)
		}
	}
	for i := range s.squelch {
		s.squelch[i].until = rel(s.squelch[i].until, now)
	}
	for i := range s.recent {
		s.recent[i].claim.at = rel(s.recent[i].claim.at, now)
		s.recent[i].claim.until = rel(s.recent[i].claim.until, now)
	}
	for i := range s.pending {
		for j := range s.pending[i].list {
			s.pending[i].list[j].seen = rel(s.pending[i].list[j].seen, now)
		}
	}
	// Sorted, so that one state always encodes to the same bytes.
	order := make([]int, len(pairs))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return cmpESP(&esp[a], &esp[b]) })
	espIndex := make(map[*espPair]int32, len(pairs))
	for newI, oldI := range order {
		espIndex[pairs[oldI]] = int32(newI)
	}
	s.esp = make([]snapESP, len(pairs))
	for newI, oldI := range order {
		s.esp[newI] = esp[oldI]
		if c := claims[oldI]; c != nil {
			if ci, ok := espIndex[c]; ok {
				s.esp[newI].claim = ci
			}
		}
	}
	s.sort()
	return s
}

func cmpESP(a, b *snapESP) int {
	if c := a.created - b.created; c != 0 {
		if c < 0 {
			return -1
		}
		return 1
	}
	if c := cmpAddr(a.host, b.host); c != 0 {
		return c
	}
	if c := cmpAddr(a.remote, b.remote); c != 0 {
		return c
	}
	if a.outSPI != b.outSPI {
		return cmpU64(uint64(a.outSPI), uint64(b.outSPI))
	}
	if a.inSPI != b.inSPI {
		return cmpU64(uint64(a.inSPI), uint64(b.inSPI))
	}
	return int(a.state) - int(b.state)
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// sort orders every record list (not the ESP pairs, whose order the claims
// depend on) so that one state always encodes the same.
func (s *stateSnap) sort() {
	slices.SortFunc(s.mappings, func(a, b snapMapping) int {
		if a.proto != b.proto {
			return int(a.proto) - int(b.proto)
		}
		return int(a.ext) - int(b.ext)
	})
	for i := range s.mappings {
		slices.SortFunc(s.mappings[i].flows, func(a, b snapFlow) int { return cmpEP(a.remote, b.remote) })
	}
	slices.SortFunc(s.ike, func(a, b snapIKE) int {
		if c := cmpAddr(a.remote, b.remote); c != 0 {
			return c
		}
		return cmpU64(a.ispi, b.ispi)
	})
	slices.SortFunc(s.contacts, func(a, b snapContact) int { return cmpAddr(a.remote, b.remote) })
	for i := range s.contacts {
		slices.SortFunc(s.contacts[i].hosts, func(a, b snapContactHost) int { return cmpAddr(a.host, b.host) })
	}
	slices.SortFunc(s.natt, func(a, b snapNATT) int { return cmpEP(a.remote, b.remote) })
	slices.SortFunc(s.pending, func(a, b snapPending) int { return cmpAddr(a.remote, b.remote) })
	slices.SortFunc(s.recent, func(a, b snapRecent) int { return cmpAddr(a.remote, b.remote) })
	slices.SortFunc(s.squelch, func(a, b snapSquelch) int {
		if c := cmpAddr(a.k.host, b.k.host); c != 0 {
			return c
		}
		if c := cmpAddr(a.k.remote, b.k.remote); c != 0 {
			return c
		}
		return cmpU64(uint64(a.k.spi), uint64(b.k.spi))
	})
	slices.SortFunc(s.pptp, func(a, b snapConn) int {
		if c := cmpEP(a.key.client, b.key.client); c != 0 {
			return c
		}
		return cmpEP(a.key.server, b.key.server)
	})
	slices.SortFunc(s.gre, func(a, b snapGRE) int { return cmpAddr(a.remote, b.remote) })
}

// normPrefixes masks, sorts and deduplicates LAN prefixes, so that two
// lists of the same prefixes compare equal.
func normPrefixes(in []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if p.Addr().Is4() {
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out)
}

func writeTCP(w *stateWriter, c *tcpConn) {
	for i := range c.peer {
		p := &c.peer[i]
		w.u32(p.end)
		w.u32(p.maxEnd)
		w.u32(p.maxWin)
		w.u32(p.iss)
		w.u32(p.finEnd)
		w.u8(p.scale)
		w.u16(uint16(p.flags))
	}
	w.u32(c.pending.seq)
	w.u32(c.pending.end)
	w.u16(c.pending.win)
	w.u8(uint8(c.pending.ws))
	w.u8(c.pending.dir)
	w.u32(c.ignoredAck)
	w.u8(uint8(c.state))
	w.u8(uint8(c.flags))
}

func writeStream(w *stateWriter, d *pptpStream) {
	w.flag(d.synced)
	w.u32(d.iss)
	w.u32(d.next)
	w.flag(d.broken)
	w.u32(d.brokenAt)
	w.u32(d.msgStart)
	w.u32(uint32(d.have))
	w.u32(uint32(d.length))
	w.b = append(w.b, d.head[:]...)
	w.u64(uint64(d.nEdits))
	for _, ed := range d.edits {
		w.u32(ed.seq)
		w.b = append(w.b, ed.val[:]...)
	}
}

// encodeState writes a snapshot in the current format.
func encodeState(s *stateSnap) []byte {
	var w stateWriter
	w.section(secMappings, func() {
		w.u32(uint32(len(s.mappings)))
		for _, m := range s.mappings {
			w.u8(m.proto)
			w.flag(m.static)
			w.ep(m.in)
			w.u16(m.ext)
			w.i64(m.created)
			w.i64(m.lastUsed)
			w.ep(m.remote)
			w.i64(m.expires)
			w.u32(uint32(len(m.flows)))
			for i := range m.flows {
				f := &m.flows[i]
				w.ep(f.remote)
				w.i64(f.expires)
				w.i64(f.lastSeen)
				w.u8(b2u(f.assured) | b2u(f.out)<<1 | b2u(f.in)<<2)
				if m.proto == ProtoTCP {
					writeTCP(&w, &f.tcp)
				}
			}
		}
	})
	w.section(secIKE, func() {
		w.u32(uint32(len(s.ike)))
		for _, x := range s.ike {
			w.ep(x.host)
			w.addr(x.remote)
			w.u16(x.remotePort)
			w.u64(x.ispi)
			w.u64(x.rspi)
			w.i64(x.created)
			w.i64(x.lastSeen)
			w.flag(x.unconfirmed)
		}
	})
	w.section(secContacts, func() {
		w.u32(uint32(len(s.contacts)))
		for _, c := range s.contacts {
			w.addr(c.remote)
			w.addr(c.latest)
			w.i64(c.latestAt)
			w.u32(uint32(len(c.hosts)))
			for _, h := range c.hosts {
				w.addr(h.host)
				w.i64(h.at)
			}
		}
	})
	w.section(secNATT, func() {
		w.u32(uint32(len(s.natt)))
		for _, n := range s.natt {
			w.ep(n.remote)
			w.ep(n.host)
			w.i64(n.expires)
		}
	})
	w.section(secESP, func() {
		w.u32(uint32(len(s.esp)))
		for _, p := range s.esp {
			w.addr(p.host)
			w.addr(p.remote)
			w.u32(p.outSPI)
			w.u32(p.inSPI)
			w.u8(uint8(p.state))
			w.i64(p.created)
			w.i64(p.lastSeen)
			w.i64(p.waitDeadline)
			w.u32(p.retries)
			w.u32(p.firstSeq)
			w.u32(uint32(p.claim))
			w.u8(b2u(p.charged) | b2u(p.waiting)<<1)
		}
	})
	w.section(secPending, func() {
		w.u32(uint32(len(s.pending)))
		for _, p := range s.pending {
			w.addr(p.remote)
			w.u32(uint32(len(p.list)))
			for _, pi := range p.list {
				w.u32(pi.spi)
				w.i64(pi.seen)
				w.u32(pi.firstSeq)
				w.flag(pi.confirmed)
			}
		}
	})
	w.section(secRecent, func() {
		w.u32(uint32(len(s.recent)))
		for _, r := range s.recent {
			w.addr(r.remote)
			w.addr(r.claim.host)
			w.i64(r.claim.at)
			w.i64(r.claim.until)
		}
	})
	w.section(secSquelch, func() {
		w.u32(uint32(len(s.squelch)))
		for _, q := range s.squelch {
			w.addr(q.k.host)
			w.addr(q.k.remote)
			w.u32(q.k.spi)
			w.i64(q.until)
		}
	})
	w.section(secPPTP, func() {
		w.u32(uint32(len(s.pptp)))
		for i := range s.pptp {
			c := &s.pptp[i]
			w.ep(c.key.client)
			w.ep(c.key.server)
			w.i64(c.lastSeen)
			w.u8(b2u(c.closed) | b2u(c.gone)<<1)
			writeStream(&w, &c.dirs[0])
			writeStream(&w, &c.dirs[1])
			w.u32(uint32(len(c.calls)))
			for _, call := range c.calls {
				w.u16(call.orig)
				w.u16(call.masq)
				w.u16(call.peer)
				w.u8(b2u(call.peerKnown) | b2u(call.ending)<<1)
				w.i64(call.created)
				w.i64(call.releaseAt)
				w.u64(call.greOut)
				w.u64(call.greIn)
			}
		}
	})
	w.section(secGRE, func() {
		w.u32(uint32(len(s.gre)))
		for _, g := range s.gre {
			w.addr(g.remote)
			w.addr(g.host)
			w.i64(g.expires)
		}
	})
	body := w.b
	h := stateWriter{b: make([]byte, 0, 64+len(body))}
	h.b = append(h.b, stateMagic[:]...)
	h.u16(s.version)
	h.u16(0)
	h.i64(s.created.UnixNano())
	h.addr(s.wan)
	h.u8(uint8(len(s.lan)))
	for _, p := range s.lan {
		h.addr(p.Addr().As4())
		h.u8(uint8(p.Bits()))
	}
	h.u32(uint32(len(body)))
	h.u32(crc32.Checksum(body, crc32c))
	return append(h.b, body...)
}

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

func stateCorrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrStateCorrupt, fmt.Sprintf(format, args...))
}

// decodeState parses a state file of any supported version. It never
// panics, and allocates at most a small multiple of len(b).
func decodeState(b []byte) (*stateSnap, error) {
	r := stateReader{b: b}
	magic := r.take(8)
	if r.err != nil || !bytes.Equal(magic, stateMagic[:]) {
		return nil, stateCorrupt("not a vpnmasq state file")
	}
	s := &stateSnap{version: r.u16()}
	if r.err != nil {
		return nil, stateCorrupt("header: %v", r.err)
	}
	if s.version == 0 {
		return nil, stateCorrupt("format version 0")
	}
	if s.version > StateVersion {
		return nil, fmt.Errorf("%w: version %d, this release reads up to %d", ErrStateNewer, s.version, StateVersion)
	}
	if f := r.u16(); f != 0 {
		return nil, stateCorrupt("header flags %#x", f)
	}
	s.created = time.Unix(0, r.i64())
	s.wan = r.addr()
	n := int(r.u8())
	for range n {
		a, bits := r.addr(), int(r.u8())
		if bits > 32 {
			return nil, stateCorrupt("LAN prefix length %d", bits)
		}
		s.lan = append(s.lan, netip.PrefixFrom(netip.AddrFrom4(a), bits))
	}
	if !slices.Equal(s.lan, normPrefixes(s.lan)) {
		return nil, stateCorrupt("LAN prefixes not masked, sorted and distinct")
	}
	bodyLen, sum := r.u32(), r.u32()
	if r.err != nil {
		return nil, stateCorrupt("header: %v", r.err)
	}
	if int64(bodyLen) != int64(len(r.b)) {
		return nil, stateCorrupt("body is %d bytes, header says %d", len(r.b), bodyLen)
	}
	if crc32.Checksum(r.b, crc32c) != sum {
		return nil, stateCorrupt("checksum mismatch")
	}
	for kind := 1; kind <= numSections; kind++ {
		k, l := int(r.u8()), r.u32()
		if r.err != nil {
			return nil, stateCorrupt("section %s: %v", sectionNames[kind], r.err)
		}
		if k != kind {
			return nil, stateCorrupt("section %d where %s was expected", k, sectionNames[kind])
		}
		if uint64(l) > uint64(len(r.b)) {
			return nil, stateCorrupt("section %s: length %d beyond the file", sectionNames[kind], l)
		}
		sr := stateReader{b: r.take(int(l))}
		decodeSection(&sr, s, kind)
		if sr.err == nil && len(sr.b) != 0 {
			sr.err = fmt.Errorf("%d bytes after the records", len(sr.b))
		}
		if sr.err != nil {
			return nil, stateCorrupt("section %s: %v", sectionNames[kind], sr.err)
		}
	}
	if len(r.b) != 0 {
		return nil, stateCorrupt("%d bytes after the last section", len(r.b))
	}
	return s, nil
}

// Minimum encoded sizes of records, for the count bounds.
const (
	minMapping = 44
	minFlow    = 23
	tcpSize    = 2*23 + 18
	streamSize = 2 + 6*4 + pptpHeadLen + 8 + pptpEditRing*6
)

func readTCP(r *stateReader) (c tcpConn) {
	for i := range c.peer {
		p := &c.peer[i]
		p.end, p.maxEnd, p.maxWin, p.iss, p.finEnd = r.u32(), r.u32(), r.u32(), r.u32(), r.u32()
		p.scale = r.u8()
		p.flags = tcpPeerFlags(r.u16())
		if p.scale > 14 {
			r.fail("window scale %d", p.scale)
		}
		if p.maxWin > tcpMaxWin {
			r.fail("window %d", p.maxWin)
		}
	}
	c.pending.seq, c.pending.end, c.pending.win = r.u32(), r.u32(), r.u16()
	c.pending.ws = int8(r.u8())
	c.pending.dir = r.u8()
	c.ignoredAck = r.u32()
	c.state = tcpConnState(r.u8())
	c.flags = tcpConnFlags(r.u8())
	if c.pending.ws < -1 || c.pending.ws > 14 || c.pending.dir > 1 {
		r.fail("pending SYN")
	}
	if c.state > tcpClose {
		r.fail("tcp state %d", c.state)
	}
	return c
}

func readStream(r *stateReader) (d pptpStream) {
	d.synced = r.flag()
	d.iss, d.next = r.u32(), r.u32()
	d.broken = r.flag()
	d.brokenAt, d.msgStart = r.u32(), r.u32()
	have, length := r.u32(), r.u32()
	copy(d.head[:], r.take(pptpHeadLen))
	nEdits := r.u64()
	for i := range d.edits {
		d.edits[i].seq = r.u32()
		copy(d.edits[i].val[:], r.take(2))
	}
	// The parser's invariants: a message's header is complete (length
	// known, at least a header long) or still being read.
	if length == 0 && have >= pptpHeaderLen || length != 0 && (length < pptpHeaderLen || length > 0xffff || have > length) {
		r.fail("pptp stream position: %d of %d", have, length)
	}
	if nEdits > 1<<40 {
		r.fail("pptp edit count %d", nEdits)
	}
	d.have, d.length, d.nEdits = int(have), int(length), int(nEdits)
	return d
}

func decodeSection(r *stateReader, s *stateSnap, kind int) {
	switch kind {
	case secMappings:
		n := r.count(minMapping)
		s.mappings = make([]snapMapping, 0, n)
		for range n {
			m := snapMapping{proto: r.u8(), static: r.flag(), in: r.ep(), ext: r.u16(), created: r.time(),
				lastUsed: r.time(), remote: r.ep(), expires: r.time()}
			if m.proto != ProtoTCP && m.proto != ProtoUDP && m.proto != ProtoICMP {
				r.fail("mapping of protocol %d", m.proto)
			}
			size := minFlow
			if m.proto == ProtoTCP {
				size += tcpSize
			}
			nf := r.count(size)
			m.flows = make([]snapFlow, 0, nf)
			for range nf {
				f := snapFlow{remote: r.ep(), expires: r.time(), lastSeen: r.time()}
				fl := r.u8()
				if fl > 7 {
					r.fail("flow flags %#x", fl)
				}
				f.assured, f.out, f.in = fl&1 != 0, fl&2 != 0, fl&4 != 0
				if m.proto == ProtoTCP {
					f.tcp = readTCP(r)
				}
				m.flows = append(m.flows, f)
			}
			if r.err != nil {
				return
			}
			s.mappings = append(s.mappings, m)
		}
	case secIKE:
		n := r.count(45)
		s.ike = make([]snapIKE, 0, n)
		for range n {
			s.ike = append(s.ike, snapIKE{host: r.ep(), remote: r.addr(), remotePort: r.u16(), ispi: r.u64(),
				rspi: r.u64(), created: r.time(), lastSeen: r.time(), unconfirmed: r.flag()})
		}
	case secContacts:
		n := r.count(20)
		s.contacts = make([]snapContact, 0, n)
		for range n {
			c := snapContact{remote: r.addr(), latest: r.addr(), latestAt: r.time()}
			nh := r.count(12)
			c.hosts = make([]snapContactHost, 0, nh)
			for range nh {
				c.hosts = append(c.hosts, snapContactHost{r.addr(), r.time()})
			}
			s.contacts = append(s.contacts, c)
		}
	case secNATT:
		n := r.count(20)
		s.natt = make([]snapNATT, 0, n)
		for range n {
			s.natt = append(s.natt, snapNATT{remote: r.ep(), host: r.ep(), expires: r.time()})
		}
	case secESP:
		n := r.count(54)
		s.esp = make([]snapESP, 0, n)
		for range n {
			p := snapESP{host: r.addr(), remote: r.addr(), outSPI: r.u32(), inSPI: r.u32(), state: espState(r.u8()),
				created: r.time(), lastSeen: r.time(), waitDeadline: r.time(), retries: r.u32(), firstSeq: r.u32(),
				claim: int32(r.u32())}
			fl := r.u8()
			p.charged, p.waiting = fl&1 != 0, fl&2 != 0
			ok := fl <= 3 && p.claim >= -1 && int(p.claim) < n && p.retries < 1<<20 &&
				(!p.waiting || p.state == espWaiting)
			switch p.state {
			case espWaiting:
				ok = ok && p.outSPI != 0 && p.inSPI == 0 && p.charged
			case espEstablished:
				ok = ok && p.outSPI != 0 && p.inSPI != 0 && p.charged
			case espInboundOnly:
				ok = ok && p.outSPI == 0 && p.inSPI != 0 && p.charged
			case espTentative:
				ok = ok && p.outSPI == 0 && p.inSPI != 0 && !p.charged
			default:
				ok = false
			}
			if !ok && r.err == nil {
				r.fail("esp pair %d inconsistent", len(s.esp))
			}
			s.esp = append(s.esp, p)
		}
	case secPending:
		n := r.count(8)
		s.pending = make([]snapPending, 0, n)
		for range n {
			p := snapPending{remote: r.addr()}
			np := r.count(17)
			if np > espMaxPending {
				r.fail("%d pending SPIs", np)
				return
			}
			for range np {
				p.list = append(p.list, pendingInbound{spi: r.u32(), seen: r.time(), firstSeq: r.u32(), confirmed: r.flag()})
			}
			s.pending = append(s.pending, p)
		}
	case secRecent:
		n := r.count(24)
		s.recent = make([]snapRecent, 0, n)
		for range n {
			s.recent = append(s.recent, snapRecent{r.addr(), recentClaim{host: r.addr(), at: r.time(), until: r.time()}})
		}
	case secSquelch:
		n := r.count(20)
		s.squelch = make([]snapSquelch, 0, n)
		for range n {
			s.squelch = append(s.squelch, snapSquelch{espOutKey{r.addr(), r.addr(), r.u32()}, r.time()})
		}
	case secPPTP:
		n := r.count(12 + 8 + 1 + 2*streamSize + 4)
		s.pptp = make([]snapConn, 0, n)
		for range n {
			c := snapConn{key: pptpConnKey{r.ep(), r.ep()}, lastSeen: r.time()}
			fl := r.u8()
			if fl > 3 {
				r.fail("pptp connection flags %#x", fl)
			}
			c.closed, c.gone = fl&1 != 0, fl&2 != 0
			c.dirs[0], c.dirs[1] = readStream(r), readStream(r)
			nc := r.count(39)
			c.calls = make([]snapCall, 0, nc)
			for range nc {
				call := snapCall{orig: r.u16(), masq: r.u16(), peer: r.u16()}
				cf := r.u8()
				if cf > 3 {
					r.fail("pptp call flags %#x", cf)
				}
				call.peerKnown, call.ending = cf&1 != 0, cf&2 != 0
				call.created, call.releaseAt, call.greOut, call.greIn = r.time(), r.time(), r.u64(), r.u64()
				c.calls = append(c.calls, call)
			}
			s.pptp = append(s.pptp, c)
		}
	case secGRE:
		n := r.count(16)
		s.gre = make([]snapGRE, 0, n)
		for range n {
			s.gre = append(s.gre, snapGRE{r.addr(), r.addr(), r.time()})
		}
	}
}
