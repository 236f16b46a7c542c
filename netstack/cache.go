package netstack

import (
	"container/list"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

const (
	// maxNegativeTTL caps how long NXDOMAIN/NODATA is remembered, so that a
	// name that appears upstream is seen soon.
	maxNegativeTTL = 5 * time.Minute
	// maxPositiveTTL caps how long any answer is kept, whatever TTL the
	// upstream hands out.
	maxPositiveTTL = 24 * time.Hour
)

// cacheKey identifies a question; names are compared without case (RFC
// 4343), so the key holds the lowercased name.
type cacheKey struct {
	name  string
	qtype uint16
	class uint16
}

func keyOf(q dns.Question) cacheKey {
	return cacheKey{name: strings.ToLower(q.Name), qtype: q.Qtype, class: q.Qclass}
}

type cacheEntry struct {
	key     cacheKey
	msg     *dns.Msg
	stored  time.Time
	expires time.Time
}

// dnsCache holds upstream answers until their TTL runs out. It is bounded:
// when full, the entry stored longest ago goes first.
type dnsCache struct {
	mu      sync.Mutex // guards entries and order: queries are answered concurrently
	max     int
	now     func() time.Time
	entries map[cacheKey]*list.Element // of *cacheEntry
	order   *list.List                 // front: stored longest ago
}

func newDNSCache(max int, now func() time.Time) *dnsCache {
	return &dnsCache{max: max, now: now, entries: make(map[cacheKey]*list.Element), order: list.New()}
}

// get returns a copy of the cached answer with every TTL decreased by the
// time it has spent in the cache, or nil.
func (c *dnsCache) get(k cacheKey) *dns.Msg {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[k]
	if !ok {
		return nil
	}
	e := el.Value.(*cacheEntry)
	now := c.now()
	if !now.Before(e.expires) {
		c.order.Remove(el)
		delete(c.entries, k)
		return nil
	}
	age := uint32(now.Sub(e.stored) / time.Second)
	m := e.msg.Copy()
	for _, section := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
		for _, rr := range section {
			h := rr.Header()
			if h.Ttl > age {
				h.Ttl -= age
			} else {
				h.Ttl = 0
			}
		}
	}
	return m
}

// put stores m if it may be cached, replacing an older answer to the same
// question.
func (c *dnsCache) put(k cacheKey, m *dns.Msg) {
	ttl, ok := cacheTTL(m)
	if !ok || ttl <= 0 || c.max <= 0 {
		return
	}
	stored := m.Copy()
	stored.Extra = withoutOPT(stored.Extra) // EDNS belongs to one exchange, not to the answer
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[k]; ok {
		c.order.Remove(el)
		delete(c.entries, k)
	}
	for c.order.Len() >= c.max {
		oldest := c.order.Front()
		c.order.Remove(oldest)
		delete(c.entries, oldest.Value.(*cacheEntry).key)
	}
	now := c.now()
	c.entries[k] = c.order.PushBack(&cacheEntry{key: k, msg: stored, stored: now, expires: now.Add(ttl)})
}

func (c *dnsCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}

// cacheTTL says how long m may be cached. Positive answers live as long as
// their shortest-lived record, so that no record is ever served beyond its
// TTL. Negative answers (NXDOMAIN, NODATA) live for the SOA minimum (RFC
// 2308 section 5: bounded by the SOA record's own TTL too), capped at
// maxNegativeTTL, and are not cached without a SOA. Truncated answers and
// every other rcode (SERVFAIL above all) are not cached.
func cacheTTL(m *dns.Msg) (time.Duration, bool) {
	if m.Truncated {
		return 0, false
	}
	switch {
	case m.Rcode == dns.RcodeSuccess && len(m.Answer) > 0:
		minTTL := ^uint32(0)
		for _, section := range [][]dns.RR{m.Answer, m.Ns, m.Extra} {
			for _, rr := range section {
				if rr.Header().Rrtype == dns.TypeOPT {
					continue // its "TTL" field holds flags
				}
				minTTL = min(minTTL, rr.Header().Ttl)
			}
		}
		return min(time.Duration(minTTL)*time.Second, maxPositiveTTL), true
	case m.Rcode == dns.RcodeSuccess, m.Rcode == dns.RcodeNameError:
		for _, rr := range m.Ns {
			if soa, ok := rr.(*dns.SOA); ok {
				ttl := min(soa.Minttl, soa.Hdr.Ttl)
				return min(time.Duration(ttl)*time.Second, maxNegativeTTL), true
			}
		}
		return 0, false
	default:
		return 0, false
	}
}

func withoutOPT(rrs []dns.RR) []dns.RR {
	out := rrs[:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype != dns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}
