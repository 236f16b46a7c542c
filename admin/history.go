package admin

import (
	"slices"
	"sync"
	"time"
)

// The status page's graphs come from a History: a fixed ring of samples
// the router records from its own Snapshot every HistoryInterval, off the
// packet path. Counters are stored as they are (cumulative) and turned into
// rates only when drawn, as differences between neighbouring samples, so a
// missed or late sample costs resolution, not correctness.

const (
	// HistoryInterval is how often the router records a sample, and
	// HistorySamples how many the ring keeps: one hour.
	HistoryInterval = 10 * time.Second
	HistorySamples  = 360
)

// historyProtos are the protocols a sample counts, in the order of the
// traffic table; a protocol outside them counts as "other".
var historyProtos = [...]string{"tcp", "udp", "icmp", "gre", "esp", "ah", "other"}

// maxHistoryDrops bounds the drop reasons a sample has a slot for; the
// router knows about 40. Reasons first seen after the slots are taken add
// up in the last one, named otherDrops.
const (
	maxHistoryDrops = 48
	otherDrops      = "other reasons"
)

// historySample is the router at one moment, in fixed arrays, so that the
// ring is one allocation made up front and recording allocates nothing.
type historySample struct {
	time time.Time
	// bytes and packets are cumulative, by direction (0 LAN→WAN, 1
	// WAN→LAN) and protocol (historyProtos).
	bytes, packets [2][len(historyProtos)]uint64
	// ike, esp and pptp are gauges: IKE sessions, established ESP pairs,
	// PPTP calls.
	ike, esp, pptp int
	// flows is the NAT's flow count, a gauge: the NAT keeps no cumulative
	// count of flows created, so the graph shows how many exist rather
	// than how many began.
	flows int
	// drops are cumulative, by the History's reason slots.
	drops [maxHistoryDrops]uint64
}

// History is the ring of samples behind the status page's graphs. Its
// memory is fixed: HistorySamples samples of 664 bytes, 233 KiB in all
// (TestHistoryMemory keeps the README's figure true).
type History struct {
	mu sync.Mutex // guards every field below
	// ring holds n samples; the newest is at next-1 (wrapping).
	ring []historySample
	next int
	n    int
	// reasons name the drop slots of every sample, in the order first
	// seen; a slot keeps its reason for the ring's lifetime.
	reasons []string
}

// NewHistory makes a ring of capacity samples (HistorySamples for the
// router; tests use fewer).
func NewHistory(capacity int) *History {
	return &History{ring: make([]historySample, max(capacity, 2)), reasons: make([]string, 0, maxHistoryDrops)}
}

// Record adds a sample of s, replacing the oldest once the ring is full.
// It takes s.Time as the sample's time.
func (h *History) Record(s Snapshot) {
	h.mu.Lock()
	defer h.mu.Unlock()
	sm := &h.ring[h.next]
	*sm = historySample{time: s.Time}
	for _, t := range s.Traffic {
		dir := 0
		if t.Direction == WANToLAN {
			dir = 1
		} else if t.Direction != LANToWAN {
			continue
		}
		p := slices.Index(historyProtos[:], t.Proto)
		if p < 0 {
			p = len(historyProtos) - 1
		}
		sm.bytes[dir][p] += t.Bytes
		sm.packets[dir][p] += t.Packets
	}
	sm.ike = len(s.VPN.IKE)
	for _, e := range s.VPN.ESP {
		if e.State == ESPEstablished {
			sm.esp++
		}
	}
	for _, c := range s.VPN.PPTP {
		sm.pptp += len(c.Calls)
	}
	for _, f := range s.Flows {
		sm.flows += f.Flows
	}
	// Map order does not matter: a reason keeps its slot once it has one.
	for reason, n := range s.Drops {
		sm.drops[h.dropSlot(reason)] += n
	}
	h.next = (h.next + 1) % len(h.ring)
	h.n = min(h.n+1, len(h.ring))
}

// dropSlot is reason's slot, given one if it has none. h.mu is held.
func (h *History) dropSlot(reason string) int {
	if i := slices.Index(h.reasons, reason); i >= 0 {
		return i
	}
	if len(h.reasons) == maxHistoryDrops-1 {
		h.reasons = append(h.reasons, otherDrops)
	}
	if len(h.reasons) == maxHistoryDrops {
		return maxHistoryDrops - 1
	}
	h.reasons = append(h.reasons, reason)
	return len(h.reasons) - 1
}

// samples copies the samples out, oldest first, with the drop slots'
// names, so that drawing holds no lock.
func (h *History) samples() ([]historySample, []string) {
	if h == nil {
		return nil, nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]historySample, 0, h.n)
	start := (h.next - h.n + len(h.ring)) % len(h.ring)
	for i := range h.n {
		out = append(out, h.ring[(start+i)%len(h.ring)])
	}
	return out, slices.Clone(h.reasons)
}

// HistorySource is a Source that keeps a History; the status page draws
// its graphs from it.
type HistorySource interface {
	History() *History
}

// rate is the per-second change of a cumulative counter from prev to cur
// over d. A counter that went down was reset (the router restarted it), so
// it counted cur since then, as Prometheus's rate() assumes.
func rate(prev, cur uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	if cur < prev {
		return float64(cur) / d.Seconds()
	}
	return float64(cur-prev) / d.Seconds()
}
